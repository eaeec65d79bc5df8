//! The changes of one commit, kept flat: every key and value back to back in
//! one buffer, and a small fixed-size entry per change pointing into it.
//!
//! A commit can hold hundreds of thousands of changes. Building a `Vec` per
//! key and per value cost two allocations per change, and fresh memory for
//! all of them on every commit (page faults zeroing it); a flat batch is two
//! buffers that keep their capacity from one commit to the next.

use serde::Serialize;

use super::StoreId;

/// Changes to apply atomically, in the order they were added: puts, and
/// deletions of two kinds (see [`Change::SingleDelete`]).
#[derive(Debug, Default)]
pub struct WriteBatch {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes past which a writer that empties the batch as it goes asks for
    /// that (see [`WriteBatch::is_full`]); `None`: the batch takes a whole
    /// commit.
    limit: Option<usize>,
    /// Tables may keep their changes in their caches instead of writing
    /// them (see [`WriteBatch::set_keep_cached`]).
    keep_cached: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    store: StoreId,
    /// Where the key starts in `bytes`; the value, if any, follows it.
    start: usize,
    key_len: u32,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put { value_len: u32 },
    Delete,
    SingleDelete,
}

/// One change of a batch, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    Put(&'a [u8]),
    Delete,
    /// A deletion of a key that was put exactly once since its previous
    /// single delete (or ever), a plain [`Change::Delete`] in between not
    /// counting as one: RocksDB's `SingleDelete`, which vanishes together
    /// with the put it meets instead of a tombstone kept until the bottom
    /// level. Otherwise an older put may come back (see the RocksDB
    /// backend's tests); tables and timers never write it for that reason.
    SingleDelete,
}

impl<'a> Change<'a> {
    /// The value of a put, `None` for a deletion (the changelog's form).
    pub fn value(self) -> Option<&'a [u8]> {
        match self {
            Change::Put(v) => Some(v),
            Change::Delete | Change::SingleDelete => None,
        }
    }
}

/// A postcard output that appends to a `Vec` it borrows.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn len_u32(len: usize) -> u32 {
    // Keys and values are bounded far below 4 GiB (input lines are at most 16 MiB).
    u32::try_from(len).expect("a state key or value is smaller than 4 GiB")
}

impl WriteBatch {
    pub fn put(&mut self, store: StoreId, key: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.entries.push(Entry {
            store,
            start,
            key_len: len_u32(key.len()),
            kind: Kind::Put {
                value_len: len_u32(value.len()),
            },
        });
    }

    /// Puts `value` encoded with postcard, written straight into the batch.
    /// On an error nothing is added.
    pub fn put_encoded<V: Serialize + ?Sized>(
        &mut self,
        store: StoreId,
        key: &[u8],
        value: &V,
    ) -> Result<(), postcard::Error> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let value_start = self.bytes.len();
        if let Err(e) = postcard::serialize_with_flavor(value, Append(&mut self.bytes)) {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.entries.push(Entry {
            store,
            start,
            key_len: len_u32(key.len()),
            kind: Kind::Put {
                value_len: len_u32(self.bytes.len() - value_start),
            },
        });
        Ok(())
    }

    pub fn delete(&mut self, store: StoreId, key: &[u8]) {
        self.push_deletion(store, key, Kind::Delete);
    }

    /// Deletes a key put exactly once since its previous single delete
    /// (see [`Change::SingleDelete`] for why that is rarely known).
    pub fn single_delete(&mut self, store: StoreId, key: &[u8]) {
        self.push_deletion(store, key, Kind::SingleDelete);
    }

    fn push_deletion(&mut self, store: StoreId, key: &[u8], kind: Kind) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.entries.push(Entry {
            store,
            start,
            key_len: len_u32(key.len()),
            kind,
        });
    }

    /// Appends every change of `other`, after this batch's own.
    pub fn append(&mut self, other: &WriteBatch) {
        for (store, key, change) in other.iter() {
            match change {
                Change::Put(value) => self.put(store, key, value),
                Change::Delete => self.delete(store, key),
                Change::SingleDelete => self.single_delete(store, key),
            }
        }
    }

    /// The changes in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (StoreId, &[u8], Change<'_>)> + '_ {
        self.entries.iter().map(|e| self.change(e))
    }

    /// The change at `index` (in the order they were added).
    pub fn get(&self, index: usize) -> (StoreId, &[u8], Change<'_>) {
        self.change(&self.entries[index])
    }

    fn change(&self, e: &Entry) -> (StoreId, &[u8], Change<'_>) {
        let key_end = e.start + e.key_len as usize;
        let key = &self.bytes[e.start..key_end];
        let change = match e.kind {
            Kind::Put { value_len } => {
                Change::Put(&self.bytes[key_end..key_end + value_len as usize])
            }
            Kind::Delete => Change::Delete,
            Kind::SingleDelete => Change::SingleDelete,
        };
        (e.store, key, change)
    }

    /// Bytes of keys and values held.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Makes [`WriteBatch::is_full`] true past `limit` bytes of keys and
    /// values (`None`: never). Only a committer that writes the batch and
    /// empties it whenever a table stops at the limit may set one: a commit
    /// then reaches the backend in parts, so it is not atomic.
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Whether the batch has reached its limit: a table's commit stops there
    /// and goes on once the batch is written and emptied.
    pub fn is_full(&self) -> bool {
        self.limit.is_some_and(|limit| self.bytes.len() >= limit)
    }

    /// Lets a table whose cache holds its whole store keep its changes
    /// there (still to write) instead of adding them to the batch: for
    /// state that nothing reads after this process, where the cache is all
    /// anyone reads until it must let go of entries. Such a commit is no
    /// commit point of the backend; a committer that hands the backend on
    /// commits again without it.
    pub fn set_keep_cached(&mut self, keep: bool) {
        self.keep_cached = keep;
    }

    /// Whether tables may keep their changes cached (see [`WriteBatch::set_keep_cached`]).
    pub fn keeps_cached(&self) -> bool {
        self.keep_cached
    }

    /// Empties the batch and keeps its memory (and its limit) for the next one.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_back_in_order_with_their_stores_keys_and_values() {
        let mut batch = WriteBatch::default();
        batch.put(1, b"a", b"xyz");
        batch.delete(0, b"bb");
        batch.put_encoded(2, b"c", &(300u64, "s")).unwrap();
        batch.single_delete(1, b"");
        batch.put(1, b"", b"");
        let changes: Vec<_> = batch.iter().collect();
        let encoded = postcard::to_stdvec(&(300u64, "s")).unwrap();
        assert_eq!(
            changes,
            [
                (1, &b"a"[..], Change::Put(b"xyz")),
                (0, b"bb", Change::Delete),
                (2, b"c", Change::Put(&encoded)),
                (1, b"", Change::SingleDelete),
                (1, b"", Change::Put(b"")),
            ]
        );
        let mut copy = WriteBatch::default();
        copy.put(7, b"first", b"1");
        copy.append(&batch);
        assert_eq!(copy.len(), 6);
        assert_eq!(copy.get(3), (2, &b"c"[..], Change::Put(&encoded)));
        copy.clear();
        assert!(copy.is_empty() && copy.bytes_len() == 0);
    }
}
