//! The registry's calls from the network: enrolling a device with an enrollment key, and
//! reading and replacing a tenant's capture policy.
//!
//! Devices and API keys are created, listed and revoked by the `admin` command
//! ([`crate::admin`]); the API authenticates them ([`crate::auth`]). Both use the storage layer
//! ([`crate::storage::registry`]) directly.
//!
//! Enrolling is two steps, so the handler can apply the per-key rate limit once it knows the
//! key: [`Registry::enrollment_key`] finds the key a token names, [`Registry::enroll`] enrolls a
//! device with it. Saving a policy is two steps too, so the handler records the change in the
//! audit log before it takes effect: [`Registry::prepare_policy`], [`Registry::save_policy`].

use backlight_shared::credential::Token;
use backlight_shared::policy::Policy;
use clickhouse::Client;
use uuid::Uuid;

use super::Clock;
use crate::clickhouse::ClickHouseError;
use crate::secrets;
use crate::storage::policies::{self, PolicyChange, PolicyError, StoredPolicy};
use crate::storage::registry::{self as store, EnrollError, NewDevice};
use crate::storage::ReadError;
use crate::tenancy::{EnrollmentKey, TenantId};

/// Why a device was not enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// No such key, or the secret does not match (the two answer alike).
    #[error("unknown enrollment key")]
    UnknownKey,
    /// Revoked, expired or used up.
    #[error("{0}")]
    Unusable(String),
    /// See [`EnrollError::Unconfirmed`]: the device may simply try again.
    #[error(transparent)]
    Unconfirmed(EnrollError),
    #[error(transparent)]
    Storage(#[from] ClickHouseError),
}

/// A device enrolled: its id, its tenant and its credential (the only copy of its secret).
#[derive(Debug)]
pub struct Enrolled {
    pub device_id: Uuid,
    pub tenant_id: String,
    pub credential: Token,
}

/// What the registry calls work with. Borrowed, so building one per request costs nothing.
#[derive(Clone, Copy)]
pub struct Registry<'a> {
    pub registry: &'a store::Registry,
    pub client: &'a Client,
    pub clock: Clock,
}

impl Registry<'_> {
    /// The enrollment key `token` names, if its secret matches. A key whose row does not
    /// parse (edited by hand) is refused like an unknown one rather than trusted, and logged.
    pub async fn enrollment_key(self, token: &Token) -> Result<EnrollmentKey, EnrollmentError> {
        let key = match self.registry.enrollment_key(&token.id).await {
            Ok(key) => key,
            Err(ReadError::ClickHouse(e)) => return Err(e.into()),
            Err(ReadError::Unreadable(e)) => {
                e.report_refused("an enrollment key");
                None
            }
        };
        key.filter(|k| secrets::verify(token, &k.secret_hash))
            .ok_or(EnrollmentError::UnknownKey)
    }

    /// Enrolls a device with `key` (from [`Registry::enrollment_key`]) unless the key is
    /// revoked, expired or used up.
    pub async fn enroll(
        self,
        key: &EnrollmentKey,
        device: NewDevice<'_>,
    ) -> Result<Enrolled, EnrollmentError> {
        if let Some(reason) = key.unusable_reason((self.clock)()) {
            return Err(EnrollmentError::Unusable(reason.to_string()));
        }
        let hostname = device.hostname.to_string();
        let (device_id, credential) =
            self.registry
                .enroll_device(key, device)
                .await
                .map_err(|e| match e {
                    e @ EnrollError::UsedUp { .. } => EnrollmentError::Unusable(e.to_string()),
                    e @ EnrollError::Unconfirmed => EnrollmentError::Unconfirmed(e),
                    EnrollError::ClickHouse(e) => EnrollmentError::Storage(e),
                })?;
        tracing::info!(%device_id, tenant = %key.tenant, %hostname, "device enrolled");
        metrics::counter!("backlight_devices_enrolled_total").increment(1);
        Ok(Enrolled {
            device_id,
            tenant_id: key.tenant.to_string(),
            credential,
        })
    }

    /// The tenant's current policy (the default one before an admin saved any).
    pub async fn policy(self, tenant: &TenantId) -> Result<StoredPolicy, ClickHouseError> {
        policies::current(self.client, tenant).await
    }

    /// Checks `policy` against the rules and the current one; nothing is saved yet.
    pub async fn prepare_policy(
        self,
        tenant: &TenantId,
        policy: Policy,
    ) -> Result<PolicyChange, PolicyError> {
        policies::prepare(self.client, tenant, policy).await
    }

    /// Saves a prepared policy; agents pick it up on their next poll.
    pub async fn save_policy(
        self,
        change: &PolicyChange,
        saved_by: &str,
    ) -> Result<StoredPolicy, PolicyError> {
        let stored = policies::save(self.client, change, saved_by).await?;
        tracing::info!(tenant = %change.tenant(), version = stored.policy.version, by = %saved_by, changes = %change.summary(), "policy saved");
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(revoked: bool, expires_ms: Option<u64>) -> EnrollmentKey {
        EnrollmentKey {
            key_id: "k1".into(),
            tenant: "acme".parse().unwrap(),
            secret_hash: String::new(),
            note: String::new(),
            created_ms: 0,
            expires_ms,
            revoked,
        }
    }

    /// An unusable key is refused by the service's clock before anything is written (the
    /// ClickHouse here is not there: reaching it would fail with a storage error instead).
    #[tokio::test]
    async fn a_revoked_or_expired_key_enrolls_nothing() {
        let client = clickhouse::Client::default().with_url("http://127.0.0.1:9");
        let storage = store::Registry::new(client.clone());
        let registry = Registry {
            registry: &storage,
            client: &client,
            clock: || 2_000,
        };
        let device = || NewDevice {
            hostname: "desk",
            os: "linux",
            agent_version: "1",
        };
        for (row, reason) in [
            (key(true, None), "enrollment key revoked"),
            (key(false, Some(2_000)), "enrollment key expired"),
        ] {
            match registry.enroll(&row, device()).await {
                Err(EnrollmentError::Unusable(r)) => assert_eq!(r, reason),
                other => panic!("{reason}: {other:?}"),
            }
        }
        // Expiring after the clock's now: usable, so the service goes on to storage.
        assert!(matches!(
            registry.enroll(&key(false, Some(2_001)), device()).await,
            Err(EnrollmentError::Storage(_))
        ));
    }
}
