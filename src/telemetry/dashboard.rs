//! The Grafana dashboard, built from the metric catalog: every query names
//! its metric through a [`Def`], so renaming a metric renames it here too.
//! `sluice dashboard` prints it; the Prometheus test runs every query of
//! every panel against a real scrape of `run`, `commit` and `ingest`.

use serde_json::{json, Value};

use super::catalog::{self as c, Def, Kind};

/// One query of a panel.
#[derive(Debug, Clone)]
pub struct Query {
    /// PromQL; `$__rate_interval` is Grafana's rate window.
    pub expr: String,
    pub legend: String,
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: &'static str,
    pub description: &'static str,
    /// Grafana's unit id (`s`, `bytes`, `ops`, `short`, ...).
    pub unit: &'static str,
    pub queries: Vec<Query>,
}

/// A row of panels.
#[derive(Debug, Clone)]
pub struct Row {
    pub title: &'static str,
    pub panels: Vec<Panel>,
}

fn q(expr: String, legend: &str) -> Query {
    Query {
        expr,
        legend: legend.to_owned(),
    }
}

/// `sum by (labels) (rate(counter[$__rate_interval]))`.
fn rate_by(def: &Def, by: &str) -> String {
    debug_assert_eq!(def.kind, Kind::Counter);
    let by = if by.is_empty() {
        String::new()
    } else {
        format!(" by ({by})")
    };
    format!("sum{by} (rate({}[$__rate_interval]))", def.prom_name())
}

/// The q-quantile of a histogram over the rate window.
fn quantile(def: &Def, q: f64, by: &str) -> String {
    debug_assert!(matches!(def.kind, Kind::Histogram(_)));
    let by = if by.is_empty() {
        "le".to_owned()
    } else {
        format!("le, {by}")
    };
    format!(
        "histogram_quantile({q}, sum by ({by}) (rate({}_bucket[$__rate_interval])))",
        def.prom_name()
    )
}

/// `sum by (labels) (gauge)`.
fn gauge_by(def: &Def, by: &str) -> String {
    debug_assert_eq!(def.kind, Kind::Gauge);
    if by.is_empty() {
        format!("sum ({})", def.prom_name())
    } else {
        format!("sum by ({by}) ({})", def.prom_name())
    }
}

fn panel(
    title: &'static str,
    description: &'static str,
    unit: &'static str,
    queries: Vec<Query>,
) -> Panel {
    Panel {
        title,
        description,
        unit,
        queries,
    }
}

