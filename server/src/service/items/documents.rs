//! The documents the items API answers with, one type per audience.
//!
//! **Privacy invariant:** a contact-center agent reads where an item stands, never how a person
//! works. cc_agent keys get their own document types ([`CcStatusDoc`], [`CcTimelineEntry`]),
//! which have no field for a person's name, handle time, touches or activity spans; only wfm
//! and admin get [`StatusDoc`].

use serde::Serialize;

use super::visibility::Audience;
use crate::items::{Eta, SlaState, Status};

/// Who has the item: always the team, the person only where the tenant shows names.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HandlerDoc {
    /// `null` when the device is not assigned to a team.
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RegistrationDoc {
    pub queue: String,
    pub priority: u8,
    pub customer_ref: String,
    pub registered_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SlaDoc {
    pub state: SlaState,
    pub due_ms: Option<u64>,
    pub sla_class: Option<String>,
}

/// One entry of the history or timeline.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// `action` or `span`.
    pub kind: &'static str,
    /// The action (`started` … `transferred`) or the span's presence (`active`, `idle`, `locked`).
    pub what: &'static str,
    pub at_ms: u64,
    /// Spans only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    pub step: Option<String>,
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
}

/// What `GET /v1/items/{id}` answers a wfm or admin key.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatusDoc {
    pub item_id: String,
    pub status: Status,
    pub step: Option<String>,
    /// `null` while nobody has the item (not started, or transferred and not picked up).
    pub handler: Option<HandlerDoc>,
    pub first_seen_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub last_activity_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub handle_time_ms: u64,
    pub touches: u32,
    pub people_involved: usize,
    pub registration: Option<RegistrationDoc>,
    pub sla: SlaDoc,
    pub eta: Eta,
    /// The item's actions, oldest first (the newest [`super::MAX_HISTORY`]); absent in search results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<TimelineEntry>>,
    pub as_of_ms: u64,
}

impl StatusDoc {
    /// The part of the document whose change is worth pushing to a stream (not the clock-driven
    /// `as_of_ms` and ETA, which move all the time).
    pub fn fingerprint(&self) -> StatusDoc {
        StatusDoc {
            as_of_ms: 0,
            eta: Eta {
                expected_ms: None,
                ..self.eta
            },
            ..self.clone()
        }
    }
}

/// Who has the item, as a contact-center agent sees it: the team, never a person.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TeamDoc {
    /// `null` when the device is not assigned to a team.
    pub team: Option<String>,
}

/// One action of the history or timeline, as a contact-center agent sees it: what happened,
/// when, and which team did it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CcTimelineEntry {
    /// Always `action`: activity spans are not shown to cc_agent.
    pub kind: &'static str,
    /// `started` … `transferred`.
    pub what: &'static str,
    pub at_ms: u64,
    pub step: Option<String>,
    pub team: Option<String>,
}

/// What `GET /v1/items/{id}` answers a cc_agent key: where the item stands and when it will be
/// done, with no per-person figures (no names, handle time, touches or people count).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CcStatusDoc {
    pub item_id: String,
    pub status: Status,
    pub step: Option<String>,
    /// `null` while nobody has the item.
    pub handler: Option<TeamDoc>,
    pub first_seen_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub last_activity_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub registration: Option<RegistrationDoc>,
    pub sla: SlaDoc,
    pub eta: Eta,
    /// The item's actions, oldest first (the newest [`super::MAX_HISTORY`]); absent in search results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<CcTimelineEntry>>,
    pub as_of_ms: u64,
}

impl From<TimelineEntry> for CcTimelineEntry {
    fn from(e: TimelineEntry) -> CcTimelineEntry {
        CcTimelineEntry {
            kind: e.kind,
            what: e.what,
            at_ms: e.at_ms,
            step: e.step,
            team: e.team,
        }
    }
}

impl From<StatusDoc> for CcStatusDoc {
    /// Field by field, so a field added to [`StatusDoc`] reaches cc_agent only when it is
    /// added here too.
    fn from(d: StatusDoc) -> CcStatusDoc {
        CcStatusDoc {
            item_id: d.item_id,
            status: d.status,
            step: d.step,
            handler: d.handler.map(|h| TeamDoc { team: h.team }),
            first_seen_ms: d.first_seen_ms,
            started_ms: d.started_ms,
            last_activity_ms: d.last_activity_ms,
            completed_ms: d.completed_ms,
            registration: d.registration,
            sla: d.sla,
            eta: d.eta,
            history: d
                .history
                .map(|h| h.into_iter().map(CcTimelineEntry::from).collect()),
            as_of_ms: d.as_of_ms,
        }
    }
}

/// A status document in the form the caller's role may see.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ItemDoc {
    /// For cc_agent.
    ContactCenter(CcStatusDoc),
    /// For wfm and admin.
    Workforce(StatusDoc),
}

impl ItemDoc {
    pub(super) fn for_audience(doc: StatusDoc, audience: Audience) -> ItemDoc {
        match audience {
            Audience::ContactCenter => ItemDoc::ContactCenter(doc.into()),
            Audience::Workforce => ItemDoc::Workforce(doc),
        }
    }

    /// See [`StatusDoc::fingerprint`].
    pub fn fingerprint(&self) -> ItemDoc {
        match self {
            ItemDoc::ContactCenter(d) => ItemDoc::ContactCenter(CcStatusDoc {
                as_of_ms: 0,
                eta: Eta {
                    expected_ms: None,
                    ..d.eta
                },
                ..d.clone()
            }),
            ItemDoc::Workforce(d) => ItemDoc::Workforce(d.fingerprint()),
        }
    }
}

/// Every event of an item: for wfm and admin with activity spans and (where the tenant shows
/// names) people.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineDoc {
    pub item_id: String,
    /// Whether activity spans are included (wfm and admin only).
    pub includes_spans: bool,
    pub entries: Vec<TimelineEntry>,
}

/// The actions of an item as a contact-center agent sees them (no spans, no people).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CcTimelineDoc {
    pub item_id: String,
    /// Always `false`.
    pub includes_spans: bool,
    pub entries: Vec<CcTimelineEntry>,
}

/// A timeline in the form the caller's role may see.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Timeline {
    ContactCenter(CcTimelineDoc),
    Workforce(TimelineDoc),
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SearchDoc {
    /// Status documents without history, in the caller's role's form.
    pub items: Vec<ItemDoc>,
    /// Registered items examined (bounded by [`super::MAX_SEARCH_CANDIDATES`]).
    pub examined: usize,
}
