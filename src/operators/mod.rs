//! Operators: one file each, holding the operator's config (with its
//! validation and user documentation), its runtime and its unit tests.
//!
//! Every operator is a synchronous state machine over one record or one timer
//! at a time. It reads the time only from [`Ctx::now`], keeps its state only in
//! its [`Table`](crate::state::Table), and schedules work only through
//! [`Ctx::arm_timer`]. That is what lets the same code run under the replay's
//! virtual clock and under the wall clock live.

pub mod alert_gate;
pub mod debounce;
pub mod dedup;
pub mod route;
pub mod throttle;
pub mod view;

use crate::duration::DurationMs;
use crate::engine::stats::NodeStats;
use crate::engine::timers::TimerQueue;
use crate::record::{Field, Kind, Payload, Record};
use crate::state::{Committed, StateBackend, StateError, WriteBatch};
use crate::topology::diag::{Diags, Located};
use crate::topology::reader::TableReader;

/// The runtime of an operator.
pub trait Operator: Send {
    /// Handles a record arriving on input `port` (0 unless the operator has several inputs).
    fn on_record(
        &mut self,
        port: usize,
        record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError>;

    /// Handles the timer armed for `key`, now due (`cx.now()` is its deadline).
    fn on_timer(&mut self, key: &[u8], cx: &mut Ctx<'_>) -> Result<(), StateError>;

    /// Writes the state changed since the last commit into `batch`. `now` is
    /// the clock at the commit, for operators that purge expired state here
    /// rather than with a timer per key (the purge is never observable).
    /// A batch with a limit may fill up first ([`Committed::Partly`]): the
    /// engine writes and empties it and calls again, with the same `now`,
    /// until the operator has written everything.
    fn commit(
        &mut self,
        now: u64,
        backend: &dyn StateBackend,
        batch: &mut WriteBatch,
    ) -> Result<Committed, StateError>;

    /// Whether `value` is an entry this operator's store can hold; a restore
    /// skips changelog records that are not. Stateless operators hold none.
    fn accepts_entry(&self, _value: &[u8]) -> bool {
        true
    }

    /// What the operator holds for (service, environment), if anything.
    fn query(
        &mut self,
        _service: &str,
        _environment: &str,
        _cx: &view::QueryCx<'_>,
    ) -> Result<Option<view::OperatorView>, StateError> {
        Ok(None)
    }

    /// Gauges of what the operator's committed state holds, for metrics
    /// (read every few seconds after a commit, so a scan is affordable).
    fn gauges(&self, _backend: &dyn StateBackend) -> Result<Vec<(Gauge, u64)>, StateError> {
        Ok(Vec::new())
    }
}

/// A gauge an operator reports about its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gauge {
    /// Keys with an image parked (held deploys).
    HeldKeys,
    /// Alerts held as active.
    ActiveAlerts,
}

/// What an operator produced while handling one record or timer.
#[derive(Debug)]
pub enum Emitted {
    Record(Record),
    DeadLetter {
        key: Option<String>,
        error: String,
        value: Box<serde_json::value::RawValue>,
    },
}

/// The operator's view of the engine while it handles one record or timer.
pub struct Ctx<'a> {
    pub(crate) now: u64,
    pub(crate) op: usize,
    pub(crate) backend: &'a dyn StateBackend,
    pub(crate) timers: &'a mut TimerQueue,
    pub(crate) out: &'a mut Vec<Emitted>,
    pub(crate) stats: &'a mut NodeStats,
}

impl Ctx<'_> {
    /// The current time in ms: the virtual clock in replay, the wall clock live.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The state backend, for tables to load entries they do not hold yet.
    pub fn backend(&self) -> &dyn StateBackend {
        self.backend
    }

    /// Sends a new record downstream (an operator's own, such as an
    /// intent), stamped with the current time; its origin is unknown: what
    /// caused it is in its value.
    pub fn emit(&mut self, key: Option<String>, payload: Payload) {
        self.stats.emitted += 1;
        self.out.push(Emitted::Record(Record {
            ts: self.now,
            key,
            payload,
            origin: Default::default(),
        }));
    }

    /// Passes a record on downstream, stamped with the current time; it
    /// keeps its key and its origin.
    pub fn pass(&mut self, mut record: Record) {
        self.stats.emitted += 1;
        record.ts = self.now;
        self.out.push(Emitted::Record(record));
    }

    /// Arms (or re-arms, replacing the old one) this operator's timer for `key`.
    pub fn arm_timer(&mut self, key: &[u8], deadline: u64) {
        // A deadline in the past would fire "before" the clock; clamp it so time never runs backwards.
        self.timers.arm(self.op, key, deadline.max(self.now));
    }

    pub fn cancel_timer(&mut self, key: &[u8]) {
        self.timers.cancel(self.op, key);
    }

    /// Counts a dropped record under `reason`.
    pub fn drop_record(&mut self, reason: &'static str) {
        self.stats.drop(reason);
    }

    /// Sends a record this operator cannot handle to the dead-letter output.
    pub fn dead_letter(&mut self, record: &Record, error: String) {
        self.stats.drop("invalid_record");
        self.out.push(Emitted::DeadLetter {
            key: record.key.clone(),
            error,
            value: record.payload.to_raw_json(),
        });
    }
}

