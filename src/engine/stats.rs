//! Per-node counters: what each node received, emitted and dropped, and why.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Counters of one node of the topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    pub name: String,
    pub received: u64,
    pub emitted: u64,
    /// Dropped records by reason (`duplicate`, `rate_limited`, `invalid_record`, ...).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Source entries skipped by event type: payloads that are not pushes
    /// (a pull, a delete, a scan result, a pull request opened).
    pub ignored: BTreeMap<String, u64>,
}

impl NodeStats {
    pub fn new(name: &str) -> Self {
        NodeStats {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Counts one skipped payload entry of type `event`. The types are the
    /// vendors' own names, few per source, so the map stays small.
    pub fn ignore(&mut self, event: &str) {
        match self.ignored.get_mut(event) {
            Some(n) => *n += 1,
            None => {
                self.ignored.insert(event.to_owned(), 1);
            }
        }
        tracing::trace!(node = %self.name, event, "payload entry ignored");
    }

    /// What was counted since `before` (an earlier copy of these counters).
    pub fn since(&self, before: &NodeStats) -> NodeStats {
        let minus = |now: u64, then: u64| now.saturating_sub(then);
        NodeStats {
            name: self.name.clone(),
            received: minus(self.received, before.received),
            emitted: minus(self.emitted, before.emitted),
            dropped: self
                .dropped
                .iter()
                .map(|(r, n)| (*r, minus(*n, before.dropped.get(r).copied().unwrap_or(0))))
                .filter(|(_, n)| *n > 0)
                .collect(),
            ignored: self
                .ignored
                .iter()
                .map(|(e, n)| {
                    (
                        e.clone(),
                        minus(*n, before.ignored.get(e).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// Counts one dropped record. Every drop is counted; the trace event is
    /// there for debugging a topology on a small input.
    pub fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
        tracing::trace!(node = %self.name, reason, "record dropped");
    }
}

/// A table of all nodes' counters, for stderr at the end of a run.
pub fn render(stats: &[NodeStats]) -> String {
    let mut out = String::new();
    for s in stats {
        let _ = write!(
            out,
            "  {:<20} in {:>10}  out {:>10}",
            s.name, s.received, s.emitted
        );
        for (reason, n) in &s.dropped {
            let _ = write!(out, "  {reason} {n}");
        }
        for (event, n) in &s.ignored {
            let _ = write!(out, "  ignored({event}) {n}");
        }
        out.push('\n');
    }
    out
}
