//! `sluice run --threads N`: one instance, N processing threads, as Kafka
//! Streams' `num.stream.threads`.
//!
//! Each thread is a member of the group in its own right: its own consumer,
//! restore consumer and transactional producer (`<app>-<instance>` for
//! thread 0, as a single-threaded instance always had, `<app>-<instance>-t<k>`
//! for thread k), and the tasks the group assigns it. So every exactly-once
//! rule of one member holds per thread unchanged: a task moves between
//! threads only through a rebalance, and the eager protocol commits a
//! thread's open transaction and closes its revoked tasks before any other
//! member is given them. The threads share what is read-only (topology,
//! plan), the memory budgets (RocksDB's cache and memtables, the input
//! buffers' bytes), the metrics, readiness and the state directory: a task
//! that moves between two threads of one instance reopens its own store
//! and restores only what its changelogs hold beyond it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::consumer::{Inner, Runtime, Shared};
use super::{RunError, RunSummary};

/// The name thread `k` of `instance` takes in the group (its static member
/// id and its transactional id's suffix).
pub fn member_name(instance: &str, k: usize) -> String {
    match k {
        0 => instance.to_owned(),
        _ => format!("{instance}-t{k}"),
    }
}

/// What one thread tells the others: whether it is ready and why not,
/// whether it has joined the group yet, and whether it has nothing left to
/// do (`--exit-after-idle`).
#[derive(Debug, Clone)]
struct Seat {
    ready: bool,
    reason: String,
    /// It is about to subscribe (its clients are up).
    subscribing: bool,
    /// The group gave it an assignment (maybe an empty one) at least once.
    joined: bool,
    idle: Idle,
}

/// A thread's part in an idle exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Processing, restoring or committing.
    Busy,
    /// Idle long enough with nothing assigned (the group gave it no task).
    Empty,
    /// Idle long enough, its tasks caught up and everything committed.
    Done,
}

/// The threads' shared board: readiness (the instance is ready when every
/// thread is) and the idle exit (taken once every thread is idle and one
/// has tasks, so that no thread leaves the group while another still works).
pub struct Board {
    seats: Mutex<Vec<Seat>>,
    /// Signalled when a thread is about to subscribe.
    subscribers: Condvar,
    health: Arc<crate::telemetry::Health>,
    exit: AtomicBool,
}

impl Board {
    pub fn new(threads: usize, health: Arc<crate::telemetry::Health>) -> Self {
        let seat = Seat {
            ready: false,
            reason: "joining the consumer group".into(),
            subscribing: false,
            joined: false,
            idle: Idle::Busy,
        };
        health.set_unready(seat.reason.clone());
        Board {
            seats: Mutex::new(vec![seat; threads.max(1)]),
            subscribers: Condvar::new(),
            health,
            exit: AtomicBool::new(false),
        }
    }

    fn seats(&self) -> std::sync::MutexGuard<'_, Vec<Seat>> {
        // A panic with the lock held already ends the run.
        self.seats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Thread `k` is (not) ready; `/readyz` answers for the whole instance.
    pub fn set_ready(&self, k: usize, ready: bool, reason: &str) {
        let mut seats = self.seats();
        if let Some(seat) = seats.get_mut(k) {
            seat.ready = ready;
            seat.reason = reason.to_owned();
        }
        match seats.iter().position(|s| !s.ready) {
            None => self.health.set_ready(),
            Some(waiting) => {
                let reason = &seats[waiting].reason;
                match seats.len() {
                    1 => self.health.set_unready(reason.clone()),
                    _ => self
                        .health
                        .set_unready(format!("thread {waiting}: {reason}")),
                }
            }
        }
    }

