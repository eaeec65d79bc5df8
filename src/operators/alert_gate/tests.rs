//! Unit tests of the gate, through the real engine (testkit).

use crate::operators::testkit::{alert, image, image_in, Harness};
use crate::record::{Payload, Record};

const GATE: &str = "[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\nrollback_on = [\"critical\"]\nrollback_window = \"5m\"\n";

/// (ts, action, image, previous_image) of each intent.
fn intents(records: &[Record]) -> Vec<(u64, &'static str, String, Option<String>)> {
    records
        .iter()
        .map(|r| match &r.payload {
            Payload::Intent(i) => (
                r.ts,
                i.action.as_str(),
                i.image.clone(),
                i.previous_image.clone(),
            ),
            other => panic!("expected an intent, got {other:?}"),
        })
        .collect()
}

fn img(tag: &str) -> Payload {
    image_in("a", tag, "prod")
}

#[test]
fn deploys_new_images_and_ignores_the_current_one() {
    let mut h = Harness::new(GATE);
    assert_eq!(
        intents(&h.push(0, img("v1"))),
        [(0, "deploy", "a:v1".into(), None)]
    );
    assert!(h.push(1, img("v1")).is_empty());
    assert_eq!(
        intents(&h.push(2, img("v2"))),
        [(2, "deploy", "a:v2".into(), Some("a:v1".into()))]
    );
    assert_eq!(h.dropped("already_current"), 1);
}

#[test]
fn holds_while_blocked_and_deploys_the_newest_parked_image_on_resolve() {
    let mut h = Harness::new(GATE);
    h.push(0, img("v1"));
    h.push(1_000_000, alert("a", "HighLatency", "critical", true));
    assert_eq!(
        intents(&h.push(1_000_001, img("v2"))),
        [(1_000_001, "hold", "a:v2".into(), Some("a:v1".into()))]
    );
    assert_eq!(intents(&h.push(1_000_002, img("v3")))[0].1, "hold");
    let out = h.push(1_000_003, alert("a", "HighLatency", "critical", false));
    assert_eq!(
        intents(&out),
        [(1_000_003, "deploy", "a:v3".into(), Some("a:v1".into()))]
    );
    match &out[0].payload {
        Payload::Intent(i) => {
            assert_eq!(i.reason, "released: no blocking alert remains");
            assert_eq!(i.reason_code, "released");
        }
        _ => unreachable!(),
    }
}

#[test]
fn warnings_neither_block_nor_roll_back() {
    let mut h = Harness::new(GATE);
    h.push(0, img("v1"));
    h.push(1, img("v2"));
    assert!(h.push(2, alert("a", "Slow", "warning", true)).is_empty());
    assert_eq!(intents(&h.push(3, img("v3")))[0].1, "deploy");
}

#[test]
fn rolls_back_within_the_window_once_and_not_after_it() {
    let mut h = Harness::new(GATE);
    h.push(0, img("v1"));
    h.push(10_000, img("v2"));
    let out = h.push(310_000, alert("a", "Errors", "critical", true));
    assert_eq!(
        intents(&out),
        [(310_000, "rollback", "a:v1".into(), Some("a:v2".into()))],
        "exactly 5m after: inside"
    );
    assert!(
        h.push(310_001, alert("a", "Other", "critical", true))
            .is_empty(),
        "a rollback never cascades"
    );

    let mut h = Harness::new(GATE);
    h.push(0, img("v1"));
    h.push(10_000, img("v2"));
    assert!(
        h.push(310_001, alert("a", "Errors", "critical", true))
            .is_empty(),
        "1 ms past the window"
    );
}

#[test]
fn no_rollback_without_a_known_previous_image() {
    let mut h = Harness::new(GATE);
    h.push(0, img("v1"));
    assert!(h.push(1, alert("a", "Errors", "critical", true)).is_empty());
}

#[test]
fn alerts_of_other_environments_do_not_block() {
    let mut h = Harness::new(GATE);
    h.push(0, alert("a", "Errors", "critical", true));
    assert_eq!(
        intents(&h.push(1, image_in("a", "v1", "staging")))[0].1,
        "deploy"
    );
}

#[test]
fn an_image_without_environment_is_a_dead_letter() {
    let mut h = Harness::new(GATE);
    assert!(h.push(0, image("a", Some("v1"))).is_empty());
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].starts_with("gate: environment"), "{dead:?}");
}

#[test]
fn intent_ids_are_stable_and_distinct() {
    let run = || {
        let mut h = Harness::new(GATE);
        let mut ids = Vec::new();
        for (t, tag) in [(0, "v1"), (1, "v2"), (2, "v1")] {
            for r in h.push(t, img(tag)) {
                if let Payload::Intent(i) = r.payload {
                    ids.push(i.intent_id);
                }
            }
        }
        ids
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    assert!(a[0] != a[2], "the same image deployed twice gets two ids");
    assert!(a
        .iter()
        .all(|id| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit())));
}

#[test]
fn inputs_must_be_an_image_and_an_alert_stream() {
    let errs = Harness::errors("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"alerts\"\nalerts = \"images\"\n");
    assert!(
        errs.contains("operators[0].images") && errs.contains("must be an image stream"),
        "{errs}"
    );
    assert!(
        errs.contains("operators[0].alerts") && errs.contains("must be an alert stream"),
        "{errs}"
    );
    let errs = Harness::errors("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nrollback_on = [\"critical\"]\n");
    assert!(errs.contains("rollback_window"), "{errs}");
}

const GATE_TTL: &str = "[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\nalert_ttl = \"1h\"\n";
const HOUR: u64 = 3_600_000;

