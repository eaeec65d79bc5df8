//! The committer loop: collect a batch within the window, plan it per
//! branch, commit, push fast-forward only (fetch and rebuild on rejection),
//! send dead letters and reports, then acknowledge the source.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::batch::{check, plan_branch, BranchPlan, Checked, Delivery, Outcome};
use super::config::CommitConfig;
pub use super::counters::Counters;
use super::dead_letter::{DeadLetterError, DeadLetters};
use super::git::{BranchClone, GitError, PushOutcome, Remote};
use super::index::CommitRef;
use super::message::{commit_message, Contents, Templates};
use super::metrics::CommitMetrics;
use super::push::{Backoff, PushLimiter};
use super::report::{branch_reports, ReportError, Reports};
use super::source::{IntentSource, Next, SourceError};
use super::spans::{BatchSpans, Label};
use crate::record::TraceContext;
use crate::telemetry::trace::{Kind as SpanKind, Tracing};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("work directory {path}: {cause}")]
    WorkDir { path: String, cause: std::io::Error },
    #[error("branch {branch} does not exist in {url}: create it first (the committer never creates branches)")]
    NoBranch { branch: String, url: String },
    #[error("work directory {0} is in use by another committer")]
    Locked(String),
    #[error("branch {branch}: gave up after {attempts} attempts in {seconds:.1}s; nothing was acknowledged; last error: {last}")]
    GaveUp {
        branch: String,
        attempts: u32,
        seconds: f64,
        last: String,
    },
}

/// How a run ends and what it reports.
pub struct RunOptions<'a> {
    /// Set (e.g. by SIGTERM) to finish the current batch and stop.
    pub stop: &'a AtomicBool,
    /// Stop after this long without an intent (Kafka; files end by themselves).
    pub idle_exit: Option<Duration>,
    /// Called after each batch is pushed and acknowledged.
    pub on_batch: &'a mut dyn FnMut(&[Delivery], Instant),
}

/// A committer bound to its work directory and clones.
pub struct Committer<'r> {
    config: &'r CommitConfig,
    clones: Vec<BranchClone<'r>>,
    limiter: PushLimiter,
    pub counters: Counters,
    metrics: Option<CommitMetrics>,
    tracing: Tracing,
    /// The span of the batch being applied, parent of its pushes.
    batch_span: Option<TraceContext>,
    /// Where reports go; none unless configured.
    reports: Option<Box<dyn Reports>>,
    /// Held for the committer's lifetime: one committer per work directory.
    _lock: File,
}

impl<'r> Committer<'r> {
    /// Locks `work_dir`, and clones or recovers every branch the config names.
    pub fn open(
        config: &'r CommitConfig,
        remote: &'r Remote,
        work_dir: &Path,
    ) -> Result<Self, CommitError> {
        let lock = lock_work_dir(work_dir)?;
        // Absolute, so that git processes started elsewhere find it.
        let work_dir = &work_dir
            .canonicalize()
            .map_err(|cause| CommitError::WorkDir {
                path: work_dir.display().to_string(),
                cause,
            })?;
        let mut clones = Vec::new();
        for branch in config.branches() {
            let clone = open_clone(config, remote, work_dir, branch)?;
            tracing::info!(branch, tip = %clone.head()?, url = %remote.shown_url(), indexed_ids = clone.indexed_ids(), "clone ready");
            clones.push(clone);
        }
        Ok(Committer {
            config,
            clones,
            limiter: PushLimiter::new(&config.push),
            counters: Counters::default(),
            metrics: None,
            tracing: Tracing::off(),
            batch_span: None,
            reports: None,
            _lock: lock,
        })
    }