/// Every row and panel of the dashboard.
pub fn rows() -> Vec<Row> {
    vec![
        Row {
            title: "Event flow (sluice run)",
            panels: vec![
                panel("Records in by node", "Records each topology node received per second.", "ops", vec![q(rate_by(&c::NODE_RECORDS_IN, "node"), "{{node}}")]),
                panel("Records out by node", "Records each node emitted per second.", "ops", vec![q(rate_by(&c::NODE_RECORDS_OUT, "node"), "{{node}}")]),
                panel("Drops by reason", "Records dropped per second: duplicates, superseded by a later one, rate limited, invalid.", "ops", vec![q(rate_by(&c::NODE_RECORDS_DROPPED, "node, reason"), "{{node}} {{reason}}")]),
                panel("Ignored payload entries", "Vendor events that are not pushes or merges, by type (run's sources and ingest's endpoints).", "ops", vec![
                    q(rate_by(&c::SOURCE_ENTRIES_IGNORED, "event"), "run {{event}}"),
                    q(rate_by(&c::INGEST_IGNORED, "event"), "ingest {{event}}"),
                ]),
                panel("Process rate by task", "Input records processed and committed per second (Kafka Streams' process-rate).", "ops", vec![q(rate_by(&c::TASK_RECORDS_PROCESSED, "task"), "task {{task}}")]),
                panel("Consumer lag", "Records of each input partition not consumed yet.", "short", vec![q(gauge_by(&c::CONSUMER_LAG, "topic, partition"), "{{topic}}[{{partition}}]")]),
                panel("Dead letters", "Records sent to the dead-letter topic per second.", "ops", vec![q(rate_by(&c::DEAD_LETTERS, ""), "dead letters")]),
            ],
        },
        Row {
            title: "Deploys",
            panels: vec![
                panel("Intents by action", "Deployment intents per second: deploy, hold, rollback.", "ops", vec![q(rate_by(&c::INTENTS, "action"), "{{action}}")]),
                panel("Intents by environment", "Deployment intents per second by environment.", "ops", vec![q(rate_by(&c::INTENTS, "environment"), "{{environment}}")]),
                panel("Held deploys and active alerts", "Keys with an image parked by a gate, and the alerts gates hold as active.", "short", vec![
                    q(gauge_by(&c::GATE_HELD_KEYS, ""), "held keys"),
                    q(gauge_by(&c::GATE_ACTIVE_ALERTS, ""), "active alerts"),
                ]),
                panel("Event to intent latency", "From the earliest input record behind an intent to the intent's output (includes debounce and throttle delays).", "s", vec![
                    q(quantile(&c::EVENT_TO_INTENT_LATENCY, 0.5, ""), "p50"),
                    q(quantile(&c::EVENT_TO_INTENT_LATENCY, 0.99, ""), "p99"),
                ]),
                panel("Record end-to-end latency at sinks", "Wall clock minus a record's time when it reaches a sink (KIP-613).", "s", vec![
                    q(quantile(&c::RECORD_E2E_LATENCY, 0.5, "sink"), "p50 {{sink}}"),
                    q(quantile(&c::RECORD_E2E_LATENCY, 0.99, "sink"), "p99 {{sink}}"),
                ]),
            ],
        },
        Row {
            title: "State and transactions",
            panels: vec![
                panel("Timers pending", "Timers armed and not fired, by operator.", "short", vec![q(gauge_by(&c::OPERATOR_TIMERS_PENDING, "operator"), "{{operator}}")]),
                panel("State entries", "Entries in each operator's store.", "short", vec![q(gauge_by(&c::STATE_ENTRIES, "operator"), "{{operator}}")]),
                panel("Commits, aborts, rebuilds", "Commits per second, aborts and producer rebuilds by error class, fencing, committed offsets asked of a new client.", "ops", vec![
                    q(rate_by(&c::COMMITS, ""), "commits"),
                    q(rate_by(&c::ABORTS, "class"), "abort {{class}}"),
                    q(rate_by(&c::PRODUCER_REBUILDS, "class"), "rebuild {{class}}"),
                    q(rate_by(&c::FENCED, ""), "fenced"),
                    q(rate_by(&c::OFFSET_FETCH_FALLBACKS, "outcome"), "offsets from a new client, {{outcome}}"),
                ]),
                panel("Commit latency", "Time of a commit: flush, offsets, transaction, local stores.", "s", vec![
                    q(quantile(&c::COMMIT_DURATION, 0.5, ""), "p50"),
                    q(quantile(&c::COMMIT_DURATION, 0.99, ""), "p99"),
                ]),
                panel("Restore", "Changelog records restored per second, and restore time.", "short", vec![
                    q(rate_by(&c::RESTORED_RECORDS, ""), "records/s"),
                    q(quantile(&c::RESTORE_DURATION, 0.99, ""), "p99 seconds"),
                ]),
                panel("Punctuations", "Wall-clock timers fired without a record, per second.", "ops", vec![q(rate_by(&c::TASK_PUNCTUATIONS, ""), "punctuations")]),
                panel("Enforced processing", "Waits of max_task_idle for an empty input that ran out, per second: that input's next records are late.", "ops", vec![q(rate_by(&c::ENFORCED_PROCESSING, ""), "enforced")]),
            ],
        },
        Row {
            title: "Committer (sluice commit)",
            panels: vec![
                panel("Intents by outcome", "What the committer did with each intent.", "ops", vec![q(rate_by(&c::COMMITTER_INTENTS, "outcome"), "{{outcome}}")]),
                panel("Refusals by kind", "Intents sent to the dead letters, by kind.", "ops", vec![q(rate_by(&c::COMMITTER_REFUSALS, "kind"), "{{kind}}")]),
                panel("Commits and pushes", "Commits pushed, and push attempts by result.", "ops", vec![
                    q(rate_by(&c::COMMITTER_COMMITS, ""), "commits"),
                    q(rate_by(&c::COMMITTER_PUSHES, "result"), "push {{result}}"),
                ]),
                panel("Batch duration", "Time to plan, commit and push one batch.", "s", vec![q(quantile(&c::COMMITTER_BATCH_DURATION, 0.99, ""), "p99")]),
                panel("Intent to visible on the remote", "From an intent's time to its commit on the remote.", "s", vec![
                    q(quantile(&c::COMMITTER_VISIBLE_LATENCY, 0.5, ""), "p50"),
                    q(quantile(&c::COMMITTER_VISIBLE_LATENCY, 0.99, ""), "p99"),
                ]),
            ],
        },
        Row {
            title: "Webhook gateway (sluice ingest)",
            panels: vec![
                panel("Requests by status code", "Webhooks answered per second, by status code.", "ops", vec![q(rate_by(&c::INGEST_REQUESTS, "code"), "{{code}}")]),
                panel("Produce latency", "From a webhook's body to the broker's acknowledgement.", "s", vec![q(quantile(&c::INGEST_PRODUCE_DURATION, 0.99, "endpoint"), "p99 {{endpoint}}")]),
                panel("Bytes in", "Webhook body bytes accepted per second.", "Bps", vec![q(rate_by(&c::INGEST_RECEIVED_BYTES, "endpoint"), "{{endpoint}}")]),
            ],
        },
        Row {
            title: "Processes",
            panels: vec![
                panel("Ready", "1 when a process says it is ready.", "short", vec![q(gauge_by(&c::READY, "command"), "{{command}}")]),
                panel("Resident memory", "RSS of each process.", "bytes", vec![q(c::PROCESS_RSS.prom_name(), "{{job}}")]),
                panel("CPU", "CPU seconds per second of each process.", "percentunit", vec![q(format!("rate({}[$__rate_interval])", c::PROCESS_CPU.prom_name()), "{{job}}")]),
                panel("Open file descriptors", "File descriptors each process holds.", "short", vec![q(c::PROCESS_OPEN_FDS.prom_name(), "{{job}}")]),
                panel("Build", "Versions and commits running.", "short", vec![q(gauge_by(&c::BUILD_INFO, "version, commit, command"), "{{command}} {{version}} {{commit}}")]),
            ],
        },
    ]
}

