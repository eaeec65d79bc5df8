//! A fault-injection hook for crash tests: `SLUICE_COMMIT_CRASH_AT=POINT[:N]`
//! kills the process with SIGKILL (like `kill -9`: no destructor, no flush)
//! the N-th time (default: first) it reaches POINT:
//!
//! - `after-commit`: the batch is committed in the clone, not pushed;
//! - `after-push`: the batch is pushed, its offsets are not committed.
//!
//! It exists only to prove that a crash at either point loses and
//! duplicates nothing; leave it unset in production.

/// Where the process may be told to die.
pub struct CrashHook {
    point: Option<String>,
    on_hit: u32,
    hits: u32,
}

pub const ENV: &str = "SLUICE_COMMIT_CRASH_AT";

impl CrashHook {
    pub fn from_env() -> CrashHook {
        let spec = std::env::var(ENV).unwrap_or_default();
        let (point, n) = match spec.split_once(':') {
            Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        CrashHook {
            point: (!point.is_empty()).then_some(point),
            on_hit: n.max(1),
            hits: 0,
        }
    }

    /// Dies here if told to.
    pub fn reached(&mut self, point: &str) {
        if self.point.as_deref() != Some(point) {
            return;
        }
        self.hits += 1;
        if self.hits >= self.on_hit {
            tracing::warn!(point, "{ENV}: killing the committer");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
