//! `sluice bench run --only restore`, second figure: how fast fresh
//! instances restore the tasks of `topologies/cicd.toml` after a flood, each
//! task with a changelog per store (dedup, debounce, throttle, gate, timers,
//! clock): what a restore costs when many small changelogs, not one large
//! one, make up a task's state.

use anyhow::{bail, Result};

use super::live::{Bench, Figures, LiveArgs};

/// Events of the flood that fills the changelogs.
const EVENTS: u64 = 200_000;

impl Bench {
    /// Fills the changelogs with one run over a flood, then restores them in
    /// fresh state directories (one thread: the tasks one after another).
    /// Returns the changelog records restored per second and the mean
    /// milliseconds per task, one value per run.
    pub(super) fn restore_tasks(&self, args: &LiveArgs) -> Result<(Figures, Figures)> {
        let app = format!("{}-tasks", self.tag);
        let (images, alerts) = self.flood_inputs(&app, args, EVENTS, |_| None)?;
        let topology = self.cicd_topology(&app, &images, &alerts)?;
        let one_thread = [
            "--clock",
            "event",
            "--threads",
            "1",
            "--exit-after-idle",
            "1s",
        ];
        let (fill, _) = self.sluice_run(&topology, &format!("{app}-fill"), &one_thread)?;
        eprintln!("filled the changelogs: {} events processed", fill.processed);
        let (mut rates, mut per_task) = (vec![], vec![]);
        for run in 0..args.runs {
            let (stats, _) = self.sluice_run(&topology, &format!("{app}-{run}"), &one_thread)?;
            if stats.restored_records == 0 {
                bail!("the fresh instance restored nothing");
            }
            let ms = stats.restore_ms.max(1) as f64;
            let rate = stats.restored_records as f64 / (ms / 1000.0);
            let tasks = f64::from(args.partitions.max(1));
            eprintln!(
                "task restore run {run}: {} records in {} ms over {tasks} tasks: {rate:.0} rec/s",
                stats.restored_records, stats.restore_ms
            );
            rates.push(rate);
            per_task.push(ms / tasks);
        }
        Ok((rates, per_task))
    }
}
