//! A W3C trace context (`traceparent`), as records carry it from the
//! webhook that started a trace to the intent and the commit it caused.
//!
//! The engine only carries it: it is stored with records in operator state
//! (a debounced image keeps the trace of its push), so that an intent's
//! output continues the trace of the records behind it. Spans are made by
//! the drivers (`sluice ingest`, `run`, `commit`), never by the engine.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The Kafka header and HTTP header name.
pub const TRACEPARENT: &str = "traceparent";

/// One span's identity in a trace, and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Reads a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`. Later
    /// versions may append fields after the flags, which are ignored as the
    /// W3C spec asks; all-zero ids and version `ff` are invalid.
    pub fn parse(text: &str) -> Option<TraceContext> {
        let text = text.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let version = hex_byte(version)?;
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let mut ctx = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: hex_byte(flags)?,
        };
        hex_into(trace, &mut ctx.trace_id)?;
        hex_into(span, &mut ctx.span_id)?;
        if ctx.trace_id == [0; 16] || ctx.span_id == [0; 8] {
            return None;
        }
        Some(ctx)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn hex_digit(c: u8) -> Option<u8> {
    // Lowercase only, as the W3C spec requires.
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(text: &str) -> Option<u8> {
    let b = text.as_bytes();
    Some(hex_digit(b[0])? << 4 | hex_digit(b[1])?)
}

fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        *out.get_mut(i)? = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let ctx = TraceContext::parse(EXAMPLE).expect("valid");
        assert!(ctx.sampled());
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(ctx.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let ctx = TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-next",
        )
        .expect("future versions keep the first four fields");
        assert!(!ctx.sampled());
    }
}
