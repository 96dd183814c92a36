//! The background task that turns item changes into deliveries and sends them (design in
//! [`super`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backlight_shared::now_ms;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::deliver::{
    after_attempt, given_up, Deliverer, Outcome, MAX_PAYLOAD_BYTES, RETRY_WINDOW,
};
use super::events::{delivery_id, fired, Announced, EventType, Payload, PayloadData};
use super::owner::{Membership, HEARTBEAT_EVERY};
use super::records::{AnnouncedState, Delivery, DeliveryState, Webhook};
use super::WebhookConfig;
use crate::clickhouse::ClickHouseError;
use crate::http::AppState;
use crate::service::items::ItemSnapshot;
use crate::storage::changes::{self, ChangeMark, FeedChange, OVERLAP_MS};
use crate::storage::items as item_store;
use crate::storage::webhooks as store;
use crate::tenancy::{InvalidTenantId, TenantId};

/// How often the list of webhooks is re-read: a new webhook starts getting deliveries within
/// about this long (changes since its creation included).
const WEBHOOKS_REFRESH: Duration = Duration::from_secs(5);
/// How often pending deliveries due for a retry are looked for.
const RETRY_SCAN_EVERY: Duration = Duration::from_secs(5);
/// How often each tenant's evaluation cursor is saved.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(10);
/// Deliveries waiting to be sent on this server; beyond it they wait in ClickHouse for the
/// retry scan (nothing is lost, they are only later).
const QUEUE: usize = 10_000;
/// Attempts in flight at once on this server.
const CONCURRENT_ATTEMPTS: usize = 16;
/// Most due deliveries taken per retry scan.
const RETRY_SCAN_LIMIT: u64 = 2_000;
/// A new owner catches up at most this far back (the change feed keeps two days).
const MAX_CATCH_UP_MS: u64 = 24 * 3600 * 1000;

/// One delivery to attempt.
struct Job {
    row: Delivery,
    webhook: Arc<Webhook>,
}

/// Where one owned tenant's evaluation stands.
struct Progress {
    /// Changes visible at this instant were evaluated; the next read reaches back from here.
    feed_evaluated_ms: u64,
    /// SLA clock changes up to here were evaluated.
    sla_evaluated_ms: u64,
    last_sla_sweep: Option<Instant>,
    /// Changes already evaluated, per item (pruned as the read window moves on).
    handled: HashMap<String, HashSet<ChangeMark>>,
    /// Changes stamped before this are not announced: the tenant's first webhook did not exist
    /// yet (0 when continuing from a saved cursor).
    not_before_ms: u64,
}

impl Progress {
    fn starting_at(start: Start) -> Progress {
        let (ms, not_before_ms) = match start {
            Start::Cursor(ms) => (ms, 0),
            Start::FirstWebhook(ms) => (ms, ms),
        };
        Progress {
            feed_evaluated_ms: ms,
            sla_evaluated_ms: ms,
            last_sla_sweep: None,
            handled: HashMap::new(),
            not_before_ms,
        }
    }

    fn cursor(&self) -> u64 {
        self.feed_evaluated_ms.min(self.sla_evaluated_ms)
    }
}

/// What one tenant's evaluation produced, applied once its rows are stored.
struct Evaluation {
    tenant: String,
    deliveries: Vec<(Delivery, Arc<Webhook>)>,
    states: Vec<AnnouncedState>,
    handled: Vec<(String, Vec<ChangeMark>)>,
    at_ms: u64,
    swept: bool,
}

