//! `backlight-agent status`: the enrollment and the spool's counters, for a person or (with
//! `--json`) for scripts and the end-to-end tests.
//!
//! It only reads: the spool is opened read-only, so it works while `run` is running.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use backlight_shared::UnixMillis;
use serde::Serialize;
use uuid::Uuid;

use crate::credentials::{self, CredentialsError};
use crate::data_dir;
use crate::spool::{self, RejectedEvent, SpoolError};

/// The status report. The JSON field names are a contract with scripts and tests: do not
/// rename them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    pub enrolled: bool,
    pub device_id: Option<Uuid>,
    pub tenant_id: Option<String>,
    pub server_url: Option<String>,
    /// Events waiting for upload.
    pub spool_depth: u64,
    /// Highest sequence number ever assigned.
    pub last_seq: u64,
    pub events_dropped: u64,
    pub events_rejected: u64,
    /// When the last batch was acknowledged.
    pub last_upload_ms: Option<UnixMillis>,
    /// The last upload problem; cleared by the next success.
    pub last_error: Option<String>,
    #[serde(skip)]
    pub lines_skipped: u64,
    #[serde(skip)]
    pub recent_rejected: Vec<RejectedEvent>,
}

/// Reading the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot read the spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Gathers the status of the agent whose state is in `dir`.
pub fn gather(dir: &Path) -> Result<Status, StatusError> {
    let mut status = Status::default();
    if let Some(creds) = credentials::load(dir)? {
        status.enrolled = true;
        status.device_id = Some(creds.device_id);
        status.tenant_id = Some(creds.tenant_id);
        status.server_url = Some(creds.server_url);
    }
    if let Some(report) = spool::inspect(&data_dir::spool_path(dir))? {
        status.spool_depth = report.depth;
        status.last_seq = report.last_seq;
        status.events_dropped = report.events_dropped;
        status.events_rejected = report.events_rejected;
        status.last_upload_ms = report.last_upload_ms;
        status.last_error = report.last_error;
        status.lines_skipped = report.lines_skipped;
        status.recent_rejected = report.recent_rejected;
    }
    Ok(status)
}

/// The report as text for a person.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let none = "-".to_string();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "enrolled:         {}",
        if status.enrolled {
            "yes"
        } else {
            "no (run `backlight-agent enroll`)"
        }
    );
    let _ = writeln!(
        out,
        "device id:        {}",
        status.device_id.map_or(none.clone(), |d| d.to_string())
    );
    let _ = writeln!(
        out,
        "tenant:           {}",
        status.tenant_id.as_ref().unwrap_or(&none)
    );
    let _ = writeln!(
        out,
        "server:           {}",
        status.server_url.as_ref().unwrap_or(&none)
    );
    let _ = writeln!(out, "spool depth:      {}", status.spool_depth);
    let _ = writeln!(out, "last seq:         {}", status.last_seq);
    let _ = writeln!(out, "events dropped:   {}", status.events_dropped);
    let _ = writeln!(out, "events rejected:  {}", status.events_rejected);
    let _ = writeln!(out, "lines skipped:    {}", status.lines_skipped);
    let _ = writeln!(
        out,
        "last upload:      {}",
        status.last_upload_ms.map_or("never".to_string(), format_ms)
    );
    let _ = writeln!(
        out,
        "last error:       {}",
        status.last_error.as_ref().unwrap_or(&none)
    );
    if !status.recent_rejected.is_empty() {
        let _ = writeln!(out, "recently rejected events (newest first):");
        for rejected in &status.recent_rejected {
            let _ = writeln!(
                out,
                "  seq {} at {}: {}",
                rejected.seq,
                format_ms(rejected.rejected_ms),
                rejected.reason
            );
        }
    }
    out
}

fn format_ms(ms: UnixMillis) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_names_are_the_contract() {
        let json = serde_json::to_value(Status::default()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "device_id",
                "enrolled",
                "events_dropped",
                "events_rejected",
                "last_error",
                "last_seq",
                "last_upload_ms",
                "server_url",
                "spool_depth",
                "tenant_id"
            ]
        );
    }

    #[test]
    fn status_of_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let status = gather(dir.path()).unwrap();
        assert!(!status.enrolled);
        assert_eq!(status.spool_depth, 0);
        assert!(render(&status).contains("enrolled:         no"));
    }
}
