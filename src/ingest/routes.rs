//! The HTTP routes: `POST /hooks/NAME[/SECRET]`, `/healthz`, `/readyz`,
//! and the answer to every way a request can go.
//!
//! A request is checked cheapest first (endpoint, method, rate, declared
//! length, credentials, content type), then its body is read up to the
//! limit, its signature checked, it is decoded, and only when the broker has
//! acknowledged the record is it answered 202.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::json;

use super::auth::Auth;
use super::config::EndpointConfig;
use super::limits::{self, BodyError, Limiter};
use super::metrics::IngestMetrics;
use super::producer::{GatewayProducer, Outgoing, Readiness, Unavailable};
use crate::format::{self, Decoded};
use crate::record::{Field, Payload, TraceContext, TRACEPARENT};
use crate::telemetry::trace::{Kind as SpanKind, Tracing};

/// One endpoint, ready to serve.
pub struct Endpoint {
    pub config: EndpointConfig,
    pub auth: Auth,
    pub limiter: Option<Limiter>,
}

/// What every request handler shares.
pub struct App {
    pub endpoints: HashMap<String, Endpoint>,
    pub producer: GatewayProducer,
    pub readiness: Readiness,
    /// The `Retry-After` of a 503.
    pub retry_after: Duration,
    /// Requests being handled at once are bounded: each holds up to
    /// `max_body` bytes, and slow senders must not add up to unbounded memory.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub metrics: IngestMetrics,
    /// Starts a trace per stored webhook (or continues the sender's).
    pub tracing: Tracing,
}

/// Requests handled at once; above it a request is answered 503 at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a sender may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/hooks/{*rest}", any(hook))
        .fallback(|| async { answer(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable\n").into_response()
    }
}

fn answer(status: StatusCode, message: &str) -> Response {
    let body = if status.is_success() {
        json!({ "status": message })
    } else {
        json!({ "error": message })
    };
    (status, axum::Json(body)).into_response()
}

fn retry_later(status: StatusCode, message: &str, wait: Duration) -> Response {
    let mut response = answer(status, message);
    let secs = limits::retry_after_secs(wait).to_string();
    if let Ok(v) = HeaderValue::from_str(&secs) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The same answer whatever failed: no hint about which part was wrong.
fn unauthorized() -> Response {
    answer(StatusCode::UNAUTHORIZED, "authentication failed")
}

/// Every answer is counted by endpoint and status code.
async fn hook(State(app): State<Arc<App>>, request: Request) -> Response {
    let endpoint = endpoint_label(&app, request.uri().path());
    let response = handle(&app, request).await;
    app.metrics.answered(endpoint, response.status().as_u16());
    response
}

/// The endpoint a path names, or `""` (a label must not grow with whatever
/// paths scanners try).
fn endpoint_label<'a>(app: &'a App, path: &str) -> &'a str {
    let rest = path.trim_start_matches("/hooks/");
    let name = rest.split_once('/').map_or(rest, |(name, _)| name);
    app.endpoints
        .get_key_value(name)
        .map_or("", |(k, _)| k.as_str())
}

async fn handle(app: &Arc<App>, request: Request) -> Response {
    let received_at_ms = now_ms();
    // `/hooks/NAME` or `/hooks/NAME/SECRET`; the secret is never logged.
    let rest = request
        .uri()
        .path()
        .trim_start_matches("/hooks/")
        .to_owned();
    let (name, path_secret) = match rest.split_once('/') {
        Some((name, secret)) => (name, Some(secret)),
        None => (rest.as_str(), None),
    };
    let Some(endpoint) = app.endpoints.get(name) else {
        return answer(StatusCode::NOT_FOUND, "no such endpoint");
    };
    if path_secret.is_some() && !endpoint.auth.uses_path() {
        return answer(StatusCode::NOT_FOUND, "no such endpoint");
    }
    if request.method() != Method::POST {
        let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if let Some(response) = refusal(endpoint, request.headers(), path_secret) {
        return response;
    }
    let Ok(_permit) = Arc::clone(&app.in_flight).try_acquire_owned() else {
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight, retry later",
            Duration::from_secs(1),
        );
    };
    accept(app, endpoint, request, received_at_ms).await
}

