//! The replay driver: runs a topology over a recorded file of JSON Lines
//! under a virtual clock, like Kafka Streams' TopologyTestDriver, from the
//! command line and with no broker.

mod json;
mod line;

use std::borrow::Cow;
use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::engine::{
    DeadLetter, Engine, EngineError, InputOrigin, Output, OutputError, SourceInput,
};
use crate::record::{FlatObject, Record};
use crate::topology::Sink;

/// Longest input line accepted; a longer one is an input-file error rather
/// than a way to exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Largest accepted timestamp: 2^53 - 1 ms, the largest integer every JSON
/// reader keeps exact (and far inside Kafka's i64 timestamps). Beyond it,
/// deadlines would saturate and timers stop meaning anything.
pub const MAX_TS: u64 = (1 << 53) - 1;

/// One line of a replay file: `{"topic", "ts", "key", "value"}`.
#[derive(Debug)]
pub struct InputLine<'a> {
    pub topic: Cow<'a, str>,
    pub ts: u64,
    pub key: Option<Cow<'a, str>>,
    /// The value's JSON text, checked to be JSON; `None` when absent or `null`.
    pub value: Option<&'a str>,
    /// The value's fields when it is a flat object, as the check found them.
    pub fields: Option<FlatObject<'a>>,
}

/// [`InputLine`] as serde reads a line of any shape.
#[derive(Deserialize)]
struct SerdeLine<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    ts: u64,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
}

/// One line of the replay format, as replay, `sluice record`, the flood
/// generator and the committer's dead-letter file write it.
#[derive(Debug, Serialize)]
pub struct OutputLine<'a, V: Serialize> {
    pub topic: &'a str,
    pub ts: u64,
    pub key: Option<&'a str>,
    pub value: V,
}

/// The value of a dead letter, in replay output and on the live dead-letter topic.
#[derive(Debug, Serialize)]
pub struct DeadLetterValue<'a> {
    pub error: &'a str,
    pub node: &'a str,
    pub topic: Option<&'a str>,
    pub value: &'a RawValue,
    /// Set when `value` keeps only a prefix of an oversized original.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_from_bytes: Option<usize>,
}

/// Writes sink records and dead letters as JSON Lines.
///
/// Lines are serialized into a buffer of its own and handed to the writer
/// about 64 KiB at a time: a serializer writes a line in dozens of small
/// pieces, and each would otherwise be a call through the writer (and
/// through every writer it wraps).
pub struct JsonLinesOutput<W: Write> {
    out: W,
    pending: Vec<u8>,
    dead_letter_topic: String,
    pub records: u64,
    pub dead_letters: u64,
}

/// Bytes of lines collected before they go to the writer.
const OUTPUT_CHUNK: usize = 64 << 10;

impl<W: Write> JsonLinesOutput<W> {
    pub fn new(out: W, dead_letter_topic: String) -> Self {
        JsonLinesOutput {
            out,
            pending: Vec::with_capacity(OUTPUT_CHUNK + 4096),
            dead_letter_topic,
            records: 0,
            dead_letters: 0,
        }
    }

    /// Writes every line so far and flushes the writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }

    /// The underlying writer, after the lines not yet handed to it (call
    /// [`JsonLinesOutput::flush`] first to see a write error).
    pub fn into_inner(mut self) -> W {
        let _ = self.write_pending();
        self.out
    }

    fn write_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.out.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn write_line<V: Serialize>(&mut self, line: &OutputLine<'_, V>) -> Result<(), OutputError> {
        let start = self.pending.len();
        if json::write(&mut self.pending, line).is_err() {
            // Something the fast writer leaves to serde_json: the line is
            // written again, whole, by serde_json.
            self.pending.truncate(start);
            if let Err(e) = serde_json::to_writer(&mut self.pending, line) {
                self.pending.truncate(start);
                return Err(e.into());
            }
        }
        self.pending.push(b'\n');
        if self.pending.len() >= OUTPUT_CHUNK {
            self.write_pending()?;
        }
        Ok(())
    }
}