/// State shared by the loop and the attempts.
struct Shared {
    app: AppState,
    config: WebhookConfig,
    deliverer: Deliverer,
    /// Deliveries being attempted, or attempted with the outcome not stored yet: the retry scan
    /// must not pick them up again.
    in_flight: Mutex<HashSet<String>>,
    /// Outcomes of attempts, stored by the loop in one INSERT per tick.
    outcomes: Mutex<Vec<Delivery>>,
    /// The current webhooks, by (tenant, webhook id).
    webhooks: Mutex<HashMap<(String, String), Arc<Webhook>>>,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs until `stop` turns true, then stores what it holds and leaves the membership.
pub(super) async fn run(
    app: AppState,
    config: WebhookConfig,
    deliverer: Deliverer,
    mut stop: watch::Receiver<bool>,
) {
    let client = app.store.client().clone();
    let mut membership = Membership::new(client.clone(), config.host.clone());
    tracing::info!(
        server_id = membership.server_id(),
        "webhook deliveries: joined"
    );
    let shared = Arc::new(Shared {
        app,
        config,
        deliverer,
        in_flight: Mutex::default(),
        outcomes: Mutex::default(),
        webhooks: Mutex::default(),
    });
    let (queue, jobs) = mpsc::channel::<Job>(QUEUE);
    let sender = tokio::spawn(send_jobs(shared.clone(), jobs));

    let mut progress: HashMap<String, Progress> = HashMap::new();
    let mut last_membership: Option<Instant> = None;
    let mut last_webhooks: Option<Instant> = None;
    let mut last_retry_scan: Option<Instant> = None;
    let mut last_cursor_save = Instant::now();
    let mut ticker = tokio::time::interval(shared.config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        if due(last_membership, HEARTBEAT_EVERY) {
            match membership.refresh().await {
                Ok(()) => last_membership = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliveries: cannot write the heartbeat; retrying")
                }
            }
        }
        if due(last_webhooks, WEBHOOKS_REFRESH) {
            match store::active_webhooks(&client).await {
                Ok(rows) => {
                    // A webhook whose row does not parse is left out (logged and counted
                    // each time the list is read); every other webhook goes on.
                    *Shared::lock(&shared.webhooks) = rows
                        .into_iter()
                        .filter_map(|w| w.inspect_err(|e| e.report_refused("a webhook")).ok())
                        .map(|w| ((w.tenant_id.clone(), w.webhook_id.clone()), Arc::new(w)))
                        .collect();
                    last_webhooks = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliveries: cannot read the webhooks; retrying")
                }
            }
        }
        let owned = owned_tenants(&shared, &membership);
        progress.retain(|tenant, _| owned.contains_key(tenant));
        store_outcomes(&shared).await;
        evaluate_owned(&shared, &owned, &mut progress, &queue).await;
        if due(last_retry_scan, RETRY_SCAN_EVERY) {
            last_retry_scan = Some(Instant::now());
            enqueue_due(&shared, &owned, &queue).await;
        }
        if last_cursor_save.elapsed() >= CURSOR_SAVE_EVERY && save_cursors(&client, &progress).await
        {
            last_cursor_save = Instant::now();
        }
        metrics::gauge!("backlight_webhook_owned_tenants").set(owned.len() as f64);
    }
    // Stop: no new attempts; wait briefly for running ones, store their outcomes, leave.
    drop(queue);
    let _ = tokio::time::timeout(Duration::from_secs(10), sender).await;
    store_outcomes(&shared).await;
    // The next owner continues exactly from here.
    save_cursors(&client, &progress).await;
    if let Err(e) = membership.leave().await {
        tracing::warn!(error = %e, "webhook deliveries: could not say goodbye; the others take over when the heartbeat expires");
    }
}

/// Saves how far each owned tenant's evaluation got; whether it was saved.
async fn save_cursors(client: &clickhouse::Client, progress: &HashMap<String, Progress>) -> bool {
    if progress.is_empty() {
        return true;
    }
    let cursors: Vec<(String, u64)> = progress
        .iter()
        .map(|(t, p)| (t.clone(), p.cursor()))
        .collect();
    match store::save_cursors(client, &cursors, now_ms()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "webhook deliveries: cannot save the evaluation cursors; retrying");
            false
        }
    }
}

fn due(last: Option<Instant>, every: Duration) -> bool {
    last.is_none_or(|t| t.elapsed() >= every)
}

/// The tenants this server owns now, with their webhooks.
fn owned_tenants(shared: &Shared, membership: &Membership) -> HashMap<String, Vec<Arc<Webhook>>> {
    let mut owned: HashMap<String, Vec<Arc<Webhook>>> = HashMap::new();
    for ((tenant, _), webhook) in Shared::lock(&shared.webhooks).iter() {
        if membership.owns(tenant) {
            owned
                .entry(tenant.clone())
                .or_default()
                .push(webhook.clone());
        }
    }
    owned
}

