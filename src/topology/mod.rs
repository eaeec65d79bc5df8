//! Topologies: the TOML file, its validation, and the resolved graph the
//! engine runs.
//!
//! Validation reads the whole file and reports every problem it finds, each
//! with `file:line:column` and the key at fault, before any record is read.

pub mod diag;
pub mod kafka;
pub mod reader;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

use crate::operators::{OperatorConfig, OPERATOR_TYPES};
use crate::record::Kind;
use diag::{ConfigError, Diags, Located, Pos};
use reader::TableReader;

/// Names of apps, nodes and environments end up in Kafka topic and state
/// store names, so they keep to the characters those allow.
static NODE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9._-]{1,100}$").expect("valid regex"));
static TOPIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9._-]{1,249}$").expect("valid regex"));
pub(crate) static ENVIRONMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$").expect("valid regex"));

pub use crate::format::Format;
pub use source::Source;

/// An `[[operators]]` entry, resolved.
#[derive(Debug, Clone)]
pub struct OperatorNode {
    pub name: String,
    pub node: usize,
    pub type_name: String,
    pub config: OperatorConfig,
    /// Upstream node of each input port.
    pub inputs: Vec<usize>,
    pub input_kinds: Vec<Kind>,
    pub output_kind: Kind,
}

/// A `[[sinks]]` entry: where records leave the topology.
#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub node: usize,
    pub topic: String,
    pub format: Format,
    pub input: usize,
    pub kind: Kind,
}

/// Which list a node of the graph is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRef {
    Source(usize),
    Operator(usize),
    Sink(usize),
}

/// An edge to node `to`, arriving on its input `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub to: usize,
    pub port: usize,
}

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub file: String,
    pub app_id: String,
    /// How `sluice run` reaches the cluster (defaults when there is no `[kafka]`).
    pub kafka: kafka::KafkaConfig,
    pub sources: Vec<Source>,
    pub operators: Vec<OperatorNode>,
    pub sinks: Vec<Sink>,
    /// All nodes: sources, then operators, then sinks, each in file order.
    pub nodes: Vec<NodeRef>,
    /// Successors of each node, operators before sinks, each in file order.
    pub successors: Vec<Vec<Edge>>,
    /// Looked up for every input record: hashbrown's default hasher, not
    /// std's SipHash (which took 2% of replay's instructions here).
    topic_sources: hashbrown::HashMap<String, Vec<usize>>,
}

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let shown = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|cause| TopologyError::Read {
            path: shown.clone(),
            cause,
        })?;
        Ok(Topology::parse(&shown, &src)?)
    }

    /// Validates the text of a topology file; `file` is the name errors show.
    pub fn parse(file: &str, src: &str) -> Result<Topology, ConfigError> {
        let diags = Diags::new(src);
        let value = toml_span::parse(src).map_err(|e| ConfigError::syntax(&diags, file, &e))?;
        let decl = read_declarations(&diags, value);
        let topology = decl.and_then(|d| resolve(&diags, file, d));
        diags.finish(file)?;
        Ok(topology.expect("a topology is built whenever no error was reported"))
    }

    /// The dead-letter topic, `<app.id>.dead-letter`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dead-letter", self.app_id)
    }

    /// The sources that read `topic`, in file order.
    pub fn sources_for(&self, topic: &str) -> Option<&[usize]> {
        self.topic_sources.get(topic).map(Vec::as_slice)
    }

    pub fn node_name(&self, node: NodeRef) -> &str {
        match node {
            NodeRef::Source(i) => &self.sources[i].name,
            NodeRef::Operator(i) => &self.operators[i].name,
            NodeRef::Sink(i) => &self.sinks[i].name,
        }
    }

    /// The kind of records node `node` emits (sinks: the kind they receive).
    pub fn kind_of(&self, node: usize) -> Kind {
        match self.nodes[node] {
            NodeRef::Source(i) => self.sources[i].kind,
            NodeRef::Operator(i) => self.operators[i].output_kind,
            NodeRef::Sink(i) => self.sinks[i].kind,
        }
    }
}

struct OperatorDecl {
    path: String,
    name: Located<String>,
    type_name: String,
    /// `None` when the operator's own keys were wrong; its name still counts,
    /// so that nodes reading from it are not reported as well.
    config: Option<OperatorConfig>,
}

struct SinkDecl {
    path: String,
    name: Located<String>,
    input: Located<String>,
    topic: String,
    format: Format,
}

struct Declarations {
    app_id: String,
    kafka: kafka::KafkaConfig,
    root_pos: Pos,
    sources: Vec<source::SourceDecl>,
    operators: Vec<OperatorDecl>,
    sinks: Vec<SinkDecl>,
}