impl<W: Write> Output for JsonLinesOutput<W> {
    fn record(&mut self, sink: &Sink, record: &Record) -> Result<(), OutputError> {
        self.records += 1;
        let line = OutputLine {
            topic: &sink.topic,
            ts: record.ts,
            key: record.key.as_deref(),
            value: record.payload.json(),
        };
        self.write_line(&line)
    }

    fn dead_letter(&mut self, letter: DeadLetter<'_>) -> Result<(), OutputError> {
        self.dead_letters += 1;
        let topic = std::mem::take(&mut self.dead_letter_topic);
        let value = DeadLetterValue {
            error: letter.error,
            node: letter.node,
            topic: letter.source_topic,
            value: letter.value,
            truncated_from_bytes: None,
        };
        let result = self.write_line(&OutputLine {
            topic: &topic,
            ts: letter.ts,
            key: letter.key,
            value,
        });
        self.dead_letter_topic = topic;
        result
    }
}

/// Settings of a replay run.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Fire every remaining timer at the end of the input.
    pub drain: bool,
    /// Commit state every this many input lines.
    pub commit_every: u64,
    /// Lines before this input's first line: records name their line as
    /// `line_offset + n` in intents' `caused_by` (an input continuing a split
    /// file keeps the whole file's numbering).
    pub line_offset: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            drain: false,
            // Hot keys are written once per commit, so a longer interval writes
            // less; but the changes of a commit's lines stay in the tables'
            // caches until it, and so does state waiting for a commit's sweep
            // (expired entries). Since scratch state commits in parts (no batch
            // holds a whole commit), 100,000 lines keep a high-survival flood
            // under 256 MiB, also over 10,000,000 events, and run it about 10%
            // faster than 50,000. The state stays consistent at every commit
            // point either way.
            commit_every: 100_000,
            line_offset: 0,
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Input lines read (blank lines excluded).
    pub lines: u64,
    /// Lines skipped because no source reads their topic.
    pub skipped: u64,
    pub records_out: u64,
    pub dead_letters: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input file itself is broken (exit code 2).
    #[error("{file}:{line}: {reason}")]
    Input {
        file: String,
        line: u64,
        reason: String,
    },
    #[error("cannot read {file}: {cause}")]
    Read { file: String, cause: std::io::Error },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Progress reporting hook: called with the bytes consumed so far.
pub trait Progress {
    fn update(&mut self, bytes: u64);
}

impl Progress for () {
    fn update(&mut self, _bytes: u64) {}
}

