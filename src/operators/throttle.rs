//! `throttle`: a per-key rate limit (GCRA), dropping or delaying the excess.

use serde::{Deserialize, Serialize};

use super::{dur, key_summary, view, BuildCx, Ctx, KeyConfig, KeySpec, Operator};
use crate::duration::DurationMs;
use crate::record::{Kind, Record};
use crate::state::{Committed, StateBackend, StateError, Table, WriteBatch};
use crate::topology::diag::{Diags, Located};
use crate::topology::reader::TableReader;

/// Limits each key to `count` records `per` duration, allowing `burst`
/// records back to back, with the generic cell rate algorithm: emission
/// interval `T = per / count` (whole ms, rounded down), tolerance
/// `tau = T x (burst - 1)`, and per key a theoretical arrival time `tat`.
/// A record conforms when `max(tat, now) - now <= tau`; it passes and
/// `tat = max(tat, now) + T`.
///
/// The excess: with `excess = "drop"` it is dropped (counted as
/// `rate_limited`). With `excess = "delay"` it becomes the key's pending
/// record, replacing an older pending one (counted as `superseded`), and goes
/// out at `tat - tau`, the first moment it conforms; so the newest image is
/// never lost, only late.
///
/// ```toml
/// [[operators]]
/// name = "throttle"
/// type = "throttle"
/// input = "debounce"
/// key = ["service", "environment"]
/// count = 1
/// per = "5m"
/// burst = 2
/// excess = "delay"
/// ```
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// The node whose records are throttled.
    pub input: Located<String>,
    /// Fields whose values identify a rate-limited stream.
    pub key: KeyConfig,
    /// Records allowed per `per` (at least 1).
    pub count: u64,
    /// The period `count` applies to.
    pub per: DurationMs,
    /// Records allowed back to back (at least 1).
    pub burst: u64,
    /// What happens to records over the rate.
    pub excess: Excess,
}

/// What a throttle does with a record over its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    Drop,
    Delay,
}

