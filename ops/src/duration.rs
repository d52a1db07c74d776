//! Durations as operators write them (`10s`, `1m30s`, `500ms`, bare seconds) and as Go
//! programs such as kube-apiserver print them (`1m10s`), plus compact display.

use std::time::Duration;

use thiserror::Error;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 10s, 1m30s, 500ms or bare seconds)")]
pub struct DurationError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses `10s`, `1m30s`, `1.5h`, `500ms`, `250us`, `30` (bare number = seconds).
///
/// Go's unit set is accepted because kube-apiserver flags such as
/// `--shutdown-delay-duration` are Go durations and are read from manifests verbatim.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("empty"));
    }
    if text.starts_with('-') {
        return Err(err("negative durations make no sense here"));
    }
    let text = text.strip_prefix('+').unwrap_or(text);

    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        if number.is_empty() {
            return Err(err("a unit must follow a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        // A bare number is only allowed as the whole input: `1m30` is ambiguous.
        if unit.is_empty() && !(rest.len() == text.len() && after.is_empty()) {
            return Err(err("every number after the first needs a unit"));
        }
        let unit_nanos: u128 = match unit {
            "" | "s" => NANOS_PER_SEC,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            _ => return Err(err("unknown unit (use h, m, s, ms, us or ns)")),
        };
        total = total
            .checked_add(scaled(number, unit_nanos).ok_or_else(|| err("not a number"))?)
            .ok_or_else(|| err("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| err("too large"))?;
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| err("too large"))?;
    Ok(Duration::new(secs, nanos))
}

/// `number` (digits, at most one '.') times `unit_nanos`, without going through floats so
/// that `0.1s` is exactly 100ms.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return None;
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    // Digits past nanosecond precision of the largest unit cannot matter.
    let frac_digits = &frac_part[..frac_part.len().min(12)];
    let frac: u128 = if frac_digits.is_empty() {
        0
    } else {
        frac_digits.parse().ok()?
    };
    let frac_scale = 10u128.checked_pow(u32::try_from(frac_digits.len()).ok()?)?;
    int.checked_mul(unit_nanos)?
        .checked_add(frac.checked_mul(unit_nanos)? / frac_scale)
}

/// Compact display: `30s`, `1.5s`, `500ms`, `0s`. Millisecond precision is enough for
/// health-check timing and keeps output readable.
pub fn format_duration(d: Duration) -> String {
    format_millis(i128::try_from(d.as_millis()).unwrap_or(i128::MAX))
}

/// Like [`format_duration`] for a signed number of milliseconds (margins can be negative).
pub fn format_millis(ms: i128) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    if abs.is_multiple_of(1000) {
        format!("{sign}{}s", abs / 1000)
    } else if abs < 1000 {
        format!("{sign}{abs}ms")
    } else {
        let frac = format!("{:03}", abs % 1000);
        format!("{sign}{}.{}s", abs / 1000, frac.trim_end_matches('0'))
    }
}

/// `a - b` in milliseconds, signed.
pub fn diff_millis(a: Duration, b: Duration) -> i128 {
    let a = i128::try_from(a.as_millis()).unwrap_or(i128::MAX);
    let b = i128::try_from(b.as_millis()).unwrap_or(i128::MAX);
    a - b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap()
    }

    #[test]
    fn accepts_operator_and_go_forms() {
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m0s"), Duration::from_secs(60));
        assert_eq!(ok(" 70s "), Duration::from_secs(70));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage_with_reason() {
        for bad in ["", "abc", "10x", "-5s", "1m30", "s", "1..2s", "10 s s", "."] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("invalid duration"), "{e}");
        }
        assert!(parse_duration("99999999999999999999999999h").is_err());
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_millis(-10_000), "-10s");
        assert_eq!(format_millis(-250), "-250ms");
        assert_eq!(
            diff_millis(Duration::from_secs(20), Duration::from_secs(30)),
            -10_000
        );
    }
}
