//! Which server evaluates and delivers which tenant's webhooks: rendezvous (highest random
//! weight) hashing of the tenant over the servers alive, as their heartbeats in ClickHouse
//! show. Every server computes the same owner from the same list, with no coordination; when
//! a server comes or goes, only the tenants it gains or loses move.
//!
//! During a change of membership two servers may briefly both own a tenant (one has seen the
//! new heartbeat, the other not yet). Both then evaluate the same changes and write the same
//! deliveries (same ids, see [`super::events::delivery_id`]); a receiver may get an attempt
//! twice, which at-least-once allows and the delivery id lets it drop.

use std::time::{Duration, Instant};

use backlight_shared::now_ms;
use clickhouse::Client;
use sha2::{Digest, Sha256};

use crate::clickhouse::ClickHouseError;
use crate::storage::servers::{self, Heartbeat};

/// How often each server writes its heartbeat and reads the others'.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A server whose newest heartbeat is older than this is taken for gone. It also stops
/// owning anything itself once its own heartbeats have failed for this long.
pub const ALIVE_FOR: Duration = Duration::from_secs(15);

/// The owner of `tenant` among `servers` (ids): the one with the highest weight.
pub fn owner<'a>(tenant: &str, servers: &'a [String]) -> Option<&'a str> {
    servers
        .iter()
        .max_by_key(|server| weight(server, tenant))
        .map(String::as_str)
}

fn weight(server: &str, tenant: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((server.len() as u64).to_be_bytes());
    hash.update(server.as_bytes());
    hash.update(tenant.as_bytes());
    hash.finalize().into()
}

/// This server's view of who is alive.
pub struct Membership {
    client: Client,
    me: Heartbeat,
    alive: Vec<String>,
    /// When this server's own heartbeat was last written.
    last_beat: Option<Instant>,
}

impl Membership {
    /// A new member with a fresh id (every start is a new server).
    pub fn new(client: Client, host: String) -> Membership {
        let now = now_ms();
        Membership {
            client,
            me: Heartbeat {
                server_id: uuid::Uuid::now_v7().to_string(),
                host,
                started_ms: now,
                beat_ms: now,
                serving: 1,
            },
            alive: Vec::new(),
            last_beat: None,
        }
    }

    pub fn server_id(&self) -> &str {
        &self.me.server_id
    }

    /// Writes this server's heartbeat and reads who is alive.
    pub async fn refresh(&mut self) -> Result<(), ClickHouseError> {
        self.me.beat_ms = now_ms();
        servers::beat(&self.client, &self.me).await?;
        self.last_beat = Some(Instant::now());
        let since = now_ms().saturating_sub(ALIVE_FOR.as_millis() as u64);
        self.alive = servers::alive_since(&self.client, since).await?;
        if !self.alive.contains(&self.me.server_id) {
            // Our own beat was just written; a read that misses it must not make us own nothing.
            self.alive.push(self.me.server_id.clone());
        }
        Ok(())
    }

    /// Whether this server owns `tenant` now. Never while its own heartbeat is stale: the
    /// others have then taken its tenants over.
    pub fn owns(&self, tenant: &str) -> bool {
        let fresh = self.last_beat.is_some_and(|t| t.elapsed() < ALIVE_FOR);
        fresh && owner(tenant, &self.alive) == Some(self.me.server_id.as_str())
    }

    /// Servers alive at the last refresh.
    pub fn alive(&self) -> &[String] {
        &self.alive
    }

    /// Says goodbye, so the others take this server's tenants over at once.
    pub async fn leave(&mut self) -> Result<(), ClickHouseError> {
        self.me.beat_ms = now_ms().max(self.me.beat_ms + 1);
        self.me.serving = 0;
        servers::beat(&self.client, &self.me).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("server-{i}")).collect()
    }

    #[test]
    fn every_tenant_has_one_owner_and_the_load_spreads() {
        let servers = ids(3);
        let mut counts = [0usize; 3];
        for t in 0..3_000 {
            let o = owner(&format!("tenant-{t}"), &servers).unwrap();
            counts[servers.iter().position(|s| s == o).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(owner("t", &[]), None);
    }

    #[test]
    fn only_the_tenants_of_a_leaving_server_move() {
        let before = ids(4);
        let after: Vec<String> = before[..3].to_vec();
        for t in 0..1_000 {
            let tenant = format!("tenant-{t}");
            let was = owner(&tenant, &before).unwrap();
            let is = owner(&tenant, &after).unwrap();
            if was != "server-3" {
                assert_eq!(was, is, "{tenant} moved although its owner stayed");
            }
        }
    }
}
