//! The timers' order: entries of (deadline, sequence) taken smallest first,
//! kept as a few sorted runs.
//!
//! Timers are mostly armed at a fixed delay after the clock (a debounce's
//! quiet, a gate's alert ttl), and the clock only moves forward, so each new
//! deadline is usually no earlier than the last one armed with the same
//! delay. Such an entry goes at the end of a run that is already in order;
//! taking the smallest is a look at the front of each run. A binary heap of
//! tens of thousands of entries paid a cache miss at every level of every
//! push and pop. Entries that fit no run (more than [`MAX_RUNS`] delays at
//! work, or deadlines that vary per key, as a throttle's do) go to a heap,
//! which takes any order.

use std::collections::VecDeque;

use super::dary::DaryHeap;

/// A place in the order: the deadline, then the arming sequence (unique),
/// then the slot the entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Queued {
    pub deadline: u64,
    pub seq: u64,
    pub slot: u32,
}

/// Runs kept before entries go to the heap.
const MAX_RUNS: usize = 8;

#[derive(Debug, Default)]
pub(super) struct Runs {
    /// Each in ascending order.
    runs: Vec<VecDeque<Queued>>,
    heap: DaryHeap,
    len: usize,
    /// The smallest entry and where it is, kept up to date.
    first: Option<(Queued, Front)>,
}

/// Where the smallest entry is.
#[derive(Debug, Clone, Copy)]
enum Front {
    Run(usize),
    Heap,
}

impl Runs {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds an entry.
    pub fn push(&mut self, q: Queued) {
        self.len += 1;
        // The run whose last entry is the latest one not after `q`: runs stay
        // as far apart as they can, so that later entries keep fitting.
        let best = self
            .runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.back().filter(|b| **b <= q).map(|b| (*b, i)))
            .max()
            .map(|(_, i)| i)
            .or_else(|| self.runs.iter().position(VecDeque::is_empty));
        let at = match best {
            Some(i) => {
                self.runs[i].push_back(q);
                Front::Run(i)
            }
            None if self.runs.len() < MAX_RUNS => {
                self.runs.push(VecDeque::from([q]));
                Front::Run(self.runs.len() - 1)
            }
            None => {
                self.heap.push(q);
                Front::Heap
            }
        };
        if self.first.is_none_or(|(f, _)| q < f) {
            self.first = Some((q, at));
        }
    }

    /// Finds the smallest entry: the front of a run or the top of the heap.
    fn find_first(&self) -> Option<(Queued, Front)> {
        let mut best = self.heap.peek().map(|q| (*q, Front::Heap));
        for (i, run) in self.runs.iter().enumerate() {
            if let Some(&q) = run.front() {
                if best.is_none_or(|(b, _)| q < b) {
                    best = Some((q, Front::Run(i)));
                }
            }
        }
        best
    }

    /// The smallest entry.
    pub fn peek(&self) -> Option<Queued> {
        self.first.map(|(q, _)| q)
    }

    /// Takes the smallest entry.
    pub fn pop(&mut self) -> Option<Queued> {
        let (q, at) = self.first?;
        match at {
            Front::Run(i) => {
                self.runs[i].pop_front();
            }
            Front::Heap => {
                self.heap.pop();
            }
        }
        self.len -= 1;
        self.first = self.find_first();
        Some(q)
    }

    /// Keeps only the entries for which `keep` says yes.
    pub fn retain(&mut self, mut keep: impl FnMut(&Queued) -> bool) {
        for run in &mut self.runs {
            run.retain(|q| keep(q));
        }
        self.heap.retain(&mut keep);
        self.len = self.runs.iter().map(VecDeque::len).sum::<usize>() + self.heap.len();
        self.first = self.find_first();
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the deadlines, entries come out in (deadline, sequence)
        /// order, as from a heap, also when taking and adding interleave.
        #[test]
        fn entries_come_out_smallest_first(deadlines in prop::collection::vec((0u64..50, any::<bool>()), 1..300)) {
            let mut runs = Runs::default();
            let mut heap = BinaryHeap::new();
            for (seq, (deadline, take)) in deadlines.into_iter().enumerate() {
                let q = Queued { deadline, seq: seq as u64, slot: 0 };
                runs.push(q);
                heap.push(Reverse(q));
                if take {
                    prop_assert_eq!(runs.pop(), heap.pop().map(|Reverse(q)| q));
                }
                prop_assert_eq!(runs.len(), heap.len());
            }
            while let Some(Reverse(expected)) = heap.pop() {
                prop_assert_eq!(runs.pop(), Some(expected));
            }
            prop_assert_eq!(runs.pop(), None);
        }
    }

    #[test]
    fn entries_armed_at_a_few_fixed_delays_need_no_heap() {
        let mut runs = Runs::default();
        for now in 0..10_000u64 {
            let delay = [30_000, 120_000, 86_400_000][(now % 3) as usize];
            runs.push(Queued {
                deadline: now + delay,
                seq: now,
                slot: 0,
            });
        }
        assert_eq!(runs.heap.len(), 0);
        assert_eq!(runs.runs.len(), 3);
        let retained: Vec<u64> = {
            runs.retain(|q| q.seq % 2 == 0);
            std::iter::from_fn(|| runs.pop()).map(|q| q.seq).collect()
        };
        assert_eq!(retained.len(), 5_000);
        assert!(retained.iter().all(|s| s % 2 == 0));
    }
}
