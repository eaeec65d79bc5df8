//! The `releases` flood profile, `sluice flood`'s default: realistic release
//! pipelines.
//!
//! It feeds the `cicd` topology (`topologies/cicd.toml`) with JSON Lines that look
//! like what a container registry's push webhook and Alertmanager produce for a fleet of
//! services: release pipelines that push several tags of one build within seconds, the same
//! digest pushed again and again (multi-arch manifests, CI retries, pipeline re-runs), skewed
//! service popularity, alerts that keep re-firing until they resolve, alerts right after a
//! release (rollback triggers), a little out-of-order delivery and a few broken records.
//!
//! The flood is a discrete-event simulation: release pipelines and alert incidents start at
//! random times, each schedules its notifications into a priority queue ordered by delivery
//! time, and lines are written as they are delivered. Memory therefore stays proportional to
//! the number of services plus the handful of pipelines and alerts in flight, never to the
//! number of events. Everything random comes from seeded `ChaCha8` streams and integer
//! arithmetic only, so the same [`FloodConfig`] gives byte-identical output on every platform.

mod alerts;
mod fleet;
mod model;
mod pipelines;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BinaryHeap;
use std::io::{self, Write};

use super::{per_mille, FloodConfig, LineSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use model::{Event, Pending, Service};
use render::Scratch;

// Rates are global rather than per service so that a flood of N events always covers roughly
// the same span of simulated time (about 100 ms per event: 1,000,000 events span a little over
// a day); the service count only decides how thinly that traffic is spread.

/// Mean gap between two release pipelines starting anywhere in the fleet.
const RELEASE_MEAN_GAP_MS: u64 = 420;
/// Mean gap between two alert incidents not caused by a release.
const INCIDENT_MEAN_GAP_MS: u64 = 1_800;

/// Share of notifications (per 1000) that a slow producer delivers late.
const LATE_PER_MILLE: u32 = 10;
/// Shortest delay of a late notification.
const MIN_LATENESS_MS: u64 = 300;
/// A late notification is never more than this far behind the newest one already delivered.
const MAX_LATENESS_MS: u64 = 5_000;

/// The simulation state.
pub(super) struct Flood {
    /// Drives the simulated fleet.
    rng: ChaCha8Rng,
    /// Decides which lines get broken, on its own stream so the invalid share does not change
    /// the underlying traffic.
    flaw_rng: ChaCha8Rng,
    invalid_per_mille: u32,
    services: Vec<Service>,
    /// `services.len()`, as drawn by the random streams.
    service_count: u32,
    /// Cumulative Zipf weights, indexed by service.
    popularity: Vec<u64>,
    queue: BinaryHeap<Pending>,
    seq: u64,
    next_release: u64,
    next_incident: u64,
    scratch: Scratch,
}

impl Flood {
    pub(super) fn new(cfg: &FloodConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut flaw_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        flaw_rng.set_stream(1);

        let count = cfg.services.max(1);
        // The draws happen in this order (fleet, popularity, first incident): changing it
        // changes every flood.
        let services = fleet::services(&mut rng, count);
        let popularity = fleet::popularity(&mut rng, count);
        let next_incident = cfg.start_ts + arrival_gap(&mut rng, INCIDENT_MEAN_GAP_MS);
        Self {
            rng,
            flaw_rng,
            invalid_per_mille: cfg.invalid_per_mille,
            services,
            service_count: count,
            popularity,
            queue: BinaryHeap::new(),
            seq: 0,
            // The flood opens with a release so that the first line carries `start_ts`.
            next_release: cfg.start_ts,
            next_incident,
            scratch: Scratch::default(),
        }
    }

    /// Advances the simulation until one line is delivered, and writes it.
    fn deliver_next<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        loop {
            let next_start = self.next_release.min(self.next_incident);
            let due = self
                .queue
                .peek()
                .is_some_and(|pending| pending.delivery <= next_start);
            if due {
                if let Some(pending) = self.queue.pop() {
                    if self.deliver(pending, out)? {
                        return Ok(());
                    }
                }
            } else if self.next_release <= self.next_incident {
                let at = self.next_release;
                self.start_release(at);
                self.next_release = at + arrival_gap(&mut self.rng, RELEASE_MEAN_GAP_MS);
            } else {
                let at = self.next_incident;
                self.start_incident(at);
                self.next_incident = at + arrival_gap(&mut self.rng, INCIDENT_MEAN_GAP_MS);
            }
        }
    }

    /// Queues a notification that happens at `ts`; a few reach the topic late.
    fn schedule(&mut self, ts: u64, event: Event) {
        // Never the very first one: the first line must carry `start_ts`.
        let late = self.seq > 0 && per_mille(&mut self.rng) < LATE_PER_MILLE;
        let delay = if late {
            self.rng.random_range(MIN_LATENESS_MS..=MAX_LATENESS_MS)
        } else {
            0
        };
        self.queue.push(Pending {
            delivery: ts + delay,
            seq: self.seq,
            ts,
            event,
        });
        self.seq += 1;
    }

    /// Handles a queued notification; returns whether a line was written.
    fn deliver<W: Write>(&mut self, pending: Pending, out: &mut W) -> io::Result<bool> {
        match pending.event {
            Event::Image(push) => {
                self.write_image(pending.ts, &push, out)?;
                Ok(true)
            }
            Event::Alert(incident, phase) => self.deliver_alert(pending.ts, incident, phase, out),
        }
    }
}

/// Gap to the next arrival with the given mean: mostly short, sometimes a lull, so activity
/// comes in irregular waves. Integer-only, unlike an exponential draw, for portability.
fn arrival_gap(rng: &mut ChaCha8Rng, mean: u64) -> u64 {
    // 80% in [0, mean), 20% in [mean, 5 mean): the mean of the mixture is `mean`.
    if per_mille(rng) < 800 {
        rng.random_range(0..mean)
    } else {
        rng.random_range(mean..5 * mean)
    }
}

impl LineSource for Flood {
    fn write_next_line<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.deliver_next(out)
    }
}
