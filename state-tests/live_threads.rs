//! `sluice run --threads N` (issue 12): one instance's tasks spread over
//! processing threads, each a member of the group with its own
//! transactional producer, against a real broker.

use std::time::Duration;

use super::support::*;
use super::{committed_intents, flood_into, Setup, SLOW_COMMITS};

/// The `task restored` lines of `log` for task `task`, by the thread that
/// logged them (each thread's lines are in its `member{thread=K}` span).
fn restoring_threads(log: &str, task: i32) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("task restored") && l.contains(&format!("task={task} ")))
        .filter_map(|l| {
            let rest = &l[l.find("member{thread=")? + "member{thread=".len()..];
            rest[..rest.find('}')?].parse().ok()
        })
        .collect()
}

/// Runs `sluice run --threads N` to its idle exit; returns its summary.
fn run_to_idle(s: &Setup, threads: &str) -> serde_json::Value {
    let stats = s.path("stats.json");
    let args = [
        "--clock",
        "event",
        "--exit-after-idle",
        "3s",
        "--threads",
        threads,
    ];
    let mut run = spawn_run(
        &s.topology,
        &s.path("state"),
        &s.path("run.log"),
        &[&args[..], &["--stats-json", stats.to_str().unwrap()]].concat(),
    );
    assert!(
        wait_exit(&mut run, RUN_PATIENCE).success(),
        "{}",
        s.log("run.log")
    );
    serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap()
}

#[test]
fn two_threads_share_the_tasks_and_commit_what_replay_gives() {
    let s = Setup::new("threads", 4);
    let (_, expected) = flood_into(&s, 30_000, 4, 11);
    let summary = run_to_idle(&s, "2");
    let got = committed_intents(&s, expected.len(), 60);
    assert_same_intents(&expected, &got, "");
    assert_eq!(summary["threads"], 2, "{summary}");
    let per_thread: Vec<u64> = summary["thread_processed"]
        .as_array()
        .expect("thread_processed")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_thread.len(), 2, "{summary}");
    assert!(
        per_thread.iter().all(|&n| n > 0),
        "both threads should process records: {per_thread:?}\n{}",
        s.log("run.log")
    );
    assert_eq!(
        per_thread.iter().sum::<u64>(),
        summary["processed"].as_u64().unwrap()
    );
    // Two members, so two transactional producers (one id each).
    let log = s.log("run.log");
    for k in 0..2 {
        assert!(
            log.contains(&format!("member{{thread={k}}}")),
            "thread {k} should log in its span:\n{log}"
        );
    }
    // The test broker gathers no joins (group.initial.rebalance.delay.ms=0),
    // so a thread that joined first would be given every task, and half of
    // them would move on when the other joined: each opened (restored) twice.
    for task in 0..4 {
        assert_eq!(
            restoring_threads(&log, task).len(),
            1,
            "task {task} should be opened once, by the thread it stays with:\n{log}"
        );
    }
}

#[test]
fn more_threads_than_tasks_start_one_per_task() {
    let s = Setup::new("threads-cap", 1);
    let (_, expected) = flood_into(&s, 2_000, 1, 3);
    let summary = run_to_idle(&s, "4");
    assert_eq!(summary["threads"], 1, "{summary}");
    assert_same_intents(&expected, &committed_intents(&s, expected.len(), 60), "");
}

/// Three partitions, instance `a` with two threads: the range assignor
/// (members in the order of their static ids `a`, `a-t1`, `b`) gives `a`
/// tasks 0 and 1 and `a-t1` task 2; once `b` joins, task 1 moves to `a-t1`
/// and task 2 to `b`; once `b` is gone, back. Task 1 thus moves between two
/// threads of one process, through its own store, and the intents must
/// still be exactly replay's.
#[test]
fn a_task_moved_between_threads_of_one_instance_keeps_exactly_once() {
    let s = Setup::new("thread-move", 3);
    let (_, expected) = flood_into(&s, 60_000, 3, 13);
    let minute = Duration::from_secs(60);
    let common = ["--clock", "event", "--commit-interval-ms", "20"];
    let args = |id: &'static str, threads: &'static str| {
        let mut a = common.to_vec();
        a.extend(["--instance-id", id, "--threads", threads]);
        a
    };
    let mut a = spawn_run_with(
        &s.topology,
        &s.path("state-a"),
        &s.path("a.log"),
        &args("a", "2"),
        &SLOW_COMMITS,
    );
    wait_for_log(&s.path("a.log"), "task restored", 3, minute);
    wait_for_progress(&s.path("a.log"), "a commit", minute, |field| {
        field("commits") > 0
    });
    let mut b = spawn_run_with(
        &s.topology,
        &s.path("state-b"),
        &s.path("b.log"),
        &args("b", "1"),
        &SLOW_COMMITS,
    );
    wait_for_log(&s.path("b.log"), "task restored", 1, minute);
    assert!(terminate(&mut b).success(), "b: {}", s.log("b.log"));
    // A static member does not leave on close: the group moves its task
    // after the session timeout (10 s).
    let got = committed_intents(&s, expected.len(), 120);
    assert!(terminate(&mut a).success(), "a: {}", s.log("a.log"));
    assert_same_intents(&expected, &got, "");
    let log = s.log("a.log");
    let threads = restoring_threads(&log, 1);
    assert!(
        threads.contains(&0) && threads.contains(&1),
        "task 1 should be opened by both threads of a, got {threads:?}:\n{log}"
    );
}
