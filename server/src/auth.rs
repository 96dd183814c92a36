//! Who is calling: devices (by their credential, for ingest) and people or systems (by API key,
//! with a role, for the query APIs).
//!
//! Looking a credential up costs a ClickHouse query, and agents send a batch every few seconds.
//! A short cache (`ttl`, a few seconds) keeps positive and negative answers, so a fleet does not
//! turn every request into a registry query. It is a cache, not state: a revocation written by
//! any server reaches every server within `ttl`.
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
use crate::storage::registry::{ApiKeyRow, DeviceRow, Registry};
use crate::tenancy::{Role, TenantId};

/// Most cached credentials per cache; beyond it the cache is cleared (simple and bounded).
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
    cache: Arc<TtlCache<Uuid, Option<DeviceRow>>>,
}

impl DeviceAuthenticator {
    pub fn new(registry: Registry, ttl: Duration) -> DeviceAuthenticator {
        DeviceAuthenticator {
            registry,
            cache: Arc::new(TtlCache::new(ttl)),
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
            .cache
            .get_or_load(device_id, self.registry.device(device_id))
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
