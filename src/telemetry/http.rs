//! The telemetry listener of `sluice run`, `commit` and `ingest`
//! (`--metrics-addr`): `/metrics` for Prometheus, `/healthz` and `/readyz`.
//!
//! It runs on its own thread with its own tokio runtime, so serving HTTP
//! never takes a processing thread: a scrape reads published counters and
//! the processing loop never waits for a client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use super::prometheus;

/// Whether the process is ready for work, and if not, why: set by the
/// command (tasks restored and processing; the clone open; Kafka reachable).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Not ready, with the reason `/readyz` gives.
    pub fn set_unready(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.into();
        }
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|_| "starting".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {address} for metrics: {cause}")]
    Bind {
        address: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot start the metrics listener's runtime: {0}")]
    Runtime(std::io::Error),
}

struct Shared {
    registry: Option<Registry>,
    health: Arc<Health>,
}

/// The routes every long-running command serves; `extra` adds its own
/// (the state query of `sluice run`).
pub fn router(registry: Option<Registry>, health: Arc<Health>, extra: Option<Router>) -> Router {
    let shared = Arc::new(Shared { registry, health });
    let base = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    match extra {
        Some(extra) => base.merge(extra),
        None => base,
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let Some(registry) = &shared.registry else {
        return (StatusCode::NOT_FOUND, "metrics are off\n").into_response();
    };
    match prometheus::encode(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = format!("not ready: {}\n", shared.health.reason());
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

/// A listener on its own thread; stops when dropped.
pub struct Server {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `address` (port 0 picks one) and serves `routes` until dropped.
    pub fn start(address: SocketAddr, routes: Router) -> Result<Server, HttpError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Runtime)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(|cause| HttpError::Bind { address, cause })?;
        let bound = listener
            .local_addr()
            .map_err(|cause| HttpError::Bind { address, cause })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-http".into())
            .spawn(move || {
                let served = runtime.block_on(async {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                });
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the metrics listener stopped");
                }
            })
            .map_err(HttpError::Runtime)?;
        tracing::info!(%bound, "metrics and health on http://{bound}/metrics");
        Ok(Server {
            address: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
