//! Holds back repeats of one warning. While a broker is away librdkafka
//! reports an error for every failed connect of every client, and a client
//! not polled meanwhile (the restorer, the consumer during a restore) hands
//! over its whole backlog at once: hundreds of identical lines in a
//! millisecond, which bury the one line that matters.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of warning is logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Distinct warnings remembered; the oldest is forgotten past this.
const KINDS: usize = 64;

/// The warnings of the whole process, by kind (client and error).
pub static CLIENT_ERRORS: Repeats = Repeats::new(LOG_EVERY);

/// Logs a librdkafka client error, holding back repeats of the same one.
pub fn client_error(client: &'static str, error: &rdkafka::error::KafkaError, reason: &str) {
    if let Some(held_back) = CLIENT_ERRORS.admit(&format!("{client}: {error}")) {
        tracing::warn!(client, error = %error, reason, held_back, "kafka client error");
    }
}

pub struct Repeats {
    every: Duration,
    seen: Mutex<Vec<Seen>>,
}

struct Seen {
    kind: String,
    logged_at: Instant,
    held_back: u64,
}

impl Repeats {
    pub const fn new(every: Duration) -> Repeats {
        Repeats {
            every,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// `Some(n)` when a warning of `kind` is to be logged now, `n` being how
    /// many of that kind were held back since the last one logged; `None`
    /// to hold this one back.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        // Only counters live here: a panic elsewhere cannot leave them wrong.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = seen.iter_mut().find(|s| s.kind == kind) else {
            if seen.len() >= KINDS {
                seen.remove(0);
            }
            seen.push(Seen {
                kind: kind.to_owned(),
                logged_at: now,
                held_back: 0,
            });
            return Some(0);
        };
        if now.duration_since(entry.logged_at) < self.every {
            entry.held_back += 1;
            return None;
        }
        entry.logged_at = now;
        Some(std::mem::take(&mut entry.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_once_then_once_a_period_with_the_count_held_back() {
        let repeats = Repeats::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(repeats.admit_at("producer: AllBrokersDown", start), Some(0));
        for ms in 1..=300 {
            let at = start + Duration::from_millis(ms);
            assert_eq!(repeats.admit_at("producer: AllBrokersDown", at), None);
        }
        let later = start + Duration::from_secs(5);
        assert_eq!(
            repeats.admit_at("producer: AllBrokersDown", later),
            Some(300)
        );
        assert_eq!(repeats.admit_at("producer: AllBrokersDown", later), None);
    }

    #[test]
    fn another_kind_is_never_held_back_by_a_burst() {
        let repeats = Repeats::new(Duration::from_secs(5));
        let start = Instant::now();
        repeats.admit_at("producer: AllBrokersDown", start);
        repeats.admit_at("producer: AllBrokersDown", start);
        assert_eq!(
            repeats.admit_at("producer: TopicAuthorizationFailed", start),
            Some(0)
        );
    }

    #[test]
    fn past_its_capacity_the_oldest_kind_is_forgotten() {
        let repeats = Repeats::new(Duration::from_secs(5));
        let start = Instant::now();
        for n in 0..=KINDS {
            repeats.admit_at(&format!("kind {n}"), start);
        }
        assert_eq!(repeats.seen.lock().unwrap().len(), KINDS);
        assert_eq!(repeats.admit_at("kind 0", start), Some(0), "forgotten");
        assert_eq!(repeats.admit_at(&format!("kind {KINDS}"), start), None);
    }
}
