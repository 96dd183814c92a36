//! Item status and registration: from a checked request to the document a role may see.
//!
//! - [`documents`]: what the items API answers with, one type per audience.
//! - [`context`]: what all lookups of a tenant share (settings, assignments), cached.
//! - [`visibility`]: who may see what (names, spans), building a status document, and the
//!   [`ItemSnapshot`] that documents for any reader at any instant are built from.
//! - this module: [`Items`], the reads (lookup, timeline, search) and writes (registration,
//!   SLA classes) over the storage handles it is given.
//!
//! Writes come in two steps, so the handler can record the call in the audit log before it
//! takes effect: `prepare_…` checks the request and builds the registrations (domain values;
//! storage makes the rows), `register` / `save_…` writes them.

pub mod context;
pub mod documents;
pub mod visibility;

use std::collections::HashMap;
use std::sync::Arc;

use clickhouse::Client;

use super::Clock;
use crate::clickhouse::ClickHouseError;
use crate::items::register::{self, FieldError, PutSlaClasses, RegisterItems, Sla, SlaClass};
use crate::items::{
    self as domain, HandleTimeStats, ItemRegistration, ItemState, SlaState, Status,
};
use crate::live::LiveHub;
use crate::storage::changes::ChangeMark;
use crate::storage::item_reader::ItemReader;
use crate::storage::items::{self as store, HandleTimeCache, ItemRead};
use crate::tenancy::{Role, TenantId};
pub use context::{LookupContext, LookupContextCache};
pub use documents::{
    CcStatusDoc, CcTimelineDoc, CcTimelineEntry, ItemDoc, SearchDoc, StatusDoc, Timeline,
    TimelineDoc, TimelineEntry,
};
pub use visibility::ItemSnapshot;
use visibility::{Visibility, Who};

/// Most results of one search, and the default.
pub const MAX_SEARCH_LIMIT: u32 = 200;
pub const DEFAULT_SEARCH_LIMIT: u32 = 50;
/// Registered items examined when a search filters by derived status or SLA state.
pub const MAX_SEARCH_CANDIDATES: u64 = 1_000;
/// Most actions in the status document's `history` (the newest; the timeline has all).
pub const MAX_HISTORY: usize = 100;

/// Why an items call failed.
#[derive(Debug, thiserror::Error)]
pub enum ItemsError {
    /// A field of the request breaks a rule (shown to the caller with the field's name).
    #[error("{}", .0.message)]
    Invalid(FieldError),
    #[error(transparent)]
    Storage(#[from] ClickHouseError),
}

/// What the item service works with: storage handles, the open status streams to tell of a
/// registration, and the clock. Borrowed, so building one per request costs nothing.
#[derive(Clone, Copy)]
pub struct Items<'a> {
    pub client: &'a Client,
    /// Reads items for lookups, batching concurrent ones.
    pub reader: &'a ItemReader,
    /// Per-tenant settings and device assignments.
    pub lookup_context: &'a LookupContextCache,
    /// Per-tenant handle-time statistics for the ETA.
    pub handle_times: &'a HandleTimeCache,
    pub live: &'a LiveHub,
    pub clock: Clock,
}

/// One item as read, with what its tenant's documents are built with.
pub struct Loaded {
    pub snapshot: ItemSnapshot,
    pub context: Arc<LookupContext>,
    pub stats: Arc<HandleTimeStats>,
}

/// A search, its filters checked (empty text: any).
#[derive(Clone, Debug, Default)]
pub struct SearchFilter {
    pub customer_ref: String,
    pub queue: String,
    pub status: Option<Status>,
    pub sla_state: Option<SlaState>,
    pub limit: u32,
}

/// Registrations checked and ready to write (see [`Items::register`]).
#[derive(Debug)]
pub struct Registration {
    tenant: TenantId,
    items: Vec<ItemRegistration>,
}

impl Registration {
    pub fn items(&self) -> &[ItemRegistration] {
        &self.items
    }
}

/// SLA classes checked and ready to write (see [`Items::save_sla_classes`]).
#[derive(Debug)]
pub struct SlaClasses {
    tenant: TenantId,
    classes: Vec<SlaClass>,
    /// The version the classes are written as.
    updated_ms: u64,
}

impl SlaClasses {
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

impl Items<'_> {
    /// The tenant's settings, assignments and ETA statistics (from the per-tenant caches).
    pub async fn context(
        self,
        tenant: &TenantId,
    ) -> Result<(Arc<LookupContext>, Arc<HandleTimeStats>), ClickHouseError> {
        let tenant = tenant.as_str();
        tokio::try_join!(
            self.lookup_context.get(self.client, tenant),
            self.handle_times.get(self.client, tenant),
        )
    }

