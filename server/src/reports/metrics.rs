//! The formulas of `docs/metrics.md`, in one place. The SQL computes sums and sorted handle
//! times; these turn them into the figures shown.

/// Occupancy = productive / (productive + other): the share of the time a person was at work and
/// active that went into items. Idle and locked time is outside it. `None` when nothing was
/// active.
pub fn occupancy(productive_ms: u64, other_ms: u64) -> Option<f64> {
    let active = productive_ms + other_ms;
    (active > 0).then(|| productive_ms as f64 / active as f64)
}

/// SLA compliance = met / with_due. `None` when no completed item had a due time.
pub fn sla_compliance(met: u64, with_due: u64) -> Option<f64> {
    (with_due > 0).then(|| met as f64 / with_due as f64)
}

/// Mean, median and 90th percentile of a group's handle times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HandleTimes {
    pub mean: Option<f64>,
    /// Middle value; the mean of the two middle values when the count is even.
    pub median: Option<f64>,
    /// Nearest rank: the ⌈0.9·n⌉-th smallest value.
    pub p90: Option<u64>,
}

/// 1-based rank of the 90th percentile among `n` values: ⌈9n/10⌉ (integer arithmetic, so the
/// SQL computes the very same rank).
pub fn p90_rank(n: u64) -> u64 {
    (9 * n).div_ceil(10)
}

impl HandleTimes {
    /// From all handle times of a group (any order).
    pub fn of(values: &[u64]) -> HandleTimes {
        if values.is_empty() {
            return HandleTimes::default();
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2] as f64
        } else {
            (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
        };
        HandleTimes {
            mean: Some(v.iter().map(|&x| x as f64).sum::<f64>() / n as f64),
            median: Some(median),
            p90: Some(v[p90_rank(n as u64) as usize - 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_is_productive_share_of_active_time() {
        assert_eq!(occupancy(45, 15), Some(0.75));
        assert_eq!(occupancy(0, 10), Some(0.0));
        assert_eq!(occupancy(0, 0), None);
    }

    #[test]
    fn sla_compliance_counts_only_items_with_a_due_time() {
        assert_eq!(sla_compliance(2, 3), Some(2.0 / 3.0));
        assert_eq!(sla_compliance(0, 0), None);
    }

    #[test]
    fn handle_time_statistics() {
        let h = HandleTimes::of(&[300, 100, 200]);
        assert_eq!(
            (h.mean, h.median, h.p90),
            (Some(200.0), Some(200.0), Some(300))
        );
        let h = HandleTimes::of(&[40, 10, 30, 20]);
        assert_eq!(
            (h.mean, h.median, h.p90),
            (Some(25.0), Some(25.0), Some(40))
        );
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(HandleTimes::of(&ten).p90, Some(9));
        let eleven: Vec<u64> = (1..=11).collect();
        assert_eq!(HandleTimes::of(&eleven).p90, Some(10));
        assert_eq!(HandleTimes::of(&[7]).p90, Some(7));
        assert_eq!(HandleTimes::of(&[]), HandleTimes::default());
        assert_eq!(
            (p90_rank(1), p90_rank(10), p90_rank(11), p90_rank(30)),
            (1, 9, 10, 27)
        );
    }
}
