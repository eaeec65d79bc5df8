//! Pushing: a GCRA rate limit per repository (governor) and a bounded,
//! jittered exponential backoff between attempts.
//!
//! The backoff starts at tens of milliseconds, so that a push rejected
//! because another writer moved the branch is rebuilt and retried within
//! the same second, not at the next reconcile. Jitter keeps two committers
//! that collided from colliding again in lockstep.

use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;

use super::config::PushConfig;

/// At most `per_second` pushes per second to one repository.
pub struct PushLimiter {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl PushLimiter {
    pub fn new(config: &PushConfig) -> PushLimiter {
        PushLimiter {
            limiter: RateLimiter::direct(Quota::per_second(config.per_second)),
            clock: DefaultClock::default(),
        }
    }

    /// Blocks until a push is allowed; returns how long it waited.
    pub fn wait(&self) -> Duration {
        let mut waited = Duration::ZERO;
        while let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(self.clock.now());
            waited += wait;
            std::thread::sleep(wait);
        }
        waited
    }
}

/// Doubling waits between `min` and `max`, each drawn from its upper half.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(config: &PushConfig) -> Backoff {
        Backoff {
            next: config.min_backoff,
            max: config.max_backoff,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let current = self.next;
        self.next = (current * 2).min(self.max);
        let half = current / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn config(per_second: u32) -> PushConfig {
        PushConfig {
            per_second: NonZeroU32::new(per_second).unwrap(),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            give_up_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let mut b = Backoff::new(&config(1));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(10) && waits[0] <= Duration::from_millis(20));
        assert!(waits[1] >= Duration::from_millis(20) && waits[1] <= Duration::from_millis(40));
        for w in &waits[3..] {
            assert!(
                *w >= Duration::from_millis(50) && *w <= Duration::from_millis(100),
                "{w:?}"
            );
        }
    }

    #[test]
    fn the_limiter_spaces_pushes_after_the_burst() {
        let limiter = PushLimiter::new(&config(20));
        let start = std::time::Instant::now();
        for _ in 0..25 {
            limiter.wait();
        }
        // 20 in the burst, then 5 more at 50 ms each.
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
}
