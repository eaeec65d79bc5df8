//! Sluice: a Kafka Streams-style stateful stream processor for event-driven CI/CD.
//!
//! - [`topology`]: TOML topologies and their validation.
//! - [`record`]: image events, alerts and deployment intents.
//! - [`operators`]: route, dedup, debounce, throttle and alert_gate.
//! - [`state`]: the state backend trait, RocksDB and in-memory.
//! - [`engine`]: runs a topology on a clock given by its driver.
//! - [`replay`]: the replay driver (`sluice replay`).
//! - [`telemetry`]: metrics, traces and health of the long-running commands.

pub mod commit;
pub mod diff;
pub mod duration;
pub mod engine;
pub mod fault;
pub mod flood;
pub mod format;
pub mod ingest;
pub mod kafka;
pub mod operators;
pub mod proto;
pub mod record;
pub mod replay;
pub mod state;
pub mod telemetry;
pub mod topology;