    /// Reports outcomes, commits and pushes to `metrics` from now on.
    pub fn with_metrics(mut self, metrics: CommitMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Continues the traces of the intents it commits from now on.
    pub fn with_tracing(mut self, tracing: Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    /// Reports what each push did to `reports` from now on.
    pub fn with_reports(mut self, reports: Box<dyn Reports>) -> Self {
        self.reports = Some(reports);
        self
    }

    /// The branches the committer writes, as the config lists them.
    pub fn branches(&self) -> Vec<&str> {
        self.clones.iter().map(|c| c.branch()).collect()
    }

    /// Reads batches from `source` until it ends, idles out or is stopped.
    pub fn run(
        &mut self,
        source: &mut dyn IntentSource,
        dead: &mut dyn DeadLetters,
        opts: RunOptions<'_>,
    ) -> Result<(), CommitError> {
        let mut idle_since = Instant::now();
        let mut was_ready = false;
        loop {
            if opts.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let first = match source.next(None)? {
                Next::Intent(d) => d,
                Next::End => return Ok(()),
                Next::Timeout => {
                    let ready = source.ready();
                    if ready != was_ready {
                        tracing::info!(
                            ready,
                            "source readiness changed (Kafka: partitions assigned or revoked)"
                        );
                        was_ready = ready;
                    }
                    if !ready {
                        idle_since = Instant::now();
                    }
                    if opts
                        .idle_exit
                        .is_some_and(|idle| idle_since.elapsed() >= idle)
                    {
                        return Ok(());
                    }
                    continue;
                }
            };
            let (batch, ended) = self.collect(source, first, opts.stop)?;
            self.process(&batch, dead)?;
            dead.flush()?;
            if let Some(reports) = &mut self.reports {
                reports.flush()?;
            }
            // Test builds only: a kill here redelivers reported intents.
            crate::fault::reached("commit.after-report");
            if let Err(e) = source.commit() {
                // The intents come again; their trailers make that harmless.
                tracing::warn!(error = %e, "offsets not committed");
            }
            (opts.on_batch)(&batch, Instant::now());
            idle_since = Instant::now();
            if ended {
                return Ok(());
            }
        }
    }

    /// Collects intents until the window after the first one closes, the
    /// batch is full, the source ends or a stop is requested.
    fn collect(
        &self,
        source: &mut dyn IntentSource,
        first: Delivery,
        stop: &AtomicBool,
    ) -> Result<(Vec<Delivery>, bool), CommitError> {
        let deadline = first.received + self.config.batch.window;
        let mut batch = vec![first];
        while batch.len() < self.config.batch.max_intents.get() && !stop.load(Ordering::Relaxed) {
            match source.next(Some(deadline))? {
                Next::Intent(d) => batch.push(d),
                Next::End => return Ok((batch, true)),
                Next::Timeout if Instant::now() >= deadline => break,
                Next::Timeout => {}
            }
        }
        Ok((batch, false))
    }

    /// Applies one batch: every branch is pushed (or gives up with an error)
    /// before any dead letter is sent; each branch's reports are queued once
    /// it is pushed.
    pub fn process(
        &mut self,
        batch: &[Delivery],
        dead: &mut dyn DeadLetters,
    ) -> Result<(), CommitError> {
        let started = Instant::now();
        let mut spans = BatchSpans::start(&self.tracing, batch);
        self.batch_span = spans.batch.context();
        self.counters.received += batch.len() as u64;
        self.counters.batches += 1;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut checked: Vec<(usize, Checked)> = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            match check(d, self.config) {
                Ok(c) => checked.push((i, c)),
                Err(o) => outcomes[i] = Some(o),
            }
        }
        for b in 0..self.clones.len() {
            let items: Vec<(usize, &Checked)> = checked
                .iter()
                .filter(|(_, c)| self.config.environments[c.env].branch == self.clones[b].branch())
                .map(|(i, c)| (*i, c))
                .collect();
            if items.is_empty() {
                continue;
            }
            let (plan, pushed) = self.process_branch(b, &items)?;
            self.send_reports(b, &items, &plan, pushed)?;
            for (i, o) in plan.outcomes {
                outcomes[i] = Some(o);
            }
        }
        for (i, (d, outcome)) in batch.iter().zip(outcomes).enumerate() {
            // Every checked intent's environment has a branch with a clone,
            // and planning gives every item an outcome.
            let Some(outcome) = outcome else {
                tracing::error!(origin = %d.origin, "intent left unplanned");
                continue;
            };
            spans.outcome(i, &outcome);
            self.report(d, &outcome, dead)?;
        }
        if let Some(m) = &self.metrics {
            m.batch_done(started.elapsed());
        }
        tracing::info!(
            intents = batch.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        Ok(())
    }

    /// Queues the reports of one branch's plan: what its pushed commit (if
    /// any) lists, and the intents it found committed before.
    fn send_reports(
        &mut self,
        b: usize,
        items: &[(usize, &Checked)],
        plan: &BranchPlan,
        pushed: Option<(CommitRef, u64)>,
    ) -> Result<(), CommitError> {
        let Some(sink) = self.reports.as_mut() else {
            return Ok(());
        };
        let clone = &self.clones[b];
        let committed = |id: &str| clone.commit_of(id);
        let pushed = pushed.as_ref().map(|(c, at)| (c, *at));
        for report in branch_reports(items, plan, clone.branch(), pushed, &committed) {
            sink.send(&report)?;
            self.counters.reports += 1;
        }
        Ok(())
    }

    fn report(
        &mut self,
        d: &Delivery,
        outcome: &Outcome,
        dead: &mut dyn DeadLetters,
    ) -> Result<(), CommitError> {
        self.counters.count(outcome);
        if let Some(m) = &self.metrics {
            m.outcome(outcome);
        }
        let logged = match outcome {
            Outcome::Applied => tracing::enabled!(tracing::Level::DEBUG),
            Outcome::DeadLetter(_) => true,
            _ => tracing::enabled!(tracing::Level::INFO),
        };
        let label = if logged {
            serde_json::from_str(&d.value).unwrap_or_default()
        } else {
            Label::default()
        };
        let (id, service, env) = (&label.intent_id, &label.service, &label.environment);
        match outcome {
            Outcome::DeadLetter(r) => {
                tracing::warn!(origin = %d.origin, intent_id = %id, service = %service, environment = %env, kind = r.kind.as_str(), reason = %r.reason, "intent refused");
                dead.send(d, r.kind.as_str(), &r.reason)?;
            }
            Outcome::Applied => {
                tracing::debug!(origin = %d.origin, intent_id = %id, service = %service, environment = %env, "intent applied")
            }
            Outcome::Retried => {
                tracing::info!(origin = %d.origin, intent_id = %id, service = %service, environment = %env, "retry of a failed sync committed (no file changes)")
            }
            _ => {
                tracing::info!(origin = %d.origin, intent_id = %id, service = %service, environment = %env, outcome = outcome.label(), "intent skipped")
            }
        }
        Ok(())
    }

    /// Plans, commits and pushes one branch's intents, rebuilding on the
    /// new tip whenever the push is rejected, until pushed or out of time.
    /// Returns the plan, and the commit pushed with when (ms), if any.
    fn process_branch(
        &mut self,
        b: usize,
        items: &[(usize, &Checked)],
    ) -> Result<(BranchPlan, Option<(CommitRef, u64)>), CommitError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.config.push);
        let mut attempts = 0u32;
        loop {
            let clone = &self.clones[b];
            let mut plan = plan_branch(
                clone.dir(),
                &self.config.environments,
                items,
                clone.recorded(),
            );
            if !plan.commits() {
                return Ok((plan, None));
            }
            attempts += 1;
            let (last, failed) = match self.commit_and_push(b, &mut plan) {
                Ok(Attempt::Pushed(commit)) => {
                    self.note_pushed(b, items, &plan);
                    return Ok((plan, Some((commit, crate::duration::now_ms()))));
                }
                Ok(Attempt::Rejected(why)) => {
                    self.note_push("rejected");
                    self.counters.rejected_pushes += 1;
                    tracing::debug!(branch = self.clones[b].branch(), why = %why, "push rejected, rebuilding on the new tip");
                    (why, false)
                }
                Err(e) => {
                    self.note_push("failed");
                    self.counters.failed_pushes += 1;
                    tracing::warn!(branch = self.clones[b].branch(), error = %e, attempts, "push failed, retrying");
                    (e.to_string(), true)
                }
            };
            if started.elapsed() >= self.config.push.give_up_after {
                let _ = self.clones[b].reset_to_remote();
                return Err(CommitError::GaveUp {
                    branch: self.clones[b].branch().into(),
                    attempts,
                    seconds: started.elapsed().as_secs_f64(),
                    last,
                });
            }
            // The first rejection only means the branch moved: the fetch
            // brings the news, so rebuild at once. Repeated ones back off.
            if failed || attempts > 1 {
                std::thread::sleep(backoff.next_wait());
            }
            self.refresh(b);
        }
    }

