//! The partition counts a run needs: task `p` reads partition `p` of every
//! input and owns partition `p` of every changelog, so the inputs (and the
//! internal topics made for them) must agree on one count.

use std::collections::{BTreeMap, HashMap};

use super::topics::Plan;
use super::RunError;
use crate::topology::{NodeRef, Topology};

/// Sources whose records meet in a stateful operator must split their keys
/// the same way, or a key's records would land in different tasks.
pub(super) fn check_co_partitioning(
    topo: &Topology,
    partitions: &HashMap<String, i32>,
) -> Result<(), RunError> {
    let mut reaching: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (s, source) in topo.sources.iter().enumerate() {
        for op in stateful_operators_reached(topo, source.node) {
            reaching.entry(op).or_default().push(s);
        }
    }
    for (op, sources) in reaching {
        let first = &topo.sources[sources[0]];
        let count = |topic: &str| partitions.get(topic).copied().unwrap_or(0);
        for &s in &sources[1..] {
            let other = &topo.sources[s];
            if count(&other.topic) != count(&first.topic) {
                return Err(RunError::Setup(format!(
                    "sources `{}` (topic `{}`, {} partitions) and `{}` (topic `{}`, {} partitions) meet in operator `{}` \
                     and must be co-partitioned: give both topics the same partition count and key their records by service",
                    first.name,
                    first.topic,
                    count(&first.topic),
                    other.name,
                    other.topic,
                    count(&other.topic),
                    topo.operators[op].name
                )));
            }
        }
    }
    Ok(())
}

/// Task `p` owns partition `p` of every changelog, whatever input it came
/// from: with inputs of different partition counts, two instances could both
/// own a task `p` and write the same changelog partition. So all the inputs
/// the tasks read must have one partition count.
pub(super) fn check_same_counts(
    topo: &Topology,
    counts: &HashMap<String, i32>,
) -> Result<(), RunError> {
    let mut first: Option<(&str, &str, i32)> = None;
    for s in &topo.sources {
        let n = counts.get(&s.topic).copied().unwrap_or(0);
        match first {
            None => first = Some((&s.name, &s.topic, n)),
            Some((name, topic, m)) if m != n => {
                return Err(RunError::Setup(format!(
                    "sources `{name}` (topic `{topic}`, {m} partitions) and `{}` (topic `{}`, {n} partitions) \
                     have different partition counts: sluice run gives each partition number one task across \
                     all inputs; give the topics one count, set `repartition = true` on a source, or split the topology",
                    s.name, s.topic
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn stateful_operators_reached(topo: &Topology, from: usize) -> Vec<usize> {
    let mut seen = vec![false; topo.nodes.len()];
    let mut stack = vec![from];
    let mut found = Vec::new();
    while let Some(n) = stack.pop() {
        for edge in &topo.successors[n] {
            if std::mem::replace(&mut seen[edge.to], true) {
                continue;
            }
            if let NodeRef::Operator(op) = topo.nodes[edge.to] {
                if topo.operators[op].config.is_stateful() {
                    found.push(op);
                }
            }
            stack.push(edge.to);
        }
    }
    found
}

/// The internal topics made at an earlier start must still have the
/// inputs' partition count.
pub(super) fn check_internal_counts(
    plan: &Plan,
    partitions: &HashMap<String, i32>,
    tasks: i32,
) -> Result<(), RunError> {
    let repartitions = plan.repartitions.iter().map(|r| r.to.as_str());
    for topic in plan.changelog_topics().chain(repartitions) {
        let found = partitions.get(topic).copied().unwrap_or(tasks);
        if found != tasks {
            return Err(RunError::Setup(format!(
                "internal topic `{topic}` has {found} partitions but the inputs have {tasks}: \
                 the input partition count changed; reset the application (delete its internal topics and state)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::topics::tests::{topo, GATED};
    use super::*;

    #[test]
    fn sources_meeting_in_a_gate_must_have_equal_partition_counts() {
        let t = topo(GATED);
        let counts = |a, b| HashMap::from([("img".to_owned(), a), ("alr".to_owned(), b)]);
        assert!(check_co_partitioning(&t, &counts(4, 4)).is_ok());
        let err = check_co_partitioning(&t, &counts(4, 2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`images` (topic `img`, 4 partitions)"),
            "{err}"
        );
        assert!(
            err.contains("`alerts` (topic `alr`, 2 partitions)"),
            "{err}"
        );
        assert!(err.contains("operator `gate`"), "{err}");
    }

    #[test]
    fn inputs_that_never_meet_still_need_one_partition_count() {
        let apart = r#"
[app]
id = "app"
[[sources]]
name = "images"
topic = "img"
kind = "image"
[[sources]]
name = "alerts"
topic = "alr"
kind = "alert"
[[operators]]
name = "dedup"
type = "dedup"
input = "images"
key = ["service"]
ttl = "1m"
[[sinks]]
name = "a"
input = "dedup"
topic = "out-a"
[[sinks]]
name = "b"
input = "alerts"
topic = "out-b"
"#;
        let t = topo(apart);
        let counts = |a, b| HashMap::from([("img".to_owned(), a), ("alr".to_owned(), b)]);
        assert!(check_same_counts(&t, &counts(3, 3)).is_ok());
        let err = check_same_counts(&t, &counts(3, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`images` (topic `img`, 3 partitions)"),
            "{err}"
        );
        assert!(err.contains("repartition = true"), "{err}");
    }
}
