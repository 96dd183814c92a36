//! Instants, civil dates and a time zone's offsets, without a time-zone library: ClickHouse
//! knows the zones, and [`TzOffsets`] carries what it said about one report's range.

use super::BUCKET_MS;

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an instant given as milliseconds since the epoch (`1711839600000`) or as RFC 3339
/// (`2024-03-31T00:00:00+01:00`, `2024-03-30T23:00:00.000Z`; `t`/`z` and a space instead of
/// `T` are accepted, as RFC 3339 allows).
pub fn parse_instant(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("{s:?} is too large"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("{s:?} is neither milliseconds since the epoch nor RFC 3339 (e.g. 2024-03-31T00:00:00+01:00)")
    })
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (number(&s[0..4])?, number(&s[5..7])?, number(&s[8..10])?);
    let (h, mi, sec) = (
        number(&s[11..13])?,
        number(&s[14..16])?,
        number(&s[17..19])?,
    );
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(i64::from(y), mo)
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0u64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: first three digits, the rest truncated.
        let ms: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = u64::from(number(&ms)?);
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let (oh, om) = (number(&rest[1..3])?, number(&rest[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if rb[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset_s;
    let ms = secs.checked_mul(1000)?.checked_add(millis as i64)?;
    u64::try_from(ms).ok()
}

/// Parses ClickHouse's `YYYY-MM-DD hh:mm:ss` as a naive wall-clock time, in ms since the epoch
/// as if it were UTC.
pub fn parse_naive(s: &str) -> Option<i64> {
    parse_rfc3339(&format!("{}Z", s.trim())).map(|ms| ms as i64)
}

/// The UTC offset of one time zone at every 15-minute bucket of a range, as ClickHouse reported
/// it. Local time of an instant `t` in the range is `t + offset(t)`.
#[derive(Clone, Debug, PartialEq)]
pub struct TzOffsets {
    /// First bucket (UTC ms, a multiple of [`BUCKET_MS`]).
    pub start_ms: u64,
    /// Offset in seconds of each bucket from `start_ms` on.
    pub offsets_s: Vec<i32>,
}

impl TzOffsets {
    /// A zone with a fixed offset (UTC: 0) over `[start_ms, end_ms)`.
    pub fn fixed(start_ms: u64, end_ms: u64, offset_s: i32) -> TzOffsets {
        let start_ms = start_ms - start_ms % BUCKET_MS;
        let n = end_ms.saturating_sub(start_ms).div_ceil(BUCKET_MS) as usize;
        TzOffsets {
            start_ms,
            offsets_s: vec![offset_s; n.max(1)],
        }
    }

    /// Offset (ms) at instant `t`; outside the range the nearest known offset.
    pub fn offset_ms(&self, t: u64) -> i64 {
        let i = (t.saturating_sub(self.start_ms) / BUCKET_MS) as usize;
        let i = i.min(self.offsets_s.len().saturating_sub(1));
        i64::from(self.offsets_s.get(i).copied().unwrap_or(0)) * 1000
    }

    /// Local wall-clock time of `t`, in ms since the local epoch.
    pub fn local_ms(&self, t: u64) -> i64 {
        t as i64 + self.offset_ms(t)
    }

    /// `2024-03-31T03:00:00+02:00`.
    pub fn label_time(&self, t: u64) -> String {
        let local = self.local_ms(t);
        let offset_min = self.offset_ms(t) / 60_000;
        let (y, m, d) = civil_from_days(local.div_euclid(MS_PER_DAY));
        let in_day = local.rem_euclid(MS_PER_DAY) / 1000;
        let sign = if offset_min < 0 { '-' } else { '+' };
        let o = offset_min.abs();
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60,
            o / 60,
            o % 60
        )
    }

    /// `2024-03-31`: the local date of `t`.
    pub fn label_date(&self, t: u64) -> String {
        let (y, m, d) = civil_from_days(self.local_ms(t).div_euclid(MS_PER_DAY));
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// `t` as RFC 3339 in UTC with milliseconds.
pub fn rfc3339_utc(t: u64) -> String {
    TzOffsets::fixed(t, t + 1, 0)
        .label_time(t)
        .replace("+00:00", "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_in_both_forms() {
        assert_eq!(parse_instant("1711839600000").unwrap(), 1_711_839_600_000);
        assert_eq!(
            parse_instant("2024-03-31T00:00:00+01:00").unwrap(),
            1_711_839_600_000
        );
        assert_eq!(
            parse_instant("2024-03-30T23:00:00Z").unwrap(),
            1_711_839_600_000
        );
        assert_eq!(
            parse_instant("2024-03-30t23:00:00.25z").unwrap(),
            1_711_839_600_250
        );
        assert_eq!(
            parse_instant("2024-03-30 18:00:00.123456-05:00").unwrap(),
            1_711_839_600_123
        );
        assert_eq!(parse_instant("1970-01-01T00:00:00Z").unwrap(), 0);
        for bad in [
            "",
            "yesterday",
            "2024-02-30T00:00:00Z",
            "2024-03-31T24:00:00Z",
            "2024-03-31T00:00:00",
            "2024-03-31",
            "-5",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1, 0, 59, 365, 11_016, 19_813, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(19_813), (2024, 3, 31));
        assert_eq!(parse_naive("2024-03-31 03:00:00"), Some(1_711_854_000_000));
    }

    #[test]
    fn labels_show_local_time_and_offset() {
        // Berlin, 2024-03-31: +01:00 until 01:00 UTC, +02:00 after.
        let start = 1_711_839_600_000; // 2024-03-30T23:00Z = local midnight
        let mut offsets_s = vec![3600; 8];
        offsets_s.extend(vec![7200; 88]);
        let tz = TzOffsets {
            start_ms: start,
            offsets_s,
        };
        assert_eq!(tz.label_time(start), "2024-03-31T00:00:00+01:00");
        assert_eq!(
            tz.label_time(start + 2 * 3_600_000),
            "2024-03-31T03:00:00+02:00"
        );
        assert_eq!(tz.label_date(start), "2024-03-31");
        assert_eq!(
            tz.label_date(start - 1),
            "2024-03-30",
            "before the range: the first known offset"
        );
        assert_eq!(rfc3339_utc(1_711_839_600_000), "2024-03-30T23:00:00Z");
        let kolkata = TzOffsets::fixed(0, BUCKET_MS * 4, 19_800);
        assert_eq!(kolkata.label_time(0), "1970-01-01T05:30:00+05:30");
        let west = TzOffsets::fixed(86_400_000, 86_400_000 + BUCKET_MS, -9000);
        assert_eq!(west.label_time(86_400_000), "1970-01-01T21:30:00-02:30");
    }
}
