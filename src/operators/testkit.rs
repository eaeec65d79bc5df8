//! A small driver for operator unit tests: one topology with an image source
//! `images` (topic docker-events) and an alert source `alerts` (topic
//! alert-events, default environment `prod`), the operators under test, and a
//! sink on the last operator. It runs the real engine on the in-memory backend.

use std::sync::Arc;

use crate::engine::{DeadLetter, Engine, EngineOptions, Output, OutputError, SourceInput};
use crate::record::{
    AlertEvent, AlertStatus, ControlAction, ControlEvent, DeployStatus, DeploymentEvent,
    ImageEvent, Payload, Record,
};
use crate::state::MemoryBackend;
use crate::topology::{Sink, Topology};

const PRELUDE: &str = r#"[app]
id = "unit"
[[sources]]
name = "images"
topic = "docker-events"
kind = "image"
[[sources]]
name = "alerts"
topic = "alert-events"
kind = "alert"
environment = "prod"
[[sources]]
name = "statuses"
topic = "deploy-status"
kind = "deployment"
environment = "prod"
[[sources]]
name = "controls"
topic = "control-events"
kind = "control"
environment = "prod"
"#;

#[derive(Default)]
struct Collect {
    records: Vec<Record>,
    dead: Vec<String>,
}

impl Output for Collect {
    fn record(&mut self, _sink: &Sink, record: &Record) -> Result<(), OutputError> {
        self.records.push(record.clone());
        Ok(())
    }

    fn dead_letter(&mut self, letter: DeadLetter<'_>) -> Result<(), OutputError> {
        self.dead.push(format!("{}: {}", letter.node, letter.error));
        Ok(())
    }
}

pub struct Harness {
    engine: Engine,
    out: Collect,
    /// Whether each record's commit writes every change (the default), or
    /// lets complete caches keep them as replay's commits do.
    write_every_commit: bool,
}

fn full_topology(operators: &str) -> String {
    let last = operators
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .next_back()
        .map(|n| n.trim_end_matches('"').to_owned())
        .unwrap_or_else(|| "images".into());
    format!(
        "{PRELUDE}{operators}\n[[sinks]]\nname = \"out\"\ninput = \"{last}\"\ntopic = \"out\"\n"
    )
}

impl Harness {
    /// A harness whose tables keep at most 2 entries, so that state keeps
    /// going through the backend.
    pub fn new(operators: &str) -> Self {
        Self::with_cache(operators, 2)
    }

    pub fn with_cache(operators: &str, cache_capacity: usize) -> Self {
        let text = full_topology(operators);
        let topo = Topology::parse("unit.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let engine = Engine::open(
            Arc::new(topo),
            Box::new(MemoryBackend::new()),
            &EngineOptions {
                cache_capacity,
                ..EngineOptions::default()
            },
        )
        .expect("engine opens on memory");
        Harness {
            engine,
            out: Collect::default(),
            write_every_commit: true,
        }
    }

    /// Commits as replay does: complete caches keep their changes.
    pub fn keeping_cached(mut self) -> Self {
        self.write_every_commit = false;
        self
    }

    /// The validation errors of a topology made of `operators`.
    pub fn errors(operators: &str) -> String {
        match Topology::parse("unit.toml", &full_topology(operators)) {
            Ok(_) => panic!("expected validation errors"),
            Err(e) => e.to_string(),
        }
    }

    /// Processes `payload` at `ts` and returns what reached the sink meanwhile
    /// (timers due before `ts` included). State is committed after each record
    /// so that every step also round-trips through the backend (unless
    /// [`Harness::keeping_cached`]).
    pub fn push(&mut self, ts: u64, payload: Payload) -> Vec<Record> {
        self.process(ts, payload);
        if self.write_every_commit {
            self.engine.commit_all().expect("commit succeeds");
        } else {
            self.engine.commit().expect("commit succeeds");
        }
        std::mem::take(&mut self.out.records)
    }

