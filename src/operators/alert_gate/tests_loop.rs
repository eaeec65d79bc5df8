//! Unit tests of the closed loop: statuses, retries, promotions, freezes,
//! pins, approvals, and the new keys' validation.

use crate::operators::testkit::{alert, control, image_in, status, Harness};
use crate::record::{ControlAction, DeployStatus, Payload, Record};

const MIN: u64 = 60_000;

/// (ts, action, environment, image, reason_code) of each intent.
fn intents(records: &[Record]) -> Vec<(u64, &'static str, String, String, String)> {
    records
        .iter()
        .map(|r| match &r.payload {
            Payload::Intent(i) => (
                r.ts,
                i.action.as_str(),
                i.environment.clone(),
                i.image.clone(),
                i.reason_code.clone(),
            ),
            other => panic!("expected an intent, got {other:?}"),
        })
        .collect()
}

fn reasons(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| match &r.payload {
            Payload::Intent(i) => i.reason.clone(),
            _ => String::new(),
        })
        .collect()
}

fn gate(extra: &str) -> String {
    format!("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nstatus = \"statuses\"\ncontrol = \"controls\"\nblock_on = [\"critical\"]\nrollback_on = [\"critical\"]\nrollback_window = \"10m\"\n{extra}")
}

fn row(
    ts: u64,
    action: &'static str,
    env: &str,
    image: &str,
    code: &str,
) -> (u64, &'static str, String, String, String) {
    (ts, action, env.into(), image.into(), code.into())
}

fn prod(tag: &str) -> Payload {
    image_in("a", tag, "prod")
}

#[test]
fn a_failed_rollout_is_retried_with_backoff_then_rolled_back_and_quarantined() {
    let mut h = Harness::new(&gate("retry = { max = 2, backoff = \"1m\" }\n"));
    h.push(0, prod("v1"));
    h.push(1_000, prod("v2"));
    h.push(2_000, status("a", "prod", DeployStatus::Failed));
    assert!(h.advance(2_000 + MIN - 1).is_empty(), "backoff x 2^0 = 1m");
    let out = h.advance(2_000 + MIN);
    assert_eq!(
        intents(&out),
        [row(62_000, "deploy", "prod", "a:v2", "retry")]
    );
    assert_eq!(reasons(&out), ["retry 1 of 2 after failed sync"]);
    h.push(70_000, status("a", "prod", DeployStatus::Failed));
    assert!(
        h.advance(70_000 + 2 * MIN - 1).is_empty(),
        "backoff x 2^1 = 2m"
    );
    assert_eq!(
        intents(&h.advance(70_000 + 2 * MIN)),
        [row(190_000, "deploy", "prod", "a:v2", "retry")]
    );
    let out = h.push(200_000, status("a", "prod", DeployStatus::Failed));
    assert_eq!(
        intents(&out),
        [row(200_000, "rollback", "prod", "a:v1", "rollback_failed")],
        "no attempts left: back to the image before the failing one"
    );
    assert!(h.push(201_000, prod("v2")).is_empty(), "v2 is quarantined");
    assert_eq!(h.dropped("quarantined"), 1);
    assert_eq!(
        intents(&h.push(202_000, prod("v3"))),
        [row(202_000, "deploy", "prod", "a:v3", "new_image")]
    );
    assert_eq!(
        intents(&h.push(203_000, prod("v2"))),
        [row(203_000, "deploy", "prod", "a:v2", "new_image")],
        "a deploy of another image ended the quarantine"
    );
}

#[test]
fn a_healthy_status_cancels_a_pending_retry_and_stale_statuses_are_ignored() {
    let mut h = Harness::new(&gate("retry = { max = 1, backoff = \"1m\" }\n"));
    h.push(0, prod("v1"));
    h.push(1_000, status("a", "prod", DeployStatus::Failed));
    h.push(2_000, status("a", "prod", DeployStatus::Healthy));
    assert!(h.drain().is_empty(), "the retry was cancelled");
    let mut stale = status("a", "prod", DeployStatus::Failed);
    if let Payload::Deployment(d) = &mut stale {
        d.image = Some("a:v0".into());
    }
    h.push(3_000, stale);
    h.push(4_000, status("b", "prod", DeployStatus::Failed));
    assert_eq!(
        h.dropped("stale_status"),
        2,
        "another image; a key with no image"
    );
    assert!(h.drain().is_empty());
}

#[test]
fn failed_without_a_known_previous_image_holds_and_quarantines() {
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    let out = h.push(1_000, status("a", "prod", DeployStatus::Failed));
    assert_eq!(
        intents(&out),
        [row(1_000, "hold", "prod", "a:v1", "failed_no_rollback")]
    );
}

