//! A receiver of real OTLP over HTTP (protobuf bodies, as
//! `opentelemetry-otlp` sends them) on 127.0.0.1, decoding each export with
//! the `opentelemetry-proto` messages: spans and metric names, by the
//! service that sent them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Metric names per service.
    metrics: HashMap<String, Vec<String>>,
    /// Every body as received, to look for secrets in.
    raw: Vec<u8>,
}

pub struct OtlpReceiver {
    pub endpoint: String,
    received: Arc<Mutex<Received>>,
    _runtime: tokio::runtime::Runtime,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .with_state(Arc::clone(&received));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        OtlpReceiver {
            endpoint: format!("http://{addr}"),
            received,
            _runtime: runtime,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    pub fn metric_names(&self, service: &str) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .metrics
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether any export received so far holds `needle` anywhere.
    pub fn raw_contains(&self, needle: &str) -> bool {
        let received = self.received.lock().unwrap();
        received
            .raw
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn service_of(resource: &Option<opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .as_ref()
        .map(|r| attributes(&r.attributes))
        .and_then(|a| a.get("service.name").cloned())
        .unwrap_or_default()
}

async fn traces(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP trace export");
    let mut received = received.lock().unwrap();
    received.raw.extend_from_slice(&body);
    for rs in request.resource_spans {
        let service = service_of(&rs.resource);
        for ss in rs.scope_spans {
            for s in ss.spans {
                received.spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    attributes: attributes(&s.attributes),
                });
            }
        }
    }
    Vec::new()
}

async fn metrics(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> Vec<u8> {
    let request =
        ExportMetricsServiceRequest::decode(body.as_ref()).expect("an OTLP metrics export");
    let mut received = received.lock().unwrap();
    received.raw.extend_from_slice(&body);
    for rm in request.resource_metrics {
        let service = service_of(&rm.resource);
        let names = received.metrics.entry(service).or_default();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                if !names.contains(&m.name) {
                    names.push(m.name);
                }
            }
        }
    }
    Vec::new()
}
