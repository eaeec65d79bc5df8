//! What the committer did: one record per intent a commit on the branch
//! accounts for, so that intents, commits and deployment statuses can be
//! lined up (in traces, in the state query, by people).
//!
//! - After a push, each intent the pushed commit lists in a trailer is
//!   reported: `applied` (its image was written), `retried` (an empty commit
//!   for a retry of a failed sync) or `superseded` (a newer intent for its
//!   service and environment decided the batch; `superseded_by` names it).
//! - A redelivered intent whose trailer is on the branch already is
//!   reported again, `already_committed`, with the commit the trailer index
//!   finds it in (the newest, when several list it).
//! - Holds, refusals, outdated intents and intents whose image the files
//!   already held make no commit and are not reported.
//!
//! Reports are made durable before the source's offsets are committed: a
//! crash after the push but before the report redelivers the intents, which
//! are then already committed and reported again. So no report is lost, and
//! some come twice (consumers key them by `intent_id`).
//!
//! They go to the `[kafka] report_topic` (key `service/environment`, the
//! intent's `traceparent` header, timestamp `pushed_at`), or with
//! `--report FILE` to a JSON Lines file in the replay format.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;

use super::batch::{BranchPlan, Checked, Outcome};
use super::dead_letter::Deliveries;
use super::index::CommitRef;
use crate::record::{TraceContext, TRACEPARENT};
use crate::replay::OutputLine;

/// The topic name report lines carry in a file when the config names none.
pub const DEFAULT_FILE_TOPIC: &str = "deploy-reports";

/// One report: the intent, what became of it and the commit that holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub intent_id: String,
    pub service: String,
    pub environment: String,
    pub image: String,
    pub action: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason_code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// `applied`, `retried`, `superseded` or `already_committed`.
    pub outcome: &'static str,
    /// For `superseded`: the intent that decided the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The full object name of the commit whose trailers list the intent.
    pub commit: String,
    pub branch: String,
    /// When the push returned (ms since the epoch); for `already_committed`
    /// the commit's committer time (whole seconds).
    pub pushed_at: u64,
    /// The intent's `caused_by` list, when it had one, as it was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<Box<serde_json::value::RawValue>>,
    /// The intent's trace, carried as the record's `traceparent` header.
    #[serde(skip)]
    pub trace: Option<TraceContext>,
}

impl Report {
    /// The record's key: the intents' key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.service, self.environment)
    }

    fn new(c: &Checked, outcome: &'static str, commit: &CommitRef, branch: &str) -> Report {
        Report {
            intent_id: c.intent.intent_id.clone(),
            service: c.intent.service.clone(),
            environment: c.intent.environment.clone(),
            image: c.intent.image.clone(),
            action: c.intent.action.as_str(),
            reason_code: c.intent.reason_code.clone(),
            reason: c.intent.reason.clone(),
            outcome,
            superseded_by: None,
            commit: commit.sha.to_string(),
            branch: branch.to_owned(),
            pushed_at: u64::try_from(commit.time).unwrap_or(0) * 1000,
            caused_by: c.intent.caused_by.clone(),
            trace: c.trace,
        }
    }
}

/// The reports of one branch's plan, in batch order. `pushed` is the commit
/// the plan made and when its push returned (ms), if it made one;
/// `committed` finds the commit whose trailers list an id.
pub fn branch_reports(
    items: &[(usize, &Checked)],
    plan: &BranchPlan,
    branch: &str,
    pushed: Option<(&CommitRef, u64)>,
    committed: &dyn Fn(&str) -> Option<CommitRef>,
) -> Vec<Report> {
    let by_index: HashMap<usize, &Checked> = items.iter().copied().collect();
    let mut out = Vec::new();
    for (at, outcome) in &plan.outcomes {
        let Some(c) = by_index.get(at) else { continue };
        let report = match (outcome, pushed) {
            // Only a pushed commit lists them (a superseded intent whose
            // newest was committed before makes no commit by itself).
            (o, Some((commit, at_ms))) if o.is_listed() => {
                let mut r = Report::new(c, o.label(), commit, branch);
                r.pushed_at = at_ms;
                r.superseded_by = plan
                    .superseded_by
                    .get(at)
                    .and_then(|n| by_index.get(n))
                    .map(|n| n.intent.intent_id.clone());
                r
            }
            (Outcome::AlreadyCommitted, _) => match committed(&c.intent.intent_id) {
                Some(commit) => Report::new(c, outcome.label(), &commit, branch),
                None => continue,
            },
            _ => continue,
        };
        out.push(report);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report file {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("report topic {topic}: {cause}")]
    Kafka {
        topic: String,
        cause: rdkafka::error::KafkaError,
    },
    #[error("report topic {topic}: {count} reports were not delivered")]
    Undelivered { topic: String, count: u64 },
    #[error("report topic {0} does not exist: create it (the committer creates no topic)")]
    Missing(String),
}

/// Where reports go.
pub trait Reports {
    /// Queues one report.
    fn send(&mut self, report: &Report) -> Result<(), ReportError>;
    /// Makes everything queued durable; called before offsets are committed.
    fn flush(&mut self) -> Result<(), ReportError>;
}

/// Appends to a JSON Lines file in the replay format
/// (`{"topic", "ts", "key", "value"}`), so that a replay can read them.
pub struct FileReports {
    out: BufWriter<File>,
    path: String,
    topic: String,
}

impl FileReports {
    pub fn open(path: &Path, topic: &str) -> Result<FileReports, ReportError> {
        let shown = path.display().to_string();
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|cause| ReportError::Io {
                path: shown.clone(),
                cause,
            })?;
        Ok(FileReports {
            out: BufWriter::new(file),
            path: shown,
            topic: topic.to_owned(),
        })
    }

    fn io(&self, cause: std::io::Error) -> ReportError {
        ReportError::Io {
            path: self.path.clone(),
            cause,
        }
    }
}