#[test]
fn a_healthy_soak_promotes_once_and_is_not_rearmed_by_more_healthy_statuses() {
    let mut h = Harness::new(&gate(
        "promote = [{ from = \"staging\", to = \"prod\", soak = \"30m\" }]\n",
    ));
    h.push(0, image_in("a", "v1", "staging"));
    h.push(1_000, status("a", "staging", DeployStatus::Healthy));
    h.push(5 * MIN, status("a", "staging", DeployStatus::Healthy));
    assert!(h.advance(1_000 + 30 * MIN - 1).is_empty());
    let out = h.advance(1_000 + 30 * MIN);
    assert_eq!(
        intents(&out),
        [row(1_801_000, "deploy", "prod", "a:v1", "promoted")]
    );
    assert_eq!(reasons(&out), ["promoted from staging after 30m healthy"]);
    h.push(40 * MIN, status("a", "staging", DeployStatus::Healthy));
    assert!(h.drain().is_empty(), "promoted once");
}

#[test]
fn a_soak_is_dropped_by_a_degraded_status_and_a_blocking_alert_in_from() {
    let mut h = Harness::new(&gate(
        "promote = [{ from = \"staging\", to = \"prod\", soak = \"30m\" }]\n",
    ));
    h.push(0, image_in("a", "v1", "staging"));
    h.push(1_000, status("a", "staging", DeployStatus::Healthy));
    h.push(2_000, status("a", "staging", DeployStatus::Degraded));
    assert!(h.drain().is_empty(), "degraded cancels the soak");
    let mut firing = alert("a", "Err", "critical", true);
    firing.set_environment("staging");
    h.push(3 * 3_600_000, status("a", "staging", DeployStatus::Healthy));
    h.push(3 * 3_600_000 + 1, firing);
    assert!(
        h.advance(4 * 3_600_000).is_empty(),
        "a blocking alert in staging at the soak's end"
    );
}

#[test]
fn degraded_within_the_window_rolls_back_and_quarantines_but_not_after_it() {
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    h.push(1_000, prod("v2"));
    let out = h.push(
        1_000 + 10 * MIN,
        status("a", "prod", DeployStatus::Degraded),
    );
    assert_eq!(
        intents(&out),
        [row(
            601_000,
            "rollback",
            "prod",
            "a:v1",
            "rollback_degraded"
        )]
    );
    assert!(h.push(700_000, prod("v2")).is_empty(), "quarantined");
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    h.push(1_000, prod("v2"));
    assert!(h
        .push(
            1_001 + 10 * MIN,
            status("a", "prod", DeployStatus::Degraded)
        )
        .is_empty());
}

#[test]
fn a_freeze_with_until_holds_then_releases_by_itself() {
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    h.push(
        1_000,
        control(ControlAction::Freeze, Some("a"), None, Some(10_000)),
    );
    let out = h.push(2_000, prod("v2"));
    assert_eq!(
        intents(&out),
        [row(2_000, "hold", "prod", "a:v2", "held_frozen")]
    );
    assert_eq!(
        reasons(&out),
        ["frozen until 1970-01-01T00:00:10Z: test by ana"]
    );
    assert!(h.advance(9_999).is_empty());
    let out = h.advance(10_000);
    assert_eq!(
        intents(&out),
        [row(10_000, "deploy", "prod", "a:v2", "released")]
    );
    assert_eq!(h.stored("gate"), 1, "one key entry, no freeze left");
}

#[test]
fn an_environment_freeze_holds_every_service_and_its_unfreeze_releases_them() {
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    h.push(1_000, control(ControlAction::Freeze, None, None, None));
    assert_eq!(intents(&h.push(2_000, prod("v2")))[0].1, "hold");
    assert_eq!(
        intents(&h.push(3_000, image_in("b", "v1", "prod")))[0].1,
        "hold"
    );
    let out = h.push(4_000, control(ControlAction::Unfreeze, None, None, None));
    assert_eq!(
        intents(&out),
        [
            row(4_000, "deploy", "prod", "a:v2", "released"),
            row(4_000, "deploy", "prod", "b:v1", "released"),
        ]
    );
    assert_eq!(h.stored("gate"), 2, "the environment's entry is gone");
}

#[test]
fn a_pin_holds_other_images_blocks_rollbacks_and_unpin_releases() {
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    h.push(1_000, prod("v2"));
    h.push(
        2_000,
        control(ControlAction::Pin, Some("a"), Some("a:v2"), None),
    );
    let out = h.push(3_000, prod("v3"));
    assert_eq!(
        intents(&out),
        [row(3_000, "hold", "prod", "a:v3", "held_pinned")]
    );
    assert_eq!(reasons(&out), ["pinned to a:v2 by ana: test"]);
    let out = h.push(4_000, alert("a", "Err", "critical", true));
    assert_eq!(
        intents(&out),
        [row(4_000, "hold", "prod", "a:v2", "pinned_no_rollback")]
    );
    let out = h.push(5_000, alert("a", "Err", "critical", false));
    assert!(out.is_empty(), "the pin, not the alert, holds v3");
    let out = h.push(6_000, control(ControlAction::Unpin, Some("a"), None, None));
    assert_eq!(
        intents(&out),
        [row(6_000, "deploy", "prod", "a:v3", "released")]
    );
}

