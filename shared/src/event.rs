//! What an agent records.
//!
//! Every event carries a device-local sequence number (`seq`, assigned when the event is committed
//! to the agent's spool, strictly increasing, never reused) and a UUID. Together with the tenant
//! and device, `seq` is the event's identity: the server stores events so that the same identity
//! sent twice is counted once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::UnixMillis;

mod de;
pub(crate) use de::bounded_events;

/// One recorded event, as it travels in a [`crate::batch::Batch`].
///
/// Deserialized by hand (`de.rs`): the wire form is flat, and serde's derive for it would buffer
/// the whole event, unknown fields included, before looking at `kind`. Unknown fields are
/// refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Device-local sequence number, starting at 1, strictly increasing, never reused.
    pub seq: u64,
    /// Random identity of the event, for tracing one event across systems.
    pub id: Uuid,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kinds of event, tagged by `kind` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A continuous stretch of the same focused application, title and presence state.
    ActivitySpan(ActivitySpan),
    /// A work item changed state on this desktop.
    WorkItem(WorkItemEvent),
    /// The employee granted or withdrew consent.
    Consent(ConsentChange),
    /// Periodic report on the agent itself.
    Health(AgentHealth),
}

impl EventBody {
    /// The wire name of this event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::ActivitySpan(_) => EventKind::ActivitySpan,
            EventBody::WorkItem(_) => EventKind::WorkItem,
            EventBody::Consent(_) => EventKind::Consent,
            EventBody::Health(_) => EventKind::Health,
        }
    }

    /// The instant the event is about (the start of a span), used for partitioning and bounds.
    pub fn time_ms(&self) -> UnixMillis {
        match self {
            EventBody::ActivitySpan(s) => s.start_ms,
            EventBody::WorkItem(w) => w.at_ms,
            EventBody::Consent(c) => c.at_ms,
            EventBody::Health(h) => h.at_ms,
        }
    }
}

/// The kind of an event without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ActivitySpan,
    WorkItem,
    Consent,
    Health,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::ActivitySpan,
        EventKind::WorkItem,
        EventKind::Consent,
        EventKind::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ActivitySpan => "activity_span",
            EventKind::WorkItem => "work_item",
            EventKind::Consent => "consent",
            EventKind::Health => "health",
        }
    }
}

/// Presence of the person at the desktop during a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActivityState {
    /// Input was seen recently.
    Active,
    /// No input for longer than the idle threshold.
    Idle,
    /// The screen was locked or the screensaver was on.
    Locked,
}

impl ActivityState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityState::Active => "active",
            ActivityState::Idle => "idle",
            ActivityState::Locked => "locked",
        }
    }
}

/// A continuous stretch of the same focused application, title and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActivitySpan {
    /// The focused application (e.g. its WM_CLASS or executable name). Empty when nothing had focus.
    pub app: String,
    /// The window title, only when the tenant's policy lets titles leave the desktop
    /// (possibly as a salted hash); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Start of the span, inclusive.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub start_ms: UnixMillis,
    /// End of the span, exclusive; never before `start_ms`.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub end_ms: UnixMillis,
    pub state: ActivityState,
    /// The work item this span was spent on, when a rule or an app said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The step of the work item, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// What happened to a work item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ItemAction {
    Started,
    Paused,
    Resumed,
    Completed,
    Transferred,
}

impl ItemAction {
    pub const ALL: [ItemAction; 5] = [
        ItemAction::Started,
        ItemAction::Paused,
        ItemAction::Resumed,
        ItemAction::Completed,
        ItemAction::Transferred,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemAction::Started => "started",
            ItemAction::Paused => "paused",
            ItemAction::Resumed => "resumed",
            ItemAction::Completed => "completed",
            ItemAction::Transferred => "transferred",
        }
    }
}

/// Who said that a work item changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ItemSource {
    /// A centrally managed rule matched the focused window.
    Rule,
    /// A line-of-business application reported it through the agent's local API.
    App,
    /// The employee (or a script) used the agent's command line.
    Manual,
}

impl ItemSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemSource::Rule => "rule",
            ItemSource::App => "app",
            ItemSource::Manual => "manual",
        }
    }
}

/// A work item changed state on this desktop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkItemEvent {
    /// The business identifier of the item (claim, order, case number).
    pub item_id: String,
    pub action: ItemAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at_ms: UnixMillis,
    pub source: ItemSource,
}

/// The employee granted or withdrew consent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsentChange {
    pub granted: bool,
    /// The version of the organisation's notice the employee answered.
    pub policy_version: u32,
    /// What the consent covers, e.g. `activity,items`.
    pub scope: String,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at_ms: UnixMillis,
}

/// Periodic report on the agent itself, so losses and clock trouble are visible centrally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentHealth {
    pub agent_version: String,
    /// Events waiting in the spool when this report was made.
    pub spool_depth: u64,
    /// Events dropped since the agent was installed because the spool was full (cumulative).
    pub events_dropped: u64,
    /// Events the server refused as invalid and the agent set aside (cumulative).
    #[serde(default)]
    pub events_rejected: u64,
    /// Server clock minus agent clock, in ms, as last measured from the server's `Date` header.
    pub clock_offset_ms: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at_ms: UnixMillis,
    /// The desktop session the agent records in, when its platform can tell (Windows): whether
    /// the person works at the machine or through a remote session. Absent from older agents
    /// and from platforms that cannot tell, and then not sent at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<DesktopSession>,
}

/// The desktop session an agent records in: a property of the device, reported with its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DesktopSession {
    pub kind: SessionKind,
    /// The name of the client device of a remote session (`WTSClientName` on Windows), when
    /// the session reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
}

/// Where the person sits relative to the machine the agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// At the machine's own console.
    Local,
    /// Remote Desktop (RDP), including most VDI brokers that use it.
    Rdp,
    /// Citrix ICA/HDX.
    Citrix,
    /// A remote session whose protocol the platform does not name.
    Remote,
}

impl SessionKind {
    pub const ALL: [SessionKind; 4] = [
        SessionKind::Local,
        SessionKind::Rdp,
        SessionKind::Citrix,
        SessionKind::Remote,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Local => "local",
            SessionKind::Rdp => "rdp",
            SessionKind::Citrix => "citrix",
            SessionKind::Remote => "remote",
        }
    }

    /// Whether the person works through a remote session.
    pub fn is_remote(self) -> bool {
        self != SessionKind::Local
    }
}
