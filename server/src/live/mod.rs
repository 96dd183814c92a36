//! Live item status for open streams (`GET /v1/items/{id}/events`, the lookup page) at a cost
//! that does not grow with the number of watchers.
//!
//! ## How a change reaches a watcher
//!
//! A stream *watches* its item here ([`LiveHub::watch`]) instead of reading it on a timer. The
//! hub keeps, per tenant and item, one [`tokio::sync::watch`] channel that every stream of that
//! item listens to, and a set of items whose change is known but not yet read (`pending`). One
//! task, the [`ticker`], does the rest:
//!
//! 1. **Local changes at once.** The server that ingested a batch (or registered items) marks
//!    the watched items it named as pending after ClickHouse accepted them
//!    ([`LiveHub::changed`]); that wakes the ticker.
//! 2. **Other servers' changes by one query.** Every tick the ticker reads the change feed
//!    ([`crate::storage::changes`]) once for *all* watched items of *all* tenants: the items
//!    that changed in the last [`OVERLAP_MS`] by a change this server has not handled yet
//!    become pending too. Servers stay stateless: the feed is in ClickHouse, and a restarted
//!    server only needs its clients to reconnect (they get the current document first).
//! 3. **One read per changed item, shared by its watchers.** The pending items are read through
//!    the batched lookup path ([`ItemReader`]: up to 64 items per query) and each result is
//!    published once to the item's channel; every stream of the item builds its own document
//!    from it (its role decides what it may see).
//!
//! The feed is read every [`LiveConfig::tick`] (500 ms) while anything is watched; changed items
//! are read as soon as they are known, but at most once per tick. So 1,000 idle streams cost
//! two small queries a second, and a busy second at most two feed reads and two rounds of
//! batched item reads, whatever the number of streams and changes. A local change reaches its
//! watchers at once when items were not read in the last tick, else within a tick; another
//! server's change within a tick or two (plus the reads).
//!
//! Between changes, each stream rebuilds its document from the last read once a second without
//! reading ClickHouse, so clock-driven changes (an SLA falling due) still reach it.
//!
//! ## Per-key limits and revocation
//!
//! Each API key may hold [`LiveConfig::max_streams_per_key`] open streams on a server (more are
//! refused with 429), and the server holds at most [`LiveConfig::max_streams`]. Every
//! [`LiveConfig::key_check`] one query asks whether any key holding streams was revoked; the
//! streams of a revoked key end at once.

mod keys;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use backlight_shared::event::{Event, EventBody};
use backlight_shared::now_ms;
use clickhouse::Client;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::storage::changes::{self, ChangeMark, OVERLAP_MS};
use crate::storage::item_reader::ItemReader;
use crate::storage::items::ItemRead;
use crate::storage::registry::Registry;

pub use keys::{StreamPermit, StreamRefused, StreamStanding, UNVERIFIED_AFTER_CHECKS};

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// How often the change feed is read while anything is watched (the longest a change
    /// ingested by another server waits before this one looks for it), and the shortest time
    /// between two rounds of item reads.
    pub tick: Duration,
    /// Open streams one API key may hold on this server.
    pub max_streams_per_key: usize,
    /// Open streams on this server, all keys together.
    pub max_streams: usize,
    /// How often the keys holding streams are checked for revocation.
    pub key_check: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            tick: Duration::from_millis(500),
            max_streams_per_key: 200,
            max_streams: 20_000,
            key_check: Duration::from_secs(5),
        }
    }
}

/// What a watched item's channel carries.
#[derive(Debug, Clone)]
pub enum Update {
    /// Nothing published since the stream subscribed.
    None,
    /// The item as read after a change.
    Read(Arc<ItemRead>),
    /// Reading the item (or the change feed) failed; a later tick retries.
    Unavailable,
}

/// See the module documentation. Cheap to clone; the background tasks end when the last clone
/// is dropped.
#[derive(Clone)]
pub struct LiveHub {
    inner: Arc<Inner>,
}

struct Inner {
    config: LiveConfig,
    state: Mutex<State>,
    /// Woken by a local change.
    wake: Notify,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, HashMap<String, ItemWatch>>,
    /// Items to read at the next tick, with the changes known for them.
    pending: HashMap<(String, String), Vec<ChangeMark>>,
    keys: keys::KeyStreams,
    /// Whether the last feed read failed (streams were told; tell them again only after a
    /// success).
    feed_failing: bool,
}

struct ItemWatch {
    watchers: usize,
    channel: watch::Sender<Update>,
    /// Changes already read and published.
    handled: HashSet<ChangeMark>,
}

