//! `sluice status SERVICE ENVIRONMENT --url URL`: why a deploy is (not)
//! going out, as text, from any instance of a running app (the instance
//! forwards the question to the owner of the key's partition).

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use sluice::kafka::run::state_http::path_segment;

#[derive(clap::Args)]
pub struct StatusArgs {
    service: String,
    environment: String,
    /// The `--metrics-addr` listener of any instance, e.g. `http://127.0.0.1:9464`.
    #[arg(long)]
    url: String,
    /// Print the answer as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let url = format!(
        "{}/v1/state/{}/{}",
        args.url.trim_end_matches('/'),
        path_segment(&args.service),
        path_segment(&args.environment)
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let answer = client
        .get(&url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    let status = answer.status();
    let bytes = answer.bytes().with_context(|| format!("GET {url}"))?;
    let body: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("GET {url}: not JSON"))?;
    if !status.is_success() {
        let why = body["error"].as_str().unwrap_or("no reason given");
        bail!("GET {url}: {status}: {why}");
    }
    let text = if args.json {
        serde_json::to_string_pretty(&body)? + "\n"
    } else {
        render(&body)
    };
    super::print_stdout(&text)
}

/// A time in ms since the epoch, as RFC 3339.
fn at(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The state query's answer for people.
pub fn render(state: &Value) -> String {
    let mut out = format!(
        "{} in {} (partition {}, instance {}, as of {})\n",
        text(&state["service"]),
        text(&state["environment"]),
        text(&state["partition"]),
        text(&state["instance"]),
        at(&state["clock"])
    );
    let operators = state["operators"].as_array().cloned().unwrap_or_default();
    if operators.is_empty() {
        out.push_str("  nothing is held for this key\n");
    }
    for op in &operators {
        match op["type"].as_str() {
            Some("alert_gate") => render_gate(op, &mut out),
            _ => render_pending(op, &mut out),
        }
    }
    out
}

fn render_gate(g: &Value, out: &mut String) {
    let name = text(&g["name"]);
    out.push_str(&format!(
        "  {name}: current image {} since {} (before it: {})\n",
        text(&g["current_image"]),
        at(&g["since"]),
        text(&g["previous_image"])
    ));
    let r = &g["rollout"];
    out.push_str(&format!(
        "    rollout: {} since {}, {} retries, revision {}\n",
        text(&r["status"]),
        at(&r["since"]),
        r["attempts"].as_u64().unwrap_or(0),
        text(&r["revision"])
    ));
    if !g["parked_image"].is_null() {
        out.push_str(&format!("    parked: {}\n", text(&g["parked_image"])));
        for why in g["held_because"].as_array().into_iter().flatten() {
            out.push_str(&format!("      held because {}\n", text(why)));
        }
    }
    for a in g["active_alerts"].as_array().into_iter().flatten() {
        let blocks = if a["blocks"].as_bool() == Some(true) {
            ", blocks deploys"
        } else {
            ""
        };
        out.push_str(&format!(
            "    alert {} ({}{blocks}) fired {}, expires {}\n",
            text(&a["identity"]),
            text(&a["severity"]),
            at(&a["fired_at"]),
            at(&a["expires_at"])
        ));
    }
    if !g["frozen"].is_null() {
        let until = match &g["frozen"]["until"] {
            Value::Null => "an unfreeze".to_owned(),
            ms => at(ms),
        };
        out.push_str(&format!(
            "    frozen until {until}: {}\n",
            text(&g["frozen"]["reason"])
        ));
    }
    if !g["pinned"].is_null() {
        out.push_str(&format!(
            "    pinned to {} by {}: {}\n",
            text(&g["pinned"]["image"]),
            text(&g["pinned"]["by"]),
            text(&g["pinned"]["reason"])
        ));
    }
    for (label, key) in [("approved", "approvals"), ("quarantined", "quarantined")] {
        for image in g[key].as_array().into_iter().flatten() {
            out.push_str(&format!("    {label}: {}\n", text(image)));
        }
    }
    for t in g["timers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "    timer {} at {}: {}\n",
            text(&t["kind"]),
            at(&t["deadline"]),
            text(&t["detail"])
        ));
    }
}

fn render_pending(op: &Value, out: &mut String) {
    for p in op["pending"].as_array().into_iter().flatten() {
        let record = &p["record"];
        let what = record["image"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| record.to_string());
        out.push_str(&format!(
            "  {} ({}): holds {what}, out at {}\n",
            text(&op["name"]),
            text(&op["type"]),
            at(&p["deadline"])
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_deploy_says_why() {
        let state = serde_json::json!({
            "service": "api", "environment": "prod", "partition": 1, "instance": "a", "clock": 0,
            "operators": [
                {"name": "debounce", "type": "debounce", "pending": [{"record": {"image": "r/api:v3"}, "origin": null, "deadline": 30000}]},
                {"name": "gate", "type": "alert_gate", "current_image": "r/api:v1", "since": 1000, "previous_image": null,
                 "caused_by": [], "rollout": {"status": "healthy", "since": 2000, "attempts": 0, "revision": "abc"},
                 "parked_image": "r/api:v2", "held_because": ["frozen until 1970-01-01T00:01:00Z: release freeze"],
                 "active_alerts": [], "frozen": {"until": 60000, "reason": "release freeze"}, "pinned": null,
                 "approvals": [], "quarantined": ["r/api:v0"], "timers": [{"kind": "freeze_until", "deadline": 60000, "detail": "unfreeze"}]}
            ]
        });
        let text = render(&state);
        assert!(
            text.starts_with(
                "api in prod (partition 1, instance a, as of 1970-01-01T00:00:00.000Z)"
            ),
            "{text}"
        );
        assert!(
            text.contains("debounce (debounce): holds r/api:v3, out at 1970-01-01T00:00:30.000Z"),
            "{text}"
        );
        assert!(
            text.contains("parked: r/api:v2\n      held because frozen until"),
            "{text}"
        );
        assert!(
            text.contains(
                "rollout: healthy since 1970-01-01T00:00:02.000Z, 0 retries, revision abc"
            ),
            "{text}"
        );
        assert!(text.contains("quarantined: r/api:v0"), "{text}");
        assert!(
            text.contains("timer freeze_until at 1970-01-01T00:01:00.000Z: unfreeze"),
            "{text}"
        );
    }
}
