//! The packed `row` column of `item_lookup` (format in
//! `deploy/clickhouse/migrations/0011_item_lookup.sql`), parsed into domain values.
//!
//! Packed because ClickHouse's cost of a point read grows with every column it opens in every
//! part; one String column is cheaper than nine (docs/BENCHMARKS.md). The views that write the
//! rows are the only encoder; this is the only decoder.

use backlight_shared::event::{ActivityState, ItemAction};
use uuid::Uuid;

use crate::items::{ItemEvent, ItemRegistration, Occurrence};

/// What one `item_lookup` row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupRow {
    Event(ItemEvent),
    Registration(ItemRegistration),
}

/// Why a row could not be read. Rows are written by ClickHouse views, not by clients, so this
/// means a format this build does not know (a newer release wrote it) or a damaged row.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupRowError {
    #[error("unknown row tag {0:?}")]
    UnknownTag(String),
    #[error("{tag} row has {found} fields, expected {expected}")]
    FieldCount {
        tag: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{tag} row field {field}: {value:?} is not valid")]
    Field {
        tag: &'static str,
        field: &'static str,
        value: String,
    },
    /// A span or action code outside the enums this build knows (kinds other than spans and
    /// actions never name an item).
    #[error("event row has kind {kind}, state {state}, action {action}: not an item event")]
    NotAnItemEvent { kind: i8, state: i8, action: i8 },
}

const EVENT_FIELDS: [&str; 8] = [
    "device_id",
    "seq",
    "kind",
    "time_ms",
    "end_ms",
    "state",
    "action",
    "step",
];
const REGISTRATION_FIELDS: [&str; 7] = [
    "priority",
    "sla_due_ms",
    "registered_ms",
    "updated_ms",
    "queue",
    "sla_class",
    "customer_ref",
];

/// Parses one row of the item `item_id`.
pub fn parse(item_id: &str, row: &str) -> Result<LookupRow, LookupRowError> {
    let (tag, rest) = row.split_once(' ').unwrap_or((row, ""));
    match tag {
        "e1" => parse_event(rest).map(LookupRow::Event),
        "r1" => parse_registration(item_id, rest).map(LookupRow::Registration),
        other => Err(LookupRowError::UnknownTag(other.chars().take(16).collect())),
    }
}

fn parse_event(rest: &str) -> Result<ItemEvent, LookupRowError> {
    let f = Fields::split("e1", rest, &EVENT_FIELDS)?;
    let (kind, state, action) = (f.num::<i8>(2)?, f.num::<i8>(5)?, f.num::<i8>(6)?);
    let not_an_item_event = LookupRowError::NotAnItemEvent {
        kind,
        state,
        action,
    };
    let time_ms = f.num(3)?;
    let what = match kind {
        1 => Occurrence::Span {
            end_ms: f.num(4)?,
            state: match state {
                1 => ActivityState::Active,
                2 => ActivityState::Idle,
                3 => ActivityState::Locked,
                _ => return Err(not_an_item_event),
            },
        },
        2 => Occurrence::Action(
            usize::try_from(i16::from(action) - 1)
                .ok()
                .and_then(|i| ItemAction::ALL.get(i))
                .copied()
                .ok_or(not_an_item_event)?,
        ),
        _ => return Err(not_an_item_event),
    };
    Ok(ItemEvent {
        device_id: f.parse(0, |s| Uuid::try_parse(s).ok())?,
        seq: f.num(1)?,
        time_ms,
        what,
        step: f.text(7)?,
    })
}

/// The table's "none" (`0` due time, `""` class) becomes `None`.
fn parse_registration(item_id: &str, rest: &str) -> Result<ItemRegistration, LookupRowError> {
    let f = Fields::split("r1", rest, &REGISTRATION_FIELDS)?;
    Ok(ItemRegistration {
        item_id: item_id.to_string(),
        priority: f.num(0)?,
        sla_due_ms: Some(f.num(1)?).filter(|&due| due != 0),
        registered_ms: f.num(2)?,
        updated_ms: f.num(3)?,
        queue: f.text(4)?,
        sla_class: Some(f.text(5)?).filter(|class| !class.is_empty()),
        customer_ref: f.text(6)?,
    })
}

