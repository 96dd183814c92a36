//! `GET /v1/items/{id}/events`: the status document of one item as server-sent events, at once
//! and whenever it changes. User documentation: `docs/status-api.md` ("Live updates").
//!
//! A stream does not read ClickHouse on a timer: it watches its item in the [`LiveHub`]
//! ([`crate::live`]), which tells it when the item changed (ingested here or on any other
//! server) and hands it the item as read once for all its watchers. The stream builds its own
//! document from that read (its caller's role decides what it shows) and rebuilds it once a
//! second from the same read, so changes that only the clock makes (an SLA falling due) are
//! pushed too. A document is sent only when something other than the clock-driven `as_of_ms`
//! and ETA changed.
//!
//! Limits: each API key holds at most `--max-streams-per-key` streams on a server (then 429
//! with Retry-After); a stream ends after [`STREAM_LIFETIME`], when its key is revoked (within
//! the hub's revocation check interval), and when the server shuts down.
//!
//! [`LiveHub`]: crate::live::LiveHub

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use backlight_shared::now_ms;
use serde::Serialize;
use tokio::time::Instant;

use super::audit::audited;
use super::error::ApiError;
use super::items::{item_id, READERS};
use super::AppState;
use crate::auth::ApiCaller;
use crate::clickhouse::ClickHouseError;
use crate::items::HandleTimeStats;
use crate::live::{StreamPermit, StreamRefused, StreamStanding, Subscription, Update};
use crate::service::items::LookupContext;
use crate::service::items::{ItemDoc, ItemSnapshot, Loaded};

/// Longest a status stream stays open; the client reconnects after the `end` event.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Comment lines sent on an idle stream so proxies keep it open.
pub const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream rebuilds its document from its last read (no ClickHouse read), for
/// changes the clock makes: SLA at risk or breached as the due time nears and passes.
pub const STREAM_REFRESH: Duration = Duration::from_secs(1);
/// How long a stream reuses its tenant's settings, assignments and ETA statistics while its item
/// does not change (a change of names or teams reaches open streams within this).
pub const STREAM_CONTEXT_REFRESH: Duration = Duration::from_secs(5);
/// What a client refused for holding too many streams is told to wait.
pub const STREAM_LIMIT_RETRY_AFTER_SECS: u32 = 30;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/items/{id}/events", get(stream))
}

/// State of one open status stream.
struct ItemStream {
    app: AppState,
    caller: ApiCaller,
    item_id: String,
    /// The first document, sent as the stream's first event.
    first: Option<ItemDoc>,
    /// The last read of the item; documents are rebuilt from it.
    snapshot: Arc<ItemSnapshot>,
    /// The tenant context the last document was built with, and when it was fetched.
    context: Option<(Instant, Arc<LookupContext>, Arc<HandleTimeStats>)>,
    /// Fingerprint of the last document sent.
    last: Option<ItemDoc>,
    updates: Subscription,
    permit: StreamPermit,
    refresh: tokio::time::Interval,
    deadline: Instant,
    /// Whether the stream is showing an `error` (sent once per failing streak).
    failing: bool,
    ended: bool,
}

fn sse_json(name: &str, value: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|_| {
            SseEvent::default()
                .event("error")
                .data("{\"error\":\"internal\"}")
        })
}

fn end_event(reason: &str) -> SseEvent {
    sse_json("end", &serde_json::json!({ "reason": reason }))
}

fn error_event() -> SseEvent {
    let body = ApiError::unavailable("storage unavailable; the stream keeps trying").body;
    sse_json("error", &body)
}

/// What a stream does next.
enum Step {
    Send(SseEvent),
    End(&'static str),
    Nothing,
}

impl ItemStream {
    /// The tenant's settings, assignments and ETA statistics: fetched from the per-tenant
    /// caches after a change of the item, or when [`STREAM_CONTEXT_REFRESH`] passed; the clock
    /// alone reuses them (so a stream's once-a-second rebuild costs no query whatever the
    /// caches' TTL).
    async fn context(
        &mut self,
        fresh: bool,
    ) -> Result<(Arc<LookupContext>, Arc<HandleTimeStats>), ClickHouseError> {
        if let Some((at, context, stats)) = &self.context {
            if !fresh && at.elapsed() < STREAM_CONTEXT_REFRESH {
                return Ok((context.clone(), stats.clone()));
            }
        }
        let (context, stats) = self.app.items().context(&self.caller.tenant).await?;
        self.context = Some((Instant::now(), context.clone(), stats.clone()));
        Ok((context, stats))
    }

    /// The document of the current snapshot for this stream's caller, now.
    async fn document(&mut self, fresh: bool) -> Result<ItemDoc, ClickHouseError> {
        let (context, stats) = self.context(fresh).await?;
        Ok(self.snapshot.document(
            &self.item_id,
            self.caller.role,
            &context,
            &stats,
            true,
            now_ms(),
        ))
    }

