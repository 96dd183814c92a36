//! The tenant's policy on this desktop: fetched from the server, validated, cached, and handed
//! to the running agent without a restart.
//!
//! - `run` starts from the last good policy cached in the spool (so it works offline after a
//!   restart), or [`Policy::default`] before the first fetch ever succeeded.
//! - [`poll`] asks `GET /v1/agent/policy` at start and then every interval, with
//!   `If-None-Match`, so an unchanged policy costs a `304`.
//! - A new policy is applied only if it parses and passes [`Policy::validate`], and only if the
//!   employee's consent still covers it ([`consent_still_covers`]: a wider policy needs a new
//!   version, which asks again); otherwise it is refused (logged once per server ETag, and
//!   `status` shows why) and the previous one stays.
//! - Applied policies reach the desktop source through a [`watch`] channel: sampling interval,
//!   privacy, rules and the consent version change on the fly.

use std::sync::Arc;
use std::time::Duration;

use backlight_shared::policy::{Policy, POLICY_PATH};
use backlight_shared::policy_change;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::credentials::Credentials;
use crate::http::{endpoint_with, error_chain, error_message, read_body_capped, InvalidServerUrl};
use crate::spool::{Note, Spool, SpoolError};

/// Largest policy body read. The protocol's limits (200 rules, 600 patterns of up to 1,000
/// bytes, a 20 KB notice) keep a real policy under about 1.3 MB.
pub const MAX_POLICY_BYTES: usize = 2 * 1024 * 1024;

/// How often the server is asked for a new policy by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// No policy was ever fetched: the built-in default.
    Default,
    /// The last good policy from an earlier run.
    Cached,
    /// Fetched from the server during this run.
    Server,
}

/// The policy in force.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivePolicy {
    pub policy: Policy,
    /// The server's entity tag for it (`None` for the default).
    pub etag: Option<String>,
    pub origin: Origin,
}

impl ActivePolicy {
    pub fn default_policy() -> ActivePolicy {
        ActivePolicy {
            policy: Policy::default(),
            etag: None,
            origin: Origin::Default,
        }
    }
}

/// The cache entry in the spool.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    etag: Option<String>,
    policy: Policy,
}

/// The policy from the spool's cache, or the default. A cached policy that no longer
/// validates (written by another agent version) is ignored with a warning.
pub async fn load_cached(spool: &Spool) -> Result<ActivePolicy, SpoolError> {
    let Some(json) = spool.note(Note::Policy).await? else {
        return Ok(ActivePolicy::default_policy());
    };
    Ok(parse_cached(&json).unwrap_or_else(|| {
        tracing::warn!("the cached policy cannot be used; starting from the default policy");
        ActivePolicy::default_policy()
    }))
}

/// Parses a cache entry (also for `status`, which reads it from the spool directly).
pub fn parse_cached(json: &str) -> Option<ActivePolicy> {
    let cached: Cached = serde_json::from_str(json).ok()?;
    cached.policy.validate().ok()?;
    Some(ActivePolicy {
        policy: cached.policy,
        etag: cached.etag,
        origin: Origin::Cached,
    })
}

/// A policy answer could not be obtained or used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the server: {0}")]
    Network(String),
    #[error("the server answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// The server sent a policy this agent refuses.
    #[error("refused the server's policy: {0}")]
    Refused(String),
}

/// What one fetch found.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// `304`: the policy has not changed.
    Unchanged,
    /// A valid new policy.
    New(Box<ActivePolicy>),
}

/// Fetches the device's tenant policy.
pub struct Fetcher {
    http: reqwest::Client,
    url: Url,
    credential: String,
    /// The ETag of the last answer, good or refused (so a refused policy is not fetched and
    /// reported again every minute).
    etag: Option<String>,
}

impl Fetcher {
    pub fn new(
        http: reqwest::Client,
        credentials: &Credentials,
        current: &ActivePolicy,
    ) -> Result<Fetcher, InvalidServerUrl> {
        Ok(Fetcher {
            http,
            url: endpoint_with(
                &credentials.server_url,
                POLICY_PATH,
                credentials.plain_http(),
            )?,
            credential: credentials.device_credential.clone(),
            etag: current.etag.clone(),
        })
    }

    /// Asks the server once.
    pub async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let mut request = self
            .http
            .get(self.url.clone())
            .bearer_auth(&self.credential);
        if let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| FetchError::Network(error_chain(&e)))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::Unchanged);
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_body_capped(&mut response, MAX_POLICY_BYTES + 1)
            .await
            .map_err(|e| FetchError::Network(error_chain(&e)))?;
        if !status.is_success() {
            return Err(FetchError::Status {
                status,
                message: error_message(status, &body),
            });
        }
        // From here on the answer is the server's word: remember its tag even if we refuse it.
        self.etag = etag.clone();
        if body.len() > MAX_POLICY_BYTES {
            return Err(FetchError::Refused(format!(
                "the policy is larger than {MAX_POLICY_BYTES} bytes"
            )));
        }
        let policy: Policy = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Refused(format!("cannot read it: {e}")))?;
        policy
            .validate()
            .map_err(|e| FetchError::Refused(e.to_string()))?;
        Ok(Fetched::New(Box::new(ActivePolicy {
            policy,
            etag,
            origin: Origin::Server,
        })))
    }
}