/// The fields that make up a state key, resolved against the input's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    fields: Vec<Field>,
    /// Reused for every key: encoding runs once per record.
    buf: Vec<u8>,
}

impl KeySpec {
    pub fn new(fields: Vec<Field>) -> Self {
        KeySpec {
            fields,
            buf: Vec::with_capacity(64),
        }
    }

    /// Encodes the key of a record. Each value is length-prefixed so that no
    /// two different field tuples can produce the same bytes.
    pub fn encode(&mut self, payload: &Payload) -> &[u8] {
        self.buf.clear();
        for field in &self.fields {
            match (field, payload) {
                // The reference, written in place rather than built as a string first.
                (Field::Image, Payload::Image(i)) => {
                    let parts = [
                        Some(i.repository.as_str()),
                        i.tag.as_deref(),
                        i.digest.as_deref(),
                    ];
                    let len = i.repository.len()
                        + i.tag.as_ref().map_or(0, |t| t.len() + 1)
                        + i.digest.as_ref().map_or(0, |d| d.len() + 1);
                    self.buf.extend_from_slice(&(len as u32).to_le_bytes());
                    for (part, sep) in parts.into_iter().zip(["", ":", "@"]) {
                        if let Some(part) = part {
                            self.buf.extend_from_slice(sep.as_bytes());
                            self.buf.extend_from_slice(part.as_bytes());
                        }
                    }
                }
                _ => {
                    let value = payload.field(*field);
                    self.buf
                        .extend_from_slice(&(value.len() as u32).to_le_bytes());
                    self.buf.extend_from_slice(value.as_bytes());
                }
            }
        }
        &self.buf
    }
}

/// Key fields as written in the topology, checked against the input kind later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig(pub Located<Vec<Located<String>>>);

impl KeyConfig {
    /// Reads `key = [fields]` (required, non-empty).
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        if !t.contains("key") {
            t.missing("key");
            return None;
        }
        let list = t.string_list("key")?;
        if list.value.is_empty() {
            t.diags()
                .error(list.pos, t.key_path("key"), "must name at least one field");
            return None;
        }
        Some(KeyConfig(list))
    }

    /// Resolves the fields for `kind`, reporting each one the kind lacks.
    pub fn resolve(&self, kind: Kind, diags: &Diags<'_>, key_path: &str) -> Option<KeySpec> {
        let mut fields = Vec::new();
        let mut ok = true;
        for (i, name) in self.0.value.iter().enumerate() {
            match kind.field(&name.value) {
                Some(f) => fields.push(f),
                None => {
                    ok = false;
                    diags.error(
                        name.pos,
                        format!("{key_path}[{i}]"),
                        format!(
                            "{kind} records have no field `{}`; fields: {}",
                            name.value,
                            kind.field_names().join(", ")
                        ),
                    );
                }
            }
        }
        ok.then(|| KeySpec::new(fields))
    }
}

/// The `type = "..."` of an operator, with its config.
#[derive(Debug, Clone)]
pub enum OperatorConfig {
    Route(route::RouteConfig),
    Dedup(dedup::DedupConfig),
    Debounce(debounce::DebounceConfig),
    Throttle(throttle::ThrottleConfig),
    AlertGate(Box<alert_gate::AlertGateConfig>),
}

/// The operator types, as written in `type = "..."`.
pub const OPERATOR_TYPES: &[&str] = &["route", "dedup", "debounce", "throttle", "alert_gate"];

/// What an operator needs from the engine when it is built.
pub struct BuildCx<'a> {
    pub app_id: &'a str,
    pub name: &'a str,
    /// The operator's store, opened by the engine.
    pub store: crate::state::StoreId,
    /// How many entries a table keeps in memory before it evicts clean ones.
    pub cache_capacity: usize,
    /// Whether the store holds nothing yet (a fresh state directory).
    pub store_is_empty: bool,
}

impl BuildCx<'_> {
    /// The operator's table over its store.
    pub fn table<V: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
    ) -> crate::state::Table<V> {
        crate::state::Table::new(
            self.store,
            &format!("op/{}", self.name),
            self.cache_capacity,
            self.store_is_empty,
        )
    }
}

impl OperatorConfig {
    /// The key fields of a keyed operator, as written.
    pub fn key_fields(&self) -> Option<Vec<&str>> {
        let key = match self {
            OperatorConfig::Dedup(c) => &c.key,
            OperatorConfig::Debounce(c) => &c.key,
            OperatorConfig::Throttle(c) => &c.key,
            OperatorConfig::Route(_) | OperatorConfig::AlertGate(_) => return None,
        };
        Some(key.0.value.iter().map(|f| f.value.as_str()).collect())
    }

