//! `dedup`: lets one record per key through per time-to-live.

use super::{dur, key_summary, BuildCx, Ctx, KeyConfig, KeySpec, Operator};
use crate::duration::DurationMs;
use crate::record::{Kind, Record};
use crate::state::{Committed, StateBackend, StateError, Table, WriteBatch};
use crate::topology::diag::{Diags, Located};
use crate::topology::reader::TableReader;

/// Drops repeats: a record whose key was last let through at time `s` is
/// dropped (counted as `duplicate`) while `now < s + ttl`; otherwise it passes
/// and `s = now`. With `refresh_on_drop = true` a dropped record also sets
/// `s = now`, so a steady stream of repeats stays suppressed.
///
/// State: one timestamp per key. Entries whose ttl has run out are purged at
/// commits (a bounded slice of the store per commit once it outgrows the
/// cache), so state holds only the keys seen within about the last ttl.
/// A repeat dropped without `refresh_on_drop` leaves its entry as it was, not
/// even marked changed: no commit writes it again.
///
/// ```toml
/// [[operators]]
/// name = "dedup"
/// type = "dedup"
/// input = "route"
/// key = ["service", "environment", "image"]
/// ttl = "10m"
/// refresh_on_drop = false
/// ```
#[derive(Debug, Clone)]
pub struct DedupConfig {
    /// The node whose records are deduplicated.
    pub input: Located<String>,
    /// Fields whose values identify a repeat; an absent field counts as "".
    pub key: KeyConfig,
    /// How long after a record passes its repeats are dropped.
    pub ttl: DurationMs,
    /// Whether a dropped repeat restarts the ttl.
    pub refresh_on_drop: bool,
}

impl DedupConfig {
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let input = t.required_string("input");
        let key = KeyConfig::read(t);
        let ttl = t.required_duration("ttl");
        let refresh_on_drop = t.bool("refresh_on_drop").unwrap_or(false);
        Some(DedupConfig {
            input: input?,
            key: key?,
            ttl: ttl?.value,
            refresh_on_drop,
        })
    }

    pub fn check(&self, kind: Kind, diags: &Diags<'_>, path: &str) -> Option<Kind> {
        self.key.resolve(kind, diags, &format!("{path}.key"));
        Some(kind)
    }

    pub fn build(&self, kind: Kind, cx: &BuildCx<'_>) -> Dedup {
        Dedup {
            key: self
                .key
                .resolve(kind, &Diags::new(""), "")
                .expect("checked"),
            ttl: self.ttl.as_ms(),
            refresh_on_drop: self.refresh_on_drop,
            last_passed: cx.table(),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "dedup key {} ttl {}{}",
            key_summary(&self.key),
            dur(self.ttl),
            if self.refresh_on_drop {
                " refresh_on_drop"
            } else {
                ""
            }
        )
    }
}

pub struct Dedup {
    key: KeySpec,
    ttl: u64,
    refresh_on_drop: bool,
    /// Key -> time the last record for it was let through (`s`).
    last_passed: Table<u64>,
}

impl Operator for Dedup {
    fn on_record(
        &mut self,
        _port: usize,
        record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let key = self.key.encode(&record.payload);
        let now = cx.now();
        // Read first: a repeat that changes nothing must not make its entry
        // dirty, or every commit would write it to the store and its
        // changelog again, unchanged (most pushes of a release flood are
        // repeats).
        let entry = self.last_passed.entry(cx.backend(), key)?;
        let last = entry.value().copied();
        let repeat = last.is_some_and(|s| now < s.saturating_add(self.ttl));
        if !repeat || self.refresh_on_drop {
            *entry.change() = Some(now);
        }
        match repeat {
            true => cx.drop_record("duplicate"),
            false => cx.pass(record),
        }
        Ok(())
    }

    fn on_timer(&mut self, _key: &[u8], _cx: &mut Ctx<'_>) -> Result<(), StateError> {
        Ok(())
    }

    fn accepts_entry(&self, value: &[u8]) -> bool {
        self.last_passed.accepts(value)
    }

