//! Keys of a table's cache, kept inline when short.
//!
//! Most keys are short (a service and an environment, length-prefixed: a
//! couple of dozen bytes). Kept in the hash table's own slot, such a key
//! needs no allocation, and comparing it on a lookup reads no other memory:
//! a key on the heap costs a cache miss on every lookup that finds it.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Bytes kept inline; the enum is then 32 bytes.
const INLINE: usize = 30;

#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Key {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.into())
        }
    }
}

// Hashes and compares as the bytes do, so that a table looks a key up by `&[u8]`.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn short_and_long_keys_hash_and_compare_as_their_bytes() {
        let hasher = hashbrown::DefaultHashBuilder::default();
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 200] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let key = Key::from(&bytes[..]);
            assert_eq!(key.as_slice(), &bytes[..]);
            assert_eq!(matches!(key, Key::Inline { .. }), len <= INLINE);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&bytes[..]));
        }
        let mut map: hashbrown::HashMap<Key, u32> = hashbrown::HashMap::new();
        map.insert(Key::from(&b"short"[..]), 1);
        map.insert(Key::from(&[7u8; 100][..]), 2);
        assert_eq!(map.get(&b"short"[..]), Some(&1));
        assert_eq!(map.get(&[7u8; 100][..]), Some(&2));
        assert_eq!(map.get(&b"shorter"[..]), None);
    }
}
