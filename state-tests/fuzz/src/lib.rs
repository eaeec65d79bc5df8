//! The checks every fuzz target runs on one input, shared by the cargo-fuzz
//! targets (nightly, `state-tests/fuzz/fuzz_targets/`) and by the stable test
//! `state-tests/fuzz_seeds.rs`, which feeds them every seed and every fixed
//! crash reproducer.
//!
//! A check panics when the code under test breaks a rule it documents: not
//! only "does not panic" but an oracle per parser (a round trip, an
//! independent grammar, "editing again changes nothing").

mod config;
mod formats;
mod oci;
mod records;
mod yaml;

pub use config::{commit_config, topology};
pub use formats::webhook_decode;
pub use oci::{duration, oci_reference};
pub use records::{json_record, protobuf_record, replay_line};
pub use yaml::yaml_edit;

/// The check of one target: panics when the input breaks a rule.
pub type Check = fn(&[u8]);

/// Every target by name: the seed directory and the binary share it.
pub const TARGETS: &[(&str, Check)] = &[
    ("replay_line", replay_line),
    ("json_record", json_record),
    ("protobuf_record", protobuf_record),
    ("topology", topology),
    ("commit_config", commit_config),
    ("yaml_edit", yaml_edit),
    ("oci_reference", oci_reference),
    ("duration", duration),
    ("webhook_decode", webhook_decode),
];
