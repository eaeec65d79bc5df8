//! The timer queue shared by all operators of a task.
//!
//! Timers fire in order of (deadline, arming sequence), and an operator has at
//! most one timer per key: arming again replaces the old timer and takes a new
//! place in the sequence. The whole queue is kept in memory (it holds one entry
//! per key with pending work) and written back to its store on commit.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use crate::state::{show_key, StateBackend, StateError, StoreId, WriteBatch};

/// The timers of one operator, by key: where each sits in the queue, and
/// whether it changed since the last commit. A cancelled or fired timer keeps
/// its slot (with no deadline) until the commit has recorded its deletion.
type OperatorTimers = HashMap<Vec<u8>, TimerSlot>;

#[derive(Debug, Clone, Copy)]
struct TimerSlot {
    at: Option<(u64, u64)>,
    dirty: bool,
    /// Whether the store holds this timer as of the last commit.
    stored: bool,
}

#[derive(Debug, Default)]
pub struct TimerQueue {
    queue: BTreeMap<(u64, u64), (usize, Vec<u8>)>,
    by_key: Vec<OperatorTimers>,
    next_seq: u64,
}

/// A timer taken off the queue because it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub deadline: u64,
    pub op: usize,
    pub key: Vec<u8>,
}

impl TimerQueue {
    fn operator(&mut self, op: usize) -> &mut OperatorTimers {
        if self.by_key.len() <= op {
            self.by_key.resize_with(op + 1, HashMap::new);
        }
        &mut self.by_key[op]
    }

    /// Arms the timer of operator `op` for `key`, replacing any older one.
    pub fn arm(&mut self, op: usize, key: &[u8], deadline: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self.operator(op).entry_ref(key).or_insert(TimerSlot {
            at: None,
            dirty: false,
            stored: false,
        });
        let old = slot.at.replace((deadline, seq));
        slot.dirty = true;
        if let Some(old) = old {
            self.queue.remove(&old);
        }
        self.queue.insert((deadline, seq), (op, key.to_vec()));
    }

    pub fn cancel(&mut self, op: usize, key: &[u8]) {
        let Some(slot) = self.by_key.get_mut(op).and_then(|m| m.get_mut(key)) else {
            return;
        };
        if let Some(old) = slot.at.take() {
            slot.dirty = true;
            self.queue.remove(&old);
        }
    }

    /// Takes the first timer whose deadline is at or before `limit`.
    pub fn pop_due(&mut self, limit: u64) -> Option<DueTimer> {
        let (&(deadline, seq), _) = self.queue.first_key_value()?;
        if deadline > limit {
            return None;
        }
        let (op, key) = self
            .queue
            .remove(&(deadline, seq))
            .expect("first entry exists");
        if let Some(slot) = self.by_key.get_mut(op).and_then(|m| m.get_mut(&key)) {
            slot.at = None;
            slot.dirty = true;
        }
        Some(DueTimer { deadline, op, key })
    }

    /// Timers waiting to fire, per operator (`ops` operators): walks the
    /// queue, so it is for metrics every few seconds, not per record.
    pub fn pending_by_operator(&self, ops: usize) -> Vec<u64> {
        let mut counts = vec![0; ops];
        for (op, _) in self.queue.values() {
            if let Some(n) = counts.get_mut(*op) {
                *n += 1;
            }
        }
        counts
    }

    /// The deadline of operator `op`'s timer for `key`, if one is armed.
    pub fn deadline(&self, op: usize, key: &[u8]) -> Option<u64> {
        let slot = self.by_key.get(op)?.get(key)?;
        slot.at.map(|(deadline, _)| deadline)
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(&(d, _), _)| d)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
        let mut failure = None;
        for (op, timers) in self.by_key.iter_mut().enumerate() {
            timers.retain(|key, slot| {
                if slot.dirty {
                    slot.dirty = false;
                    match slot.at {
                        Some(at) => match postcard::to_stdvec(&at) {
                            Ok(value) => {
                                batch.put(store, encode_key(&ops[op], key), value);
                                slot.stored = true;
                            }
                            Err(cause) => {
                                failure = Some(StateError::Encode {
                                    store: "sluice/timers".into(),
                                    cause,
                                })
                            }
                        },
                        // A timer armed and gone between two commits was never written.
                        None if slot.stored => {
                            batch.delete(store, encode_key(&ops[op], key));
                            slot.stored = false;
                        }
                        None => {}
                    }
                }
                slot.at.is_some()
            });
        }
        failure.map_or(Ok(()), Err)
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
                    queue.queue.insert((deadline, seq), (op, key.to_vec()));
                    queue.operator(op).insert(
                        key.to_vec(),
                        TimerSlot {
                            at: Some((deadline, seq)),
                            dirty: false,
                            stored: true,
                        },
                    );
                    queue.next_seq = queue.next_seq.max(seq.saturating_add(1));
                }
                None => orphans += 1,
            }
            Ok(())
        })?;
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "timers of operators no longer in the topology were ignored"
            );
        }
        Ok(queue)
    }
}

fn encode_key(op: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + op.len() + key.len());
    out.extend_from_slice(&(op.len() as u32).to_be_bytes());
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(key);
    out
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

    #[test]
    fn fires_by_deadline_then_arming_order() {
        let mut q = TimerQueue::default();
        q.arm(1, b"b", 10);
        q.arm(0, b"a", 10);
        q.arm(0, b"c", 5);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_due(10))
            .map(|t| (t.deadline, t.op, t.key))
            .collect();
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
        assert_eq!(q.pop_due(10).unwrap().key, b"b");
        assert_eq!(q.pop_due(10).unwrap().key, b"a");
        assert_eq!(q.pop_due(u64::MAX), None);
    }

    #[test]
    fn nothing_fires_before_its_deadline_and_cancel_removes() {
        let mut q = TimerQueue::default();
        q.arm(0, b"a", 10);
        q.arm(0, b"b", 11);
        assert_eq!(q.pop_due(9), None);
        q.cancel(0, b"a");
        assert_eq!(q.pop_due(10), None);
        assert_eq!(q.next_deadline(), Some(11));
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
        backend.write(batch).unwrap();
        let mut loaded = TimerQueue::load(&backend, store, &names, 0).unwrap();
        assert_eq!(
            loaded.next_seq(),
            q.next_seq() - 1,
            "next sequence follows the newest stored timer"
        );
        assert_eq!(loaded.pop_due(20).unwrap().op, 1);
        assert_eq!(loaded.pop_due(20).unwrap().op, 0);
        assert!(loaded.is_empty());
    }
}