/// Replays `input` through `engine` into `out`. On an input-file error the
/// state is committed up to the last good line, so it matches what was
/// written, and the error names the file and line.
pub fn replay<R: BufRead, W: Write>(
    engine: &mut Engine,
    mut input: R,
    file: &str,
    out: &mut JsonLinesOutput<W>,
    opts: &ReplayOptions,
    progress: &mut dyn Progress,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let mut summary = ReplaySummary::default();
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    let mut bytes = 0u64;
    loop {
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|cause| ReplayError::Read {
                file: file.to_owned(),
                cause,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bytes += n as u64;
        if buf.len() > MAX_LINE_BYTES {
            engine.commit()?;
            return Err(input_error(
                file,
                line_no,
                format!("line is longer than {} MiB", MAX_LINE_BYTES >> 20),
            ));
        }
        let text = trim_line(&buf);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let line = match parse_line(text) {
            Ok(line) => line,
            Err(reason) => {
                engine.commit()?;
                return Err(input_error(file, line_no, reason));
            }
        };
        if line.ts > MAX_TS {
            engine.commit()?;
            return Err(input_error(
                file,
                line_no,
                format!("`ts` {} is larger than {MAX_TS} (ms)", line.ts),
            ));
        }
        let value = line.value.unwrap_or("null");
        let source = SourceInput {
            topic: &line.topic,
            key: line.key.as_deref(),
            value,
            fields: line.fields.as_ref(),
            decoded: false,
            origin: InputOrigin::Line(opts.line_offset + line_no),
        };
        if !engine.process(source, line.ts, out)? {
            summary.skipped += 1;
        }
        if summary.lines % opts.commit_every == 0 {
            engine.commit()?;
            progress.update(bytes);
        }
    }
    if opts.drain {
        engine.drain(out)?;
    }
    engine.commit()?;
    out.flush().map_err(|e| EngineError::Output(Box::new(e)))?;
    progress.update(bytes);
    summary.records_out = out.records;
    summary.dead_letters = out.dead_letters;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn trim_line(buf: &[u8]) -> &[u8] {
    let mut end = buf.len();
    while end > 0 && (buf[end - 1] == b'\n' || buf[end - 1] == b'\r') {
        end -= 1;
    }
    &buf[..end]
}

fn input_error(file: &str, line: u64, reason: String) -> ReplayError {
    ReplayError::Input {
        file: file.to_owned(),
        line,
        reason,
    }
}

/// Whether a line is a JSON array. A derived Deserialize also takes a struct
/// as an array of its fields (`["t", 1]` as topic `t`, ts 1), but a replay
/// line is an object and only an object: every reader refuses these.
pub fn is_array_line(text: &str) -> bool {
    text.trim_start().starts_with('[')
}

/// Parses one line (without its line ending); the error says what is wrong.
/// Public for the fuzz targets (state-tests/fuzz).
pub fn parse_line(text: &[u8]) -> Result<InputLine<'_>, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8 text: {e}"))?;
    if let Some(line) = line::parse(text) {
        return Ok(line);
    }
    if is_array_line(text) {
        return Err("not a replay record: a JSON array, expected an object".into());
    }
    let line = serde_json::from_str::<SerdeLine<'_>>(text).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("missing field `topic`") || msg.contains("missing field `ts`") {
            format!("{msg}: each line needs {{\"topic\": str, \"ts\": int, \"key\": str|null, \"value\": any}}")
        } else if msg.contains("expected u64") {
            format!("{msg}: `ts` must be a non-negative integer of milliseconds")
        } else {
            format!("not a replay record: {msg}")
        }
    })?;
    Ok(InputLine {
        topic: line.topic,
        ts: line.ts,
        key: line.key,
        value: line.value.map(RawValue::get),
        fields: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use crate::state::MemoryBackend;
    use crate::topology::Topology;
    use std::sync::Arc;

    const TOPO: &str = "[app]\nid = \"r\"\n[[sources]]\nname = \"images\"\ntopic = \"docker-events\"\nkind = \"image\"\n[[sinks]]\nname = \"out\"\ninput = \"images\"\ntopic = \"out\"\n";

    fn run(input: &str) -> (Result<ReplaySummary, ReplayError>, String) {
        let topo = Arc::new(Topology::parse("t.toml", TOPO).unwrap());
        let mut engine = Engine::open(
            topo,
            Box::new(MemoryBackend::new()),
            &EngineOptions::default(),
        )
        .unwrap();
        let mut out = JsonLinesOutput::new(Vec::new(), "r.dead-letter".into());
        let result = replay(
            &mut engine,
            input.as_bytes(),
            "in.jsonl",
            &mut out,
            &ReplayOptions::default(),
            &mut (),
        );
        (result, String::from_utf8(out.into_inner()).unwrap())
    }

    #[test]
    fn writes_records_and_dead_letters_and_counts_skipped_lines() {
        let input = concat!(
            r#"{"topic":"docker-events","ts":5,"key":"a","value":{"service":"a","repository":"a","tag":"v1"}}"#,
            "\n",
            r#"{"topic":"elsewhere","ts":100,"key":null,"value":1}"#,
            "\r\n",
            "\n",
            r#"{"topic":"docker-events","ts":3,"value":"nope"}"#,
            "\n",
        );
        let (result, out) = run(input);
        let summary = result.unwrap();
        assert_eq!(
            (
                summary.lines,
                summary.skipped,
                summary.records_out,
                summary.dead_letters
            ),
            (3, 1, 1, 1)
        );
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"topic":"out","ts":5,"key":"a","value":{"service":"a","repository":"a","tag":"v1"}})
        );
        assert_eq!(lines[1]["topic"], "r.dead-letter");
        assert_eq!(
            lines[1]["ts"], 5,
            "a late record is handled at the clock, which the skipped line did not move"
        );
        assert_eq!(lines[1]["value"]["value"], "nope");
        assert!(
            out.contains(r#""value":"nope"}}"#),
            "the original value is kept byte for byte: {out}"
        );
        assert_eq!(lines[1]["value"]["node"], "images");
    }

    /// A writer that counts the calls made to it.
    #[derive(Default)]
    struct Calls {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_writer_in_large_pieces_and_all_of_them_by_the_flush() {
        let line = r#"{"topic":"docker-events","ts":5,"key":"a","value":{"service":"a","repository":"a","tag":"v1"}}"#;
        let input = format!("{line}\n").repeat(2_000);
        let (_, expected) = run(&input);
        let topo = Arc::new(Topology::parse("t.toml", TOPO).unwrap());
        let mut engine = Engine::open(
            topo,
            Box::new(MemoryBackend::new()),
            &EngineOptions::default(),
        )
        .unwrap();
        let mut out = JsonLinesOutput::new(Calls::default(), "r.dead-letter".into());
        replay(
            &mut engine,
            input.as_bytes(),
            "in.jsonl",
            &mut out,
            &ReplayOptions::default(),
            &mut (),
        )
        .unwrap();
        let calls = out.into_inner();
        assert_eq!(String::from_utf8(calls.bytes).unwrap(), expected);
        assert_eq!(expected.lines().count(), 2_000);
        assert!(
            calls.writes <= expected.len() / 32_768 + 1,
            "{} writes for {} bytes: not one per 32 KiB or more",
            calls.writes,
            expected.len()
        );
    }

    #[test]
    fn input_file_errors_name_file_and_line() {
        let cases = [
            ("not json\n", "in.jsonl:1: not a replay record"),
            ("{\"ts\":1}\n", "in.jsonl:1: missing field `topic`"),
            ("{\"topic\":\"t\"}\n", "in.jsonl:1: missing field `ts`"),
            ("{\"topic\":\"t\",\"ts\":-1}\n", "non-negative"),
            ("{\"topic\":\"t\",\"ts\":1.5}\n", "non-negative"),
            ("\n{\"topic\":\"t\",\"ts\":1}\n[\n", "in.jsonl:3:"),
            (
                " [\"t\", 1]\n",
                "in.jsonl:1: not a replay record: a JSON array",
            ),
            (
                "{\"topic\":\"t\",\"ts\":9007199254740992}\n",
                "larger than 9007199254740991",
            ),
        ];
        for (input, expected) in cases {
            let err = run(input).0.unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{input:?}: `{err}` should contain `{expected}`"
            );
        }
    }

    #[test]
    fn empty_input_is_fine_and_huge_lines_are_refused() {
        let summary = run("").0.unwrap();
        assert_eq!(summary.lines, 0);
        let huge = format!(
            "{{\"topic\":\"docker-events\",\"ts\":1,\"value\":\"{}\"}}\n",
            "x".repeat(MAX_LINE_BYTES)
        );
        let err = run(&huge).0.unwrap_err().to_string();
        assert!(
            err.starts_with("in.jsonl:1: line is longer than 16 MiB"),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_is_an_input_error_not_a_panic() {
        let topo = Arc::new(Topology::parse("t.toml", TOPO).unwrap());
        let mut engine = Engine::open(
            topo,
            Box::new(MemoryBackend::new()),
            &EngineOptions::default(),
        )
        .unwrap();
        let mut out = JsonLinesOutput::new(Vec::new(), "r.dead-letter".into());
        let input: &[u8] = b"{\"topic\":\"\xff\",\"ts\":1}\n";
        let err = replay(
            &mut engine,
            input,
            "in.jsonl",
            &mut out,
            &ReplayOptions::default(),
            &mut (),
        )
        .unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }
}
