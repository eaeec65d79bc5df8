//! Transactional calls with a deadline of their own.
//!
//! librdkafka promises that each transactional call returns by its timeout,
//! but `send_offsets_to_transaction` can block for good when the group
//! coordinator went away while its request waited: the timeout of
//! coordinator requests is never checked (confluentinc/librdkafka#5456,
//! #5511, open for the librdkafka Sluice builds). A broker restart did that
//! here: the processing thread never came back, and the run ignored SIGTERM.
//!
//! So each call runs on a helper thread and the processing thread waits for
//! it up to the call's timeout and a grace. Past that, the run gives up on
//! the producer as if it had failed fatally: a new producer with the same
//! transactional id fences the stuck one and decides what it left open
//! (aborts it, or commits it if the coordinator had logged the commit),
//! while the helper thread keeps the old producer alive until its call
//! returns (destroying a client during a call on it is not allowed).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use super::producer::{TxnProducer, CALL_TIMEOUT};

/// How long past its own timeout a call is waited for: librdkafka's
/// timeouts are checked on its internal timers, a little late on a busy
/// machine.
pub const GRACE: Duration = Duration::from_secs(10);

/// The transactional calls that go through [`call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCall {
    Init,
    SendOffsets,
    Commit,
    Abort,
}

impl TxnCall {
    pub fn name(self) -> &'static str {
        match self {
            TxnCall::Init => "init_transactions",
            TxnCall::SendOffsets => "send_offsets_to_transaction",
            TxnCall::Commit => "commit_transaction",
            TxnCall::Abort => "abort_transaction",
        }
    }

    /// The fault-injection point reached on the helper thread just before
    /// the call: `delay:MS` past the deadline makes the call look stuck.
    fn fault_point(self) -> &'static str {
        match self {
            TxnCall::Init => "txn.call.init",
            TxnCall::SendOffsets => "txn.call.send-offsets",
            TxnCall::Commit => "txn.call.commit",
            TxnCall::Abort => "txn.call.abort",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The call did not return by its deadline (or its thread died): the
    /// producer cannot be used again.
    #[error("{} did not return within {waited:?} (librdkafka lost track of its coordinator request); giving up on the producer", call.name())]
    Stuck { call: TxnCall, waited: Duration },
    /// The machine had no thread to spare for the call.
    #[error("cannot start a thread for {}: {source}", call.name())]
    NoThread {
        call: TxnCall,
        source: std::io::Error,
    },
}

/// Runs `f` on `producer` on a helper thread and waits up to
/// [`CALL_TIMEOUT`] + [`GRACE`] for its answer.
pub fn call(
    producer: &Arc<TxnProducer>,
    which: TxnCall,
    f: impl FnOnce(&TxnProducer) -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), CallError> {
    start(producer, which, f)?.wait()
}

/// Starts `f` on `producer` on a helper thread, for the caller to do other
/// work meanwhile; [`Started::wait`] gives its answer within the same
/// deadline as [`call`], counted from now.
pub fn start(
    producer: &Arc<TxnProducer>,
    which: TxnCall,
    f: impl FnOnce(&TxnProducer) -> Result<(), KafkaError> + Send + 'static,
) -> Result<Started, CallError> {
    start_within(producer, which, CALL_TIMEOUT + GRACE, f)
}

/// A transactional call running on its helper thread. librdkafka allows one
/// transactional call at a time: wait for it before the next.
#[must_use = "a started call must be waited for before the producer's next transactional call"]
pub struct Started {
    which: TxnCall,
    state: Arc<AtomicU8>,
    answered: mpsc::Receiver<Result<(), KafkaError>>,
    allowed: Duration,
    deadline: Instant,
}

fn start_within(
    producer: &Arc<TxnProducer>,
    which: TxnCall,
    allowed: Duration,
    f: impl FnOnce(&TxnProducer) -> Result<(), KafkaError> + Send + 'static,
) -> Result<Started, CallError> {
    let deadline = Instant::now() + allowed;
    let (answer, answered) = mpsc::sync_channel(1);
    let state = Arc::new(AtomicU8::new(RUNNING));
    let held = (Arc::clone(producer), Arc::clone(&state));
    let spawned = std::thread::Builder::new()
        .name("sluice-txn-call".into())
        .spawn(move || {
            let (producer, state) = held;
            crate::fault::reached(which.fault_point());
            let result = f(&producer);
            if state
                .compare_exchange(RUNNING, DONE, SeqCst, SeqCst)
                .is_err()
            {
                STRANDED.fetch_sub(1, SeqCst);
                tracing::info!(
                    call = which.name(),
                    "a transactional call returned after the run gave up on it"
                );
                return;
            }
            let _ = answer.send(result);
        });
    if let Err(source) = spawned {
        return Err(CallError::NoThread {
            call: which,
            source,
        });
    }
    Ok(Started {
        which,
        state,
        answered,
        allowed,
        deadline,
    })
}

impl Started {
    /// The call's answer, or [`CallError::Stuck`] once its deadline passed.
    pub fn wait(self) -> Result<(), CallError> {
        let Started {
            which,
            state,
            answered,
            allowed,
            deadline,
        } = self;
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match answered.recv_timeout(left) {
            Err(RecvTimeoutError::Timeout) if give_up(&state) => {
                let stranded = STRANDED.load(SeqCst);
                tracing::error!(
                    call = which.name(),
                    waited = ?allowed,
                    stranded,
                    "a transactional call did not return by its deadline; replacing the producer"
                );
                None
            }
            // It returned as the deadline passed: its answer is on its way.
            Err(RecvTimeoutError::Timeout) => answered.recv().ok(),
            // `None` too when the helper thread died (a panic in a callback).
            waited => waited.ok(),
        };
        match answer {
            Some(result) => result.map_err(CallError::Kafka),
            None => Err(CallError::Stuck {
                call: which,
                waited: allowed,
            }),
        }
    }
}

