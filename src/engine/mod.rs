//! The engine: runs a topology's operators over records and timers, on
//! whatever clock its driver gives it.
//!
//! The driver decides what "now" is. Replay passes each record's timestamp
//! (a virtual clock); the live runtime passes the wall clock or the stream
//! time. The engine itself only keeps the rule: the clock never goes back,
//! and before anything happens at time T every timer due at or before T fires.

mod commit;
pub mod query;
pub mod stats;
pub mod timers;

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::operators::{BuildCx, Ctx, Emitted, Operator};
use crate::record::{FlatObject, Origin, Record};
use crate::state::{StateBackend, StateError, StoreId, WriteBatch};
use crate::topology::{Format, NodeRef, Sink, Topology};
pub use commit::{restore, Changes};
use stats::NodeStats;
use timers::TimerQueue;

/// Bumped when the layout of the state stores changes incompatibly.
const STATE_FORMAT: u32 = 1;
const META_STORE: &str = "sluice/meta";
const TIMER_STORE: &str = "sluice/timers";

/// One input record as the driver read it.
#[derive(Debug, Clone, Copy)]
pub struct SourceInput<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    /// The value as raw JSON text.
    pub value: &'a str,
    /// The value's fields, when the driver already read it as a flat
    /// object (replay, which checks every line's value to be JSON): the
    /// decoder of Sluice's own JSON takes them instead of reading `value`.
    pub fields: Option<&'a FlatObject<'a>>,
    /// The value is a record already decoded from the source's format into
    /// Sluice's own JSON (what a repartition topic carries for vendor formats).
    pub decoded: bool,
    /// Where the input sits, which every record it yields carries as its
    /// origin (and intents name in `caused_by`).
    pub origin: InputOrigin<'a>,
}

/// Where a driver read an input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InputOrigin<'a> {
    #[default]
    Unknown,
    /// The line of a replay file, from 1.
    Line(u64),
    /// A Kafka record's position, its timestamp and its trace.
    Kafka {
        topic: &'a str,
        partition: i32,
        offset: i64,
        at: Option<u64>,
        trace: Option<crate::record::TraceContext>,
    },
}

impl InputOrigin<'_> {
    /// The origin its records carry (a line number allocates nothing).
    pub fn to_origin(self) -> Origin {
        match self {
            InputOrigin::Unknown => Origin::default(),
            InputOrigin::Line(n) => Origin::line(n),
            InputOrigin::Kafka {
                topic,
                partition,
                offset,
                at,
                trace,
            } => Origin::kafka_at(topic, partition, offset, at, trace),
        }
    }
}

/// A record that could not be processed, on its way to the dead-letter output.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub ts: u64,
    pub key: Option<&'a str>,
    /// The node that rejected the record.
    pub node: &'a str,
    /// The input topic, when the record came straight from one.
    pub source_topic: Option<&'a str>,
    pub error: &'a str,
    /// The value as it reached `node`, as JSON text kept byte for byte.
    pub value: &'a RawValue,
}

pub type OutputError = Box<dyn std::error::Error + Send + Sync>;

/// Where the engine's results go: sink records and dead letters, in emission order.
pub trait Output {
    fn record(&mut self, sink: &Sink, record: &Record) -> Result<(), OutputError>;
    fn dead_letter(&mut self, letter: DeadLetter<'_>) -> Result<(), OutputError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot write output: {0}")]
    Output(OutputError),
}

/// What [`Engine::operator_gauges`] reports of one operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorGauges {
    pub name: String,
    pub timers_pending: u64,
    pub entries: u64,
    pub gauges: Vec<(crate::operators::Gauge, u64)>,
}

/// Tuning that does not change results.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Entries each operator table keeps in memory past a commit.
    pub cache_capacity: usize,
    /// Scratch state (nothing ever recovers it, so its commits need not be
    /// atomic) takes a commit in parts of about this many bytes of keys and
    /// values: a commit that rewrites every key of a large store would
    /// otherwise hold all of it in one batch. State that is kept commits
    /// whole. Each part walks a table's cache again for its dirty entries,
    /// so parts far smaller than the default cost time (tests use them).
    pub scratch_commit_part_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_capacity: 200_000,
            // Under the 4 MiB slices RocksDB's scratch writes go in, which
            // also count about 12 bytes per entry: a part is one write.
            scratch_commit_part_bytes: 3 << 20,
        }
    }
}

