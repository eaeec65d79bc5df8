//! Running the gateway: bind, serve until a signal, let in-flight requests
//! get their answer, flush the producer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::auth::Auth;
use super::config::{IngestConfig, SecretUnavailable};
use super::limits::Limiter;
use super::metrics::IngestMetrics;
use super::producer::{GatewayProducer, ProducerError, Readiness};
use super::routes::{router, App, Endpoint};
use super::shutdown::Shutdown;
use super::tls::{self, TlsError, TlsListener};

/// How often `/readyz` asks the cluster for metadata.
const READINESS_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error(transparent)]
    Secret(#[from] SecretUnavailable),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {address}: {cause}")]
    Bind {
        address: SocketAddr,
        cause: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("the Kafka producer failed for good (see the log); restart the gateway")]
    ProducerFailed,
}

/// What the gateway reports to: its meter, tracer and readiness flag.
pub struct IngestObserve {
    pub meter: opentelemetry::metrics::Meter,
    pub tracing: crate::telemetry::Tracing,
    pub health: Arc<crate::telemetry::Health>,
}

/// Serves until SIGTERM or SIGINT; `on_listening` is told the bound address
/// (the config may say port 0).
pub async fn serve(
    config: IngestConfig,
    brokers: &str,
    observe: IngestObserve,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), IngestError> {
    let largest_body = config
        .endpoints
        .iter()
        .map(|e| e.max_body)
        .max()
        .unwrap_or_default();
    let producer = GatewayProducer::new(
        &config.kafka,
        brokers,
        config.delivery_timeout,
        largest_body,
    )?;
    let names: Vec<&str> = config.endpoints.iter().map(|e| e.name.as_str()).collect();
    let app = Arc::new(App {
        endpoints: endpoints(&config)?,
        producer: producer.clone(),
        readiness: Readiness::new(Arc::clone(&observe.health)),
        retry_after: config.delivery_timeout,
        in_flight: Arc::new(tokio::sync::Semaphore::new(super::routes::MAX_IN_FLIGHT)),
        metrics: IngestMetrics::new(&observe.meter, &names),
        tracing: observe.tracing,
    });
    let mut topics: Vec<String> = config.endpoints.iter().map(|e| e.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let shutdown = Shutdown::on_signals().map_err(IngestError::Serve)?;
    app.readiness.spawn_probe(
        producer.clone(),
        topics,
        READINESS_PERIOD,
        shutdown.clone().requested(),
    );
    let tls = config
        .listen
        .tls
        .as_ref()
        .map(tls::server_config)
        .transpose()?;
    let address = config.listen.address;
    let tcp = TcpListener::bind(address)
        .await
        .map_err(|cause| IngestError::Bind { address, cause })?;
    let bound = tcp.local_addr().map_err(IngestError::Serve)?;
    tracing::info!(%bound, tls = tls.is_some(), endpoints = config.endpoints.len(), "listening");
    on_listening(bound);
    let routes = router(app);
    let stop = shutdown.clone().requested();
    let stop_accepting = shutdown.clone().requested();
    let serving = async {
        match tls {
            None => axum::serve(tcp, routes).with_graceful_shutdown(stop).await,
            Some(tls) => {
                let listener =
                    TlsListener::new(tcp, tls, stop_accepting).map_err(IngestError::Serve)?;
                axum::serve(listener, routes)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
        .map_err(IngestError::Serve)
    };
    let grace = config.listen.shutdown_timeout;
    let deadline = async {
        shutdown.requested().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving => served?,
        () = deadline => tracing::warn!(?grace, "in-flight requests outlived the shutdown timeout"),
    }
    if let Err(e) = producer.flush(config.delivery_timeout).await {
        tracing::warn!(error = %e, "flushing the producer");
    }
    if producer.failed() {
        return Err(IngestError::ProducerFailed);
    }
    Ok(())
}

fn endpoints(config: &IngestConfig) -> Result<HashMap<String, Endpoint>, SecretUnavailable> {
    config
        .endpoints
        .iter()
        .map(|e| {
            let endpoint = Endpoint {
                auth: Auth::resolve(&e.name, &e.auth)?,
                limiter: e.rate_limit.map(Limiter::new),
                config: e.clone(),
            };
            Ok((e.name.clone(), endpoint))
        })
        .collect()
}
