//! The Prometheus scrape: OpenTelemetry's metrics, read through a manual
//! reader at each scrape and written as OpenMetrics text by
//! `prometheus-client`'s encoder.
//!
//! Why a bridge and not `opentelemetry-prometheus`: that exporter was
//! deprecated for releases 0.29 to 0.31 and is still beta; it writes through
//! the `prometheus` crate's text format 0.0.4, not OpenMetrics. The bridge
//! keeps OpenTelemetry as the instrumentation API (and OTLP as the push
//! path) and lets `prometheus-client`, the Prometheus project's own Rust
//! client, write the exposition format, so none of it is written by hand.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit as PromUnit};

use super::catalog::Unit;

/// The OpenMetrics content type a scrape is answered with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A manual reader that the meter provider and the scrape share.
#[derive(Debug, Clone)]
pub struct ScrapeReader(Arc<ManualReader>);

impl ScrapeReader {
    pub fn new() -> Self {
        ScrapeReader(Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        ))
    }

    /// The registry a scrape encodes: one collector reading this reader.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Bridge(Arc::clone(&self.0))));
        registry
    }
}

impl Default for ScrapeReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricReader for ScrapeReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    /// Prometheus counters are cumulative.
    fn temporality(&self, _kind: InstrumentKind) -> Temporality {
        Temporality::Cumulative
    }
}

/// Encodes `registry` as OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 << 10);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Bridge(Arc<ManualReader>);

impl prometheus_client::collector::Collector for Bridge {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut rm = ResourceMetrics::default();
        if let Err(e) = self.0.collect(&mut rm) {
            tracing::warn!(error = %e, "collecting metrics for a scrape failed");
            return Ok(());
        }
        for scope in rm.scope_metrics() {
            for metric in scope.metrics() {
                encode_metric(&mut encoder, metric)?;
            }
        }
        Ok(())
    }
}

type Labels = Vec<(String, String)>;

fn labels<'a>(attributes: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Labels {
    attributes
        .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
        .collect()
}

fn prom_unit(unit: &str) -> Option<PromUnit> {
    match Unit::from_otel(unit) {
        Unit::None => None,
        Unit::Seconds => Some(PromUnit::Seconds),
        Unit::Bytes => Some(PromUnit::Bytes),
    }
}

fn encode_metric(encoder: &mut DescriptorEncoder<'_>, metric: &Metric) -> fmt::Result {
    let unit = prom_unit(metric.unit());
    let name = metric.name();
    let help = metric.description();
    match metric.data() {
        AggregatedMetrics::U64(data) => {
            encode_data(encoder, name, help, unit.as_ref(), data, |v| v as f64)
        }
        AggregatedMetrics::I64(data) => {
            encode_data(encoder, name, help, unit.as_ref(), data, |v| v as f64)
        }
        AggregatedMetrics::F64(data) => {
            encode_data(encoder, name, help, unit.as_ref(), data, |v| v)
        }
    }
}

fn encode_data<T: Copy>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&PromUnit>,
    data: &MetricData<T>,
    as_f64: impl Fn(T) -> f64,
) -> fmt::Result {
    match data {
        MetricData::Sum(sum) if sum.is_monotonic() => {
            let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
            for point in sum.data_points() {
                let labels = labels(point.attributes());
                let value = as_f64(point.value());
                family
                    .encode_family(&labels)?
                    .encode_counter::<Labels, f64, f64>(&value, None)?;
            }
        }
        MetricData::Sum(sum) => {
            let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            for point in sum.data_points() {
                let labels = labels(point.attributes());
                family
                    .encode_family(&labels)?
                    .encode_gauge(&as_f64(point.value()))?;
            }
        }
        MetricData::Gauge(gauge) => {
            let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            for point in gauge.data_points() {
                let labels = labels(point.attributes());
                family
                    .encode_family(&labels)?
                    .encode_gauge(&as_f64(point.value()))?;
            }
        }
        MetricData::Histogram(histogram) => {
            let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
            for point in histogram.data_points() {
                let labels = labels(point.attributes());
                let mut buckets: Vec<(f64, u64)> =
                    point.bounds().zip(point.bucket_counts()).collect();
                // OpenTelemetry keeps one more count than bounds: the +Inf bucket.
                let overflow = point.bucket_counts().nth(buckets.len()).unwrap_or(0);
                buckets.push((f64::INFINITY, overflow));
                family.encode_family(&labels)?.encode_histogram::<Labels>(
                    as_f64(point.sum()),
                    point.count(),
                    &buckets,
                    None,
                )?;
            }
        }
        // Not used by Sluice's instruments.
        MetricData::ExponentialHistogram(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    fn scrape(build: impl FnOnce(&opentelemetry::metrics::Meter)) -> String {
        let reader = ScrapeReader::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter("test");
        build(&meter);
        encode(&reader.registry()).expect("encodes")
    }

    #[test]
    fn counters_gauges_and_histograms_are_openmetrics() {
        let text = scrape(|meter| {
            let c = meter.u64_counter("sluice_commits").build();
            c.add(3, &[KeyValue::new("class", "abortable")]);
            let g = meter
                .i64_gauge("sluice_process_resident_memory")
                .with_unit("By")
                .build();
            g.record(1024, &[]);
            let h = meter
                .f64_histogram("sluice_commit_duration")
                .with_unit("s")
                .with_boundaries(vec![0.1, 1.0])
                .build();
            h.record(0.05, &[]);
            h.record(0.5, &[]);
            h.record(5.0, &[]);
        });
        assert!(text.contains("# TYPE sluice_commits counter"), "{text}");
        assert!(
            text.contains("sluice_commits_total{class=\"abortable\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sluice_process_resident_memory_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains("sluice_process_resident_memory_bytes 1024"),
            "{text}"
        );
        assert!(
            text.contains("sluice_commit_duration_seconds_count 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_commit_duration_seconds_bucket{le=\"0.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_commit_duration_seconds_bucket{le=\"1.0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_commit_duration_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn observable_counters_are_read_at_each_scrape() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let value = Arc::new(AtomicU64::new(7));
        let reader = ScrapeReader::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let seen = Arc::clone(&value);
        let _c = provider
            .meter("test")
            .u64_observable_counter("sluice_node_records_in")
            .with_callback(move |o| {
                o.observe(
                    seen.load(Ordering::Relaxed),
                    &[KeyValue::new("node", "dedup")],
                )
            })
            .build();
        let registry = reader.registry();
        assert!(encode(&registry)
            .unwrap()
            .contains("sluice_node_records_in_total{node=\"dedup\"} 7"));
        value.store(9, Ordering::Relaxed);
        assert!(encode(&registry)
            .unwrap()
            .contains("sluice_node_records_in_total{node=\"dedup\"} 9"));
    }
}
