//! Reading an ingest body: bounded in size, in time and in the memory all bodies share.
//!
//! - **Size:** at most `max` bytes, whatever `Content-Length` said.
//! - **Time:** the body must keep coming: no pause longer than `idle`, and all of it within
//!   `idle + length / min_rate` (the length declared, or `max` when none is). A client that
//!   announces a large body and sends nothing, or sends it a byte at a time, is cut off with 408
//!   instead of holding its connection and its device's turn.
//! - **Memory:** every piece counts against the body budget as it arrives, so a request holds
//!   only what it has actually sent, never what it announced; no tenant holds more than its share.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::budget::{Budget, BudgetError, Held};

/// The bounds of one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes.
    pub max: usize,
    /// Longest pause between two pieces (and the allowance on top of the rate).
    pub idle: Duration,
    /// Slowest average rate, in bytes per second.
    pub min_rate: u64,
}

impl BodyLimits {
    /// The longest a body of `length` bytes may take.
    pub fn allowance(&self, length: usize) -> Duration {
        let min_rate = self.min_rate.max(1) as f64;
        self.idle
            .saturating_add(Duration::from_secs_f64(length as f64 / min_rate))
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("no part of the body arrived for {0:?}")]
    Stalled(Duration),
    #[error("the body did not arrive within {0:?} (slower than {1} bytes/s)")]
    TooSlow(Duration, u64),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads `body` of `tenant` within `limits`, its bytes held from `budget`. The bytes stay
/// counted until the returned [`Held`] is dropped.
pub async fn read<B>(
    body: B,
    declared: Option<usize>,
    limits: &BodyLimits,
    budget: &Budget,
    tenant: &str,
) -> Result<(Bytes, Option<Held>), BodyError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    let allowance = limits.allowance(declared.unwrap_or(limits.max).min(limits.max));
    let deadline = Instant::now() + allowance;
    let too_slow = || BodyError::TooSlow(allowance, limits.min_rate);
    let mut body = body;
    // Never trust the declared length for an allocation: grow with what arrives.
    let mut bytes = BytesMut::new();
    let mut held: Option<Held> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(too_slow());
        }
        let wait = (deadline - now).min(limits.idle);
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(broken(&e)),
            Err(_) if Instant::now() >= deadline => return Err(too_slow()),
            Err(_) => return Err(BodyError::Stalled(limits.idle)),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        if bytes.len() + data.len() > limits.max {
            return Err(BodyError::TooLarge(limits.max));
        }
        let more = budget
            .acquire(
                tenant,
                data.len(),
                deadline.saturating_duration_since(Instant::now()),
            )
            .await?;
        match held.as_mut() {
            Some(held) => held.merge(more),
            None => held = Some(more),
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes.freeze(), held))
}

/// A stalled body can also be cut off by the router's body timeout (`--body-read-timeout`);
/// that reaches here as an error of the body.
fn broken(e: &(dyn std::error::Error + 'static)) -> BodyError {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause.is::<tower_http::timeout::TimeoutError>() {
            return BodyError::Stalled(Duration::ZERO);
        }
        source = cause.source();
    }
    BodyError::Broken(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use futures_util::stream;

    const LIMITS: BodyLimits = BodyLimits {
        max: 1_000,
        idle: Duration::from_millis(100),
        min_rate: 10_000,
    };

    fn budget() -> Budget {
        Budget::new("body budget", 10_000, 0.5)
    }

    /// A body that sends `pieces` of `size` bytes, `gap` apart.
    fn trickle(pieces: usize, size: usize, gap: Duration) -> Body {
        Body::from_stream(stream::unfold(0, move |i| async move {
            if i == pieces {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size])),
                i + 1,
            ))
        }))
    }

    #[tokio::test]
    async fn a_body_is_read_and_counted_until_dropped() {
        let budget = budget();
        let (bytes, held) = read(
            trickle(4, 100, Duration::ZERO),
            Some(400),
            &LIMITS,
            &budget,
            "t",
        )
        .await
        .unwrap();
        assert_eq!(bytes.len(), 400);
        assert_eq!(budget.held_by("t"), 400);
        drop(held);
        assert_eq!(budget.held_by("t"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_is_cut_off() {
        let started = Instant::now();
        let error = read(
            trickle(2, 10, Duration::from_millis(500)),
            Some(20),
            &LIMITS,
            &budget(),
            "t",
        )
        .await
        .unwrap_err();
        assert!(matches!(error, BodyError::Stalled(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_is_cut_off() {
        // 1,000 bytes at 10,000 bytes/s: 100 ms + 100 ms allowed; pieces every 50 ms take 1 s.
        let error = read(
            trickle(20, 50, Duration::from_millis(50)),
            Some(1_000),
            &LIMITS,
            &budget(),
            "t",
        )
        .await
        .unwrap_err();
        assert!(matches!(error, BodyError::TooSlow(..)), "{error:?}");
    }

    #[tokio::test]
    async fn more_than_declared_or_allowed_is_refused() {
        let error = read(
            trickle(11, 100, Duration::ZERO),
            None,
            &LIMITS,
            &budget(),
            "t",
        )
        .await
        .unwrap_err();
        assert!(matches!(error, BodyError::TooLarge(1_000)), "{error:?}");
    }

    #[tokio::test]
    async fn a_tenant_cannot_hold_more_than_its_share_of_body_memory() {
        let budget = budget();
        let held = budget.acquire("t", 4_900, Duration::ZERO).await.unwrap();
        let error = read(
            trickle(2, 100, Duration::ZERO),
            Some(200),
            &LIMITS,
            &budget,
            "t",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, BodyError::Budget(BudgetError::OverShare(_))),
            "{error:?}"
        );
        read(
            trickle(2, 100, Duration::ZERO),
            Some(200),
            &LIMITS,
            &budget,
            "other",
        )
        .await
        .unwrap();
        drop(held);
    }
}