    /// Whether the operator keeps state (and so needs a changelog when live).
    pub fn is_stateful(&self) -> bool {
        !matches!(self, OperatorConfig::Route(_))
    }

    /// Reads the keys of an operator of type `type_name` (all but `name` and `type`).
    pub fn read(type_name: &str, t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        Some(match type_name {
            "route" => OperatorConfig::Route(route::RouteConfig::read(t)?),
            "dedup" => OperatorConfig::Dedup(dedup::DedupConfig::read(t)?),
            "debounce" => OperatorConfig::Debounce(debounce::DebounceConfig::read(t)?),
            "throttle" => OperatorConfig::Throttle(throttle::ThrottleConfig::read(t)?),
            "alert_gate" => {
                OperatorConfig::AlertGate(Box::new(alert_gate::AlertGateConfig::read(t)?))
            }
            _ => return None,
        })
    }

    /// The input ports in order: each the key that names it and the node it names.
    pub fn inputs(&self) -> Vec<(&'static str, &Located<String>)> {
        match self {
            OperatorConfig::Route(c) => vec![("input", &c.input)],
            OperatorConfig::Dedup(c) => vec![("input", &c.input)],
            OperatorConfig::Debounce(c) => vec![("input", &c.input)],
            OperatorConfig::Throttle(c) => vec![("input", &c.input)],
            OperatorConfig::AlertGate(c) => c.inputs(),
        }
    }

    /// Checks the config against the kinds reaching its inputs and returns the
    /// kind it emits; reports every mismatch. The kind is returned even after
    /// an error, so that the nodes downstream are still checked.
    pub fn check(
        &self,
        input_kinds: &[Option<Kind>],
        diags: &Diags<'_>,
        path: &str,
    ) -> Option<Kind> {
        match self {
            OperatorConfig::Route(c) => c.check(input_kinds[0]?, diags, path),
            OperatorConfig::Dedup(c) => c.check(input_kinds[0]?, diags, path),
            OperatorConfig::Debounce(c) => c.check(input_kinds[0]?, diags, path),
            OperatorConfig::Throttle(c) => c.check(input_kinds[0]?, diags, path),
            OperatorConfig::AlertGate(c) => c.check(input_kinds, diags, path),
        }
    }

    /// Builds the runtime. `input_kind` is the (validated) kind of the first input.
    pub fn build(&self, input_kind: Kind, cx: &BuildCx<'_>) -> Box<dyn Operator> {
        match self {
            OperatorConfig::Route(c) => Box::new(c.build(input_kind)),
            OperatorConfig::Dedup(c) => Box::new(c.build(input_kind, cx)),
            OperatorConfig::Debounce(c) => Box::new(c.build(input_kind, cx)),
            OperatorConfig::Throttle(c) => Box::new(c.build(input_kind, cx)),
            OperatorConfig::AlertGate(c) => Box::new(c.build(cx)),
        }
    }

    /// A one-line summary for `sluice describe`.
    pub fn summary(&self) -> String {
        match self {
            OperatorConfig::Route(c) => c.summary(),
            OperatorConfig::Dedup(c) => c.summary(),
            OperatorConfig::Debounce(c) => c.summary(),
            OperatorConfig::Throttle(c) => c.summary(),
            OperatorConfig::AlertGate(c) => c.summary(),
        }
    }
}

/// Formats a key list for summaries.
pub(crate) fn key_summary(key: &KeyConfig) -> String {
    let names: Vec<&str> = key.0.value.iter().map(|l| l.value.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// Shorthand for summaries.
pub(crate) fn dur(d: DurationMs) -> String {
    d.to_string()
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod tests {
    use super::testkit::image;
    use super::*;

    #[test]
    fn keys_are_length_prefixed_and_the_reference_is_encoded_like_the_field() {
        let mut spec = KeySpec::new(vec![Field::Service, Field::Image, Field::Digest]);
        let p = image("a", Some("v1"));
        let mut expected = Vec::new();
        for v in ["a", "a:v1", ""] {
            expected.extend_from_slice(&(v.len() as u32).to_le_bytes());
            expected.extend_from_slice(v.as_bytes());
        }
        assert_eq!(spec.encode(&p), expected.as_slice());
        let digest_only = image("a", None);
        let reference = digest_only.field(Field::Image).into_owned();
        let mut spec = KeySpec::new(vec![Field::Image]);
        assert_eq!(&spec.encode(&digest_only)[4..], reference.as_bytes());
        // ("ab", "") and ("a", "b") must differ.
        let mut two = KeySpec::new(vec![Field::Service, Field::Tag]);
        let k1 = two.encode(&image("ab", None)).to_vec();
        let k2 = two.encode(&image("a", Some("b"))).to_vec();
        assert_ne!(k1, k2);
    }
}