    fn note_push(&self, result: &'static str) {
        if let Some(m) = &self.metrics {
            m.push(result);
        }
    }

    /// A branch's commit is on the remote: its intents are visible now.
    fn note_pushed(&self, b: usize, items: &[(usize, &Checked)], plan: &BranchPlan) {
        let Some(m) = &self.metrics else {
            return;
        };
        m.push("pushed");
        let applied = |i: &usize| {
            plan.outcomes
                .iter()
                .any(|(j, o)| j == i && *o == Outcome::Applied)
        };
        let times = items
            .iter()
            .filter(|(i, _)| applied(i))
            .map(|(_, c)| c.ts)
            .filter(|ts| *ts > 0);
        m.pushed(self.clones[b].branch(), times);
    }

    /// Back to the remote's tip after a failed attempt; if the remote cannot
    /// be reached, at least back to the last known tip.
    fn refresh(&mut self, b: usize) {
        if let Err(e) = self.clones[b].fetch() {
            tracing::warn!(branch = self.clones[b].branch(), error = %e, "fetch failed");
            if let Err(e) = self.clones[b].reset_to_remote() {
                tracing::warn!(error = %e, "reset failed");
            }
        }
    }

    fn commit_and_push(&mut self, b: usize, plan: &mut BranchPlan) -> Result<Attempt, GitError> {
        let clone = &self.clones[b];
        let mut paths = Vec::new();
        for files in &mut plan.files {
            paths.extend(
                files
                    .write_changed(clone.dir())
                    .map_err(|cause| GitError::Io {
                        path: clone.dir().display().to_string(),
                        cause,
                    })?,
            );
        }
        let templates = Templates {
            subject: &self.config.batch.subject,
            multi_subject: &self.config.batch.multi_subject,
            line: &self.config.batch.line,
            retry_subject: &self.config.batch.retry_subject,
        };
        let ids: Vec<&str> = plan.trailer_ids.iter().map(String::as_str).collect();
        let contents = Contents {
            changes: &plan.changes,
            retries: &plan.retries,
            intent_ids: &ids,
            trace_ids: &plan.trace_ids,
            records: &plan.records,
        };
        let message = commit_message(&templates, clone.branch(), &contents);
        let started = Instant::now();
        clone.commit(&paths, &message)?;
        let commit_ms = started.elapsed().as_millis() as u64;
        // Test builds only: a kill here leaves a commit in the clone, unpushed.
        crate::fault::reached("commit.after-commit");
        let waited = self.limiter.wait();
        let started = Instant::now();
        let mut span = self.tracing.start(
            "sluice.commit push",
            SpanKind::Internal,
            self.batch_span.as_ref(),
            &[],
        );
        span.set_attribute("sluice.branch", self.clones[b].branch().to_owned());
        let outcome = self.clones[b].push();
        match &outcome {
            Ok(PushOutcome::Pushed) => {}
            Ok(PushOutcome::Rejected(_)) => span.set_error("rejected: the remote moved"),
            Err(e) => span.set_error(e.to_string()),
        }
        drop(span);
        let push_ms = started.elapsed().as_millis() as u64;
        if let PushOutcome::Rejected(why) = outcome? {
            return Ok(Attempt::Rejected(why));
        }
        let commit = self.clones[b].pushed(&ids, &plan.records)?;
        self.counters.commits += 1;
        tracing::info!(
            branch = self.clones[b].branch(),
            commit = %commit.sha,
            changes = plan.changes.len(),
            retries = plan.retries.len(),
            intents = ids.len(),
            rate_limited_ms = waited.as_millis() as u64,
            commit_ms,
            push_ms,
            "pushed"
        );
        // Test builds only: a kill here leaves the push unacknowledged and
        // unreported.
        crate::fault::reached("commit.after-push");
        Ok(Attempt::Pushed(commit))
    }
}

