//! The timers' order: entries of (deadline, sequence) taken smallest first,
//! kept as one sorted run per operator and a B-tree for the rest.
//!
//! An operator mostly arms its timers at a fixed delay after the clock (a
//! debounce's quiet, a gate's alert ttl), and the clock only moves forward,
//! so each deadline it arms is usually no earlier than its last one: the
//! entry goes at the end of that operator's run, which is already in order,
//! and taking the smallest is a look at the front of each run. An entry
//! that would break its operator's order (a throttle's deadlines vary per
//! key; a debounce's `max_wait` cuts a quiet short) goes to a B-tree, which
//! takes any order. A binary heap of tens of thousands of entries paid a
//! cache miss at every level of every push and pop.
//!
//! One run per operator, not runs shared by all: with shared runs (up to
//! eight, an entry going to the one whose last entry was the latest not
//! after it) a throttle's scattered deadlines took over the runs a
//! debounce's entries needed, and every push looked at every run, about 500
//! instructions per timer armed on the releases flood (README, fourteenth
//! pass). Here a push is one comparison with the end of its run.
//!
//! A B-tree, not a heap: taking the smallest walks its left edge, which
//! every take reads and so stays in cache, and an insert misses on about one
//! node (a leaf; the few nodes above it are shared by many entries). A
//! 4-ary heap's pop walked half a dozen levels down to its leaves, most of
//! them cold: with the throttle of `topologies/cicd.toml` on the survival
//! flood its `sift_down` alone took 6% of replay.

use std::collections::{BTreeSet, VecDeque};

/// A place in the order: the deadline, then the arming sequence (unique),
/// then the slot the entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Queued {
    pub deadline: u64,
    pub seq: u64,
    pub slot: u32,
}

#[derive(Debug, Default)]
pub(super) struct Runs {
    /// One per operator (by index), each in ascending order.
    runs: Vec<VecDeque<Queued>>,
    /// The entries that fit no run; each is unique (its sequence is).
    others: BTreeSet<Queued>,
    len: usize,
    /// The smallest entry and where it is, kept up to date.
    first: Option<(Queued, Front)>,
}

/// Where the smallest entry is.
#[derive(Debug, Clone, Copy)]
enum Front {
    Run(usize),
    Others,
}

impl Runs {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds an entry armed by operator `op`.
    pub fn push(&mut self, q: Queued, op: usize) {
        self.len += 1;
        if self.runs.len() <= op {
            self.runs.resize_with(op + 1, VecDeque::new);
        }
        let run = &mut self.runs[op];
        let at = if run.back().is_none_or(|last| *last < q) {
            run.push_back(q);
            Front::Run(op)
        } else {
            self.others.insert(q);
            Front::Others
        };
        if self.first.is_none_or(|(f, _)| q < f) {
            self.first = Some((q, at));
        }
    }

    /// Finds the smallest entry: the front of a run or the B-tree's first.
    fn find_first(&self) -> Option<(Queued, Front)> {
        let mut best = self.others.first().map(|q| (*q, Front::Others));
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
            Front::Others => {
                self.others.pop_first();
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
        self.others.retain(|q| keep(q));
        self.len = self.runs.iter().map(VecDeque::len).sum::<usize>() + self.others.len();
        self.first = self.find_first();
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;
    use proptest::prelude::*;

    fn queued(deadline: u64, seq: u64) -> Queued {
        Queued {
            deadline,
            seq,
            slot: 0,
        }
    }

    proptest! {
        /// Whatever the deadlines and the operators that arm them, entries
        /// come out in (deadline, sequence) order, as from a heap, also when
        /// pushes, takes and retains interleave (with deadlines this
        /// scattered, many entries fit no run and go to the B-tree).
        #[test]
        fn entries_come_out_smallest_first(ops in prop::collection::vec((0u64..50, 0u8..10, 0usize..4), 1..400)) {
            let mut runs = Runs::default();
            let mut heap = BinaryHeap::new();
            for (seq, (deadline, action, op)) in ops.into_iter().enumerate() {
                match action {
                    0..=5 => {
                        let q = queued(deadline, seq as u64);
                        runs.push(q, op);
                        heap.push(Reverse(q));
                    }
                    6..=8 => prop_assert_eq!(runs.pop(), heap.pop().map(|Reverse(q)| q)),
                    _ => {
                        runs.retain(|q| q.seq % 3 != 0);
                        heap.retain(|Reverse(q)| q.seq % 3 != 0);
                    }
                }
                prop_assert_eq!(runs.len(), heap.len());
                prop_assert_eq!(runs.peek(), heap.peek().map(|Reverse(q)| *q));
            }
            while let Some(Reverse(expected)) = heap.pop() {
                prop_assert_eq!(runs.pop(), Some(expected));
            }
            prop_assert_eq!(runs.pop(), None);
        }
    }

    #[test]
    fn operators_arming_at_fixed_delays_need_no_b_tree() {
        let mut runs = Runs::default();
        for now in 0..10_000u64 {
            let op = (now % 3) as usize;
            let delay = [30_000, 120_000, 86_400_000][op];
            runs.push(queued(now + delay, now), op);
        }
        assert_eq!(runs.others.len(), 0);
        assert_eq!(runs.runs.len(), 3);
        let retained: Vec<u64> = {
            runs.retain(|q| q.seq % 2 == 0);
            std::iter::from_fn(|| runs.pop()).map(|q| q.seq).collect()
        };
        assert_eq!(retained.len(), 5_000);
        assert!(retained.iter().all(|s| s % 2 == 0));
    }

    /// A throttle's deadlines vary per key; they must not push a debounce's
    /// steady ones out of its run (as shared runs did).
    #[test]
    fn scattered_deadlines_of_one_operator_leave_the_others_runs_alone() {
        let mut runs = Runs::default();
        for now in 0..10_000u64 {
            runs.push(queued(now + 30_000, 2 * now), 0);
            let scattered = now + (now * 7_919) % 300_000;
            runs.push(queued(scattered, 2 * now + 1), 1);
        }
        assert_eq!(
            runs.runs[0].len(),
            10_000,
            "every debounce entry in its run"
        );
        assert!(
            runs.others.len() > 9_000,
            "most throttle entries in the B-tree"
        );
        let mut last = None;
        while let Some(q) = runs.pop() {
            assert!(last.is_none_or(|l| l < q));
            last = Some(q);
        }
    }
}
