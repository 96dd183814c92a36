//! A byte budget shared by every tenant, of which no tenant may hold more than its share.
//!
//! Two of these bound the ingest path's memory: the bytes of request bodies being read and
//! waiting to be decoded (`--ingest-body-budget`), and the encoded rows waiting for or inside a
//! ClickHouse INSERT (`--ingest-commit-budget`, see [`super::writer`]). The budget itself is a
//! FIFO semaphore of bytes, so waiters are served in order; the share is checked before
//! waiting, so a tenant over its share is told at once (429) instead of queueing in front of
//! everybody else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::lock_counts as lock;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why bytes could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The tenant already holds its share; others keep theirs. Retry shortly.
    #[error("the tenant holds its share of the {0}; retry shortly")]
    OverShare(&'static str),
    /// The whole budget stayed full for the time the caller was willing to wait.
    #[error("the {0} is full; retry later")]
    Full(&'static str),
    #[error("the server is shutting down")]
    Closed,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Budget {
    what: &'static str,
    permits: Arc<Semaphore>,
    total: usize,
    tenant_max: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// Bytes held from a [`Budget`] by one request of one tenant; dropping it gives them back.
#[derive(Debug)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    tenant: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Budget {
    /// `total` bytes (at least 1, at most `u32::MAX`), of which one tenant may hold
    /// `tenant_share` (a fraction in (0, 1]; at least one byte). `what` names it in errors.
    pub fn new(what: &'static str, total: usize, tenant_share: f64) -> Budget {
        let total = total.clamp(1, u32::MAX as usize);
        let share = if tenant_share.is_finite() {
            tenant_share.clamp(0.0, 1.0)
        } else {
            1.0
        };
        Budget {
            what,
            permits: Arc::new(Semaphore::new(total)),
            total,
            tenant_max: ((total as f64 * share) as usize).max(1),
            held: Arc::default(),
        }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The most one tenant may hold.
    pub fn tenant_max(&self) -> usize {
        self.tenant_max
    }

    /// What `tenant` holds now.
    pub fn held_by(&self, tenant: &str) -> usize {
        lock(&self.held).get(tenant).copied().unwrap_or(0)
    }

    /// Takes `bytes` for `tenant`, waiting at most `wait` for room. More than a tenant's share is
    /// capped at the share, so even the largest request gets in eventually. Zero bytes is one.
    pub async fn acquire(
        &self,
        tenant: &str,
        bytes: usize,
        wait: Duration,
    ) -> Result<Held, BudgetError> {
        let bytes = bytes.clamp(1, self.tenant_max);
        // Count the bytes against the tenant before waiting, so a tenant's concurrent requests
        // cannot all pass the check and then wait in the queue together.
        {
            let mut held = lock(&self.held);
            let mine = held.entry(tenant.to_string()).or_insert(0);
            if *mine + bytes > self.tenant_max {
                if *mine == 0 {
                    held.remove(tenant);
                }
                return Err(BudgetError::OverShare(self.what));
            }
            *mine += bytes;
        }
        let mut holding = Held {
            permit: None,
            bytes,
            tenant: tenant.to_string(),
            held: self.held.clone(),
        };
        // `bytes` ≤ tenant_max ≤ total ≤ u32::MAX.
        let acquire = self.permits.clone().acquire_many_owned(bytes as u32);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => {
                holding.permit = Some(permit);
                Ok(holding)
            }
            // Dropping `holding` takes the bytes off the tenant again.
            Ok(Err(_)) => Err(BudgetError::Closed),
            Err(_) => Err(BudgetError::Full(self.what)),
        }
    }
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back all but `keep` bytes (at least one is kept).
    pub fn shrink_to(&mut self, keep: usize) {
        let keep = keep.max(1);
        if keep >= self.bytes {
            return;
        }
        let surplus = self.bytes - keep;
        if let Some(permit) = self.permit.as_mut() {
            drop(permit.split(surplus));
        }
        self.bytes = keep;
        release(&self.held, &self.tenant, surplus);
    }

    /// Adds `other` (of the same budget and tenant) to this holding.
    pub fn merge(&mut self, mut other: Held) {
        debug_assert_eq!(self.tenant, other.tenant);
        match (self.permit.as_mut(), other.permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.permit = theirs,
            (Some(_), None) => {}
        }
        self.bytes += other.bytes;
        // `other` now holds nothing: its drop must not take its bytes off the tenant.
        other.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        release(&self.held, &self.tenant, self.bytes);
    }
}

fn release(held: &Mutex<HashMap<String, usize>>, tenant: &str, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let mut held = lock(held);
    if let Some(mine) = held.get_mut(tenant) {
        *mine = mine.saturating_sub(bytes);
        if *mine == 0 {
            held.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_tenant_gets_at_most_its_share_and_the_others_the_rest() {
        let budget = Budget::new("test budget", 1_000, 0.6);
        let a1 = budget.acquire("a", 400, NOW).await.unwrap();
        let a2 = budget.acquire("a", 200, NOW).await.unwrap();
        assert_eq!(budget.held_by("a"), 600);
        assert_eq!(
            budget.acquire("a", 1, NOW).await.unwrap_err(),
            BudgetError::OverShare("test budget")
        );
        let b = budget.acquire("b", 400, NOW).await.unwrap();
        assert_eq!(
            budget.acquire("c", 1, NOW).await.unwrap_err(),
            BudgetError::Full("test budget")
        );
        assert_eq!(
            budget.held_by("c"),
            0,
            "a failed wait leaves nothing behind"
        );
        drop((a1, b));
        assert_eq!(budget.held_by("a"), 200);
        drop(a2);
        assert_eq!(budget.held_by("a"), 0);
        // More than a share is capped at the share.
        assert_eq!(budget.acquire("a", 10_000, NOW).await.unwrap().bytes(), 600);
    }

    #[tokio::test]
    async fn shrinking_and_merging_keep_the_counts_right() {
        let budget = Budget::new("test budget", 1_000, 1.0);
        let mut held = budget.acquire("a", 500, NOW).await.unwrap();
        held.shrink_to(100);
        assert_eq!((held.bytes(), budget.held_by("a")), (100, 100));
        let more = budget.acquire("a", 300, NOW).await.unwrap();
        held.merge(more);
        assert_eq!((held.bytes(), budget.held_by("a")), (400, 400));
        // The rest of the budget is free: 600 bytes.
        let rest = budget.acquire("b", 600, NOW).await.unwrap();
        drop(held);
        assert_eq!(budget.held_by("a"), 0);
        drop(rest);
        assert_eq!(
            budget.acquire("c", 1_000, NOW).await.unwrap().bytes(),
            1_000
        );
    }
}
