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

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn iso_from_unix(t: f64) -> String {
    let secs = t.floor() as i64;
    let micros = ((t - secs as f64) * 1e6).round().min(999_999.0) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
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
    }
}
