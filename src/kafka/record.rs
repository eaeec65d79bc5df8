//! `sluice record`: writes a slice of real topics in the replay format, so a
//! topology change can be tested against production traffic.
//!
//! Every partition of every topic is read from the first offset at or after
//! `--from` up to the end it had when recording began (so a recording always
//! ends, also on a topic written with transactions), with `read_committed`,
//! keeping the records stamped in [`--from`, `--to`], written in timestamp
//! order (then topic, partition, offset). Memory stays bounded whatever the
//! slice's size: the partitions are merged as they are read, holding one
//! record per partition, and since timestamps can go back within a partition,
//! that stream is sorted in runs of [`RUN_RECORDS`], spilled to temporary
//! files and merged at the end when there is more than one. Values of protobuf sources (from `--topology`) are
//! decoded to JSON; other values are written as JSON when they are JSON, and
//! as a JSON string otherwise, so that replay sends them to the dead letters
//! exactly as `sluice run` would.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::value::RawValue;

use crate::record::Kind;
use crate::replay::OutputLine;
use crate::topology::{Format, Topology};

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub topics: Vec<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// How long to wait for the cluster before giving up on a call.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("kafka: {what}: {cause}")]
    Kafka {
        what: String,
        cause: rdkafka::error::KafkaError,
    },
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    #[error("{topic}[{partition}] cannot be read on a queue of its own")]
    NoQueue { topic: String, partition: i32 },
    #[error("{topic}[{partition}]: no progress at offset {position} for the timeout, before its end {end}")]
    Stalled {
        topic: String,
        partition: i32,
        position: i64,
        end: i64,
    },
    #[error("cannot write the recording: {0}")]
    Write(#[from] std::io::Error),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Recorded {
    ts: u64,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Box<RawValue>,
}

impl Recorded {
    /// The order of the recording.
    fn order(&self) -> (u64, &str, i32, i64) {
        (self.ts, &self.topic, self.partition, self.offset)
    }
}

/// A partition's next record in the merge.
struct Head {
    record: Recorded,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.record.order().cmp(&other.record.order())
    }
}

/// Merges `sources` partitions (`next(i)` gives partition i's next record,
/// in offset order) into `emit`, earliest first, holding one record per
/// partition. Returns the number of records emitted.
fn merge_by_time(
    sources: usize,
    mut next: impl FnMut(usize) -> Result<Option<Recorded>, RecordError>,
    mut emit: impl FnMut(Recorded) -> Result<(), RecordError>,
) -> Result<u64, RecordError> {
    let mut heads = BinaryHeap::with_capacity(sources);
    for source in 0..sources {
        if let Some(record) = next(source)? {
            heads.push(Reverse(Head { record, source }));
        }
    }
    let mut emitted = 0;
    while let Some(Reverse(head)) = heads.pop() {
        let source = head.source;
        emit(head.record)?;
        emitted += 1;
        if let Some(record) = next(source)? {
            heads.push(Reverse(Head { record, source }));
        }
    }
    Ok(emitted)
}

/// Protobuf-encoded topics and the kind of record they carry.
fn protobuf_topics(topology: Option<&Topology>) -> HashMap<String, Kind> {
    topology
        .map(|t| {
            t.sources
                .iter()
                .filter(|s| s.format == Format::Protobuf)
                .map(|s| (s.topic.clone(), s.kind))
                .collect()
        })
        .unwrap_or_default()
}

fn decode_value(bytes: Option<&[u8]>, protobuf: Option<Kind>) -> Box<RawValue> {
    let as_string =
        |text: &str| serde_json::value::to_raw_value(text).expect("a string serializes");
    let Some(bytes) = bytes else {
        return RawValue::from_string("null".into()).expect("null is JSON");
    };
    let decoded = match protobuf {
        Some(Kind::Image) => crate::proto::image_to_json(bytes).ok(),
        Some(Kind::Alert) => crate::proto::alert_to_json(bytes).ok(),
        _ => None,
    };
    if let Some(json) = decoded {
        return RawValue::from_string(json).expect("decoded protobuf is JSON");
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<Box<RawValue>>(text).unwrap_or_else(|_| as_string(text)),
        // Bytes that are not text are kept as lossy text: replay will refuse them as it should.
        Err(_) => as_string(&String::from_utf8_lossy(bytes)),
    }
}

/// How long one poll of a partition waits before the position is checked.
const POLL_STEP: Duration = Duration::from_millis(100);

