//! Who may see what of an item, and building its status document accordingly: the team
//! always, a person's name only for wfm and admin where the tenant shows names, activity spans
//! only for wfm and admin.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::context::LookupContext;
use super::documents::{
    CcStatusDoc, CcTimelineDoc, CcTimelineEntry, HandlerDoc, ItemDoc, RegistrationDoc, SlaDoc,
    StatusDoc, Timeline, TimelineDoc, TimelineEntry,
};
use super::MAX_HISTORY;
use crate::items::{
    self as domain, HandleTimeStats, ItemEvent, ItemRegistration, ItemState, Occurrence, Status,
};
use crate::storage::items::ItemRead;
use crate::tenancy::{Assignment, Role};

/// Which documents a role reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Audience {
    /// cc_agent: where items stand, nothing about how people work.
    ContactCenter,
    /// wfm and admin: everything, names where the tenant shows them.
    Workforce,
}

impl Audience {
    pub(super) fn of(role: Role) -> Audience {
        match role {
            Role::CcAgent => Audience::ContactCenter,
            Role::Wfm | Role::Admin => Audience::Workforce,
        }
    }
}

/// What the reader may see of people.
#[derive(Clone, Copy)]
pub(super) struct Visibility {
    pub(super) audience: Audience,
    person_names: bool,
    spans: bool,
}

impl Visibility {
    pub(super) fn of(role: Role, show_person_names: bool) -> Visibility {
        let audience = Audience::of(role);
        let workforce = audience == Audience::Workforce;
        Visibility {
            audience,
            // Names are looked up only for documents that have a field for them; the cc_agent
            // types have none, this keeps the lookup from even happening.
            person_names: show_person_names && workforce,
            spans: workforce,
        }
    }
}

pub(super) struct Who<'a> {
    pub(super) assignments: &'a HashMap<Uuid, Assignment>,
    pub(super) visibility: Visibility,
}

impl Who<'_> {
    fn team(&self, device: Uuid) -> Option<String> {
        self.assignments
            .get(&device)
            .map(|a| a.team.clone())
            .filter(|t| !t.is_empty())
    }

    fn person(&self, device: Uuid) -> Option<String> {
        if !self.visibility.person_names {
            return None;
        }
        self.assignments
            .get(&device)
            .map(|a| a.person.clone())
            .filter(|p| !p.is_empty())
    }

    fn entry(&self, e: &ItemEvent) -> Option<TimelineEntry> {
        let (kind, what, end_ms) = match e.what {
            Occurrence::Action(a) => ("action", a.as_str(), None),
            Occurrence::Span { .. } if !self.visibility.spans => return None,
            Occurrence::Span { end_ms, state } => ("span", state.as_str(), Some(end_ms)),
        };
        Some(TimelineEntry {
            kind,
            what,
            at_ms: e.time_ms,
            end_ms,
            step: Some(e.step.clone()).filter(|s| !s.is_empty()),
            team: self.team(e.device_id),
            person: self.person(e.device_id),
        })
    }
}

/// Distinct people among `devices`: the assigned person where known, else the device.
fn people_involved(devices: &[Uuid], assignments: &HashMap<Uuid, Assignment>) -> usize {
    let people: HashSet<String> = devices
        .iter()
        .map(|d| match assignments.get(d) {
            Some(a) if !a.person.is_empty() => format!("p:{}", a.person),
            _ => format!("d:{d}"),
        })
        .collect();
    people.len()
}