/// The dashboard as Grafana JSON (schema 39), with a Prometheus data-source variable.
pub fn grafana_json() -> Value {
    let mut panels = Vec::new();
    let mut y = 0;
    let mut id = 1;
    for row in rows() {
        panels.push(json!({
            "type": "row", "id": id, "title": row.title, "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}
        }));
        id += 1;
        y += 1;
        for (i, p) in row.panels.iter().enumerate() {
            let x = (i % 3) * 8;
            if i > 0 && i % 3 == 0 {
                y += 8;
            }
            panels.push(panel_json(p, id, x, y));
            id += 1;
        }
        y += 8;
    }
    json!({
        "title": "Sluice",
        "uid": "sluice-overview",
        "description": "Event flow, drops, held deploys, intents, latency, lag, commits, pushes and webhooks of Sluice. Generated by `sluice dashboard`.",
        "tags": ["sluice", "gitops", "kafka"],
        "schemaVersion": 39,
        "editable": true,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus", "current": {}, "hide": 0
        }]},
        "panels": panels,
    })
}

fn panel_json(p: &Panel, id: usize, x: usize, y: usize) -> Value {
    let targets: Vec<Value> = p
        .queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            json!({
                "refId": ((b'A' + i as u8) as char).to_string(),
                "expr": q.expr,
                "legendFormat": q.legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            })
        })
        .collect();
    json!({
        "type": "timeseries", "id": id, "title": p.title, "description": p.description,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_names_a_catalog_metric_and_every_metric_has_a_panel() {
        let exprs: Vec<String> = rows()
            .iter()
            .flat_map(|r| r.panels.iter())
            .flat_map(|p| p.queries.iter().map(|q| q.expr.clone()))
            .collect();
        for def in c::ALL {
            assert!(
                exprs.iter().any(|e| e.contains(&def.prom_name())),
                "no panel shows {}",
                def.prom_name()
            );
        }
        for e in &exprs {
            assert!(
                c::ALL.iter().any(|d| e.contains(&d.prom_name())),
                "{e} names no catalog metric"
            );
        }
    }

    #[test]
    fn the_json_has_a_target_per_query_and_unique_ids() {
        let json = grafana_json();
        let panels = json["panels"].as_array().unwrap();
        let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), panels.len());
        let queries: usize = rows()
            .iter()
            .flat_map(|r| r.panels.iter())
            .map(|p| p.queries.len())
            .sum();
        let targets: usize = panels
            .iter()
            .filter_map(|p| p["targets"].as_array())
            .map(Vec::len)
            .sum();
        assert_eq!(targets, queries);
    }
}