/// The checks that need no body: the answer refusing the request, if one does.
fn refusal(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    path_secret: Option<&str>,
) -> Option<Response> {
    if let Some(Err(wait)) = endpoint.limiter.as_ref().map(Limiter::check) {
        return Some(retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded",
            wait,
        ));
    }
    if limits::declared_too_large(headers, endpoint.config.max_body) {
        return Some(too_large(endpoint));
    }
    if endpoint.auth.check_request(headers, path_secret).is_err() {
        return Some(unauthorized());
    }
    if !limits::content_type_fits(endpoint.config.format, headers) {
        let message = format!(
            "a {} payload is sent as application/json",
            endpoint.config.format
        );
        return Some(answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message));
    }
    None
}

fn too_large(endpoint: &Endpoint) -> Response {
    let message = format!("the body is larger than {} bytes", endpoint.config.max_body);
    answer(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

async fn accept(app: &App, endpoint: &Endpoint, request: Request, received_at_ms: i64) -> Response {
    let (parts, body) = request.into_parts();
    let reading = limits::read_body(body, endpoint.config.max_body);
    let body = match tokio::time::timeout(BODY_TIMEOUT, reading).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return too_large(endpoint),
        Ok(Err(BodyError::Broken)) => {
            return answer(StatusCode::BAD_REQUEST, "the body could not be read")
        }
        Err(_) => return answer(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
    };
    if endpoint.auth.check_body(&parts.headers, &body).is_err() {
        return unauthorized();
    }
    let decoded = match decode(&endpoint.config, &body) {
        Ok(decoded) => decoded,
        Err(message) => return answer(StatusCode::BAD_REQUEST, &message),
    };
    let header_text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let received_at = received_at_ms.to_string();
    let mut headers = vec![
        ("sluice-endpoint", endpoint.config.name.as_str()),
        ("sluice-received-at", received_at.as_str()),
    ];
    if let Some(ct) = header_text(header::CONTENT_TYPE.as_str()) {
        headers.push(("content-type", ct));
    }
    let delivery_id = endpoint
        .config
        .delivery_header
        .as_deref()
        .and_then(header_text);
    if let Some(id) = delivery_id {
        headers.push(("sluice-delivery-id", id));
    }
    let key = decoded.records.first().map(|r| r.field(Field::Service));
    // The sender's trace is continued (a span of ours when tracing is on,
    // else its traceparent passed on as it came).
    let parent = header_text(TRACEPARENT).and_then(TraceContext::parse);
    let mut span = app.tracing.start(
        "sluice.ingest webhook",
        SpanKind::Server,
        parent.as_ref(),
        &[],
    );
    span.set_attribute("sluice.endpoint", endpoint.config.name.clone());
    span.set_attribute("sluice.records", decoded.records.len() as i64);
    let traceparent = span.context().or(parent).map(|c| c.to_string());
    if let Some(tp) = &traceparent {
        headers.push((TRACEPARENT, tp.as_str()));
    }
    // A control command about a whole environment concerns every task.
    let every_partition = decoded
        .records
        .iter()
        .any(|r| matches!(r, Payload::Control(c) if c.service.is_none()));
    let out = Outgoing {
        topic: &endpoint.config.topic,
        key: key.as_deref(),
        body: &body,
        received_at_ms,
        headers,
        every_partition,
    };
    let producing = std::time::Instant::now();
    let sent = app.producer.send(out).await;
    if sent.is_err() {
        span.set_error("not stored");
    }
    drop(span);
    match sent {
        Ok(()) => {
            let name = &endpoint.config.name;
            app.metrics
                .stored(name, body.len(), producing.elapsed(), &decoded.ignored);
            accepted(&decoded)
        }
        Err(e @ Unavailable::Retry(_)) => {
            tracing::warn!(endpoint = %endpoint.config.name, error = %e, "answering 503");
            retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka is unavailable, retry later",
                app.retry_after,
            )
        }
        Err(e @ Unavailable::TooLarge(_)) => {
            tracing::warn!(endpoint = %endpoint.config.name, error = %e, "answering 413");
            answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the record is larger than the Kafka topic accepts",
            )
        }
        Err(e @ Unavailable::Refused(_)) => {
            tracing::error!(endpoint = %endpoint.config.name, error = %e, "answering 500");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "kafka refuses the record; the gateway's configuration needs fixing",
            )
        }
    }
}

/// Decodes with the endpoint's decoder; the error is the decoder's, naming the field.
fn decode(endpoint: &EndpointConfig, body: &[u8]) -> Result<Decoded, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    format::decode(endpoint.format, endpoint.kind, text, &endpoint.decode)
        .map_err(|e| e.to_string())
}

fn accepted(decoded: &Decoded) -> Response {
    let body = json!({
        "status": "accepted",
        "records": decoded.records.len(),
        "ignored": decoded.ignored,
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