    /// Thread `k` is about to subscribe: waits, at most `limit`, until every
    /// thread is, so that their requests to join the group reach the
    /// coordinator together and the group's first assignment is more often
    /// one for all of them (threads whose clients start at different speeds
    /// otherwise join one after the other, each join a rebalance, the next
    /// seen only at a heartbeat a second later).
    /// A stop (a sibling failed before it got there) ends the wait too.
    pub fn subscribe_together(&self, k: usize, limit: Duration, stop: &AtomicBool) {
        let deadline = Instant::now() + limit;
        let mut seats = self.seats();
        if let Some(seat) = seats.get_mut(k) {
            seat.subscribing = true;
        }
        self.subscribers.notify_all();
        while !seats.iter().all(|s| s.subscribing) && !stop.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // In slices: a stop is not signalled on the condition variable.
            let slice = left.min(Duration::from_millis(50));
            seats = match self.subscribers.wait_timeout(seats, slice) {
                Ok((seats, _)) => seats,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Thread `k` got an assignment from the group (an empty one counts).
    pub fn joined(&self, k: usize) {
        if let Some(seat) = self.seats().get_mut(k) {
            seat.joined = true;
        }
    }

    /// Whether every thread has joined the group. Until then a thread opens
    /// no task: the group's first assignment goes to the threads that
    /// joined first, and each later one takes tasks away again, tasks that
    /// were restored (and loaded) for nothing. A broker's
    /// `group.initial.rebalance.delay.ms` (3 s by default) usually gathers
    /// an instance's threads into one first assignment; without it (the
    /// test broker sets 0) the threads join one after the other.
    pub fn all_joined(&self) -> bool {
        self.seats().iter().all(|s| s.joined)
    }

    /// Whether every thread but `k` has joined the group (true for an
    /// instance of one thread).
    pub fn others_joined(&self, k: usize) -> bool {
        self.seats()
            .iter()
            .enumerate()
            .all(|(i, s)| i == k || s.joined)
    }

    /// Thread `k`'s idle state; true once the instance may exit, after which
    /// it stays true for every thread.
    pub fn idle(&self, k: usize, idle: Idle) -> bool {
        if self.exit.load(Ordering::SeqCst) {
            return true;
        }
        let mut seats = self.seats();
        if let Some(seat) = seats.get_mut(k) {
            seat.idle = idle;
        }
        let all_idle = seats.iter().all(|s| s.idle != Idle::Busy);
        let any_done = seats.iter().any(|s| s.idle == Idle::Done);
        if all_idle && any_done {
            self.exit.store(true, Ordering::SeqCst);
        }
        self.exit.load(Ordering::SeqCst)
    }
}

/// A thread's part in the idle exit (`--exit-after-idle`).
impl Inner {
    /// Whether the instance exits for idleness (`--exit-after-idle`): once
    /// every thread has been idle long enough and one of them has tasks.
    pub(super) fn idle_exit(&self, idle: Duration) -> bool {
        let Some(limit) = self.shared.opts.exit_after_idle else {
            return false;
        };
        let state = match idle >= limit {
            false => Idle::Busy,
            true if self.tasks.is_empty() && self.assigned.is_none() => Idle::Empty,
            true if self.all_committed() => Idle::Done,
            true => Idle::Busy,
        };
        self.shared.board.idle(self.shared.thread, state)
    }

    fn all_committed(&self) -> bool {
        !self.tasks.is_empty()
            && !self.txn_open.is_open()
            && !self.raw_dirty
            && self.raw_waiting.is_empty()
            && self
                .tasks
                .values()
                .all(|t| !t.dirty && t.queues.iter().all(|q| q.caught_up && q.buffer.is_empty()))
    }
}

/// Runs `threads` (each `Shared` already names its member) to the end: a
/// stop asked from outside, an idle exit, or the first thread's error,
/// which stops the others (they commit what they hold and leave the group).
pub fn run_all(
    threads: Vec<Shared>,
    outside_stop: &'static AtomicBool,
) -> Result<RunSummary, RunError> {
    let Some(first) = threads.first() else {
        return Err(RunError::Setup("no processing thread".into()));
    };
    let stop = Arc::clone(&first.stop);
    let count = threads.len();
    let results: Vec<Result<RunSummary, RunError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = threads
            .into_iter()
            .map(|shared| {
                let k = shared.thread;
                let stop = Arc::clone(&shared.stop);
                std::thread::Builder::new()
                    .name(format!("sluice-run-{k}"))
                    .spawn_scoped(scope, move || {
                        // Every line this thread logs says which it is.
                        let _span = tracing::info_span!("member", thread = k).entered();
                        let result = Runtime::new(Arc::new(shared)).and_then(Runtime::run);
                        if let Err(e) = &result {
                            tracing::error!(thread = k, error = %e, "processing thread failed; stopping the others");
                            stop.store(true, Ordering::SeqCst);
                        }
                        result
                    })
            })
            .collect();
        // Passes a stop asked from outside (a signal) on to the threads.
        while handles
            .iter()
            .any(|h| h.as_ref().is_ok_and(|h| !h.is_finished()))
        {
            if outside_stop.load(Ordering::Relaxed) {
                stop.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(RunError::Setup("a processing thread panicked".into()))
                }),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    Err(RunError::Setup(format!(
                        "cannot start a processing thread: {e}"
                    )))
                }
            })
            .collect()
    });
    merge(results, count)
}

