//! The bookkeeping a store keeps about its changelogs, as meta entries
//! written in the same batch as the state they describe: the position it
//! reflects in each changelog partition, whether a restore ever completed,
//! and when it last reflected a commit (its checkpoint). Under at-least-once
//! each changelog record also carries the input positions it follows from.

pub(super) use crate::duration::now_ms;

/// The meta entry saying a store was restored and its positions are kept.
pub(super) const READY_NOTE: &[u8] = b"changelog:ready";
/// The meta entry holding when the store last reflected a commit or a
/// restore, in ms since the epoch.
pub(super) const CHECKPOINT_NOTE: &[u8] = b"changelog:checkpoint-ms";

/// The header of at-least-once changelog records: `topic=next,...`, the
/// task's consumed input positions at the commit that wrote the record.
pub const INPUTS_HEADER: &str = "sluice.inputs";
/// [`INPUTS_HEADER`] for librdkafka's header lookup.
pub(super) const INPUTS_HEADER_C: &std::ffi::CStr = c"sluice.inputs";

pub(super) fn position_note(topic: &str) -> Vec<u8> {
    format!("changelog:{topic}").into_bytes()
}

/// Where a store is in one changelog partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) next: i64,
    /// Recorded at a transactional commit: its commit marker takes the
    /// offset `next`, so a high watermark of `next + 1` means nothing new.
    pub(super) marker_follows: bool,
}

impl Position {
    pub(super) fn encode(self) -> Vec<u8> {
        let mut bytes = self.next.to_be_bytes().to_vec();
        if self.marker_follows {
            bytes.push(1);
        }
        bytes
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Position> {
        let next = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let marker_follows = match bytes.get(8..) {
            Some([]) => false,
            Some([1]) => true,
            _ => return None,
        };
        Some(Position {
            next,
            marker_follows,
        })
    }

    /// Whether a partition ending at `high` holds nothing past this position.
    /// The record at `next` exists only as the commit marker when one
    /// follows: a committed transaction's marker comes after its records.
    pub(super) fn is_end(self, high: i64) -> bool {
        self.next == high || (self.marker_follows && self.next + 1 == high)
    }
}

/// The meta entry to write with a commit: the changelog position the store
/// will reflect once the commit is applied.
pub fn position_entry(topic: &str, next_offset: i64, transactional: bool) -> (Vec<u8>, Vec<u8>) {
    let position = Position {
        next: next_offset,
        marker_follows: transactional,
    };
    (position_note(topic), position.encode())
}

/// The meta entry stamping a store with the time it reflects its changelogs.
pub fn checkpoint_entry() -> (Vec<u8>, Vec<u8>) {
    (CHECKPOINT_NOTE.to_vec(), now_ms().to_be_bytes().to_vec())
}

/// The `sluice.inputs` header value for some (topic, next offset) pairs.
pub fn encode_inputs<'a>(positions: impl Iterator<Item = (&'a str, i64)>) -> String {
    positions
        .map(|(topic, next)| format!("{topic}={next}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `sluice.inputs` header value (topic names never hold `=` or `,`).
pub(super) fn decode_inputs(text: &str) -> Option<Vec<(&str, i64)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (topic, next) = pair.split_once('=')?;
            Some((topic, next.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inputs_header_has_one_name_for_rust_and_for_librdkafka() {
        assert_eq!(INPUTS_HEADER_C.to_bytes(), INPUTS_HEADER.as_bytes());
    }

    #[test]
    fn a_transactional_position_is_at_the_end_one_before_the_high_watermark() {
        let eos = Position {
            next: 10,
            marker_follows: true,
        };
        assert!(eos.is_end(11) && eos.is_end(10) && !eos.is_end(12));
        let alo = Position {
            next: 10,
            marker_follows: false,
        };
        assert!(alo.is_end(10) && !alo.is_end(11));
        assert_eq!(Position::decode(&eos.encode()), Some(eos));
        assert_eq!(Position::decode(&alo.encode()), Some(alo));
        assert_eq!(Position::decode(&[0; 3]), None);
    }

    #[test]
    fn input_headers_round_trip_and_refuse_garbage() {
        let text = encode_inputs([("a-images", 5), ("a-alerts", 0)].into_iter());
        assert_eq!(
            decode_inputs(&text),
            Some(vec![("a-images", 5), ("a-alerts", 0)])
        );
        assert_eq!(decode_inputs(""), Some(vec![]));
        assert_eq!(decode_inputs("a-images"), None);
        assert_eq!(decode_inputs("a=x"), None);
    }
}
