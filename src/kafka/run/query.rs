//! The state query of a live run: `GET /v1/state/{service}/{environment}`
//! asks the processing loop, which owns the engines, through a channel, and
//! the loop answers between two records (an engine is never shared with the
//! HTTP thread). The key's partition is where its records go: every Sluice
//! producer, and the Java clients, partition by the key's murmur2 hash, and
//! sources are keyed by service.

use std::sync::mpsc::{Receiver, TryRecvError};

use tokio::sync::oneshot;

use super::consumer::Inner;

/// One question to the processing loop.
pub struct QueryRequest {
    pub service: String,
    pub environment: String,
    pub partition: i32,
    pub reply: oneshot::Sender<QueryReply>,
}

/// The loop's answer.
#[derive(Debug)]
pub enum QueryReply {
    /// The key's state (a `KeyState` as JSON).
    Found(serde_json::Value),
    /// This instance has no task for the partition.
    NotHere,
    Failed(String),
}

/// The partition the Java clients' default partitioner (and librdkafka's
/// `murmur2_random`, which Sluice's producers use) gives `key`.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let hash = murmur2(key.as_bytes()) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

impl Inner {
    /// Answers the questions waiting, from the engines of this instance's
    /// tasks (what they hold as processed, committed or not).
    pub(super) fn serve_queries(&mut self, queries: &Receiver<QueryRequest>) {
        loop {
            let request = match queries.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            let reply = match self.tasks.get_mut(&request.partition) {
                None => QueryReply::NotHere,
                Some(task) => match task.engine.query(&request.service, &request.environment) {
                    Ok(state) => match serde_json::to_value(&state) {
                        Ok(json) => QueryReply::Found(json),
                        Err(e) => QueryReply::Failed(e.to_string()),
                    },
                    Err(e) => QueryReply::Failed(e.to_string()),
                },
            };
            // The asker may have given up (a timeout); nothing to do then.
            let _ = request.reply.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients() {
        // The values librdkafka's own unit test checks against Java's.
        let unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            ("1234", 0x9fc9_7b14),
            ("234", 0xe7c0_09ca),
            ("34", 0x8739_30da),
            ("4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in [1, 2, 3, 12] {
            for key in ["api", "web", "svc-0001", ""] {
                let p = partition_of(key, n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition_of(key, n));
            }
        }
    }
}
