//! `debounce`: waits for a key to go quiet, then emits its latest record.

use serde::{Deserialize, Serialize};

use super::{dur, key_summary, view, BuildCx, Ctx, KeyConfig, KeySpec, Operator};
use crate::duration::DurationMs;
use crate::record::{Kind, Record};
use crate::state::{Committed, StateBackend, StateError, Table, WriteBatch};
use crate::topology::diag::{Diags, Located};
use crate::topology::reader::TableReader;

/// Holds back a burst: each record for a key replaces the key's pending record
/// (the replaced one is counted as `superseded`) and re-arms the key's timer
/// to `now + quiet`, but never later than the arrival of the first pending
/// record plus `max_wait`, so a never-ending burst still gets through. When
/// the timer fires, the latest pending record is emitted and the key is
/// cleared.
///
/// Unlike a window closed by the next record (Kafka Streams' `suppress()`),
/// the timer fires on the clock alone: in replay at the next record's time or
/// at `--drain`, live at the wall-clock deadline.
///
/// ```toml
/// [[operators]]
/// name = "debounce"
/// type = "debounce"
/// input = "dedup"
/// key = ["service", "environment"]
/// quiet = "30s"
/// max_wait = "2m"
/// ```
#[derive(Debug, Clone)]
pub struct DebounceConfig {
    /// The node whose records are debounced.
    pub input: Located<String>,
    /// Fields whose values identify a burst; an absent field counts as "".
    pub key: KeyConfig,
    /// How long a key must stay quiet before its latest record is emitted.
    pub quiet: DurationMs,
    /// Longest wait from the first pending record to emission; at least `quiet`.
    pub max_wait: Option<DurationMs>,
}

impl DebounceConfig {
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let input = t.required_string("input");
        let key = KeyConfig::read(t);
        let quiet = t.required_duration("quiet");
        let max_wait = t.duration("max_wait");
        if let (Some(q), Some(m)) = (&quiet, &max_wait) {
            if m.value < q.value {
                t.diags().error(
                    m.pos,
                    t.key_path("max_wait"),
                    format!(
                        "max_wait ({}) must be at least quiet ({})",
                        m.value, q.value
                    ),
                );
                return None;
            }
        }
        Some(DebounceConfig {
            input: input?,
            key: key?,
            quiet: quiet?.value,
            max_wait: max_wait.map(|m| m.value),
        })
    }

    pub fn check(&self, kind: Kind, diags: &Diags<'_>, path: &str) -> Option<Kind> {
        self.key.resolve(kind, diags, &format!("{path}.key"));
        Some(kind)
    }

    pub fn build(&self, kind: Kind, cx: &BuildCx<'_>) -> Debounce {
        Debounce {
            key: self
                .key
                .resolve(kind, &Diags::new(""), "")
                .expect("checked"),
            quiet: self.quiet.as_ms(),
            max_wait: self.max_wait.map(DurationMs::as_ms),
            pending: cx.table(),
        }
    }

    pub fn summary(&self) -> String {
        let max_wait = self
            .max_wait
            .map(|m| format!(" max_wait {}", dur(m)))
            .unwrap_or_default();
        format!(
            "debounce key {} quiet {}{max_wait}",
            key_summary(&self.key),
            dur(self.quiet)
        )
    }
}

/// A key's pending record and when its burst began.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    first_arrival: u64,
    record: Record,
}

pub struct Debounce {
    key: KeySpec,
    quiet: u64,
    max_wait: Option<u64>,
    pending: Table<Pending>,
}

impl Operator for Debounce {
    fn on_record(
        &mut self,
        _port: usize,
        record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let key = self.key.encode(&record.payload);
        let now = cx.now();
        let slot = self.pending.get_mut(cx.backend(), key)?;
        let first_arrival = match slot.as_ref() {
            Some(p) => {
                cx.drop_record("superseded");
                p.first_arrival
            }
            None => now,
        };
        let mut deadline = now.saturating_add(self.quiet);
        if let Some(max_wait) = self.max_wait {
            deadline = deadline.min(first_arrival.saturating_add(max_wait));
        }
        *slot = Some(Pending {
            first_arrival,
            record,
        });
        cx.arm_timer(key, deadline);
        Ok(())
    }

