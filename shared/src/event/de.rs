//! Reading an [`Event`] off the wire without buffering it.
//!
//! The wire form is flat: `seq`, `id`, `kind` and the kind's own fields side by side, in any
//! order. serde's derive for that shape (`flatten` + an internally tagged enum) first copies the
//! whole event into an in-memory tree and only then looks at `kind`; an unknown field costs a
//! tree node per element of its value before it is refused (16 MiB of `[0,0,0,…]` took over a
//! gigabyte). Every field name means the same type in every kind, so this reader parses each
//! value straight into its slot as it comes, refuses an unknown name before reading its value,
//! and only at the end checks that the fields present are exactly those of `kind`.
//!
//! Errors are serde errors raised on the value that is wrong, so `serde_path_to_error` names
//! the field (`events[3].at_ms`); a field that `kind` does not have, or one it lacks, is
//! reported on the event.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use uuid::Uuid;

use super::*;

/// Every field any kind has, in one list (the error message for an unknown name shows it).
const FIELDS: &[&str] = &[
    "seq",
    "id",
    "kind",
    "app",
    "title",
    "start_ms",
    "end_ms",
    "state",
    "item_id",
    "step",
    "action",
    "at_ms",
    "source",
    "granted",
    "policy_version",
    "scope",
    "agent_version",
    "spool_depth",
    "events_dropped",
    "events_rejected",
    "clock_offset_ms",
    "session",
];

/// The fields each kind has besides `seq`, `id` and `kind`.
fn fields_of(kind: EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::ActivitySpan => &[
            "app", "title", "start_ms", "end_ms", "state", "item_id", "step",
        ],
        EventKind::WorkItem => &["item_id", "action", "step", "at_ms", "source"],
        EventKind::Consent => &["granted", "policy_version", "scope", "at_ms"],
        EventKind::Health => &[
            "agent_version",
            "spool_depth",
            "events_dropped",
            "events_rejected",
            "clock_offset_ms",
            "at_ms",
            "session",
        ],
    }
}

/// One slot per field; `Some` once the field was seen (optional text fields hold
/// `Some(None)` for an explicit `null`).
#[derive(Default)]
struct Slots {
    seq: Option<u64>,
    id: Option<Uuid>,
    kind: Option<EventKind>,
    app: Option<String>,
    title: Option<Option<String>>,
    start_ms: Option<UnixMillis>,
    end_ms: Option<UnixMillis>,
    state: Option<ActivityState>,
    item_id: Option<Option<String>>,
    step: Option<Option<String>>,
    action: Option<ItemAction>,
    at_ms: Option<UnixMillis>,
    source: Option<ItemSource>,
    granted: Option<bool>,
    policy_version: Option<u32>,
    scope: Option<String>,
    agent_version: Option<String>,
    spool_depth: Option<u64>,
    events_dropped: Option<u64>,
    events_rejected: Option<u64>,
    clock_offset_ms: Option<i64>,
    session: Option<Option<DesktopSession>>,
}

/// Fills `slot` from the next value, refusing a second occurrence of `name`.
fn fill<'de, A, T>(map: &mut A, slot: &mut Option<T>, name: &'static str) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: de::Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

fn required<T, E: de::Error>(slot: Option<T>, name: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(name))
}

