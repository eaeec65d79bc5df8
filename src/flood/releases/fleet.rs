//! The fleet: its services, the registries they push to, and how popular each one is.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::model::{Service, Version};
use super::Flood;
use crate::flood::{index, per_mille};

/// Registries a team may push to; "" stands for the Docker Hub default (no host in the path).
const REGISTRIES: [&str; 6] = [
    "registry.example.com:5000",
    "ghcr.io",
    "registry.gitlab.example.com",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "harbor.internal:8443",
    "",
];
/// Where a mirrored service's images are copied to as well.
const MIRROR_REGISTRY: &str = "mirror.example.net";

/// Zipf offset: service of popularity rank r is picked with weight 1 / (r + offset). An offset
/// above 1 flattens the head so the busiest service gets roughly 10% of the pipelines.
const ZIPF_OFFSET: u64 = 3;

/// The `count` services, grouped in teams of about eight that share a registry.
pub(super) fn services(rng: &mut ChaCha8Rng, count: u32) -> Vec<Service> {
    let width = count.to_string().len().max(4);
    let teams = count.div_ceil(8);
    let team_registries: Vec<&str> = (0..teams)
        .map(|_| REGISTRIES[index(rng, REGISTRIES.len())])
        .collect();
    (0..count)
        .map(|i| {
            let name = format!("svc-{i:0width$}");
            let team = rng.random_range(0..teams);
            let registry = team_registries[team as usize];
            let path = format!("team-{team}/{name}");
            let repository = if registry.is_empty() {
                path.clone()
            } else {
                format!("{registry}/{path}")
            };
            let mirror = (per_mille(rng) < 100).then(|| format!("{MIRROR_REGISTRY}/{path}"));
            Service {
                name,
                repository,
                mirror,
                multi_arch: per_mille(rng) < 600,
                version: Version {
                    major: rng.random_range(0..4),
                    minor: rng.random_range(0..25),
                    patch: rng.random_range(0..12),
                },
                candidate: None,
                pull_request: rng.random_range(1..2_000),
                last_release_alert: None,
                firing: 0,
            }
        })
        .collect()
}

/// Cumulative Zipf weights, indexed by service.
pub(super) fn popularity(rng: &mut ChaCha8Rng, count: u32) -> Vec<u64> {
    // Popularity ranks are shuffled so the busiest services are not simply the first ones.
    let mut ranks: Vec<u64> = (0..u64::from(count)).collect();
    for i in (1..ranks.len()).rev() {
        let j = index(rng, i + 1);
        ranks.swap(i, j);
    }
    let mut total = 0;
    ranks
        .iter()
        .map(|rank| {
            total += (1 << 40) / (rank + ZIPF_OFFSET);
            total
        })
        .collect()
}

impl Flood {
    /// Picks a service, busy services far more often.
    pub(super) fn popular_service(&mut self) -> u32 {
        let total = self.popularity.last().copied().unwrap_or(1);
        let x = self.rng.random_range(0..total);
        let i = self.popularity.partition_point(|&c| c <= x);
        u32::try_from(i).unwrap_or(0)
    }

    pub(super) fn any_service(&mut self) -> u32 {
        self.rng.random_range(0..self.service_count)
    }
}
