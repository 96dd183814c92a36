//! Where the intervals of a time grouping start, and how a span is split across them.
//!
//! The SQL rollup ([`crate::storage::reports`]) cuts every span at 15-minute UTC bucket
//! boundaries and clips it to the report's `[from, to)`; a day or hour is then a union of whole
//! buckets, because every zone's offset is a multiple of 15 minutes. [`split`] is the same rule
//! written plainly: it is what the unit tests pin down (midnight in Europe/Berlin, DST days,
//! 15-minute edges, clipping) and what the storage test compares the SQL against.

use super::time::TzOffsets;
use super::BUCKET_MS;

/// A local period a time grouping cuts the range into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Hour,
    Interval15,
}

impl Period {
    fn local_ms(self) -> i64 {
        match self {
            Period::Day => 86_400_000,
            Period::Hour => 3_600_000,
            Period::Interval15 => BUCKET_MS as i64,
        }
    }
}

/// Starts (UTC ms) of the groups of `[from, to)`: `from` itself, then every instant where a
/// local day / hour / 15 minutes begins. `from` and `to` are multiples of [`BUCKET_MS`]. A DST
/// day is 23 or 25 hours long; its start is where local midnight really is.
pub fn group_starts(from: u64, to: u64, period: Period, tz: &TzOffsets) -> Vec<u64> {
    let mut starts = vec![from];
    let mut b = from + BUCKET_MS;
    while b < to {
        if tz.local_ms(b).rem_euclid(period.local_ms()) == 0 {
            starts.push(b);
        }
        b += BUCKET_MS;
    }
    starts
}

/// The group start that instant `t` (inside `[starts[0], …)`) falls in.
pub fn group_of(t: u64, starts: &[u64]) -> Option<u64> {
    let i = starts.partition_point(|&s| s <= t);
    i.checked_sub(1).map(|i| starts[i])
}

/// Splits span `[start, end)` after clipping it to `[from, to)`: the time it spends in each
/// group (group start, ms), in order. Parts of zero length are left out.
pub fn split(start: u64, end: u64, from: u64, to: u64, starts: &[u64]) -> Vec<(u64, u64)> {
    let (s, e) = (start.max(from), end.min(to));
    let mut pieces = Vec::new();
    if s >= e {
        return pieces;
    }
    for (i, &g) in starts.iter().enumerate() {
        let g_end = starts.get(i + 1).copied().unwrap_or(to);
        let (ps, pe) = (s.max(g), e.min(g_end));
        if ps < pe {
            pieces.push((g, pe - ps));
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    const M: u64 = 60_000;
    /// 2024-03-30T00:00+01:00 (Berlin midnight, the day before DST starts).
    const SAT: u64 = 1_711_753_200_000;

    /// Berlin from Saturday 2024-03-30 00:00 local for three days: +1 h until
    /// 2024-03-31T01:00Z, +2 h after.
    fn berlin() -> TzOffsets {
        let dst = 1_711_846_800_000;
        let offsets_s = (0..3 * 96)
            .map(|i| {
                if SAT + i * BUCKET_MS < dst {
                    3600
                } else {
                    7200
                }
            })
            .collect();
        TzOffsets {
            start_ms: SAT,
            offsets_s,
        }
    }

    #[test]
    fn local_days_around_the_dst_change_are_23_hours() {
        let tz = berlin();
        let starts = group_starts(SAT, SAT + 71 * H, Period::Day, &tz);
        // Sat 00:00+01, Sun 00:00+01 (24 h later), Mon 00:00+02 (23 h later).
        assert_eq!(starts, vec![SAT, SAT + 24 * H, SAT + 47 * H]);
        assert_eq!(tz.label_date(starts[2]), "2024-04-01");
    }

    #[test]
    fn a_span_across_midnight_is_split_at_local_midnight() {
        let tz = berlin();
        let starts = group_starts(SAT, SAT + 71 * H, Period::Day, &tz);
        // Sunday 23:30+02 → Monday 00:20+02.
        let start = SAT + 47 * H - 30 * M;
        let pieces = split(start, start + 50 * M, SAT, SAT + 71 * H, &starts);
        assert_eq!(pieces, vec![(SAT + 24 * H, 30 * M), (SAT + 47 * H, 20 * M)]);
        // Saturday 23:50+01 → Sunday 00:05+01 (UTC midnight is an hour later: no cut there).
        let start = SAT + 24 * H - 10 * M;
        assert_eq!(
            split(start, start + 15 * M, SAT, SAT + 71 * H, &starts),
            vec![(SAT, 10 * M), (SAT + 24 * H, 5 * M)]
        );
    }

    #[test]
    fn hours_on_the_dst_day_skip_the_missing_hour() {
        let tz = berlin();
        let sun = SAT + 24 * H;
        let starts = group_starts(sun, sun + 23 * H, Period::Hour, &tz);
        assert_eq!(starts.len(), 23, "the local day has 23 hours");
        assert_eq!(tz.label_time(starts[1]), "2024-03-31T01:00:00+01:00");
        assert_eq!(tz.label_time(starts[2]), "2024-03-31T03:00:00+02:00");
        // 01:50+01 → 03:10+02 is 20 minutes of wall time across the gap.
        let pieces = split(
            sun + H + 50 * M,
            sun + 2 * H + 10 * M,
            sun,
            sun + 23 * H,
            &starts,
        );
        assert_eq!(pieces, vec![(starts[1], 10 * M), (starts[2], 10 * M)]);
    }

    #[test]
    fn fifteen_minute_boundaries_split_and_clip() {
        let tz = TzOffsets::fixed(SAT, SAT + 2 * H, 3600);
        let (from, to) = (SAT + 15 * M, SAT + 75 * M);
        let starts = group_starts(from, to, Period::Interval15, &tz);
        assert_eq!(
            starts,
            vec![from, from + 15 * M, from + 30 * M, from + 45 * M]
        );
        // 00:10 → 00:50 clipped at 00:15; cut at 00:30 and 00:45.
        assert_eq!(
            split(SAT + 10 * M, SAT + 50 * M, from, to, &starts),
            vec![
                (from, 15 * M),
                (from + 15 * M, 15 * M),
                (from + 30 * M, 5 * M)
            ]
        );
        // Wholly outside, zero length, and a span covering everything.
        assert!(split(SAT, SAT + 15 * M, from, to, &starts).is_empty());
        assert!(split(SAT + 20 * M, SAT + 20 * M, from, to, &starts).is_empty());
        let all: u64 = split(0, u64::MAX, from, to, &starts)
            .iter()
            .map(|p| p.1)
            .sum();
        assert_eq!(all, to - from);
        assert_eq!(group_of(from + 16 * M, &starts), Some(from + 15 * M));
        assert_eq!(group_of(from - 1, &starts), None);
    }

    #[test]
    fn a_range_starting_mid_day_starts_its_first_group_at_from() {
        let tz = berlin();
        let from = SAT + 10 * H;
        assert_eq!(
            group_starts(from, SAT + 30 * H, Period::Day, &tz),
            vec![from, SAT + 24 * H]
        );
    }

    #[test]
    fn half_hour_zones_cut_hours_at_half_past_utc() {
        let tz = TzOffsets::fixed(0, 4 * H, 19_800); // Asia/Kolkata, +05:30
        assert_eq!(
            group_starts(0, 3 * H, Period::Hour, &tz),
            vec![0, 30 * M, 90 * M, 150 * M]
        );
    }
}
