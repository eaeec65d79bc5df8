//! The timer queue shared by all operators of a task.
//!
//! Timers fire in order of (deadline, arming sequence), and an operator has at
//! most one timer per key: arming again replaces the old timer and takes a new
//! place in the sequence. The whole queue is kept in memory (it holds one entry
//! per key with pending work) and written back to its store on commit.

mod runs;

use std::hash::BuildHasher;

use hashbrown::HashTable;
use runs::{Queued, Runs};

use crate::state::{show_key, StateBackend, StateError, StoreId, Stored, WriteBatch};

/// One (operator, key) with a timer now or since the last commit. A
/// cancelled or fired timer keeps its slot (with no deadline) until the
/// commit has recorded its deletion; then the slot is free for another key.
#[derive(Debug)]
struct Slot {
    op: usize,
    /// Kept when the slot is freed, so that the next key reuses its memory.
    key: Vec<u8>,
    hash: u64,
    /// (deadline, arming sequence) of the armed timer.
    at: Option<(u64, u64)>,
    dirty: bool,
    /// Whether the store holds this timer as of the last commit.
    stored: Stored,
}

#[derive(Debug, Default)]
pub struct TimerQueue {
    /// A timer's place in the order. Re-arming or cancelling leaves the old
    /// entry behind: it no longer matches its slot's `at` and is skipped when
    /// it comes up (sequences are never reused, so it never matches again).
    queue: Runs,
    slots: Vec<Slot>,
    /// Slots free for new keys.
    free: Vec<u32>,
    /// Slot ids by (operator, key).
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Slots changed since the last commit.
    dirty: Vec<u32>,
    /// Armed timers.
    armed: usize,
    next_seq: u64,
}

/// A timer taken off the queue because it is due; its key is in the buffer
/// handed to [`TimerQueue::pop_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueTimer {
    pub deadline: u64,
    pub op: usize,
}

/// Stale entries the queue may hold beyond its armed timers before it is
/// rebuilt from them.
const STALE_SLACK: usize = 4_096;

impl TimerQueue {
    fn hash(&self, op: usize, key: &[u8]) -> u64 {
        self.hasher.hash_one((op, key))
    }

    fn find(&self, op: usize, key: &[u8]) -> Option<u32> {
        let hash = self.hash(op, key);
        let slots = &self.slots;
        self.index
            .find(hash, |&id| {
                let s = &slots[id as usize];
                s.op == op && s.key == key
            })
            .copied()
    }

    /// The slot of (op, key), made if there is none.
    fn slot_for(&mut self, op: usize, key: &[u8]) -> u32 {
        if let Some(id) = self.find(op, key) {
            return id;
        }
        let hash = self.hash(op, key);
        let fresh = Slot {
            op,
            key: Vec::new(),
            hash,
            at: None,
            dirty: false,
            stored: Stored::No,
        };
        let id = match self.free.pop() {
            Some(id) => {
                let slot = &mut self.slots[id as usize];
                let mut reused = std::mem::take(&mut slot.key);
                reused.clear();
                *slot = Slot {
                    key: reused,
                    ..fresh
                };
                id
            }
            None => {
                self.slots.push(fresh);
                u32::try_from(self.slots.len() - 1).expect("fewer than 4 billion timer keys")
            }
        };
        self.slots[id as usize].key.extend_from_slice(key);
        let slots = &self.slots;
        self.index
            .insert_unique(hash, id, |&i| slots[i as usize].hash);
        id
    }

