//! The telemetry flags the long-running commands share (`run`, `commit`,
//! `ingest`), and starting their telemetry.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use sluice::telemetry::{Telemetry, TelemetryOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct TelemetryArgs {
    /// Serve Prometheus metrics (`/metrics`, OpenMetrics text), `/healthz`
    /// and `/readyz` on this address, e.g. `127.0.0.1:9464` (port 0 picks a
    /// free one; the bound address is logged and printed as
    /// `metrics on http://ADDR`).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// The share of new traces sampled, 0 to 1 (parent-based: a sampled
    /// sender's trace is always continued). Default: OTEL_TRACES_SAMPLER_ARG,
    /// else 1. Traces go out over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT
    /// (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set.
    #[arg(long, value_name = "RATIO")]
    trace_ratio: Option<f64>,
}

impl TelemetryArgs {
    /// Starts the command's telemetry and its listener.
    pub fn start(&self, command: &'static str, extra: Option<axum::Router>) -> Result<Telemetry> {
        let mut telemetry = Telemetry::start(&TelemetryOptions {
            command,
            metrics_addr: self.metrics_addr,
            trace_ratio: self.trace_ratio,
        })
        .context("starting telemetry")?;
        if let Some(bound) = telemetry
            .serve(extra)
            .context("starting the metrics listener")?
        {
            // Tests and scripts read the bound address (port 0 picks one).
            println!("metrics on http://{bound}");
        }
        Ok(telemetry)
    }

    pub fn metrics_on(&self) -> bool {
        self.metrics_addr.is_some()
    }
}
