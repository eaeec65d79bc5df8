//! `[push]` and `[index]`: the bounds on the repository's side, how fast pushes
//! go and how they back off, and how much history the trailers are read from.

use std::num::NonZeroU32;
use std::time::Duration;

use super::PushConfig;
use crate::commit::index::IndexLimits;
use crate::topology::diag::Located;
use crate::topology::reader::TableReader;

pub(super) const DEFAULT_PUSH: PushConfig = PushConfig {
    per_second: NonZeroU32::MIN.saturating_add(9),
    min_backoff: Duration::from_millis(20),
    max_backoff: Duration::from_secs(5),
    give_up_after: Duration::from_secs(300),
};

pub(super) fn read_push(t: &mut TableReader<'_, '_, '_>) -> Option<PushConfig> {
    let per_second = t
        .integer("per_second", 1)
        .map_or(Some(DEFAULT_PUSH.per_second), |n| {
            NonZeroU32::new(u32::try_from(n.value).unwrap_or(u32::MAX))
        });
    let ms = |d: Located<crate::duration::DurationMs>| Duration::from_millis(d.value.as_ms());
    let min_backoff = t
        .duration("min_backoff")
        .map_or(DEFAULT_PUSH.min_backoff, ms);
    let max_backoff = t
        .duration("max_backoff")
        .map_or(DEFAULT_PUSH.max_backoff, ms);
    let give_up_after = t
        .duration("give_up_after")
        .map_or(DEFAULT_PUSH.give_up_after, ms);
    if max_backoff < min_backoff {
        t.diags().error(
            t.pos(),
            t.key_path("max_backoff"),
            "max_backoff is shorter than min_backoff",
        );
        return None;
    }
    Some(PushConfig {
        per_second: per_second?,
        min_backoff,
        max_backoff,
        give_up_after,
    })
}

pub(super) fn read_index(t: &mut TableReader<'_, '_, '_>) -> Option<IndexLimits> {
    let defaults = IndexLimits::default();
    let max_commits = t
        .integer("max_commits", 1)
        .map_or(defaults.max_commits, |n| {
            usize::try_from(n.value).unwrap_or(usize::MAX)
        });
    let max_age = t
        .duration("max_age")
        .map_or(defaults.max_age, |d| Duration::from_millis(d.value.as_ms()));
    Some(IndexLimits {
        max_commits,
        max_age,
    })
}