/// The space-separated fields of one row after its tag.
struct Fields<'a> {
    tag: &'static str,
    names: &'static [&'static str],
    values: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    fn split(
        tag: &'static str,
        rest: &'a str,
        names: &'static [&'static str],
    ) -> Result<Self, LookupRowError> {
        let values: Vec<&str> = rest.split(' ').collect();
        if values.len() != names.len() {
            return Err(LookupRowError::FieldCount {
                tag,
                found: values.len(),
                expected: names.len(),
            });
        }
        Ok(Fields { tag, names, values })
    }

    fn parse<T>(
        &self,
        i: usize,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, LookupRowError> {
        parse(self.values[i]).ok_or_else(|| LookupRowError::Field {
            tag: self.tag,
            field: self.names[i],
            value: self.values[i].chars().take(64).collect(),
        })
    }

    fn num<T: std::str::FromStr>(&self, i: usize) -> Result<T, LookupRowError> {
        self.parse(i, |s| s.parse().ok())
    }

    /// A hex-encoded text field (ClickHouse's `hex`, upper case).
    fn text(&self, i: usize) -> Result<String, LookupRowError> {
        self.parse(i, |s| {
            hex::decode(s)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(s: &str) -> String {
        hex::encode_upper(s)
    }

    /// An event row with these codes, `step` "s".
    fn event_row(kind: i8, state: i8, action: i8) -> String {
        format!("e1 01a22958-f699-7684-9c64-88ef0c897f5d 1 {kind} 10 20 {state} {action} 73")
    }

    #[test]
    fn an_event_row_is_a_span_or_an_action() {
        let span = format!(
            "e1 01a22959-ec9e-7546-879e-f159c51b9a45 1972 1 1000 2500 2 0 {}",
            hex_of("in review")
        );
        let LookupRow::Event(e) = parse("CLM-1", &span).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.seq, 1972);
        assert_eq!(e.time_ms, 1000);
        assert_eq!(
            e.what,
            Occurrence::Span {
                end_ms: 2500,
                state: ActivityState::Idle
            }
        );
        assert_eq!(e.step, "in review");

        let action = "e1 01a22958-f699-7684-9c64-88ef0c897f5d 1 2 7 7 0 4 ";
        let LookupRow::Event(e) = parse("CLM-1", action).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.what, Occurrence::Action(ItemAction::Completed));
        assert_eq!(e.step, "", "an empty step is an empty hex field");
    }

    #[test]
    fn a_registration_row_keeps_any_text() {
        let odd = "queue with spaces; quotes \" and ünïcode";
        let row = format!(
            "r1 3 99 10 20 {} {} {}",
            hex_of(odd),
            hex_of(""),
            hex_of("C-1 2")
        );
        assert_eq!(
            parse("CLM-1", &row).unwrap(),
            LookupRow::Registration(ItemRegistration {
                item_id: "CLM-1".into(),
                queue: odd.into(),
                priority: 3,
                sla_due_ms: Some(99),
                sla_class: None,
                customer_ref: "C-1 2".into(),
                registered_ms: 10,
                updated_ms: 20,
            })
        );
    }

    #[test]
    fn bad_rows_name_what_is_wrong() {
        assert_eq!(
            parse("i", "x9 1 2"),
            Err(LookupRowError::UnknownTag("x9".into()))
        );
        assert_eq!(parse("i", ""), Err(LookupRowError::UnknownTag("".into())));
        assert!(matches!(
            parse("i", "r1 1 2 3"),
            Err(LookupRowError::FieldCount {
                tag: "r1",
                found: 3,
                expected: 7
            })
        ));
        assert!(matches!(
            parse("i", "r1 300 0 0 0   "),
            Err(LookupRowError::Field {
                field: "priority",
                ..
            })
        ));
        assert!(matches!(
            parse("i", "r1 1 0 0 0 ZZ  "),
            Err(LookupRowError::Field { field: "queue", .. })
        ));
        assert!(matches!(
            parse("i", "e1 not-a-uuid 1 2 7 7 0 4 "),
            Err(LookupRowError::Field {
                field: "device_id",
                ..
            })
        ));
        assert!(matches!(
            parse("i", &event_row(3, 0, 0)),
            Err(LookupRowError::NotAnItemEvent { kind: 3, .. })
        ));
        assert!(matches!(
            parse("i", &event_row(2, 0, 9)),
            Err(LookupRowError::NotAnItemEvent { action: 9, .. })
        ));
    }

    #[test]
    fn every_code_maps_to_the_domain() {
        let event = |kind, state, action| parse("i", &event_row(kind, state, action));
        for (i, state) in [
            ActivityState::Active,
            ActivityState::Idle,
            ActivityState::Locked,
        ]
        .into_iter()
        .enumerate()
        {
            let Ok(LookupRow::Event(e)) = event(1, i as i8 + 1, 0) else {
                panic!("span with state code {}", i + 1)
            };
            assert_eq!(e.what, Occurrence::Span { end_ms: 20, state });
        }
        for (i, action) in ItemAction::ALL.iter().enumerate() {
            let Ok(LookupRow::Event(e)) = event(2, 0, i as i8 + 1) else {
                panic!("action code {}", i + 1)
            };
            assert_eq!(e.what, Occurrence::Action(*action));
        }
        assert!(event(1, 0, 0).is_err(), "a span without a state");
        assert!(event(2, 0, 0).is_err(), "an action without an action");
    }

    /// The codes are those of `events` (0002), which the view copies with `toInt8`.
    #[test]
    fn enum_codes_match_the_migrations() {
        let events = include_str!("../../../deploy/clickhouse/migrations/0002_events.sql");
        for (i, action) in ItemAction::ALL.iter().enumerate() {
            assert!(events.contains(&format!("'{}' = {}", action.as_str(), i + 1)));
        }
        for (i, state) in ["active", "idle", "locked"].iter().enumerate() {
            assert!(events.contains(&format!("'{state}' = {}", i + 1)));
        }
        assert!(events.contains("'activity_span' = 1, 'work_item' = 2"));
        let lookup = include_str!("../../../deploy/clickhouse/migrations/0011_item_lookup.sql");
        for tag in [
            "concat('e1 '",
            "concat('r1 '",
            "e1 <device_id>",
            "r1 <priority>",
        ] {
            assert!(lookup.contains(tag), "{tag}");
        }
    }
}