    /// Reads one item of `tenant`; `None` when the tenant has no such item. The item's events
    /// and registration are read in a batch with other lookups in flight; what the tenant has
    /// in common for all its lookups comes from per-tenant caches.
    pub async fn load(
        self,
        tenant: &TenantId,
        item_id: &str,
    ) -> Result<Option<Loaded>, ClickHouseError> {
        let (read, (context, stats)) = tokio::try_join!(
            self.reader.read(tenant.as_str(), item_id),
            self.context(tenant),
        )?;
        Ok(ItemSnapshot::from_read(read).map(|snapshot| Loaded {
            snapshot,
            context,
            stats,
        }))
    }

    /// Several items of `tenant` as stored, each read batched with the lookups in flight (in
    /// the order of `item_ids`; an item that does not exist reads empty). For callers that
    /// compare a read against what it must already hold (the webhook engine's change marks)
    /// before building a [`ItemSnapshot`] from it.
    pub async fn read_each(
        self,
        tenant: &TenantId,
        item_ids: &[String],
    ) -> Vec<Result<ItemRead, ClickHouseError>> {
        let reads = item_ids
            .iter()
            .map(|id| self.reader.read(tenant.as_str(), id));
        futures_util::future::join_all(reads).await
    }

    /// The status document of one item as `role` sees it now; `None`: no such item.
    pub async fn lookup(
        self,
        tenant: &TenantId,
        role: Role,
        item_id: &str,
    ) -> Result<Option<ItemDoc>, ClickHouseError> {
        let now = (self.clock)();
        Ok(self.load(tenant, item_id).await?.map(|l| {
            l.snapshot
                .document(item_id, role, &l.context, &l.stats, true, now)
        }))
    }

    /// Every event of one item as `role` sees it; `None`: no such item.
    pub async fn timeline(
        self,
        tenant: &TenantId,
        role: Role,
        item_id: &str,
    ) -> Result<Option<Timeline>, ClickHouseError> {
        Ok(self
            .load(tenant, item_id)
            .await?
            .map(|l| l.snapshot.timeline(item_id, role, &l.context)))
    }

    /// Registered items matching `filter`, as status documents without history.
    pub async fn search(
        self,
        tenant: &TenantId,
        role: Role,
        filter: &SearchFilter,
    ) -> Result<SearchDoc, ClickHouseError> {
        let (client, t) = (self.client, tenant.as_str());
        let candidates = if filter.status.is_some() || filter.sla_state.is_some() {
            MAX_SEARCH_CANDIDATES
        } else {
            u64::from(filter.limit)
        };
        let (registrations, (context, stats)) = tokio::try_join!(
            store::search_registrations(client, t, &filter.customer_ref, &filter.queue, candidates),
            self.context(tenant),
        )?;
        let ids: Vec<String> = registrations.iter().map(|r| r.item_id.clone()).collect();
        let mut events = store::events_of_items(client, t, &ids).await?;
        let states: Vec<(ItemRegistration, ItemState)> = registrations
            .into_iter()
            .map(|r| {
                let state = domain::derive(events.remove(&r.item_id).unwrap_or_default());
                (r, state)
            })
            .collect();
        let visibility = Visibility::of(role, context.show_person_names);
        let who = Who {
            assignments: &context.assignments,
            visibility,
        };
        let now = (self.clock)();
        let examined = states.len();
        let items = states
            .iter()
            .map(|(r, s)| visibility::build_doc(&r.item_id, s, Some(r), &who, &stats, false, now))
            .filter(|d| {
                filter.status.is_none_or(|s| d.status == s)
                    && filter.sla_state.is_none_or(|s| d.sla.state == s)
            })
            .take(filter.limit as usize)
            .map(|d| ItemDoc::for_audience(d, visibility.audience))
            .collect();
        Ok(SearchDoc { items, examined })
    }

    /// Checks `request` and builds the registrations of its items; nothing is written yet.
    pub async fn prepare_registration(
        self,
        tenant: &TenantId,
        request: RegisterItems,
    ) -> Result<Registration, ItemsError> {
        let (client, t) = (self.client, tenant.as_str());
        let classes = if request.items.iter().any(|i| i.sla_class.is_some()) {
            store::sla_classes(client, t).await?
        } else {
            HashMap::new()
        };
        let now = (self.clock)();
        let slas =
            register::validate_items(&request, &classes, now).map_err(ItemsError::Invalid)?;
        let ids: Vec<String> = request.items.iter().map(|i| i.item_id.clone()).collect();
        let existing: HashMap<String, ItemRegistration> = store::registrations(client, t, &ids)
            .await?
            .into_iter()
            .map(|r| (r.item_id.clone(), r))
            .collect();
        Ok(Registration {
            tenant: tenant.clone(),
            items: registrations(request, slas, &existing, now),
        })
    }