    fn mark_dirty(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Arms the timer of operator `op` for `key`, replacing any older one.
    pub fn arm(&mut self, op: usize, key: &[u8], deadline: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = self.slot_for(op, key);
        let old = self.slots[id as usize].at.replace((deadline, seq));
        if old.is_none() {
            self.armed += 1;
        }
        self.mark_dirty(id);
        self.queue.push(Queued {
            deadline,
            seq,
            slot: id,
        });
        self.tidy();
    }

    pub fn cancel(&mut self, op: usize, key: &[u8]) {
        let Some(id) = self.find(op, key) else {
            return;
        };
        if self.slots[id as usize].at.take().is_some() {
            self.armed -= 1;
            self.mark_dirty(id);
            self.tidy();
        }
    }

    /// Whether a queue entry is the armed timer of its slot.
    fn is_live(&self, q: &Queued) -> bool {
        self.slots[q.slot as usize].at == Some((q.deadline, q.seq))
    }

    /// Drops stale entries from the front, so that the first entry is always
    /// an armed timer, and rebuilds the queue when stale entries pile up.
    fn tidy(&mut self) {
        while let Some(first) = self.queue.peek() {
            if self.is_live(&first) {
                break;
            }
            self.queue.pop();
        }
        if self.queue.len() > 2 * self.armed + STALE_SLACK {
            let slots = &self.slots;
            self.queue
                .retain(|q| slots[q.slot as usize].at == Some((q.deadline, q.seq)));
        }
    }

    /// Takes the first timer whose deadline is at or before `limit`,
    /// writing its key into `key`.
    pub fn pop_due(&mut self, limit: u64, key: &mut Vec<u8>) -> Option<DueTimer> {
        let first = loop {
            let first = self.queue.peek()?;
            if first.deadline > limit {
                return None;
            }
            self.queue.pop();
            if self.is_live(&first) {
                break first;
            }
        };
        let slot = &mut self.slots[first.slot as usize];
        slot.at = None;
        key.clear();
        key.extend_from_slice(&slot.key);
        let op = slot.op;
        self.armed -= 1;
        self.mark_dirty(first.slot);
        self.tidy();
        Some(DueTimer {
            deadline: first.deadline,
            op,
        })
    }

    /// Timers waiting to fire, per operator (`ops` operators): walks the
    /// slots, so it is for metrics every few seconds, not per record.
    pub fn pending_by_operator(&self, ops: usize) -> Vec<u64> {
        let mut counts = vec![0; ops];
        for slot in self.slots.iter().filter(|s| s.at.is_some()) {
            if let Some(n) = counts.get_mut(slot.op) {
                *n += 1;
            }
        }
        counts
    }

    /// The deadline of operator `op`'s timer for `key`, if one is armed.
    pub fn deadline(&self, op: usize, key: &[u8]) -> Option<u64> {
        let id = self.find(op, key)?;
        self.slots[id as usize].at.map(|(deadline, _)| deadline)
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.peek().map(|q| q.deadline)
    }

    pub fn len(&self) -> usize {
        self.armed
    }

    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Writes the timers changed since the last commit; `ops` names the operators.
    pub fn commit(
        &mut self,
        batch: &mut WriteBatch,
        store: StoreId,
        ops: &[String],
    ) -> Result<(), StateError> {
        let mut raw_key = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let slot = &mut self.slots[id as usize];
            slot.dirty = false;
            encode_key_into(&mut raw_key, &ops[slot.op], &slot.key);
            match slot.at {
                Some(at) => {
                    batch.put_encoded(store, &raw_key, &at).map_err(|cause| {
                        StateError::Encode {
                            store: "sluice/timers".into(),
                            cause,
                        }
                    })?;
                    slot.stored = slot.stored.put();
                }
                // A timer armed and gone between two commits was never written.
                None => {
                    slot.stored.delete(batch, store, &raw_key);
                    slot.stored = Stored::No;
                    self.release(id);
                }
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        Ok(())
    }

    /// Frees the slot of a timer that is gone and whose deletion is written.
    fn release(&mut self, id: u32) {
        let hash = self.slots[id as usize].hash;
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.free.push(id);
    }

    /// Loads the timers of the operators named in `ops`. Timers of operators
    /// that are no longer in the topology are left in the store untouched.
    pub fn load(
        backend: &dyn StateBackend,
        store: StoreId,
        ops: &[String],
        next_seq: u64,
    ) -> Result<Self, StateError> {
        let mut queue = TimerQueue {
            next_seq,
            ..Self::default()
        };
        let mut orphans = 0u64;
        let mut loaded = Vec::new();
        backend.scan(store, &mut |raw_key, raw_value| {
            let corrupt = || StateError::Corrupt {
                dir: "sluice/timers".into(),
                message: format!("malformed timer entry {}", show_key(raw_key)),
            };
            let (name, key) = decode_key(raw_key).ok_or_else(corrupt)?;
            let (deadline, seq): (u64, u64) =
                postcard::from_bytes(raw_value).map_err(|_| corrupt())?;
            match ops.iter().position(|n| n.as_bytes() == name) {
                Some(op) => {
                    let id = queue.slot_for(op, key);
                    let slot = &mut queue.slots[id as usize];
                    slot.at = Some((deadline, seq));
                    slot.stored = Stored::Yes;
                    queue.armed += 1;
                    loaded.push(Queued {
                        deadline,
                        seq,
                        slot: id,
                    });
                    queue.next_seq = queue.next_seq.max(seq.saturating_add(1));
                }
                None => orphans += 1,
            }
            Ok(())
        })?;
        // In order, they make one run.
        loaded.sort_unstable();
        for q in loaded {
            queue.queue.push(q);
        }
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "timers of operators no longer in the topology were ignored"
            );
        }
        Ok(queue)
    }
}

fn encode_key_into(out: &mut Vec<u8>, op: &str, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&(op.len() as u32).to_be_bytes());
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(key);
}

