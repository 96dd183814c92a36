//! Each device's fair share of ingest: requests at once, requests a second, and decoded bytes a
//! second. A device over its share is told when to come back (429 + `Retry-After`); nobody
//! else notices.
//!
//! An agent sends one batch at a time (up to 1,000 events), and waits for each answer, which
//! takes at least one group commit; even catching up after being offline it stays far inside
//! the defaults. The rates are
//! GCRA token buckets from `governor`, keyed by device; the in-flight count is a map of the
//! devices with a request open (an entry lives only while one does).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use crate::lock_counts as lock;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use backlight_shared::batch::limits;

/// How a device's share is measured. Defaults: see [`DeviceLimits::default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceLimits {
    /// Ingest requests of one device being handled at once.
    pub concurrency: usize,
    /// Sustained ingest requests per second of one device.
    pub requests_per_second: u32,
    /// Requests a device may send at once after being quiet (the bucket's depth).
    pub burst: u32,
    /// Sustained bytes per second of decompressed JSON of one device. Its bucket holds two
    /// of the largest bodies, so any single valid batch gets through.
    pub decoded_bytes_per_second: u64,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits {
            concurrency: 2,
            requests_per_second: 20,
            burst: 40,
            decoded_bytes_per_second: 4 * 1024 * 1024,
        }
    }
}

/// A device over its share, and when it may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverShare {
    /// What the device has too much of, for the error message.
    pub what: &'static str,
    pub retry_after: Duration,
}

impl OverShare {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u32 {
        u32::try_from(self.retry_after.as_secs_f64().ceil() as u64)
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// Cells of the decoded-bytes bucket are KiB (governor counts in `u32`).
const BYTES_PER_CELL: u64 = 1024;

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct DeviceShares {
    limits: DeviceLimits,
    open: Arc<Mutex<HashMap<Uuid, OpenRequests>>>,
    requests: Arc<DefaultKeyedRateLimiter<Uuid>>,
    decoded: Arc<DefaultKeyedRateLimiter<Uuid>>,
}

struct OpenRequests {
    count: usize,
    /// Taken from reading the stored progress of the device until its rows are committed, so
    /// two requests of one device cannot both decide that the same `seq` is new.
    order: Arc<tokio::sync::Mutex<()>>,
}

/// One request's turn of its device: counts against the device's concurrency until dropped.
pub struct DeviceTurn {
    device: Uuid,
    order: Arc<tokio::sync::Mutex<()>>,
    open: Arc<Mutex<HashMap<Uuid, OpenRequests>>>,
}

impl DeviceShares {
    /// Limits with values of zero are raised to one.
    pub fn new(limits: DeviceLimits) -> DeviceShares {
        let one = NonZeroU32::MIN;
        let rate = NonZeroU32::new(limits.requests_per_second).unwrap_or(one);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(one);
        let cells_per_second =
            (limits.decoded_bytes_per_second / BYTES_PER_CELL).clamp(1, u64::from(u32::MAX)) as u32;
        let two_bodies = (2 * limits::MAX_DECOMPRESSED_BODY_BYTES as u64 / BYTES_PER_CELL) as u32;
        let decoded = Quota::per_second(NonZeroU32::new(cells_per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(two_bodies.max(cells_per_second)).unwrap_or(one));
        let shares = DeviceShares {
            limits: DeviceLimits {
                concurrency: limits.concurrency.max(1),
                ..limits
            },
            open: Arc::default(),
            requests: Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            decoded: Arc::new(RateLimiter::keyed(decoded)),
        };
        shares.forget_idle_devices_periodically();
        shares
    }

    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }

    /// Starts a request of `device`: refused when the device already has `concurrency`
    /// requests open or sends faster than its rate. A refusal costs the device nothing.
    pub fn enter(&self, device: Uuid) -> Result<DeviceTurn, OverShare> {
        let order = {
            let mut open = lock(&self.open);
            let entry = open.entry(device).or_insert_with(|| OpenRequests {
                count: 0,
                order: Arc::default(),
            });
            if entry.count >= self.limits.concurrency {
                return Err(OverShare {
                    what: "ingest requests in progress",
                    retry_after: Duration::from_secs(1),
                });
            }
            entry.count += 1;
            entry.order.clone()
        };
        let turn = DeviceTurn {
            device,
            order,
            open: self.open.clone(),
        };
        self.requests
            .check_key(&device)
            .map_err(|not_until| OverShare {
                what: "ingest requests per second",
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })?;
        Ok(turn)
    }

