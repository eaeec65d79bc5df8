//! The gateway's metrics: requests by endpoint and status code, produce
//! latency, bytes accepted, and payload entries skipped by event type.
//!
//! Labels stay bounded whatever senders do: a path naming no endpoint is
//! counted under `endpoint=""`, and an endpoint counts at most
//! [`MAX_EVENT_LABELS`] distinct event types (a CloudEvents `type` is the
//! sender's to choose), the rest as `other`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

use crate::telemetry::catalog as c;
use crate::telemetry::instruments::{counter, histogram};

/// Distinct event-type labels per endpoint.
pub const MAX_EVENT_LABELS: usize = 64;

pub struct IngestMetrics {
    requests: Counter<u64>,
    produce: Histogram<f64>,
    bytes: Counter<u64>,
    ignored: Counter<u64>,
    events: Mutex<HashMap<String, HashSet<String>>>,
}

impl IngestMetrics {
    /// Registers the instruments; every endpoint starts with its byte and
    /// 202 counters at zero.
    pub fn new(meter: &Meter, endpoints: &[&str]) -> Self {
        let m = IngestMetrics {
            requests: counter(meter, &c::INGEST_REQUESTS),
            produce: histogram(meter, &c::INGEST_PRODUCE_DURATION),
            bytes: counter(meter, &c::INGEST_RECEIVED_BYTES),
            ignored: counter(meter, &c::INGEST_IGNORED),
            events: Mutex::new(HashMap::new()),
        };
        for e in endpoints {
            let label = [KeyValue::new("endpoint", e.to_string())];
            m.bytes.add(0, &label);
            m.requests
                .add(0, &[label[0].clone(), KeyValue::new("code", "202")]);
        }
        m
    }

    /// A request was answered with `code`; `endpoint` is `""` when the path
    /// named none.
    pub fn answered(&self, endpoint: &str, code: u16) {
        self.requests.add(
            1,
            &[
                KeyValue::new("endpoint", endpoint.to_owned()),
                // A string, as the zero series at start: one label set per code.
                KeyValue::new("code", code.to_string()),
            ],
        );
    }

    /// A webhook was stored: its size, how long the broker took, and the
    /// entries its decoder skipped.
    pub fn stored(&self, endpoint: &str, bytes: usize, produce: Duration, ignored: &[String]) {
        let label = KeyValue::new("endpoint", endpoint.to_owned());
        self.bytes.add(bytes as u64, std::slice::from_ref(&label));
        self.produce
            .record(produce.as_secs_f64(), std::slice::from_ref(&label));
        for event in ignored {
            let event = self.event_label(endpoint, event);
            self.ignored
                .add(1, &[label.clone(), KeyValue::new("event", event)]);
        }
    }

    fn event_label(&self, endpoint: &str, event: &str) -> String {
        let mut seen = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let set = seen.entry(endpoint.to_owned()).or_default();
        if set.contains(event) {
            return event.to_owned();
        }
        if set.len() < MAX_EVENT_LABELS {
            set.insert(event.to_owned());
            return event.to_owned();
        }
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::prometheus::ScrapeReader;
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn event_labels_are_bounded_per_endpoint() {
        let reader = ScrapeReader::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let m = IngestMetrics::new(&provider.meter("t"), &["hooks"]);
        let events: Vec<String> = (0..MAX_EVENT_LABELS + 10)
            .map(|i| format!("type-{i}"))
            .collect();
        m.stored("hooks", 10, Duration::from_millis(1), &events);
        let text = crate::telemetry::prometheus::encode(&reader.registry()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("sluice_ingest_ignored_total{"))
            .count();
        assert_eq!(series, MAX_EVENT_LABELS + 1, "{text}");
        assert!(
            text.contains(r#"sluice_ingest_ignored_total{endpoint="hooks",event="other"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_ingest_received_bytes_total{endpoint="hooks"} 10"#),
            "{text}"
        );
    }
}
