//! A per-tenant cache of something read from ClickHouse, for the item lookup path.
//!
//! A lookup needs a few per-tenant facts besides the item itself: the tenant's settings, its
//! device assignments, its handle-time statistics for the ETA. Reading them per lookup costs
//! one ClickHouse query each; at hundreds of lookups per second that is most of ClickHouse's
//! CPU. [`TenantCache`] keeps one value per tenant for `ttl`:
//!
//! - a fresh entry is served as is;
//! - a stale entry is served while one background task reloads it (stale-while-revalidate), so
//!   a lookup never waits for a reload;
//! - a missing entry is loaded once, however many lookups ask at the same time (single flight),
//!   in a spawned task, so a caller that gives up does not throw the finished load away.
//!
//! A cache, not state: every server computes the same from ClickHouse, and a change is seen
//! by every server within `ttl` plus one reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickhouse::Client;
use futures_util::future::BoxFuture;

use crate::clickhouse::ClickHouseError;

/// Most tenants cached; beyond it the cache is cleared (simple and bounded).
const MAX_CACHED_TENANTS: usize = 10_000;

/// Reads a tenant's value from ClickHouse.
pub type Loader<T> =
    Arc<dyn Fn(Client, String) -> BoxFuture<'static, Result<T, ClickHouseError>> + Send + Sync>;

struct Entry<T> {
    loaded: Instant,
    value: Arc<T>,
    refreshing: bool,
}

/// See the module documentation.
pub struct TenantCache<T> {
    /// What is cached, for log messages.
    what: &'static str,
    ttl: Duration,
    load: Loader<T>,
    entries: Arc<Mutex<HashMap<String, Entry<T>>>>,
    /// One first load at a time: a cold server hit by many lookups runs one load, not one each.
    cold_loads: Arc<tokio::sync::Mutex<()>>,
}

impl<T> Clone for TenantCache<T> {
    fn clone(&self) -> Self {
        TenantCache {
            what: self.what,
            ttl: self.ttl,
            load: self.load.clone(),
            entries: self.entries.clone(),
            cold_loads: self.cold_loads.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> TenantCache<T> {
    /// `ttl` zero: no caching, every call reads ClickHouse (tests that change what is cached).
    pub fn new(what: &'static str, ttl: Duration, load: Loader<T>) -> TenantCache<T> {
        TenantCache {
            what,
            ttl,
            load,
            entries: Arc::default(),
            cold_loads: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        // Nothing can be left half-updated by a panic while holding this lock.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store(&self, tenant: &str, value: Arc<T>) {
        let mut entries = self.lock();
        if entries.len() >= MAX_CACHED_TENANTS {
            entries.clear();
        }
        entries.insert(
            tenant.to_string(),
            Entry {
                loaded: Instant::now(),
                value,
                refreshing: false,
            },
        );
    }

    /// The tenant's value: cached, or loaded now when there is none yet.
    pub async fn get(&self, client: &Client, tenant: &str) -> Result<Arc<T>, ClickHouseError> {
        if self.ttl.is_zero() {
            return Ok(Arc::new(
                (self.load)(client.clone(), tenant.to_string()).await?,
            ));
        }
        let stale = {
            let mut entries = self.lock();
            match entries.get_mut(tenant) {
                Some(e) if e.loaded.elapsed() < self.ttl => return Ok(e.value.clone()),
                Some(e) => {
                    let start_refresh = !e.refreshing;
                    e.refreshing = true;
                    Some((e.value.clone(), start_refresh))
                }
                None => None,
            }
        };
        match stale {
            Some((value, start_refresh)) => {
                if start_refresh {
                    self.refresh_in_background(client, tenant);
                }
                Ok(value)
            }
            None => self.load_cold(client, tenant).await,
        }
    }

    fn refresh_in_background(&self, client: &Client, tenant: &str) {
        let (cache, client, tenant) = (self.clone(), client.clone(), tenant.to_string());
        tokio::spawn(async move {
            match (cache.load)(client, tenant.clone()).await {
                Ok(fresh) => cache.store(&tenant, Arc::new(fresh)),
                Err(e) => {
                    tracing::warn!(error = %e, tenant, what = cache.what, "reloading a cached value failed; serving the old one");
                    if let Some(entry) = cache.lock().get_mut(&tenant) {
                        entry.refreshing = false;
                    }
                }
            }
        });
    }

    async fn load_cold(&self, client: &Client, tenant: &str) -> Result<Arc<T>, ClickHouseError> {
        let _turn = self.cold_loads.lock().await;
        if let Some(entry) = self.lock().get(tenant) {
            return Ok(entry.value.clone()); // loaded while this caller waited its turn
        }
        let (cache, client, tenant) = (self.clone(), client.clone(), tenant.to_string());
        let load = tokio::spawn(async move {
            let value = Arc::new((cache.load)(client, tenant.clone()).await?);
            cache.store(&tenant, value.clone());
            Ok(value)
        });
        load.await
            .map_err(|e| ClickHouseError::Interrupted(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A cache whose loader counts its calls and answers the count (no ClickHouse is reached:
    /// the client is never used).
    fn counting(ttl: Duration) -> (TenantCache<u32>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let load: Loader<u32> = Arc::new(move |_client, _tenant| {
            let c = c.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(c.fetch_add(1, Ordering::SeqCst) + 1)
            })
        });
        (TenantCache::new("test", ttl, load), calls)
    }

    fn client() -> Client {
        Client::default().with_url("http://127.0.0.1:9")
    }

    #[tokio::test]
    async fn concurrent_cold_lookups_load_once() {
        let (cache, calls) = counting(Duration::from_secs(60));
        let client = client();
        let gets: Vec<_> = (0..20).map(|_| cache.get(&client, "t")).collect();
        for v in futures_util::future::join_all(gets).await {
            assert_eq!(*v.unwrap(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_entry_is_served_while_one_reload_runs() {
        let (cache, calls) = counting(Duration::from_millis(50));
        let client = client();
        assert_eq!(*cache.get(&client, "t").await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Stale: answered at once with the old value, one reload starts.
        assert_eq!(*cache.get(&client, "t").await.unwrap(), 1);
        assert_eq!(*cache.get(&client, "t").await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(*cache.get(&client, "t").await.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn tenants_are_cached_apart_and_zero_ttl_never_caches() {
        let (cache, calls) = counting(Duration::from_secs(60));
        let client = client();
        assert_eq!(*cache.get(&client, "a").await.unwrap(), 1);
        assert_eq!(*cache.get(&client, "b").await.unwrap(), 2);
        assert_eq!(*cache.get(&client, "a").await.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let (uncached, calls) = counting(Duration::ZERO);
        assert_eq!(*uncached.get(&client, "a").await.unwrap(), 1);
        assert_eq!(*uncached.get(&client, "a").await.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
