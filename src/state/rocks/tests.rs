//! Tests of the RocksDB backend.

use super::*;

/// Bytes in the database's write-ahead log files.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn write_some(backend: &mut RocksBackend) -> StoreId {
    let store = backend.open_store("dedup").unwrap();
    let mut batch = WriteBatch::default();
    for n in 0..1_000u32 {
        batch.put(store, &n.to_be_bytes(), &[7; 100]);
    }
    backend.write(&batch).unwrap();
    backend.sync().unwrap();
    store
}

#[test]
fn a_store_open_elsewhere_in_the_process_reports_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let first = RocksBackend::open(dir.path()).unwrap();
    let second = RocksBackend::open(dir.path());
    assert!(
        second.as_ref().err().is_some_and(StateError::is_lock_held),
        "{:?}",
        second.err()
    );
    drop(first);
    assert!(RocksBackend::open(dir.path()).is_ok(), "free once closed");
    let other = StateError::Open {
        dir: dir.path().to_owned(),
        cause: RocksBackend::open(&dir.path().join("CURRENT").join("x"))
            .err()
            .and_then(|e| match e {
                StateError::Open { cause, .. } => Some(cause),
                _ => None,
            })
            .unwrap(),
    };
    assert!(!other.is_lock_held(), "{other}");
}

#[test]
fn a_scratch_database_reads_its_writes_and_logs_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut scratch = RocksBackend::open_scratch(dir.path()).unwrap();
    let store = write_some(&mut scratch);
    assert_eq!(
        scratch.get(store, &999u32.to_be_bytes()).unwrap(),
        Some(vec![7; 100])
    );
    assert_eq!(wal_bytes(dir.path()), 0, "no write-ahead log");
}

#[test]
fn a_batch_is_written_in_key_order_but_later_changes_of_a_key_win() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open(dir.path()).unwrap();
    let a = db.open_store("a").unwrap();
    let b = db.open_store("b").unwrap();
    let mut batch = WriteBatch::default();
    batch.put(b, b"z", b"1");
    batch.put(a, b"k", b"first");
    batch.put(b, b"a", b"2");
    batch.delete(a, b"k");
    batch.put(a, b"k", b"last");
    batch.put(a, b"gone", b"x");
    batch.single_delete(a, b"gone");
    db.write(&batch).unwrap();
    assert_eq!(db.get(a, b"k").unwrap().as_deref(), Some(&b"last"[..]));
    assert_eq!(db.get(a, b"gone").unwrap(), None);
    assert_eq!(db.get(b, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get(b, b"z").unwrap().as_deref(), Some(&b"1"[..]));
}

/// Why a deletion after a plain delete can never be a single delete:
/// RocksDB's contract counts the puts since the previous *single*
/// delete, and a plain delete in between does not hold the older puts
/// down. Flushed together, the single delete cancels the last put, and
/// the tombstone, hidden behind them, is dropped; the put flushed before
/// comes back. (A restore writes a changelog's deletions as plain ones.)
#[test]
fn a_single_delete_after_a_plain_delete_brings_an_older_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open(dir.path()).unwrap();
    let s = db.open_store("s").unwrap();
    let write = |db: &mut RocksBackend, change: &dyn Fn(&mut WriteBatch)| {
        let mut batch = WriteBatch::default();
        change(&mut batch);
        db.write(&batch).unwrap();
    };
    let flush = |db: &RocksBackend| db.db.flush_cf(db.cf(s).unwrap()).unwrap();
    write(&mut db, &|w| w.put(s, b"k", b"old"));
    flush(&db);
    write(&mut db, &|w| w.delete(s, b"k"));
    write(&mut db, &|w| w.put(s, b"k", b"new"));
    write(&mut db, &|w| w.single_delete(s, b"k"));
    assert_eq!(db.get(s, b"k").unwrap(), None, "before the flush");
    flush(&db);
    assert_eq!(
        db.get(s, b"k").unwrap().as_deref(),
        Some(&b"old"[..]),
        "after the flush, the put below the tombstone is back"
    );
}

