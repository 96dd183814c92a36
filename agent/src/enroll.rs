//! Enrollment: exchanges an enrollment key for this device's credential and stores it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backlight_shared::api::{EnrollRequest, EnrollResponse, ENROLL_PATH};
use backlight_shared::credential::{SecretKind, Token, TokenError};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::credentials::{self, Credentials, CredentialsError};
use crate::data_dir;
use crate::http::{self, error_message, read_body_capped, InvalidServerUrl, MAX_RESPONSE_BYTES};
use crate::upload::parse_retry_after;
use crate::AGENT_VERSION;

/// How long enrollment keeps retrying while the server answers 429 or 503 with `Retry-After`.
const MAX_BUSY_WAIT: Duration = Duration::from_secs(300);
/// Longest single wait between those retries.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// What `backlight-agent enroll` was asked to do.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub server_url: String,
    pub enrollment_key: String,
    /// Replace an existing enrollment.
    pub force: bool,
    /// Allow plain `http://` to a server that is not on this computer (labs only).
    pub insecure_http: bool,
}

/// Enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    InvalidServerUrl(#[from] InvalidServerUrl),
    #[error("the key is not an enrollment key: {0}")]
    InvalidKey(TokenError),
    #[error("this device is already enrolled as {device_id} (tenant {tenant_id}); pass --force to enroll again")]
    AlreadyEnrolled { device_id: Uuid, tenant_id: String },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("cannot reach the server: {}", http::error_chain(.0))]
    Request(reqwest::Error),
    #[error("the server refused the enrollment: {message} (HTTP {status})")]
    Refused { status: StatusCode, message: String },
    #[error("the server's answer is not an enrollment: {0}")]
    BadResponse(serde_json::Error),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// Enrolls this device with the server and stores the credential in `data_dir`.
pub async fn enroll(data_dir: &Path, options: &EnrollOptions) -> Result<Credentials, EnrollError> {
    let plain_http = if options.insecure_http {
        http::PlainHttp::Anywhere
    } else {
        http::PlainHttp::LoopbackOnly
    };
    let url = http::endpoint_with(&options.server_url, ENROLL_PATH, plain_http)?;
    let key = Token::parse_kind(&options.enrollment_key, SecretKind::Enrollment)
        .map_err(EnrollError::InvalidKey)?;
    if !options.force {
        if let Some(existing) = credentials::load(data_dir)? {
            return Err(EnrollError::AlreadyEnrolled {
                device_id: existing.device_id,
                tenant_id: existing.tenant_id,
            });
        }
    }
    data_dir::ensure(data_dir).map_err(|source| EnrollError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    if options.insecure_http && url.scheme() == "http" {
        tracing::warn!(%url, "enrolling over plain HTTP (--insecure-http): the credential travels unencrypted");
    }

    let request = EnrollRequest {
        enrollment_key: key.to_string(),
        hostname: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
        agent_version: AGENT_VERSION.to_string(),
        os: std::env::consts::OS.to_string(),
    };
    let client = http::client().map_err(EnrollError::Client)?;
    let started = std::time::Instant::now();
    let (status, body) = loop {
        let mut response = client
            .post(url.clone())
            .json(&request)
            .send()
            .await
            .map_err(EnrollError::Request)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let body = read_body_capped(&mut response, MAX_RESPONSE_BYTES)
            .await
            .map_err(EnrollError::Request)?;
        // The server is busy (a rollout enrolling many desktops at once hits its rate limit):
        // wait as long as it says, for a while, instead of failing the installation.
        let busy = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        match retry_after {
            Some(wait) if busy && started.elapsed() + wait <= MAX_BUSY_WAIT => {
                let wait = wait.clamp(Duration::from_secs(1), MAX_RETRY_WAIT);
                tracing::warn!(
                    %status,
                    wait_s = wait.as_secs(),
                    "the server is busy; enrolling again in a moment"
                );
                tokio::time::sleep(wait).await;
            }
            _ => break (status, body),
        }
    };
    if status != StatusCode::OK {
        return Err(EnrollError::Refused {
            status,
            message: error_message(status, &body),
        });
    }
    let answer: EnrollResponse = serde_json::from_slice(&body).map_err(EnrollError::BadResponse)?;
    let stored = Credentials {
        server_url: options.server_url.trim().trim_end_matches('/').to_string(),
        device_id: answer.device_id,
        tenant_id: answer.tenant_id,
        device_credential: answer.device_credential,
        insecure_http: options.insecure_http,
    };
    credentials::store(data_dir, &stored)?;
    Ok(stored)
}