    /// Builds the document and decides whether it is worth sending; `fresh` after a change of
    /// the item.
    async fn rebuild(&mut self, fresh: bool) -> Step {
        match self.document(fresh).await {
            Ok(doc) => {
                self.failing = false;
                let fingerprint = doc.fingerprint();
                if self.last.as_ref() == Some(&fingerprint) {
                    return Step::Nothing;
                }
                self.last = Some(fingerprint);
                Step::Send(sse_json("status", &doc))
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) -> Step {
        if self.failing {
            return Step::Nothing;
        }
        self.failing = true;
        tracing::warn!(error = %e, item_id = %self.item_id, "status stream cannot build its document; it keeps trying");
        Step::Send(error_event())
    }

    async fn next_step(&mut self) -> Step {
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline) => Step::End("stream lifetime reached; reconnect"),
            changed = self.permit.standing.changed() => match changed.map(|()| *self.permit.standing.borrow()) {
                Ok(StreamStanding::Open) => Step::Nothing,
                Ok(StreamStanding::KeyRevoked) => Step::End("API key revoked"),
                Ok(StreamStanding::KeyUnverified) => Step::End("the API key could not be re-checked; reconnect"),
                Ok(StreamStanding::ServerStopping) | Err(_) => Step::End("server shutting down; reconnect"),
            },
            changed = self.updates.updates.changed() => {
                if changed.is_err() {
                    return Step::End("server shutting down; reconnect");
                }
                let update = self.updates.updates.borrow_and_update().clone();
                match update {
                    Update::Read(read) => match ItemSnapshot::from_read((*read).clone()) {
                        Some(snapshot) => {
                            self.snapshot = Arc::new(snapshot);
                            self.rebuild(true).await
                        }
                        None => Step::Nothing, // items do not disappear
                    },
                    Update::Unavailable => self.failed(&"the item could not be read"),
                    Update::None => Step::Nothing,
                }
            }
            _ = self.refresh.tick() => self.rebuild(false).await,
        }
    }
}

async fn next_stream_event(
    mut st: ItemStream,
) -> Option<(Result<SseEvent, Infallible>, ItemStream)> {
    if let Some(doc) = st.first.take() {
        st.last = Some(doc.fingerprint());
        return Some((Ok(sse_json("status", &doc)), st));
    }
    loop {
        if st.ended {
            return None;
        }
        match st.next_step().await {
            Step::Send(event) => return Some((Ok(event), st)),
            Step::End(reason) => {
                st.ended = true;
                return Some((Ok(end_event(reason)), st));
            }
            Step::Nothing => {}
        }
    }
}

fn refused(e: StreamRefused) -> ApiError {
    match e {
        StreamRefused::KeyLimit(_) => ApiError {
            retry_after: Some(STREAM_LIMIT_RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                e.to_string(),
            )
        },
        StreamRefused::ServerLimit(_) | StreamRefused::Stopping => {
            ApiError::unavailable(e.to_string())
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/items/{id}/events",
    tag = "items",
    operation_id = "item_events",
    description = "Server-sent events: a `status` event with the status document at once and whenever it changes (ingested through any server, registered, or an SLA falling due by the clock; within about a second); `error` (an `ErrorBody`) while storage is unavailable; `end` (`{\"reason\": …}`) when the stream's 30-minute lifetime is reached, its API key was revoked, or the server shuts down (reconnect unless revoked). Keep-alive comments every 15 s. Each API key may hold a limited number of open streams per server (default 200). Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The item's business identifier (claim, order, case number)")),
    responses(
        (status = 200, description = "An event stream; each `data:` line is JSON (for `status` events the status document in the caller's role's form: `CcStatusDoc` for cc_agent, `StatusDoc` for wfm and admin)", body = String, content_type = "text/event-stream"),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such item (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid item id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key already holds the most open streams allowed on this server (`too_many_streams`)", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable, or the server holds the most streams it allows; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn stream(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.require(&READERS)?;
    let id = item_id(path)?;
    let permit = app.live.open_stream(&caller.key_id).map_err(refused)?;
    // Watch before the first read: a change stored in between is then not missed.
    let updates = app.live.watch(caller.tenant.as_str(), &id);
    let first_read = async {
        let loaded = app.items().load(&caller.tenant, &id).await?;
        Ok(loaded.map(
            |Loaded {
                 snapshot,
                 context,
                 stats,
             }| {
                let doc = snapshot.document(&id, caller.role, &context, &stats, true, now_ms());
                (snapshot, doc)
            },
        ))
    };
    let (snapshot, first) = audited(&app, &caller, "item_stream", &id, first_read).await?;
    let start = Instant::now();
    let state = ItemStream {
        app,
        caller,
        item_id: id,
        first: Some(first),
        snapshot: Arc::new(snapshot),
        context: None,
        last: None,
        updates,
        permit,
        refresh: {
            let mut every = tokio::time::interval_at(start + STREAM_REFRESH, STREAM_REFRESH);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every
        },
        deadline: start + STREAM_LIFETIME,
        failing: false,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, next_stream_event);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response();
    // nginx (deploy/compose) and similar proxies would otherwise buffer the events.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}