/// Evaluates every owned tenant, stores the deliveries and then the announced states (in that
/// order: a crash in between repeats deliveries, never loses one), then queues the deliveries.
async fn evaluate_owned(
    shared: &Shared,
    owned: &HashMap<String, Vec<Arc<Webhook>>>,
    progress: &mut HashMap<String, Progress>,
    queue: &mpsc::Sender<Job>,
) {
    let client = shared.app.store.client();
    for (tenant, webhooks) in owned {
        if progress.contains_key(tenant) {
            continue;
        }
        match starting_point(client, tenant, webhooks).await {
            Ok(start) => {
                tracing::info!(
                    tenant,
                    ?start,
                    "webhook deliveries: now evaluating this tenant"
                );
                progress.insert(tenant.clone(), Progress::starting_at(start));
            }
            Err(e) => {
                tracing::warn!(tenant, error = %e, "webhook deliveries: cannot read the evaluation cursor; retrying");
            }
        }
    }
    if progress.is_empty() {
        return;
    }
    let evaluations = match evaluate(shared, owned, progress).await {
        Ok(evaluations) => evaluations,
        Err(e) => {
            metrics::counter!("backlight_webhook_evaluation_errors_total").increment(1);
            tracing::warn!(error = %e, "webhook deliveries: evaluation failed; retrying at the next tick");
            return;
        }
    };
    let deliveries: Vec<Delivery> = evaluations
        .iter()
        .flat_map(|e| e.deliveries.iter().map(|(row, _)| row.clone()))
        .collect();
    if let Err(e) = store::insert_deliveries(client, &deliveries).await {
        tracing::warn!(error = %e, "webhook deliveries: cannot store new deliveries; evaluating again at the next tick");
        return;
    }
    metrics::counter!("backlight_webhook_deliveries_created_total")
        .increment(deliveries.len() as u64);
    let states: Vec<AnnouncedState> = evaluations.iter().flat_map(|e| e.states.clone()).collect();
    let states_stored = match store::insert_item_states(client, &states).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "webhook deliveries: cannot store what was announced; evaluating again at the next tick");
            false
        }
    };
    for evaluation in evaluations {
        for (row, webhook) in evaluation.deliveries {
            enqueue(shared, queue, row, webhook);
        }
        if !states_stored {
            continue;
        }
        let Some(p) = progress.get_mut(&evaluation.tenant) else {
            continue;
        };
        for (item, marks) in evaluation.handled {
            p.handled.entry(item).or_default().extend(marks);
        }
        p.feed_evaluated_ms = evaluation.at_ms;
        if evaluation.swept {
            p.sla_evaluated_ms = evaluation.at_ms;
            p.last_sla_sweep = Some(Instant::now());
        }
        let floor = evaluation.at_ms.saturating_sub(OVERLAP_MS);
        p.handled.retain(|_, marks| {
            marks.retain(|m| m.stamp > floor);
            !marks.is_empty()
        });
    }
}

/// Where a newly owned tenant's evaluation starts (ms), at most [`MAX_CATCH_UP_MS`] back.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Where the previous owner got to.
    Cursor(u64),
    /// Never evaluated: the creation of its oldest webhook (changes made before any webhook
    /// existed are not announced).
    FirstWebhook(u64),
}

async fn starting_point(
    client: &clickhouse::Client,
    tenant: &str,
    webhooks: &[Arc<Webhook>],
) -> Result<Start, ClickHouseError> {
    let now = now_ms();
    let oldest = now.saturating_sub(MAX_CATCH_UP_MS);
    Ok(match store::cursor(client, tenant).await? {
        Some(cursor) => Start::Cursor(cursor.max(oldest)),
        None => {
            let created = webhooks.iter().map(|w| w.created_ms).min().unwrap_or(now);
            Start::FirstWebhook(created.max(oldest))
        }
    })
}