    /// Writes a prepared registration; open streams of these items show it at once.
    pub async fn register(self, registration: &Registration) -> Result<(), ClickHouseError> {
        let tenant = registration.tenant.as_str();
        store::insert_registrations(self.client, tenant, &registration.items).await?;
        self.live.changed(
            tenant,
            registration
                .items
                .iter()
                .map(|r| (r.item_id.clone(), ChangeMark::registration(r.updated_ms))),
        );
        Ok(())
    }

    /// The tenant's SLA classes, by name.
    pub async fn sla_classes(self, tenant: &TenantId) -> Result<Vec<SlaClass>, ClickHouseError> {
        let classes = store::sla_classes(self.client, tenant.as_str()).await?;
        let mut classes: Vec<SlaClass> = classes
            .into_iter()
            .map(|(sla_class, target_ms)| SlaClass {
                sla_class,
                target_ms,
            })
            .collect();
        classes.sort_by(|a, b| a.sla_class.cmp(&b.sla_class));
        Ok(classes)
    }

    /// Checks the classes; nothing is written yet.
    pub fn prepare_sla_classes(
        self,
        tenant: &TenantId,
        request: PutSlaClasses,
    ) -> Result<SlaClasses, ItemsError> {
        register::validate_classes(&request).map_err(ItemsError::Invalid)?;
        Ok(SlaClasses {
            tenant: tenant.clone(),
            classes: request.classes,
            updated_ms: (self.clock)(),
        })
    }

    /// Writes prepared SLA classes and hands them back as saved.
    pub async fn save_sla_classes(
        self,
        classes: SlaClasses,
    ) -> Result<Vec<SlaClass>, ClickHouseError> {
        store::insert_sla_classes(
            self.client,
            classes.tenant.as_str(),
            &classes.classes,
            classes.updated_ms,
        )
        .await?;
        Ok(classes.classes)
    }
}

/// The registrations of a request checked by [`register::validate_items`]. A re-registration
/// keeps the item's first registration time (class SLAs count from it) and is strictly newer
/// than the registration it replaces.
fn registrations(
    request: RegisterItems,
    slas: Vec<Sla>,
    existing: &HashMap<String, ItemRegistration>,
    now: u64,
) -> Vec<ItemRegistration> {
    request
        .items
        .into_iter()
        .zip(slas)
        .map(|(item, sla)| {
            let previous = existing.get(&item.item_id);
            let registered_ms = previous.map_or(now, |p| p.registered_ms);
            let (sla_due_ms, sla_class) = match sla {
                Sla::None => (None, None),
                Sla::Due(due) => (Some(due), None),
                Sla::Class { name, target_ms } => {
                    (Some(registered_ms.saturating_add(target_ms)), Some(name))
                }
            };
            ItemRegistration {
                item_id: item.item_id,
                queue: item.queue,
                priority: item.priority,
                sla_due_ms,
                sla_class,
                customer_ref: item.customer_ref,
                registered_ms,
                // Strictly newer than what it replaces, even within one millisecond.
                updated_ms: now.max(previous.map_or(0, |p| p.updated_ms + 1)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::register::NewItem;

    fn item(id: &str, sla_class: Option<&str>) -> NewItem {
        NewItem {
            item_id: id.into(),
            queue: "claims".into(),
            priority: 1,
            sla_due_ms: None,
            sla_class: sla_class.map(str::to_string),
            customer_ref: "C-1".into(),
        }
    }

    #[test]
    fn re_registration_keeps_the_first_time_and_is_strictly_newer() {
        let previous = ItemRegistration {
            item_id: "A".into(),
            queue: "old".into(),
            priority: 0,
            sla_due_ms: None,
            sla_class: None,
            customer_ref: String::new(),
            registered_ms: 1_000,
            updated_ms: 9_000,
        };
        let existing = HashMap::from([("A".to_string(), previous)]);
        let request = RegisterItems {
            items: vec![item("A", Some("gold")), item("B", None)],
        };
        let slas = vec![
            Sla::Class {
                name: "gold".into(),
                target_ms: 60_000,
            },
            Sla::Due(50_000),
        ];
        let rows = registrations(request, slas, &existing, 9_000);
        // A: registered at 1,000 still, due a class target after that, newer than 9,000.
        assert_eq!(rows[0].registered_ms, 1_000);
        assert_eq!(rows[0].sla_due_ms, Some(61_000));
        assert_eq!(rows[0].sla_class.as_deref(), Some("gold"));
        assert_eq!(rows[0].updated_ms, 9_001);
        assert_eq!(rows[0].queue, "claims");
        // B: new, registered now, an explicit due time and no class.
        assert_eq!(rows[1].registered_ms, 9_000);
        assert_eq!(rows[1].sla_due_ms, Some(50_000));
        assert_eq!(rows[1].sla_class, None);
        assert_eq!(rows[1].updated_ms, 9_000);
    }
}
