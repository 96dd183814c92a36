//! Open streams per API key: the per-key and per-server limits, and ending the streams of a key
//! that was revoked while they were open.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::watch;

use super::Inner;
use crate::storage::registry::Registry;

/// The streams each key holds open on this server.
#[derive(Default)]
pub(super) struct KeyStreams {
    keys: HashMap<String, KeyEntry>,
    total: usize,
    stopping: bool,
}

struct KeyEntry {
    open: usize,
    standing: watch::Sender<StreamStanding>,
}

/// Whether a key's open streams may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStanding {
    Open,
    /// The key was revoked through some server: its streams end.
    KeyRevoked,
    /// The key could not be checked for [`UNVERIFIED_AFTER_CHECKS`] checks in a row: its
    /// streams end (they reconnect, and authentication decides again).
    KeyUnverified,
    /// The server is shutting down: streams end so clients reconnect to another one.
    ServerStopping,
}

/// Failed revocation checks in a row after which streams are no longer trusted to go on.
pub const UNVERIFIED_AFTER_CHECKS: u32 = 6;

impl KeyStreams {
    pub(super) fn total(&self) -> usize {
        self.total
    }

    fn open_keys(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// Ends every open stream and refuses new ones.
    pub(super) fn stop(&mut self) {
        self.stopping = true;
        for entry in self.keys.values() {
            entry.standing.send_replace(StreamStanding::ServerStopping);
        }
    }
}

/// Why a stream was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    #[error("this API key already holds {0} open streams on this server (the most allowed); close one or retry later")]
    KeyLimit(usize),
    #[error("this server holds {0} open streams (the most it allows); retry later")]
    ServerLimit(usize),
    #[error("this server is shutting down; retry (another server will answer)")]
    Stopping,
}

/// One open stream of a key; dropping it closes it.
pub struct StreamPermit {
    /// Leaves [`StreamStanding::Open`] when the stream must end.
    pub standing: watch::Receiver<StreamStanding>,
    hub: Weak<Inner>,
    key_id: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(inner) = self.hub.upgrade() {
            let mut state = inner.lock();
            let keys = &mut state.keys;
            keys.total -= 1;
            if let Some(entry) = keys.keys.get_mut(&self.key_id) {
                entry.open -= 1;
                if entry.open == 0 {
                    keys.keys.remove(&self.key_id);
                }
            }
        }
        metrics::gauge!("backlight_live_streams_open").decrement(1);
    }
}

pub(super) fn open(inner: &Arc<Inner>, key_id: &str) -> Result<StreamPermit, StreamRefused> {
    let config = &inner.config;
    let mut state = inner.lock();
    let keys = &mut state.keys;
    if keys.stopping {
        return Err(StreamRefused::Stopping);
    }
    if keys.total >= config.max_streams {
        return Err(StreamRefused::ServerLimit(config.max_streams));
    }
    let entry = keys
        .keys
        .entry(key_id.to_string())
        .or_insert_with(|| KeyEntry {
            open: 0,
            standing: watch::Sender::new(StreamStanding::Open),
        });
    if entry.open >= config.max_streams_per_key {
        return Err(StreamRefused::KeyLimit(config.max_streams_per_key));
    }
    if *entry.standing.borrow() == StreamStanding::KeyUnverified {
        // The caller has just been authenticated: the key is good again.
        entry.standing.send_replace(StreamStanding::Open);
    }
    entry.open += 1;
    let standing = entry.standing.subscribe();
    keys.total += 1;
    metrics::gauge!("backlight_live_streams_open").increment(1);
    Ok(StreamPermit {
        standing,
        hub: Arc::downgrade(inner),
        key_id: key_id.to_string(),
    })
}

/// Every `config.key_check`, one query for the keys holding streams; the streams of revoked
/// keys are told to end. While the check keeps failing, streams go on for
/// [`UNVERIFIED_AFTER_CHECKS`] checks (a short ClickHouse hiccup costs no reconnects), then end.
pub(super) async fn revocation_check(hub: Weak<Inner>, registry: Registry) {
    let mut failures = 0u32;
    loop {
        let Some(inner) = hub.upgrade() else { return };
        let every = inner.config.key_check;
        drop(inner);
        tokio::time::sleep(every).await;
        let Some(inner) = hub.upgrade() else { return };
        let keys = inner.lock().keys.open_keys();
        if keys.is_empty() {
            failures = 0;
            continue;
        }
        match registry.revoked_api_keys(&keys).await {
            Ok(revoked) => {
                failures = 0;
                let state = inner.lock();
                for entry in state.keys.keys.values() {
                    if *entry.standing.borrow() == StreamStanding::KeyUnverified
                        && !state.keys.stopping
                    {
                        entry.standing.send_replace(StreamStanding::Open);
                    }
                }
                for key_id in revoked {
                    if let Some(entry) = state.keys.keys.get(&key_id) {
                        tracing::info!(
                            key_id,
                            streams = entry.open,
                            "API key revoked; ending its open streams"
                        );
                        entry.standing.send_replace(StreamStanding::KeyRevoked);
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "cannot check the API keys of open streams for revocation");
                if failures >= UNVERIFIED_AFTER_CHECKS {
                    let state = inner.lock();
                    for entry in state.keys.keys.values().filter(|_| !state.keys.stopping) {
                        entry.standing.send_replace(StreamStanding::KeyUnverified);
                    }
                }
            }
        }
    }
}
