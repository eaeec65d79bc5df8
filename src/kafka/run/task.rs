//! A task: one input partition number, its engine and RocksDB store, its
//! buffered input, and what it writes to its changelogs at a commit.
//! Restoring the store from the changelogs is in `restore.rs`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};

use super::positions;
pub use super::restore::RestoreStats;
use super::restore::{self, RestoreEnv};
use super::topics::{Changelog, Layout, Plan};
use super::RunError;
use crate::engine::stats::NodeStats;
use crate::engine::{self, Engine, EngineOptions};
use crate::state::SharedMemory;
use crate::topology::Topology;

/// Bytes a buffered record is counted for besides its key and value: the
/// message's own fields and the queue slot.
const RECORD_OVERHEAD: usize = 128;

/// What a buffered record costs the process's buffer budget.
pub fn buffered_size(m: &OwnedMessage) -> usize {
    m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len) + RECORD_OVERHEAD
}

/// One input partition's records waiting to be processed.
pub struct InputQueue {
    pub topic: String,
    /// The topic the engine's sources read: the source topic of a repartition topic.
    pub engine_topic: String,
    pub buffer: VecDeque<OwnedMessage>,
    /// What `buffer` holds, counted by [`buffered_size`].
    pub buffered_bytes: usize,
    /// The fetcher reached the end of the partition and nothing came since.
    pub caught_up: bool,
    pub paused: bool,
    /// Next offset to commit (after the last processed record), if any was processed.
    pub consumed: Option<i64>,
}

impl InputQueue {
    fn new(topic: &str, engine_topic: &str) -> Self {
        InputQueue {
            topic: topic.to_owned(),
            engine_topic: engine_topic.to_owned(),
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            caught_up: false,
            paused: false,
            consumed: None,
        }
    }

    /// Adds a fetched record, keeping offset order (a few records can reach
    /// the main queue before a partition's own queue is split off).
    pub fn push(&mut self, m: OwnedMessage) {
        if self.caught_up && self.buffer.is_empty() {
            // Under event time the other inputs may have gone past its
            // timestamp meanwhile: it is processed as a late record.
            tracing::debug!(topic = %self.topic, partition = m.partition(), offset = m.offset(), ts = ?m.timestamp().to_millis(), "a record after the end of its partition");
        }
        self.caught_up = false;
        if self.consumed.is_some_and(|next| m.offset() < next) {
            return; // already processed: a re-fetch after a seek
        }
        let size = buffered_size(&m);
        match self.buffer.back() {
            Some(last) if last.offset() >= m.offset() => {
                let at = self.buffer.partition_point(|b| b.offset() < m.offset());
                if self.buffer.get(at).is_none_or(|b| b.offset() != m.offset()) {
                    self.buffer.insert(at, m);
                    self.buffered_bytes += size;
                }
            }
            _ => {
                self.buffer.push_back(m);
                self.buffered_bytes += size;
            }
        }
    }

    /// Takes the oldest buffered record.
    pub fn pop(&mut self) -> Option<OwnedMessage> {
        let m = self.buffer.pop_front()?;
        self.buffered_bytes = self.buffered_bytes.saturating_sub(buffered_size(&m));
        Some(m)
    }

    /// Forgets the buffered records (the consumer fetches them again).
    fn clear(&mut self) {
        self.buffer.clear();
        self.buffered_bytes = 0;
        self.caught_up = false;
        self.consumed = None;
    }
}

