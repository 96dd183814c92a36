//! The `policies` table: each tenant's agent policy (schema in
//! `deploy/clickhouse/migrations/0007_policies.sql`).

use backlight_shared::policy::Policy;
use backlight_shared::validate::ValidationError;
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};
use crate::tenancy::TenantId;

#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct PolicyRow {
    tenant_id: String,
    version: u32,
    policy_json: String,
    etag: String,
    saved_by: String,
    updated_ms: u64,
}

/// A tenant's current policy with its entity tag.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub policy: Policy,
    /// Changes whenever the policy does; agents send it back in `If-None-Match`.
    pub etag: String,
}

/// Why a policy was not saved.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
}

fn etag_of(json: &str) -> String {
    format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(json.as_bytes()))[..32]
    )
}

/// The current policy of a tenant; the default policy when its admins never saved one.
pub async fn current(client: &Client, tenant: &TenantId) -> Result<StoredPolicy, ClickHouseError> {
    let row: Option<PolicyRow> = with_timeout(
        client
            .query("SELECT ?fields FROM policies FINAL WHERE tenant_id = ?")
            .bind(tenant.as_str())
            .fetch_optional(),
    )
    .await?;
    let stored = row.and_then(|r| match serde_json::from_str::<Policy>(&r.policy_json) {
        Ok(policy) => Some(StoredPolicy { policy, etag: r.etag }),
        Err(e) => {
            // Only `save` writes this table, after validating; a row that does not parse was
            // written by a newer server or by hand. Serve the default rather than nothing.
            tracing::error!(tenant = %tenant, error = %e, "stored policy does not parse; serving the default");
            None
        }
    });
    Ok(stored.unwrap_or_else(|| {
        let policy = Policy::default();
        let json = serde_json::to_string(&policy).unwrap_or_default();
        StoredPolicy {
            etag: etag_of(&json),
            policy,
        }
    }))
}

/// Validates and saves a tenant's policy. A changed notice needs a higher version, so that
/// every employee is asked again; a version never goes down.
pub async fn save(
    client: &Client,
    tenant: &TenantId,
    policy: &Policy,
    saved_by: &str,
) -> Result<StoredPolicy, PolicyError> {
    policy.validate()?;
    let previous = current(client, tenant).await?.policy;
    if policy.version < previous.version {
        return Err(ValidationError::new(
            "version",
            format!(
                "version {} is lower than the current {}",
                policy.version, previous.version
            ),
        )
        .into());
    }
    if policy.notice != previous.notice && policy.version == previous.version {
        return Err(ValidationError::new(
            "version",
            format!(
                "the notice changed, so employees must be asked again: raise version above {}",
                previous.version
            ),
        )
        .into());
    }
    let json = serde_json::to_string(policy).map_err(|e| ValidationError::new("policy", e))?;
    let etag = etag_of(&json);
    let row = PolicyRow {
        tenant_id: tenant.to_string(),
        version: policy.version,
        policy_json: json,
        etag: etag.clone(),
        saved_by: saved_by.to_string(),
        updated_ms: backlight_shared::now_ms(),
    };
    let row = &row;
    with_write_retry(|| async move {
        let mut insert = client.insert::<PolicyRow>("policies").await?;
        insert.write(row).await?;
        insert.end().await
    })
    .await?;
    Ok(StoredPolicy {
        policy: policy.clone(),
        etag,
    })
}
