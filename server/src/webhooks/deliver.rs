//! One delivery attempt, and what follows from its outcome (the retry schedule).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, USER_AGENT};

use super::records::{Delivery, DeliveryState};
use super::signature::{sign, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use super::target::{GuardedResolver, TargetPolicy};

/// Longest one attempt may take, connecting included. A receiver should answer at once and
/// process later.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest delivery body (a status document without history is about 1 KB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Attempts before a delivery is given up (`failed`).
pub const MAX_ATTEMPTS: u32 = 20;
/// A delivery is given up once it is this old, whatever its attempts.
pub const RETRY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest wait between two attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// Longest error text kept in the log per attempt.
const MAX_ERROR_LEN: usize = 500;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Anything else: another status (redirects included), a timeout, a refused connection, a
    /// target the policy forbids. `status` is 0 when no answer came.
    Failed { status: u16, error: String },
}

/// Sends deliveries: one HTTP client for all, with timeouts, no redirects, no proxy, and DNS
/// that refuses internal addresses ([`GuardedResolver`]).
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    policy: TargetPolicy,
}

impl Deliverer {
    pub fn new(policy: TargetPolicy) -> Result<Deliverer, reqwest::Error> {
        crate::serve::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver::new(policy.clone()))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Deliverer { client, policy })
    }

    /// Posts `body` to `url`, signed with `secret` at `now_s` (seconds since the epoch).
    pub async fn attempt(
        &self,
        url: &str,
        secret: &str,
        delivery_id: &str,
        event_type: &str,
        body: &[u8],
        now_s: u64,
    ) -> Outcome {
        // The policy may have changed since the webhook was registered (or differ on this
        // server): check again before anything leaves.
        let url = match self.policy.check(url) {
            Ok(url) => url,
            Err(e) => {
                return Outcome::Failed {
                    status: 0,
                    error: e.to_string(),
                }
            }
        };
        let request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("Backlight-Webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, sign(secret, now_s, body))
            .header(DELIVERY_HEADER, delivery_id)
            .header(EVENT_HEADER, event_type)
            .body(body.to_vec());
        match request.send().await {
            // The answer's body is not read: nothing in it matters, and it is not ours to hold.
            Ok(response) if response.status().is_success() => Outcome::Delivered {
                status: response.status().as_u16(),
            },
            Ok(response) => {
                let status = response.status();
                let error = if status.is_redirection() {
                    format!("HTTP {status}: redirects are not followed")
                } else {
                    format!("HTTP {status}")
                };
                Outcome::Failed {
                    status: status.as_u16(),
                    error,
                }
            }
            Err(e) => Outcome::Failed {
                status: 0,
                error: describe(&e),
            },
        }
    }
}

/// The error and its causes on one line, bounded (reqwest's own message rarely says why).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// How long to wait after `attempts` failed attempts: `base`, doubling per attempt, at most
/// [`MAX_RETRY_DELAY`], with ±10 % jitter so a receiver that comes back is not hit by every
/// delivery in the same second.
pub fn retry_delay(attempts: u32, base: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY);
    let jitter = rand::random::<f64>() * 0.2 - 0.1;
    delay.mul_f64(1.0 + jitter)
}

/// The row recording `outcome` of the attempt made at `now_ms` on `before` (the newest row of
/// the delivery): delivered, pending with the next attempt scheduled, or failed for good.
pub fn after_attempt(
    before: &Delivery,
    outcome: &Outcome,
    now_ms: u64,
    base: Duration,
) -> Delivery {
    let attempts = before.attempts.saturating_add(1);
    let (state, status, error, next) = match outcome {
        Outcome::Delivered { status } => (DeliveryState::Delivered, *status, String::new(), 0),
        Outcome::Failed { status, error } => {
            let next = now_ms.saturating_add(retry_delay(attempts, base).as_millis() as u64);
            let expired = next
                > before
                    .created_ms
                    .saturating_add(RETRY_WINDOW.as_millis() as u64);
            if attempts >= MAX_ATTEMPTS || expired {
                (DeliveryState::Failed, *status, error.clone(), 0)
            } else {
                (DeliveryState::Pending, *status, error.clone(), next)
            }
        }
    };
    Delivery {
        state,
        attempts,
        last_attempt_ms: now_ms,
        last_status: status,
        last_error: error,
        next_attempt_ms: next,
        ..before.clone()
    }
}

/// The row that gives `before` up without another attempt (its webhook is gone).
pub fn given_up(before: &Delivery, reason: &str, now_ms: u64) -> Delivery {
    Delivery {
        state: DeliveryState::Failed,
        last_error: reason.to_string(),
        next_attempt_ms: 0,
        last_attempt_ms: now_ms,
        ..before.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(at: u64) -> Delivery {
        Delivery {
            tenant_id: "t".into(),
            webhook_id: "wh".into(),
            delivery_id: "dlv_1".into(),
            event_type: crate::webhooks::events::EventType::StatusChanged,
            item_id: "I".into(),
            created_ms: at,
            payload: "{}".into(),
            state: DeliveryState::Pending,
            attempts: 0,
            last_attempt_ms: 0,
            last_status: 0,
            last_error: String::new(),
            next_attempt_ms: at,
        }
    }

    #[test]
    fn delays_double_from_the_base_up_to_an_hour() {
        let base = Duration::from_secs(10);
        for (attempts, expected) in [
            (1, 10.0),
            (2, 20.0),
            (3, 40.0),
            (9, 2560.0),
            (10, 3600.0),
            (40, 3600.0),
        ] {
            let d = retry_delay(attempts, base).as_secs_f64();
            assert!(
                (expected * 0.9..=expected * 1.1).contains(&d),
                "attempt {attempts}: {d}"
            );
        }
    }

    #[test]
    fn outcomes_make_the_next_version() {
        let base = Duration::from_secs(10);
        let row = created(1_000);
        let ok = after_attempt(&row, &Outcome::Delivered { status: 204 }, 2_000, base);
        assert_eq!(
            (ok.state, ok.attempts, ok.last_status),
            (DeliveryState::Delivered, 1, 204)
        );
        let failed = Outcome::Failed {
            status: 503,
            error: "HTTP 503".into(),
        };
        let retry = after_attempt(&row, &failed, 2_000, base);
        assert_eq!((retry.state, retry.attempts), (DeliveryState::Pending, 1));
        assert!(
            (11_000..=13_000).contains(&retry.next_attempt_ms),
            "{}",
            retry.next_attempt_ms
        );
        // The last allowed attempt, or too old: given up.
        let last = Delivery {
            attempts: MAX_ATTEMPTS - 1,
            ..row.clone()
        };
        assert_eq!(
            after_attempt(&last, &failed, 2_000, base).state,
            DeliveryState::Failed
        );
        let old = after_attempt(&row, &failed, 1_000 + RETRY_WINDOW.as_millis() as u64, base);
        assert_eq!(old.state, DeliveryState::Failed);
    }

    #[tokio::test]
    async fn forbidden_targets_fail_without_a_request() {
        let deliverer = Deliverer::new(TargetPolicy::strict()).unwrap();
        for (url, why) in [
            ("http://127.0.0.1:9/x", "https"),
            ("https://localhost:9/x", "not public"),
        ] {
            let outcome = deliverer
                .attempt(url, "whsec_x", "dlv_1", "item.status_changed", b"{}", 1)
                .await;
            assert!(
                matches!(outcome, Outcome::Failed { status: 0, ref error } if error.contains(why)),
                "{url}: {outcome:?}"
            );
        }
    }
}