/// Records the slice into `out`; returns the number of records written.
pub fn record(
    config: &ClientConfig,
    topology: Option<&Topology>,
    opts: &RecordOptions,
    out: &mut dyn Write,
) -> Result<u64, RecordError> {
    let mut config = config.clone();
    config
        .set("group.id", "sluice-record")
        .set("enable.auto.commit", "false")
        // The end of a partition wakes its poll up at once, to check the position.
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // With a queue per partition this bounds each partition's prefetch.
        .set("queued.max.messages.kbytes", "4096");
    let consumer: Arc<BaseConsumer> = Arc::new(
        config
            .create()
            .map_err(kafka_error("creating the consumer"))?,
    );
    let slices = plan(&consumer, opts)?;
    let mut readers = open_readers(&consumer, slices)?;
    let protobuf = protobuf_topics(topology);
    let mut sorter = Sorter::default();
    merge_by_time(
        readers.len(),
        |i| readers[i].next_in_range(opts, &protobuf),
        |r| sorter.push(r),
    )?;
    let written = sorter.finish(out)?;
    out.flush()?;
    Ok(written)
}

/// Records sorted in memory at a time; beyond that, sorted runs go to disk.
const RUN_RECORDS: usize = 100_000;

/// Sorts the recording with bounded memory: records are gathered up to
/// [`RUN_RECORDS`], then sorted and spilled to a temporary file as a run;
/// at the end the runs are merged (a slice that fits is never spilled).
#[derive(Default)]
struct Sorter {
    buffer: Vec<Recorded>,
    runs: Vec<std::fs::File>,
}

impl Sorter {
    fn push(&mut self, record: Recorded) -> Result<(), RecordError> {
        self.buffer.push(record);
        if self.buffer.len() >= RUN_RECORDS {
            self.spill()?;
        }
        Ok(())
    }

    fn sort_buffer(&mut self) {
        self.buffer.sort_by(|a, b| a.order().cmp(&b.order()));
    }

    /// Writes the sorted buffer as a run: one JSON record per line.
    fn spill(&mut self) -> Result<(), RecordError> {
        self.sort_buffer();
        let mut file = std::io::BufWriter::new(tempfile::tempfile()?);
        for r in self.buffer.drain(..) {
            serde_json::to_writer(&mut file, &r).map_err(std::io::Error::from)?;
            file.write_all(b"\n")?;
        }
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        std::io::Seek::rewind(&mut file)?;
        self.runs.push(file);
        Ok(())
    }

    /// Writes every record in order; returns how many.
    fn finish(mut self, out: &mut dyn Write) -> Result<u64, RecordError> {
        if self.runs.is_empty() {
            self.sort_buffer();
            for r in &self.buffer {
                write_line(out, r)?;
            }
            return Ok(self.buffer.len() as u64);
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        let mut runs: Vec<_> = self
            .runs
            .into_iter()
            .map(|f| std::io::BufRead::lines(std::io::BufReader::new(f)))
            .collect();
        merge_by_time(
            runs.len(),
            |i| match runs[i].next() {
                None => Ok(None),
                Some(line) => Ok(Some(
                    serde_json::from_str(&line?).map_err(std::io::Error::from)?,
                )),
            },
            |r| write_line(out, &r),
        )
    }
}

fn kafka_error(what: &str) -> impl Fn(KafkaError) -> RecordError + '_ {
    move |cause| RecordError::Kafka {
        what: what.to_owned(),
        cause,
    }
}

fn write_line(out: &mut dyn Write, r: &Recorded) -> Result<(), RecordError> {
    serde_json::to_writer(
        &mut *out,
        &OutputLine {
            topic: &r.topic,
            ts: r.ts,
            key: r.key.as_deref(),
            value: &r.value,
        },
    )
    .map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// One partition to read: from `start` up to the end it had when recording began.
struct Slice {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
}

/// The partitions that hold something at or after `--from`, with their ends.
fn plan(consumer: &BaseConsumer, opts: &RecordOptions) -> Result<Vec<Slice>, RecordError> {
    let wanted: Vec<&str> = opts.topics.iter().map(String::as_str).collect();
    let (metadata, missing) = crate::kafka::listed::metadata_listing(
        consumer.client(),
        None,
        &wanted,
        opts.timeout,
        |_| true,
    )
    .map_err(kafka_error("fetching metadata"))?;
    if let Some(topic) = missing.into_iter().next() {
        return Err(RecordError::NoSuchTopic(topic));
    }
    let mut starts = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in &opts.topics {
        let meta = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .ok_or_else(|| RecordError::NoSuchTopic(topic.clone()))?;
        for p in meta.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), opts.timeout)
                .map_err(kafka_error("fetching watermarks"))?;
            ends.insert((topic.clone(), p.id()), high);
            starts
                .add_partition_offset(topic, p.id(), Offset::Offset(opts.from_ms as i64))
                .map_err(kafka_error("listing partitions"))?;
        }
    }
    let starts = consumer
        .offsets_for_times(starts, opts.timeout)
        .map_err(kafka_error("finding offsets for --from"))?;
    let mut slices = Vec::new();
    for e in starts.elements() {
        let end = ends[&(e.topic().to_owned(), e.partition())];
        // No offset at or after --from (Offset::End) means nothing to read there.
        if let Offset::Offset(start) = e.offset() {
            if start < end {
                slices.push(Slice {
                    topic: e.topic().to_owned(),
                    partition: e.partition(),
                    start,
                    end,
                });
            }
        }
    }
    Ok(slices)
}

