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

use crate::state::{
    show_key, Committed, Key, StateBackend, StateError, StoreId, Stored, WriteBatch,
};

/// One (operator, key) with a timer now or since the last commit. A
/// cancelled or fired timer keeps its slot (with no deadline) until the
/// commit has recorded its deletion; then the slot is free for another key.
#[derive(Debug)]
struct Slot {
    op: usize,
    /// Inline when short (most keys): a lookup that finds the slot reads no
    /// other memory.
    key: Key,
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
                s.hash == hash && s.op == op && s.key.as_slice() == key
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
            key: Key::from(key),
            hash,
            at: None,
            dirty: false,
            stored: Stored::No,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = fresh;
                id
            }
            None => {
                self.slots.push(fresh);
                u32::try_from(self.slots.len() - 1).expect("fewer than 4 billion timer keys")
            }
        };
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
        self.queue.push(
            Queued {
                deadline,
                seq,
                slot: id,
            },
            op,
        );
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
        key.extend_from_slice(slot.key.as_slice());
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

    /// Writes the timers changed since the last commit; `ops` names the
    /// operators. Once the batch is full ([`WriteBatch::is_full`]) it stops
    /// there, having written at least one timer, and says so: the caller
    /// writes and empties the batch and calls again for the rest.
    pub fn commit(
        &mut self,
        batch: &mut WriteBatch,
        store: StoreId,
        ops: &[String],
    ) -> Result<Committed, StateError> {
        let mut raw_key = Vec::new();
        let mut written = 0usize;
        while let Some(&id) = self.dirty.last() {
            if written > 0 && batch.is_full() {
                return Ok(Committed::Partly);
            }
            self.dirty.pop();
            written += 1;
            let slot = &mut self.slots[id as usize];
            slot.dirty = false;
            encode_key_into(&mut raw_key, &ops[slot.op], slot.key.as_slice());
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
        Ok(Committed::All)
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
        // Sorted, each operator's timers make its run, and none go to the B-tree.
        loaded.sort_unstable();
        for q in loaded {
            let op = queue.slots[q.slot as usize].op;
            queue.queue.push(q, op);
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
mod tests;
