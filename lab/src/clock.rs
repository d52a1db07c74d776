//! Wall-clock timestamps and the lab's time scale.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch. Every lab process uses the same wall clock, so
/// timestamps written by different processes (apiserver, clients, the runner) compare.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds in UTC, e.g. `2026-11-23T12:49:49.123Z`.
pub fn rfc3339_ms(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// RFC 3339 in whole seconds, as Kubernetes writes `creationTimestamp`.
pub fn rfc3339_s(ns: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(ns / 1_000_000_000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Converts Unix seconds to a proleptic Gregorian UTC date and time (Howard Hinnant's
/// days-from-civil inverse), so no date crate is needed for two timestamp formats.
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Shrinks real-world durations (a 70 s shutdown delay, a 4 min idle timeout) so a
/// scenario runs in seconds while keeping every ratio between them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimeScale(pub f64);

impl TimeScale {
    /// Scales a duration given in real-world seconds.
    pub fn secs(self, real_secs: f64) -> Duration {
        Duration::from_secs_f64((real_secs * self.0).max(0.0))
    }
}

/// Parses `70s`, `250ms`, `4m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 70s, 250ms, 4m"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!(
            "invalid duration {s:?}: must be a non-negative number"
        ));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instant() {
        // 2026-11-23T12:49:49.123Z
        let ns = 1_795_438_189_123_000_000;
        assert_eq!(rfc3339_ms(ns), "2026-11-23T12:49:49.123Z");
        assert_eq!(rfc3339_s(ns), "2026-11-23T12:49:49Z");
        assert_eq!(rfc3339_s(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("70s"), Ok(Duration::from_secs(70)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("4m"), Ok(Duration::from_secs(240)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn scales() {
        assert_eq!(TimeScale(0.1).secs(70.0), Duration::from_secs(7));
    }
}