pub struct Task {
    pub id: i32,
    pub engine: Engine,
    pub queues: Vec<InputQueue>,
    /// Something changed since the last commit.
    pub dirty: bool,
    fired_seen: u64,
    /// Records processed since the last commit (for the metrics).
    pub processed: u64,
    /// Since when the task waits for an empty, caught-up input while
    /// another has records (event time with `max_task_idle`).
    idle_since: Option<std::time::Instant>,
    /// The current wait ran out and the task goes on without the empty
    /// inputs (counted once per wait).
    enforcing: bool,
    /// Waits that ran out since [`Task::take_enforced`] last read them.
    enforced: u64,
    /// The engine's per-node counters as of the last commit: the metrics
    /// publish what each commit added.
    counted: Vec<NodeStats>,
    pub prepared: Option<engine::Changes>,
    /// Changelog keys whose last records were skipped at restore because
    /// they follow from input that was never committed (at-least-once): the
    /// next commit writes their restored values again, so that no later
    /// restore from the beginning can take the skipped records for current.
    pub superseded: Vec<(String, Vec<u8>)>,
}

/// What a task needs to open.
pub struct TaskSetup<'a> {
    pub topo: &'a Arc<Topology>,
    pub plan: &'a Plan,
    pub layout: &'a Layout,
    pub state_root: &'a Path,
    pub engine_options: &'a EngineOptions,
    pub memory: &'a SharedMemory,
    pub stop: &'a std::sync::atomic::AtomicBool,
}

impl TaskSetup<'_> {
    pub fn dir(&self, id: i32) -> PathBuf {
        self.state_root.join(format!("task-{id}"))
    }
}

/// One changelog record to produce for a commit.
pub struct ChangelogRecord<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

impl Task {
    /// Opens task `id`: its store, brought up to date from the changelog.
    pub fn open_with(
        id: i32,
        setup: &TaskSetup<'_>,
        env: &mut RestoreEnv<'_>,
    ) -> Result<(Task, RestoreStats), RunError> {
        let restored = restore::restore_store(&setup.dir(id), id, setup, env)?;
        let engine = Engine::open(
            Arc::clone(setup.topo),
            restored.backend,
            setup.engine_options,
        )?;
        let queues = setup
            .plan
            .inputs
            .iter()
            .filter(|t| setup.layout.has_partition(t, id))
            .map(|t| InputQueue::new(t, setup.plan.engine_topic(t)))
            .collect();
        let fired_seen = engine.timers_fired();
        let task = Task {
            id,
            engine,
            queues,
            dirty: !restored.superseded.is_empty(),
            fired_seen,
            processed: 0,
            idle_since: None,
            enforcing: false,
            enforced: 0,
            counted: Vec::new(),
            prepared: None,
            superseded: restored.superseded,
        };
        Ok((task, restored.stats))
    }

    /// Drops everything since the last commit: the engine reopens on its
    /// store, and buffered input is forgotten (the consumer re-fetches it).
    pub fn reset(&mut self, topo: &Arc<Topology>, opts: &EngineOptions) -> Result<(), RunError> {
        let placeholder = Engine::open(
            Arc::clone(topo),
            Box::new(crate::state::MemoryBackend::default()),
            opts,
        )?;
        let engine = std::mem::replace(&mut self.engine, placeholder);
        self.engine = Engine::open(Arc::clone(topo), engine.discard(), opts)?;
        self.fired_seen = self.engine.timers_fired();
        self.dirty = !self.superseded.is_empty();
        self.prepared = None;
        self.end_wait();
        // The reopened engine counts from zero; what was counted stays published.
        self.processed = 0;
        self.counted.clear();
        for q in &mut self.queues {
            q.clear();
        }
        Ok(())
    }

    /// What this task did since the last commit, which just committed:
    /// records processed and each node's counters.
    pub fn take_committed_counts(&mut self) -> (u64, Vec<NodeStats>) {
        let now = self.engine.stats();
        let delta = now
            .iter()
            .enumerate()
            .map(|(i, node)| match self.counted.get(i) {
                Some(before) => node.since(before),
                None => node.clone(),
            })
            .collect();
        self.counted = now.to_vec();
        (std::mem::take(&mut self.processed), delta)
    }

    pub fn queue_mut(&mut self, topic: &str) -> Option<&mut InputQueue> {
        self.queues.iter_mut().find(|q| q.topic == topic)
    }

