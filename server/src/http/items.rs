//! The items API: item status for contact-center agents, registration for back-office systems.
//! User documentation: `docs/status-api.md`.
//!
//! | route | roles | what |
//! |---|---|---|
//! | `GET /v1/items/{id}` | cc_agent, wfm, admin | status document |
//! | `GET /v1/items/{id}/timeline` | cc_agent, wfm, admin | every event (spans only for wfm/admin) |
//! | `GET /v1/items/{id}/events` | cc_agent, wfm, admin | SSE: the status document whenever it changes ([`super::item_stream`]) |
//! | `GET /v1/items?customer_ref=&queue=&status=&sla_state=&limit=` | cc_agent, wfm, admin | search |
//! | `POST /v1/items` | admin | register up to 1,000 items |
//! | `GET`/`PUT /v1/sla-classes` | admin (GET: wfm too) | named SLA targets |
//!
//! **Architecture invariant:** the tenant comes from the API key only, and an item of another
//! tenant answers exactly like an unknown one (404, same body). Every read of item data is
//! recorded in the audit log before the answer leaves; if it cannot be recorded the caller gets
//! 503 and no data (see [`crate::storage::audit`]).
//!
//! **Privacy invariant:** a contact-center agent reads where an item stands, never how a person
//! works. cc_agent keys get their own document types ([`CcStatusDoc`], [`CcTimelineEntry`]),
//! which have no field for a person's name, handle time, touches or activity spans; only wfm
//! and admin get [`StatusDoc`]. Person names appear (to wfm and admin) only where the tenant
//! enabled `show_person_names`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use backlight_shared::now_ms;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access_limits::Work;
use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::auth::ApiCaller;
use crate::clickhouse::ClickHouseError;
use crate::items::register::{self, PutSlaClasses, RegisterItems, Sla};
use crate::items::{
    self as domain, Eta, HandleTimeStats, ItemEvent, ItemState, Occurrence, SlaState, Status,
};
use crate::storage::audit::{AuditEntry, AuditError};
use crate::storage::changes::ChangeMark;
use crate::storage::items::{
    self as store, Assignment, ItemRead, ItemRow, LookupContext, SlaClassRow,
};
use crate::tenancy::Role;

/// Roles that may read item status.
pub const READERS: [Role; 3] = [Role::CcAgent, Role::Wfm, Role::Admin];
/// Most results of one search, and the default.
pub const MAX_SEARCH_LIMIT: u32 = 200;
pub const DEFAULT_SEARCH_LIMIT: u32 = 50;
/// Registered items examined when a search filters by derived status or SLA state.
pub const MAX_SEARCH_CANDIDATES: u64 = 1_000;
/// Most actions in the status document's `history` (the newest; the timeline has all).
pub const MAX_HISTORY: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/items", get(search).post(register_items))
        .route("/v1/items/{id}", get(lookup))
        .route("/v1/items/{id}/timeline", get(timeline))
        .route(
            "/v1/sla-classes",
            get(list_sla_classes).put(put_sla_classes),
        )
}

// ---------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------

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
    /// The item's actions, oldest first (the newest [`MAX_HISTORY`]); absent in search results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<TimelineEntry>>,
    pub as_of_ms: u64,
}