/// Whether a timer store entry is one [`TimerQueue::load`] can read.
pub fn check_entry(raw_key: &[u8], raw_value: &[u8]) -> Result<(), String> {
    if decode_key(raw_key).is_none() {
        return Err(format!("malformed timer key {}", show_key(raw_key)));
    }
    postcard::from_bytes::<(u64, u64)>(raw_value)
        .map(|_| ())
        .map_err(|_| format!("malformed timer entry {}", show_key(raw_key)))
}

fn decode_key(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let name = raw.get(4..4 + len)?;
    Some((name, &raw[4 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryBackend;

    /// The next due timer as (deadline, operator, key).
    fn pop(q: &mut TimerQueue, limit: u64) -> Option<(u64, usize, Vec<u8>)> {
        let mut key = Vec::new();
        q.pop_due(limit, &mut key).map(|t| (t.deadline, t.op, key))
    }

    #[test]
    fn fires_by_deadline_then_arming_order() {
        let mut q = TimerQueue::default();
        q.arm(1, b"b", 10);
        q.arm(0, b"a", 10);
        q.arm(0, b"c", 5);
        let order: Vec<_> = std::iter::from_fn(|| pop(&mut q, 10)).collect();
        assert_eq!(
            order,
            vec![
                (5, 0, b"c".to_vec()),
                (10, 1, b"b".to_vec()),
                (10, 0, b"a".to_vec())
            ]
        );
    }

    #[test]
    fn rearming_replaces_and_moves_to_the_back_of_equal_deadlines() {
        let mut q = TimerQueue::default();
        q.arm(0, b"a", 10);
        q.arm(0, b"b", 10);
        q.arm(0, b"a", 10);
        assert_eq!(q.len(), 2);
        assert_eq!(pop(&mut q, 10).unwrap().2, b"b");
        assert_eq!(pop(&mut q, 10).unwrap().2, b"a");
        assert_eq!(pop(&mut q, u64::MAX), None);
    }

    #[test]
    fn nothing_fires_before_its_deadline_and_cancel_removes() {
        let mut q = TimerQueue::default();
        q.arm(0, b"a", 10);
        q.arm(0, b"b", 11);
        assert_eq!(pop(&mut q, 9), None);
        q.cancel(0, b"a");
        assert_eq!(
            q.next_deadline(),
            Some(11),
            "the cancelled timer is not next"
        );
        assert_eq!(pop(&mut q, 10), None);
        q.arm(0, b"b", 20);
        assert_eq!(
            q.next_deadline(),
            Some(20),
            "nor is a re-armed one's old deadline"
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn the_same_key_of_two_operators_is_two_timers() {
        let mut q = TimerQueue::default();
        q.arm(0, b"k", 10);
        q.arm(1, b"k", 5);
        q.cancel(1, b"k");
        assert_eq!(pop(&mut q, 100), Some((10, 0, b"k".to_vec())));
    }

    #[test]
    fn re_arming_again_and_again_keeps_the_queue_bounded() {
        let mut q = TimerQueue::default();
        for i in 0..100_000u64 {
            q.arm(0, &(i % 10).to_le_bytes(), 1_000_000 + i);
        }
        assert_eq!(q.len(), 10);
        assert!(
            q.queue.len() <= 2 * 10 + STALE_SLACK + 1,
            "{} queue entries for 10 timers",
            q.queue.len()
        );
        let fired: Vec<u64> = std::iter::from_fn(|| pop(&mut q, u64::MAX))
            .map(|t| t.0)
            .collect();
        assert_eq!(
            fired,
            (99_990..100_000).map(|i| 1_000_000 + i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn commits_write_only_what_changed_and_free_the_slots_of_gone_timers() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("sluice/timers").unwrap();
        let names = vec!["x".to_owned()];
        let mut q = TimerQueue::default();
        let mut commit = |q: &mut TimerQueue| {
            let mut batch = WriteBatch::default();
            q.commit(&mut batch, store, &names).unwrap();
            backend.write(&batch).unwrap();
            batch.len()
        };
        q.arm(0, b"a", 10);
        q.arm(0, b"b", 10);
        q.arm(0, b"c", 10);
        q.cancel(0, b"c");
        assert_eq!(commit(&mut q), 2, "c came and went: nothing to write");
        assert_eq!(commit(&mut q), 0, "nothing changed");
        assert!(pop(&mut q, 10).is_some());
        assert_eq!(commit(&mut q), 1, "the fired timer's deletion");
        assert_eq!(q.slots.len() - q.free.len(), 1, "only b keeps a slot");
        q.arm(0, b"d", 12);
        assert_eq!(q.slots.len(), 3, "d reuses a freed slot");
        assert_eq!(pop(&mut q, 20).map(|t| t.2), Some(b"b".to_vec()));
        assert_eq!(pop(&mut q, 20).map(|t| t.2), Some(b"d".to_vec()));
    }

    #[test]
    fn survives_a_commit_and_reload_with_order_intact() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("sluice/timers").unwrap();
        let names = vec!["x".to_owned(), "y".to_owned()];
        let mut q = TimerQueue::default();
        q.arm(1, b"k1", 20);
        q.arm(0, b"k2", 20);
        q.arm(0, b"gone", 30);
        q.cancel(0, b"gone");
        let mut batch = WriteBatch::default();
        q.commit(&mut batch, store, &names).unwrap();
        backend.write(&batch).unwrap();
        let mut loaded = TimerQueue::load(&backend, store, &names, 0).unwrap();
        assert_eq!(
            loaded.next_seq(),
            q.next_seq() - 1,
            "next sequence follows the newest stored timer"
        );
        assert_eq!(pop(&mut loaded, 20).unwrap().1, 1);
        assert_eq!(pop(&mut loaded, 20).unwrap().1, 0);
        assert!(loaded.is_empty());
    }

    mod model {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::super::*;
        use crate::state::MemoryBackend;

        #[derive(Debug, Clone)]
        enum Op {
            Arm(usize, u8, u64),
            Cancel(usize, u8),
            Pop(u64),
            Commit,
            Reload,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0usize..2, 0u8..6, 0u64..40).prop_map(|(o, k, d)| Op::Arm(o, k, d)),
                1 => (0usize..2, 0u8..6).prop_map(|(o, k)| Op::Cancel(o, k)),
                2 => (0u64..40).prop_map(Op::Pop),
                2 => Just(Op::Commit),
                1 => Just(Op::Reload),
            ]
        }

        fn stored(backend: &MemoryBackend, store: StoreId) -> BTreeMap<Vec<u8>, Vec<u8>> {
            let mut m = BTreeMap::new();
            backend
                .scan(store, &mut |k, v| {
                    m.insert(k.to_vec(), v.to_vec());
                    Ok(())
                })
                .unwrap();
            m
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn the_queue_fires_and_stores_what_a_plain_map_does(ops in prop::collection::vec(op(), 1..120)) {
                let mut backend = MemoryBackend::new();
                let store = backend.open_store("sluice/timers").unwrap();
                let names = vec!["x".to_owned(), "y".to_owned()];
                let mut q = TimerQueue::default();
                // (op, key) -> (deadline, seq)
                let mut model: BTreeMap<(usize, Vec<u8>), (u64, u64)> = BTreeMap::new();
                let mut committed = model.clone();
                let mut seq = 0u64;
                let mut committed_seq = 0u64;
                for o in ops {
                    match o {
                        Op::Arm(op, k, d) => {
                            q.arm(op, &[k], d);
                            model.insert((op, vec![k]), (d, seq));
                            seq += 1;
                        }
                        Op::Cancel(op, k) => {
                            q.cancel(op, &[k]);
                            model.remove(&(op, vec![k]));
                        }
                        Op::Pop(limit) => loop {
                            let first = model
                                .iter()
                                .map(|(k, at)| (*at, k.clone()))
                                .min()
                                .filter(|(at, _)| at.0 <= limit);
                            let mut key = Vec::new();
                            let got = q.pop_due(limit, &mut key).map(|t| (t.deadline, t.op, key));
                            let want = first.map(|((d, _), (op, key))| (d, op, key));
                            prop_assert_eq!(&got, &want);
                            match want {
                                Some((_, op, key)) => {
                                    model.remove(&(op, key));
                                }
                                None => break,
                            }
                        },
                        Op::Commit => {
                            let mut batch = WriteBatch::default();
                            q.commit(&mut batch, store, &names).unwrap();
                            backend.write(&batch).unwrap();
                            let mut want = BTreeMap::new();
                            for ((op, key), at) in &model {
                                let mut raw = Vec::new();
                                encode_key_into(&mut raw, &names[*op], key);
                                want.insert(raw, postcard::to_stdvec(at).unwrap());
                            }
                            prop_assert_eq!(stored(&backend, store), want);
                            committed = model.clone();
                            committed_seq = seq;
                        }
                        Op::Reload => {
                            q = TimerQueue::load(&backend, store, &names, committed_seq).unwrap();
                            model = committed.clone();
                            seq = committed_seq;
                        }
                    }
                    prop_assert_eq!(q.len(), model.len());
                    prop_assert_eq!(q.next_deadline(), model.values().map(|a| a.0).min());
                }
            }
        }
    }
}