fn read_declarations<'de>(diags: &Diags<'_>, value: toml_span::Value<'de>) -> Option<Declarations> {
    let mut root = TableReader::new(diags, value, String::new())?;
    let root_pos = Pos { line: 1, column: 1 };
    let app_id = read_app(&mut root);
    let kafka = match root.take("kafka") {
        None => Some(kafka::KafkaConfig::default()),
        Some(value) => TableReader::new(diags, value, "kafka".into()).and_then(|mut t| {
            let config = kafka::KafkaConfig::read(&mut t);
            t.finish();
            config
        }),
    };
    let source_tables = root.tables("sources");
    let no_sources = source_tables.is_empty();
    let sources: Vec<_> = source_tables
        .into_iter()
        .filter_map(|(p, v)| source::read_source(diags, p, v))
        .collect();
    let operators: Vec<_> = root
        .tables("operators")
        .into_iter()
        .filter_map(|(p, v)| read_operator(diags, p, v))
        .collect();
    let sink_tables = root.tables("sinks");
    let no_sinks = sink_tables.is_empty();
    let sinks: Vec<_> = sink_tables
        .into_iter()
        .filter_map(|(p, v)| read_sink(diags, p, v))
        .collect();
    root.finish();
    if no_sources {
        diags.error(
            root_pos,
            "sources",
            "a topology needs at least one [[sources]] entry",
        );
    }
    if no_sinks {
        diags.error(
            root_pos,
            "sinks",
            "a topology needs at least one [[sinks]] entry, or nothing would come out",
        );
    }
    Some(Declarations {
        app_id: app_id?,
        kafka: kafka?,
        root_pos,
        sources,
        operators,
        sinks,
    })
}

fn read_app(root: &mut TableReader<'_, '_, '_>) -> Option<String> {
    let diags = root.diags();
    let Some(value) = root.take("app") else {
        root.missing("app");
        return None;
    };
    let mut app = TableReader::new(diags, value, "app".into())?;
    let id = app.required_string("id");
    app.finish();
    let id = id?;
    if !NODE_NAME.is_match(&id.value) {
        diags.error(id.pos, "app.id", "must be 1 to 100 characters of A-Z a-z 0-9 . _ - (it names topics and the consumer group)");
        return None;
    }
    Some(id.value)
}

pub(crate) fn read_name(t: &mut TableReader<'_, '_, '_>) -> Option<Located<String>> {
    let name = t.required_string("name")?;
    if !NODE_NAME.is_match(&name.value) {
        t.diags().error(
            name.pos,
            t.key_path("name"),
            "must be 1 to 100 characters of A-Z a-z 0-9 . _ -",
        );
        return None;
    }
    Some(name)
}

pub(crate) fn read_topic(t: &mut TableReader<'_, '_, '_>) -> Option<String> {
    let topic = t.required_string("topic")?;
    if !TOPIC.is_match(&topic.value) {
        t.diags().error(
            topic.pos,
            t.key_path("topic"),
            "not a valid Kafka topic name (1 to 249 characters of A-Z a-z 0-9 . _ -)",
        );
        return None;
    }
    Some(topic.value)
}

/// A sink's format: Sluice's own schemas only.
fn read_format(t: &mut TableReader<'_, '_, '_>) -> Option<Format> {
    let Some(format) = t.string("format") else {
        return Some(Format::Json);
    };
    match format.value.as_str() {
        "json" => Some(Format::Json),
        "protobuf" => Some(Format::Protobuf),
        other => {
            t.diags().error(
                format.pos,
                t.key_path("format"),
                format!("unknown format `{other}`; expected json or protobuf"),
            );
            None
        }
    }
}

fn read_operator<'de>(
    diags: &Diags<'_>,
    path: String,
    value: toml_span::Value<'de>,
) -> Option<OperatorDecl> {
    let mut t = TableReader::new(diags, value, path.clone())?;
    let name = read_name(&mut t);
    let type_name = t.required_string("type");
    let known_type = type_name
        .as_ref()
        .filter(|ty| OPERATOR_TYPES.contains(&ty.value.as_str()));
    if let (Some(ty), None) = (&type_name, known_type) {
        diags.error(
            ty.pos,
            t.key_path("type"),
            format!(
                "unknown operator type `{}`; expected one of: {}",
                ty.value,
                OPERATOR_TYPES.join(", ")
            ),
        );
    }
    // The keys of an unknown type cannot be judged: they are not reported as unknown.
    let config = known_type.and_then(|ty| {
        let config = OperatorConfig::read(&ty.value, &mut t);
        t.finish();
        config
    });
    Some(OperatorDecl {
        path,
        name: name?,
        type_name: type_name.map(|t| t.value).unwrap_or_default(),
        config,
    })
}

