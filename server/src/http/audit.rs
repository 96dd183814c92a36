//! Recording API calls in the audit log ([`crate::storage::audit`]) from handlers: a call that
//! shows data or changes something is recorded before its answer leaves, and a call that
//! cannot be recorded is answered 503 with no data.

use std::future::Future;

use super::error::ApiError;
use super::AppState;
use crate::auth::ApiCaller;
use crate::clickhouse::ClickHouseError;
use crate::storage::audit::AuditEntry;

/// Records the call, and turns a refusal of the audit log into 503.
pub fn record(
    app: &AppState,
    caller: &ApiCaller,
    action: &str,
    target: &str,
    outcome: &str,
) -> Result<(), ApiError> {
    app.audit
        .record(AuditEntry::by(caller, action, target, outcome))
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// The answer for an item the caller's tenant does not have.
pub fn no_such_item() -> ApiError {
    // Identical for unknown items and other tenants' items: nothing to tell them apart by.
    ApiError::not_found("no such item")
}

/// Runs `read` of an item, records it in the audit log with its outcome (`ok`, `not_found`,
/// `error`), and only then returns it; `None` answers [`no_such_item`].
pub async fn audited<T>(
    app: &AppState,
    caller: &ApiCaller,
    action: &str,
    target: &str,
    read: impl Future<Output = Result<Option<T>, ClickHouseError>>,
) -> Result<T, ApiError> {
    match read.await {
        Ok(Some(v)) => {
            record(app, caller, action, target, "ok")?;
            Ok(v)
        }
        Ok(None) => {
            record(app, caller, action, target, "not_found")?;
            Err(no_such_item())
        }
        Err(e) => {
            // The caller sees an error and no data; record the attempt if we still can.
            let _ = record(app, caller, action, target, "error");
            Err(e.into())
        }
    }
}
