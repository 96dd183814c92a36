//! Polling with deadlines instead of sleeps: a test waits exactly as long as the system needs,
//! and a system that never gets there fails the test with what was last seen.

use std::time::Duration;

/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(50);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Polls `check` until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_for(timeout, what, async || {
        if check().await {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await
}

/// Polls `check` until it returns `Ok(value)` and returns the value; panics after `timeout`
/// with `what` and the last `Err` description (the state last seen).
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}
