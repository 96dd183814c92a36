//! Shares of one server for callers with a credential of their own (API keys) and for
//! enrollment, which anyone can attempt: rate limits (`governor`, GCRA) and bounds on work in
//! flight. Over its share a caller gets `429 Too Many Requests` with `Retry-After`; other
//! callers are not affected.
//!
//! - **API keys** ([`QueryShare`]): each key may send [`AccessLimits::api_key_rate`] requests a
//!   second (bursts up to twice that), and may have at most
//!   [`AccessLimits::api_key_max_in_flight`] units of query work running at once on this
//!   server — a lookup or timeline costs [`Work::Lookup`] (1), a search [`Work::Search`], a
//!   report [`Work::Report`]. So one key can take at most a slice of the shared lookup queue
//!   (4,096) and of ClickHouse's query slots (100), whatever it sends.
//! - **Enrollment** ([`EnrollLimiter`]): all attempts together [`AccessLimits::enroll_rate`] a
//!   second (each unknown key still costs a ClickHouse read), and each known enrollment key
//!   [`AccessLimits::enroll_key_rate`] a second once its secret is verified (so guessing at a
//!   key's id cannot use up its share).
//!
//! The limits are per server: with N servers behind a load balancer a key gets up to N times
//! them. Per-address limits belong in the load balancer, which sees the clients' addresses.
//! Memory is bounded: at most [`MAX_TRACKED_KEYS`] keys are tracked; beyond it, keys idle long
//! enough to be back at a full burst are forgotten first.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// Most API keys or enrollment keys tracked by one limiter.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// The limits, as configured (`serve --api-key-rate …`; see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessLimits {
    /// Requests per second one API key may send to one server.
    pub api_key_rate: u32,
    /// Units of query work one API key may have in flight on one server.
    pub api_key_max_in_flight: u32,
    /// Enrollment attempts per second one server accepts, all keys together.
    pub enroll_rate: u32,
    /// Enrollments per second one enrollment key may make on one server.
    pub enroll_key_rate: u32,
}

impl AccessLimits {
    /// The defaults, sized for one contact center's CRM on one key (1,000 lookups a second),
    /// and a rollout that switches on thousands of desktops at once (agents retry on 429).
    pub const DEFAULT: AccessLimits = AccessLimits {
        api_key_rate: 1_000,
        api_key_max_in_flight: 128,
        enroll_rate: 50,
        enroll_key_rate: 10,
    };
}

impl Default for AccessLimits {
    fn default() -> Self {
        AccessLimits::DEFAULT
    }
}

/// What a query costs against its key's share of work in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One item lookup, timeline or stream start: one slot of a batched read.
    Lookup,
    /// A search: up to 1,000 registrations and their events.
    Search,
    /// A report: a rollup refresh and three aggregations.
    Report,
    /// An administrative write (registration, SLA classes, policy).
    Write,
}

impl Work {
    fn units(self) -> u32 {
        match self {
            Work::Lookup => 1,
            Work::Search | Work::Write => 8,
            Work::Report => 32,
        }
    }
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Quota::per_second(rate).allow_burst(burst)
}