fn read_sink<'de>(
    diags: &Diags<'_>,
    path: String,
    value: toml_span::Value<'de>,
) -> Option<SinkDecl> {
    let mut t = TableReader::new(diags, value, path.clone())?;
    let name = read_name(&mut t);
    let input = t.required_string("input");
    let topic = read_topic(&mut t);
    let format = read_format(&mut t);
    t.finish();
    Some(SinkDecl {
        path,
        name: name?,
        input: input?,
        topic: topic?,
        format: format?,
    })
}

/// Builds the graph: resolves names, rejects cycles, and checks each
/// operator against the kinds of records that reach it.
fn resolve(diags: &Diags<'_>, file: &str, d: Declarations) -> Option<Topology> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut nodes = Vec::new();
    let names = d
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.path, &s.name, NodeRef::Source(i)))
        .chain(
            d.operators
                .iter()
                .enumerate()
                .map(|(i, o)| (&o.path, &o.name, NodeRef::Operator(i))),
        )
        .chain(
            d.sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (&s.path, &s.name, NodeRef::Sink(i))),
        );
    for (path, name, node) in names {
        if ids.insert(&name.value, nodes.len()).is_some() {
            diags.error(
                name.pos,
                format!("{path}.name"),
                format!("duplicate node name `{}`; names must be unique across sources, operators and sinks", name.value),
            );
        }
        nodes.push(node);
    }
    let known: Vec<&str> = {
        let mut k: Vec<&str> = d
            .sources
            .iter()
            .map(|s| s.name.value.as_str())
            .chain(d.operators.iter().map(|o| o.name.value.as_str()))
            .collect();
        k.sort_unstable();
        k
    };
    let lookup = |path: &str, key: &str, target: &Located<String>| -> Option<usize> {
        match ids.get(target.value.as_str()) {
            Some(&id) if matches!(nodes[id], NodeRef::Sink(_)) => {
                diags.error(
                    target.pos,
                    format!("{path}.{key}"),
                    format!(
                        "`{}` is a sink; only sources and operators can feed a node",
                        target.value
                    ),
                );
                None
            }
            Some(&id) => Some(id),
            None => {
                diags.error(
                    target.pos,
                    format!("{path}.{key}"),
                    format!(
                        "unknown node `{}`; known sources and operators: {}",
                        target.value,
                        known.join(", ")
                    ),
                );
                None
            }
        }
    };
    let op_inputs: Vec<Vec<Option<usize>>> = d
        .operators
        .iter()
        .map(|o| match &o.config {
            Some(c) => c
                .inputs()
                .iter()
                .map(|(key, target)| lookup(&o.path, key, target))
                .collect(),
            None => vec![None],
        })
        .collect();
    let sink_inputs: Vec<Option<usize>> = d
        .sinks
        .iter()
        .map(|s| lookup(&s.path, "input", &s.input))
        .collect();
    let first_op = d.sources.len();
    let order = topological_order(diags, &d.operators, &op_inputs, first_op);

    // Kinds flow from the sources down, in topological order.
    let mut kinds: Vec<Option<Kind>> = vec![None; nodes.len()];
    for (i, s) in d.sources.iter().enumerate() {
        kinds[i] = s.kind;
    }
    for &o in &order {
        // A port whose kind is unknown (its upstream is broken) is skipped, the others are checked.
        let input_kinds: Vec<Option<Kind>> = op_inputs[o]
            .iter()
            .map(|i| i.and_then(|id| kinds[id]))
            .collect();
        if let Some(config) = &d.operators[o].config {
            kinds[first_op + o] = config.check(&input_kinds, diags, &d.operators[o].path);
        }
    }
    if diags.has_errors() {
        return None;
    }
    build(file, d, nodes, kinds, op_inputs, sink_inputs)
}

