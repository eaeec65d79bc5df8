//! `GET /v1/state/{service}/{environment}` on `sluice run`'s listener: the
//! owner of the key's partition answers from its engine; any other instance
//! forwards the question to the owner it finds in the directory, as Kafka
//! Streams' interactive queries do with `application.server`.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::oneshot;

use super::directory::Directory;
use super::query::{partition_of, QueryReply, QueryRequest};

/// How long a question may wait for the processing loop (it answers
/// between two records; a restore or a long commit can hold it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run sets once it knows its layout.
struct Routing {
    partitions: i32,
    instance: String,
    directory: Directory,
}

struct Service {
    requests: Mutex<mpsc::Sender<QueryRequest>>,
    routing: OnceLock<Routing>,
    client: reqwest::Client,
}

/// The state query: the HTTP side, and the receiver the run loop answers.
#[derive(Clone)]
pub struct StateService(Arc<Service>);

/// The loop's end of the state query.
pub struct StateQueries(pub(super) mpsc::Receiver<QueryRequest>);

/// What a run needs to serve the state query: the service (whose routes the
/// listener serves), the loop's end, and the address other instances
/// reach this one's listener at.
#[derive(Clone)]
pub struct StateQuerying {
    pub service: StateService,
    pub queries: Arc<Mutex<Option<StateQueries>>>,
    pub advertise: String,
}

impl std::fmt::Debug for StateQuerying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateQuerying")
            .field("advertise", &self.advertise)
            .finish()
    }
}

impl std::fmt::Debug for StateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateService")
    }
}

impl StateService {
    pub fn new() -> (StateService, StateQueries) {
        let (tx, rx) = mpsc::channel();
        let service = Service {
            requests: Mutex::new(tx),
            routing: OnceLock::new(),
            client: reqwest::Client::builder()
                .timeout(ANSWER_TIMEOUT + Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        };
        (StateService(Arc::new(service)), StateQueries(rx))
    }

    /// The routes to add to the telemetry listener.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/state/{service}/{environment}", get(answer))
            .with_state(self.clone())
    }

    /// Called by the run once the input partitions and the directory are known.
    pub(super) fn route(&self, partitions: i32, instance: &str, directory: Directory) {
        let _ = self.0.routing.set(Routing {
            partitions,
            instance: instance.to_owned(),
            directory,
        });
    }

    async fn ask_loop(&self, service: &str, environment: &str, partition: i32) -> QueryReply {
        let (reply, answer) = oneshot::channel();
        let request = QueryRequest {
            service: service.to_owned(),
            environment: environment.to_owned(),
            partition,
            reply,
        };
        let sent = self
            .0
            .requests
            .lock()
            .map(|tx| tx.send(request).is_ok())
            .unwrap_or(false);
        if !sent {
            return QueryReply::Failed("the run has stopped".into());
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => QueryReply::Failed("the run has stopped".into()),
            Err(_) => QueryReply::Failed("the run did not answer in time (busy restoring?)".into()),
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct Hops {
    /// Set on a forwarded question: it is not forwarded again.
    #[serde(default)]
    forwarded: bool,
}

fn error(status: StatusCode, message: String) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    r
}

async fn answer(
    State(svc): State<StateService>,
    Path((service, environment)): Path<(String, String)>,
    Query(hops): Query<Hops>,
) -> Response {
    let Some(routing) = svc.0.routing.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "starting".into());
    };
    let partition = partition_of(&service, routing.partitions);
    match svc.ask_loop(&service, &environment, partition).await {
        QueryReply::Found(mut state) => {
            state["partition"] = partition.into();
            state["instance"] = routing.instance.clone().into();
            axum::Json(state).into_response()
        }
        QueryReply::Failed(why) => error(StatusCode::INTERNAL_SERVER_ERROR, why),
        QueryReply::NotHere if hops.forwarded => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("partition {partition} is not here any more (rebalancing); retry"),
        ),
        QueryReply::NotHere => forward(&svc, routing, &service, &environment, partition).await,
    }
}

/// Asks the owner of `partition`, as the directory names it.
async fn forward(
    svc: &StateService,
    routing: &Routing,
    service: &str,
    environment: &str,
    partition: i32,
) -> Response {
    let owner = routing.directory.owner(partition);
    let Some((owner, address)) = owner.filter(|(id, _)| *id != routing.instance) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no instance owns partition {partition} right now (rebalancing); retry"),
        );
    };
    let url = format!(
        "http://{address}/v1/state/{}/{}?forwarded=true",
        path_segment(service),
        path_segment(environment)
    );
    tracing::debug!(partition, %owner, %address, "forwarding a state query");
    let answer = match svc.0.client.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the owner of partition {partition} ({owner} at {address}) did not answer: {e}"
                ),
            )
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    match answer.bytes().await {
        Ok(body) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Percent-encodes a path segment (of a state query's URL).
pub fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