    fn on_timer(&mut self, key: &[u8], cx: &mut Ctx<'_>) -> Result<(), StateError> {
        if let Some(p) = self.pending.get_mut(cx.backend(), key)?.take() {
            cx.pass(p.record);
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
        let found = self.pending.find(cx.backend, |p| {
            view::is_about(&p.record, service, environment)
        })?;
        let pending: Vec<view::PendingView> = found
            .iter()
            .map(|(key, p)| view::PendingView::of(&p.record, cx.deadline(key)))
            .collect();
        Ok((!pending.is_empty()).then_some(view::OperatorView::Debounce { pending }))
    }

    fn accepts_entry(&self, value: &[u8]) -> bool {
        self.pending.accepts(value)
    }

    fn commit(
        &mut self,
        _now: u64,
        _backend: &dyn StateBackend,
        batch: &mut WriteBatch,
    ) -> Result<Committed, StateError> {
        self.pending.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{image, tags, Harness};

    fn topology(max_wait: Option<&str>) -> String {
        let mw = max_wait
            .map(|m| format!("max_wait = \"{m}\"\n"))
            .unwrap_or_default();
        format!("[[operators]]\nname = \"db\"\ntype = \"debounce\"\ninput = \"images\"\nkey = [\"service\"]\nquiet = \"10s\"\n{mw}")
    }

    #[test]
    fn emits_the_latest_record_after_quiet() {
        let mut h = Harness::new(&topology(None));
        h.push(0, image("a", Some("v1")));
        h.push(5_000, image("a", Some("v2")));
        assert!(h.advance(14_999).is_empty());
        assert_eq!(tags(&h.advance(15_000)), [(15_000, "v2".into())]);
        assert_eq!(h.dropped("superseded"), 1);
        assert!(h.drain().is_empty(), "the key was cleared");
    }

    #[test]
    fn max_wait_caps_a_continuous_burst() {
        let mut h = Harness::new(&topology(Some("30s")));
        let mut out = Vec::new();
        for t in (0..=40_000).step_by(5_000) {
            out.extend(h.push(t, image("a", Some(&format!("v{t}")))));
        }
        // First pending at 0: the deadline can never pass 30s. The record at 30s is
        // processed after the timer (deadline <= T fires first), so v25000 goes out.
        assert_eq!(tags(&out), [(30_000, "v25000".into())]);
        assert_eq!(
            tags(&h.drain()),
            [(50_000, "v40000".into())],
            "a new burst began at 30s"
        );
    }

    #[test]
    fn a_record_at_the_deadline_comes_after_the_firing() {
        let mut h = Harness::new(&topology(None));
        h.push(0, image("a", Some("v1")));
        let out = h.push(10_000, image("a", Some("v2")));
        assert_eq!(tags(&out), [(10_000, "v1".into())]);
        assert_eq!(tags(&h.drain()), [(20_000, "v2".into())]);
    }

    #[test]
    fn late_records_use_the_clock_and_keys_are_separate() {
        let mut h = Harness::new(&topology(None));
        h.push(10_000, image("a", Some("v1")));
        h.push(2_000, image("b", Some("v1"))); // late: handled at 10s
        let out = h.drain();
        assert_eq!(out.len(), 2);
        assert!(
            out.iter().all(|r| r.ts == 20_000),
            "both deadlines are 10s + quiet"
        );
        assert_eq!(
            out[0].payload.field(crate::record::Field::Service),
            "a",
            "equal deadlines fire in arming order"
        );
    }

    #[test]
    fn max_wait_below_quiet_is_rejected() {
        let errs = Harness::errors(&topology(Some("5s")));
        assert!(
            errs.contains("operators[0].max_wait") && errs.contains("at least quiet"),
            "{errs}"
        );
        let errs = Harness::errors("[[operators]]\nname = \"db\"\ntype = \"debounce\"\ninput = \"images\"\nkey = [\"service\"]\n");
        assert!(
            errs.contains("operators[0].quiet") && errs.contains("missing"),
            "{errs}"
        );
    }
}
