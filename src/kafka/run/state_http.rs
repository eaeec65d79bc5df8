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
    /// One sender per processing thread: each answers for its own tasks.
    requests: Mutex<Vec<mpsc::Sender<QueryRequest>>>,
    routing: OnceLock<Routing>,
    client: reqwest::Client,
}

/// The state query's HTTP side; the run's processing threads attach to it.
#[derive(Clone)]
pub struct StateService(Arc<Service>);

/// A processing thread's end of the state query.
pub struct StateQueries(pub(super) mpsc::Receiver<QueryRequest>);

/// What a run needs to serve the state query: the service (whose routes the
/// listener serves) and the address other instances reach this one's
/// listener at.
#[derive(Clone)]
pub struct StateQuerying {
    pub service: StateService,
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

impl Default for StateService {
    fn default() -> Self {
        Self::new()
    }
}

impl StateService {
    pub fn new() -> StateService {
        let service = Service {
            requests: Mutex::new(Vec::new()),
            routing: OnceLock::new(),
            client: reqwest::Client::builder()
                .timeout(ANSWER_TIMEOUT + Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        };
        StateService(Arc::new(service))
    }

    /// A processing thread's end: the questions it answers from its tasks.
    pub(super) fn attach(&self) -> StateQueries {
        let (tx, rx) = mpsc::channel();
        self.0
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        StateQueries(rx)
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

    /// Asks every processing thread; the one with the partition's task
    /// answers, the others say it is not theirs.
    async fn ask_loop(&self, service: &str, environment: &str, partition: i32) -> QueryReply {
        let mut answers = Vec::new();
        {
            let senders = self.0.requests.lock().unwrap_or_else(|p| p.into_inner());
            for tx in senders.iter() {
                let (reply, answer) = oneshot::channel();
                let request = QueryRequest {
                    service: service.to_owned(),
                    environment: environment.to_owned(),
                    partition,
                    reply,
                };
                if tx.send(request).is_ok() {
                    answers.push(answer);
                }
            }
        }
        if answers.is_empty() {
            return QueryReply::Failed("the run has stopped".into());
        }
        // The threads answer at once, each between two of its records: one
        // deadline for all of them.
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let mut replies = Vec::with_capacity(answers.len());
        for answer in answers {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(reply)) => replies.push(reply),
                Ok(Err(_)) => replies.push(QueryReply::Failed("the run has stopped".into())),
                Err(_) => {
                    return QueryReply::Failed(
                        "the run did not answer in time (busy restoring?)".into(),
                    )
                }
            }
        }
        pick_reply(replies.into_iter())
    }
}

/// The threads' answers as one: the owner's, else a failure, else "not here".
fn pick_reply(replies: impl Iterator<Item = QueryReply>) -> QueryReply {
    let mut best = QueryReply::NotHere;
    for reply in replies {
        match (&best, reply) {
            (_, found @ QueryReply::Found(_)) => return found,
            (QueryReply::NotHere, failed @ QueryReply::Failed(_)) => best = failed,
            _ => {}
        }
    }
    best
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