pub(super) fn build_doc(
    item_id: &str,
    state: &ItemState,
    registration: Option<&ItemRegistration>,
    who: &Who<'_>,
    stats: &HandleTimeStats,
    with_history: bool,
    now: u64,
) -> StatusDoc {
    let completed = state.status == Status::Completed;
    let eta = domain::estimate(
        stats,
        registration.map(|r| r.queue.as_str()),
        state.handle_time_ms,
        completed,
        now,
    );
    let due_ms = registration.and_then(|r| r.sla_due_ms);
    let window_start = registration.map_or(0, |r| r.registered_ms);
    let sla = SlaDoc {
        state: domain::sla_state(
            due_ms,
            window_start,
            state.completed_ms,
            eta.expected_ms,
            now,
        ),
        due_ms,
        sla_class: registration.and_then(|r| r.sla_class.clone()),
    };
    let history = with_history.then(|| {
        let actions: Vec<TimelineEntry> = state
            .timeline
            .iter()
            .filter(|e| matches!(e.what, Occurrence::Action(_)))
            .filter_map(|e| who.entry(e))
            .collect();
        let skip = actions.len().saturating_sub(MAX_HISTORY);
        actions.into_iter().skip(skip).collect()
    });
    StatusDoc {
        item_id: item_id.to_string(),
        status: state.status,
        step: state.step.clone(),
        handler: state.handler_device.map(|d| HandlerDoc {
            team: who.team(d),
            person: who.person(d),
        }),
        first_seen_ms: state.first_seen_ms,
        started_ms: state.started_ms,
        last_activity_ms: state.last_activity_ms,
        completed_ms: state.completed_ms,
        handle_time_ms: state.handle_time_ms,
        touches: state.touches,
        people_involved: people_involved(&state.devices, who.assignments),
        registration: registration.map(|r| RegistrationDoc {
            queue: r.queue.clone(),
            priority: r.priority,
            customer_ref: r.customer_ref.clone(),
            registered_ms: r.registered_ms,
        }),
        sla,
        eta,
        history,
        as_of_ms: now,
    }
}

/// An item as read, derived once: documents for any reader at any instant are built from it
/// (the status stream rebuilds its document from the last read as the clock moves).
#[derive(Debug, Clone)]
pub struct ItemSnapshot {
    state: ItemState,
    registration: Option<ItemRegistration>,
}

impl ItemSnapshot {
    /// `None` when the tenant has no such item (no events and no registration).
    pub fn from_read(read: ItemRead) -> Option<ItemSnapshot> {
        let ItemRead {
            events,
            registration,
        } = read;
        if events.is_empty() && registration.is_none() {
            return None;
        }
        Some(ItemSnapshot {
            state: domain::derive(events),
            registration,
        })
    }

    /// The status document as `role` sees it at `now`, under the tenant's settings: a
    /// [`CcStatusDoc`] for cc_agent.
    pub fn document(
        &self,
        item_id: &str,
        role: Role,
        context: &LookupContext,
        stats: &HandleTimeStats,
        with_history: bool,
        now: u64,
    ) -> ItemDoc {
        let visibility = Visibility::of(role, context.show_person_names);
        let doc = self.build(item_id, visibility, context, stats, with_history, now);
        ItemDoc::for_audience(doc, visibility.audience)
    }

    /// The status document as a contact-center agent sees it (what webhooks deliver).
    pub fn contact_center_document(
        &self,
        item_id: &str,
        context: &LookupContext,
        stats: &HandleTimeStats,
        with_history: bool,
        now: u64,
    ) -> CcStatusDoc {
        let visibility = Visibility::of(Role::CcAgent, context.show_person_names);
        self.build(item_id, visibility, context, stats, with_history, now)
            .into()
    }

    /// Every event of the item as `role` sees it: actions and teams for cc_agent; spans too,
    /// and people where the tenant shows names, for wfm and admin.
    pub fn timeline(&self, item_id: &str, role: Role, context: &LookupContext) -> Timeline {
        let visibility = Visibility::of(role, context.show_person_names);
        let who = Who {
            assignments: &context.assignments,
            visibility,
        };
        let entries = self.state.timeline.iter().filter_map(|e| who.entry(e));
        match visibility.audience {
            Audience::ContactCenter => Timeline::ContactCenter(CcTimelineDoc {
                item_id: item_id.to_string(),
                includes_spans: false,
                entries: entries.map(CcTimelineEntry::from).collect(),
            }),
            Audience::Workforce => Timeline::Workforce(TimelineDoc {
                item_id: item_id.to_string(),
                includes_spans: visibility.spans,
                entries: entries.collect(),
            }),
        }
    }

