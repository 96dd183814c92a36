//! What webhooks announce, decided without I/O: from what was last announced about an item and
//! its state now, which events fire; the delivery id; the payload.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::items::{SlaState, Status};
use crate::service::items::CcStatusDoc;

/// The events a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// The item's status changed (`waiting`, `in_progress`, `paused`, `completed`).
    #[serde(rename = "item.status_changed")]
    StatusChanged,
    /// The item's SLA state became `at_risk`.
    #[serde(rename = "item.sla_at_risk")]
    SlaAtRisk,
    /// The item's SLA state became `breached` (open past its due time, or completed late).
    #[serde(rename = "item.sla_breached")]
    SlaBreached,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::StatusChanged,
        EventType::SlaAtRisk,
        EventType::SlaBreached,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::StatusChanged => "item.status_changed",
            EventType::SlaAtRisk => "item.sla_at_risk",
            EventType::SlaBreached => "item.sla_breached",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// What webhooks last announced about an item (its state then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Announced {
    pub status: Status,
    pub sla_state: SlaState,
}

/// The events that moving from `before` (nothing announced yet: `None`) to `now` fires.
///
/// - `item.status_changed` whenever the status differs, except for a newly seen item that is
///   merely `waiting` (registered, nobody started it: not news);
/// - `item.sla_at_risk` / `item.sla_breached` when the SLA state *becomes* that.
pub fn fired(before: Option<Announced>, now: Announced) -> Vec<EventType> {
    let mut events = Vec::new();
    let status_news = match before {
        Some(b) => b.status != now.status,
        None => now.status != Status::Waiting,
    };
    if status_news {
        events.push(EventType::StatusChanged);
    }
    if before.map(|b| b.sla_state) != Some(now.sla_state) {
        match now.sla_state {
            SlaState::AtRisk => events.push(EventType::SlaAtRisk),
            SlaState::Breached => events.push(EventType::SlaBreached),
            SlaState::OnTrack | SlaState::None => {}
        }
    }
    events
}

/// The delivery id of `event` about `doc` for one webhook: derived from what is announced, so
/// every server (and every evaluation after a crash) that announces the same change produces
/// the same id, and receivers de-duplicate by it. A status change is identified by the new
/// status and the time of the item's latest activity; an SLA change by the new state and the
/// due time (an item becomes at risk or breached once per due time).
pub fn delivery_id(webhook_id: &str, event: EventType, doc: &CcStatusDoc) -> String {
    let identity = match event {
        EventType::StatusChanged => format!(
            "{}@{}",
            doc.status.as_str(),
            doc.last_activity_ms.unwrap_or(0)
        ),
        EventType::SlaAtRisk | EventType::SlaBreached => {
            format!("{}@{}", doc.sla.state.as_str(), doc.sla.due_ms.unwrap_or(0))
        }
    };
    let mut hash = Sha256::new();
    for part in [webhook_id, &doc.item_id, event.as_str(), &identity] {
        // Length-prefixed, so no two different tuples hash the same bytes.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("dlv_{}", hex::encode(&hash.finalize()[..16]))
}

/// The JSON body of a delivery (documented in `docs/webhooks.md`).
#[derive(Debug, Clone, Serialize)]
pub struct Payload<'a> {
    /// The delivery id (also in the `Backlight-Delivery` header): de-duplicate by it.
    pub id: &'a str,
    #[serde(rename = "type")]
    pub event: EventType,
    /// When the change was noticed (ms since the epoch, UTC).
    pub created_ms: u64,
    pub tenant_id: &'a str,
    pub webhook_id: &'a str,
    pub data: PayloadData<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PayloadData<'a> {
    pub item_id: &'a str,
    /// What was announced before (`null` for an item not announced yet).
    pub previous: Option<Announced>,
    /// The item's status document as a `cc_agent` sees it, without history.
    pub item: &'a CcStatusDoc,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(status: Status, sla_state: SlaState) -> Announced {
        Announced { status, sla_state }
    }

    #[test]
    fn status_changes_fire_and_new_waiting_items_do_not() {
        use SlaState::*;
        use Status::*;
        assert_eq!(fired(Option::None, a(Waiting, OnTrack)), vec![]);
        assert_eq!(
            fired(Option::None, a(InProgress, None)),
            vec![EventType::StatusChanged]
        );
        assert_eq!(
            fired(Some(a(InProgress, None)), a(InProgress, None)),
            vec![]
        );
        assert_eq!(
            fired(Some(a(InProgress, None)), a(Completed, None)),
            vec![EventType::StatusChanged]
        );
        assert_eq!(
            fired(Some(a(Completed, None)), a(InProgress, None)),
            vec![EventType::StatusChanged]
        );
    }

    #[test]
    fn sla_fires_when_it_becomes_at_risk_or_breached() {
        use SlaState::*;
        use Status::*;
        assert_eq!(
            fired(Some(a(InProgress, OnTrack)), a(InProgress, AtRisk)),
            vec![EventType::SlaAtRisk]
        );
        assert_eq!(
            fired(Some(a(InProgress, AtRisk)), a(InProgress, Breached)),
            vec![EventType::SlaBreached]
        );
        assert_eq!(
            fired(Some(a(InProgress, Breached)), a(Completed, Breached)),
            vec![EventType::StatusChanged]
        );
        assert_eq!(
            fired(Some(a(InProgress, AtRisk)), a(Completed, OnTrack)),
            vec![EventType::StatusChanged]
        );
        assert_eq!(
            fired(Option::None, a(Waiting, Breached)),
            vec![EventType::SlaBreached]
        );
    }

    #[test]
    fn event_names_round_trip() {
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        assert_eq!(EventType::parse("item.deleted"), None);
    }
}
