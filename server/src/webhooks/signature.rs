//! How deliveries are signed, so a receiver can tell them from forgeries and replays. The
//! scheme (documented for receivers in `docs/webhooks.md`), like Stripe's:
//!
//! ```text
//! Backlight-Signature: t=1733500000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! ```
//!
//! - `t`: when this attempt was signed, in seconds since the Unix epoch (UTC). Every attempt
//!   of a delivery is signed anew, so `t` is always recent.
//! - `v1`: lower-case hex of HMAC-SHA256, keyed with the webhook's secret exactly as shown at
//!   creation (the UTF-8 bytes of `whsec_…`), over the bytes `t`, `.`, and the raw request body.
//!
//! A receiver recomputes `v1` from the raw body, compares in constant time, and refuses a `t`
//! further than [`TOLERANCE_SECS`] from its clock (a replayed old request). The delivery id (in
//! the body and in `Backlight-Delivery`) is what it de-duplicates by: at-least-once means it
//! may see the same delivery more than once.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The header carrying `t=…,v1=…`.
pub const SIGNATURE_HEADER: &str = "Backlight-Signature";
/// The header carrying the delivery id (also `id` in the body).
pub const DELIVERY_HEADER: &str = "Backlight-Delivery";
/// The header carrying the event type (also `type` in the body).
pub const EVENT_HEADER: &str = "Backlight-Event";
/// How far a receiver should accept `t` from its own clock.
pub const TOLERANCE_SECS: u64 = 300;
/// Prefix of webhook secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 64 hex digits (256 random bits).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

fn mac(secret: &str, timestamp_s: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Backlight-Signature` value for `body` signed at `timestamp_s`.
pub fn sign(secret: &str, timestamp_s: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp_s, body).finalize().into_bytes();
    format!("t={timestamp_s},v1={}", hex::encode(tag))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not `t=<seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature was made {0} s away from now, more than the tolerance")]
    Stale(u64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// What a receiver does: checks `header` against `body` at `now_s` (used by the tests and as
/// the reference for docs/webhooks.md). Several `v1=` entries are allowed (any may match).
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<u64>().ok(),
            Some(("v1", v)) => tags.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now_s.abs_diff(timestamp);
    if skew > tolerance_s {
        return Err(SignatureError::Stale(skew));
    }
    let matches = tags
        .iter()
        .any(|tag| mac(secret, timestamp, body).verify_slice(tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn signs_timestamp_dot_body_with_hmac_sha256() {
        // Independently computed: printf '1733500000.{"id":"x"}' | openssl dgst -sha256 -hmac "$SECRET"
        let header = sign(SECRET, 1_733_500_000, br#"{"id":"x"}"#);
        assert_eq!(
            header,
            "t=1733500000,v1=9dba89dd136148592c40a153497ff0e2465469a0fc0384033e6c08ea3720c656"
        );
    }

    #[test]
    fn verify_accepts_its_own_and_refuses_tampering_replay_and_garbage() {
        let body = br#"{"id":"dlv_1"}"#;
        let header = sign(SECRET, 1_000, body);
        assert_eq!(verify(SECRET, &header, body, 1_100, TOLERANCE_SECS), Ok(()));
        assert_eq!(
            verify(SECRET, &header, br#"{"id":"dlv_2"}"#, 1_100, TOLERANCE_SECS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, body, 1_100, TOLERANCE_SECS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                SECRET,
                &header,
                body,
                1_000 + TOLERANCE_SECS + 1,
                TOLERANCE_SECS
            ),
            Err(SignatureError::Stale(TOLERANCE_SECS + 1))
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz"] {
            assert_eq!(
                verify(SECRET, bad, body, 1, TOLERANCE_SECS),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // A rotated-secret style header with two signatures: either may match.
        let two = format!("{header},v1={}", "00".repeat(32));
        assert_eq!(verify(SECRET, &two, body, 1_000, TOLERANCE_SECS), Ok(()));
    }

    #[test]
    fn secrets_are_prefixed_and_random() {
        let a = new_secret();
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, new_secret());
    }
}
