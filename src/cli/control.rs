//! `sluice control ACTION`: a person's command to the gates (freeze,
//! unfreeze, pin, unpin, approve), appended to a replay file (`--output`)
//! or produced to the control topic (`--brokers`). The record is validated
//! as a control source would, so a mistake names its field here and not in
//! a dead letter later.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use sluice::kafka::parse_time;
use sluice::record::{parse_control, ControlAction, Payload};
use sluice::replay::OutputLine;

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Freeze,
    Unfreeze,
    Pin,
    Unpin,
    Approve,
}

#[derive(Args)]
pub struct ControlArgs {
    #[arg(value_enum)]
    action: ActionArg,
    #[arg(long)]
    environment: String,
    /// Absent for freeze and unfreeze: the whole environment.
    #[arg(long)]
    service: Option<String>,
    /// Pin and approve: the image reference.
    #[arg(long)]
    image: Option<String>,
    /// Freeze: when it lifts by itself. Milliseconds since the epoch, RFC
    /// 3339, or `+DURATION` from now (`+2h`).
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    /// Who asks; default: $USER.
    #[arg(long)]
    by: Option<String>,
    /// Append the record to this replay file.
    #[arg(long, conflicts_with = "brokers")]
    output: Option<PathBuf>,
    /// Produce the record to Kafka (with --topic).
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// The control topic; default for --output: control-events.
    #[arg(long)]
    topic: Option<String>,
    /// --output: the line's time (the replay clock), as --until; default: now.
    #[arg(long)]
    ts: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `+2h` from now, or a point in time as `sluice record` reads one.
fn time(text: &str, now: u64) -> Result<u64> {
    if let Some(ahead) = text.strip_prefix('+') {
        let d = sluice::duration::parse_duration(ahead).map_err(|e| anyhow!(e))?;
        return Ok(now.saturating_add(d.as_ms()));
    }
    parse_time(text, now).map_err(|e| anyhow!(e))
}

pub fn run(args: ControlArgs) -> Result<ExitCode> {
    let now = now_ms();
    let action = match args.action {
        ActionArg::Freeze => ControlAction::Freeze,
        ActionArg::Unfreeze => ControlAction::Unfreeze,
        ActionArg::Pin => ControlAction::Pin,
        ActionArg::Unpin => ControlAction::Unpin,
        ActionArg::Approve => ControlAction::Approve,
    };
    let until = args.until.as_deref().map(|u| time(u, now)).transpose()?;
    let by = args.by.clone().or_else(|| std::env::var("USER").ok());
    let mut value = serde_json::json!({"action": action.as_str(), "environment": args.environment});
    for (key, v) in [
        ("service", args.service.clone()),
        ("image", args.image.clone()),
        ("reason", args.reason.clone()),
        ("by", by),
    ] {
        if let Some(v) = v {
            value[key] = serde_json::Value::String(v);
        }
    }
    if let Some(until) = until {
        value["until"] = until.into();
    }
    let text = value.to_string();
    let record = parse_control(&text, None).map_err(|e| anyhow!("invalid control record: {e}"))?;
    let payload = Payload::Control(Box::new(record));
    let key = args
        .service
        .clone()
        .unwrap_or_else(|| args.environment.clone());
    match (&args.output, &args.brokers) {
        (Some(path), None) => {
            let ts = args
                .ts
                .as_deref()
                .map(|t| time(t, now))
                .transpose()?
                .unwrap_or(now);
            let topic = args.topic.as_deref().unwrap_or("control-events");
            append(path, topic, ts, &key, &payload)
        }
        (None, Some(brokers)) => {
            let topic = args.topic.as_deref().context("--brokers needs --topic")?;
            produce(brokers, topic, &key, &payload.to_json().to_string())
        }
        _ => bail!("say where the record goes: --output FILE, or --brokers LIST --topic T"),
    }
}

/// Appends one replay line.
fn append(path: &PathBuf, topic: &str, ts: u64, key: &str, payload: &Payload) -> Result<ExitCode> {
    let line = OutputLine {
        topic,
        ts,
        key: Some(key),
        value: payload.json(),
    };
    let mut text = serde_json::to_string(&line).context("encoding the line")?;
    text.push('\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Produces one record and waits for the broker's acknowledgement.
fn produce(brokers: &str, topic: &str, key: &str, value: &str) -> Result<ExitCode> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .context("cannot create a Kafka producer")?;
    producer
        .send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| anyhow!("cannot produce to {topic}: {e}"))?;
    producer
        .flush(Duration::from_secs(30))
        .with_context(|| format!("the record to {topic} was not acknowledged"))?;
    Ok(ExitCode::SUCCESS)
}