    fn commit(
        &mut self,
        now: u64,
        backend: &dyn StateBackend,
        batch: &mut WriteBatch,
    ) -> Result<Committed, StateError> {
        // An entry whose ttl has run out lets the next record through, exactly as
        // no entry would: purging it at a commit changes nothing but the state size.
        let ttl = self.ttl;
        self.last_passed
            .sweep(backend, |&s| now < s.saturating_add(ttl))?;
        self.last_passed.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{image, tags, Harness};

    fn topology(refresh: bool) -> String {
        format!("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\", \"environment\"]\nttl = \"10s\"\nrefresh_on_drop = {refresh}\n")
    }

    #[test]
    fn route_and_dedup_read_deployment_statuses_and_control_records_like_other_kinds() {
        use super::super::testkit::{control, status};
        use crate::record::{ControlAction, DeployStatus, Field};
        let ops = "[[operators]]\nname = \"r\"\ntype = \"route\"\ninput = \"statuses\"\n[[operators.rules]]\nfield = \"status\"\nregex = '^failed$'\nenvironment = \"incident\"\n[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"r\"\nkey = [\"service\", \"environment\", \"status\"]\nttl = \"1m\"\n";
        let mut h = Harness::new(ops);
        let out = h.push(0, status("a", "prod", DeployStatus::Failed));
        assert_eq!(out[0].payload.field(Field::Environment), "incident");
        assert!(h
            .push(1, status("a", "prod", DeployStatus::Failed))
            .is_empty());
        assert!(
            h.push(2, status("a", "prod", DeployStatus::Healthy))
                .is_empty(),
            "no route"
        );
        assert_eq!(h.dropped("duplicate"), 1);
        let ops = "[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"controls\"\nkey = [\"action\", \"service\", \"image\", \"by\"]\nttl = \"1m\"\n";
        let mut h = Harness::new(ops);
        let pin = || control(ControlAction::Pin, Some("a"), Some("a:v1"), None);
        assert_eq!(h.push(0, pin()).len(), 1);
        assert!(h.push(1, pin()).is_empty());
        let errs = Harness::errors("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"controls\"\nkey = [\"tag\"]\nttl = \"1m\"\n");
        assert!(
            errs.contains("control records have no field `tag`"),
            "{errs}"
        );
    }

    #[test]
    fn drops_repeats_within_ttl_and_passes_at_exactly_s_plus_ttl() {
        let mut h = Harness::new(&topology(false));
        assert_eq!(tags(&h.push(0, image("a", Some("v1")))), [(0, "v1".into())]);
        assert!(h.push(9_999, image("a", Some("v2"))).is_empty());
        assert_eq!(
            tags(&h.push(10_000, image("a", Some("v3")))),
            [(10_000, "v3".into())]
        );
        assert_eq!(h.dropped("duplicate"), 1);
    }

    #[test]
    fn refresh_on_drop_extends_the_suppression() {
        let mut h = Harness::new(&topology(true));
        h.push(0, image("a", Some("v1")));
        assert!(h.push(8_000, image("a", Some("v1"))).is_empty());
        assert!(
            h.push(16_000, image("a", Some("v1"))).is_empty(),
            "s moved to 8s, so 16s < 18s"
        );
        assert_eq!(h.push(26_000, image("a", Some("v1"))).len(), 1);
    }

    #[test]
    fn a_repeat_that_changes_nothing_leaves_no_changelog_record() {
        let mut h = Harness::new(&topology(false));
        assert_eq!(h.push_counting_changelog(0, image("a", Some("v1")), "d"), 1);
        assert_eq!(
            h.push_counting_changelog(5_000, image("a", Some("v1")), "d"),
            0,
            "a dropped repeat without refresh_on_drop changes no state"
        );
        assert_eq!(h.dropped("duplicate"), 1);
        let mut h = Harness::new(&topology(true));
        h.push_counting_changelog(0, image("a", Some("v1")), "d");
        assert_eq!(
            h.push_counting_changelog(5_000, image("a", Some("v1")), "d"),
            1,
            "refresh_on_drop moves the window: a change"
        );
    }

    #[test]
    fn without_refresh_the_window_is_fixed() {
        let mut h = Harness::new(&topology(false));
        h.push(0, image("a", Some("v1")));
        h.push(8_000, image("a", Some("v1")));
        assert_eq!(h.push(10_000, image("a", Some("v1"))).len(), 1);
    }

    #[test]
    fn keys_are_independent_and_absent_fields_count_as_empty() {
        let mut h = Harness::new("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\", \"tag\"]\nttl = \"1m\"\n");
        assert_eq!(h.push(0, image("a", Some("v1"))).len(), 1);
        assert_eq!(h.push(1, image("b", Some("v1"))).len(), 1);
        assert_eq!(
            h.push(2, image("a", None)).len(),
            1,
            "tag \"\" differs from v1"
        );
        assert_eq!(h.push(3, image("a", None)).len(), 0, "digest-only repeat");
    }

    #[test]
    fn state_is_purged_after_the_ttl() {
        let mut h = Harness::with_cache(&topology(false), 1_000);
        for i in 0..50 {
            h.push(i, image(&format!("s{i}"), Some("v1")));
        }
        assert_eq!(h.stored("d"), 50);
        h.advance(10_048);
        assert_eq!(h.stored("d"), 1, "the last key's ttl runs out at 10.049s");
        h.advance(10_049);
        assert_eq!(h.stored("d"), 0, "every entry purged once its ttl ran out");
    }

    #[test]
    fn scratch_state_that_fits_the_cache_stays_there_until_written() {
        let mut h = Harness::with_cache(&topology(false), 1_000).keeping_cached();
        for i in 0..50 {
            h.push(i, image(&format!("s{i}"), Some("v1")));
        }
        assert_eq!(h.committed("d"), 0, "every change kept in the cache");
        assert!(
            h.push(60, image("s7", Some("v1"))).is_empty(),
            "a duplicate"
        );
        assert_eq!(h.stored("d"), 50, "all written when asked");
        h.advance(10_060);
        assert_eq!(h.committed("d"), 50, "expired, but the deletions are kept");
        assert_eq!(h.stored("d"), 0, "and written when asked");
    }

    #[test]
    fn entries_only_in_the_store_are_purged_too() {
        // A cache of 2 entries: almost everything lives only in the store.
        let mut h = Harness::new(&topology(false));
        for i in 0..50 {
            h.push(i, image(&format!("s{i}"), Some("v1")));
        }
        h.advance(20_000);
        let commits = (1..=16).find(|_| h.stored("d") == 0);
        assert!(commits.is_some(), "purged within 16 commits");
    }

    #[test]
    fn late_records_are_judged_at_the_current_clock() {
        let mut h = Harness::new(&topology(false));
        h.push(20_000, image("a", Some("v1")));
        // ts 5s is late: the clock stays at 20s, so this is a repeat.
        assert!(h.push(5_000, image("a", Some("v1"))).is_empty());
        assert_eq!(
            tags(&h.push(30_000, image("a", Some("v2")))),
            [(30_000, "v2".into())]
        );
    }

    #[test]
    fn rejects_zero_and_malformed_ttl_and_unknown_fields() {
        let errs = Harness::errors("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\"]\nttl = \"0s\"\n");
        assert!(
            errs.contains("operators[0].ttl") && errs.contains("greater than zero"),
            "{errs}"
        );
        assert!(
            !errs.contains("sinks[0].input"),
            "a broken operator still exists for its readers: {errs}"
        );
        let errs = Harness::errors("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\", \"severity\"]\nttl = \"1s\"\n");
        assert!(
            errs.contains("operators[0].key[1]") && errs.contains("no field `severity`"),
            "{errs}"
        );
        let errs = Harness::errors("[[operators]]\nname = \"d\"\ntype = \"dedup\"\ninput = \"images\"\nkey = []\nttl = \"5 s\"\nrefresh = true\n");
        assert!(
            errs.contains("operators[0].key") && errs.contains("at least one"),
            "{errs}"
        );
        assert!(
            errs.contains("operators[0].ttl") && errs.contains("malformed"),
            "{errs}"
        );
        assert!(
            errs.contains("operators[0].refresh") && errs.contains("unknown key"),
            "{errs}"
        );
    }
}
