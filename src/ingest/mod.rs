//! `sluice ingest`: an HTTP gateway that receives webhooks, decodes each
//! with its endpoint's decoder, and answers 202 only once Kafka has
//! acknowledged the raw body.
//!
//! - [`config`]: the TOML file and its validation;
//! - [`auth`]: HMAC signatures, shared tokens, basic auth, secret paths;
//! - [`limits`]: rate limit, body limit, content type;
//! - [`routes`]: the endpoints and every answer;
//! - [`producer`]: the idempotent producer and readiness;
//! - [`metrics`]: requests, produce latency, bytes and skipped entries;
//! - [`server`], [`shutdown`], [`tls`]: listening, signals, TLS.

pub mod auth;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod producer;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod tls;

pub use config::IngestConfig;
pub use server::{serve, IngestError, IngestObserve};
