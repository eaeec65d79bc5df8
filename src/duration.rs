//! Durations as written in topology files: one or more `<integer><unit>` groups.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in milliseconds since the epoch (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A non-zero span of time in whole milliseconds.
///
/// The engine keeps time in milliseconds, so a duration is exactly that many ms;
/// `1h30m` and `90m` are the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationMs(u64);

impl DurationMs {
    /// Builds a duration from milliseconds; `None` for zero, which no operator accepts.
    pub fn from_ms(ms: u64) -> Option<Self> {
        (ms > 0).then_some(Self(ms))
    }

    /// The duration in milliseconds (always at least 1).
    pub fn as_ms(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 5] = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ];
        let mut rest = self.0;
        for (unit, size) in UNITS {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

/// Parses `250ms`, `30s`, `1h30m`, ... Units: `ms s m h d`. Zero and overflow are errors.
pub fn parse_duration(text: &str) -> Result<DurationMs, String> {
    if text.is_empty() {
        return Err("empty duration; write e.g. `30s` or `1h30m`".into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "malformed duration `{text}`: expected a number at `{rest}` (units: ms s m h d)"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "malformed duration `{text}`: `{number}` has no unit (units: ms s m h d)"
                ))
            }
            other => {
                return Err(format!(
                    "malformed duration `{text}`: unknown unit `{other}` (units: ms s m h d)"
                ))
            }
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?;
        total = value
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
        rest = tail;
    }
    DurationMs::from_ms(total).ok_or_else(|| format!("duration `{text}` must be greater than zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse_duration("250ms").unwrap().as_ms(), 250);
        assert_eq!(parse_duration("30s").unwrap().as_ms(), 30_000);
        assert_eq!(parse_duration("1h30m").unwrap().as_ms(), 5_400_000);
        assert_eq!(parse_duration("2d").unwrap().as_ms(), 172_800_000);
        assert_eq!(parse_duration("1m0s5ms").unwrap().as_ms(), 60_005);
    }

    #[test]
    fn rejects_zero_malformed_and_overflow() {
        for bad in [
            "",
            "0s",
            "0ms0s",
            "10",
            "s",
            "1x",
            "1.5s",
            "-1s",
            "1 s",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn displays_in_largest_units() {
        assert_eq!(DurationMs::from_ms(5_400_000).unwrap().to_string(), "1h30m");
        assert_eq!(DurationMs::from_ms(1_250).unwrap().to_string(), "1s250ms");
    }
}
