//! The `policies` table: each tenant's agent policy (schema in
//! `deploy/clickhouse/migrations/0007_policies.sql`), and `policy_history`, every policy ever
//! saved with who saved it and what changed (`0014_policy_history_and_key_limits.sql`).
//!
//! Saving is two steps so the caller can audit in between: [`prepare`] validates and says what
//! changes, [`save`] stores.

use backlight_shared::policy::Policy;
use backlight_shared::policy_change;
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

/// A validated new policy for a tenant and what it changes against the current one; [`save`]
/// stores it. Made by [`prepare`], so a change that would skip asking employees again cannot
/// be saved.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyChange {
    tenant: TenantId,
    policy: Policy,
    /// Every difference against the current policy, in words (see [`policy_change::changes`]).
    pub changes: Vec<String>,
}

/// Longest change summary written to the audit log; the full documents are in `policy_history`.
const MAX_SUMMARY_LEN: usize = 2_000;

impl PolicyChange {
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The changes in one line for the audit log (`version 2 → 3; title_policy drop → send`).
    pub fn summary(&self) -> String {
        let mut text = if self.changes.is_empty() {
            format!("version {}: saved unchanged", self.policy.version)
        } else {
            self.changes.join("; ")
        };
        if text.len() > MAX_SUMMARY_LEN {
            let mut cut = MAX_SUMMARY_LEN;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" … (full documents in policy_history)");
        }
        text
    }
}

/// Validates `policy` as the tenant's next one: every field, and the version rules that keep
/// consent honest. A version never goes down; a changed notice, or a policy that records more
/// than the current one ([`policy_change::widenings`]), needs a higher version, so that every
/// employee is asked again.
pub async fn prepare(
    client: &Client,
    tenant: &TenantId,
    policy: Policy,
) -> Result<PolicyChange, PolicyError> {
    policy.validate()?;
    let previous = current(client, tenant).await?.policy;
    check_version(&previous, &policy)?;
    Ok(PolicyChange {
        tenant: tenant.clone(),
        changes: policy_change::changes(&previous, &policy),
        policy,
    })
}

fn check_version(previous: &Policy, next: &Policy) -> Result<(), ValidationError> {
    if next.version < previous.version {
        return Err(ValidationError::new(
            "version",
            format!(
                "version {} is lower than the current {}",
                next.version, previous.version
            ),
        ));
    }
    if next.version > previous.version {
        return Ok(());
    }
    if next.notice != previous.notice {
        return Err(ValidationError::new(
            "version",
            format!(
                "the notice changed, so employees must be asked again: raise version above {}",
                previous.version
            ),
        ));
    }
    let widened = policy_change::widenings(previous, next);
    if !widened.is_empty() {
        return Err(ValidationError::new(
            "version",
            format!(
                "this policy records more than version {} ({}), so employees must be asked \
                 again: raise version above {} (and say in the notice what is recorded now)",
                previous.version,
                widened.join("; "),
                previous.version
            ),
        ));
    }
    Ok(())
}

/// Saves a prepared change: first into `policy_history` (with `saved_by` and what changed),
/// then as the tenant's current policy. The caller records the change in the audit log before.
pub async fn save(
    client: &Client,
    change: &PolicyChange,
    saved_by: &str,
) -> Result<StoredPolicy, PolicyError> {
    let json =
        serde_json::to_string(&change.policy).map_err(|e| ValidationError::new("policy", e))?;
    let etag = etag_of(&json);
    let now = backlight_shared::now_ms();
    let history = HistoryRow {
        tenant_id: change.tenant.to_string(),
        saved_ms: now,
        version: change.policy.version,
        policy_json: json.clone(),
        etag: etag.clone(),
        saved_by: saved_by.to_string(),
        changes: change.summary(),
    };
    let row = PolicyRow {
        tenant_id: change.tenant.to_string(),
        version: change.policy.version,
        policy_json: json,
        etag: etag.clone(),
        saved_by: saved_by.to_string(),
        updated_ms: now,
    };
    let (row, history) = (&row, &history);
    // One retry loop per table, so a retried `policies` INSERT does not write the history twice.
    with_write_retry(|| async move {
        let mut insert = client.insert::<HistoryRow>("policy_history").await?;
        insert.write(history).await?;
        insert.end().await
    })
    .await?;
    with_write_retry(|| async move {
        let mut insert = client.insert::<PolicyRow>("policies").await?;
        insert.write(row).await?;
        insert.end().await
    })
    .await?;
    Ok(StoredPolicy {
        policy: change.policy.clone(),
        etag,
    })
}

/// One saved policy, as `policy_history` keeps it.
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub tenant_id: String,
    pub saved_ms: u64,
    pub version: u32,
    pub policy_json: String,
    pub etag: String,
    pub saved_by: String,
    pub changes: String,
}

/// Every policy the tenant saved, newest first.
pub async fn history(
    client: &Client,
    tenant: &TenantId,
) -> Result<Vec<HistoryRow>, ClickHouseError> {
    with_timeout(
        client
            .query(
                "SELECT ?fields FROM policy_history FINAL WHERE tenant_id = ? \
                 ORDER BY saved_ms DESC",
            )
            .bind(tenant.as_str())
            .fetch_all(),
    )
    .await
}