#[test]
fn an_alert_expires_after_its_ttl_without_a_refire_and_releases_the_parked_image() {
    let mut h = Harness::new(GATE_TTL);
    h.push(0, img("v1"));
    h.push(1_000, alert("a", "Errors", "critical", true));
    assert_eq!(intents(&h.push(2_000, img("v2")))[0].1, "hold");
    assert!(
        h.advance(1_000 + HOUR - 1).is_empty(),
        "still active 1 ms before"
    );
    let out = h.advance(1_000 + HOUR);
    assert_eq!(
        intents(&out),
        [(1_000 + HOUR, "deploy", "a:v2".into(), Some("a:v1".into()))]
    );
    match &out[0].payload {
        Payload::Intent(i) => assert_eq!(i.reason_code, "released"),
        _ => unreachable!(),
    }
    assert_eq!(
        intents(&h.push(2 * HOUR, img("v3")))[0].1,
        "deploy",
        "the expired alert no longer blocks"
    );
}

#[test]
fn a_refire_restarts_the_alert_ttl() {
    let mut h = Harness::new(GATE_TTL);
    h.push(0, img("v1"));
    h.push(1_000, alert("a", "Errors", "critical", true));
    h.push(HOUR, alert("a", "Errors", "critical", true));
    assert_eq!(
        intents(&h.push(HOUR + 2_000, img("v2")))[0].1,
        "hold",
        "the refire at 1h keeps it active past 1h + 1s"
    );
    assert!(h.advance(2 * HOUR - 1).is_empty());
    assert_eq!(intents(&h.advance(2 * HOUR))[0].1, "deploy");
}

#[test]
fn a_resolved_for_an_unknown_key_leaves_no_state() {
    let mut h = Harness::new(GATE);
    assert!(h
        .push(0, alert("b", "Errors", "critical", false))
        .is_empty());
    assert_eq!(h.stored("gate"), 0, "a resolved for an unknown key");
    h.push(1, alert("c", "Errors", "critical", true));
    h.push(2, alert("c", "Errors", "critical", false));
    assert_eq!(h.stored("gate"), 0, "an alert fired and resolved");
}

#[test]
fn an_expired_alert_leaves_no_state() {
    let mut h = Harness::new(GATE_TTL);
    h.push(1, alert("c", "Errors", "critical", true));
    h.push(2, alert("c", "Other", "warning", true));
    assert_eq!(h.stored("gate"), 1);
    h.advance(2 + HOUR);
    assert_eq!(
        h.stored("gate"),
        0,
        "both alerts expired: nothing is left for c"
    );
    h.push(3 + HOUR, img("v1"));
    assert_eq!(h.stored("gate"), 1, "a key with a current image stays");
}

#[test]
fn entries_written_before_alerts_expired_still_decode() {
    /// The entry layout before `fired` was added.
    #[derive(serde::Serialize)]
    struct Before {
        alerts: std::collections::BTreeMap<String, String>,
        current: Option<String>,
        last_deploy: Option<super::state::LastDeploy>,
        parked: Option<String>,
        emitted: u64,
    }
    let before = Before {
        alerts: [("Errors".to_owned(), "critical".to_owned())].into(),
        current: Some("a:v1".into()),
        last_deploy: None,
        parked: None,
        emitted: 1,
    };
    let bytes = postcard::to_stdvec(&before).unwrap();
    let decoded: super::state::GateState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded.alerts, before.alerts);
    assert_eq!(decoded.current, before.current);
    assert_eq!(decoded.emitted, 1);
    assert!(decoded.fired.is_empty());
    let mut now = decoded.clone();
    now.fired.insert("Errors".into(), 5);
    let round: super::state::GateState =
        postcard::from_bytes(&postcard::to_stdvec(&now).unwrap()).unwrap();
    assert_eq!(round, now);
}

#[test]
fn alert_ttl_must_be_a_positive_duration() {
    let errs = Harness::errors("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nalert_ttl = \"0s\"\n");
    assert!(
        errs.contains("operators[0].alert_ttl") && errs.contains("greater than zero"),
        "{errs}"
    );
}

#[test]
fn entries_of_the_previous_version_decode_with_their_parked_image_held_by_an_alert() {
    /// The entry layout of the version before the closed loop.
    #[derive(serde::Serialize)]
    struct Previous {
        alerts: std::collections::BTreeMap<String, String>,
        current: Option<String>,
        last_deploy: Option<super::state::LastDeploy>,
        parked: Option<String>,
        emitted: u64,
        fired: std::collections::BTreeMap<String, u64>,
    }
    let previous = Previous {
        alerts: [("Errors".to_owned(), "critical".to_owned())].into(),
        current: Some("a:v1".into()),
        last_deploy: None,
        parked: Some("a:v2".into()),
        emitted: 2,
        fired: [("Errors".to_owned(), 7)].into(),
    };
    let bytes = postcard::to_stdvec(&previous).unwrap();
    let decoded: super::state::GateState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded.parked.as_deref(), Some("a:v2"));
    assert_eq!(decoded.fired, previous.fired);
    assert_eq!(
        decoded.parked_by,
        Some(super::state::Hold::Alert),
        "an old parked image was parked by an alert, so its resolve releases it"
    );
    assert!(decoded.pin.is_none() && decoded.quarantined.is_empty());
    let mut full = decoded.clone();
    full.approvals.push("a:v3".into());
    full.window_until = Some(9);
    let round: super::state::GateState =
        postcard::from_bytes(&postcard::to_stdvec(&full).unwrap()).unwrap();
    assert_eq!(round, full, "every field of the new layout round-trips");
}