impl Reports for FileReports {
    fn send(&mut self, report: &Report) -> Result<(), ReportError> {
        let key = report.key();
        let line = OutputLine {
            topic: &self.topic,
            ts: report.pushed_at,
            key: Some(&key),
            value: report,
        };
        let text = serde_json::to_string(&line).map_err(|e| self.io(e.into()))?;
        writeln!(self.out, "{text}").map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), ReportError> {
        self.out.flush().map_err(|e| self.io(e))?;
        self.out.get_ref().sync_data().map_err(|e| self.io(e))
    }
}

/// Produces to the report topic (idempotent producer); `flush` waits for
/// every acknowledgement.
pub struct KafkaReports {
    producer: BaseProducer<Deliveries>,
    topic: String,
}

impl KafkaReports {
    pub fn new(mut config: ClientConfig, topic: &str) -> Result<KafkaReports, ReportError> {
        let producer = config
            .set("enable.idempotence", "true")
            .create_with_context(Deliveries::new("report"))
            .map_err(|cause| ReportError::Kafka {
                topic: topic.to_owned(),
                cause,
            })?;
        check_topic_exists(&producer, topic)?;
        Ok(KafkaReports {
            producer,
            topic: topic.to_owned(),
        })
    }

    fn err(&self, cause: rdkafka::error::KafkaError) -> ReportError {
        ReportError::Kafka {
            topic: self.topic.clone(),
            cause,
        }
    }
}

/// Refuses a report topic that does not exist at the start, rather than
/// after the first push (reports are never created as a side effect).
fn check_topic_exists(producer: &BaseProducer<Deliveries>, topic: &str) -> Result<(), ReportError> {
    let timeout = Duration::from_secs(30);
    let (_, missing) = crate::kafka::listed::metadata_listing(
        producer.client(),
        Some(topic),
        &[topic],
        timeout,
        |_| true,
    )
    .map_err(|cause| ReportError::Kafka {
        topic: topic.to_owned(),
        cause,
    })?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ReportError::Missing(topic.to_owned()))
    }
}

