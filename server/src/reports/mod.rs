//! Performance reports for workforce managers: the pure parts (no I/O).
//!
//! The metric definitions are written down in `docs/metrics.md`; this module and the SQL in
//! [`crate::storage::reports`] implement exactly those. Pieces:
//!
//! - [`time`]: instants (RFC 3339 or epoch ms), civil dates, a time zone's UTC offsets over a
//!   report's range ([`time::TzOffsets`], read from ClickHouse) and local labels.
//! - [`split`]: where groups of a time grouping start, and how a span is clipped to the
//!   report's range and split across them — the reference the SQL rollup must agree with.
//! - [`metrics`]: the formulas (occupancy, SLA compliance, median / p90 of handle times).
//! - [`csv`]: RFC 4180 output.
//! - [`Report`] and [`ReportRow`]: what the endpoint answers.
//!
//! **Architecture invariant:** every figure a report shows is defined in `docs/metrics.md`;
//! changing a formula here or in the SQL without changing that page is a bug.

pub mod csv;
pub mod metrics;
pub mod split;
pub mod time;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Width of the rollup's buckets and the finest grouping (15 minutes). Every time zone in use
/// today is offset from UTC by a multiple of 15 minutes, so a 15-minute UTC bucket lies inside
/// one local hour and one local day.
pub const BUCKET_MS: u64 = 15 * 60 * 1000;
/// Longest range one report may cover.
pub const MAX_RANGE_MS: u64 = 92 * 86_400_000;
/// How far before `from` work on an item still counts towards its handle time.
pub const HANDLE_LOOKBACK_MS: u64 = 31 * 86_400_000;

/// What a report's rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Team,
    Person,
    Queue,
    Device,
    Day,
    Hour,
    Interval15,
}

impl GroupBy {
    pub const ALL: [GroupBy; 7] = [
        GroupBy::Team,
        GroupBy::Person,
        GroupBy::Queue,
        GroupBy::Device,
        GroupBy::Day,
        GroupBy::Hour,
        GroupBy::Interval15,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Person => "person",
            GroupBy::Queue => "queue",
            GroupBy::Device => "device",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Interval15 => "interval15",
        }
    }

    /// The local period of a time grouping (`None` for the others).
    pub fn period(self) -> Option<split::Period> {
        match self {
            GroupBy::Day => Some(split::Period::Day),
            GroupBy::Hour => Some(split::Period::Hour),
            GroupBy::Interval15 => Some(split::Period::Interval15),
            _ => None,
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GroupBy::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = GroupBy::ALL.iter().map(|g| g.as_str()).collect();
                format!("unknown group_by {s:?}: expected one of {}", all.join(", "))
            })
    }
}

