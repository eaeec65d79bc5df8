//! Metrics, traces and health for the long-running commands (`sluice run`,
//! `commit`, `ingest`).
//!
//! - [`catalog`]: every metric's definition (the instruments and the
//!   dashboard are both built from it);
//! - [`instruments`]: OpenTelemetry instruments from those definitions;
//! - [`prometheus`]: the scrape, OpenTelemetry to OpenMetrics text through
//!   `prometheus-client`;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz` on a thread of their own;
//! - [`trace`]: spans and W3C trace context across Kafka headers;
//! - [`process`]: RSS, CPU, file descriptors, build info;
//! - [`dashboard`]: the Grafana dashboard.
//!
//! Metrics are instrumented with the OpenTelemetry API and SDK. They are
//! scraped from `--metrics-addr` and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or its `_METRICS_`/`_TRACES_` forms) is set, pushed over OTLP/HTTP
//! with traces; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the
//! resource.

pub mod catalog;
pub mod dashboard;
pub mod http;
pub mod instruments;
pub mod process;
pub mod prometheus;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

pub use http::Health;
pub use trace::Tracing;

/// How a command wants its telemetry.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// `run`, `commit` or `ingest`: the default service name's suffix and
    /// the `command` label of the build info.
    pub command: &'static str,
    /// Serve `/metrics`, `/healthz` and `/readyz` here.
    pub metrics_addr: Option<SocketAddr>,
    /// The share of new traces sampled (parent-based: a sampled parent is
    /// always followed). `None`: `OTEL_TRACES_SAMPLER_ARG`, else 1.0.
    pub trace_ratio: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP {signal} exporter: {cause}")]
    Otlp { signal: &'static str, cause: String },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("--trace-ratio must be between 0 and 1, not {0}")]
    Ratio(f64),
}

/// The process's telemetry: a meter provider (scraped and/or pushed), a
/// tracer when traces are exported, and the health flag.
pub struct Telemetry {
    meter: Meter,
    meters: SdkMeterProvider,
    scrape: Option<prometheus::ScrapeReader>,
    tracer_provider: Option<SdkTracerProvider>,
    pub tracing: Tracing,
    pub health: Arc<Health>,
    server: Option<http::Server>,
    metrics_addr: Option<SocketAddr>,
}

impl Telemetry {
    /// No export at all: instruments exist but record nothing anyone reads
    /// (replay, benchmarks, library users).
    pub fn off() -> Self {
        let meters = SdkMeterProvider::builder().build();
        Telemetry {
            meter: meters.meter("sluice"),
            meters,
            scrape: None,
            tracer_provider: None,
            tracing: Tracing::off(),
            health: Arc::new(Health::default()),
            server: None,
            metrics_addr: None,
        }
    }

    /// Builds the providers the options and the standard OpenTelemetry
    /// variables ask for. Call [`Telemetry::serve`] to open the listener.
    pub fn start(opts: &TelemetryOptions) -> Result<Self, TelemetryError> {
        let resource = resource(opts.command);
        let scrape = opts.metrics_addr.map(|_| prometheus::ScrapeReader::new());
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        if let Some(reader) = &scrape {
            builder = builder.with_reader(reader.clone());
        }
        if otlp_wanted("METRICS") {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .map_err(|e| TelemetryError::Otlp {
                    signal: "metrics",
                    cause: e.to_string(),
                })?;
            builder = builder.with_periodic_exporter(exporter);
        }
        let meters = builder.build();
        let meter = meters.meter("sluice");
        process::register(&meter, opts.command);
        let health = Arc::new(Health::default());
        register_ready(&meter, opts.command, &health);
        let tracer_provider = if otlp_wanted("TRACES") {
            Some(tracer_provider(resource, trace_ratio(opts.trace_ratio)?)?)
        } else {
            None
        };
        let tracing = tracer_provider
            .as_ref()
            .map_or_else(Tracing::off, Tracing::new);
        tracing::info!(
            metrics = ?opts.metrics_addr,
            otlp_metrics = otlp_wanted("METRICS"),
            traces = tracing.is_on(),
            "telemetry"
        );
        Ok(Telemetry {
            meter,
            meters,
            scrape,
            tracer_provider,
            tracing,
            health,
            server: None,
            metrics_addr: opts.metrics_addr,
        })
    }

    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Opens the listener of `--metrics-addr` (if given), with the
    /// command's own routes added. Returns the bound address.
    pub fn serve(
        &mut self,
        extra: Option<axum::Router>,
    ) -> Result<Option<SocketAddr>, TelemetryError> {
        let Some(address) = self.metrics_addr else {
            return Ok(None);
        };
        let registry = self.scrape.as_ref().map(prometheus::ScrapeReader::registry);
        let routes = http::router(registry, Arc::clone(&self.health), extra);
        let server = http::Server::start(address, routes)?;
        let bound = server.address();
        self.server = Some(server);
        Ok(Some(bound))
    }

    /// The address the listener is bound to, once it serves.
    pub fn bound_address(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(http::Server::address)
    }

    /// The current metrics as OpenMetrics text (what a scrape returns), or
    /// `None` without `--metrics-addr`.
    pub fn scrape_text(&self) -> Option<String> {
        let registry = self.scrape.as_ref()?.registry();
        prometheus::encode(&registry).ok()
    }

    /// Stops the listener, then pushes what OTLP has not sent yet.
    pub fn shutdown(mut self) {
        self.server.take();
        if let Some(provider) = self.tracer_provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing traces");
            }
        }
        if let Err(e) = self.meters.shutdown() {
            tracing::debug!(error = %e, "flushing metrics");
        }
    }
}

/// `sluice_ready`: what `/readyz` says, as 1 or 0.
fn register_ready(meter: &Meter, command: &'static str, health: &Arc<Health>) {
    let health = Arc::clone(health);
    let label = [opentelemetry::KeyValue::new("command", command)];
    instruments::observable_gauge(meter, &catalog::READY, move |o| {
        o.observe(if health.is_ready() { 1.0 } else { 0.0 }, &label);
    });
}

/// Whether an OTLP endpoint is configured for `signal` (`TRACES`, `METRICS`).
fn otlp_wanted(signal: &str) -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let exporter = std::env::var(format!("OTEL_{signal}_EXPORTER")).unwrap_or_default();
    exporter != "none"
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

/// The resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` when
/// set (the SDK reads them), else `sluice-<command>`.
fn resource(command: &'static str) -> Resource {
    let builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder
            .with_service_name(format!("sluice-{command}"))
            .build()
    }
}

fn trace_ratio(given: Option<f64>) -> Result<f64, TelemetryError> {
    let ratio = given
        .or_else(|| {
            std::env::var("OTEL_TRACES_SAMPLER_ARG")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1.0);
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(TelemetryError::Ratio(ratio))
    }
}

fn tracer_provider(resource: Resource, ratio: f64) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Otlp {
            signal: "traces",
            cause: e.to_string(),
        })?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_batch_exporter(exporter)
        .build())
}