/// A stream's subscription to one item; dropping it unsubscribes.
pub struct Subscription {
    pub updates: watch::Receiver<Update>,
    hub: Weak<Inner>,
    tenant: String,
    item_id: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.hub.upgrade() {
            let mut state = inner.lock();
            let tenant_empty = match state.tenants.get_mut(&self.tenant) {
                Some(items) => {
                    if let Some(w) = items.get_mut(&self.item_id) {
                        w.watchers -= 1;
                        if w.watchers == 0 {
                            items.remove(&self.item_id);
                        }
                    }
                    items.is_empty()
                }
                None => false,
            };
            if tenant_empty {
                state.tenants.remove(&self.tenant);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below leaves the maps consistent; a panic elsewhere cannot break them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LiveHub {
    /// Starts the ticker and the revocation check.
    pub fn spawn(
        config: LiveConfig,
        client: Client,
        reader: ItemReader,
        registry: Registry,
    ) -> LiveHub {
        let inner = Arc::new(Inner {
            config,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(ticker(Arc::downgrade(&inner), client, reader));
        tokio::spawn(keys::revocation_check(Arc::downgrade(&inner), registry));
        LiveHub { inner }
    }

    pub fn config(&self) -> &LiveConfig {
        &self.inner.config
    }

    /// Opens a stream for API key `key_id`: refused when the key or the server holds as many
    /// as allowed. Hold the permit as long as the stream is open.
    pub fn open_stream(&self, key_id: &str) -> Result<StreamPermit, StreamRefused> {
        keys::open(&self.inner, key_id)
    }

    /// Subscribes to changes of one item.
    pub fn watch(&self, tenant: &str, item_id: &str) -> Subscription {
        let mut state = self.inner.lock();
        let watch = state
            .tenants
            .entry(tenant.to_string())
            .or_default()
            .entry(item_id.to_string())
            .or_insert_with(|| ItemWatch {
                watchers: 0,
                channel: watch::Sender::new(Update::None),
                handled: HashSet::new(),
            });
        watch.watchers += 1;
        Subscription {
            updates: watch.channel.subscribe(),
            hub: Arc::downgrade(&self.inner),
            tenant: tenant.to_string(),
            item_id: item_id.to_string(),
        }
    }

    /// The watched items among those `events` name, each with the highest `seq` of its events
    /// (empty at once when the tenant has no watchers): what to pass to [`LiveHub::changed`]
    /// once the events are stored.
    pub fn watched_in(&self, tenant: &str, events: &[Event]) -> Vec<(String, u64)> {
        let state = self.inner.lock();
        let Some(items) = state.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut named: HashMap<&str, u64> = HashMap::new();
        for e in events {
            let item = match &e.body {
                EventBody::WorkItem(w) => Some(w.item_id.as_str()),
                EventBody::ActivitySpan(s) => s.item_id.as_deref(),
                _ => None,
            };
            if let Some(item) = item.filter(|id| items.contains_key(*id)) {
                let seq = named.entry(item).or_default();
                *seq = (*seq).max(e.seq);
            }
        }
        named
            .into_iter()
            .map(|(item, seq)| (item.to_string(), seq))
            .collect()
    }

    /// Changes of items of `tenant` were stored: they are read for their watchers at once, or
    /// within a tick when items were read moments ago. Items nobody watches are ignored.
    pub fn changed(&self, tenant: &str, items: impl IntoIterator<Item = (String, ChangeMark)>) {
        let mut woke = false;
        {
            let mut state = self.inner.lock();
            let State {
                tenants, pending, ..
            } = &mut *state;
            let Some(watched) = tenants.get(tenant) else {
                return;
            };
            for (item_id, mark) in items {
                if watched.contains_key(&item_id) {
                    pending
                        .entry((tenant.to_string(), item_id))
                        .or_default()
                        .push(mark);
                    woke = true;
                }
            }
        }
        if woke {
            self.inner.wake.notify_one();
        }
    }

    /// Ends every open stream (clients reconnect, to another server) and refuses new ones: the
    /// first step of a graceful shutdown, so open streams do not hold it up.
    pub fn stop_streams(&self) {
        self.inner.lock().keys.stop();
    }

    /// Open streams and watched items on this server (for `/metrics` and tests).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.inner.lock();
        let items = state.tenants.values().map(HashMap::len).sum();
        (state.keys.total(), items)
    }
}

/// Runs until the hub is dropped. While anything is watched it reads the change feed every
/// `config.tick`; it reads pending items (local changes, or changes the feed found) as soon as
/// they are known, but at most once per `config.tick`: a lone change is read at once, a busy
/// second costs two rounds of reads, however many changes and watchers.
async fn ticker(hub: Weak<Inner>, client: Client, reader: ItemReader) {
    let mut last_poll: Option<Instant> = None;
    let mut last_read: Option<Instant> = None;
    loop {
        let Some(inner) = hub.upgrade() else { return };
        let tick = inner.config.tick;
        let (watching, pending) = {
            let state = inner.lock();
            (!state.tenants.is_empty(), !state.pending.is_empty())
        };
        if !watching {
            // Nothing to poll for. Wake on a local change, or after a tick to look again (and
            // to notice that the hub was dropped).
            let woken = inner.wake.notified();
            let _ = tokio::time::timeout(tick, woken).await;
            last_poll = None;
            continue;
        }
        let poll_at = last_poll.map_or_else(Instant::now, |t| t + tick);
        let read_at = last_read.map_or_else(Instant::now, |t| t + tick);
        tokio::select! {
            _ = tokio::time::sleep_until(poll_at) => {
                last_poll = Some(Instant::now());
                poll_feed(&inner, &client).await;
            }
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(read_at), if pending => {}
        }
        let pending = !inner.lock().pending.is_empty();
        if pending && last_read.is_none_or(|t| t.elapsed() >= tick) {
            last_read = Some(Instant::now());
            read_pending(&inner, &reader).await;
        }
    }
}

/// Reads every pending item (batched by the [`ItemReader`]) and publishes each result to the
/// item's watchers. Items that cannot be read stay pending for the next tick.
async fn read_pending(inner: &Inner, reader: &ItemReader) {
    let pending = std::mem::take(&mut inner.lock().pending);
    if pending.is_empty() {
        return;
    }
    metrics::histogram!("backlight_live_items_read_per_round").record(pending.len() as f64);
    let reads = pending
        .into_iter()
        .map(|((tenant, item_id), marks)| async move {
            let read = reader.read(&tenant, &item_id).await;
            (tenant, item_id, marks, read)
        });
    let results = futures_util::future::join_all(reads).await;
    let mut state = inner.lock();
    let mut failed = false;
    for (tenant, item_id, marks, read) in results {
        let Some(watch) = state
            .tenants
            .get_mut(&tenant)
            .and_then(|items| items.get_mut(&item_id))
        else {
            continue; // nobody watches it any more
        };
        match read {
            Ok(read) => {
                // A change this read does not hold yet (its feed row was visible before its
                // lookup row) stays unhandled: the next feed read finds it again.
                let (seen, unseen): (Vec<ChangeMark>, Vec<ChangeMark>) =
                    marks.into_iter().partition(|m| m.seen_in(&read));
                if !unseen.is_empty() {
                    metrics::counter!("backlight_live_reads_ahead_of_lookup_total")
                        .increment(unseen.len() as u64);
                }
                watch.handled.extend(seen);
                watch.channel.send_replace(Update::Read(Arc::new(read)));
            }
            Err(e) => {
                if !failed {
                    tracing::warn!(error = %e, "live updates cannot read changed items; retrying at the next tick");
                    failed = true;
                }
                watch.channel.send_replace(Update::Unavailable);
                state
                    .pending
                    .entry((tenant, item_id))
                    .or_default()
                    .extend(marks);
            }
        }
    }
}

/// Reads the change feed once for every watched item of every tenant and marks those with
/// changes not handled yet as pending.
async fn poll_feed(inner: &Inner, client: &Client) {
    let since = now_ms().saturating_sub(OVERLAP_MS);
    let (tenants, items) = {
        let mut state = inner.lock();
        let mut items: Vec<String> = Vec::new();
        for watched in state.tenants.values_mut() {
            for (item_id, w) in watched.iter_mut() {
                // Changes stamped at or before `since` cannot come back any more.
                w.handled.retain(|m| m.stamp > since);
                items.push(item_id.clone());
            }
        }
        items.sort_unstable();
        items.dedup();
        let tenants: Vec<String> = state.tenants.keys().cloned().collect();
        (tenants, items)
    };
    let result = changes::changed_since(client, &tenants, since, Some(&items)).await;
    let mut state = inner.lock();
    let changed = match result {
        Ok(changed) => {
            state.feed_failing = false;
            changed
        }
        Err(e) => {
            metrics::counter!("backlight_live_feed_errors_total").increment(1);
            if !state.feed_failing {
                state.feed_failing = true;
                tracing::warn!(error = %e, "live updates cannot read the change feed; retrying at the next tick");
                for watched in state.tenants.values() {
                    for w in watched.values() {
                        w.channel.send_replace(Update::Unavailable);
                    }
                }
            }
            return;
        }
    };
    let State {
        tenants, pending, ..
    } = &mut *state;
    for item in changed {
        let Some(watch) = tenants
            .get(&item.tenant_id)
            .and_then(|t| t.get(&item.item_id))
        else {
            continue; // another tenant's item of the same name, or no longer watched
        };
        let new: Vec<ChangeMark> = item
            .changes
            .into_iter()
            .map(|c| c.mark)
            .filter(|m| !watch.handled.contains(m))
            .collect();
        if !new.is_empty() {
            pending
                .entry((item.tenant_id, item.item_id))
                .or_default()
                .extend(new);
        }
    }
}