impl Slots {
    /// The names of the fields seen, besides `seq`, `id` and `kind`.
    fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("app", self.app.is_some()),
            ("title", self.title.is_some()),
            ("start_ms", self.start_ms.is_some()),
            ("end_ms", self.end_ms.is_some()),
            ("state", self.state.is_some()),
            ("item_id", self.item_id.is_some()),
            ("step", self.step.is_some()),
            ("action", self.action.is_some()),
            ("at_ms", self.at_ms.is_some()),
            ("source", self.source.is_some()),
            ("granted", self.granted.is_some()),
            ("policy_version", self.policy_version.is_some()),
            ("scope", self.scope.is_some()),
            ("agent_version", self.agent_version.is_some()),
            ("spool_depth", self.spool_depth.is_some()),
            ("events_dropped", self.events_dropped.is_some()),
            ("events_rejected", self.events_rejected.is_some()),
            ("clock_offset_ms", self.clock_offset_ms.is_some()),
            ("session", self.session.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, seen)| seen.then_some(name))
    }

    fn into_event<E: de::Error>(self) -> Result<Event, E> {
        let kind = required(self.kind, "kind")?;
        let allowed = fields_of(kind);
        if let Some(stray) = self.present().find(|name| !allowed.contains(name)) {
            return Err(E::custom(format_args!(
                "unknown field `{stray}` for kind `{}`, expected one of {}",
                kind.as_str(),
                allowed.join(", ")
            )));
        }
        let seq = required(self.seq, "seq")?;
        let id = required(self.id, "id")?;
        let body = match kind {
            EventKind::ActivitySpan => EventBody::ActivitySpan(ActivitySpan {
                app: required(self.app, "app")?,
                title: self.title.flatten(),
                start_ms: required(self.start_ms, "start_ms")?,
                end_ms: required(self.end_ms, "end_ms")?,
                state: required(self.state, "state")?,
                item_id: self.item_id.flatten(),
                step: self.step.flatten(),
            }),
            EventKind::WorkItem => EventBody::WorkItem(WorkItemEvent {
                item_id: required(self.item_id.flatten(), "item_id")?,
                action: required(self.action, "action")?,
                step: self.step.flatten(),
                at_ms: required(self.at_ms, "at_ms")?,
                source: required(self.source, "source")?,
            }),
            EventKind::Consent => EventBody::Consent(ConsentChange {
                granted: required(self.granted, "granted")?,
                policy_version: required(self.policy_version, "policy_version")?,
                scope: required(self.scope, "scope")?,
                at_ms: required(self.at_ms, "at_ms")?,
            }),
            EventKind::Health => EventBody::Health(AgentHealth {
                agent_version: required(self.agent_version, "agent_version")?,
                spool_depth: required(self.spool_depth, "spool_depth")?,
                events_dropped: required(self.events_dropped, "events_dropped")?,
                events_rejected: self.events_rejected.unwrap_or(0),
                clock_offset_ms: required(self.clock_offset_ms, "clock_offset_ms")?,
                at_ms: required(self.at_ms, "at_ms")?,
                session: self.session.flatten(),
            }),
        };
        Ok(Event { seq, id, body })
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut s = Slots::default();
        // Keys are read as borrowed or owned strings; an unknown one ends the parse before its
        // value is looked at.
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "seq" => fill(&mut map, &mut s.seq, "seq")?,
                "id" => fill(&mut map, &mut s.id, "id")?,
                "kind" => fill(&mut map, &mut s.kind, "kind")?,
                "app" => fill(&mut map, &mut s.app, "app")?,
                "title" => fill(&mut map, &mut s.title, "title")?,
                "start_ms" => fill(&mut map, &mut s.start_ms, "start_ms")?,
                "end_ms" => fill(&mut map, &mut s.end_ms, "end_ms")?,
                "state" => fill(&mut map, &mut s.state, "state")?,
                "item_id" => fill(&mut map, &mut s.item_id, "item_id")?,
                "step" => fill(&mut map, &mut s.step, "step")?,
                "action" => fill(&mut map, &mut s.action, "action")?,
                "at_ms" => fill(&mut map, &mut s.at_ms, "at_ms")?,
                "source" => fill(&mut map, &mut s.source, "source")?,
                "granted" => fill(&mut map, &mut s.granted, "granted")?,
                "policy_version" => fill(&mut map, &mut s.policy_version, "policy_version")?,
                "scope" => fill(&mut map, &mut s.scope, "scope")?,
                "agent_version" => fill(&mut map, &mut s.agent_version, "agent_version")?,
                "spool_depth" => fill(&mut map, &mut s.spool_depth, "spool_depth")?,
                "events_dropped" => fill(&mut map, &mut s.events_dropped, "events_dropped")?,
                "events_rejected" => fill(&mut map, &mut s.events_rejected, "events_rejected")?,
                "clock_offset_ms" => fill(&mut map, &mut s.clock_offset_ms, "clock_offset_ms")?,
                "session" => fill(&mut map, &mut s.session, "session")?,
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        s.into_event()
    }
}

impl<'de> de::Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