#[test]
fn a_scratch_database_takes_a_large_batch_in_slices_and_keeps_all_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut scratch = RocksBackend::open_scratch(dir.path()).unwrap();
    let store = scratch.open_store("big").unwrap();
    let mut batch = WriteBatch::default();
    for n in 0..12_000u32 {
        batch.put(store, &n.to_be_bytes(), &[n as u8; 1_000]);
    }
    assert!(batch.bytes_len() > 2 * SCRATCH_SLICE_BYTES);
    scratch.write(&batch).unwrap();
    let mut seen = 0u32;
    scratch
        .scan(store, &mut |key, value| {
            assert_eq!(key, seen.to_be_bytes());
            assert_eq!(value, [seen as u8; 1_000]);
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, 12_000);
}

proptest::proptest! {
    #[test]
    fn keys_sort_by_their_prefix_number_as_by_their_bytes(keys in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24), 0..40)) {
        let mut by_bytes = keys.clone();
        by_bytes.sort();
        let mut by_prefix = keys;
        by_prefix.sort_by(|a, b| (key_prefix(a), a).cmp(&(key_prefix(b), b)));
        proptest::prop_assert_eq!(by_prefix, by_bytes);
    }
}

fn table_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
        .count()
}

#[test]
fn unlogged_writes_are_in_table_files_once_they_end_and_later_ones_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut lasting = RocksBackend::open(dir.path()).unwrap();
    // A store holding something takes unlogged writes in its memtable (an
    // empty one takes table files, see `load.rs`).
    let store = lasting.open_store("dedup").unwrap();
    let mut first = WriteBatch::default();
    first.put(store, b"held", b"1");
    lasting.write(&first).unwrap();
    lasting.db.flush_cf(lasting.cf(store).unwrap()).unwrap();
    let wal_before = wal_bytes(dir.path());
    lasting.begin_unlogged();
    write_some(&mut lasting);
    assert!(
        wal_bytes(dir.path()) < wal_before + 1_000,
        "unlogged writes stay out of the log"
    );
    assert_eq!(table_files(dir.path()), 1, "still in the memtable");
    lasting.end_unlogged().unwrap();
    assert_eq!(
        table_files(dir.path()),
        2,
        "flushed when the unlogged writes end"
    );
    write_some(&mut lasting);
    assert!(wal_bytes(dir.path()) > 100_000, "later writes are logged");
    assert_eq!(
        lasting.get(store, &7u32.to_be_bytes()).unwrap(),
        Some(vec![7; 100])
    );
}

fn level0_files(db: &RocksBackend, store: StoreId) -> u64 {
    let cf = db.cf(store).unwrap();
    db.db
        .property_int_value_cf(cf, "rocksdb.num-files-at-level0")
        .unwrap()
        .unwrap()
}

#[test]
fn a_bulk_load_into_a_store_holding_something_compacts_nothing_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open(dir.path()).unwrap();
    // Not empty: the load goes through its memtable (an empty one takes
    // table files, see `load_tests`).
    write_some(&mut db);
    db.db.flush_cf(db.cf(0).unwrap()).unwrap();
    db.begin_unlogged();
    let mut store = 0;
    // More level-0 files than the compaction trigger (4).
    for _ in 0..6 {
        store = write_some(&mut db);
        db.db.flush_cf(db.cf(store).unwrap()).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(level0_files(&db, store), 7, "no compaction while loading");
    db.end_unlogged().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while level0_files(&db, store) >= 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction should take up level 0 once the load ends"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        db.get(store, &7u32.to_be_bytes()).unwrap(),
        Some(vec![7; 100])
    );
}

#[test]
fn a_lasting_database_logs_its_writes_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut lasting = RocksBackend::open(dir.path()).unwrap();
    write_some(&mut lasting);
    assert!(wal_bytes(dir.path()) > 100_000, "the writes are in the log");
}

/// What a crash of the process would leave of the database in `dir`: its
/// files as they are now (a copy; memtables are lost).
fn files_after_a_crash(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    copy
}

fn shared() -> SharedMemory {
    SharedMemory::new(8 << 20, 48 << 20)
}

