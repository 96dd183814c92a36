//! Who is calling: devices (by their credential, for ingest) and people or systems (by API key,
//! with a role, for the query APIs).
//!
//! Looking a credential up costs a ClickHouse query, and agents send a batch every few seconds.
//! Devices are therefore kept in a directory that is brought up to date with ONE query per
//! `ttl` (the devices changed since the last refresh), whatever the size of the fleet; a device
//! not in it yet (enrolled moments ago through another server) is looked up on its own. API
//! keys, used far less often, have a plain short cache. Both are caches, not state: a revocation
//! written by any server reaches every server within `ttl`.
//!
//! **Architecture invariant:** every API key is bound to one tenant, and every query handler
//! takes the tenant from the [`ApiCaller`], never from the request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use backlight_shared::credential::{SecretKind, Token};
use uuid::Uuid;

use crate::clickhouse::ClickHouseError;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::secrets;
use crate::storage::audit::AuditEntry;
use crate::storage::registry::Registry;
use crate::storage::{ReadError, UnreadableRow};
use crate::tenancy::{ApiKey, DeviceCredential, Role, TenantId};

/// Most cached API keys or unknown device ids; beyond it that cache is cleared (simple, bounded).
const MAX_CACHED: usize = 100_000;

/// A bounded map whose entries expire after `ttl`.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// The cached value, or `load()`'s answer (cached for next time).
    async fn get_or_load<F>(&self, key: K, load: F) -> Result<V, ClickHouseError>
    where
        F: std::future::Future<Output = Result<V, ClickHouseError>>,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let v = load.await?;
        self.put(key, v.clone());
        Ok(v)
    }
}

fn bearer(authorization: Option<&str>, kind: SecretKind) -> Option<Token> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| Token::parse_kind(t, kind).ok())
}

/// A device the credential proved to be.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticatedDevice {
    pub device_id: Uuid,
    pub tenant_id: String,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed Authorization header (expected `Bearer {0}_…`)")]
    Missing(&'static str),
    #[error("unknown credential")]
    Unknown,
    #[error("this credential was revoked by an administrator")]
    Revoked,
    #[error(transparent)]
    Storage(#[from] ClickHouseError),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing(_) | AuthError::Unknown => ApiError::unauthorized(e.to_string()),
            AuthError::Revoked => ApiError::forbidden("revoked", e.to_string()),
            AuthError::Storage(e) => e.into(),
        }
    }
}

/// Devices kept in one server's directory by default (see [`DeviceAuthenticator`]).
pub const DEFAULT_DEVICE_DIRECTORY_SIZE: usize = 100_000;

/// Authenticates devices for ingest.
///
/// The directory holds what authentication needs of at most `capacity` devices (about 150
/// bytes each); when it is full the least recently used eighth is dropped, and a device not in
/// it is looked up on its own (and then kept). Refreshes stream the changed rows, so neither
/// a large fleet nor a mass re-enrollment makes a server hold more than `capacity` devices.
#[derive(Clone)]
pub struct DeviceAuthenticator {
    registry: Registry,
    ttl: Duration,
    directory: Arc<Mutex<DeviceDirectory>>,
    /// Held while refreshing, so a burst of requests after expiry makes one query, not many.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

/// What authentication needs of a device.
#[derive(Debug, Clone)]
struct KnownDevice {
    /// Shared by all devices of a tenant.
    tenant_id: Arc<str>,
    secret_hash: Box<str>,
    revoked: bool,
    /// For choosing what to drop when the directory is full.
    last_used: Instant,
}

/// What this server knows of the devices, and how fresh that is.
struct DeviceDirectory {
    capacity: usize,
    devices: HashMap<Uuid, KnownDevice>,
    /// One copy of each tenant id, for [`KnownDevice::tenant_id`].
    tenants: HashMap<String, Arc<str>>,
    /// Device ids recently looked up and not found, with when.
    unknown: HashMap<Uuid, Instant>,
    refreshed_at: Option<Instant>,
    /// The newest `updated_ms` seen; the next refresh asks for rows changed since then.
    high_water_ms: u64,
}

impl DeviceDirectory {
    fn new(capacity: usize) -> DeviceDirectory {
        DeviceDirectory {
            capacity: capacity.max(1),
            devices: HashMap::new(),
            tenants: HashMap::new(),
            unknown: HashMap::new(),
            refreshed_at: None,
            high_water_ms: 0,
        }
    }

