//! Wall-clock time as the JSON API shows it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as a float (the reference's `created_at` / `updated_at`).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// UTC ISO-8601 with microseconds and a `Z` suffix (the reference's `now_iso()`).
pub fn iso_now() -> String {
    iso_from_unix(unix_now())
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (digits written by hand: every run
/// change and plugin call stamps one or two of these, and `format!` was a visible share of a call).
pub fn iso_from_unix(t: f64) -> String {
    let secs = t.floor() as i64;
    let micros = ((t - secs as f64) * 1e6).round().min(999_999.0) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(27);
    if (0..=9999).contains(&y) {
        push_digits(&mut out, y as u32, 4);
    } else {
        out.push_str(&format!("{y:04}"));
    }
    for (sep, value, width) in [
        ('-', m, 2),
        ('-', d, 2),
        ('T', rem / 3600, 2),
        (':', (rem % 3600) / 60, 2),
        (':', rem % 60, 2),
        ('.', micros, 6),
    ] {
        out.push(sep);
        push_digits(&mut out, value, width);
    }
    out.push('Z');
    out
}

/// `value` in decimal, zero-padded to `width` digits (`value` < 10^width).
fn push_digits(out: &mut String, value: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + (value / div % 10) as u8));
        div /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso_from_unix(0.0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            iso_from_unix(1_769_408_037.123456),
            "2026-01-26T06:13:57.123456Z"
        );
        assert_eq!(iso_from_unix(-0.5), "1969-12-31T23:59:59.500000Z");
        assert_eq!(
            iso_from_unix(253_402_300_799.5),
            "9999-12-31T23:59:59.500000Z"
        );
        assert_eq!(iso_from_unix(951_782_400.0), "2000-02-29T00:00:00.000000Z");
    }
}
