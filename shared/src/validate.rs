//! The checks a batch must pass, run by the server on every batch and by the agent before it
//! spools an event (so the agent never keeps what the server would refuse).
//!
//! Errors name the offending field with a JSON path such as `events[3].item_id`, so an operator
//! reading a 422 knows exactly what to fix.

use std::fmt;

use crate::batch::{limits, Batch};
use crate::event::{Event, EventBody};
use crate::{UnixMillis, PROTOCOL_VERSION};

/// A batch or event broke a rule of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `events[3].start_ms`.
    pub field: String,
    /// What is wrong with it, in words an operator understands.
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        ValidationError {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// The index of the event the error is about, when it is about one event.
    pub fn event_index(&self) -> Option<usize> {
        let rest = self.field.strip_prefix("events[")?;
        rest[..rest.find(']')?].parse().ok()
    }
}

/// Checks a whole batch against the protocol, with `now_ms` as the reference clock.
pub fn validate_batch(batch: &Batch, now_ms: UnixMillis) -> Result<(), ValidationError> {
    if batch.protocol != PROTOCOL_VERSION {
        return Err(ValidationError::new(
            "protocol",
            format!(
                "unsupported protocol version {} (this server speaks {PROTOCOL_VERSION})",
                batch.protocol
            ),
        ));
    }
    if batch.events.is_empty() {
        return Err(ValidationError::new(
            "events",
            "a batch needs at least one event",
        ));
    }
    if batch.events.len() > limits::MAX_EVENTS_PER_BATCH {
        return Err(ValidationError::new(
            "events",
            format!(
                "{} events is more than the limit of {}",
                batch.events.len(),
                limits::MAX_EVENTS_PER_BATCH
            ),
        ));
    }
    let mut previous_seq = 0u64;
    for (i, event) in batch.events.iter().enumerate() {
        let prefix = format!("events[{i}]");
        if event.seq > limits::MAX_SEQ {
            return Err(ValidationError::new(
                format!("{prefix}.seq"),
                format!(
                    "{} is above the highest sequence number, {}",
                    event.seq,
                    limits::MAX_SEQ
                ),
            ));
        }
        if event.seq <= previous_seq {
            return Err(ValidationError::new(
                format!("{prefix}.seq"),
                if event.seq == 0 {
                    "sequence numbers start at 1".to_string()
                } else {
                    format!(
                        "sequence numbers must be strictly increasing ({} follows {previous_seq})",
                        event.seq
                    )
                },
            ));
        }
        previous_seq = event.seq;
        validate_event_at(event, now_ms, &prefix)?;
    }
    Ok(())
}

/// Checks one event; field paths in errors are relative to the event (`app`, `start_ms`, …).
pub fn validate_event(event: &Event, now_ms: UnixMillis) -> Result<(), ValidationError> {
    validate_event_at(event, now_ms, "")
}

fn validate_event_at(
    event: &Event,
    now_ms: UnixMillis,
    prefix: &str,
) -> Result<(), ValidationError> {
    let field = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    if event.id.is_nil() {
        return Err(ValidationError::new(
            field("id"),
            "the nil UUID is not an event id",
        ));
    }
    let time = |name: &str, t: UnixMillis| check_time(&field(name), t, now_ms);
    match &event.body {
        EventBody::ActivitySpan(span) => {
            text(
                &field("app"),
                &span.app,
                limits::MAX_APP_LEN,
                Empty::Allowed,
            )?;
            if let Some(title) = &span.title {
                text(
                    &field("title"),
                    title,
                    limits::MAX_TITLE_LEN,
                    Empty::Allowed,
                )?;
            }
            time("start_ms", span.start_ms)?;
            time("end_ms", span.end_ms)?;
            if span.end_ms < span.start_ms {
                return Err(ValidationError::new(
                    field("end_ms"),
                    format!(
                        "ends ({}) before it starts ({})",
                        span.end_ms, span.start_ms
                    ),
                ));
            }
            if span.end_ms - span.start_ms > limits::MAX_SPAN_MS {
                return Err(ValidationError::new(
                    field("end_ms"),
                    format!(
                        "a span may last at most {} minutes; this one lasts {} ms",
                        limits::MAX_SPAN_MS / 60_000,
                        span.end_ms - span.start_ms
                    ),
                ));
            }
            optional_item(&field("item_id"), span.item_id.as_deref())?;
            optional_step(&field("step"), span.step.as_deref())?;
        }
        EventBody::WorkItem(item) => {
            text(
                &field("item_id"),
                &item.item_id,
                limits::MAX_ITEM_ID_LEN,
                Empty::Refused,
            )?;
            optional_step(&field("step"), item.step.as_deref())?;
            time("at_ms", item.at_ms)?;
        }
        EventBody::Consent(consent) => {
            text(
                &field("scope"),
                &consent.scope,
                limits::MAX_SHORT_TEXT_LEN,
                Empty::Allowed,
            )?;
            time("at_ms", consent.at_ms)?;
        }
        EventBody::Health(health) => {
            text(
                &field("agent_version"),
                &health.agent_version,
                limits::MAX_SHORT_TEXT_LEN,
                Empty::Refused,
            )?;
            if let Some(client) = health
                .session
                .as_ref()
                .and_then(|s| s.client_name.as_deref())
            {
                text(
                    &field("session.client_name"),
                    client,
                    limits::MAX_SHORT_TEXT_LEN,
                    Empty::Refused,
                )?;
            }
            time("at_ms", health.at_ms)?;
        }
    }
    Ok(())
}

