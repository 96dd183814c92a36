//! The first accepted copy of an event wins.
//!
//! An event's identity is `(tenant, device, seq)`. An agent re-sends a batch only when it did
//! not get the answer, with the same content; anything else re-using a `seq` (a tampering
//! device, a desktop restored from an old snapshot) must not rewrite what was stored. The
//! `events` table cannot decide that itself (it keeps the newest copy, and only within one
//! month), so ingest does: an event whose `seq` is already stored for its device is
//! acknowledged as stored and not written again.
//!
//! The highest stored `seq` comes from `device_seq` (migration 0013) and is remembered for
//! `ttl` (5 s); this server's own commits raise it at once. Only a batch reaching at or below
//! it (a re-send, or a late upload filling a gap) costs a second read: which of its `seq`s are
//! in `events`; those are skipped, the others stored. Requests of
//! one device take turns from this read to their commit ([`super::devices::DeviceTurn`]), so
//! on one server the rule is exact. Servers share nothing but ClickHouse: two servers that each
//! get a copy of the same `seq` within `ttl` (or within one commit) can both store it, and then
//! the newer copy survives merges as before. docs/security.md lists this.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::lock_counts as lock;
use std::time::{Duration, Instant};

use clickhouse::Client;
use uuid::Uuid;

use crate::clickhouse::ClickHouseError;
use crate::storage::events;

/// Devices remembered at most; beyond it, what is out of date is forgotten first.
const MAX_REMEMBERED: usize = 100_000;

/// How long a read of a device's stored progress is trusted by default: like the credential
/// cache, seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct Known {
    max_seq: u64,
    /// When ClickHouse was last asked; `None` when only this server's own commits are known.
    read_at: Option<Instant>,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct FirstCopy {
    client: Client,
    ttl: Duration,
    known: Arc<Mutex<HashMap<(String, Uuid), Known>>>,
}

impl FirstCopy {
    pub fn new(client: Client, ttl: Duration) -> FirstCopy {
        FirstCopy {
            client,
            ttl,
            known: Arc::default(),
        }
    }

    /// How long a read of the stored progress is trusted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The highest `seq` stored for `device` of `tenant`: what ClickHouse said at most `ttl`
    /// ago, raised by this server's own commits since. Call it in the device's turn
    /// ([`super::devices::DeviceTurn::in_order`]).
    pub async fn stored_max(&self, tenant: &str, device: Uuid) -> Result<u64, ClickHouseError> {
        let key = (tenant.to_string(), device);
        if let Some(known) = lock(&self.known).get(&key) {
            if known.read_at.is_some_and(|at| at.elapsed() < self.ttl) {
                return Ok(known.max_seq);
            }
        }
        let read = events::stored_max_seq(&self.client, tenant, device).await?;
        let mut known = lock(&self.known);
        make_room(&mut known, self.ttl);
        let entry = known.entry(key).or_insert(Known {
            max_seq: 0,
            read_at: None,
        });
        entry.max_seq = entry.max_seq.max(read);
        entry.read_at = Some(Instant::now());
        Ok(entry.max_seq)
    }

    /// Which of `seqs` (all at or below [`FirstCopy::stored_max`]) are stored: a re-sent
    /// batch, or one filling a gap. Rare, so read from `events` itself.
    pub async fn stored_among(
        &self,
        tenant: &str,
        device: Uuid,
        seqs: &[u64],
    ) -> Result<HashSet<u64>, ClickHouseError> {
        Ok(events::stored_seqs(&self.client, tenant, device, seqs)
            .await?
            .into_iter()
            .collect())
    }

    /// Records that ClickHouse accepted events of `device` up to `max_seq`.
    pub fn stored(&self, tenant: &str, device: Uuid, max_seq: u64) {
        let mut known = lock(&self.known);
        make_room(&mut known, self.ttl);
        let entry = known.entry((tenant.to_string(), device)).or_insert(Known {
            max_seq: 0,
            read_at: None,
        });
        entry.max_seq = entry.max_seq.max(max_seq);
    }
}

fn make_room(known: &mut HashMap<(String, Uuid), Known>, ttl: Duration) {
    if known.len() >= MAX_REMEMBERED {
        known.retain(|_, k| k.read_at.is_some_and(|at| at.elapsed() < ttl));
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
    }
}
