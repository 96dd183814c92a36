//! Exponential backoff with full jitter.
//!
//! Full jitter (a uniform delay between zero and an exponentially growing ceiling) spreads the
//! retries of thousands of agents that lost the server at the same moment, so they do not all
//! come back at the same second when it returns.

use std::time::Duration;

use rand::Rng;

/// The retry schedule of one uploader.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A schedule whose ceiling starts at `base` and doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The ceiling of the next delay: `base · 2^failures`, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// Counts a failure without drawing a delay (the server said how long to wait).
    pub fn count_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling().as_secs());
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(300));
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::BTreeSet<_> = (0..50).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 10, "delays should vary: {delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..1_000 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(300));
    }
}
