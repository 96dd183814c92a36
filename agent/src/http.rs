//! The HTTP client the agent uses, and helpers for reading the server's answers safely.
//!
//! Every request has a connect timeout and a whole-request timeout, redirects are not followed
//! (a redirect would carry the device credential to another host, and a `POST` turned into a
//! `GET` would look like success), and response bodies are read up to a small cap.

use std::time::Duration;

use backlight_shared::api::ErrorBody;
use reqwest::{Response, StatusCode, Url};

/// How long establishing a connection (TCP + TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request may take, from connecting to the end of the response body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body the agent reads. The server's answers are tiny JSON documents; a proxy
/// error page is cut here rather than filling memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The server URL given by an operator is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server URL {url:?}: {reason}")]
pub struct InvalidServerUrl {
    url: String,
    reason: String,
}

/// Installs the `ring` TLS crypto provider for the process. reqwest is built without a provider
/// of its own (the default one compiles a large C library); installing twice is harmless.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client with the agent's timeouts and policies.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("backlight-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Whether plain `http://` may be used for a server that is not on this computer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlainHttp {
    /// `http://` only to a loopback address (`127.0.0.1`, `::1`, `localhost`): the device
    /// credential and the record of someone's work never cross a network unencrypted.
    #[default]
    LoopbackOnly,
    /// `http://` to any host: for a lab without TLS, chosen explicitly (`enroll --insecure-http`).
    Anywhere,
}

fn is_this_computer(url: &Url) -> bool {
    url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// The URL of `path` (e.g. `/v1/ingest`) on the server at `base`, over HTTPS unless the server
/// is on this computer. A base with a path prefix (`https://host/backlight/`) keeps it.
pub fn endpoint(base: &str, path: &str) -> Result<Url, InvalidServerUrl> {
    endpoint_with(base, path, PlainHttp::LoopbackOnly)
}

/// [`endpoint`], with plain HTTP allowed as `plain_http` says.
pub fn endpoint_with(
    base: &str,
    path: &str,
    plain_http: PlainHttp,
) -> Result<Url, InvalidServerUrl> {
    let invalid = |reason: String| InvalidServerUrl {
        url: base.to_string(),
        reason,
    };
    let parsed = Url::parse(base.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    if parsed.scheme() == "http"
        && plain_http == PlainHttp::LoopbackOnly
        && !is_this_computer(&parsed)
    {
        return Err(invalid(
            "plain http:// is allowed only for a server on this computer: the device credential \
             and the recorded work would cross the network unencrypted. Use https:// (or, in a \
             lab, enroll with --insecure-http)"
                .into(),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a server URL has no query or fragment".into()));
    }
    let joined = format!("{}{}", parsed.as_str().trim_end_matches('/'), path);
    Url::parse(&joined).map_err(|e| invalid(e.to_string()))
}

/// Reads at most `cap` bytes of the body; the rest is discarded with the connection.
pub async fn read_body_capped(
    response: &mut Response,
    cap: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    Ok(body)
}

/// An error with its causes, `outer: inner: innermost`. reqwest's own message ("error sending
/// request") rarely says what went wrong; the causes do (refused, timed out, certificate…).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The server's [`ErrorBody`], when the body is one.
pub fn error_body(body: &[u8]) -> Option<ErrorBody> {
    serde_json::from_slice(body).ok()
}

/// Words for an error answer: the server's own message when it sent an [`ErrorBody`], else the
/// status (a proxy or load balancer answered, not our server).
pub fn error_message(status: StatusCode, body: &[u8]) -> String {
    match error_body(body) {
        Some(error) => crate::terminal::printable(&error.message).into_owned(),
        None => format!("HTTP {status} without a Backlight error body"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_joins_with_and_without_prefix() {
        let url = endpoint("https://h.example", "/v1/ingest").unwrap();
        assert_eq!(url.as_str(), "https://h.example/v1/ingest");
        let url = endpoint("http://127.0.0.1:8080/", "/v1/enroll").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/v1/enroll");
        let url = endpoint("https://h.example/backlight/", "/v1/ingest").unwrap();
        assert_eq!(url.as_str(), "https://h.example/backlight/v1/ingest");
    }

    #[test]
    fn endpoint_refuses_other_schemes_and_garbage() {
        assert!(endpoint("ftp://h.example", "/v1/ingest").is_err());
        assert!(endpoint("not a url", "/v1/ingest").is_err());
        assert!(endpoint("https://h.example/?x=1", "/v1/ingest").is_err());
    }

    /// Issue 10: the device credential must not cross a network in clear text. Plain HTTP is
    /// for a server on this computer only.
    #[test]
    fn plain_http_only_to_this_computer() {
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/",
            "http://[::1]:1",
        ] {
            assert!(endpoint(local, "/v1/ingest").is_ok(), "{local}");
        }
        let refused = endpoint("http://backlight.example", "/v1/ingest").unwrap_err();
        assert!(refused.to_string().contains("https"), "{refused}");
        assert!(endpoint("http://10.1.2.3:8080", "/v1/ingest").is_err());
        assert!(endpoint("https://backlight.example", "/v1/ingest").is_ok());
    }

    #[test]
    fn error_message_prefers_the_servers_words() {
        let body = br#"{"error":"forbidden","message":"enrollment key revoked"}"#;
        assert_eq!(
            error_message(StatusCode::FORBIDDEN, body),
            "enrollment key revoked"
        );
        assert!(error_message(StatusCode::BAD_GATEWAY, b"<html>").contains("502"));
    }
}