impl StatusDoc {
    /// The part of the document whose change is worth pushing to a stream (not the clock-driven
    /// `as_of_ms` and ETA, which move all the time).
    pub(super) fn fingerprint(&self) -> StatusDoc {
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
    /// The item's actions, oldest first (the newest [`MAX_HISTORY`]); absent in search results.
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
    fn for_audience(doc: StatusDoc, audience: Audience) -> ItemDoc {
        match audience {
            Audience::ContactCenter => ItemDoc::ContactCenter(doc.into()),
            Audience::Workforce => ItemDoc::Workforce(doc),
        }
    }

    /// See [`StatusDoc::fingerprint`].
    pub(super) fn fingerprint(&self) -> ItemDoc {
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
    /// Registered items examined (bounded by [`MAX_SEARCH_CANDIDATES`]).
    pub examined: usize,
}

// ---------------------------------------------------------------------------------------
// Building documents
// ---------------------------------------------------------------------------------------

/// Which documents a role reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Audience {
    /// cc_agent: where items stand, nothing about how people work.
    ContactCenter,
    /// wfm and admin: everything, names where the tenant shows them.
    Workforce,
}

impl Audience {
    fn of(role: Role) -> Audience {
        match role {
            Role::CcAgent => Audience::ContactCenter,
            Role::Wfm | Role::Admin => Audience::Workforce,
        }
    }
}

/// What the reader may see of people.
#[derive(Clone, Copy)]
struct Visibility {
    audience: Audience,
    person_names: bool,
    spans: bool,
}

impl Visibility {
    fn of(role: Role, show_person_names: bool) -> Visibility {
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

struct Who<'a> {
    assignments: &'a HashMap<Uuid, Assignment>,
    visibility: Visibility,
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

fn build_doc(
    item_id: &str,
    state: &ItemState,
    registration: Option<&ItemRow>,
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
    let due_ms = registration.map(|r| r.sla_due_ms).filter(|&d| d != 0);
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
        sla_class: registration
            .map(|r| r.sla_class.clone())
            .filter(|c| !c.is_empty()),
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
    registration: Option<ItemRow>,
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

/// Everything read for one item.
struct Loaded {
    state: ItemState,
    registration: Option<ItemRow>,
    /// The tenant's settings and assignments (cached per tenant).
    context: Arc<LookupContext>,
    stats: Arc<HandleTimeStats>,
    visibility: Visibility,
}

/// Reads one item of `caller`'s tenant; `None` when the tenant has no such item. The item's
/// events and registration are read in a batch with other lookups in flight; what the tenant
/// has in common for all its lookups comes from per-tenant caches.
async fn load(
    app: &AppState,
    caller: &ApiCaller,
    item_id: &str,
) -> Result<Option<Loaded>, ClickHouseError> {
    let client = app.store.client();
    let tenant = caller.tenant.as_str();
    let (read, context, stats) = tokio::try_join!(
        app.item_reader.read(tenant, item_id),
        app.lookup_context.get(client, tenant),
        app.handle_times.get(client, tenant),
    )?;
    let Some(ItemSnapshot {
        state,
        registration,
    }) = ItemSnapshot::from_read(read)
    else {
        return Ok(None);
    };
    let visibility = Visibility::of(caller.role, context.show_person_names);
    Ok(Some(Loaded {
        state,
        registration,
        context,
        stats,
        visibility,
    }))
}

async fn status_doc(
    app: &AppState,
    caller: &ApiCaller,
    item_id: &str,
) -> Result<Option<ItemDoc>, ClickHouseError> {
    Ok(load(app, caller, item_id).await?.map(|l| {
        let who = Who {
            assignments: &l.context.assignments,
            visibility: l.visibility,
        };
        let doc = build_doc(
            item_id,
            &l.state,
            l.registration.as_ref(),
            &who,
            &l.stats,
            true,
            now_ms(),
        );
        ItemDoc::for_audience(doc, l.visibility.audience)
    }))
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

fn not_found() -> ApiError {
    // Identical for unknown items and other tenants' items: nothing to tell them apart by.
    ApiError::not_found("no such item")
}

fn audit_unavailable(e: AuditError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// Records the call, and turns a refusal of the audit log into 503.
fn audit(
    app: &AppState,
    caller: &ApiCaller,
    action: &str,
    target: &str,
    outcome: &str,
) -> Result<(), ApiError> {
    app.audit
        .record(AuditEntry::by(caller, action, target, outcome))
        .map_err(audit_unavailable)
}

/// Runs `read`, records it in the audit log with its outcome, and only then returns it.
pub(super) async fn audited<T>(
    app: &AppState,
    caller: &ApiCaller,
    action: &str,
    target: &str,
    read: impl std::future::Future<Output = Result<Option<T>, ClickHouseError>>,
) -> Result<T, ApiError> {
    match read.await {
        Ok(Some(v)) => {
            audit(app, caller, action, target, "ok")?;
            Ok(v)
        }
        Ok(None) => {
            audit(app, caller, action, target, "not_found")?;
            Err(not_found())
        }
        Err(e) => {
            // The caller sees an error and no data; record the attempt if we still can.
            let _ = audit(app, caller, action, target, "error");
            Err(e.into())
        }
    }
}

pub(super) fn item_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::invalid_field("item_id", e.body_text()))?;
    register::check_lookup_id(&id).map_err(|m| ApiError::invalid_field("item_id", m))?;
    Ok(id)
}

#[utoipa::path(
    get,
    path = "/v1/items/{id}",
    tag = "items",
    operation_id = "get_item",
    description = "The status document of one item: status, step, handler, times, SLA, ETA and recent history. Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log. An item of another tenant answers exactly like an unknown one.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The item's business identifier (claim, order, case number)")),
    responses(
        (status = 200, description = "The status document: `CcStatusDoc` for cc_agent (no per-person figures), `StatusDoc` for wfm and admin", body = ItemDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such item (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid item id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn lookup(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ItemDoc>, ApiError> {
    caller.require(&READERS)?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Lookup)?;
    let id = item_id(path)?;
    let doc = audited(
        &app,
        &caller,
        "item_lookup",
        &id,
        status_doc(&app, &caller, &id),
    )
    .await?;
    Ok(Json(doc))
}

#[utoipa::path(
    get,
    path = "/v1/items/{id}/timeline",
    tag = "items",
    operation_id = "item_timeline",
    description = "Every recorded event of one item, oldest first. Activity spans and people are included only for `wfm` and `admin`; `cc_agent` sees actions and teams. Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The item's business identifier (claim, order, case number)")),
    responses(
        (status = 200, description = "The timeline: `CcTimelineDoc` (actions and teams only) for cc_agent, `TimelineDoc` for wfm and admin", body = Timeline),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such item (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid item id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn timeline(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Timeline>, ApiError> {
    caller.require(&READERS)?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Lookup)?;
    let id = item_id(path)?;
    let read = async {
        Ok(load(&app, &caller, &id).await?.map(|l| {
            let who = Who {
                assignments: &l.context.assignments,
                visibility: l.visibility,
            };
            let entries = l.state.timeline.iter().filter_map(|e| who.entry(e));
            match l.visibility.audience {
                Audience::ContactCenter => Timeline::ContactCenter(CcTimelineDoc {
                    item_id: id.clone(),
                    includes_spans: false,
                    entries: entries.map(CcTimelineEntry::from).collect(),
                }),
                Audience::Workforce => Timeline::Workforce(TimelineDoc {
                    item_id: id.clone(),
                    includes_spans: l.visibility.spans,
                    entries: entries.collect(),
                }),
            }
        }))
    };
    let doc = audited(&app, &caller, "item_timeline", &id, read).await?;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    /// Exact customer reference.
    customer_ref: Option<String>,
    /// Exact queue name.
    queue: Option<String>,
    /// `waiting`, `in_progress`, `paused` or `completed`.
    status: Option<String>,
    /// `on_track`, `at_risk`, `breached` or `none`.
    sla_state: Option<String>,
    /// Most items to return: 1-200, default 50.
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/items",
    tag = "items",
    operation_id = "search_items",
    description = "Registered items matching all given filters, as status documents without history (`CcStatusDoc` for cc_agent, `StatusDoc` for wfm and admin). Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    params(SearchParams),
    responses(
        (status = 200, description = "The matching items", body = SearchDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Unknown or invalid parameter (`invalid_query`, `invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn search(
    State(app): State<AppState>,
    caller: ApiCaller,
    RawQuery(raw): RawQuery,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<SearchDoc>, ApiError> {
    caller.require(&READERS)?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Search)?;
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::invalid_field(
                "status",
                "status must be waiting, in_progress, paused or completed",
            )
        })?),
    };
    let sla_state = match params.sla_state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(SlaState::parse(s).ok_or_else(|| {
            ApiError::invalid_field(
                "sla_state",
                "sla_state must be on_track, at_risk, breached or none",
            )
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("limit must be 1-{MAX_SEARCH_LIMIT}"),
        ));
    }
    let customer_ref = params.customer_ref.unwrap_or_default();
    let queue = params.queue.unwrap_or_default();
    for (field, value, max) in [
        (
            "customer_ref",
            &customer_ref,
            register::MAX_CUSTOMER_REF_LEN,
        ),
        ("queue", &queue, register::MAX_QUEUE_LEN),
    ] {
        if value.len() > max || value.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} must be at most {max} bytes without control characters"),
            ));
        }
    }
    let target = raw.unwrap_or_default();
    let read = async {
        let _turn = app.item_reads.enter().await?;
        let client = app.store.client();
        let tenant = caller.tenant.as_str();
        let candidates = if status.is_some() || sla_state.is_some() {
            MAX_SEARCH_CANDIDATES
        } else {
            u64::from(limit)
        };
        let (registrations, context, stats) = tokio::try_join!(
            store::search_registrations(client, tenant, &customer_ref, &queue, candidates),
            app.lookup_context.get(client, tenant),
            app.handle_times.get(client, tenant),
        )?;
        let ids: Vec<String> = registrations.iter().map(|r| r.item_id.clone()).collect();
        let mut events = store::events_of_items(client, tenant, &ids).await?;
        let states: Vec<(ItemRow, ItemState)> = registrations
            .into_iter()
            .map(|r| {
                let state = domain::derive(events.remove(&r.item_id).unwrap_or_default());
                (r, state)
            })
            .collect();
        let visibility = Visibility::of(caller.role, context.show_person_names);
        let who = Who {
            assignments: &context.assignments,
            visibility,
        };
        let now = now_ms();
        let examined = states.len();
        let items = states
            .iter()
            .map(|(r, s)| build_doc(&r.item_id, s, Some(r), &who, &stats, false, now))
            .filter(|d| {
                status.is_none_or(|s| d.status == s) && sla_state.is_none_or(|s| d.sla.state == s)
            })
            .take(limit as usize)
            .map(|d| ItemDoc::for_audience(d, visibility.audience))
            .collect();
        Ok(Some(SearchDoc { items, examined }))
    };
    let doc = audited(&app, &caller, "item_search", &target, read).await?;
    Ok(Json(doc))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Registered {
    registered: usize,
}

#[utoipa::path(
    post,
    path = "/v1/items",
    tag = "items",
    operation_id = "register_items",
    description = "Registers (or re-registers; the newest wins) up to 1,000 items with queue, priority, customer reference and SLA. Required role: `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    request_body = RegisterItems,
    responses(
        (status = 200, description = "Registered", body = Registered),
        (status = 400, description = "Malformed JSON", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "An item is invalid (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn register_items(
    State(app): State<AppState>,
    caller: ApiCaller,
    JsonBody(request): JsonBody<RegisterItems>,
) -> Result<Json<Registered>, ApiError> {
    caller.require(&[Role::Admin])?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Write)?;
    let client = app.store.client();
    let tenant = caller.tenant.as_str();
    let classes = if request.items.iter().any(|i| i.sla_class.is_some()) {
        store::sla_classes(client, tenant).await?
    } else {
        HashMap::new()
    };
    let now = now_ms();
    let slas = register::validate_items(&request, &classes, now)
        .map_err(|e| ApiError::invalid_field(e.field, e.message))?;
    let ids: Vec<String> = request.items.iter().map(|i| i.item_id.clone()).collect();
    let existing: HashMap<String, ItemRow> = store::registrations(client, tenant, &ids)
        .await?
        .into_iter()
        .map(|r| (r.item_id.clone(), r))
        .collect();
    let rows: Vec<ItemRow> = request
        .items
        .into_iter()
        .zip(slas)
        .map(|(item, sla)| {
            let previous = existing.get(&item.item_id);
            let registered_ms = previous.map_or(now, |p| p.registered_ms);
            let (sla_due_ms, sla_class) = match sla {
                Sla::None => (0, String::new()),
                Sla::Due(due) => (due, String::new()),
                Sla::Class { name, target_ms } => (registered_ms.saturating_add(target_ms), name),
            };
            ItemRow {
                tenant_id: tenant.to_string(),
                item_id: item.item_id,
                queue: item.queue,
                priority: item.priority,
                sla_due_ms,
                sla_class,
                customer_ref: item.customer_ref,
                registered_ms,
                // Strictly newer than what it replaces, even within one millisecond.
                updated_ms: now.max(previous.map_or(0, |p| p.updated_ms + 1)),
            }
        })
        .collect();
    let target = format!("{} items, first {}", rows.len(), rows[0].item_id);
    audit(&app, &caller, "item_register", &target, "ok")?;
    store::insert_registrations(client, &rows).await?;
    // Open streams of these items show the new registration (queue, SLA) at once.
    app.live.changed(
        tenant,
        rows.iter()
            .map(|r| (r.item_id.clone(), ChangeMark::registration(r.updated_ms))),
    );
    Ok(Json(Registered {
        registered: rows.len(),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SlaClassesDoc {
    classes: Vec<register::SlaClass>,
}

#[utoipa::path(
    get,
    path = "/v1/sla-classes",
    tag = "items",
    operation_id = "list_sla_classes",
    description = "The tenant's named SLA targets. Required role: `wfm` or `admin`.",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The SLA classes, by name", body = SlaClassesDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn list_sla_classes(
    State(app): State<AppState>,
    caller: ApiCaller,
) -> Result<Json<SlaClassesDoc>, ApiError> {
    caller.require(&[Role::Wfm, Role::Admin])?;
    let classes = store::sla_classes(app.store.client(), caller.tenant.as_str()).await?;
    let mut classes: Vec<register::SlaClass> = classes
        .into_iter()
        .map(|(sla_class, target_ms)| register::SlaClass {
            sla_class,
            target_ms,
        })
        .collect();
    classes.sort_by(|a, b| a.sla_class.cmp(&b.sla_class));
    Ok(Json(SlaClassesDoc { classes }))
}

#[utoipa::path(
    put,
    path = "/v1/sla-classes",
    tag = "items",
    operation_id = "put_sla_classes",
    description = "Creates or updates named SLA targets. Required role: `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    request_body = PutSlaClasses,
    responses(
        (status = 200, description = "The classes as saved", body = SlaClassesDoc),
        (status = 400, description = "Malformed JSON", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "A class is invalid (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn put_sla_classes(
    State(app): State<AppState>,
    caller: ApiCaller,
    JsonBody(request): JsonBody<PutSlaClasses>,
) -> Result<Json<SlaClassesDoc>, ApiError> {
    caller.require(&[Role::Admin])?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Write)?;
    register::validate_classes(&request)
        .map_err(|e| ApiError::invalid_field(e.field, e.message))?;
    let now = now_ms();
    let rows: Vec<SlaClassRow> = request
        .classes
        .iter()
        .map(|c| SlaClassRow {
            tenant_id: caller.tenant.to_string(),
            sla_class: c.sla_class.clone(),
            target_ms: c.target_ms,
            updated_ms: now,
        })
        .collect();
    audit(
        &app,
        &caller,
        "sla_classes_put",
        &format!("{} classes", rows.len()),
        "ok",
    )?;
    store::insert_sla_classes(app.store.client(), &rows).await?;
    Ok(Json(SlaClassesDoc {
        classes: request.classes,
    }))
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
