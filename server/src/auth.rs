//! Authenticating devices by their credential, with a short cache.
//!
//! Looking a device up costs a ClickHouse query; agents send a batch every few seconds. The
//! cache keeps a positive or negative answer for `ttl` (a few seconds) so a fleet does not turn
//! every ingest into a registry query. It is a cache, not state: a revocation written by any
//! server reaches every server within `ttl`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backlight_shared::credential::{SecretKind, Token};
use uuid::Uuid;

use crate::clickhouse::ClickHouseError;
use crate::secrets;
use crate::storage::registry::{DeviceRow, Registry};

/// Most cached devices; beyond it the cache is cleared (simple, bounded, good enough).
const MAX_CACHED: usize = 100_000;

/// A device the credential proved to be.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticatedDevice {
    pub device_id: Uuid,
    pub tenant_id: String,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed Authorization header (expected `Bearer bld_…`)")]
    Missing,
    #[error("unknown device credential")]
    Unknown,
    #[error("this device was revoked by an administrator")]
    Revoked,
    #[error(transparent)]
    Storage(#[from] ClickHouseError),
}

#[derive(Clone)]
pub struct DeviceAuthenticator {
    registry: Registry,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<Uuid, (Instant, Option<DeviceRow>)>>>,
}

impl DeviceAuthenticator {
    pub fn new(registry: Registry, ttl: Duration) -> DeviceAuthenticator {
        DeviceAuthenticator {
            registry,
            ttl,
            cache: Arc::default(),
        }
    }

    /// Checks an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<AuthenticatedDevice, AuthError> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| Token::parse_kind(t, SecretKind::Device).ok())
            .ok_or(AuthError::Missing)?;
        let device_id = Uuid::parse_str(&token.id).map_err(|_| AuthError::Unknown)?;
        let device = self.lookup(device_id).await?.ok_or(AuthError::Unknown)?;
        if !secrets::verify(&token, &device.secret_hash) {
            return Err(AuthError::Unknown);
        }
        if device.revoked != 0 {
            return Err(AuthError::Revoked);
        }
        Ok(AuthenticatedDevice {
            device_id,
            tenant_id: device.tenant_id,
        })
    }

    async fn lookup(&self, device_id: Uuid) -> Result<Option<DeviceRow>, ClickHouseError> {
        if let Some((at, row)) = self.lock().get(&device_id) {
            if at.elapsed() < self.ttl {
                return Ok(row.clone());
            }
        }
        let row = self.registry.device(device_id).await?;
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(device_id, (Instant::now(), row.clone()));
        Ok(row)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Instant, Option<DeviceRow>)>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
