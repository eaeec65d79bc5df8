//! A transactional call that never returns. librdkafka's
//! `send_offsets_to_transaction` can block for good after its group
//! coordinator went away (confluentinc/librdkafka#5456, seen here after a
//! broker restart). The hang is simulated: the fault point on the call's
//! helper thread sleeps far past its deadline, since a real one cannot be
//! provoked on demand. The broker is real.

use std::time::{Duration, Instant};

use super::support::*;
use super::{committed_intents, flood_into, Setup};

/// The run gives up on the stuck call after its deadline (30 s + 10 s),
/// replaces the producer, commits everything exactly once, and still exits
/// promptly on SIGTERM while the stuck call's thread sleeps on.
#[test]
fn a_transactional_call_that_never_returns_is_given_up_and_the_run_carries_on() {
    let s = Setup::new("stuck", 2);
    let (_, expected) = flood_into(&s, 20_000, 2, 31);
    let stats = s.path("stats.json");
    let mut run = spawn_run_with(
        &s.topology,
        &s.path("state"),
        &s.path("run.log"),
        &[
            "--clock",
            "event",
            "--commit-interval-ms",
            "20",
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &[(
            "SLUICE_FAULTS",
            "txn.call.send-offsets=delay:3600000@2,txn.before-commit=delay:20",
        )],
    );
    let got = committed_intents(&s, expected.len(), 240);
    let asked = Instant::now();
    let status = terminate(&mut run);
    let exit_took = asked.elapsed();
    let log = s.log("run.log");
    let tail = &log[log.len().saturating_sub(3000)..];
    assert!(status.success(), "{tail}");
    assert!(
        log.contains("send_offsets_to_transaction did not return within 40s"),
        "the run gave up on the call:\n{tail}"
    );
    assert!(
        exit_took < Duration::from_secs(30),
        "the sleeping call held the exit for {exit_took:?}"
    );
    assert_same_intents(&expected, &got, tail);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(summary["producer_rebuilds"], 1, "{summary}");
}
