//! Percentiles of measured samples.

/// The `q` quantile of `sorted` by nearest rank: the smallest value with at least `q` of the
/// samples at or below it. `None` without samples.
pub fn nearest_rank<T: Copy + Into<f64>>(sorted: &[T], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].into())
}

/// The `q` quantile of `sorted` as the sample at the rounded position `q · (n − 1)` (what the
/// ingest and stream benchmarks have always reported). `None` without samples.
pub fn rounded_position<T: Copy + Into<f64>>(sorted: &[T], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)].into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(500.0));
        assert_eq!(nearest_rank(&v, 0.99), Some(990.0));
        assert_eq!(nearest_rank(&v, 0.999), Some(999.0));
        assert_eq!(nearest_rank(&v, 1.0), Some(1000.0));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }

    #[test]
    fn rounded_position_percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(rounded_position(&v, 0.5), Some(3.0));
        assert_eq!(rounded_position(&v, 0.0), Some(1.0));
        assert_eq!(rounded_position(&v, 1.0), Some(4.0));
        assert_eq!(rounded_position::<f64>(&[], 0.5), None);
    }
}
