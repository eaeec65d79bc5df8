//! Validation of whole topology files: every error is found, located and named.

use super::*;
use diag::Diagnostic;

const HEAD: &str = "[app]\nid = \"t\"\n[[sources]]\nname = \"images\"\ntopic = \"docker-events\"\nkind = \"image\"\n[[sources]]\nname = \"alerts\"\ntopic = \"alert-events\"\nkind = \"alert\"\n";

fn errors(body: &str) -> Vec<Diagnostic> {
    match Topology::parse("t.toml", &format!("{HEAD}{body}")) {
        Ok(_) => panic!("expected errors for:\n{body}"),
        Err(e) => e.diagnostics,
    }
}

/// The (line, key) of each error, lines counted in `body` (after HEAD's 10 lines).
fn located(body: &str) -> Vec<(usize, String)> {
    errors(body)
        .into_iter()
        .map(|d| (d.pos.line - 10, d.key))
        .collect()
}

#[test]
fn the_default_topology_is_valid_and_wired_in_file_order() {
    let t = Topology::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topologies/cicd.toml"
    )))
    .unwrap();
    assert_eq!(t.app_id, "cicd");
    let names: Vec<&str> = t.operators.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["route", "dedup", "debounce", "throttle", "gate"]);
    assert_eq!(t.sinks[0].kind, Kind::Intent);
    assert_eq!(t.dead_letter_topic(), "cicd.dead-letter");
}

#[test]
fn every_example_topology_is_valid() {
    let mut checked = 0;
    for dir in ["topologies", "topologies/examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "cicd.toml and the examples");
}

#[test]
fn unknown_keys_types_and_nodes_are_all_reported_with_positions() {
    let body = "[[operators]]\nname = \"a\"\ntype = \"dedupe\"\ninput = \"images\"\n[[operators]]\nname = \"b\"\ntype = \"dedup\"\ninput = \"nowhere\"\nkey = [\"service\"]\nttl = \"1m\"\nttl_secs = 5\n[[sinks]]\nname = \"s\"\ninput = \"b\"\ntopic = \"out\"\n";
    let errs = located(body);
    assert_eq!(
        errs,
        vec![
            (3, "operators[0].type".into()),
            (8, "operators[1].input".into()),
            (11, "operators[1].ttl_secs".into())
        ],
        "{errs:?}"
    );
    let all = errors(body);
    assert!(
        all[0].message.contains("unknown operator type `dedupe`")
            && all[0].message.contains("alert_gate")
    );
    assert!(
        all[1].message.contains("unknown node `nowhere`")
            && all[1].message.contains("a, alerts, b, images")
    );
    assert!(all[2].message.contains("unknown key `ttl_secs`"));
}

#[test]
fn columns_point_at_the_value() {
    let errs = errors("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\", \"nope\"]\nttl = \"1m\"\n[[sinks]]\nname = \"s\"\ninput = \"d\"\ntopic = \"o\"\n");
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].pos.line, errs[0].pos.column), (15, 20), "{errs:?}");
    assert_eq!(errs[0].key, "operators[0].key[1]");
}

#[test]
fn cycles_are_reported_with_their_path() {
    let body = "[[operators]]\nname = \"a\"\ntype = \"dedup\"\ninput = \"b\"\nkey = [\"service\"]\nttl = \"1m\"\n[[operators]]\nname = \"b\"\ntype = \"dedup\"\ninput = \"a\"\nkey = [\"service\"]\nttl = \"1m\"\n[[operators]]\nname = \"c\"\ntype = \"dedup\"\ninput = \"c\"\nkey = [\"service\"]\nttl = \"1m\"\n[[sinks]]\nname = \"s\"\ninput = \"a\"\ntopic = \"o\"\n";
    let errs = errors(body);
    let cycles: Vec<&str> = errs
        .iter()
        .map(|d| d.message.as_str())
        .filter(|m| m.contains("cycle"))
        .collect();
    assert_eq!(cycles.len(), 2, "{errs:?}");
    assert!(
        cycles.iter().any(|m| m.contains("a -> b -> a")),
        "{cycles:?}"
    );
    assert!(cycles.iter().any(|m| m.contains("c -> c")), "{cycles:?}");
}

#[test]
fn kind_mismatches_are_reported() {
    let body = "[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"alerts\"\nkey = [\"tag\"]\nttl = \"1m\"\n[[operators]]\nname = \"g\"\ntype = \"alert_gate\"\nimages = \"d\"\nalerts = \"images\"\n[[sinks]]\nname = \"s\"\ninput = \"g\"\ntopic = \"o\"\n";
    let errs = errors(body);
    let keys: Vec<&str> = errs.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "operators[0].key[0]",
            "operators[1].images",
            "operators[1].alerts"
        ],
        "{errs:?}"
    );
}

#[test]
fn a_sink_cannot_feed_a_node_and_names_must_be_unique() {
    let errs = errors("[[operators]]\nname = \"images\"\ntype = \"dedup\"\ninput = \"s\"\nkey = [\"service\"]\nttl = \"1m\"\n[[sinks]]\nname = \"s\"\ninput = \"alerts\"\ntopic = \"o\"\n");
    let msgs: Vec<&str> = errs.iter().map(|d| d.message.as_str()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("duplicate node name `images`")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("`s` is a sink")), "{msgs:?}");
}