    /// Counts `bytes` of decompressed JSON against `device`, before it is parsed.
    pub fn charge_decoded(&self, device: Uuid, bytes: usize) -> Result<(), OverShare> {
        let cells = (bytes as u64)
            .div_ceil(BYTES_PER_CELL)
            .clamp(1, u64::from(u32::MAX)) as u32;
        let over = |retry_after| OverShare {
            what: "decoded bytes per second",
            retry_after,
        };
        match self
            .decoded
            .check_key_n(&device, NonZeroU32::new(cells).unwrap_or(NonZeroU32::MIN))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(over(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // More than the bucket holds at all: only a body beyond the protocol's limits.
            Err(_) => Err(over(Duration::from_secs(60))),
        }
    }

    /// The rate buckets keep an entry per device seen; entries of devices quiet for longer than
    /// a bucket takes to refill are dropped once a minute, so memory follows active devices.
    fn forget_idle_devices_periodically(&self) {
        let requests = Arc::downgrade(&self.requests);
        let decoded = Arc::downgrade(&self.decoded);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                let (Some(requests), Some(decoded)) = (requests.upgrade(), decoded.upgrade())
                else {
                    return;
                };
                for limiter in [requests, decoded] {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        });
    }
}

impl DeviceTurn {
    /// Waits until no other request of this device is between reading its stored progress and
    /// committing its rows, and holds that place until the guard is dropped.
    pub async fn in_order(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.order.clone().lock_owned().await
    }
}

impl Drop for DeviceTurn {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(entry) = open.get_mut(&self.device) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                open.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(limits: DeviceLimits) -> DeviceShares {
        DeviceShares::new(limits)
    }

    #[test]
    fn a_device_gets_its_concurrency_and_no_more() {
        let shares = shares(DeviceLimits {
            burst: 100,
            ..DeviceLimits::default()
        });
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = shares.enter(a).unwrap();
        let second = shares.enter(a).unwrap();
        let refused = shares.enter(a).err().unwrap();
        assert_eq!(refused.retry_after_secs(), 1);
        let _other = shares.enter(b).expect("another device is not affected");
        drop(first);
        let _third = shares.enter(a).expect("a finished request frees its place");
        drop(second);
        assert_eq!(lock(&shares.open).get(&a).map(|e| e.count), Some(1));
    }

    #[test]
    fn a_device_over_its_rate_is_told_when_to_come_back() {
        let shares = shares(DeviceLimits {
            requests_per_second: 1,
            burst: 3,
            ..DeviceLimits::default()
        });
        let a = Uuid::new_v4();
        for _ in 0..3 {
            drop(shares.enter(a).unwrap());
        }
        let refused = shares.enter(a).err().unwrap();
        assert_eq!(refused.what, "ingest requests per second");
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(
            lock(&shares.open).is_empty(),
            "a refused request leaves nothing open"
        );
        shares
            .enter(Uuid::new_v4())
            .expect("others have their own bucket");
    }

    #[test]
    fn decoded_bytes_are_metered_per_device() {
        let shares = shares(DeviceLimits {
            decoded_bytes_per_second: 1024 * 1024,
            ..DeviceLimits::default()
        });
        let a = Uuid::new_v4();
        let largest = limits::MAX_DECOMPRESSED_BODY_BYTES;
        shares.charge_decoded(a, largest).unwrap();
        shares.charge_decoded(a, largest).unwrap();
        let refused = shares.charge_decoded(a, largest).unwrap_err();
        // 16 MiB at 1 MiB/s.
        assert!(refused.retry_after_secs() >= 15, "{refused:?}");
        shares.charge_decoded(Uuid::new_v4(), largest).unwrap();
    }

    #[tokio::test]
    async fn requests_of_one_device_take_turns() {
        let shares = shares(DeviceLimits::default());
        let a = Uuid::new_v4();
        let (first, second) = (shares.enter(a).unwrap(), shares.enter(a).unwrap());
        let held = first.in_order().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), second.in_order())
                .await
                .is_err()
        );
        drop(held);
        let _ = second.in_order().await;
    }
}
