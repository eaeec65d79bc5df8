//! `sluice describe`: the topology graph as text or Graphviz.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use sluice::topology::{NodeRef, Topology};

#[derive(clap::Args)]
pub struct DescribeArgs {
    topology: PathBuf,
    /// Graphviz instead of text.
    #[arg(long)]
    dot: bool,
}

pub fn run(args: DescribeArgs) -> Result<ExitCode> {
    let topo = Topology::load(&args.topology)?;
    let text = if args.dot { dot(&topo) } else { text(&topo) };
    super::print_stdout(&text)
}

/// One line per node, in file order, with what it reads and what it emits.
pub fn text(t: &Topology) -> String {
    let mut out = format!(
        "app {} (dead letters: {})\n",
        t.app_id,
        t.dead_letter_topic()
    );
    for s in &t.sources {
        let env = s
            .environment()
            .map(|e| format!(", environment default {e}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "source   {:<12} <- topic {} ({} records, {}{env})",
            s.name, s.topic, s.kind, s.format
        );
    }
    for o in &t.operators {
        let inputs: Vec<&str> = o.inputs.iter().map(|&i| t.node_name(t.nodes[i])).collect();
        let _ = writeln!(
            out,
            "operator {:<12} <- {} : {} -> {} records",
            o.name,
            inputs.join(", "),
            o.config.summary(),
            o.output_kind
        );
    }
    for s in &t.sinks {
        let _ = writeln!(
            out,
            "sink     {:<12} <- {} -> topic {} ({} records, {})",
            s.name,
            t.node_name(t.nodes[s.input]),
            s.topic,
            s.kind,
            s.format
        );
    }
    out
}

/// The graph in Graphviz dot.
pub fn dot(t: &Topology) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", t.app_id);
    for (id, node) in t.nodes.iter().enumerate() {
        let (shape, label) = match *node {
            NodeRef::Source(i) => (
                "cds",
                format!("{}\\ntopic {}", t.sources[i].name, t.sources[i].topic),
            ),
            NodeRef::Operator(i) => (
                "box",
                format!("{}\\n{}", t.operators[i].name, t.operators[i].type_name),
            ),
            NodeRef::Sink(i) => (
                "cds",
                format!("{}\\ntopic {}", t.sinks[i].name, t.sinks[i].topic),
            ),
        };
        let _ = writeln!(out, "  n{id} [shape={shape}, label=\"{label}\"];");
    }
    for (from, edges) in t.successors.iter().enumerate() {
        for e in edges {
            let _ = writeln!(
                out,
                "  n{from} -> n{} [label=\"{}\"];",
                e.to,
                t.kind_of(from)
            );
        }
    }
    out.push_str("}\n");
    out
}
