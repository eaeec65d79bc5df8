//! The timer queue shared by all operators of a task.
//!
//! Timers fire in order of (deadline, arming sequence), and an operator has at
//! most one timer per key: arming again replaces the old timer and takes a new
//! place in the sequence. The whole queue is kept in memory (it holds one entry
//! per key with pending work) and written back to its store on commit.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::state::{show_key, StateBackend, StateError, StoreId, WriteBatch};

type TimerKey = (usize, Vec<u8>);

#[derive(Debug, Default)]
pub struct TimerQueue {
    queue: BTreeMap<(u64, u64), TimerKey>,
    by_key: HashMap<TimerKey, (u64, u64)>,
    next_seq: u64,
    /// Timers changed since the last commit.
    dirty: HashSet<TimerKey>,
}

/// A timer taken off the queue because it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub deadline: u64,
    pub op: usize,
    pub key: Vec<u8>,
}

impl TimerQueue {
    /// Arms the timer of operator `op` for `key`, replacing any older one.
    pub fn arm(&mut self, op: usize, key: &[u8], deadline: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = (op, key.to_vec());
        if let Some(old) = self.by_key.insert(id.clone(), (deadline, seq)) {
            self.queue.remove(&old);
        }
        self.queue.insert((deadline, seq), id.clone());
        self.dirty.insert(id);
    }

    pub fn cancel(&mut self, op: usize, key: &[u8]) {
        let id = (op, key.to_vec());
        if let Some(old) = self.by_key.remove(&id) {
            self.queue.remove(&old);
            self.dirty.insert(id);
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
        let id = (op, key);
        self.by_key.remove(&id);
        self.dirty.insert(id.clone());
        Some(DueTimer {
            deadline,
            op: id.0,
            key: id.1,
        })
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
        for id in self.dirty.drain() {
            let key = encode_key(&ops[id.0], &id.1);
            match self.by_key.get(&id) {
                Some(&entry) => {
                    let value =
                        postcard::to_stdvec(&entry).map_err(|cause| StateError::Encode {
                            store: "sluice/timers".into(),
                            cause,
                        })?;
                    batch.put(store, key, value);
                }
                None => batch.delete(store, key),
            }
        }
        Ok(())
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
                    queue.by_key.insert((op, key.to_vec()), (deadline, seq));
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