/// `Batch::events`: refuses the element after [`crate::batch::limits::MAX_EVENTS_PER_BATCH`]
/// as soon as it starts, so an oversized batch never grows past the limit in memory.
pub(crate) fn bounded_events<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Event>, D::Error> {
    struct Events;

    impl<'de> Visitor<'de> for Events {
        type Value = Vec<Event>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of events")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Event>, A::Error> {
            let max = crate::batch::limits::MAX_EVENTS_PER_BATCH;
            let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
            while let Some(event) = seq.next_element()? {
                if events.len() == max {
                    return Err(de::Error::custom(format_args!(
                        "more than the limit of {max} events in one batch"
                    )));
                }
                events.push(event);
            }
            Ok(events)
        }
    }

    deserializer.deserialize_seq(Events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "6f1d2c3e-0000-4000-8000-000000000002";

    fn parse(value: serde_json::Value) -> Result<Event, String> {
        serde_json::from_str::<Event>(&value.to_string()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_round_trips_with_fields_in_any_order() {
        let events = [
            json!({"app": "desk", "kind": "activity_span", "seq": 1, "id": ID, "start_ms": 5,
                   "end_ms": 9, "state": "idle", "title": "t", "item_id": "A", "step": "s"}),
            json!({"source": "app", "at_ms": 7, "action": "completed", "item_id": "A",
                   "kind": "work_item", "id": ID, "seq": 2}),
            json!({"seq": 3, "id": ID, "kind": "consent", "granted": true, "policy_version": 4,
                   "scope": "activity", "at_ms": 8}),
            json!({"seq": 4, "id": ID, "kind": "health", "agent_version": "1", "spool_depth": 2,
                   "events_dropped": 0, "clock_offset_ms": -5, "at_ms": 9}),
            json!({"seq": 5, "id": ID, "kind": "health", "agent_version": "1", "spool_depth": 0,
                   "events_dropped": 0, "clock_offset_ms": 0, "at_ms": 9,
                   "session": {"kind": "rdp", "client_name": "THIN-7"}}),
        ];
        for value in events {
            let event = parse(value.clone()).unwrap();
            let again: Event = serde_json::from_value(serde_json::to_value(&event).unwrap())
                .expect("what we write, we read");
            assert_eq!(again, event);
            // The derived form of the same wire shape agrees.
            let mut body = value.as_object().unwrap().clone();
            body.remove("seq");
            body.remove("id");
            let derived: EventBody = serde_json::from_value(body.into()).unwrap();
            assert_eq!(event.body, derived);
        }
    }

    #[test]
    fn optional_fields_may_be_null_or_absent() {
        let e = parse(
            json!({"seq": 1, "id": ID, "kind": "activity_span", "app": "", "start_ms": 1,
                             "end_ms": 2, "state": "active", "title": null}),
        )
        .unwrap();
        let EventBody::ActivitySpan(span) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!((span.title, span.item_id), (None, None));
    }

    #[test]
    fn unknown_misplaced_duplicate_and_missing_fields_are_refused() {
        let base = json!({"seq": 1, "id": ID, "kind": "work_item", "item_id": "A",
                          "action": "started", "at_ms": 1, "source": "app"});
        let with = |k: &str, v: serde_json::Value| {
            let mut o = base.as_object().unwrap().clone();
            o.insert(k.into(), v);
            serde_json::Value::Object(o)
        };
        assert!(parse(with("colour", json!("red")))
            .unwrap_err()
            .contains("unknown field `colour`"));
        assert!(parse(with("app", json!("desk")))
            .unwrap_err()
            .contains("unknown field `app` for kind `work_item`"));
        assert!(parse(with("session", json!({"kind": "rdp"})))
            .unwrap_err()
            .contains("unknown field `session` for kind `work_item`"));
        let mut missing = base.as_object().unwrap().clone();
        missing.remove("at_ms");
        assert!(parse(missing.into())
            .unwrap_err()
            .contains("missing field `at_ms`"));
        let duplicate = r#"{"seq":1,"seq":2}"#;
        assert!(serde_json::from_str::<Event>(duplicate)
            .unwrap_err()
            .to_string()
            .contains("duplicate field `seq`"));
    }

    #[test]
    fn an_unknown_field_is_refused_before_its_value_is_read() {
        // The value is not even valid JSON: only a reader that stops at the name passes this.
        let body = format!(r#"{{"seq":1,"id":"{ID}","kind":"work_item","pad":[0,0,0,!!!"#);
        let error = serde_json::from_str::<Event>(&body).unwrap_err();
        assert!(error.to_string().contains("unknown field `pad`"), "{error}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let body =
            format!(r#"{{"events":[{{"seq":1,"id":"{ID}","kind":"work_item","at_ms":"soon"}}]}}"#);
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Wrapper {
            events: Vec<Event>,
        }
        let mut de = serde_json::Deserializer::from_str(&body);
        let error = serde_path_to_error::deserialize::<_, Wrapper>(&mut de).unwrap_err();
        assert_eq!(error.path().to_string(), "events[0].at_ms");
    }
}