    /// Bytes buffered in this task's input queues.
    pub fn buffered_bytes(&self) -> usize {
        self.queues.iter().map(|q| q.buffered_bytes).sum()
    }

    /// Notes timers fired by a clock advance as a change to commit.
    pub fn note_timers(&mut self) {
        let fired = self.engine.timers_fired();
        if fired != self.fired_seen {
            self.fired_seen = fired;
            self.dirty = true;
        }
    }

    /// The queue whose head goes next. Under event time that is the oldest
    /// head, and only once every input partition has a record buffered or is
    /// known to be caught up, as Kafka Streams orders a task's partitions:
    /// that makes the order, and so the output, independent of fetch timing.
    /// An input that is caught up but empty is waited for up to `max_idle`
    /// (from when the task began to wait for it), as Kafka Streams'
    /// `max.task.idle.ms`: records produced to several topics at once do
    /// not reach the consumer at once. Under wall-clock time any buffered
    /// record may go.
    ///
    /// A wait lasts while some input holds records: once none does, the
    /// next one begins afresh. A wait that outlived its cause (all buffers
    /// drained, a broker outage, a rewind) would otherwise be found expired
    /// when the next records come, and a task would take one input's new
    /// records without waiting at all for the other's.
    pub fn next_queue(&mut self, event_time: bool, max_idle: std::time::Duration) -> Option<usize> {
        let mut best: Option<(i64, usize)> = None;
        let mut caught_up_empty = false;
        let mut fetching = false;
        for (i, q) in self.queues.iter().enumerate() {
            match q.buffer.front() {
                Some(m) => {
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    if best.is_none_or(|(b, _)| ts < b) {
                        best = Some((ts, i));
                    }
                }
                None if event_time && !q.caught_up => fetching = true,
                None => caught_up_empty = true,
            }
        }
        if best.is_none() {
            self.end_wait();
            return None;
        }
        if fetching {
            return None;
        }
        let best = best.map(|(_, i)| i);
        if !(event_time && caught_up_empty && best.is_some()) || max_idle.is_zero() {
            self.end_wait();
            return best;
        }
        let since = *self.idle_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < max_idle {
            return None;
        }
        if !self.enforcing {
            self.enforce(max_idle);
        }
        best
    }

    fn end_wait(&mut self) {
        self.idle_since = None;
        self.enforcing = false;
    }

    /// The wait for the empty inputs ran out: what they receive from now on
    /// until the task holds no records is late (processed at the current
    /// stream time), where replay of the same records may differ. Counted
    /// and logged, as Kafka Streams counts its enforced processing.
    fn enforce(&mut self, max_idle: std::time::Duration) {
        self.enforcing = true;
        self.enforced += 1;
        let waited: Vec<&str> = self
            .queues
            .iter()
            .filter(|q| q.buffer.is_empty())
            .map(|q| q.topic.as_str())
            .collect();
        tracing::info!(
            task = self.id,
            waited = ?waited,
            max_task_idle_ms = max_idle.as_millis() as u64,
            "inputs stayed empty for max_task_idle; going on without them (their next records are late)"
        );
    }

    /// Waits that ran out (see [`Task::next_queue`]) since the last call.
    pub fn take_enforced(&mut self) -> u64 {
        std::mem::take(&mut self.enforced)
    }