/// Assigns the slices and gives each partition its own queue.
fn open_readers(
    consumer: &Arc<BaseConsumer>,
    slices: Vec<Slice>,
) -> Result<Vec<PartitionReader>, RecordError> {
    let mut assignment = TopicPartitionList::new();
    for s in &slices {
        assignment
            .add_partition_offset(&s.topic, s.partition, Offset::Offset(s.start))
            .map_err(kafka_error("assigning"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_error("assigning partitions"))?;
    // After `assign` (which deactivates older queues) and before any poll.
    slices
        .into_iter()
        .map(|slice| {
            let queue = consumer
                .split_partition_queue(&slice.topic, slice.partition)
                .ok_or_else(|| RecordError::NoQueue {
                    topic: slice.topic.clone(),
                    partition: slice.partition,
                })?;
            Ok(PartitionReader {
                consumer: Arc::clone(consumer),
                queue,
                slice,
                done: false,
            })
        })
        .collect()
}

/// Reads one partition's records in the slice, in offset order, from its own
/// queue, so that the merge can take the next record of whichever partition
/// it needs without holding the others' records.
struct PartitionReader {
    consumer: Arc<BaseConsumer>,
    queue: PartitionQueue<DefaultConsumerContext>,
    slice: Slice,
    done: bool,
}

impl PartitionReader {
    /// The next record with a timestamp in [from, to], or `None` once the
    /// consumer's position has reached the end: with `read_committed`,
    /// transaction markers and aborted records are never delivered, but the
    /// position moves past them, so it is the only reliable end signal.
    fn next_in_range(
        &mut self,
        opts: &RecordOptions,
        protobuf: &HashMap<String, Kind>,
    ) -> Result<Option<Recorded>, RecordError> {
        let mut waiting_since = Instant::now();
        let mut last_position = -1;
        while !self.done {
            match self.queue.poll(POLL_STEP) {
                Some(Ok(m)) => {
                    waiting_since = Instant::now();
                    if m.offset() >= self.slice.end {
                        self.done = true;
                        break;
                    }
                    self.done = m.offset() + 1 >= self.slice.end;
                    let ts = m.timestamp().to_millis().unwrap_or(0).max(0) as u64;
                    if ts >= opts.from_ms && ts <= opts.to_ms {
                        return Ok(Some(Recorded {
                            ts,
                            topic: self.slice.topic.clone(),
                            partition: self.slice.partition,
                            offset: m.offset(),
                            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                            value: decode_value(
                                m.payload(),
                                protobuf.get(&self.slice.topic).copied(),
                            ),
                        }));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    self.serve_events()?;
                    let position = self.position()?;
                    if position >= self.slice.end {
                        self.done = true;
                    } else if position != last_position {
                        last_position = position;
                        waiting_since = Instant::now();
                    } else if waiting_since.elapsed() >= opts.timeout {
                        return Err(RecordError::Stalled {
                            topic: self.slice.topic.clone(),
                            partition: self.slice.partition,
                            position,
                            end: self.slice.end,
                        });
                    }
                }
                Some(Err(cause)) => {
                    return Err(RecordError::Kafka {
                        what: format!("reading {}[{}]", self.slice.topic, self.slice.partition),
                        cause,
                    })
                }
            }
        }
        Ok(None)
    }

    /// Serves the main queue, where errors and other events arrive once
    /// every partition has its own queue.
    fn serve_events(&self) -> Result<(), RecordError> {
        match self.consumer.poll(Duration::ZERO) {
            Some(Err(cause)) => Err(RecordError::Kafka {
                what: "reading".into(),
                cause,
            }),
            _ => Ok(()),
        }
    }

    /// The offset of the next record the consumer would hand over.
    fn position(&self) -> Result<i64, RecordError> {
        let positions = self
            .consumer
            .position()
            .map_err(|cause| RecordError::Kafka {
                what: "reading the consumer position".into(),
                cause,
            })?;
        let offset = positions
            .find_partition(&self.slice.topic, self.slice.partition)
            .map(|e| e.offset());
        Ok(match offset {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
    }
}

#[cfg(test)]
mod tests;