#[test]
fn an_image_waits_for_its_approval() {
    let mut h = Harness::new(&gate("require_approval = [\"prod\"]\n"));
    let out = h.push(0, prod("v1"));
    assert_eq!(
        intents(&out),
        [row(0, "hold", "prod", "a:v1", "held_approval")]
    );
    h.push(
        1_000,
        control(ControlAction::Approve, Some("a"), Some("a:v9"), None),
    );
    let out = h.push(
        2_000,
        control(ControlAction::Approve, Some("a"), Some("a:v1"), None),
    );
    assert_eq!(
        intents(&out),
        [row(2_000, "deploy", "prod", "a:v1", "released")]
    );
    assert_eq!(
        intents(&h.push(3_000, prod("v9"))),
        [row(3_000, "deploy", "prod", "a:v9", "new_image")],
        "approved before it came"
    );
    let mut staging = control(ControlAction::Approve, Some("a"), Some("a:v1"), None);
    staging.set_environment("staging");
    h.push(4_000, staging);
    assert_eq!(h.dropped("approval_not_required"), 1);
}

#[test]
fn a_resolved_for_an_inactive_alert_changes_nothing_and_a_lower_refire_unparks() {
    let mut h = Harness::new(&gate(""));
    h.push(0, prod("v1"));
    h.push(10 * MIN + 1, alert("a", "Err", "critical", true));
    assert_eq!(intents(&h.push(11 * MIN, prod("v2")))[0].1, "hold");
    assert!(h
        .push(11 * MIN + 1, alert("a", "Other", "critical", false))
        .is_empty());
    let out = h.push(11 * MIN + 2, alert("a", "Err", "warning", true));
    assert_eq!(
        intents(&out),
        [row(11 * MIN + 2, "deploy", "prod", "a:v2", "released")],
        "firing again at a severity that no longer blocks"
    );
}

#[test]
fn a_freeze_window_holds_during_its_cron_window_in_its_timezone() {
    // 2026-01-05 is a Monday. 09:00 in Berlin (UTC+1 in January) is 08:00 UTC.
    let mut h = Harness::new(&gate("freeze_windows = [{ cron = \"0 9 * * MON\", duration = \"2h\", timezone = \"Europe/Berlin\", environments = [\"prod\"] }]\n"));
    let monday_8_utc: u64 = 1_767_600_000_000;
    h.push(monday_8_utc - 1, prod("v1"));
    let out = h.push(monday_8_utc, prod("v2"));
    assert_eq!(
        intents(&out),
        [row(monday_8_utc, "hold", "prod", "a:v2", "held_frozen")]
    );
    assert_eq!(
        reasons(&out),
        ["frozen until 2026-01-05T10:00:00Z: freeze window `0 9 * * MON` (Europe/Berlin)"]
    );
    let out = h.advance(monday_8_utc + 2 * 3_600_000);
    assert_eq!(
        intents(&out),
        [row(
            monday_8_utc + 7_200_000,
            "deploy",
            "prod",
            "a:v2",
            "released"
        )]
    );
    assert_eq!(h.stored("gate"), 1, "the environment's entry is gone");
}

#[test]
fn the_new_keys_are_validated_with_their_position() {
    let cases = [
        ("retry = { max = 0, backoff = \"1m\" }\n", "operators[0].retry.max", "at least 1"),
        ("retry = { max = 1, backoff = \"0s\" }\n", "operators[0].retry.backoff", "greater than zero"),
        ("promote = [{ from = \"prod\", to = \"prod\", soak = \"1m\" }]\n", "operators[0].promote[0].to", "to itself"),
        (
            "promote = [{ from = \"a\", to = \"b\", soak = \"1m\" }, { from = \"b\", to = \"a\", soak = \"1m\" }]\n",
            "operators[0].promote[1].to",
            "cycle: b -> a -> b",
        ),
        (
            "freeze_windows = [{ cron = \"61 * * * *\", duration = \"1h\", timezone = \"UTC\", environments = [\"prod\"] }]\n",
            "operators[0].freeze_windows[0].cron",
            "not a cron expression",
        ),
        (
            "freeze_windows = [{ cron = \"0 9 * * *\", duration = \"1h\", timezone = \"Mars/Olympus\", environments = [\"prod\"] }]\n",
            "operators[0].freeze_windows[0].timezone",
            "unknown timezone",
        ),
    ];
    for (extra, key, needle) in cases {
        let errs = Harness::errors(&gate(extra));
        let line = errs
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no error for {key}: {errs}"));
        assert!(line.contains(needle), "{line}");
        assert!(line.starts_with("unit.toml:"), "{line}");
    }
    let no_status = "[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nretry = { max = 1, backoff = \"1m\" }\n";
    assert!(Harness::errors(no_status).contains("`retry` needs a `status` input"));
    let wrong = "[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nstatus = \"alerts\"\n";
    assert!(Harness::errors(wrong).contains("`status` must be a deployment stream"));
}