/// Finds the owned tenants' items whose status or SLA may have changed — one read of the
/// change feed for all of them, and every `sla_sweep` one query for the SLA clock — reads those
/// items and compares each with what was announced.
async fn evaluate(
    shared: &Shared,
    owned: &HashMap<String, Vec<Arc<Webhook>>>,
    progress: &HashMap<String, Progress>,
) -> Result<Vec<Evaluation>, ClickHouseError> {
    let client = shared.app.store.client();
    let now = now_ms();
    let tenants: Vec<String> = progress.keys().cloned().collect();
    let mut evaluations: HashMap<String, Evaluation> = HashMap::new();
    // Per tenant, the items to read, with the changes each read must hold to count as seen.
    let mut candidates: HashMap<String, HashMap<String, Vec<ChangeMark>>> = HashMap::new();
    let since = progress
        .values()
        .map(|p| p.feed_evaluated_ms)
        .min()
        .unwrap_or(now)
        .saturating_sub(OVERLAP_MS);
    let changed = changes::changed_since(client, &tenants, since, None).await?;
    for (tenant, p) in progress {
        let swept = p
            .last_sla_sweep
            .is_none_or(|t| t.elapsed() >= shared.config.sla_sweep);
        evaluations.insert(
            tenant.clone(),
            Evaluation {
                tenant: tenant.clone(),
                deliveries: Vec::new(),
                states: Vec::new(),
                handled: Vec::new(),
                at_ms: now,
                swept,
            },
        );
    }
    for item in changed {
        let (Some(p), Some(evaluation)) = (
            progress.get(&item.tenant_id),
            evaluations.get_mut(&item.tenant_id),
        ) else {
            continue;
        };
        let floor = p.feed_evaluated_ms.saturating_sub(OVERLAP_MS);
        let known = p.handled.get(&item.item_id);
        let new = item.changes.into_iter().filter(|c| {
            let stamp = c.mark.stamp;
            stamp > floor && stamp >= p.not_before_ms && known.is_none_or(|k| !k.contains(&c.mark))
        });
        // Activity spans alone change neither the status nor what the SLA rules look at: they
        // are handled unread.
        let (relevant, spans): (Vec<FeedChange>, Vec<FeedChange>) =
            new.partition(|c| c.status_relevant);
        if !spans.is_empty() {
            let marks = spans.into_iter().map(|c| c.mark).collect();
            evaluation.handled.push((item.item_id.clone(), marks));
        }
        if !relevant.is_empty() {
            candidates
                .entry(item.tenant_id.clone())
                .or_default()
                .entry(item.item_id)
                .or_default()
                .extend(relevant.into_iter().map(|c| c.mark));
        }
    }
    let sweeping: Vec<String> = evaluations
        .values()
        .filter(|e| e.swept)
        .map(|e| e.tenant.clone())
        .collect();
    if !sweeping.is_empty() {
        let after = sweeping
            .iter()
            .filter_map(|t| progress.get(t))
            .map(|p| p.sla_evaluated_ms)
            .min()
            .unwrap_or(now);
        for (tenant, item_id) in
            item_store::sla_clock_changes(client, &sweeping, after, now).await?
        {
            candidates
                .entry(tenant)
                .or_default()
                .entry(item_id)
                .or_default();
        }
    }
    for (tenant, items) in candidates {
        let (Some(evaluation), Some(webhooks)) = (evaluations.get_mut(&tenant), owned.get(&tenant))
        else {
            continue;
        };
        compare(shared, &tenant, webhooks, items, now, evaluation).await?;
    }
    Ok(evaluations.into_values().collect())
}

