//! Wall-clock formatting shared by the daemon and the offline tools.

/// Formats nanoseconds since the Unix epoch as RFC 3339 UTC with
/// microseconds (tcpdump's precision), without a date-time dependency.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses what [`rfc3339`] writes (and any RFC 3339 UTC time with up to nine
/// fraction digits, `Z` only) back to nanoseconds since the Unix epoch: a
/// recording's or an API answer's wall times, put on one axis by
/// `drainwatch cluster`. None for anything else or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(d).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b.last() != Some(&b'Z') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let frac = &b[19..b.len() - 1];
    let nanos = match frac.split_first() {
        None => 0,
        Some((b'.', digits)) if (1..=9).contains(&digits.len()) => {
            let n = num(20..20 + digits.len())?;
            n * 10i64.pow(9 - digits.len() as u32)
        }
        Some(_) => return None,
    };
    // Howard Hinnant's days-from-civil, the inverse of the formatter's.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_the_formatters_inverse() {
        for ns in [
            0,
            951_782_400_123_456_000,
            1_603_692_121_000_000_000,
            1_796_652_000_000_001_000,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns), "{}", rfc3339(ns));
        }
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.5Z"), Some(500_000_000));
        for bad in [
            "",
            "2026-12-07",
            "2026-12-07T14:00:00+01:00",
            "2026-13-07T14:00:00Z",
            "2026-12-07T14:00:00.Z",
            "2026-12-07T14:00:00.1234567890Z",
            "1969-12-31T23:59:59Z",
            "2026-12-07T14:00:0xZ",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
