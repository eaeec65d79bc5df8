//! What the branch's trailers say has been done: the intent ids committed,
//! and per (environment, service) the time of the newest intent recorded.
//!
//! Two trailers carry it:
//! - `Sluice-Intent: <id>`: an intent the commit applied or superseded;
//! - `Sluice-Newest: <environment> <service> <ms>`: the newest intent time
//!   (the record's timestamp, ms since the epoch) the commit accounted for,
//!   applied, superseded or already applied. An intent older than that for
//!   its service and environment is never applied again.
//!
//! The index is bounded: it holds the trailers of the last `max_commits`
//! commits of the branch that are at most `max_age` old ([`IndexLimits`]).
//! Start-up reads only those (`git log --max-count --since`), and commits
//! pushed later push the oldest out, so neither start-up time nor memory
//! grows with the repository's age. The cost: an intent redelivered after
//! its commit left the window is judged by the files alone.
//!
//! It also knows which commit lists an id ([`TrailerIndex::commit_of`]), so
//! that a redelivered intent's report names the commit that holds it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::batch::Recorded;
use super::message::{NEWEST_TRAILER, TRAILER};

/// How much history the index covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// At most this many of the branch's newest commits. Default 10,000.
    pub max_commits: usize,
    /// Only commits at most this old (committer date). Default 30 days.
    pub max_age: Duration,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            max_commits: 10_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The newest intent time recorded for one service in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub environment: String,
    pub service: String,
    /// The intent's record timestamp, ms since the epoch.
    pub ts: u64,
}

impl Newest {
    /// The trailer's value: `<environment> <service> <ms>`. Both names are
    /// OCI-style names (no spaces), checked before an intent gets here.
    pub fn trailer_value(&self) -> String {
        format!("{} {} {}", self.environment, self.service, self.ts)
    }

    /// Reads a trailer value; `None` for anything else (a hand-written trailer).
    pub fn parse(value: &str) -> Option<Newest> {
        let mut parts = value.split_whitespace();
        let (environment, service, ts) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Newest {
            environment: environment.to_owned(),
            service: service.to_owned(),
            ts: ts.parse().ok()?,
        })
    }
}

/// A commit that lists an intent id: its object name and committer time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRef {
    /// The full hex object name.
    pub sha: Arc<str>,
    /// Committer time, seconds since the epoch.
    pub time: i64,
}

/// One indexed commit and the ids it lists.
struct Entry {
    commit: CommitRef,
    ids: Vec<String>,
}

/// How often an id is listed in the indexed commits, and the newest of them.
struct Listed {
    count: u32,
    /// Eviction drops the oldest commits first, so the newest listing stays
    /// while any does.
    newest: CommitRef,
}

/// The bounded trailer index of one branch.
pub struct TrailerIndex {
    limits: IndexLimits,
    /// Oldest first.
    commits: VecDeque<Entry>,
    /// Id -> the indexed commits that list it.
    ids: HashMap<String, Listed>,
    /// (environment, service) -> newest recorded intent time. Kept for the
    /// whole run: it has one entry per service that was ever applied.
    newest: HashMap<(String, String), u64>,
}

/// The `git log` format [`TrailerIndex::add_log`] reads: per commit, a record
/// separator, the object name, the committer time, then the two trailer lists.
pub fn log_format() -> String {
    format!(
        "--format=%x1e%H%x00%ct%x00%(trailers:key={TRAILER},valueonly,separator=%x1f)%x00%(trailers:key={NEWEST_TRAILER},valueonly,separator=%x1f)"
    )
}

impl TrailerIndex {
    pub fn new(limits: IndexLimits) -> TrailerIndex {
        TrailerIndex {
            limits,
            commits: VecDeque::new(),
            ids: HashMap::new(),
            newest: HashMap::new(),
        }
    }

    pub fn limits(&self) -> IndexLimits {
        self.limits
    }

    /// Forgets everything (the branch was rewritten).
    pub fn clear(&mut self) {
        self.commits.clear();
        self.ids.clear();
        self.newest.clear();
    }

