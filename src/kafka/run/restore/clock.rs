//! The times a restore keeps: when it last saw a record, last let the run
//! serve the group, last asked for metadata.

use std::time::{Duration, Instant};

/// Records between two readings of the clock while records flow: reading it
/// for every record cost a tenth of a restore's time. Few enough that a
/// restore whose records come slowly still keeps its group member alive.
const RECORDS_PER_CLOCK_READ: u32 = 32;

/// The times a restore keeps, read once per [`RECORDS_PER_CLOCK_READ`]
/// records, and before every poll while none come.
pub(super) struct Clock {
    pub(super) last_progress: Instant,
    pub(super) last_keep_alive: Instant,
    pub(super) last_refresh: Instant,
    /// Records since the clock was last read.
    unread: u32,
    /// Whether a record came since the clock was last read.
    progressed: bool,
}

impl Clock {
    pub(super) fn new() -> Clock {
        let now = Instant::now();
        Clock {
            last_progress: now,
            last_keep_alive: now,
            last_refresh: now,
            unread: 0,
            progressed: false,
        }
    }

    /// The time, when it is due to be read.
    pub(super) fn due(&mut self) -> Option<Instant> {
        self.unread += 1;
        if self.unread < RECORDS_PER_CLOCK_READ {
            return None;
        }
        Some(self.read())
    }

    fn read(&mut self) -> Instant {
        self.unread = 0;
        let now = Instant::now();
        if std::mem::take(&mut self.progressed) {
            self.last_progress = now;
        }
        now
    }

    pub(super) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// How long since the last record (or the start). The next
    /// [`Clock::due`] reads the clock again.
    pub(super) fn idle(&mut self) -> Duration {
        let now = self.read();
        self.unread = RECORDS_PER_CLOCK_READ;
        now - self.last_progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_read_once_per_batch_of_records_and_at_once_after_a_wait() {
        let mut clock = Clock::new();
        let reads = (0..RECORDS_PER_CLOCK_READ * 3)
            .filter(|_| clock.due().is_some())
            .count();
        assert_eq!(reads, 3);
        clock.progressed();
        assert_eq!(clock.idle(), Duration::ZERO, "a record just came");
        assert!(clock.due().is_some(), "read again right after a wait");
    }
}