impl Reports for KafkaReports {
    fn send(&mut self, report: &Report) -> Result<(), ReportError> {
        let value = serde_json::to_string(report).unwrap_or_default();
        let key = report.key();
        let traceparent = report.trace.map(|t| t.to_string());
        let mut record = BaseRecord::to(&self.topic)
            .payload(&value)
            .key(&key)
            .timestamp(i64::try_from(report.pushed_at).unwrap_or(i64::MAX));
        if let Some(tp) = &traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: TRACEPARENT,
                value: Some(tp.as_str()),
            }));
        }
        // Waits while librdkafka's queue is full instead of failing the batch.
        crate::kafka::run::producer::send(&self.producer, record)
            .map_err(|cause| self.err(cause))?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ReportError> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|cause| self.err(cause))?;
        match self.producer.context().take_failed() {
            0 => Ok(()),
            n => Err(ReportError::Undelivered {
                topic: self.topic.clone(),
                count: n,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::batch::{check, Delivery};
    use crate::commit::config::CommitConfig;
    use std::time::Instant;

    const CONFIG: &str = "[repository]\nurl = \"file:///x\"\n[author]\nname = \"S\"\nemail = \"s@x\"\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n";
    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn checked(config: &CommitConfig, value: serde_json::Value) -> Checked {
        let d = Delivery {
            value: value.to_string(),
            key: None,
            ts: 0,
            received: Instant::now(),
            origin: "test".into(),
            trace: TraceContext::parse(TRACE),
        };
        check(&d, config).unwrap()
    }

    fn intent(id: &str, image: &str) -> serde_json::Value {
        serde_json::json!({"action": "deploy", "service": "api", "environment": "prod",
            "image": image, "intent_id": id, "reason": "new image"})
    }

    fn commit(sha: &str, time: i64) -> CommitRef {
        CommitRef {
            sha: sha.into(),
            time,
        }
    }

    #[test]
    fn a_pushed_plan_reports_what_its_commit_lists_and_a_redelivery_its_old_commit() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let mut first = intent("a", "api:v1");
        first["reason_code"] = "new_image".into();
        first["caused_by"] =
            serde_json::json!([{"line": 3}, {"topic": "t", "partition": 1, "offset": 9}]);
        let newest = intent("b", "api:v2");
        let older = intent("old", "api:v0");
        let (first, newest, older) = (
            checked(&config, first),
            checked(&config, newest),
            checked(&config, older),
        );
        let items = [(0, &first), (2, &newest), (5, &older)];
        let plan = BranchPlan {
            outcomes: vec![
                (0, Outcome::Superseded),
                (2, Outcome::Applied),
                (5, Outcome::AlreadyCommitted),
            ],
            superseded_by: HashMap::from([(0, 2)]),
            ..BranchPlan::default()
        };
        let earlier = commit("c0ffee", 1_700_000_000);
        let committed = |id: &str| (id == "old").then(|| earlier.clone());
        let pushed = commit("beef", 1_700_000_100);
        let reports = branch_reports(
            &items,
            &plan,
            "main",
            Some((&pushed, 1_700_000_100_250)),
            &committed,
        );
        let json: Vec<String> = reports
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"intent_id":"a","service":"api","environment":"prod","image":"api:v1","action":"deploy","reason_code":"new_image","reason":"new image","outcome":"superseded","superseded_by":"b","commit":"beef","branch":"main","pushed_at":1700000100250,"caused_by":[{"line":3},{"offset":9,"partition":1,"topic":"t"}]}"#,
                r#"{"intent_id":"b","service":"api","environment":"prod","image":"api:v2","action":"deploy","reason":"new image","outcome":"applied","commit":"beef","branch":"main","pushed_at":1700000100250}"#,
                r#"{"intent_id":"old","service":"api","environment":"prod","image":"api:v0","action":"deploy","reason":"new image","outcome":"already_committed","commit":"c0ffee","branch":"main","pushed_at":1700000000000}"#,
            ]
        );
        assert_eq!(reports[0].key(), "api/prod");
        assert_eq!(
            reports[0].trace.map(|t| t.to_string()).as_deref(),
            Some(TRACE)
        );
    }

    #[test]
    fn nothing_is_reported_without_a_commit_that_lists_the_intent() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let a = checked(&config, intent("a", "api:v1"));
        let b = checked(&config, intent("b", "api:v2"));
        let items = [(0, &a), (1, &b)];
        // The newest was committed before, so the superseded one made no
        // commit; and the trailer of `b` has left the index.
        let plan = BranchPlan {
            outcomes: vec![(0, Outcome::Superseded), (1, Outcome::AlreadyCommitted)],
            ..BranchPlan::default()
        };
        assert!(branch_reports(&items, &plan, "main", None, &|_| None).is_empty());
        let plan = BranchPlan {
            outcomes: vec![(0, Outcome::AlreadyApplied), (1, Outcome::Outdated)],
            ..BranchPlan::default()
        };
        let pushed = commit("beef", 1);
        assert!(branch_reports(&items, &plan, "main", Some((&pushed, 1000)), &|_| None).is_empty());
    }

    #[test]
    fn a_file_gets_replay_lines_keyed_like_intents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.jsonl");
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let a = checked(&config, intent("a", "api:v1"));
        let plan = BranchPlan {
            outcomes: vec![(0, Outcome::Retried)],
            ..BranchPlan::default()
        };
        let pushed = commit("beef", 1);
        let reports = branch_reports(&[(0, &a)], &plan, "main", Some((&pushed, 1234)), &|_| None);
        let mut file = FileReports::open(&path, "deploy-reports").unwrap();
        file.send(&reports[0]).unwrap();
        file.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"topic\":\"deploy-reports\",\"ts\":1234,\"key\":\"api/prod\",\"value\":{\"intent_id\":\"a\",\"service\":\"api\",\"environment\":\"prod\",\"image\":\"api:v1\",\"action\":\"deploy\",\"reason\":\"new image\",\"outcome\":\"retried\",\"commit\":\"beef\",\"branch\":\"main\",\"pushed_at\":1234}}\n"
        );
    }
}