    pub fn is_committed(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// The newest indexed commit that lists `id`.
    pub fn commit_of(&self, id: &str) -> Option<CommitRef> {
        self.ids.get(id).map(|l| l.newest.clone())
    }

    /// The newest intent time recorded for `service` in `environment`.
    pub fn newest(&self, environment: &str, service: &str) -> Option<u64> {
        self.newest
            .get(&(environment.to_owned(), service.to_owned()))
            .copied()
    }

    /// How many ids the index holds (for logs and tests).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds the output of `git log` in [`log_format`] (newest commit first).
    pub fn add_log(&mut self, log: &str, now: i64) {
        let commits: Vec<&str> = log.split('\x1e').filter(|c| !c.is_empty()).collect();
        for commit in commits.into_iter().rev() {
            let mut fields = commit.splitn(4, '\0');
            let sha = fields.next().unwrap_or("").trim();
            let time = fields
                .next()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(now);
            let ids = values(fields.next().unwrap_or(""));
            let records: Vec<Newest> = values(fields.next().unwrap_or(""))
                .iter()
                .filter_map(|v| Newest::parse(v))
                .collect();
            let commit = CommitRef {
                sha: sha.into(),
                time,
            };
            self.add_commit(commit, ids, &records, now);
        }
    }

    /// Adds one commit (oldest first), then drops what fell out of the window.
    pub fn add_commit(
        &mut self,
        commit: CommitRef,
        ids: Vec<String>,
        records: &[Newest],
        now: i64,
    ) {
        for r in records {
            let slot = self
                .newest
                .entry((r.environment.clone(), r.service.clone()))
                .or_insert(0);
            *slot = (*slot).max(r.ts);
        }
        for id in &ids {
            self.ids
                .entry(id.clone())
                .and_modify(|l| {
                    l.count += 1;
                    l.newest = commit.clone();
                })
                .or_insert_with(|| Listed {
                    count: 1,
                    newest: commit.clone(),
                });
        }
        self.commits.push_back(Entry { commit, ids });
        self.evict(now);
    }

    fn evict(&mut self, now: i64) {
        let oldest_kept = now.saturating_sub(self.limits.max_age.as_secs() as i64);
        while let Some(front) = self.commits.front() {
            if self.commits.len() <= self.limits.max_commits && front.commit.time >= oldest_kept {
                break;
            }
            let Some(entry) = self.commits.pop_front() else {
                break;
            };
            for id in entry.ids {
                if let Some(l) = self.ids.get_mut(&id) {
                    l.count -= 1;
                    if l.count == 0 {
                        self.ids.remove(&id);
                    }
                }
            }
        }
    }
}

impl Recorded for TrailerIndex {
    fn is_committed(&self, intent_id: &str) -> bool {
        TrailerIndex::is_committed(self, intent_id)
    }

    fn newest(&self, environment: &str, service: &str) -> Option<u64> {
        TrailerIndex::newest(self, environment, service)
    }
}

/// The non-empty values of one `%(trailers:...,separator=%x1f)` list.
fn values(list: &str) -> Vec<String> {
    list.split('\x1f')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Seconds since the epoch, for the index's age bound.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(env: &str, service: &str, ts: u64) -> Newest {
        Newest {
            environment: env.into(),
            service: service.into(),
            ts,
        }
    }

    #[test]
    fn newest_trailers_round_trip_and_junk_is_ignored() {
        let n = newest("prod", "svc-00", 1_700_000_000_123);
        assert_eq!(Newest::parse(&n.trailer_value()), Some(n));
        assert_eq!(Newest::parse("prod svc"), None);
        assert_eq!(Newest::parse("prod svc 12 extra"), None);
        assert_eq!(Newest::parse("prod svc soon"), None);
    }

    fn commit(sha: &str, time: i64) -> CommitRef {
        CommitRef {
            sha: sha.into(),
            time,
        }
    }

    #[test]
    fn the_log_is_read_newest_first_and_the_maximum_time_wins() {
        let mut index = TrailerIndex::new(IndexLimits::default());
        let now = 1_000_000;
        let log = format!(
            "\x1ec2\0{}\0b\x1fc\0prod api 20\n\x1ec1\0{}\0a\x1fb\0prod api 30\x1fprod web 5\n",
            now - 10,
            now - 20
        );
        index.add_log(&log, now);
        assert!(index.is_committed("a") && index.is_committed("b") && index.is_committed("c"));
        assert_eq!(index.newest("prod", "api"), Some(30));
        assert_eq!(index.newest("prod", "web"), Some(5));
        assert_eq!(index.newest("dev", "api"), None);
        assert_eq!(index.commit_of("a"), Some(commit("c1", now - 20)));
        assert_eq!(
            index.commit_of("b"),
            Some(commit("c2", now - 10)),
            "listed twice: the newest commit"
        );
        assert_eq!(index.commit_of("nope"), None);
    }

    #[test]
    fn an_id_listed_twice_keeps_its_newest_commit_when_the_oldest_leaves() {
        let limits = IndexLimits {
            max_commits: 2,
            max_age: Duration::from_secs(100),
        };
        let mut index = TrailerIndex::new(limits);
        let now = 1_000;
        index.add_commit(commit("c1", now), vec!["a".into()], &[], now);
        index.add_commit(commit("c2", now), vec!["a".into(), "b".into()], &[], now);
        index.add_commit(commit("c3", now), vec!["c".into()], &[], now);
        assert_eq!(index.commit_of("a"), Some(commit("c2", now)), "c1 left");
        assert_eq!(index.commit_of("b"), Some(commit("c2", now)));
        index.add_commit(commit("c4", now), vec![], &[], now);
        assert_eq!(index.commit_of("a"), None, "c2 left too");
    }

    #[test]
    fn ids_leave_by_count_and_by_age() {
        let limits = IndexLimits {
            max_commits: 2,
            max_age: Duration::from_secs(100),
        };
        let mut index = TrailerIndex::new(limits);
        let now = 1_000;
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            index.add_commit(
                commit(id, now),
                vec![(*id).into()],
                &[newest("prod", id, i as u64)],
                now,
            );
        }
        assert!(!index.is_committed("a"), "the oldest of three left");
        assert!(index.is_committed("b") && index.is_committed("c"));
        assert_eq!(index.newest("prod", "a"), Some(0), "newest times stay");
        index.add_commit(commit("d", now + 150), vec!["d".into()], &[], now + 150);
        assert!(
            !index.is_committed("b") && !index.is_committed("c"),
            "too old"
        );
        assert!(index.is_committed("d"));
        assert_eq!(index.len(), 1);
    }
}