/// One summary for the instance; the first error wins, a fence first of all
/// (the caller's exit code tells a fence apart).
fn merge(
    results: Vec<Result<RunSummary, RunError>>,
    threads: usize,
) -> Result<RunSummary, RunError> {
    let mut summaries = Vec::with_capacity(results.len());
    let mut error: Option<RunError> = None;
    for result in results {
        match result {
            Ok(s) => summaries.push(s),
            Err(e @ RunError::Fenced(_)) if !matches!(error, Some(RunError::Fenced(_))) => {
                error = Some(e)
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(combine(summaries, threads))
}

/// Adds up the threads' summaries.
fn combine(summaries: Vec<RunSummary>, threads: usize) -> RunSummary {
    let mut total = RunSummary {
        threads,
        ..RunSummary::default()
    };
    for s in summaries {
        total.processed += s.processed;
        total.records += s.records;
        total.dead_letters += s.dead_letters;
        total.commits += s.commits;
        total.aborts += s.aborts;
        total.producer_rebuilds += s.producer_rebuilds;
        total.rebalances = total.rebalances.max(s.rebalances);
        total.restored_records += s.restored_records;
        total.restore_ms += s.restore_ms;
        total.restore_malformed += s.restore_malformed;
        total.restore_uncommitted += s.restore_uncommitted;
        total.enforced_waits += s.enforced_waits;
        // Each thread's buffers have their own share of the one budget.
        total.max_buffered_bytes += s.max_buffered_bytes;
        total.active_ms = total.active_ms.max(s.active_ms);
        total.commit_ms_max = total.commit_ms_max.max(s.commit_ms_max);
        total.thread_processed.push(s.processed);
        let room = super::COMMIT_SAMPLES.saturating_sub(total.commit_ms.len());
        total.commit_ms.extend(s.commit_ms.into_iter().take(room));
    }
    total.finish_percentiles();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(threads: usize) -> Board {
        Board::new(threads, Arc::new(crate::telemetry::Health::default()))
    }

    #[test]
    fn thread_zero_keeps_the_instance_name() {
        assert_eq!(member_name("abc", 0), "abc");
        assert_eq!(member_name("abc", 1), "abc-t1");
        assert_eq!(member_name("abc", 3), "abc-t3");
    }

    #[test]
    fn the_instance_is_ready_only_when_every_thread_is() {
        let b = board(2);
        b.set_ready(0, true, "");
        assert!(!b.health.is_ready(), "thread 1 still joining");
        b.set_ready(1, true, "");
        assert!(b.health.is_ready());
        b.set_ready(1, false, "rebalancing");
        assert!(!b.health.is_ready());
        b.set_ready(1, true, "");
        assert!(b.health.is_ready());
    }

    #[test]
    fn the_threads_have_joined_once_each_has_had_an_assignment() {
        let b = board(2);
        assert!(!b.all_joined());
        b.joined(1);
        assert!(!b.all_joined(), "thread 0 has not joined");
        assert!(b.others_joined(0), "thread 1 has");
        assert!(!b.others_joined(1));
        b.joined(0);
        assert!(b.all_joined());
        b.joined(0);
        assert!(b.all_joined(), "joining again changes nothing");
        let alone = board(1);
        assert!(alone.others_joined(0), "no other thread to wait for");
        alone.joined(0);
        assert!(alone.all_joined());
    }

    #[test]
    fn threads_subscribe_together_or_after_the_limit() {
        let b = Arc::new(board(2));
        let other = Arc::clone(&b);
        let started = Instant::now();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            other.subscribe_together(1, Duration::from_secs(30), &AtomicBool::new(false));
        });
        b.subscribe_together(0, Duration::from_secs(30), &AtomicBool::new(false));
        let waited = started.elapsed();
        late.join().unwrap();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");

        let alone = board(2);
        let started = Instant::now();
        alone.subscribe_together(0, Duration::from_millis(100), &AtomicBool::new(false));
        assert!(started.elapsed() >= Duration::from_millis(100));

        let stopped = board(2);
        let started = Instant::now();
        stopped.subscribe_together(0, Duration::from_secs(30), &AtomicBool::new(true));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a stop ends the wait"
        );
    }

    #[test]
    fn an_idle_exit_waits_for_every_thread_and_for_one_with_tasks() {
        let b = board(3);
        assert!(!b.idle(0, Idle::Done));
        assert!(!b.idle(1, Idle::Empty));
        assert!(!b.idle(2, Idle::Busy), "thread 2 still works");
        assert!(!b.idle(0, Idle::Done));
        assert!(b.idle(2, Idle::Done));
        // Once taken, every thread sees it, whatever it reports now.
        assert!(b.idle(1, Idle::Busy));

        let nobody_has_tasks = board(2);
        assert!(!nobody_has_tasks.idle(0, Idle::Empty));
        assert!(!nobody_has_tasks.idle(1, Idle::Empty));
    }

    #[test]
    fn summaries_add_up_and_a_fence_wins() {
        let one = RunSummary {
            processed: 10,
            commits: 2,
            commit_ms: vec![5, 7],
            active_ms: 100,
            ..RunSummary::default()
        };
        let two = RunSummary {
            processed: 30,
            commits: 1,
            commit_ms: vec![9],
            active_ms: 80,
            ..RunSummary::default()
        };
        let total = merge(vec![Ok(one.clone()), Ok(two)], 2).unwrap();
        assert_eq!(total.processed, 40);
        assert_eq!(total.commits, 3);
        assert_eq!(total.active_ms, 100);
        assert_eq!(total.thread_processed, vec![10, 30]);
        assert_eq!(total.commit_ms_p50, 7.0);
        assert_eq!(total.threads, 2);

        let failed = merge(
            vec![
                Err(RunError::Setup("boom".into())),
                Ok(one),
                Err(RunError::Fenced("taken over".into())),
            ],
            3,
        );
        assert!(matches!(failed, Err(RunError::Fenced(_))));
    }
}