pub struct Engine {
    topo: Arc<Topology>,
    ops: Vec<Box<dyn Operator>>,
    op_names: Vec<String>,
    op_stores: Vec<StoreId>,
    backend: Box<dyn StateBackend>,
    timers: TimerQueue,
    clock: u64,
    meta: StoreId,
    timer_store: StoreId,
    /// Counters per node, indexed like `Topology::nodes`.
    stats: Vec<NodeStats>,
    /// Spare emission buffers.
    buffers: Vec<Vec<Emitted>>,
    /// Timers fired since the engine was opened: lets a driver tell whether
    /// anything changed since its last commit.
    timers_fired: u64,
    /// The last commit's batch, kept for its memory.
    spare_batch: WriteBatch,
    /// See [`EngineOptions::scratch_commit_part_bytes`].
    scratch_part_bytes: usize,
    /// The key of the timer firing, reused from one to the next.
    timer_key: Vec<u8>,
}

impl Engine {
    /// Opens the engine on `backend`, restoring the clock, the timers and
    /// (lazily) the operators' state that the backend holds.
    pub fn open(
        topo: Arc<Topology>,
        mut backend: Box<dyn StateBackend>,
        opts: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let meta = backend.open_store(META_STORE)?;
        let timer_store = backend.open_store(TIMER_STORE)?;
        check_identity(backend.as_ref(), meta, &topo.app_id)?;
        let clock = read_u64(backend.as_ref(), meta, b"clock")?.unwrap_or(0);
        let next_seq = read_u64(backend.as_ref(), meta, b"timer_seq")?.unwrap_or(0);
        let mut ops = Vec::with_capacity(topo.operators.len());
        let mut op_stores = Vec::with_capacity(topo.operators.len());
        for op in &topo.operators {
            let store = backend.open_store(&format!("op/{}", op.name))?;
            op_stores.push(store);
            let store_is_empty = backend.is_empty(store)?;
            let cx = BuildCx {
                app_id: &topo.app_id,
                name: &op.name,
                store,
                cache_capacity: opts.cache_capacity,
                store_is_empty,
            };
            ops.push(op.config.build(op.input_kinds[0], &cx));
        }
        let op_names: Vec<String> = topo.operators.iter().map(|o| o.name.clone()).collect();
        let timers = TimerQueue::load(backend.as_ref(), timer_store, &op_names, next_seq)?;
        let stats = topo
            .nodes
            .iter()
            .map(|n| NodeStats::new(topo.node_name(*n)))
            .collect();
        let mut engine = Engine {
            topo,
            ops,
            op_names,
            op_stores,
            buffers: Vec::new(),
            backend,
            timers,
            clock,
            meta,
            timer_store,
            stats,
            timers_fired: 0,
            spare_batch: WriteBatch::default(),
            scratch_part_bytes: opts.scratch_commit_part_bytes,
            timer_key: Vec::new(),
        };
        engine.record_identity()?;
        Ok(engine)
    }

    fn record_identity(&mut self) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        batch.put(self.meta, b"app_id", self.topo.app_id.as_bytes());
        batch.put(self.meta, b"format", &STATE_FORMAT.to_be_bytes());
        self.backend.write(&batch)?;
        Ok(())
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    /// The engine's current time in ms.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Counts payload entries of `topic`'s sources that were skipped before
    /// the engine saw them (the ignored entries of a payload that the live
    /// runtime split by service while repartitioning).
    pub fn count_ignored(&mut self, topic: &str, events: &[String]) {
        let topo = Arc::clone(&self.topo);
        for &s in topo.sources_for(topic).unwrap_or_default() {
            for event in events {
                self.stats[topo.sources[s].node].ignore(event);
            }
        }
    }

    /// Counters per node.
    pub fn stats(&self) -> &[NodeStats] {
        &self.stats
    }

    /// Timers waiting to fire.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Committed entries in operator `op`'s store (for tests and diagnostics).
    pub fn stored_entries(&self, op: &str) -> Result<usize, StateError> {
        let Some(index) = self.op_names.iter().position(|n| n == op) else {
            return Ok(0);
        };
        let mut count = 0;
        self.backend.scan(self.op_stores[index], &mut |_, _| {
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }

    /// Per operator: timers pending, about how many entries its store
    /// holds (as committed), and the gauges it reports. For metrics: it
    /// walks the timer queue and asks the backend for estimates.
    pub fn operator_gauges(&self) -> Result<Vec<OperatorGauges>, StateError> {
        let timers = self.timers.pending_by_operator(self.ops.len());
        let mut out = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            out.push(OperatorGauges {
                name: self.op_names[i].clone(),
                timers_pending: timers[i],
                entries: self.backend.approximate_len(self.op_stores[i])?,
                gauges: op.gauges(self.backend.as_ref())?,
            });
        }
        Ok(out)
    }

    /// Timers fired since the engine was opened.
    pub fn timers_fired(&self) -> u64 {
        self.timers_fired
    }

    /// The names of the stores this engine writes (operators', timers, meta):
    /// the live runtime keeps a changelog topic for each.
    pub fn store_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .op_stores
            .iter()
            .map(|s| self.backend.store_name(*s).to_owned())
            .collect();
        names.push(TIMER_STORE.to_owned());
        names.push(META_STORE.to_owned());
        names
    }