    fn build(
        &self,
        item_id: &str,
        visibility: Visibility,
        context: &LookupContext,
        stats: &HandleTimeStats,
        with_history: bool,
        now: u64,
    ) -> StatusDoc {
        let who = Who {
            assignments: &context.assignments,
            visibility,
        };
        build_doc(
            item_id,
            &self.state,
            self.registration.as_ref(),
            &who,
            stats,
            with_history,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backlight_shared::event::{ActivityState, ItemAction};

    const DEV: Uuid = Uuid::from_u128(7);

    fn assignments(person: &str) -> HashMap<Uuid, Assignment> {
        HashMap::from([(
            DEV,
            Assignment {
                device_id: DEV,
                team: "claims-a".into(),
                person: person.into(),
            },
        )])
    }

    fn state() -> ItemState {
        domain::derive(vec![
            ItemEvent {
                device_id: DEV,
                seq: 1,
                time_ms: 1_000,
                what: Occurrence::Action(ItemAction::Started),
                step: "s".into(),
            },
            ItemEvent {
                device_id: DEV,
                seq: 2,
                time_ms: 1_000,
                what: Occurrence::Span {
                    end_ms: 2_000,
                    state: ActivityState::Idle,
                },
                step: String::new(),
            },
        ])
    }

    #[test]
    fn person_only_for_workforce_when_enabled_and_spans_never_for_cc_agent() {
        let a = assignments("Ann");
        for (role, names, person, spans) in [
            (Role::CcAgent, false, None, false),
            (Role::CcAgent, true, None, false),
            (Role::Wfm, false, None, true),
            (Role::Admin, true, Some("Ann"), true),
        ] {
            let who = Who {
                assignments: &a,
                visibility: Visibility::of(role, names),
            };
            let doc = build_doc(
                "I",
                &state(),
                None,
                &who,
                &HandleTimeStats::default(),
                true,
                5_000,
            );
            let handler = doc.handler.clone().unwrap();
            assert_eq!(handler.team.as_deref(), Some("claims-a"));
            assert_eq!(handler.person.as_deref(), person, "{role} names={names}");
            let entries: Vec<_> = state()
                .timeline
                .iter()
                .filter_map(|e| who.entry(e))
                .collect();
            assert_eq!(entries.iter().any(|e| e.kind == "span"), spans, "{role}");
            let json = serde_json::to_string(&doc).unwrap();
            assert_eq!(json.contains("Ann"), person.is_some());
        }
    }

    #[test]
    fn cc_agent_document_has_no_per_person_fields() {
        let a = assignments("Ann");
        // Even a document built with names on loses them on the way to a cc_agent.
        let who = Who {
            assignments: &a,
            visibility: Visibility::of(Role::Admin, true),
        };
        let full = build_doc(
            "I",
            &state(),
            None,
            &who,
            &HandleTimeStats::default(),
            true,
            5_000,
        );
        let cc = ItemDoc::for_audience(full.clone(), Audience::ContactCenter);
        let json = serde_json::to_value(&cc).unwrap();
        for field in ["handle_time_ms", "touches", "people_involved"] {
            assert!(json.get(field).is_none(), "{field} in {json}");
        }
        assert_eq!(json["handler"], serde_json::json!({"team": "claims-a"}));
        assert!(!json.to_string().contains("Ann"), "{json}");
        let wfm = serde_json::to_value(ItemDoc::for_audience(full, Audience::Workforce)).unwrap();
        assert_eq!(wfm["handler"]["person"], "Ann");
        assert!(wfm.get("handle_time_ms").is_some());
    }

    #[test]
    fn people_count_persons_and_unassigned_devices() {
        let mut a = assignments("Ann");
        let other = Uuid::from_u128(8);
        a.insert(
            other,
            Assignment {
                device_id: other,
                team: "t".into(),
                person: "Ann".into(),
            },
        );
        let third = Uuid::from_u128(9);
        assert_eq!(people_involved(&[DEV, other, third], &a), 2);
    }

    #[test]
    fn fingerprint_ignores_the_clock() {
        let a = assignments("");
        let who = Who {
            assignments: &a,
            visibility: Visibility::of(Role::Wfm, false),
        };
        let stats =
            HandleTimeStats::new([1_000_000u64, 2_000_000, 3_000_000].map(|h| (String::new(), h)));
        let x = build_doc("I", &state(), None, &who, &stats, true, 5_000);
        let y = build_doc("I", &state(), None, &who, &stats, true, 6_000);
        assert_ne!(x, y);
        assert_eq!(x.fingerprint(), y.fingerprint());
    }
}
