//! `sluice control ACTION`: a person's command to the gates (freeze,
//! unfreeze, pin, unpin, approve), appended to a replay file (`--output`)
//! or produced to the control topic (`--brokers` or `--topology`). The
//! record is validated as a control source would, so a mistake names its
//! field here and not in a dead letter later.
//!
//! On Kafka a command about one service is keyed by the service and lands
//! on the partition of its images (murmur2, as every Sluice producer and
//! the Java clients partition): the task that gates the service reads it.
//! A command about a whole environment concerns every task, so it is
//! written to every partition of the topic.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice::duration::now_ms;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use sluice::kafka::parse_time;
use sluice::record::{parse_control, ControlAction, Kind, Payload};
use sluice::replay::OutputLine;
use sluice::topology::Topology;

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
    #[arg(long, conflicts_with_all = ["brokers", "topology"])]
    output: Option<PathBuf>,
    /// Produce the record to Kafka; default with --topology: its [kafka] brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Produce with this topology's [kafka] settings (TLS, SASL, brokers),
    /// to the topic of its control source unless --topic names one.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// The control topic; default for --output: control-events.
    #[arg(long)]
    topic: Option<String>,
    /// --output: the line's time (the replay clock), as --until; default: now.
    #[arg(long)]
    ts: Option<String>,
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
    match (&args.output, args.brokers.is_some() || args.topology.is_some()) {
        (Some(path), false) => {
            let ts = args
                .ts
                .as_deref()
                .map(|t| time(t, now))
                .transpose()?
                .unwrap_or(now);
            let topic = args.topic.as_deref().unwrap_or("control-events");
            append(path, topic, ts, &key, &payload)
        }
        (None, true) => {
            let (config, topic) = kafka_target(&args)?;
            let every_partition = args.service.is_none();
            produce(&config, &topic, &key, &payload.to_json().to_string(), every_partition)
        }
        _ => bail!("say where the record goes: --output FILE, or --brokers LIST --topic T, or --topology T"),
    }
}

/// The client settings and the topic: from `--topology` (its [kafka] table
/// and its control source), with `--brokers` and `--topic` overriding.
fn kafka_target(args: &ControlArgs) -> Result<(ClientConfig, String)> {
    let Some(path) = &args.topology else {
        let brokers = args.brokers.as_deref().context("--brokers or --topology")?;
        let topic = args.topic.clone().context("--brokers needs --topic")?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        return Ok((config, topic));
    };
    let topo = Topology::load(path)?;
    let brokers = args
        .brokers
        .clone()
        .or_else(|| topo.kafka.brokers.clone())
        .context("no brokers: pass --brokers or set brokers in the topology's [kafka] table")?;
    let config = sluice::kafka::client_config(&topo.kafka, &brokers)?;
    let topic = match &args.topic {
        Some(t) => t.clone(),
        None => {
            let controls: Vec<&str> = topo
                .sources
                .iter()
                .filter(|s| s.kind == Kind::Control)
                .map(|s| s.topic.as_str())
                .collect();
            match controls.as_slice() {
                [one] => (*one).to_owned(),
                [] => bail!(
                    "{} has no source of kind control: pass --topic",
                    path.display()
                ),
                _ => bail!(
                    "{} has several control sources: pass --topic",
                    path.display()
                ),
            }
        }
    };
    Ok((config, topic))
}

/// Remembers the first delivery that failed (a flush alone does not say).
#[derive(Default)]
struct Acks {
    failed: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if let Ok(mut failed) = self.failed.lock() {
                failed.get_or_insert_with(|| e.to_string());
            }
        }
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

/// Produces the record (to every partition when `every_partition`) and
/// waits for the broker's acknowledgement of each.
fn produce(
    config: &ClientConfig,
    topic: &str,
    key: &str,
    value: &str,
    every_partition: bool,
) -> Result<ExitCode> {
    let producer: BaseProducer<Acks> = config
        .clone()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        // Where `sluice run` and the Java clients put the key.
        .set("partitioner", "murmur2_random")
        .create_with_context(Acks::default())
        .context("cannot create a Kafka producer")?;
    let partitions: Vec<Option<i32>> = if every_partition {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("cannot read the partitions of {topic}"))?;
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if count == 0 {
            bail!("topic {topic} has no partitions (does it exist?)");
        }
        (0..count as i32).map(Some).collect()
    } else {
        vec![None]
    };
    for partition in &partitions {
        let mut record = BaseRecord::to(topic).key(key).payload(value);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        producer
            .send(record)
            .map_err(|(e, _)| anyhow!("cannot produce to {topic}: {e}"))?;
    }
    producer
        .flush(Duration::from_secs(30))
        .with_context(|| format!("the record to {topic} was not acknowledged"))?;
    if let Some(error) = producer
        .context()
        .failed
        .lock()
        .ok()
        .and_then(|e| e.clone())
    {
        bail!("the record to {topic} was refused: {error}");
    }
    let copies = partitions.len();
    eprintln!(
        "sent to {topic} ({copies} partition{})",
        if copies == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
