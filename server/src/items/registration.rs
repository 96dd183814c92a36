//! An item's registration as the domain knows it: what the line-of-business system told us
//! about the item (queue, priority, customer, SLA), with "none" spelled `None` rather than the
//! `0` and `""` the tables store.

/// The newest registration of one item (of a tenant the reader already knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRegistration {
    pub item_id: String,
    pub queue: String,
    /// 0 to 9; higher is more urgent.
    pub priority: u8,
    /// When the SLA is due (ms since the epoch); `None`: the item has no SLA.
    pub sla_due_ms: Option<u64>,
    /// The SLA class the due time came from, if it came from one.
    pub sla_class: Option<String>,
    pub customer_ref: String,
    /// The first registration of the item (a class SLA counts from it).
    pub registered_ms: u64,
    /// The version: the newest registration of an item wins.
    pub updated_ms: u64,
}