#[test]
fn missing_and_mistyped_values_are_reported() {
    let src = "[app]\nid = 5\n[[sources]]\nname = \"i\"\nkind = \"video\"\ntopic = \"bad topic\"\nformat = \"xml\"\n[[sinks]]\ninput = \"i\"\ntopic = \"o\"\n";
    let err = Topology::parse("x.toml", src).unwrap_err();
    let keys: Vec<&str> = err.diagnostics.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "app.id",
            "sources[0].kind",
            "sources[0].topic",
            "sources[0].format",
            "sinks[0].name"
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "x.toml: 5 errors found\nx.toml:2:6: `app.id`: expected a string, found integer"
        ),
        "{text}"
    );
}

#[test]
fn syntax_errors_have_a_position() {
    let err = Topology::parse("x.toml", "[app]\nid = \"t\"\n[[sources]\n").unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert_eq!(err.diagnostics[0].pos.line, 3, "{err}");
}

#[test]
fn an_empty_file_names_what_is_missing() {
    let err = Topology::parse("x.toml", "").unwrap_err();
    assert_eq!(err.diagnostics[0].key, "app", "{err}");
}

#[test]
fn fan_out_goes_to_operators_first_then_sinks_in_file_order() {
    let src = format!("{HEAD}[[sinks]]\nname = \"raw\"\ninput = \"images\"\ntopic = \"raw\"\n[[operators]]\nname = \"r\"\ntype = \"route\"\ninput = \"images\"\ndefault = \"dev\"\n[[sinks]]\nname = \"routed\"\ninput = \"r\"\ntopic = \"routed\"\n");
    let t = Topology::parse("t.toml", &src).unwrap();
    let order: Vec<&str> = t.successors[0]
        .iter()
        .map(|e| t.node_name(t.nodes[e.to]))
        .collect();
    assert_eq!(order, ["r", "raw"]);
}

const KAFKA_TAIL: &str = "[[sinks]]\nname = \"s\"\ninput = \"images\"\ntopic = \"o\"\n";

#[test]
fn the_kafka_table_is_read_with_secrets_by_reference() {
    let src = format!(
        "{HEAD}{KAFKA_TAIL}[kafka]\nbrokers = \"k:9092\"\nprocessing_guarantee = \"at_least_once\"\ncommit_interval = \"250ms\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"socket.keepalive.enable\" = true\n\"fetch.wait.max.ms\" = 50\n[kafka.secrets]\n\"sasl.password\" = {{ env = \"SLUICE_TEST_PW_ABSENT\" }}\n\"ssl.key.password\" = {{ file = \"/nonexistent/pw\" }}\n"
    );
    let t = Topology::parse("t.toml", &src).unwrap_or_else(|e| panic!("{e}"));
    let k = &t.kafka;
    assert_eq!(k.brokers.as_deref(), Some("k:9092"));
    assert_eq!(k.guarantee, kafka::Guarantee::AtLeastOnce);
    assert_eq!(k.commit_interval.as_ms(), 250);
    let names: Vec<&str> = k.properties.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "fetch.wait.max.ms",
            "security.protocol",
            "socket.keepalive.enable"
        ]
    );
    assert_eq!(
        k.properties[0].1, "50",
        "integers become librdkafka strings"
    );
    assert_eq!(k.properties[2].1, "true");
    let err = k.resolve_secrets().unwrap_err().to_string();
    assert_eq!(err, "kafka secret `sasl.password`: environment variable SLUICE_TEST_PW_ABSENT is not set (or not UTF-8)");
}

#[test]
fn secrets_resolve_from_files_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3ntinel-P4ss\n").unwrap();
    let src = format!(
        "{HEAD}{KAFKA_TAIL}[kafka.secrets]\n\"sasl.password\" = {{ file = \"{}\" }}\n",
        file.display()
    );
    let t = Topology::parse("t.toml", &src).unwrap();
    let secrets = t.kafka.resolve_secrets().unwrap();
    assert_eq!(secrets[0].1.expose(), "s3ntinel-P4ss");
    let shown = format!("{secrets:?} {}", secrets[0].1);
    assert!(!shown.contains("s3ntinel"), "{shown}");
}

#[test]
fn credentials_in_properties_and_managed_keys_are_refused() {
    let errs = errors(&format!(
        "{KAFKA_TAIL}[kafka]\nprocessing_guarantee = \"maybe_once\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"group.id\" = \"x\"\n\"partitioner\" = \"random\"\n\"Bad Name\" = 1\n[kafka.secrets]\n\"ssl.key.password\" = {{ env = \"A\", file = \"B\" }}\n"
    ));
    let keys: Vec<&str> = errs.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "kafka.processing_guarantee",
            "kafka.properties.\"sasl.password\"",
            "kafka.properties.\"group.id\"",
            "kafka.properties.\"partitioner\"",
            "kafka.properties.\"Bad Name\"",
            "kafka.secrets.\"ssl.key.password\""
        ],
        "{errs:?}"
    );
    assert!(
        errs.iter().all(|d| !d.message.contains("hunter2")),
        "a refused secret is not echoed: {errs:?}"
    );
    assert!(errs[1].message.contains("[kafka.secrets]"));
}