    /// Collects this commit's state changes and calls `send` with each
    /// changelog record: the changes, then the values of keys a restore
    /// skipped records for (see [`Task::superseded`]). The changes are kept
    /// for [`Task::applied`].
    pub fn produce_changelog(
        &mut self,
        changelogs: &[Changelog],
        send: &mut dyn FnMut(ChangelogRecord<'_>) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let changes = self.engine.prepare_commit()?;
        let mut written: std::collections::HashSet<(&str, &[u8])> = Default::default();
        for (store, key, value) in self.engine.changelog(&changes) {
            let Some(topic) = changelog_topic(changelogs, store) else {
                continue;
            };
            if !self.superseded.is_empty() {
                written.insert((store, key));
            }
            send(ChangelogRecord { topic, key, value })?;
        }
        for (store, key) in &self.superseded {
            let Some(topic) = changelog_topic(changelogs, store) else {
                continue;
            };
            if written.contains(&(store.as_str(), key.as_slice())) {
                continue; // the commit writes a newer value
            }
            let value = self.engine.committed_entry(store, key)?;
            send(ChangelogRecord {
                topic,
                key,
                value: value.as_deref(),
            })?;
        }
        drop(written);
        self.prepared = Some(changes);
        Ok(())
    }

    /// The commit is done: writes its changes to the local store, with the
    /// changelog position (next offset) each changelog partition now holds.
    pub fn applied(
        &mut self,
        ends: &HashMap<(String, i32), i64>,
        transactional: bool,
    ) -> Result<(), RunError> {
        let Some(mut changes) = self.prepared.take() else {
            return Ok(());
        };
        for ((topic, partition), next) in ends {
            if *partition == self.id {
                let (key, value) = positions::position_entry(topic, *next, transactional);
                self.engine.note_in_commit(&mut changes, &key, value);
            }
        }
        let (key, value) = positions::checkpoint_entry();
        self.engine.note_in_commit(&mut changes, &key, value);
        self.engine.apply_commit(changes)?;
        self.superseded.clear();
        self.dirty = false;
        Ok(())
    }

    /// The input positions this task's state follows from, as the value of
    /// the changelog records' `sluice.inputs` header (at-least-once).
    pub fn input_positions(&self) -> String {
        positions::encode_inputs(
            self.queues
                .iter()
                .filter_map(|q| q.consumed.map(|next| (q.topic.as_str(), next))),
        )
    }
}

/// The changelog topic of the store named `store` (stateless ones have none).
fn changelog_topic<'a>(changelogs: &'a [Changelog], store: &str) -> Option<&'a str> {
    changelogs
        .iter()
        .find(|c| c.store == store)
        .map(|c| c.topic.as_str())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    use super::*;
    use crate::state::MemoryBackend;

    const TOPOLOGY: &str =
        "[app]\nid = \"t\"\n[[sources]]\nname = \"images\"\ntopic = \"images\"\nkind = \"image\"\n\
             [[sources]]\nname = \"alerts\"\ntopic = \"alerts\"\nkind = \"alert\"\n\
             [[sinks]]\nname = \"out\"\ninput = \"images\"\ntopic = \"out\"\n";

    fn topology() -> Arc<Topology> {
        Arc::new(Topology::parse("t.toml", TOPOLOGY).unwrap())
    }

    fn task() -> Task {
        let engine = Engine::open(
            topology(),
            Box::new(MemoryBackend::default()),
            &EngineOptions::default(),
        )
        .unwrap();
        Task {
            id: 0,
            engine,
            queues: vec![
                InputQueue::new("images", "images"),
                InputQueue::new("alerts", "alerts"),
            ],
            dirty: false,
            fired_seen: 0,
            processed: 0,
            idle_since: None,
            enforcing: false,
            enforced: 0,
            counted: Vec::new(),
            prepared: None,
            superseded: Vec::new(),
        }
    }

    fn record(topic: &str, offset: i64, ts: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.into(),
            Timestamp::CreateTime(ts),
            0,
            offset,
            None,
        )
    }

    #[test]
    fn event_time_waits_for_an_input_not_caught_up_and_takes_the_oldest_head() {
        let mut t = task();
        t.queues[0].push(record("images", 0, 20));
        assert_eq!(
            t.next_queue(true, Duration::ZERO),
            None,
            "alerts may still hold older records"
        );
        assert_eq!(
            t.next_queue(false, Duration::ZERO),
            Some(0),
            "wall clock takes what is there"
        );
        t.queues[1].push(record("alerts", 0, 10));
        assert_eq!(
            t.next_queue(true, Duration::ZERO),
            Some(1),
            "the oldest head"
        );
    }

    #[test]
    fn a_caught_up_empty_input_is_waited_for_up_to_max_task_idle() {
        let mut t = task();
        t.queues[0].push(record("images", 0, 20));
        t.queues[1].caught_up = true;
        assert_eq!(
            t.next_queue(true, Duration::ZERO),
            Some(0),
            "no idle time: go on at once"
        );
        let idle = Duration::from_millis(200);
        assert_eq!(
            t.next_queue(true, idle),
            None,
            "waits for the caught-up alerts"
        );
        // A record arriving meanwhile is taken in timestamp order.
        t.queues[1].push(record("alerts", 0, 10));
        assert_eq!(t.next_queue(true, idle), Some(1));
        t.queues[1].pop();
        t.queues[1].caught_up = true;
        assert_eq!(t.next_queue(true, idle), None, "a new wait begins");
        std::thread::sleep(idle);
        assert_eq!(
            t.next_queue(true, idle),
            Some(0),
            "then the task goes on without it"
        );
    }

    /// A task that held an image while the caught-up alerts were empty
    /// for longer than `idle`: its wait for them has expired.
    fn task_past_its_wait(idle: Duration) -> Task {
        let mut t = task();
        t.queues[0].push(record("images", 0, 20));
        t.queues[1].caught_up = true;
        assert_eq!(t.next_queue(true, idle), None, "the wait begins");
        std::thread::sleep(idle);
        t
    }

    /// CI, 2026-12-06: a wait begun before a broker outage, with the images
    /// drained meanwhile but never seen to their end, was found expired when
    /// the next images came; they went before the alerts produced with them.
    #[test]
    fn a_wait_ends_once_no_input_holds_records() {
        let idle = Duration::from_millis(200);
        let mut t = task_past_its_wait(idle);
        assert_eq!(t.next_queue(true, idle), Some(0), "the wait expired");
        t.queues[0].pop();
        // The images' end is not known yet (the broker went away).
        assert_eq!(t.next_queue(true, idle), None);
        t.queues[0].push(record("images", 1, 30));
        assert_eq!(
            t.next_queue(true, idle),
            None,
            "new images wait afresh for the alerts"
        );
    }

    #[test]
    fn a_wait_that_runs_out_is_counted_once() {
        let idle = Duration::from_millis(200);
        let mut t = task_past_its_wait(idle);
        t.queues[0].push(record("images", 1, 30));
        assert_eq!(t.next_queue(true, idle), Some(0), "the wait ran out");
        t.queues[0].pop();
        assert_eq!(t.next_queue(true, idle), Some(0), "the same wait");
        assert_eq!(t.take_enforced(), 1);
        assert_eq!(t.take_enforced(), 0, "read once");
        t.queues[0].pop();
        assert_eq!(
            t.next_queue(true, idle),
            None,
            "nothing held: the wait ends"
        );
        t.queues[0].push(record("images", 2, 40));
        assert_eq!(t.next_queue(true, idle), None, "a new wait");
        std::thread::sleep(idle);
        assert_eq!(t.next_queue(true, idle), Some(0));
        assert_eq!(t.take_enforced(), 1, "the second wait ran out too");
    }

    #[test]
    fn a_reset_ends_the_wait() {
        let idle = Duration::from_millis(200);
        let mut t = task_past_its_wait(idle);
        t.reset(&topology(), &EngineOptions::default()).unwrap();
        // Refetched after the rewind: the images first, the alerts caught up.
        t.queues[0].push(record("images", 0, 20));
        t.queues[1].caught_up = true;
        assert_eq!(
            t.next_queue(true, idle),
            None,
            "the wait from before the reset is over"
        );
    }
}
