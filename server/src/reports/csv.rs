//! RFC 4180 CSV: CRLF line ends, fields quoted when they contain a comma, quote, CR or LF,
//! quotes doubled.

use super::ReportRow;

/// Characters that make a spreadsheet read a cell as a formula when they come first (OWASP's
/// CSV injection list: tab and CR too, which some spreadsheets skip before looking for `=`).
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One field, quoted when needed. Fields that a spreadsheet would run as a formula
/// ([`FORMULA_TRIGGERS`] first) get a leading `'` so a team called `=HYPERLINK(…)` stays text.
pub fn field(value: &str) -> String {
    let value = if value.starts_with(FORMULA_TRIGGERS) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// Column names, in order.
pub const HEADER: [&str; 17] = [
    "group",
    "start",
    "end",
    "items_handled",
    "aht_mean_ms",
    "aht_median_ms",
    "aht_p90_ms",
    "productive_ms",
    "other_ms",
    "idle_ms",
    "occupancy",
    "sla_items_with_due",
    "sla_items_met",
    "sla_compliance",
    "backlog_count",
    "backlog_mean_age_ms",
    "backlog_max_age_ms",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The report as CSV: a header row, then one row per group (`start`/`end` in RFC 3339 for time
/// groupings, empty otherwise). Empty cells are figures that do not apply.
pub fn render(rows: &[ReportRow], time_label: impl Fn(u64) -> String) -> String {
    let mut out = HEADER.join(",");
    out.push_str("\r\n");
    for r in rows {
        let backlog = r.backlog.as_ref();
        let cells = [
            field(&r.group),
            opt(r.start_ms.map(&time_label)),
            opt(r.end_ms.map(&time_label)),
            r.items_handled.to_string(),
            opt(r.aht_mean_ms),
            opt(r.aht_median_ms),
            opt(r.aht_p90_ms),
            r.productive_ms.to_string(),
            opt(r.other_ms),
            opt(r.idle_ms),
            opt(r.occupancy),
            r.sla_items_with_due.to_string(),
            r.sla_items_met.to_string(),
            opt(r.sla_compliance),
            opt(backlog.map(|b| b.count)),
            opt(backlog.and_then(|b| b.mean_age_ms)),
            opt(backlog.and_then(|b| b.max_age_ms)),
        ];
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::{ItemFigures, TimeFigures};

    #[test]
    fn quoting_follows_rfc_4180() {
        assert_eq!(field("claims"), "claims");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("=1+1"), "'=1+1");
    }

    /// Issue 10: a leading tab or CR also starts a formula in some spreadsheets (OWASP CSV
    /// injection); the guard missed both.
    #[test]
    fn formula_guard_covers_every_trigger_character() {
        for trigger in ["=", "+", "-", "@", "\t", "\r"] {
            let value = format!("{trigger}HYPERLINK(\"http://x\")");
            let out = field(&value);
            let unquoted = out.trim_start_matches('"');
            assert!(unquoted.starts_with('\''), "{value:?} came out as {out:?}");
        }
        assert_eq!(field("claims-a"), "claims-a");
    }

    #[test]
    fn one_line_per_row_after_the_header() {
        let time = TimeFigures {
            productive_ms: 3,
            other_ms: 1,
            idle_ms: 2,
        };
        let rows = vec![ReportRow::new(
            "team, a".into(),
            &time,
            &ItemFigures::default(),
            false,
        )];
        let csv = render(&rows, |t| t.to_string());
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], HEADER.join(","));
        assert_eq!(lines[1], "\"team, a\",,,0,,,,3,1,2,0.75,0,0,,,,");
        assert_eq!(lines[2], "");
    }
}