impl ThrottleConfig {
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let diags = t.diags();
        let input = t.required_string("input");
        let key = KeyConfig::read(t);
        if !t.contains("count") {
            t.missing("count");
        }
        let count = t.integer("count", 1);
        let per = t.required_duration("per");
        let burst_given = t.contains("burst");
        let burst_at = t.integer("burst", 1);
        let burst_pos = burst_at.as_ref().map_or(t.pos(), |b| b.pos);
        // A burst that was given but invalid has been reported; 1 is only the default.
        let burst = match (burst_given, burst_at) {
            (false, _) => Some(1),
            (true, Some(b)) => Some(b.value),
            (true, None) => None,
        };
        let excess = match t.string("excess") {
            None => Some(Excess::Drop),
            Some(e) => match e.value.as_str() {
                "drop" => Some(Excess::Drop),
                "delay" => Some(Excess::Delay),
                other => {
                    diags.error(
                        e.pos,
                        t.key_path("excess"),
                        format!("unknown excess `{other}`; expected drop or delay"),
                    );
                    None
                }
            },
        };
        let (count_at, per) = (count?, per?);
        let interval = per.value.as_ms() / count_at.value;
        if interval == 0 {
            diags.error(
                count_at.pos,
                t.key_path("count"),
                format!(
                    "{} per {} is more than one per millisecond, the clock's resolution",
                    count_at.value, per.value
                ),
            );
            return None;
        }
        let burst = burst?;
        if interval.checked_mul(burst - 1).is_none() {
            diags.error(
                burst_pos,
                t.key_path("burst"),
                "burst x (per / count) overflows",
            );
            return None;
        }
        Some(ThrottleConfig {
            input: input?,
            key: key?,
            count: count_at.value,
            per: per.value,
            burst,
            excess: excess?,
        })
    }

    pub fn check(&self, kind: Kind, diags: &Diags<'_>, path: &str) -> Option<Kind> {
        self.key.resolve(kind, diags, &format!("{path}.key"));
        Some(kind)
    }

    /// The emission interval T in ms (at least 1, checked when read).
    pub fn interval(&self) -> u64 {
        self.per.as_ms() / self.count
    }

    pub fn build(&self, kind: Kind, cx: &BuildCx<'_>) -> Throttle {
        let interval = self.interval();
        Throttle {
            key: self
                .key
                .resolve(kind, &Diags::new(""), "")
                .expect("checked"),
            interval,
            tolerance: interval * (self.burst - 1),
            excess: self.excess,
            state: cx.table(),
        }
    }

    pub fn summary(&self) -> String {
        let excess = match self.excess {
            Excess::Drop => "drop",
            Excess::Delay => "delay",
        };
        format!(
            "throttle key {} {} per {} burst {} excess {excess}",
            key_summary(&self.key),
            self.count,
            dur(self.per),
            self.burst
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyState {
    /// Theoretical arrival time of the next conforming record.
    tat: u64,
    /// The delayed record waiting for its turn (`excess = "delay"`).
    pending: Option<Record>,
}

pub struct Throttle {
    key: KeySpec,
    interval: u64,
    tolerance: u64,
    excess: Excess,
    state: Table<KeyState>,
}

impl Operator for Throttle {
    fn on_record(
        &mut self,
        _port: usize,
        record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let key = self.key.encode(&record.payload);
        let now = cx.now();
        // Read first: a record dropped for its rate changes nothing, and must
        // not make its entry dirty, or every commit would write it to the
        // store and its changelog again, unchanged.
        let entry = self.state.entry(cx.backend(), key)?;
        let Some(tat) = entry.value().map(|s| s.tat) else {
            let tat = now.saturating_add(self.interval);
            *entry.change() = Some(KeyState { tat, pending: None });
            cx.pass(record);
            return Ok(());
        };
        // A record can conform while another is pending (a timer due at the same
        // instant delivered it): it passes, and the pending one keeps its timer.
        if tat.max(now) - now <= self.tolerance {
            if let Some(state) = entry.change() {
                state.tat = tat.max(now).saturating_add(self.interval);
            }
            cx.pass(record);
            return Ok(());
        }
        match self.excess {
            Excess::Drop => cx.drop_record("rate_limited"),
            Excess::Delay => {
                let Some(state) = entry.change() else {
                    return Ok(());
                };
                if state.pending.replace(record).is_some() {
                    cx.drop_record("superseded");
                } else {
                    cx.arm_timer(key, tat - self.tolerance);
                }
            }
        }
        Ok(())
    }

    /// Releases the pending record: its turn has come. A timer with nothing
    /// pending (its record went out through a conforming one) changes
    /// nothing, and leaves the entry clean.
    fn on_timer(&mut self, key: &[u8], cx: &mut Ctx<'_>) -> Result<(), StateError> {
        let now = cx.now();
        let entry = self.state.entry(cx.backend(), key)?;
        if entry.value().is_none_or(|s| s.pending.is_none()) {
            return Ok(());
        }
        if let Some(state) = entry.change() {
            if let Some(record) = state.pending.take() {
                state.tat = state.tat.max(now).saturating_add(self.interval);
                cx.pass(record);
            }
        }
        Ok(())
    }

    /// The records held back for (service, environment), with their deadlines.
    fn query(
        &mut self,
        service: &str,
        environment: &str,
        cx: &view::QueryCx<'_>,
    ) -> Result<Option<view::OperatorView>, StateError> {
        let found = self.state.find(cx.backend, |s| {
            s.pending
                .as_ref()
                .is_some_and(|r| view::is_about(r, service, environment))
        })?;
        let pending: Vec<view::PendingView> = found
            .iter()
            .filter_map(|(key, s)| {
                Some(view::PendingView::of(s.pending.as_ref()?, cx.deadline(key)))
            })
            .collect();
        Ok((!pending.is_empty()).then_some(view::OperatorView::Throttle { pending }))
    }

    fn accepts_entry(&self, value: &[u8]) -> bool {
        self.state.accepts(value)
    }

    fn commit(
        &mut self,
        now: u64,
        backend: &dyn StateBackend,
        batch: &mut WriteBatch,
    ) -> Result<Committed, StateError> {
        // Once tat has passed and nothing waits, a key conforms exactly as a key
        // never seen does: its state is purged at the commit.
        self.state
            .sweep(backend, |s| s.pending.is_some() || s.tat > now)?;
        self.state.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{image, tags, Harness};

    fn topology(burst: u64, excess: &str) -> String {
        format!("[[operators]]\nname = \"th\"\ntype = \"throttle\"\ninput = \"images\"\nkey = [\"service\"]\ncount = 1\nper = \"1m\"\nburst = {burst}\nexcess = \"{excess}\"\n")
    }

    #[test]
    fn drop_lets_a_burst_through_then_one_per_interval() {
        let mut h = Harness::new(&topology(3, "drop"));
        let mut out = Vec::new();
        for (i, t) in [0u64, 1, 2, 3, 60_000, 60_001, 120_000]
            .into_iter()
            .enumerate()
        {
            out.extend(h.push(t, image("a", Some(&format!("v{i}")))));
        }
        // T = 60s, tau = 120s. tat: 60s, 120s, 180s; the 4th (tat-now = 180s-3ms > tau) drops.
        // At 60s: tat 180s - 60s = 120s <= tau passes (tat 240s); at 60.001s 179.999s > tau drops.
        // At 120s: 240s - 120s = 120s passes.
        assert_eq!(
            tags(&out)
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>(),
            ["v0", "v1", "v2", "v4", "v6"]
        );
        assert_eq!(h.dropped("rate_limited"), 2);
    }

    #[test]
    fn a_record_dropped_for_its_rate_leaves_no_changelog_record() {
        let mut h = Harness::new(&topology(1, "drop"));
        assert_eq!(
            h.push_counting_changelog(0, image("a", Some("v1")), "th"),
            1
        );
        assert_eq!(
            h.push_counting_changelog(1_000, image("a", Some("v2")), "th"),
            0,
            "a record dropped for its rate changes no state"
        );
        assert_eq!(h.dropped("rate_limited"), 1);
        assert_eq!(
            h.push_counting_changelog(60_000, image("a", Some("v3")), "th"),
            1,
            "a conforming record moves tat"
        );
        let mut h = Harness::new(&topology(1, "delay"));
        h.push_counting_changelog(0, image("a", Some("v1")), "th");
        assert_eq!(
            h.push_counting_changelog(1_000, image("a", Some("v2")), "th"),
            1,
            "a delayed record is held in the state"
        );
    }

    #[test]
    fn delay_keeps_only_the_newest_excess_record_and_emits_it_at_tat_minus_tau() {
        let mut h = Harness::new(&topology(1, "delay"));
        assert_eq!(h.push(0, image("a", Some("v1"))).len(), 1);
        assert!(h.push(10_000, image("a", Some("v2"))).is_empty());
        assert!(h.push(20_000, image("a", Some("v3"))).is_empty());
        assert_eq!(h.dropped("superseded"), 1);
        assert_eq!(tags(&h.advance(60_000)), [(60_000, "v3".into())]);
        // tat is now 120s: the next record waits again.
        assert!(h.push(70_000, image("a", Some("v4"))).is_empty());
        assert_eq!(tags(&h.drain()), [(120_000, "v4".into())]);
        assert_eq!(
            h.stored("th"),
            1,
            "tat is 180s: the key's state still matters"
        );
        h.advance(180_000);
        assert_eq!(
            h.stored("th"),
            0,
            "the key's state is purged once its tat has passed"
        );
    }

    #[test]
    fn a_record_conforming_while_one_is_pending_passes_and_the_pending_one_still_goes_out() {
        // debounce keyed by tag feeds a throttle keyed by service: at 70s the debounce
        // timer of v3 (armed at 60s) fires before the throttle's release timer (armed
        // at 65s). v3 conforms (tat 70s - now 70s = 0 <= tau), so it passes, and v2,
        // pending since 65s, follows at its own timer.
        let topo = "[[operators]]\nname = \"db\"\ntype = \"debounce\"\ninput = \"images\"\nkey = [\"service\", \"tag\"]\nquiet = \"10s\"\n[[operators]]\nname = \"th\"\ntype = \"throttle\"\ninput = \"db\"\nkey = [\"service\"]\ncount = 1\nper = \"1m\"\nexcess = \"delay\"\n";
        let mut h = Harness::new(topo);
        let mut out = h.push(0, image("a", Some("v1")));
        out.extend(h.push(55_000, image("a", Some("v2"))));
        out.extend(h.push(60_000, image("a", Some("v3"))));
        out.extend(h.drain());
        assert_eq!(
            tags(&out),
            [
                (10_000, "v1".into()),
                (70_000, "v3".into()),
                (70_000, "v2".into())
            ]
        );
        assert_eq!(h.dropped("superseded"), 0);
    }

    #[test]
    fn keys_do_not_share_a_rate() {
        let mut h = Harness::new(&topology(1, "drop"));
        assert_eq!(h.push(0, image("a", Some("v1"))).len(), 1);
        assert_eq!(h.push(0, image("b", Some("v1"))).len(), 1);
        assert_eq!(h.push(1, image("a", Some("v2"))).len(), 0);
    }

    #[test]
    fn the_worked_example_rates() {
        // A record at 22s then one at 60s with T = 60s: the second waits until 82s.
        let mut h = Harness::new(&topology(1, "delay"));
        h.push(22_000, image("a", Some("v3")));
        h.push(60_000, image("a", Some("v4")));
        assert!(h.advance(81_999).is_empty());
        assert_eq!(tags(&h.advance(82_000)), [(82_000, "v4".into())]);
    }

    #[test]
    fn rejects_rates_finer_than_a_millisecond_and_bad_values() {
        let errs = Harness::errors("[[operators]]\nname = \"th\"\ntype = \"throttle\"\ninput = \"images\"\nkey = [\"service\"]\ncount = 2000\nper = \"1s\"\n");
        assert!(
            errs.contains("operators[0].count") && errs.contains("per millisecond"),
            "{errs}"
        );
        let errs = Harness::errors("[[operators]]\nname = \"th\"\ntype = \"throttle\"\ninput = \"images\"\nkey = [\"service\"]\ncount = 0\nper = \"1s\"\nburst = 0\nexcess = \"queue\"\n");
        assert!(
            errs.contains("operators[0].count") && errs.contains("at least 1"),
            "{errs}"
        );
        assert!(errs.contains("operators[0].burst"), "{errs}");
        assert!(
            errs.contains("operators[0].excess") && errs.contains("drop or delay"),
            "{errs}"
        );
    }
}
