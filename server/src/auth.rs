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
use crate::storage::registry::{ApiKeyRow, DeviceRow, Registry};
use crate::tenancy::{Role, TenantId};

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

/// Authenticates devices for ingest.
#[derive(Clone)]
pub struct DeviceAuthenticator {
    registry: Registry,
    ttl: Duration,
    directory: Arc<Mutex<DeviceDirectory>>,
    /// Held while refreshing, so a burst of requests after expiry makes one query, not many.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

/// What this server knows of the devices, and how fresh that is.
#[derive(Default)]
struct DeviceDirectory {
    devices: HashMap<Uuid, DeviceRow>,
    /// Device ids recently looked up and not found, with when.
    unknown: HashMap<Uuid, Instant>,
    refreshed_at: Option<Instant>,
    /// The newest `updated_ms` seen; the next refresh asks for rows changed since then.
    high_water_ms: u64,
}

/// How far back each refresh looks before the newest change it has seen. Versions are stamped
/// by the clock of the server that wrote them, so a change stamped slightly in the past by a
/// server with a slow clock is still picked up.
const REFRESH_OVERLAP_MS: u64 = 10 * 60 * 1000;

impl DeviceAuthenticator {
    pub fn new(registry: Registry, ttl: Duration) -> DeviceAuthenticator {
        DeviceAuthenticator {
            registry,
            ttl,
            directory: Arc::default(),
            refreshing: Arc::default(),
        }
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
        if device.revoked != 0 {
            return Err(AuthError::Revoked);
        }
        Ok(AuthenticatedDevice {
            device_id,
            tenant_id: device.tenant_id,
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

    async fn device(&self, device_id: Uuid) -> Result<Option<DeviceRow>, ClickHouseError> {
        if !self.is_fresh() {
            self.refresh().await?;
        }
        {
            let directory = self.directory();
            if let Some(device) = directory.devices.get(&device_id) {
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
        // Not in the directory: perhaps enrolled since the last refresh.
        let found = self.registry.device(device_id).await?;
        let mut directory = self.directory();
        match &found {
            Some(device) => {
                directory.devices.insert(device_id, device.clone());
            }
            None => {
                if directory.unknown.len() >= MAX_CACHED {
                    directory.unknown.clear();
                }
                directory.unknown.insert(device_id, Instant::now());
            }
        }
        Ok(found)
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
        let changed = self.registry.devices_changed_since(since).await?;
        let mut directory = self.directory();
        for device in changed {
            directory.high_water_ms = directory.high_water_ms.max(device.updated_ms);
            directory.unknown.remove(&device.device_id);
            directory.devices.insert(device.device_id, device);
        }
        directory.refreshed_at = Some(Instant::now());
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
    cache: Arc<TtlCache<String, Option<ApiKeyRow>>>,
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
            .get_or_load(token.id.clone(), self.registry.api_key(&token.id))
            .await?
            .filter(|k| secrets::verify(&token, &k.secret_hash))
            .ok_or(AuthError::Unknown)?;
        if key.revoked != 0 {
            return Err(AuthError::Revoked);
        }
        // Rows are written only through the registry, which parses both; a row that does not
        // parse was edited by hand and is refused rather than trusted.
        let tenant = key.tenant_id.parse().map_err(|_| AuthError::Unknown)?;
        let role = key.role.parse().map_err(|_| AuthError::Unknown)?;
        Ok(ApiCaller {
            tenant,
            key_id: key.key_id,
            key_name: key.name,
            role,
        })
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
