//! What an endpoint refuses before decoding: too many requests (a GCRA
//! limit per endpoint, governor), too large a body (never read past the
//! limit), a content type its format cannot be.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::format::Format;
use crate::topology::reader::TableReader;

/// `rate_limit = { per_second = N, burst = M }` (burst defaults to N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

pub(super) fn read_rate_limit(t: &mut TableReader<'_, '_, '_>) -> Option<Option<RateLimit>> {
    let diags = t.diags();
    let Some(value) = t.take("rate_limit") else {
        return Some(None);
    };
    let mut r = TableReader::new(diags, value, t.key_path("rate_limit"))?;
    let present = r.contains("per_second");
    let per_second = r.integer("per_second", 1);
    if !present {
        r.missing("per_second");
    }
    let burst = r.integer("burst", 1);
    r.finish();
    let to_u32 = |v: u64| NonZeroU32::new(u32::try_from(v).unwrap_or(u32::MAX));
    let per_second = to_u32(per_second?.value)?;
    let burst = burst.map_or(Some(per_second), |b| to_u32(b.value))?;
    Some(Some(RateLimit { per_second, burst }))
}

/// One endpoint's limiter.
pub struct Limiter {
    limiter: DefaultDirectRateLimiter,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Limiter {
            limiter: RateLimiter::direct(quota),
        }
    }

    /// `Err(wait)` when the request is over the limit: how long until one
    /// would be let through (the `Retry-After`).
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Whole seconds for `Retry-After`, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than `max_body` (declared, or found while reading).
    TooLarge,
    /// The client went away or sent a broken stream.
    Broken,
}

/// Refuses a request whose declared `Content-Length` is already too large,
/// before a byte of its body is read.
pub fn declared_too_large(headers: &HeaderMap, max_body: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > max_body as u64)
}

/// Reads the body, stopping as soon as it passes `max_body` bytes (a sender
/// that lied about its length, or sent it chunked, is read no further).
pub async fn read_body(body: Body, max_body: usize) -> Result<Bytes, BodyError> {
    axum::body::to_bytes(body, max_body).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            BodyError::TooLarge
        } else {
            BodyError::Broken
        }
    })
}

/// Whether the request's content type can be the endpoint's format.
pub fn content_type_fits(format: Format, headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => format.accepts_content_type(None),
        Some(v) => v
            .to_str()
            .is_ok_and(|ct| format.accepts_content_type(Some(ct))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_declared_length_above_the_limit_is_refused_unread() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1025"));
        assert!(declared_too_large(&h, 1024));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1024"));
        assert!(!declared_too_large(&h, 1024));
        assert!(!declared_too_large(&HeaderMap::new(), 1024));
    }

    #[tokio::test]
    async fn reading_stops_past_the_limit() {
        let body = Body::from(vec![b'x'; 2048]);
        assert_eq!(read_body(body, 1024).await, Err(BodyError::TooLarge));
        let body = Body::from(vec![b'x'; 1024]);
        assert_eq!(read_body(body, 1024).await.map(|b| b.len()), Ok(1024));
    }

    #[test]
    fn json_formats_take_json_types_and_nothing_else() {
        let mut h = HeaderMap::new();
        assert!(content_type_fits(Format::Json, &h), "no type: old senders");
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.docker.distribution.events.v1+json",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(content_type_fits(Format::Distribution, &h), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "image/png",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(bad));
            assert!(!content_type_fits(Format::Json, &h), "{bad}");
        }
    }

    #[test]
    fn the_limiter_refuses_past_its_burst_and_says_how_long_to_wait() {
        let limiter = Limiter::new(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(2).unwrap(),
        });
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_ok());
        let wait = limiter.check().unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }
}
