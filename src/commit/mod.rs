//! The committer: deployment intents become GitOps commits.
//!
//! - [`edit`]: changes the image bytes of one manifest, and nothing else.
//! - [`config`]: the committer's TOML configuration.
//! - [`source`]: intents from Kafka, a replay output file or a channel.
//! - [`intent`]: the fields of an intent the committer reads, and no more.
//! - [`batch`]: what a batch does to a branch (newest per service, idempotency).
//! - [`message`]: commit message templates and `Sluice-Intent` trailers.
//! - [`index`]: the bounded index of a branch's trailers.
//! - [`url`]: the repository URL's rules (no credential in it).
//! - [`git`]: the clone, fetch, commit and fast-forward push, via the git CLI.
//! - [`push`]: the per-repository push rate limit and the retry backoff.
//! - [`committer`]: the loop that ties them together.
//! - [`dead_letter`]: refused intents, with their reason.
//! - [`report`]: what each push did, one record per intent, for lining up
//!   intents, commits and deployment statuses.
//! - [`metrics`]: outcomes, commits, pushes and latencies for Prometheus.

pub mod batch;
pub mod bench;
pub mod committer;
pub mod config;
mod counters;
pub mod dead_letter;
pub mod edit;
pub mod files;
pub mod git;
pub mod index;
pub mod intent;
pub mod message;
pub mod metrics;
pub mod push;
pub mod report;
pub mod source;
mod spans;
pub mod url;