/// Reads `items` of one tenant and adds to `evaluation` what changed since it was announced.
/// A change its read does not hold yet (the feed row was visible before the lookup row) stays
/// unhandled: the next evaluation reads the item again.
async fn compare(
    shared: &Shared,
    tenant: &str,
    webhooks: &[Arc<Webhook>],
    items: HashMap<String, Vec<ChangeMark>>,
    now: u64,
    evaluation: &mut Evaluation,
) -> Result<(), ClickHouseError> {
    let (ids, marks): (Vec<String>, Vec<Vec<ChangeMark>>) = items.into_iter().unzip();
    // The feed's tenant ids were written by this server from parsed ones.
    let tenant_id: TenantId = tenant
        .parse()
        .map_err(|e: InvalidTenantId| ClickHouseError::Interrupted(e.to_string()))?;
    let items = shared.app.items();
    let (reads, context, announced) = tokio::join!(
        items.read_each(&tenant_id, &ids),
        items.context(&tenant_id),
        store::item_states(shared.app.store.client(), tenant, &ids),
    );
    let ((context, stats), announced) = (context?, announced?);
    for ((item_id, read), marks) in ids.iter().zip(reads).zip(marks) {
        let read = read?;
        let (seen, unseen): (Vec<ChangeMark>, Vec<ChangeMark>) =
            marks.into_iter().partition(|m| m.seen_in(&read));
        if !unseen.is_empty() {
            metrics::counter!("backlight_webhook_reads_ahead_of_lookup_total")
                .increment(unseen.len() as u64);
        }
        if !seen.is_empty() {
            evaluation.handled.push((item_id.clone(), seen));
        }
        let Some(snapshot) = ItemSnapshot::from_read(read) else {
            continue;
        };
        // What a contact-center agent would see: where the item stands, no per-person figures.
        let doc = snapshot.contact_center_document(item_id, &context, &stats, false, now);
        let current = Announced {
            status: doc.status,
            sla_state: doc.sla.state,
        };
        // What was announced but no longer parses counts as nothing announced (the item's
        // news is announced again), logged and counted.
        let before = match announced.get(item_id) {
            Some(Ok(before)) => Some(*before),
            Some(Err(e)) => {
                e.report_refused("what webhooks announced about an item");
                None
            }
            None => None,
        };
        if before == Some(current) {
            continue;
        }
        evaluation.states.push(AnnouncedState {
            tenant_id: tenant.to_string(),
            item_id: item_id.clone(),
            announced: current,
            updated_ms: now,
        });
        for event in fired(before, current) {
            for webhook in webhooks.iter().filter(|w| w.subscribes(event)) {
                match new_delivery(webhook, event, before, &doc, now) {
                    Some(row) => evaluation.deliveries.push((row, webhook.clone())),
                    None => {
                        metrics::counter!("backlight_webhook_payloads_too_large_total")
                            .increment(1);
                        tracing::error!(tenant, item_id, webhook_id = %webhook.webhook_id, "webhook payload larger than {MAX_PAYLOAD_BYTES} bytes; not delivered");
                    }
                }
            }
        }
    }
    Ok(())
}

/// A new pending delivery; `None` when its payload is over the bound.
fn new_delivery(
    webhook: &Webhook,
    event: EventType,
    previous: Option<Announced>,
    doc: &crate::service::items::CcStatusDoc,
    now: u64,
) -> Option<Delivery> {
    let id = delivery_id(&webhook.webhook_id, event, doc);
    let payload = Payload {
        id: &id,
        event,
        created_ms: now,
        tenant_id: &webhook.tenant_id,
        webhook_id: &webhook.webhook_id,
        data: PayloadData {
            item_id: &doc.item_id,
            previous,
            item: doc,
        },
    };
    let payload = serde_json::to_string(&payload).ok()?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    Some(Delivery {
        tenant_id: webhook.tenant_id.clone(),
        webhook_id: webhook.webhook_id.clone(),
        delivery_id: id,
        event_type: event,
        item_id: doc.item_id.clone(),
        created_ms: now,
        payload,
        state: DeliveryState::Pending,
        attempts: 0,
        last_attempt_ms: 0,
        last_status: 0,
        last_error: String::new(),
        next_attempt_ms: now,
    })
}

/// Queues a delivery unless it is being attempted already; a full queue leaves it pending in
/// ClickHouse for the retry scan.
fn enqueue(shared: &Shared, queue: &mpsc::Sender<Job>, row: Delivery, webhook: Arc<Webhook>) {
    if !Shared::lock(&shared.in_flight).insert(row.delivery_id.clone()) {
        return;
    }
    let id = row.delivery_id.clone();
    if queue.try_send(Job { row, webhook }).is_err() {
        Shared::lock(&shared.in_flight).remove(&id);
        metrics::counter!("backlight_webhook_queue_full_total").increment(1);
    }
}

