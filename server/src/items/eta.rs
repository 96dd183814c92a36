//! Expected completion time of an open item.
//!
//! The estimate uses the handle times `H` of items completed in the last 30 days
//! ([`HandleTimeStats`], read by [`crate::storage::items`]). For an open item with handle time
//! `h` so far, the expected remaining work is the median of `H_i − h` over the completed items
//! that needed more than `h` (the median *remaining* handle time of items that were once where
//! this one is). The expected completion is `now + remaining`, i.e. the item's elapsed time so
//! far plus that remainder.
//!
//! Tiers, first usable wins: the item's queue (`queue_median`), then every queue of the tenant
//! (`tenant_median`), else `none`. A tier is usable when at least [`MIN_SAMPLES`] completed
//! items needed more than `h`. `sample_size` is that number.
//! A completed item has no estimate (`none`; its `completed_ms` says when).

use std::collections::HashMap;

use serde::Serialize;

/// Fewest informative samples a tier needs before its median is trusted.
pub const MIN_SAMPLES: usize = 3;

/// Handle times (ms) of recently completed items, sorted ascending, by queue and overall.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandleTimeStats {
    by_queue: HashMap<String, Vec<u64>>,
    all: Vec<u64>,
}

impl HandleTimeStats {
    /// From `(queue, handle_time_ms)` pairs of completed items (queue `""`: unregistered).
    pub fn new(samples: impl IntoIterator<Item = (String, u64)>) -> HandleTimeStats {
        let mut stats = HandleTimeStats::default();
        for (queue, handle_ms) in samples {
            stats.all.push(handle_ms);
            if !queue.is_empty() {
                stats.by_queue.entry(queue).or_default().push(handle_ms);
            }
        }
        stats.all.sort_unstable();
        for v in stats.by_queue.values_mut() {
            v.sort_unstable();
        }
        stats
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EtaMethod {
    QueueMedian,
    TenantMedian,
    None,
}

/// An expected completion and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Eta {
    /// Expected completion (ms since the epoch, UTC); `None` without an estimate.
    pub expected_ms: Option<u64>,
    pub method: EtaMethod,
    /// Completed items the median was taken over.
    pub sample_size: usize,
}

impl Eta {
    pub const NONE: Eta = Eta {
        expected_ms: None,
        method: EtaMethod::None,
        sample_size: 0,
    };
}

/// Median remaining time of the sorted `samples` for an item `elapsed` ms in, when at least
/// [`MIN_SAMPLES`] samples exceed `elapsed`. Returns `(remaining, samples used)`.
fn median_remaining(sorted: &[u64], elapsed: u64) -> Option<(u64, usize)> {
    let first_above = sorted.partition_point(|&h| h <= elapsed);
    let above = &sorted[first_above..];
    if above.len() < MIN_SAMPLES {
        return None;
    }
    let mid = above.len() / 2;
    let median = if above.len() % 2 == 1 {
        above[mid]
    } else {
        above[mid - 1] / 2 + above[mid] / 2 + (above[mid - 1] % 2 + above[mid] % 2) / 2
    };
    Some((median - elapsed, above.len()))
}

/// Estimates when an item will be completed.
pub fn estimate(
    stats: &HandleTimeStats,
    queue: Option<&str>,
    handle_time_ms: u64,
    completed: bool,
    now_ms: u64,
) -> Eta {
    if completed {
        return Eta::NONE;
    }
    let queue_samples = queue
        .filter(|q| !q.is_empty())
        .and_then(|q| stats.by_queue.get(q));
    let tiers = [
        (queue_samples, EtaMethod::QueueMedian),
        (Some(&stats.all), EtaMethod::TenantMedian),
    ];
    for (samples, method) in tiers {
        if let Some((remaining, used)) = samples.and_then(|s| median_remaining(s, handle_time_ms)) {
            return Eta {
                expected_ms: Some(now_ms.saturating_add(remaining)),
                method,
                sample_size: used,
            };
        }
    }
    Eta::NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn stats() -> HandleTimeStats {
        let mut samples: Vec<(String, u64)> = [10_000, 20_000, 30_000]
            .into_iter()
            .map(|h| ("motor".to_string(), h))
            .collect();
        samples.extend(
            [100_000, 200_000, 300_000, 400_000]
                .into_iter()
                .map(|h| ("home".to_string(), h)),
        );
        samples.push((String::new(), 500_000));
        HandleTimeStats::new(samples)
    }

    #[test]
    fn queue_median_when_the_queue_has_enough_samples() {
        let eta = estimate(&stats(), Some("motor"), 0, false, NOW);
        assert_eq!(
            eta,
            Eta {
                expected_ms: Some(NOW + 20_000),
                method: EtaMethod::QueueMedian,
                sample_size: 3
            }
        );
    }

    #[test]
    fn remaining_is_conditional_on_work_done_so_far() {
        // 150 s in on a "home" item: samples above are 200, 300, 400 s → median remaining 150 s.
        let eta = estimate(&stats(), Some("home"), 150_000, false, NOW);
        assert_eq!(
            eta,
            Eta {
                expected_ms: Some(NOW + 150_000),
                method: EtaMethod::QueueMedian,
                sample_size: 3
            }
        );
    }

    #[test]
    fn falls_back_to_the_tenant_when_the_queue_cannot_tell() {
        // 15 s into a motor item leaves 2 motor samples above it: not enough. Tenant-wide, 7 are
        // above (20, 30, 100, 200, 300, 400, 500 s): median 200 s → 185 s remaining.
        let eta = estimate(&stats(), Some("motor"), 15_000, false, NOW);
        assert_eq!(
            eta,
            Eta {
                expected_ms: Some(NOW + 185_000),
                method: EtaMethod::TenantMedian,
                sample_size: 7
            }
        );
    }

    #[test]
    fn unknown_or_unregistered_queue_uses_the_tenant() {
        for q in [None, Some(""), Some("travel")] {
            let eta = estimate(&stats(), q, 0, false, NOW);
            assert_eq!(
                (eta.method, eta.sample_size),
                (EtaMethod::TenantMedian, 8),
                "{q:?}"
            );
            assert_eq!(eta.expected_ms, Some(NOW + 150_000));
        }
    }

    #[test]
    fn none_without_history_or_when_beyond_every_sample_or_completed() {
        assert_eq!(
            estimate(&HandleTimeStats::default(), Some("motor"), 0, false, NOW),
            Eta::NONE
        );
        assert_eq!(
            estimate(&stats(), Some("motor"), 10_000_000, false, NOW),
            Eta::NONE
        );
        assert_eq!(estimate(&stats(), Some("motor"), 0, true, NOW), Eta::NONE);
    }

    #[test]
    fn even_sample_count_takes_the_mean_of_the_middle_two() {
        let s = HandleTimeStats::new([1, 2, 4, 5].map(|h| ("q".to_string(), h * 1_000)));
        let eta = estimate(&s, Some("q"), 0, false, NOW);
        assert_eq!(eta.expected_ms, Some(NOW + 3_000));
    }

    #[test]
    fn serializes_method_names() {
        assert_eq!(
            serde_json::to_value(EtaMethod::QueueMedian).unwrap(),
            "queue_median"
        );
        assert_eq!(
            serde_json::to_value(EtaMethod::TenantMedian).unwrap(),
            "tenant_median"
        );
        assert_eq!(serde_json::to_value(EtaMethod::None).unwrap(), "none");
    }
}
