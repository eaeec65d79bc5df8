//! A min-heap with four children per node, for the timers that fit no run.
//!
//! `std`'s binary heap takes one level per halving: a pop from a heap of
//! tens of thousands of timers walks about fifteen levels down, and each of
//! the lower ones is a cache miss (a profile of the survival flood put a
//! few percent of replay's time on that one compare). With four children
//! the walk is half as deep, and the four siblings compared at each level
//! sit next to each other (96 bytes): about the same work per level, half
//! the misses.

use super::runs::Queued;

const ARITY: usize = 4;

#[derive(Debug, Default)]
pub(super) struct DaryHeap {
    items: Vec<Queued>,
}

impl DaryHeap {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn peek(&self) -> Option<&Queued> {
        self.items.first()
    }

    pub fn push(&mut self, q: Queued) {
        self.items.push(q);
        self.sift_up(self.items.len() - 1);
    }

    pub fn pop(&mut self) -> Option<Queued> {
        let last = self.items.pop()?;
        let Some(first) = self.items.first_mut() else {
            return Some(last);
        };
        let smallest = std::mem::replace(first, last);
        self.sift_down(0);
        Some(smallest)
    }

    /// Keeps only the entries for which `keep` says yes.
    pub fn retain(&mut self, keep: impl FnMut(&Queued) -> bool) {
        self.items.retain(keep);
        // Floyd's construction: every parent, the last first.
        if self.items.len() > 1 {
            for i in (0..=(self.items.len() - 2) / ARITY).rev() {
                self.sift_down(i);
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        let item = self.items[i];
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if self.items[parent] <= item {
                break;
            }
            self.items[i] = self.items[parent];
            i = parent;
        }
        self.items[i] = item;
    }

    fn sift_down(&mut self, mut i: usize) {
        let len = self.items.len();
        let item = self.items[i];
        loop {
            let first_child = i * ARITY + 1;
            if first_child >= len {
                break;
            }
            let end = (first_child + ARITY).min(len);
            let mut child = first_child;
            for c in first_child + 1..end {
                if self.items[c] < self.items[child] {
                    child = c;
                }
            }
            if item <= self.items[child] {
                break;
            }
            self.items[i] = self.items[child];
            i = child;
        }
        self.items[i] = item;
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use proptest::prelude::*;

    use super::*;

    fn queued(deadline: u64, seq: u64) -> Queued {
        Queued {
            deadline,
            seq,
            slot: 0,
        }
    }

    proptest! {
        /// Pushes, pops and retains give what std's heap gives.
        #[test]
        fn it_orders_as_a_binary_heap_does(ops in prop::collection::vec((0u64..40, 0u8..10), 1..400)) {
            let mut heap = DaryHeap::default();
            let mut model = BinaryHeap::new();
            for (seq, (deadline, op)) in ops.into_iter().enumerate() {
                match op {
                    0..=5 => {
                        heap.push(queued(deadline, seq as u64));
                        model.push(Reverse(queued(deadline, seq as u64)));
                    }
                    6..=8 => prop_assert_eq!(heap.pop(), model.pop().map(|Reverse(q)| q)),
                    _ => {
                        heap.retain(|q| q.seq % 3 != 0);
                        model.retain(|Reverse(q)| q.seq % 3 != 0);
                    }
                }
                prop_assert_eq!(heap.len(), model.len());
                prop_assert_eq!(heap.peek().copied(), model.peek().map(|Reverse(q)| *q));
            }
            while let Some(Reverse(expected)) = model.pop() {
                prop_assert_eq!(heap.pop(), Some(expected));
            }
            prop_assert_eq!(heap.pop(), None);
        }
    }
}
