//! Release pipelines: a CI build pushes its tags, sometimes several times over, and a bad
//! rollout may trip an alert.

use rand::Rng;

use super::model::{AlertEnv, Candidate, Digest, Event, Push, Tag};
use super::Flood;
use crate::flood::per_mille;

/// Per-mille chance that the prod/staging deployment of a release fires an alert soon after.
const RELEASE_ALERT_PER_MILLE: u32 = 60;
const CANDIDATE_ALERT_PER_MILLE: u32 = 40;

impl Flood {
    fn new_digest(&mut self) -> Digest {
        let mut digest = [0; 32];
        self.rng.fill(&mut digest);
        digest
    }

    /// A CI pipeline builds one image of a service and pushes its tags within seconds.
    pub(super) fn start_release(&mut self, at: u64) {
        let service = self.popular_service();
        let s = service as usize;
        let sha = self.rng.random::<u32>() & 0x0fff_ffff;
        let mut tags = Vec::with_capacity(3);
        let mut fresh_digest = true;
        let mut digest = self.new_digest();
        let environment;
        let mut alert_env = None;

        match per_mille(&mut self.rng) {
            // Branch and pull request builds: the bulk of the pushes.
            0..=649 => {
                environment = "dev";
                if per_mille(&mut self.rng) < 780 {
                    tags.push(Tag::Branch(sha));
                    if per_mille(&mut self.rng) < 200 {
                        tags.push(Tag::Latest);
                    }
                } else {
                    let svc = &mut self.services[s];
                    if self.rng.random_range(0..3) == 0 {
                        svc.pull_request += self.rng.random_range(1..4);
                    }
                    tags.push(Tag::PullRequest(svc.pull_request));
                }
            }
            // Release candidates: a new rc of the pending version, or a new version.
            650..=849 => {
                environment = "staging";
                let svc = &self.services[s];
                let candidate = match svc.candidate {
                    Some(c) if per_mille(&mut self.rng) < 800 => Candidate {
                        rc: c.rc + 1,
                        digest,
                        ..c
                    },
                    // A new version; an abandoned candidate's version is skipped.
                    Some(c) => Candidate {
                        version: c.version.bump(&mut self.rng),
                        rc: 1,
                        digest,
                    },
                    None => Candidate {
                        version: svc.version.bump(&mut self.rng),
                        rc: 1,
                        digest,
                    },
                };
                self.services[s].candidate = Some(candidate);
                tags.push(Tag::Candidate(candidate.version, candidate.rc));
                if per_mille(&mut self.rng) < 500 {
                    tags.push(Tag::Branch(sha));
                }
                if per_mille(&mut self.rng) < CANDIDATE_ALERT_PER_MILLE {
                    alert_env = Some(AlertEnv::Staging);
                }
            }
            // Final releases: usually the promotion of the pending candidate.
            _ => {
                environment = "prod";
                let svc = &self.services[s];
                let version = match svc.candidate {
                    Some(c) => {
                        // Promotion re-tags the tested image instead of rebuilding it.
                        if per_mille(&mut self.rng) < 600 {
                            digest = c.digest;
                            fresh_digest = false;
                        }
                        c.version
                    }
                    None => svc.version.bump(&mut self.rng),
                };
                let svc = &mut self.services[s];
                svc.candidate = None;
                svc.version = version;
                tags.push(Tag::Release(version));
                if per_mille(&mut self.rng) < 400 {
                    tags.push(Tag::Minor(version));
                }
                if per_mille(&mut self.rng) < 350 {
                    tags.push(Tag::Latest);
                }
                if per_mille(&mut self.rng) < RELEASE_ALERT_PER_MILLE {
                    alert_env = Some(if per_mille(&mut self.rng) < 400 {
                        AlertEnv::Unlabelled
                    } else {
                        AlertEnv::Prod
                    });
                }
            }
        }

        // A few pipelines (GitOps promotion hooks) state the environment explicitly.
        let environment = (per_mille(&mut self.rng) < 30).then_some(environment);
        let multi_arch = self.services[s].multi_arch;
        let mut t = at;

        // Multi-arch builds sometimes surface the per-platform manifests, pushed by digest.
        if multi_arch && fresh_digest && per_mille(&mut self.rng) < 300 {
            for _ in 0..2 {
                let platform = self.new_digest();
                let push = Push {
                    service,
                    mirror: false,
                    tag: None,
                    digest: Some(platform),
                    environment,
                };
                self.schedule(t, Event::Image(push));
                t += self.rng.random_range(40..400);
            }
        }

        let base = Push {
            service,
            mirror: false,
            tag: None,
            digest: Some(digest),
            environment,
        };
        let end = self.push_tags(t, base, &tags, multi_arch);

        // Somebody re-runs the pipeline minutes later: identical pushes again.
        if per_mille(&mut self.rng) < 50 {
            let rerun = end + self.rng.random_range(60_000..360_000);
            self.push_tags(rerun, base, &tags, multi_arch);
        }

        if let Some(env) = alert_env {
            self.release_alert(service, env, end);
        }
    }

    /// Schedules the pushes of each tag from `t` on; returns the time of the last one.
    fn push_tags(&mut self, mut t: u64, base: Push, tags: &[Tag], multi_arch: bool) -> u64 {
        let has_mirror = self.services[base.service as usize].mirror.is_some();
        let mut last = t;
        for &tag in tags {
            // A registry without digests in its webhook payload.
            let digest = if per_mille(&mut self.rng) < 30 {
                None
            } else {
                base.digest
            };
            let push = Push {
                tag: Some(tag),
                digest,
                ..base
            };
            // The registry reports a multi-arch push once per manifest: identical records.
            let copies = if multi_arch {
                self.rng.random_range(2..=4)
            } else {
                1
            };
            for _ in 0..copies {
                self.schedule(t, Event::Image(push));
                last = last.max(t);
                t += self.rng.random_range(10..250);
            }
            if has_mirror {
                let mirrored = t + self.rng.random_range(100..600);
                self.schedule(
                    mirrored,
                    Event::Image(Push {
                        mirror: true,
                        ..push
                    }),
                );
                last = last.max(mirrored);
            }
            // A flaky CI step retries and pushes the identical tag again.
            if per_mille(&mut self.rng) < 120 {
                let retry = t + self.rng.random_range(1_000..4_000);
                self.schedule(retry, Event::Image(push));
                last = last.max(retry);
            }
            t += self.rng.random_range(150..1_500);
        }
        last
    }
}
