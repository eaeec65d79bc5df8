//! The timer queue's tests: order, re-arming, commits (whole and in
//! parts), reloads, and a model checked against random operations.

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
        assert_eq!(q.commit(&mut batch, store, &names).unwrap(), Committed::All);
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

/// With a limit on the batch, a commit goes in parts: each stops once the
/// batch is full, and together they write every changed timer once.
#[test]
fn a_commit_stops_at_the_batch_limit_and_goes_on_where_it_stopped() {
    let mut backend = MemoryBackend::new();
    let store = backend.open_store("sluice/timers").unwrap();
    let names = vec!["x".to_owned()];
    let mut q = TimerQueue::default();
    for i in 0..50u64 {
        q.arm(0, &i.to_be_bytes(), 100 + i);
    }
    q.cancel(0, &7u64.to_be_bytes());
    let mut batch = WriteBatch::default();
    batch.set_limit(Some(100));
    let (mut parts, mut written) = (0, Vec::new());
    loop {
        let committed = q.commit(&mut batch, store, &names).unwrap();
        parts += 1;
        written.extend(batch.iter().map(|(_, k, _)| k.to_vec()));
        backend.write(&batch).unwrap();
        batch.clear();
        if committed == Committed::All {
            break;
        }
    }
    assert!(
        parts > 3,
        "49 timers in batches of 100 bytes: {parts} parts"
    );
    let count = written.len();
    written.sort();
    written.dedup();
    assert_eq!(
        (count, written.len()),
        (49, 49),
        "each armed timer once, the cancelled one never"
    );
    let mut loaded = TimerQueue::load(&backend, store, &names, 0).unwrap();
    let deadlines: Vec<u64> = std::iter::from_fn(|| pop(&mut loaded, u64::MAX))
        .map(|t| t.0)
        .collect();
    let expected: Vec<u64> = (0..50).filter(|&i| i != 7).map(|i| 100 + i).collect();
    assert_eq!(deadlines, expected);
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
    assert_eq!(q.commit(&mut batch, store, &names).unwrap(), Committed::All);
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
                        assert_eq!(q.commit(&mut batch, store, &names).unwrap(), Committed::All);
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