    /// Drops everything since the last commit and hands the backend back,
    /// which still holds the last committed state: what a driver does when
    /// the transaction that carried those changes was aborted.
    pub fn discard(self) -> Box<dyn StateBackend> {
        self.backend
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// Lets the backend make older writes durable (see
    /// [`StateBackend::flush_if_due`]).
    pub fn flush_state_if_due(&mut self) {
        self.backend.flush_if_due();
    }

    /// Processes one input at time `at` (the clock moves to `max(clock, at)`).
    /// Returns `false`, without moving the clock, when no source reads `input.topic`.
    pub fn process(
        &mut self,
        input: SourceInput<'_>,
        at: u64,
        out: &mut dyn Output,
    ) -> Result<bool, EngineError> {
        let topo = Arc::clone(&self.topo);
        let Some(sources) = topo.sources_for(input.topic) else {
            return Ok(false);
        };
        self.advance_to(at, out)?;
        for &s in sources {
            self.ingest(&topo, s, input, out)?;
        }
        Ok(true)
    }

    /// Moves the clock to `max(clock, to)`, firing every timer due on the way.
    pub fn advance_to(&mut self, to: u64, out: &mut dyn Output) -> Result<(), EngineError> {
        let target = self.clock.max(to);
        self.fire_due(target, out)?;
        self.clock = target;
        Ok(())
    }

    /// Fires every pending timer, in order (end of a replay with `--drain`).
    pub fn drain(&mut self, out: &mut dyn Output) -> Result<(), EngineError> {
        self.fire_due(u64::MAX, out)
    }

    fn fire_due(&mut self, limit: u64, out: &mut dyn Output) -> Result<(), EngineError> {
        let topo = Arc::clone(&self.topo);
        let mut key = std::mem::take(&mut self.timer_key);
        while let Some(timer) = self.timers.pop_due(limit, &mut key) {
            self.timers_fired += 1;
            self.clock = self.clock.max(timer.deadline);
            let node = topo.operators[timer.op].node;
            let mut emitted = self.buffers.pop().unwrap_or_default();
            {
                let mut cx = Ctx {
                    now: self.clock,
                    op: timer.op,
                    backend: self.backend.as_ref(),
                    timers: &mut self.timers,
                    out: &mut emitted,
                    stats: &mut self.stats[node],
                };
                self.ops[timer.op].on_timer(&key, &mut cx)?;
            }
            self.forward(&topo, node, emitted, None, out)?;
        }
        self.timer_key = key;
        Ok(())
    }

    fn ingest(
        &mut self,
        topo: &Topology,
        source: usize,
        input: SourceInput<'_>,
        out: &mut dyn Output,
    ) -> Result<(), EngineError> {
        let src = &topo.sources[source];
        self.stats[src.node].received += 1;
        let decoded = if input.decoded {
            crate::format::decode(Format::Json, src.kind, input.value, &src.decode)
        } else {
            src.decode_scanned(input.value, input.fields)
        };
        match decoded {
            Ok(decoded) => {
                for event in &decoded.ignored {
                    self.stats[src.node].ignore(event);
                }
                let origin = input.origin.to_origin();
                for payload in decoded.records {
                    self.stats[src.node].emitted += 1;
                    let record = Record {
                        ts: self.clock,
                        key: input.key.map(str::to_owned),
                        payload,
                        origin: origin.clone(),
                    };
                    self.deliver(topo, src.node, record, Some(input.topic), out)?;
                }
                Ok(())
            }
            Err(err) => {
                self.stats[src.node].drop("invalid_record");
                let quoted;
                let value = match serde_json::from_str::<&RawValue>(input.value) {
                    Ok(raw) => raw,
                    // A driver may hand over text that is not JSON: keep it as a JSON string.
                    Err(_) => {
                        quoted = json_string(input.value);
                        &*quoted
                    }
                };
                let error = err.to_string();
                let letter = DeadLetter {
                    ts: self.clock,
                    key: input.key,
                    node: &src.name,
                    source_topic: Some(input.topic),
                    error: &error,
                    value,
                };
                out.dead_letter(letter).map_err(EngineError::Output)
            }
        }
    }

    /// Hands `record`, emitted by node `from`, to each of its successors in
    /// declaration order, depth first.
    fn deliver(
        &mut self,
        topo: &Topology,
        from: usize,
        record: Record,
        topic: Option<&str>,
        out: &mut dyn Output,
    ) -> Result<(), EngineError> {
        let successors = &topo.successors[from];
        let mut record = Some(record);
        for (i, edge) in successors.iter().enumerate() {
            let r = if i + 1 == successors.len() {
                record.take().expect("the last successor takes the record")
            } else {
                record
                    .clone()
                    .expect("the record is kept until the last successor")
            };
            self.stats[edge.to].received += 1;
            match topo.nodes[edge.to] {
                NodeRef::Operator(op) => self.run_operator(topo, op, edge.port, r, topic, out)?,
                NodeRef::Sink(sink) => {
                    self.stats[edge.to].emitted += 1;
                    out.record(&topo.sinks[sink], &r)
                        .map_err(EngineError::Output)?;
                }
                NodeRef::Source(_) => unreachable!("validation rejects edges into sources"),
            }
        }
        Ok(())
    }

    fn run_operator(
        &mut self,
        topo: &Topology,
        op: usize,
        port: usize,
        record: Record,
        topic: Option<&str>,
        out: &mut dyn Output,
    ) -> Result<(), EngineError> {
        let node = topo.operators[op].node;
        let mut emitted = self.buffers.pop().unwrap_or_default();
        {
            let mut cx = Ctx {
                now: self.clock,
                op,
                backend: self.backend.as_ref(),
                timers: &mut self.timers,
                out: &mut emitted,
                stats: &mut self.stats[node],
            };
            self.ops[op].on_record(port, record, &mut cx)?;
        }
        self.forward(topo, node, emitted, topic, out)
    }

    fn forward(
        &mut self,
        topo: &Topology,
        node: usize,
        mut emitted: Vec<Emitted>,
        topic: Option<&str>,
        out: &mut dyn Output,
    ) -> Result<(), EngineError> {
        for item in emitted.drain(..) {
            match item {
                Emitted::Record(r) => self.deliver(topo, node, r, topic, out)?,
                Emitted::DeadLetter { key, error, value } => {
                    let letter = DeadLetter {
                        ts: self.clock,
                        key: key.as_deref(),
                        node: topo.node_name(topo.nodes[node]),
                        source_topic: topic,
                        error: &error,
                        value: &value,
                    };
                    out.dead_letter(letter).map_err(EngineError::Output)?;
                }
            }
        }
        // Operator calls nest (a record goes all the way down first), so buffers are
        // kept on a stack and reused instead of allocated per call.
        self.buffers.push(emitted);
        Ok(())
    }
}

fn json_string(text: &str) -> Box<RawValue> {
    let quoted = serde_json::Value::String(text.to_owned()).to_string();
    RawValue::from_string(quoted).expect("a JSON string literal is valid JSON")
}

fn read_u64(
    backend: &dyn StateBackend,
    store: StoreId,
    key: &[u8],
) -> Result<Option<u64>, StateError> {
    let Some(bytes) = backend.get(store, key)? else {
        return Ok(None);
    };
    let arr: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StateError::Corrupt {
            dir: backend.location(),
            message: format!("meta entry `{}` is not a u64", String::from_utf8_lossy(key)),
        })?;
    Ok(Some(u64::from_be_bytes(arr)))
}

/// Refuses a state directory made by another app or by an incompatible version.
fn check_identity(
    backend: &dyn StateBackend,
    meta: StoreId,
    app_id: &str,
) -> Result<(), StateError> {
    if let Some(found) = backend.get(meta, b"app_id")? {
        if found != app_id.as_bytes() {
            return Err(StateError::AppMismatch {
                dir: backend.location(),
                found: String::from_utf8_lossy(&found).into_owned(),
                expected: app_id.to_owned(),
            });
        }
    }
    if let Some(format) = backend.get(meta, b"format")? {
        if format != STATE_FORMAT.to_be_bytes() {
            return Err(StateError::Corrupt {
                dir: backend.location(),
                message: format!("state format {format:?} is not {STATE_FORMAT}; it was written by another Sluice version"),
            });
        }
    }
    Ok(())
}