/// Whether `next` may replace `in_force` without the employee being asked again: its version
/// never goes down, and under the same version it neither changes the notice nor records more
/// ([`policy_change::widenings`]). A higher version always may: the consent gate then asks.
/// The server enforces the same when a policy is saved; this keeps a bypassed server or a
/// database edited by hand from widening capture under an old consent.
///
/// The built-in default (before any fetch) is a placeholder whose notice text depends on the
/// agent's release; the server's first policy may reword it under version 1, but not widen it.
pub fn consent_still_covers(in_force: &ActivePolicy, next: &Policy) -> Result<(), String> {
    let placeholder = in_force.origin == Origin::Default;
    let in_force = &in_force.policy;
    if next.version < in_force.version {
        return Err(format!(
            "its version {} is lower than the version {} in force",
            next.version, in_force.version
        ));
    }
    if next.version > in_force.version {
        return Ok(());
    }
    if next.notice != in_force.notice && !placeholder {
        return Err(format!(
            "it changes the notice of version {} without a new version",
            next.version
        ));
    }
    let widened = policy_change::widenings(in_force, next);
    if !widened.is_empty() {
        return Err(format!(
            "it records more than version {} in force ({}) without a new version, so you \
             would not be asked again",
            in_force.version,
            widened.join("; ")
        ));
    }
    Ok(())
}

/// Applies one fetch result: caches and publishes a new policy, records a refusal (also of a
/// policy [`consent_still_covers`] rejects). Network trouble changes nothing (the agent keeps
/// its policy while offline).
pub async fn apply(
    result: Result<Fetched, FetchError>,
    spool: &Spool,
    policy: &watch::Sender<Arc<ActivePolicy>>,
) -> Result<(), SpoolError> {
    let result = match result {
        Ok(Fetched::New(new)) => {
            let in_force = Arc::clone(&policy.borrow());
            match consent_still_covers(&in_force, &new.policy) {
                Ok(()) => Ok(Fetched::New(new)),
                Err(reason) => Err(FetchError::Refused(reason)),
            }
        }
        other => other,
    };
    match result {
        Ok(Fetched::Unchanged) => {}
        Ok(Fetched::New(new)) => {
            let cached = Cached {
                etag: new.etag.clone(),
                policy: new.policy.clone(),
            };
            spool
                .set_note(Note::Policy, Some(serde_json::to_string(&cached)?))
                .await?;
            spool.set_note(Note::PolicyError, None).await?;
            policy.send_if_modified(|current| {
                if current.policy == new.policy {
                    return false;
                }
                tracing::info!(
                    version = new.policy.version,
                    rules = new.policy.rules.len(),
                    "applying the tenant's new policy"
                );
                *current = Arc::from(new);
                true
            });
        }
        Err(FetchError::Refused(reason)) => {
            tracing::error!(%reason, "refused the server's policy; keeping the previous one");
            spool
                .set_note(Note::PolicyError, Some(reason.clone()))
                .await?;
        }
        Err(error) => tracing::debug!(%error, "no policy update"),
    }
    Ok(())
}

/// Asks the server every `interval` until `shutdown` (the first ask is the caller's, at start).
pub async fn poll(
    mut fetcher: Fetcher,
    spool: Spool,
    policy: watch::Sender<Arc<ActivePolicy>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SpoolError> {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let result = tokio::select! {
            result = fetcher.fetch() => result,
            _ = shutdown.changed() => return Ok(()),
        };
        apply(result, &spool, &policy).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;

    fn policy(version: u32, private_titles: &[&str]) -> ActivePolicy {
        ActivePolicy {
            policy: Policy {
                version,
                private_titles: private_titles.iter().map(|p| p.to_string()).collect(),
                ..Policy::default()
            },
            etag: Some(format!("\"{version}-{}\"", private_titles.len())),
            origin: Origin::Server,
        }
    }

    /// Issue 10: a server (or a database edited by hand) could widen what is recorded under the
    /// version the employee consented to, and the agent applied it without asking again.
    #[tokio::test]
    async fn a_wider_policy_without_a_new_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool"), SpoolConfig::default()).unwrap();
        let (tx, rx) = watch::channel(Arc::new(policy(2, &["(?i)bank"])));

        let wider = policy(2, &[]);
        apply(Ok(Fetched::New(Box::new(wider))), &spool, &tx)
            .await
            .unwrap();
        assert_eq!(rx.borrow().policy.private_titles, vec!["(?i)bank"]);
        let reason = spool.note(Note::PolicyError).await.unwrap().unwrap();
        assert!(reason.contains("private_titles"), "{reason}");

        let older = policy(1, &["(?i)bank"]);
        apply(Ok(Fetched::New(Box::new(older))), &spool, &tx)
            .await
            .unwrap();
        assert_eq!(rx.borrow().policy.version, 2, "a version never goes down");

        // Narrower under the same version, or wider under a new one (asks again): applied.
        let narrower = policy(2, &["(?i)bank", "(?i)health"]);
        apply(Ok(Fetched::New(Box::new(narrower))), &spool, &tx)
            .await
            .unwrap();
        assert_eq!(rx.borrow().policy.private_titles.len(), 2);
        assert_eq!(spool.note(Note::PolicyError).await.unwrap(), None);
        apply(Ok(Fetched::New(Box::new(policy(3, &[])))), &spool, &tx)
            .await
            .unwrap();
        assert_eq!(rx.borrow().policy.version, 3);
        spool.close().await;
    }
}