    /// Processes `payload` at `ts`, without a commit.
    fn process(&mut self, ts: u64, payload: Payload) {
        let topic = match payload {
            Payload::Alert(_) => "alert-events",
            Payload::Deployment(_) => "deploy-status",
            Payload::Control(_) => "control-events",
            _ => "docker-events",
        };
        let value = payload.to_json().to_string();
        let input = SourceInput {
            topic,
            key: Some("k"),
            value: &value,
            fields: None,
            decoded: false,
            origin: Default::default(),
        };
        self.engine
            .process(input, ts, &mut self.out)
            .expect("processing succeeds");
    }

    /// Processes `payload` at `ts`, then commits as the live runtime does,
    /// and returns how many changelog records of operator `op`'s store that
    /// commit carries.
    pub fn push_counting_changelog(&mut self, ts: u64, payload: Payload, op: &str) -> usize {
        self.process(ts, payload);
        let changes = self.engine.prepare_commit().expect("commit prepares");
        let store = format!("op/{op}");
        let count = self
            .engine
            .changelog(&changes)
            .filter(|(name, _, _)| *name == store)
            .count();
        self.engine.apply_commit(changes).expect("commit applies");
        self.out.records.clear();
        count
    }

    /// Fires the timers due up to `ts`.
    pub fn advance(&mut self, ts: u64) -> Vec<Record> {
        self.engine
            .advance_to(ts, &mut self.out)
            .expect("advance succeeds");
        std::mem::take(&mut self.out.records)
    }

    /// Fires every remaining timer.
    pub fn drain(&mut self) -> Vec<Record> {
        self.engine.drain(&mut self.out).expect("drain succeeds");
        std::mem::take(&mut self.out.records)
    }

    pub fn dead_letters(&mut self) -> Vec<String> {
        std::mem::take(&mut self.out.dead)
    }

    /// Records dropped for `reason`, over all nodes.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.engine
            .stats()
            .iter()
            .filter_map(|s| s.dropped.get(reason))
            .sum()
    }

    /// Entries in operator `op`'s store after a commit as replay makes it.
    pub fn committed(&mut self, op: &str) -> usize {
        self.engine.commit().expect("commit succeeds");
        self.engine
            .stored_entries(op)
            .expect("the store can be scanned")
    }

    /// Entries in operator `op`'s store once everything is committed.
    pub fn stored(&mut self, op: &str) -> usize {
        self.engine.commit_all().expect("commit succeeds");
        self.engine
            .stored_entries(op)
            .expect("the store can be scanned")
    }
}

pub fn image(service: &str, tag: Option<&str>) -> Payload {
    Payload::Image(Box::new(ImageEvent {
        service: service.into(),
        repository: service.to_lowercase(),
        tag: tag.map(Into::into),
        digest: tag.is_none().then(|| format!("sha256:{}", "0".repeat(64))),
        environment: None,
    }))
}

pub fn image_in(service: &str, tag: &str, environment: &str) -> Payload {
    let mut p = image(service, Some(tag));
    p.set_environment(environment);
    p
}

pub fn alert(service: &str, name: &str, severity: &str, firing: bool) -> Payload {
    Payload::Alert(Box::new(AlertEvent {
        service: service.into(),
        alertname: name.into(),
        severity: severity.into(),
        status: if firing {
            AlertStatus::Firing
        } else {
            AlertStatus::Resolved
        },
        environment: "prod".into(),
        fingerprint: None,
    }))
}

/// A deployment status for `service` in `environment`, about the current image.
pub fn status(service: &str, environment: &str, status: DeployStatus) -> Payload {
    Payload::Deployment(Box::new(DeploymentEvent {
        service: service.into(),
        environment: environment.into(),
        status,
        image: None,
        revision: None,
        reason: None,
    }))
}

/// A control record; `service` and `image` as the action takes them.
pub fn control(
    action: ControlAction,
    service: Option<&str>,
    image: Option<&str>,
    until: Option<u64>,
) -> Payload {
    Payload::Control(Box::new(ControlEvent {
        action,
        environment: "prod".into(),
        service: service.map(Into::into),
        image: image.map(Into::into),
        until,
        reason: Some("test".into()),
        by: Some("ana".into()),
    }))
}

/// `(ts, tag)` of image records, for compact assertions.
pub fn tags(records: &[Record]) -> Vec<(u64, String)> {
    records
        .iter()
        .map(|r| {
            (
                r.ts,
                r.payload.field(crate::record::Field::Tag).into_owned(),
            )
        })
        .collect()
}
