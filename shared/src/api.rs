//! Request and response bodies of the server's HTTP API used by agents.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// Path of the ingest endpoint.
pub const INGEST_PATH: &str = "/v1/ingest";

/// `POST /v1/enroll`: exchange an enrollment key for a device credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment key an admin created (`ble_…`).
    pub enrollment_key: String,
    /// The desktop's host name, shown to admins when they list devices.
    pub hostname: String,
    /// The agent's version.
    pub agent_version: String,
    /// The operating system, e.g. `linux`.
    pub os: String,
}

/// The answer to a successful enrollment. The credential is shown once; the server keeps only
/// its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub device_id: Uuid,
    pub tenant_id: String,
    /// Sent as `Authorization: Bearer <credential>` on every ingest.
    pub device_credential: String,
}

/// The answer to an accepted batch: every event in it is stored in ClickHouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResponse {
    /// Number of events in the batch, all of them stored now (a `seq` stored before keeps its
    /// first copy: it is acknowledged, not written again).
    pub accepted: usize,
    /// The highest sequence number in the batch; the agent may forget everything up to it.
    pub max_seq: u64,
}

/// The body of every error answer, whatever the endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `invalid_field`, `unauthorized`, `unavailable`.
    pub error: String,
    /// What went wrong, in words.
    pub message: String,
    /// The JSON path of the offending field, when one field is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
