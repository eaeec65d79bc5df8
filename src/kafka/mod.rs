//! Kafka plumbing shared by the commands that talk to a cluster.

pub mod acls;
pub mod listed;
pub mod record;
pub mod run;

use rdkafka::ClientConfig;

use crate::topology::kafka::{KafkaConfig, SecretError};

/// Builds a librdkafka client config from a topology's `[kafka]` table.
/// Secrets are resolved here and go nowhere else: `ClientConfig`'s own
/// `Debug` is never printed by Sluice, and errors name only properties.
pub fn client_config(kafka: &KafkaConfig, brokers: &str) -> Result<ClientConfig, SecretError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    for (name, secret) in kafka.resolve_secrets()? {
        config.set(name, secret.expose());
    }
    Ok(config)
}

/// Parses a point in time for `--from`/`--to`: milliseconds since the epoch,
/// RFC 3339 (`2026-11-26T12:00:00Z`), `now`, or `-<duration>` before now (`-1h30m`).
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let d = crate::duration::parse_duration(ago)?;
        return Ok(now_ms.saturating_sub(d.as_ms()));
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("`{text}` is not a time: use milliseconds since the epoch, RFC 3339, `now` or `-1h` ({e})")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?
        .as_millis();
    u64::try_from(ms).map_err(|_| format!("`{text}` is too far in the future"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_accepted_form() {
        let now = 1_767_225_600_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("1767225600123", now), Ok(1_767_225_600_123));
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z", now),
            Ok(1_767_225_600_000)
        );
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .contains("not a time"));
        assert!(parse_time("-0s", now).is_err());
    }
}
