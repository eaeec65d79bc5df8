//! What the run loop reports besides its output: readiness, the metrics'
//! state gauges, the state query's answers and this instance's entry in
//! the directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::consumer::Inner;
use super::directory::{Directory, Publisher};
use super::RunError;

/// How often the state gauges of the metrics are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// With `state_query`: starts the instance's entry in the directory (one
/// for all its threads) and tells the HTTP side how to route.
pub(super) fn start_directory(
    base: &rdkafka::ClientConfig,
    app_id: &str,
    instance: &str,
    layout: &super::topics::Layout,
    opts: &super::RunOptions,
) -> Result<Option<Arc<Publisher>>, RunError> {
    let Some(q) = &opts.state_query else {
        return Ok(None);
    };
    let directory = Directory::default();
    let publisher = Publisher::start(
        base,
        app_id,
        instance,
        q.advertise.clone(),
        directory.clone(),
    )?;
    q.service.route(layout.tasks, instance, directory);
    Ok(Some(Arc::new(publisher)))
}

impl Inner {
    /// With `state_query`: attaches this thread to the state queries.
    pub(super) fn start_state_query(&mut self) {
        if let Some(q) = &self.shared.opts.state_query {
            self.queries = Some(q.service.attach());
        }
    }

    /// Answers the state queries waiting (with `state_query`).
    pub(super) fn answer_queries(&mut self) {
        if let Some(queries) = self.queries.take() {
            self.serve_queries(&queries.0);
            self.queries = Some(queries);
        }
    }

    /// Tells the directory which partitions this thread now owns.
    pub(super) fn publish_partitions(&self) {
        if let Some(d) = &self.shared.directory {
            d.publish(self.shared.thread, self.tasks.keys().copied().collect());
        }
    }

    /// Readiness for `/readyz` and the `sluice_ready` gauge.
    pub(super) fn set_ready(&self, ready: bool, reason: &str) {
        self.shared
            .board
            .set_ready(self.shared.thread, ready, reason);
    }

    /// Every few seconds after a commit: each task's timers pending, store
    /// entries and operator gauges (they walk the timer queue and read
    /// RocksDB's estimates, so not at every commit).
    pub(super) fn refresh_gauges(&mut self) {
        if Instant::now() < self.gauges_due {
            return;
        }
        self.gauges_due = Instant::now() + GAUGES_EVERY;
        for task in self.tasks.values() {
            match task.engine.operator_gauges() {
                Ok(ops) => self.shared.metrics.task_gauges(task.id, ops),
                Err(e) => {
                    tracing::debug!(task = task.id, error = %e, "cannot read the state gauges")
                }
            }
        }
    }

    /// The loop's counters, every few seconds.
    pub(super) fn report_progress(&self) {
        let buffered: usize = self
            .tasks
            .values()
            .flat_map(|t| t.queues.iter())
            .map(|q| q.buffer.len())
            .sum();
        let waiting: Vec<String> = self
            .tasks
            .values()
            .flat_map(|t| t.queues.iter().map(move |q| (t.id, q)))
            .filter(|(_, q)| q.buffer.is_empty() && !q.caught_up)
            .map(|(id, q)| format!("{}[{id}]", q.topic))
            .collect();
        tracing::info!(
            processed = self.summary.processed,
            outputs = self.counts.records,
            dead_letters = self.counts.dead_letters,
            commits = self.summary.commits,
            aborts = self.summary.aborts,
            tasks = self.tasks.len(),
            buffered,
            waiting_for = %waiting.join(","),
            "progress"
        );
    }
}