    fn known(&mut self, row: &DeviceCredential) -> KnownDevice {
        if self.tenants.len() >= MAX_CACHED {
            self.tenants.clear();
        }
        let tenant_id = self
            .tenants
            .entry(row.tenant.to_string())
            .or_insert_with(|| Arc::from(row.tenant.as_str()))
            .clone();
        KnownDevice {
            tenant_id,
            secret_hash: row.secret_hash.clone().into_boxed_str(),
            revoked: row.revoked,
            last_used: Instant::now(),
        }
    }

    /// Applies a row read from ClickHouse: a device already here is updated (a revocation
    /// must reach it); a new one is added while there is room, or when `make_room`.
    fn apply(&mut self, row: &DeviceCredential, make_room: bool) {
        self.high_water_ms = self.high_water_ms.max(row.updated_ms);
        self.unknown.remove(&row.device_id);
        if let Some(present) = self.devices.get(&row.device_id) {
            let last_used = present.last_used;
            let mut device = self.known(row);
            device.last_used = last_used;
            self.devices.insert(row.device_id, device);
            return;
        }
        if self.devices.len() >= self.capacity {
            if !make_room {
                return;
            }
            self.evict();
        }
        let device = self.known(row);
        self.devices.insert(row.device_id, device);
    }

    /// Applies one row of a refresh: a row that does not parse refuses its device (an older,
    /// readable version no longer counts), logged and counted.
    fn apply_read(&mut self, device_id: Uuid, found: Result<DeviceCredential, UnreadableRow>) {
        match found {
            Ok(device) => self.apply(&device, false),
            Err(e) => {
                e.report_refused("a device");
                self.devices.remove(&device_id);
            }
        }
    }

    /// Drops the least recently used eighth of the devices.
    fn evict(&mut self) {
        let drop = (self.devices.len() / 8).max(1);
        let mut ages: Vec<(Instant, Uuid)> = self
            .devices
            .iter()
            .map(|(id, d)| (d.last_used, *id))
            .collect();
        ages.select_nth_unstable(drop - 1);
        for (_, id) in &ages[..drop] {
            self.devices.remove(id);
        }
        metrics::counter!("backlight_device_directory_evictions_total").increment(drop as u64);
    }
}

/// How far back each refresh looks before the newest change it has seen. Versions are stamped
/// by the clock of the server that wrote them, so a change stamped slightly in the past by a
/// server with a slow clock is still picked up.
const REFRESH_OVERLAP_MS: u64 = 10 * 60 * 1000;

impl DeviceAuthenticator {
    /// A directory of at most [`DEFAULT_DEVICE_DIRECTORY_SIZE`] devices.
    pub fn new(registry: Registry, ttl: Duration) -> DeviceAuthenticator {
        DeviceAuthenticator::with_capacity(registry, ttl, DEFAULT_DEVICE_DIRECTORY_SIZE)
    }

    /// A directory of at most `capacity` devices.
    pub fn with_capacity(
        registry: Registry,
        ttl: Duration,
        capacity: usize,
    ) -> DeviceAuthenticator {
        DeviceAuthenticator {
            registry,
            ttl,
            directory: Arc::new(Mutex::new(DeviceDirectory::new(capacity))),
            refreshing: Arc::default(),
        }
    }

    /// Devices in the directory now (for tests and metrics).
    pub fn directory_len(&self) -> usize {
        self.directory().devices.len()
    }