/// How the answer is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(format!("unknown format {s:?}: expected json or csv")),
        }
    }
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`, `Etc/GMT+1`), parsed at the boundary so
/// nothing else has to check it. Only the syntax is checked here, to keep odd strings away
/// from ClickHouse; whether ClickHouse knows the zone is learnt when its offsets are read
/// ([`crate::storage::reports::zone_offsets`]). SQL always binds it, never splices it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeZone(String);

impl TimeZone {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TimeZone {
    type Err = String;

    fn from_str(tz: &str) -> Result<Self, Self::Err> {
        let plausible = !tz.is_empty()
            && tz.len() <= 64
            && tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
            && !tz.starts_with('/')
            && !tz.contains("..");
        if plausible {
            Ok(TimeZone(tz.to_string()))
        } else {
            Err(format!(
                "{tz:?} is not a time zone name (e.g. Europe/Berlin)"
            ))
        }
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TimeZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Time figures of one group, from the rollup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimeFigures {
    pub productive_ms: u64,
    pub other_ms: u64,
    pub idle_ms: u64,
}

/// Item figures of one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemFigures {
    pub items_handled: u64,
    pub handle_times_ms: metrics::HandleTimes,
    pub sla_items_with_due: u64,
    pub sla_items_met: u64,
}

/// Backlog figures (of a queue, or of everything the report's filter selects).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Backlog {
    pub count: u64,
    pub mean_age_ms: Option<f64>,
    pub max_age_ms: Option<u64>,
}

/// Figures of one group of a report (a team, person, queue, device or interval start, as
/// [`GroupBy`] names it), as storage computes them.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupFigures<F> {
    pub group: String,
    pub figures: F,
}

/// Item figures of a report per group, and of all groups together (each item counted once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemFiguresByGroup {
    pub groups: Vec<GroupFigures<ItemFigures>>,
    /// `None` when nothing was completed.
    pub total: Option<ItemFigures>,
}

/// The open items of one queue as of the end of a report's range.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueBacklog {
    pub queue: String,
    pub count: u64,
    /// The sum of the open items' ages, for the mean.
    pub age_sum_ms: u64,
    pub max_age_ms: u64,
}

impl Backlog {
    /// The backlog of these queues together.
    pub fn of(queues: &[QueueBacklog]) -> Backlog {
        let count: u64 = queues.iter().map(|q| q.count).sum();
        let age: u64 = queues.iter().map(|q| q.age_sum_ms).sum();
        Backlog {
            count,
            mean_age_ms: (count > 0).then(|| age as f64 / count as f64),
            max_age_ms: queues
                .iter()
                .filter(|q| q.count > 0)
                .map(|q| q.max_age_ms)
                .max(),
        }
    }
}

/// One row of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportRow {
    /// Team, person, queue, device id, or (time groupings) the local start of the interval.
    pub group: String,
    /// Time groupings: start and end of the interval (UTC ms), clipped to the report range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    pub items_handled: u64,
    pub aht_mean_ms: Option<f64>,
    pub aht_median_ms: Option<f64>,
    pub aht_p90_ms: Option<u64>,
    pub productive_ms: u64,
    /// `None` where time without an item cannot belong to the row (queue rows, queue filter).
    pub other_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub occupancy: Option<f64>,
    pub sla_items_with_due: u64,
    pub sla_items_met: u64,
    pub sla_compliance: Option<f64>,
    /// Only on queue rows: backlog is not attributable to a team, person, device or interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<Backlog>,
}

impl ReportRow {
    /// Combines the figures of one group into a row, applying the formulas.
    pub fn new(
        group: String,
        time: &TimeFigures,
        items: &ItemFigures,
        item_time_only: bool,
    ) -> ReportRow {
        let (other_ms, idle_ms, occupancy) = if item_time_only {
            (None, None, None)
        } else {
            (
                Some(time.other_ms),
                Some(time.idle_ms),
                metrics::occupancy(time.productive_ms, time.other_ms),
            )
        };
        ReportRow {
            group,
            start_ms: None,
            end_ms: None,
            items_handled: items.items_handled,
            aht_mean_ms: items.handle_times_ms.mean,
            aht_median_ms: items.handle_times_ms.median,
            aht_p90_ms: items.handle_times_ms.p90,
            productive_ms: time.productive_ms,
            other_ms,
            idle_ms,
            occupancy,
            sla_items_with_due: items.sla_items_with_due,
            sla_items_met: items.sla_items_met,
            sla_compliance: metrics::sla_compliance(items.sla_items_met, items.sla_items_with_due),
            backlog: None,
        }
    }
}

/// A whole report, as the JSON answer shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub group_by: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub tz: TimeZone,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    pub rows: Vec<ReportRow>,
    /// Every figure over all rows together (items counted once even when in several rows).
    pub totals: ReportRow,
    /// Registered items not completed as of `to` (filtered by `queue` when given).
    pub backlog: Backlog,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_round_trips_and_names_the_choices() {
        for g in GroupBy::ALL {
            assert_eq!(g.as_str().parse::<GroupBy>().unwrap(), g);
        }
        let e = "week".parse::<GroupBy>().unwrap_err();
        assert!(e.contains("interval15"), "{e}");
    }

    #[test]
    fn zone_names_are_screened() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+1",
        ] {
            assert_eq!(ok.parse::<TimeZone>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "Europe/Berlin'",
            "../etc/passwd",
            "/etc/localtime",
            "a b",
            &"A".repeat(65),
        ] {
            assert!(bad.parse::<TimeZone>().is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_rows_have_no_other_time_or_occupancy() {
        let time = TimeFigures {
            productive_ms: 600,
            other_ms: 200,
            idle_ms: 100,
        };
        let row = ReportRow::new("q".into(), &time, &ItemFigures::default(), true);
        assert_eq!(
            (row.other_ms, row.idle_ms, row.occupancy),
            (None, None, None)
        );
        let row = ReportRow::new("t".into(), &time, &ItemFigures::default(), false);
        assert_eq!(row.occupancy, Some(0.75));
        assert_eq!(row.sla_compliance, None);
    }
}
