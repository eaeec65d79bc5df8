//! What the run loop reports besides its output: readiness, the metrics'
//! state gauges, the state query's answers and this instance's entry in
//! the directory.

use std::time::{Duration, Instant};

use super::consumer::Inner;
use super::directory::{Directory, Publisher};
use super::RunError;

/// How often the state gauges of the metrics are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

impl Inner {
    /// With `state_query`: starts this instance's directory entry and takes
    /// the loop's end of the queries.
    pub(super) fn start_state_query(&mut self) -> Result<(), RunError> {
        let shared = std::sync::Arc::clone(&self.shared);
        let Some(q) = &shared.opts.state_query else {
            return Ok(());
        };
        let directory = Directory::default();
        self.directory = Some(Publisher::start(
            &shared.base,
            &shared.topo.app_id,
            &shared.instance,
            q.advertise.clone(),
            directory.clone(),
        )?);
        q.service
            .route(shared.layout.tasks, &shared.instance, directory);
        self.queries = q.queries.lock().ok().and_then(|mut r| r.take());
        Ok(())
    }

    /// Answers the state queries waiting (with `state_query`).
    pub(super) fn answer_queries(&mut self) {
        if let Some(queries) = self.queries.take() {
            self.serve_queries(&queries.0);
            self.queries = Some(queries);
        }
    }

    /// Tells the directory which partitions this instance now owns.
    pub(super) fn publish_partitions(&self) {
        if let Some(d) = &self.directory {
            d.publish(self.tasks.keys().copied().collect());
        }
    }

    /// Readiness for `/readyz` and the `sluice_ready` gauge.
    pub(super) fn set_ready(&self, ready: bool, reason: &str) {
        let health = &self.shared.opts.observe.health;
        if ready {
            health.set_ready();
        } else {
            health.set_unready(reason);
        }
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
