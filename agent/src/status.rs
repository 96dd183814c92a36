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

use backlight_shared::policy::Policy;

use crate::credentials::{self, CredentialsError};
use crate::data_dir;
use crate::policy;
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
    /// The employee's latest consent answer (`None` before the first).
    pub consent_granted: Option<bool>,
    /// The policy version that answer was for.
    pub consent_policy_version: Option<u32>,
    /// The version of the policy in force (the cached one; the default's before the first fetch).
    pub policy_version: Option<u32>,
    /// Why the server's latest policy was refused (the previous one stays in force).
    pub policy_error: Option<String>,
    /// Private time ends at this instant.
    pub paused_until_ms: Option<UnixMillis>,
    /// What desktop capture was last doing (`capturing (x11 :0)`, `waiting for consent…`,
    /// `unavailable: …`), as the running agent last wrote it.
    pub capture: Option<String>,
    #[serde(skip)]
    pub consent_url: Option<String>,
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
        status.consent_granted = report.control.consent.as_ref().map(|c| c.granted);
        status.consent_policy_version = report.control.consent.as_ref().map(|c| c.policy_version);
        status.policy_version = Some(
            report
                .policy
                .as_deref()
                .and_then(policy::parse_cached)
                .map_or(Policy::default().version, |p| p.policy.version),
        );
        status.policy_error = report.policy_error;
        status.paused_until_ms = report
            .control
            .pause_until_ms
            .filter(|until| *until > backlight_shared::now_ms());
        status.capture = report.capture;
        status.consent_url = report.consent_url;
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
    let _ = writeln!(
        out,
        "policy version:   {}",
        status
            .policy_version
            .map_or(none.clone(), |v| v.to_string())
    );
    if let Some(error) = &status.policy_error {
        let _ = writeln!(out, "policy refused:   {error}");
    }
    let _ = writeln!(
        out,
        "consent:          {}",
        match (status.consent_granted, status.consent_policy_version) {
            (Some(true), Some(v)) => format!("granted (policy version {v})"),
            (Some(false), Some(v)) => format!("declined or withdrawn (policy version {v})"),
            _ => "not given yet (`backlight-agent consent show`)".to_string(),
        }
    );
    if let Some(until) = status.paused_until_ms {
        let _ = writeln!(out, "paused until:     {}", format_ms(until));
    }
    let _ = writeln!(
        out,
        "capture:          {}",
        status.capture.as_ref().unwrap_or(&none)
    );
    if let Some(url) = &status.consent_url {
        let _ = writeln!(out, "local page:       {url}");
    }
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
                "capture",
                "consent_granted",
                "consent_policy_version",
                "device_id",
                "enrolled",
                "events_dropped",
                "events_rejected",
                "last_error",
                "last_seq",
                "last_upload_ms",
                "paused_until_ms",
                "policy_error",
                "policy_version",
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