fn optional_item(field: &str, value: Option<&str>) -> Result<(), ValidationError> {
    value.map_or(Ok(()), |v| {
        text(field, v, limits::MAX_ITEM_ID_LEN, Empty::Refused)
    })
}

fn optional_step(field: &str, value: Option<&str>) -> Result<(), ValidationError> {
    value.map_or(Ok(()), |v| {
        text(field, v, limits::MAX_STEP_LEN, Empty::Refused)
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Empty {
    Allowed,
    Refused,
}

/// `text` as the checks below accept it: control characters replaced by spaces, cut to at most
/// `max` bytes at a character boundary. What the agent sends of a title or a captured id.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn text(field: &str, value: &str, max_len: usize, empty: Empty) -> Result<(), ValidationError> {
    if value.len() > max_len {
        return Err(ValidationError::new(
            field,
            format!(
                "{} bytes is longer than the limit of {max_len}",
                value.len()
            ),
        ));
    }
    if empty == Empty::Refused && value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_time(field: &str, t: UnixMillis, now_ms: UnixMillis) -> Result<(), ValidationError> {
    // Saturating: `t` comes from the network and may be anything up to u64::MAX.
    if t.saturating_add(limits::MAX_EVENT_AGE_MS) < now_ms {
        return Err(ValidationError::new(
            field,
            format!(
                "{t} is more than {} days in the past",
                limits::MAX_EVENT_AGE_MS / 86_400_000
            ),
        ));
    }
    if t > now_ms.saturating_add(limits::MAX_EVENT_FUTURE_MS) {
        return Err(ValidationError::new(
            field,
            format!(
                "{t} is more than {} minutes ahead of the server clock ({now_ms}): events can \
                 only report what has happened (is the desktop's clock right?)",
                limits::MAX_EVENT_FUTURE_MS / 60_000
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use uuid::Uuid;

    const NOW: u64 = 1_800_000_000_000;

    fn span(seq: u64) -> Event {
        Event {
            seq,
            id: Uuid::new_v4(),
            body: EventBody::ActivitySpan(ActivitySpan {
                app: "claims-desk".into(),
                title: None,
                start_ms: NOW - 5_000,
                end_ms: NOW - 1_000,
                state: ActivityState::Active,
                item_id: Some("CLM-1".into()),
                step: None,
            }),
        }
    }

    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            protocol: PROTOCOL_VERSION,
            device_id: Uuid::new_v4(),
            events,
        }
    }

    fn error_field(b: &Batch) -> String {
        validate_batch(b, NOW).unwrap_err().field
    }

    #[test]
    fn valid_batch_passes() {
        validate_batch(&batch(vec![span(1), span(2), span(7)]), NOW).unwrap();
    }

    #[test]
    fn sequence_must_increase() {
        assert_eq!(error_field(&batch(vec![span(2), span(2)])), "events[1].seq");
        assert_eq!(error_field(&batch(vec![span(0)])), "events[0].seq");
    }

    #[test]
    fn long_strings_are_named() {
        let mut e = span(1);
        if let EventBody::ActivitySpan(s) = &mut e.body {
            s.app = "x".repeat(1 << 20);
        }
        let err = validate_batch(
            &batch(vec![span(1), {
                e.seq = 2;
                e
            }]),
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.field, "events[1].app");
        assert_eq!(err.event_index(), Some(1));
        assert!(err.reason.contains("longer than the limit"), "{err}");
    }

    #[test]
    fn health_sessions_are_checked_and_optional() {
        let health = |session: Option<DesktopSession>| Event {
            seq: 1,
            id: Uuid::new_v4(),
            body: EventBody::Health(AgentHealth {
                agent_version: "0.1.0".into(),
                spool_depth: 0,
                events_dropped: 0,
                events_rejected: 0,
                clock_offset_ms: 0,
                at_ms: NOW,
                session,
            }),
        };
        let remote = |client: &str| {
            Some(DesktopSession {
                kind: SessionKind::Rdp,
                client_name: Some(client.into()),
            })
        };
        validate_batch(&batch(vec![health(None)]), NOW).unwrap();
        validate_batch(&batch(vec![health(remote("THIN-7"))]), NOW).unwrap();
        assert_eq!(
            error_field(&batch(vec![health(remote("a\u{7}b"))])),
            "events[0].session.client_name"
        );
        // Older agents send no session; the field stays off the wire when absent.
        let json = serde_json::to_string(&health(None)).unwrap();
        assert!(!json.contains("session"), "{json}");
        let json = serde_json::to_string(&health(remote("THIN-7"))).unwrap();
        assert!(
            json.contains(r#""session":{"kind":"rdp","client_name":"THIN-7"}"#),
            "{json}"
        );
    }

    #[test]
    fn timestamps_years_off_are_refused() {
        let mut e = span(1);
        if let EventBody::ActivitySpan(s) = &mut e.body {
            s.start_ms = NOW - 3 * 365 * 86_400_000;
        }
        assert_eq!(error_field(&batch(vec![e.clone()])), "events[0].start_ms");
        if let EventBody::ActivitySpan(s) = &mut e.body {
            s.start_ms = NOW + 2 * 365 * 86_400_000;
            s.end_ms = s.start_ms;
        }
        assert_eq!(error_field(&batch(vec![e])), "events[0].start_ms");
    }

    #[test]
    fn extreme_numbers_are_refused_without_overflow() {
        assert_eq!(error_field(&batch(vec![span(u64::MAX)])), "events[0].seq");
        assert_eq!(
            error_field(&batch(vec![span(limits::MAX_SEQ + 1)])),
            "events[0].seq"
        );
        validate_batch(&batch(vec![span(limits::MAX_SEQ)]), NOW).unwrap();
        for t in [u64::MAX, u64::MAX - 1, 0] {
            let mut e = span(1);
            if let EventBody::ActivitySpan(s) = &mut e.body {
                s.start_ms = t;
                s.end_ms = t;
            }
            assert_eq!(error_field(&batch(vec![e])), "events[0].start_ms", "{t}");
        }
        // The server's own clock at its extremes.
        validate_batch(&batch(vec![span(1)]), u64::MAX).unwrap_err();
        validate_batch(&batch(vec![span(1)]), 0).unwrap_err();
    }

    #[test]
    fn claims_about_the_future_are_refused() {
        let completed_at = |at_ms| Event {
            seq: 1,
            id: Uuid::new_v4(),
            body: EventBody::WorkItem(WorkItemEvent {
                item_id: "CLM-1".into(),
                action: ItemAction::Completed,
                step: None,
                at_ms,
                source: ItemSource::App,
            }),
        };
        validate_event(&completed_at(NOW + 60_000), NOW).unwrap();
        let err = validate_event(&completed_at(NOW + 3_600_000), NOW).unwrap_err();
        assert_eq!(err.field, "at_ms");
        assert!(err.reason.contains("ahead of the server clock"), "{err}");
    }

    #[test]
    fn long_spans_are_refused() {
        let mut e = span(1);
        if let EventBody::ActivitySpan(s) = &mut e.body {
            s.start_ms = NOW - 2 * 3_600_000;
            s.end_ms = NOW;
        }
        assert_eq!(error_field(&batch(vec![e])), "events[0].end_ms");
    }

    #[test]
    fn span_must_not_end_before_start() {
        let mut e = span(1);
        if let EventBody::ActivitySpan(s) = &mut e.body {
            s.end_ms = s.start_ms - 1;
        }
        assert_eq!(error_field(&batch(vec![e])), "events[0].end_ms");
    }

    #[test]
    fn protocol_version_and_empty_batch() {
        let mut b = batch(vec![span(1)]);
        b.protocol = 99;
        assert_eq!(error_field(&b), "protocol");
        assert_eq!(error_field(&batch(vec![])), "events");
    }

    #[test]
    fn empty_item_id_is_refused() {
        let e = Event {
            seq: 1,
            id: Uuid::new_v4(),
            body: EventBody::WorkItem(WorkItemEvent {
                item_id: " ".into(),
                action: ItemAction::Started,
                step: None,
                at_ms: NOW,
                source: ItemSource::Manual,
            }),
        };
        assert_eq!(validate_event(&e, NOW).unwrap_err().field, "item_id");
    }

    #[test]
    fn wire_format_is_flat_and_tagged() {
        let e = span(3);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "activity_span");
        assert_eq!(json["seq"], 3);
        assert_eq!(json["state"], "active");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_fields_in_a_body_are_refused() {
        let json = serde_json::json!({
            "seq": 1, "id": Uuid::new_v4(), "kind": "work_item", "item_id": "A",
            "action": "started", "at_ms": NOW, "source": "app", "colour": "red"
        });
        assert!(serde_json::from_value::<Event>(json).is_err());
    }
}
