//! What the server's answer to an ingest request means for the agent.
//!
//! Each status maps to one decision; the reasons are in the comments next to them.

use std::time::{Duration, SystemTime};

use backlight_shared::api::IngestResponse;
use backlight_shared::validate::ValidationError;
use reqwest::header::{DATE, RETRY_AFTER};
use reqwest::{Response, StatusCode};

use crate::http::{error_body, read_body_capped, MAX_RESPONSE_BYTES};

/// Longest `Retry-After` honoured: a misconfigured proxy must not park the agent for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The meaning of one answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 200 with an [`IngestResponse`]: the events are stored and may be deleted.
    Accepted(IngestResponse),
    /// 401/403: the credential is unknown or revoked. Data is kept for when an admin fixes it.
    Unauthorized { message: String },
    /// 413: the body is too large for the server (or a proxy in front of it).
    TooLarge,
    /// 400/422 naming `events[i]`: that one event is invalid; the others are fine.
    InvalidEvent { index: usize, message: String },
    /// 400/422 about the batch as a whole (e.g. `protocol`): nothing the agent can fix by
    /// itself, so it keeps the data and retries slowly until the server is upgraded or fixed.
    Invalid { message: String },
    /// 429, 5xx, or a body that could not be read: try again later.
    Unavailable {
        retry_after: Option<Duration>,
        message: String,
    },
    /// Anything else, including a `200` that is not our server's answer (a captive portal or
    /// proxy page): the events are not known to be stored, so they are kept.
    Unexpected { message: String },
}

/// Reads the answer (body capped) and decides what it means.
pub async fn classify(mut response: Response) -> Verdict {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = match read_body_capped(&mut response, MAX_RESPONSE_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            return Verdict::Unavailable {
                retry_after,
                message: format!("HTTP {status}, but the answer could not be read: {error}"),
            }
        }
    };
    let error = error_body(&body);
    let message = match &error {
        Some(error) => format!("HTTP {status}: {}", error.message),
        None => format!("HTTP {status} without a Backlight error body"),
    };
    match status {
        StatusCode::OK => match serde_json::from_slice::<IngestResponse>(&body) {
            Ok(accepted) => Verdict::Accepted(accepted),
            Err(_) => Verdict::Unexpected {
                message: "HTTP 200 whose body is not an ingest answer (a proxy or captive portal?)"
                    .into(),
            },
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Verdict::Unauthorized { message },
        StatusCode::PAYLOAD_TOO_LARGE => Verdict::TooLarge,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            let index = error
                .as_ref()
                .and_then(|e| e.field.clone())
                .and_then(|field| ValidationError::new(field, "").event_index());
            match index {
                Some(index) => Verdict::InvalidEvent { index, message },
                None => Verdict::Invalid { message },
            }
        }
        StatusCode::TOO_MANY_REQUESTS => Verdict::Unavailable {
            retry_after,
            message,
        },
        s if s.is_server_error() => Verdict::Unavailable {
            retry_after,
            message,
        },
        _ => Verdict::Unexpected { message },
    }
}

/// `Retry-After` in either of its forms: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Server clock minus local clock, in ms, from the answer's `Date` header.
///
/// `Date` has one-second resolution and is truncated, so the server's true time lies on
/// average half a second after it; adding 500 ms removes that bias.
pub fn clock_offset_ms(response: &Response, local: SystemTime) -> Option<i64> {
    let date = response.headers().get(DATE)?.to_str().ok()?;
    let server = httpdate::parse_http_date(date).ok()?;
    let millis = |t: SystemTime| -> Option<i64> {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        i64::try_from(since.as_millis()).ok()
    };
    Some(millis(server)? + 500 - millis(local)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_date_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(MAX_RETRY_AFTER),
            "absurd delays are capped"
        );
    }
}