/// Marks a running call as given up on, and counts it stranded; false when
/// it has just returned. The count goes up before the mark: the helper
/// thread counts down as soon as it sees the mark, and another processing
/// thread must never read the count wrapped below zero.
fn give_up(state: &AtomicU8) -> bool {
    STRANDED.fetch_add(1, SeqCst);
    let given_up = state
        .compare_exchange(RUNNING, GIVEN_UP, SeqCst, SeqCst)
        .is_ok();
    if !given_up {
        STRANDED.fetch_sub(1, SeqCst);
    }
    given_up
}

/// Calls given up on that have not returned yet: each keeps its producer
/// (librdkafka's threads and connections) alive. See [`too_many_stranded`].
static STRANDED: AtomicUsize = AtomicUsize::new(0);

/// Stranded calls a process tolerates: past this, building another
/// producer is refused and the run ends, so that a restart frees them,
/// instead of leaking a producer per broker restart for good.
pub const MAX_STRANDED: usize = 3;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const GIVEN_UP: u8 = 2;

/// Whether more calls are stranded than [`MAX_STRANDED`].
pub fn too_many_stranded() -> Option<usize> {
    let stranded = STRANDED.load(SeqCst);
    (stranded > MAX_STRANDED).then_some(stranded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::run::producer::Deliveries;

    fn call_within(
        producer: &Arc<TxnProducer>,
        which: TxnCall,
        allowed: Duration,
        f: impl FnOnce(&TxnProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), CallError> {
        start_within(producer, which, allowed, f)?.wait()
    }

    /// A client that never connects: the calls below do not touch it.
    fn producer() -> Arc<TxnProducer> {
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create_with_context(Deliveries::new(Vec::new()))
            .expect("a producer");
        Arc::new(producer)
    }

    /// The tests that strand calls run one at a time: they count them.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_call_past_its_deadline_is_given_up_without_waiting_for_it() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let p = producer();
        let before = STRANDED.load(SeqCst);
        let started = Instant::now();
        let result = call_within(&p, TxnCall::SendOffsets, Duration::from_millis(100), |_| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        });
        assert!(started.elapsed() < Duration::from_secs(2));
        match result {
            Err(e @ CallError::Stuck { .. }) => {
                assert!(
                    e.to_string()
                        .starts_with("send_offsets_to_transaction did not return within 100ms"),
                    "{e}"
                )
            }
            other => panic!("expected a stuck call, got {other:?}"),
        }
        wait_until_stranded(before);
    }

    /// Waits (a while) for the stranded calls to come back to `count`.
    fn wait_until_stranded(count: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while STRANDED.load(SeqCst) > count && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_call_within_its_deadline_gives_its_own_answer() {
        let p = producer();
        let ok = call_within(&p, TxnCall::Commit, Duration::from_secs(5), |_| Ok(()));
        assert!(ok.is_ok(), "{ok:?}");
        let failed = call_within(&p, TxnCall::Commit, Duration::from_secs(5), |_| {
            Err(KafkaError::Canceled)
        });
        assert!(
            matches!(failed, Err(CallError::Kafka(KafkaError::Canceled))),
            "{failed:?}"
        );
    }

    #[test]
    fn a_call_given_up_counts_as_stranded_until_it_returns() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let p = producer();
        let before = STRANDED.load(SeqCst);
        let result = call_within(&p, TxnCall::Commit, Duration::from_millis(50), |_| {
            std::thread::sleep(Duration::from_millis(400));
            Ok(())
        });
        assert!(matches!(result, Err(CallError::Stuck { .. })), "{result:?}");
        assert_eq!(STRANDED.load(SeqCst), before + 1);
        wait_until_stranded(before);
        assert_eq!(STRANDED.load(SeqCst), before, "its return is counted");
    }

    #[test]
    fn a_started_call_runs_while_its_caller_works_and_its_deadline_counts_from_the_start() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let p = producer();
        let before = STRANDED.load(SeqCst);
        let (ran, running) = mpsc::channel();
        let started = start_within(
            &p,
            TxnCall::SendOffsets,
            Duration::from_secs(5),
            move |_| {
                let _ = ran.send(());
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            },
        )
        .expect("a helper thread");
        // The call runs before anyone waits for it.
        running
            .recv_timeout(Duration::from_secs(5))
            .expect("the call started on its own");
        std::thread::sleep(Duration::from_millis(150));
        assert!(started.wait().is_ok());

        // A caller busy past the deadline finds the call given up at once,
        // not after another full allowance.
        let late = start_within(&p, TxnCall::SendOffsets, Duration::from_secs(1), |_| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        })
        .expect("a helper thread");
        std::thread::sleep(Duration::from_millis(1100));
        let waited = Instant::now();
        assert!(matches!(late.wait(), Err(CallError::Stuck { .. })));
        assert!(
            waited.elapsed() < Duration::from_millis(500),
            "{:?}",
            waited.elapsed()
        );
        wait_until_stranded(before);
    }
}