    /// Checks an `Authorization` header value.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<AuthenticatedDevice, AuthError> {
        let token = bearer(authorization, SecretKind::Device).ok_or(AuthError::Missing("bld"))?;
        let device_id = Uuid::parse_str(&token.id).map_err(|_| AuthError::Unknown)?;
        let device = self
            .device(device_id)
            .await?
            .filter(|d| secrets::verify(&token, &d.secret_hash))
            .ok_or(AuthError::Unknown)?;
        if device.revoked {
            return Err(AuthError::Revoked);
        }
        Ok(AuthenticatedDevice {
            device_id,
            tenant_id: device.tenant_id.to_string(),
        })
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, DeviceDirectory> {
        // A panic while holding this lock cannot leave the maps inconsistent; keep serving.
        self.directory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_fresh(&self) -> bool {
        self.directory()
            .refreshed_at
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    async fn device(&self, device_id: Uuid) -> Result<Option<KnownDevice>, ClickHouseError> {
        if !self.is_fresh() {
            self.refresh().await?;
        }
        {
            let mut directory = self.directory();
            if let Some(device) = directory.devices.get_mut(&device_id) {
                device.last_used = Instant::now();
                return Ok(Some(device.clone()));
            }
            let known_unknown = directory
                .unknown
                .get(&device_id)
                .is_some_and(|at| at.elapsed() < self.ttl);
            if known_unknown {
                return Ok(None);
            }
        }
        // Not in the directory: enrolled since the last refresh, or dropped when it was full.
        let found = match self.registry.device_auth(device_id).await {
            Ok(found) => found,
            Err(ReadError::ClickHouse(e)) => return Err(e),
            Err(ReadError::Unreadable(e)) => {
                e.report_refused("a device");
                None
            }
        };
        let mut directory = self.directory();
        match &found {
            Some(row) => {
                directory.apply(row, true);
                Ok(directory.devices.get(&device_id).cloned())
            }
            None => {
                if directory.unknown.len() >= MAX_CACHED {
                    directory.unknown.clear();
                }
                directory.unknown.insert(device_id, Instant::now());
                Ok(None)
            }
        }
    }

    async fn refresh(&self) -> Result<(), ClickHouseError> {
        let _single_flight = self.refreshing.lock().await;
        if self.is_fresh() {
            return Ok(()); // another request refreshed while this one waited
        }
        let since = self
            .directory()
            .high_water_ms
            .saturating_sub(REFRESH_OVERLAP_MS);
        // Streamed: a large change set never sits in memory whole.
        self.registry
            .devices_changed_since(since, |device_id, found| {
                self.directory().apply_read(device_id, found)
            })
            .await?;
        let mut directory = self.directory();
        directory.refreshed_at = Some(Instant::now());
        metrics::gauge!("backlight_device_directory_size").set(directory.devices.len() as f64);
        Ok(())
    }
}

/// A person or system calling the query APIs with an API key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCaller {
    pub tenant: TenantId,
    pub key_id: String,
    pub key_name: String,
    pub role: Role,
}

impl ApiCaller {
    /// Refuses the call unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(
                "wrong_role",
                format!(
                    "this endpoint needs the role {}; this key has {}",
                    allowed.join(" or "),
                    self.role
                ),
            ))
        }
    }
}

/// Authenticates API keys.
#[derive(Clone)]
pub struct ApiKeyAuthenticator {
    registry: Registry,
    cache: Arc<TtlCache<String, Option<ApiKey>>>,
}

impl ApiKeyAuthenticator {
    pub fn new(registry: Registry, ttl: Duration) -> ApiKeyAuthenticator {
        ApiKeyAuthenticator {
            registry,
            cache: Arc::new(TtlCache::new(ttl)),
        }
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<ApiCaller, AuthError> {
        let token = bearer(authorization, SecretKind::ApiKey).ok_or(AuthError::Missing("blk"))?;
        let key = self
            .cache
            .get_or_load(token.id.clone(), load_api_key(&self.registry, &token.id))
            .await?
            .filter(|k| secrets::verify(&token, &k.secret_hash))
            .ok_or(AuthError::Unknown)?;
        if key.revoked {
            return Err(AuthError::Revoked);
        }
        Ok(ApiCaller {
            tenant: key.tenant,
            key_id: key.key_id,
            key_name: key.name,
            role: key.role,
        })
    }
}

/// The key `key_id`, or `None` for no key. A key whose row does not parse (edited by hand or
/// written by a newer release) is refused like an unknown one rather than trusted.
async fn load_api_key(
    registry: &Registry,
    key_id: &str,
) -> Result<Option<ApiKey>, ClickHouseError> {
    match registry.api_key(key_id).await {
        Ok(key) => Ok(key),
        Err(ReadError::ClickHouse(e)) => Err(e),
        Err(ReadError::Unreadable(e)) => {
            e.report_refused("an API key");
            Ok(None)
        }
    }
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(state.api_keys.authenticate(authorization).await?)
    }
}

