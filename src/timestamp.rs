//! RFC 3339 timestamps as the API server writes them (`2026-11-24T14:55:27.763391Z`).
//!
//! Event time matters twice: the batcher keeps a batch within 1 s of
//! `requestReceivedTimestamp` and sends its earliest time in `X-SEKOIAIO-EVENT-TIMESTAMP`
//! (DESIGN.md §5), and `bench` derives the file's event rate from it. Parsing is strict and
//! allocation-free; anything unexpected is `None`, never a guess.

/// Microseconds since the Unix epoch for an RFC 3339 date-time with `Z` or a `±hh:mm` offset
/// and up to nanosecond precision (digits past microseconds are dropped).
pub fn parse_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 admits a leap second; it is folded into the next minute as arithmetic does.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in tail[..n].iter().enumerate().take(6) {
            micros += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
        }
        rest = &tail[n..];
    }
    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Formats unix microseconds as RFC 3339 UTC with microseconds, the way the API server
/// writes `requestReceivedTimestamp` (`2026-11-24T14:55:27.763391Z`).
pub fn format_micros(micros: i64) -> String {
    let mut out = Vec::with_capacity(32);
    write_micros(&mut out, micros);
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends the [`format_micros`] text to `out` without allocating (once `out` has room): the
/// batcher writes one per event.
pub fn write_micros(out: &mut Vec<u8>, micros: i64) {
    use std::io::Write;
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::{format_micros, parse_micros};

    #[test]
    fn parses_what_the_api_server_writes() {
        // date -u -d 2026-11-24T14:55:27Z +%s → 1795532127
        assert_eq!(
            parse_micros("2026-11-24T14:55:27.763391Z"),
            Some(1_795_532_127_763_391)
        );
        assert_eq!(parse_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_micros("2024-02-29T00:00:00.5Z"),
            Some(1_709_164_800_500_000)
        );
        assert_eq!(
            parse_micros("2022-11-23T14:36:45.243457123Z"),
            Some(1_669_214_205_243_457)
        );
        assert_eq!(
            parse_micros("2026-11-24T15:55:27+01:00"),
            parse_micros("2026-11-24T14:55:27Z")
        );
        assert_eq!(parse_micros("1969-12-31T23:59:59Z"), Some(-1_000_000));
    }

    #[test]
    fn formats_back_what_it_parses() {
        for t in [
            "2026-11-24T14:55:27.763391Z",
            "1970-01-01T00:00:00.000000Z",
            "2024-02-29T23:59:59.999999Z",
            "1969-12-31T23:59:59.500000Z",
            "2100-03-01T00:00:00.000001Z",
        ] {
            assert_eq!(format_micros(parse_micros(t).unwrap()), t);
        }
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            "2026-11-24",
            "2026-11-24T14:55:27",
            "2026-13-24T14:55:27Z",
            "2023-02-29T14:55:27Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T14:55:27.Z",
            "2026-11-24T14:55:27.1ZZ",
            "2026-11-24T14:55:27+0100",
            "２026-11-24T14:55:27Z",
        ] {
            assert_eq!(parse_micros(bad), None, "{bad:?}");
        }
    }
}