/// Orders operators so that each comes after its inputs; reports every cycle.
fn topological_order(
    diags: &Diags<'_>,
    ops: &[OperatorDecl],
    inputs: &[Vec<Option<usize>>],
    first_op: usize,
) -> Vec<usize> {
    let op_of = |id: usize| id.checked_sub(first_op).filter(|&o| o < ops.len());
    let mut indegree: Vec<usize> = inputs
        .iter()
        .map(|ins| {
            ins.iter()
                .flatten()
                .filter(|&&id| op_of(id).is_some())
                .count()
        })
        .collect();
    let mut ready: Vec<usize> = (0..ops.len()).filter(|&o| indegree[o] == 0).rev().collect();
    let mut order = Vec::with_capacity(ops.len());
    while let Some(o) = ready.pop() {
        order.push(o);
        for (next, ins) in inputs.iter().enumerate() {
            for _ in ins.iter().flatten().filter(|&&id| op_of(id) == Some(o)) {
                indegree[next] -= 1;
                if indegree[next] == 0 {
                    ready.push(next);
                }
            }
        }
    }
    let mut reported: HashSet<usize> = HashSet::new();
    for start in 0..ops.len() {
        if indegree[start] == 0 || reported.contains(&start) {
            continue;
        }
        // Walk upstream through operators still blocked until one repeats: that is a cycle.
        let blocked_input = |op: usize| {
            inputs[op]
                .iter()
                .flatten()
                .filter_map(|&id| op_of(id))
                .find(|&p| indegree[p] > 0)
        };
        let mut path = vec![start];
        while let Some(prev) = path.last().and_then(|&op| blocked_input(op)) {
            let Some(at) = path.iter().position(|&p| p == prev) else {
                path.push(prev);
                continue;
            };
            let cycle = &path[at..];
            if cycle.iter().all(|c| !reported.contains(c)) {
                // The walk went upstream; print the cycle the way records flow.
                let names: Vec<&str> = std::iter::once(&prev)
                    .chain(cycle.iter().rev())
                    .map(|&c| ops[c].name.value.as_str())
                    .collect();
                // Point at the input that closes the loop: the last operator's, naming `prev`.
                let closer = &ops[*path.last().expect("the path starts with `start`")];
                let port = closer.config.as_ref().and_then(|c| {
                    c.inputs()
                        .into_iter()
                        .find(|(_, target)| target.value == ops[prev].name.value)
                });
                let (key, pos) = port.map_or(("input", closer.name.pos), |(key, target)| {
                    (key, target.pos)
                });
                diags.error(
                    pos,
                    format!("{}.{key}", closer.path),
                    format!("operators form a cycle: {}", names.join(" -> ")),
                );
            }
            reported.extend(cycle.iter().copied());
            break;
        }
        reported.insert(start);
    }
    order
}

fn build(
    file: &str,
    d: Declarations,
    nodes: Vec<NodeRef>,
    kinds: Vec<Option<Kind>>,
    op_inputs: Vec<Vec<Option<usize>>>,
    sink_inputs: Vec<Option<usize>>,
) -> Option<Topology> {
    let _ = d.root_pos;
    let first_op = d.sources.len();
    let first_sink = first_op + d.operators.len();
    let sources: Vec<Source> = d
        .sources
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let v = s.valid?;
            Some(Source {
                name: s.name.value,
                node: i,
                topic: v.topic,
                kind: s.kind?,
                format: v.format,
                decode: v.decode,
                repartition: v.repartition,
            })
        })
        .collect::<Option<_>>()?;
    let mut operators = Vec::new();
    for (i, (o, ins)) in d.operators.into_iter().zip(op_inputs).enumerate() {
        let inputs: Vec<usize> = ins.into_iter().collect::<Option<_>>()?;
        let input_kinds = inputs.iter().map(|&id| kinds[id]).collect::<Option<_>>()?;
        operators.push(OperatorNode {
            name: o.name.value,
            node: first_op + i,
            type_name: o.type_name,
            config: o.config?,
            inputs,
            input_kinds,
            output_kind: kinds[first_op + i]?,
        });
    }
    let mut sinks = Vec::new();
    for (i, (s, input)) in d.sinks.into_iter().zip(sink_inputs).enumerate() {
        let input = input?;
        sinks.push(Sink {
            name: s.name.value,
            node: first_sink + i,
            topic: s.topic,
            format: s.format,
            input,
            kind: kinds[input]?,
        });
    }
    let mut successors = vec![Vec::new(); nodes.len()];
    for op in &operators {
        for (port, &input) in op.inputs.iter().enumerate() {
            successors[input].push(Edge { to: op.node, port });
        }
    }
    for sink in &sinks {
        successors[sink.input].push(Edge {
            to: sink.node,
            port: 0,
        });
    }
    // Node ids follow file order with operators before sinks: sorting by id is the delivery order.
    for list in &mut successors {
        list.sort_by_key(|e| (e.to, e.port));
    }
    let mut topic_sources: hashbrown::HashMap<String, Vec<usize>> = hashbrown::HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        topic_sources.entry(s.topic.clone()).or_default().push(i);
    }
    Some(Topology {
        file: file.to_owned(),
        app_id: d.app_id,
        kafka: d.kafka,
        sources,
        operators,
        sinks,
        nodes,
        successors,
        topic_sources,
    })
}

#[cfg(test)]
mod tests;