// Here rather than in `storage::audit`, so storage does not depend on the HTTP layer's caller.
impl AuditEntry {
    /// An entry for what `caller` did.
    pub fn by(
        caller: &ApiCaller,
        action: &str,
        target: impl Into<String>,
        outcome: &str,
    ) -> AuditEntry {
        AuditEntry {
            tenant_id: caller.tenant.to_string(),
            key_id: caller.key_id.clone(),
            key_name: caller.key_name.clone(),
            role: caller.role.as_str().to_string(),
            action: action.to_string(),
            target: target.into(),
            outcome: outcome.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u128, revoked: u8) -> DeviceCredential {
        DeviceCredential {
            device_id: Uuid::from_u128(n),
            tenant: format!("t{}", n % 3).parse().unwrap(),
            secret_hash: "ab".repeat(32),
            revoked: revoked != 0,
            updated_ms: 1_000 + n as u64,
        }
    }

    /// Issue 10: every device of every tenant stayed in each server's directory forever.
    #[test]
    fn the_directory_never_holds_more_than_its_capacity() {
        let mut directory = DeviceDirectory::new(8);
        for n in 0..100 {
            directory.apply(&row(n, 0), false);
        }
        assert_eq!(
            directory.devices.len(),
            8,
            "a refresh fills it up to capacity only"
        );
        assert_eq!(directory.high_water_ms, 1_099, "but sees every change");
        for n in 100..200 {
            directory.apply(&row(n, 0), true);
            assert!(directory.devices.len() <= 8);
        }
        assert!(directory.devices.contains_key(&Uuid::from_u128(199)));
        assert_eq!(directory.tenants.len(), 3, "one copy per tenant id");
    }

    #[test]
    fn a_revocation_reaches_a_device_in_the_directory_even_when_full() {
        let mut directory = DeviceDirectory::new(2);
        directory.apply(&row(1, 0), false);
        directory.apply(&row(2, 0), false);
        directory.apply(&row(1, 1), false);
        assert!(directory.devices[&Uuid::from_u128(1)].revoked);
    }

    #[test]
    fn the_least_recently_used_devices_go_first() {
        let mut directory = DeviceDirectory::new(8);
        for n in 0..8 {
            directory.apply(&row(n, 0), false);
        }
        std::thread::sleep(Duration::from_millis(2));
        for n in 1..8 {
            directory
                .devices
                .get_mut(&Uuid::from_u128(n))
                .unwrap()
                .last_used = Instant::now();
        }
        directory.apply(&row(50, 0), true);
        assert!(!directory.devices.contains_key(&Uuid::from_u128(0)));
        assert!(directory.devices.contains_key(&Uuid::from_u128(50)));
    }

    #[test]
    fn a_device_whose_newest_row_does_not_parse_is_refused_not_kept() {
        let mut directory = DeviceDirectory::new(8);
        directory.apply(&row(1, 0), false);
        directory.apply(&row(2, 0), false);
        let unreadable = UnreadableRow {
            table: "devices",
            key: Uuid::from_u128(1).to_string(),
            field: "tenant_id",
            value: "NOT A TENANT".into(),
        };
        directory.apply_read(Uuid::from_u128(1), Err(unreadable));
        assert!(!directory.devices.contains_key(&Uuid::from_u128(1)));
        assert!(
            directory.devices.contains_key(&Uuid::from_u128(2)),
            "the others stay"
        );
        directory.apply_read(Uuid::from_u128(3), Ok(row(3, 0)));
        assert!(directory.devices.contains_key(&Uuid::from_u128(3)));
    }
}
