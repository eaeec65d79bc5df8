//! Replay output stays byte for byte what it was: a seeded flood of each
//! profile through `topologies/cicd.toml`, on both backends, with the
//! default cache and commit interval and with a tiny cache and frequent
//! commits (so that tables evict, reload and sweep the store, and timers and
//! entries go through the store), must print exactly the output whose
//! SHA-256 is recorded below.
//!
//! The digests were recorded from main's binary just before the performance
//! work of issue 12 was merged (`a0bdc79`, whose intents already carry
//! `reason_code` and `caused_by`: `sluice flood --events 6000 --services 150
//! --seed 1 --invalid-per-mille 20 --profile P | sluice replay --input -
//! --drain | sha256sum`). Cache size and commit interval never change
//! output, so one digest per profile covers every run.
//!
//! When an intended change of the output format lands (a new field in
//! intents, say), regenerate them: check the new output first (`sluice
//! replay --diff` against the old one shows every changed intent), then run
//! `cargo test --test output_digest` and copy the `actual` digests from the
//! failure message into `EXPECTED`.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sluice::engine::{Engine, EngineOptions};
use sluice::flood::{write_flood, FloodConfig, Profile};
use sluice::replay::{replay, JsonLinesOutput, ReplayOptions};
use sluice::state::{MemoryBackend, RocksBackend, StateBackend};
use sluice::topology::Topology;

const EVENTS: u64 = 6_000;
const SERVICES: u32 = 150;

/// SHA-256 of the replay output of each profile, as main printed it.
const EXPECTED: [(Profile, &str); 2] = [
    (
        Profile::Releases,
        "e170b8654c79a3fcbabb45db3682f3e89e2d20f51e105cdb01557bb8bd09f505",
    ),
    (
        Profile::Survival,
        "3822e233ed49895a07b3cd1b4108149ab0762aef27cb9527d83b35bd13d32f21",
    ),
];

fn flood(profile: Profile) -> Vec<u8> {
    let cfg = FloodConfig {
        events: EVENTS,
        services: SERVICES,
        seed: 1,
        invalid_per_mille: 20,
        profile,
        ..FloodConfig::default()
    };
    let mut out = Vec::new();
    write_flood(&cfg, &mut out).expect("flood writes to memory");
    out
}

fn replay_on(
    backend: Box<dyn StateBackend>,
    input: &[u8],
    opts: &EngineOptions,
    every: u64,
) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/cicd.toml");
    let topo = Arc::new(Topology::load(&path).expect("cicd.toml is valid"));
    let mut engine = Engine::open(Arc::clone(&topo), backend, opts).expect("engine opens");
    let mut out = JsonLinesOutput::new(Vec::new(), topo.dead_letter_topic());
    let replay_opts = ReplayOptions {
        drain: true,
        commit_every: every,
        line_offset: 0,
    };
    replay(&mut engine, input, "flood", &mut out, &replay_opts, &mut ()).expect("replay succeeds");
    engine.close().expect("engine closes");
    out.into_inner()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn replay_output_is_byte_identical_to_mains() {
    let tiny = EngineOptions {
        cache_capacity: 40,
        ..EngineOptions::default()
    };
    let mut wrong = Vec::new();
    for (profile, expected) in EXPECTED {
        let input = flood(profile);
        let dir = tempfile::tempdir().expect("temporary directory");
        let scratch = tempfile::tempdir().expect("temporary directory");
        let runs: [(&str, Box<dyn StateBackend>, &EngineOptions, u64); 4] = [
            (
                "memory",
                Box::new(MemoryBackend::new()),
                &EngineOptions::default(),
                100_000,
            ),
            (
                "memory, tiny cache",
                Box::new(MemoryBackend::new()),
                &tiny,
                97,
            ),
            (
                "rocksdb (scratch)",
                Box::new(RocksBackend::open_scratch(scratch.path()).expect("rocksdb opens")),
                &EngineOptions::default(),
                100_000,
            ),
            (
                "rocksdb, tiny cache",
                Box::new(RocksBackend::open(dir.path()).expect("rocksdb opens")),
                &tiny,
                97,
            ),
        ];
        for (name, backend, opts, every) in runs {
            let output = replay_on(backend, &input, opts, every);
            let actual = hex(&Sha256::digest(&output));
            if actual != expected {
                wrong.push(format!(
                    "{profile} on {name}: expected {expected}, actual {actual} ({} bytes)",
                    output.len()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "replay output changed:\n{}",
        wrong.join("\n")
    );
}