/// Queues the owned tenants' pending deliveries whose next attempt is due.
async fn enqueue_due(
    shared: &Shared,
    owned: &HashMap<String, Vec<Arc<Webhook>>>,
    queue: &mpsc::Sender<Job>,
) {
    if owned.is_empty() {
        return;
    }
    let tenants: Vec<String> = owned.keys().cloned().collect();
    let now = now_ms();
    let from_ms = now.saturating_sub(RETRY_WINDOW.as_millis() as u64);
    let due = match store::due_deliveries(
        shared.app.store.client(),
        &tenants,
        from_ms,
        now,
        RETRY_SCAN_LIMIT,
    )
    .await
    {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "webhook deliveries: cannot look for retries; trying again shortly");
            return;
        }
    };
    let webhooks = Shared::lock(&shared.webhooks).clone();
    for row in due {
        // A delivery whose row does not parse stays pending in the log, is not attempted,
        // and is logged and counted at every scan until someone repairs or drops it.
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                e.report_refused("a webhook delivery");
                continue;
            }
        };
        match webhooks.get(&(row.tenant_id.clone(), row.webhook_id.clone())) {
            Some(webhook) => enqueue(shared, queue, row, webhook.clone()),
            // The webhook was deleted: nothing more goes out for it.
            None => {
                Shared::lock(&shared.outcomes).push(given_up(&row, "the webhook was deleted", now))
            }
        }
    }
}

/// Attempts queued deliveries, at most [`CONCURRENT_ATTEMPTS`] at once, until the queue closes.
async fn send_jobs(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_ATTEMPTS));
    let mut running = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        running.spawn(async move {
            attempt(&shared, job).await;
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn attempt(shared: &Shared, job: Job) {
    let Job { row, webhook } = job;
    let now = now_ms();
    let outcome = shared
        .deliverer
        .attempt(
            webhook.url.as_str(),
            &webhook.secret,
            &row.delivery_id,
            row.event_type.as_str(),
            row.payload.as_bytes(),
            now / 1000,
        )
        .await;
    let label = match &outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Failed { .. } => "failed",
    };
    metrics::counter!("backlight_webhook_attempts_total", "outcome" => label).increment(1);
    let next = after_attempt(&row, &outcome, now_ms(), shared.config.retry_base);
    if let Outcome::Failed { error, .. } = &outcome {
        tracing::info!(delivery_id = %row.delivery_id, webhook_id = %row.webhook_id, attempts = next.attempts, state = next.state.as_str(), error, "webhook delivery attempt failed");
    }
    Shared::lock(&shared.outcomes).push(next);
}

/// Stores the outcomes of finished attempts (one INSERT), then lets the retry scan see those
/// deliveries again. Kept for the next tick when ClickHouse refuses.
async fn store_outcomes(shared: &Shared) {
    let outcomes = std::mem::take(&mut *Shared::lock(&shared.outcomes));
    if outcomes.is_empty() {
        return;
    }
    match store::insert_deliveries(shared.app.store.client(), &outcomes).await {
        Ok(()) => {
            let mut in_flight = Shared::lock(&shared.in_flight);
            for row in &outcomes {
                in_flight.remove(&row.delivery_id);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = outcomes.len(), "webhook deliveries: cannot store attempt outcomes; retrying");
            let mut pending = Shared::lock(&shared.outcomes);
            // Bounded: past the queue size, drop the oldest outcomes; their deliveries are
            // attempted again later (at least once, never lost).
            let mut all = outcomes;
            all.append(&mut pending);
            let excess = all.len().saturating_sub(QUEUE);
            if excess > 0 {
                let mut in_flight = Shared::lock(&shared.in_flight);
                for row in all.drain(..excess) {
                    in_flight.remove(&row.delivery_id);
                }
            }
            *pending = all;
        }
    }
}
