//! What every lookup of a tenant shares besides the item: whether names are shown, and who
//! works at which device. Read from the registry, cached per tenant ([`TenantCache`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::clickhouse::ClickHouseError;
use crate::storage::registry::Registry;
use crate::storage::tenant_cache::TenantCache;
use crate::tenancy::{Assignment, InvalidTenantId, TenantId};

/// How long a tenant's settings and device assignments are reused by lookups. A change (say,
/// `show_person_names` turned off) reaches every server's lookups within this plus one reload.
pub const LOOKUP_CONTEXT_TTL: Duration = Duration::from_secs(5);

/// What an item lookup needs to know about its tenant besides the item.
#[derive(Debug, Clone, Default)]
pub struct LookupContext {
    pub show_person_names: bool,
    /// Team and person of every assigned device.
    pub assignments: HashMap<Uuid, Assignment>,
}

/// Per-tenant [`LookupContext`]: two queries per tenant every [`LOOKUP_CONTEXT_TTL`] instead of
/// two per lookup.
pub type LookupContextCache = TenantCache<LookupContext>;

/// A [`LookupContextCache`]; `ttl` zero reads ClickHouse on every call (tests).
pub fn lookup_context_cache(registry: Registry, ttl: Duration) -> LookupContextCache {
    TenantCache::new(
        "tenant settings and assignments",
        ttl,
        Arc::new(move |_client, tenant| {
            let registry = registry.clone();
            Box::pin(async move {
                let tenant: TenantId = tenant
                    .parse()
                    .map_err(|e: InvalidTenantId| ClickHouseError::Interrupted(e.to_string()))?;
                let (settings, assignments) =
                    tokio::try_join!(registry.settings(&tenant), registry.assignments(&tenant))?;
                Ok(LookupContext {
                    show_person_names: settings.show_person_names,
                    assignments: assignments.into_iter().map(|a| (a.device_id, a)).collect(),
                })
            })
        }),
    )
}