/// Waits until no flush of `db` is pending or running.
fn flushes_done(db: &RocksBackend) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let busy = |db: &RocksBackend| {
        (0..db.names.len()).any(|store| {
            let cf = db.cf(store).unwrap();
            [
                "rocksdb.mem-table-flush-pending",
                "rocksdb.num-running-flushes",
            ]
            .iter()
            .any(|p| db.db.property_int_value_cf(cf, *p).unwrap() != Some(0))
        })
    };
    while busy(db) {
        assert!(Instant::now() < deadline, "flushes should end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(dir: &Path, store: &str, key: &[u8]) -> Option<Vec<u8>> {
    let mut db = RocksBackend::open(dir).unwrap();
    let id = db.open_store(store).unwrap();
    db.get(id, key).unwrap()
}

/// Writes `data/x` and `meta/pos` (`n` both) in one batch.
fn commit(db: &mut RocksBackend, n: u32) {
    let (data, meta) = (
        db.open_store("data").unwrap(),
        db.open_store("meta").unwrap(),
    );
    let mut batch = WriteBatch::default();
    batch.put(data, b"x", &n.to_be_bytes());
    batch.put(meta, b"pos", &n.to_be_bytes());
    db.write(&batch).unwrap();
}

#[test]
fn a_changelogged_store_logs_nothing_and_a_crash_takes_it_back_to_its_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open_changelogged(dir.path(), &shared(), &[]).unwrap();
    commit(&mut db, 1);
    db.sync().unwrap();
    commit(&mut db, 2);
    assert_eq!(wal_bytes(dir.path()), 0, "no write-ahead log");
    let crashed = files_after_a_crash(dir.path());
    let one = Some(1u32.to_be_bytes().to_vec());
    assert_eq!(
        read(crashed.path(), "data", b"x"),
        one,
        "the flushed commit"
    );
    assert_eq!(
        read(crashed.path(), "meta", b"pos"),
        one,
        "and its position"
    );
    drop(db);
    let two = Some(2u32.to_be_bytes().to_vec());
    assert_eq!(read(dir.path(), "data", b"x"), two, "closing flushes");
}

#[test]
fn a_changelogged_store_flushes_every_store_together_so_a_crash_leaves_positions_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open_changelogged(dir.path(), &shared(), &[]).unwrap();
    let meta = db.open_store("meta").unwrap();
    // The meta store fills its memtable (8 MiB) and RocksDB flushes it by
    // itself; the data store's few bytes must go to disk with it.
    for n in 0..12u32 {
        commit(&mut db, n);
        let mut batch = WriteBatch::default();
        batch.put(meta, format!("pad{n}").as_bytes(), &vec![n as u8; 1 << 20]);
        db.write(&batch).unwrap();
    }
    flushes_done(&db);
    let crashed = files_after_a_crash(dir.path());
    let pos = read(crashed.path(), "meta", b"pos");
    assert!(pos.is_some(), "the meta store was flushed");
    assert_eq!(
        read(crashed.path(), "data", b"x"),
        pos,
        "with the data of its commit"
    );
}

#[test]
fn a_changelogged_store_flushes_a_write_that_has_waited_long_enough_even_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open_changelogged(dir.path(), &shared(), &[]).unwrap();
    commit(&mut db, 1);
    db.flush_if_due();
    flushes_done(&db);
    let crashed = files_after_a_crash(dir.path());
    assert_eq!(read(crashed.path(), "data", b"x"), None, "not due yet");
    // No write since: the tick of an idle task flushes what waits.
    db.flush_after = Duration::ZERO;
    db.flush_if_due();
    flushes_done(&db);
    let crashed = files_after_a_crash(dir.path());
    let one = Some(1u32.to_be_bytes().to_vec());
    assert_eq!(read(crashed.path(), "data", b"x"), one, "flushed when due");
    let files = table_files(dir.path());
    db.flush_if_due();
    flushes_done(&db);
    assert_eq!(table_files(dir.path()), files, "nothing left to flush");
}

#[test]
fn a_changelogged_store_creates_the_stores_it_is_given_as_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksBackend::open_changelogged(dir.path(), &shared(), &["op/a", "op/b"]).unwrap();
    assert!(db.db.cf_handle("op/a").is_some() && db.db.cf_handle("op/b").is_some());
    assert!(db.names.is_empty(), "opened by name only when asked for");
    commit(&mut db, 3);
    drop(db);
    let db = RocksBackend::open_changelogged(dir.path(), &shared(), &["op/a"]).unwrap();
    assert!(db.db.cf_handle("op/b").is_some(), "existing stores stay");
    drop(db);
    assert_eq!(
        read(dir.path(), "data", b"x"),
        Some(3u32.to_be_bytes().to_vec())
    );
}