/// What one commit-and-push attempt did.
enum Attempt {
    /// The commit is on the remote.
    Pushed(CommitRef),
    /// The remote branch moved: fetch, rebuild, try again.
    Rejected(String),
}

/// Opens a branch's clone, retrying an unreachable remote or refused
/// credentials with backoff until `give_up_after`.
fn open_clone<'r>(
    config: &CommitConfig,
    remote: &'r Remote,
    work_dir: &Path,
    branch: &str,
) -> Result<BranchClone<'r>, CommitError> {
    let started = Instant::now();
    let mut backoff = Backoff::new(&config.push);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match BranchClone::open(remote, work_dir, branch, config.index) {
            Ok(clone) => return Ok(clone),
            // Retrying cannot fix these.
            Err(e @ (GitError::MissingToken(_) | GitError::Spawn { .. })) => return Err(e.into()),
            Err(e) if is_missing_branch(&e) => {
                return Err(CommitError::NoBranch {
                    branch: branch.into(),
                    url: remote.shown_url(),
                })
            }
            Err(e) if started.elapsed() >= config.push.give_up_after => {
                return Err(CommitError::GaveUp {
                    branch: branch.into(),
                    attempts,
                    seconds: started.elapsed().as_secs_f64(),
                    last: e.to_string(),
                })
            }
            Err(e) => {
                tracing::warn!(branch, error = %e, attempts, "cannot open the branch, retrying")
            }
        }
        std::thread::sleep(backoff.next_wait());
    }
}

/// Whether git said the branch does not exist on the remote.
fn is_missing_branch(e: &GitError) -> bool {
    matches!(e, GitError::Failed { message, .. }
        if message.contains("not found in upstream") || message.contains("couldn't find remote ref"))
}

/// Takes an exclusive lock on `work_dir/lock`, so that two committers never
/// share clones.
fn lock_work_dir(work_dir: &Path) -> Result<File, CommitError> {
    let shown = work_dir.display().to_string();
    let io = |cause| CommitError::WorkDir {
        path: shown.clone(),
        cause,
    };
    std::fs::create_dir_all(work_dir).map_err(io)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(work_dir.join("lock"))
        .map_err(io)?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(CommitError::Locked(shown));
    }
    Ok(file)
}