/// Whole seconds to wait, at least 1 (`Retry-After` has a resolution of seconds).
fn retry_after(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// A keyed rate limit whose memory stays bounded.
struct KeyedRate {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl KeyedRate {
    fn new(per_second: u32) -> KeyedRate {
        KeyedRate {
            limiter: RateLimiter::keyed(quota(per_second)),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its rate.
    fn check(&self, key: &str) -> Result<(), u32> {
        if self.limiter.len() >= MAX_TRACKED_KEYS {
            // Forgets keys whose state is back to a full burst: nothing is lost by that.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&key.to_string())
            .map_err(|not_until| {
                retry_after(not_until.wait_time_from(DefaultClock::default().now()))
            })
    }
}

/// Rate limits of `POST /v1/enroll`.
pub struct EnrollLimiter {
    all: DefaultDirectRateLimiter,
    per_key: KeyedRate,
}

impl EnrollLimiter {
    pub fn new(limits: &AccessLimits) -> EnrollLimiter {
        EnrollLimiter {
            all: RateLimiter::direct(quota(limits.enroll_rate)),
            per_key: KeyedRate::new(limits.enroll_key_rate),
        }
    }

    /// Before anything is read: the server's share for all attempts together.
    pub fn attempt(&self) -> Result<(), ApiError> {
        self.all.check().map_err(|not_until| {
            let wait = retry_after(not_until.wait_time_from(DefaultClock::default().now()));
            ApiError::rate_limited("too many enrollment attempts on this server", wait)
        })
    }

    /// After the key's secret was verified: that key's share.
    pub fn key(&self, key_id: &str) -> Result<(), ApiError> {
        self.per_key.check(key_id).map_err(|wait| {
            ApiError::rate_limited(
                "too many enrollments with this enrollment key; retry later",
                wait,
            )
            .with_field("enrollment_key")
        })
    }
}

/// Each API key's share of this server's query capacity: a rate and a bound on work in flight.
pub struct QueryShare {
    rate: KeyedRate,
    max_in_flight: u32,
    in_flight: Mutex<HashMap<String, u32>>,
}

/// A query's claim on its key's share; dropping it gives the units back.
pub struct QueryTurn {
    share: Arc<QueryShare>,
    key_id: String,
    units: u32,
}

impl Drop for QueryTurn {
    fn drop(&mut self) {
        let mut in_flight = self.share.lock();
        if let Some(n) = in_flight.get_mut(&self.key_id) {
            *n = n.saturating_sub(self.units);
            if *n == 0 {
                in_flight.remove(&self.key_id);
            }
        }
    }
}

impl QueryShare {
    pub fn new(limits: &AccessLimits) -> Arc<QueryShare> {
        Arc::new(QueryShare {
            rate: KeyedRate::new(limits.api_key_rate),
            max_in_flight: limits.api_key_max_in_flight.max(Work::Report.units()),
            in_flight: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // Every critical section leaves the map consistent; keep serving after a panic.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `work` for `key_id`; hold the turn while the query runs. 429 with `Retry-After`
    /// when the key is over its rate or has too much work in flight.
    pub fn enter(self: &Arc<Self>, key_id: &str, work: Work) -> Result<QueryTurn, ApiError> {
        self.rate.check(key_id).map_err(|wait| {
            ApiError::rate_limited("this API key sends more requests than its share", wait)
        })?;
        let units = work.units();
        let mut in_flight = self.lock();
        // Entries exist only while work is in flight, so the map is bounded by the requests
        // open at once.
        let used = in_flight.entry(key_id.to_string()).or_default();
        if *used + units > self.max_in_flight {
            let message = format!(
                "this API key has {} units of queries running on this server, its share is {} \
                 (a lookup costs 1, a search 8, a report 32); retry when some have finished",
                *used, self.max_in_flight
            );
            if *used == 0 {
                in_flight.remove(key_id);
            }
            return Err(ApiError::rate_limited(message, 1));
        }
        *used += units;
        drop(in_flight);
        Ok(QueryTurn {
            share: Arc::clone(self),
            key_id: key_id.to_string(),
            units,
        })
    }

    /// Units in flight for `key_id` (tests).
    pub fn in_flight(&self, key_id: &str) -> u32 {
        self.lock().get(key_id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn limits() -> AccessLimits {
        AccessLimits {
            api_key_rate: 1_000,
            api_key_max_in_flight: 64,
            enroll_rate: 2,
            enroll_key_rate: 1,
        }
    }

    #[test]
    fn one_key_cannot_hold_more_than_its_share_and_gets_it_back() {
        let share = QueryShare::new(&limits());
        let a: Vec<QueryTurn> = (0..2)
            .map(|_| share.enter("a", Work::Report).unwrap())
            .collect();
        let refused = share.enter("a", Work::Lookup).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        // Another key is not affected.
        let _b = share.enter("b", Work::Report).unwrap();
        drop(a);
        assert_eq!(share.in_flight("a"), 0);
        let _again = share.enter("a", Work::Search).unwrap();
        assert_eq!(share.in_flight("a"), 8);
    }

    #[test]
    fn a_key_over_its_rate_waits_and_others_do_not() {
        let share = QueryShare::new(&AccessLimits {
            api_key_rate: 5,
            ..limits()
        });
        let mut refused = None;
        for _ in 0..20 {
            match share.enter("a", Work::Lookup) {
                Ok(turn) => drop(turn),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("20 requests at once passed a rate of 5/s");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        assert!(share.enter("b", Work::Lookup).is_ok());
    }

    #[test]
    fn enrollment_is_limited_overall_and_per_key() {
        let limiter = EnrollLimiter::new(&limits());
        let passed = (0..10).filter(|_| limiter.attempt().is_ok()).count();
        assert_eq!(passed, 4, "burst of twice the rate");
        let per_key = (0..10).filter(|_| limiter.key("k").is_ok()).count();
        assert_eq!(per_key, 2);
        assert!(limiter.key("other").is_ok());
    }
}
