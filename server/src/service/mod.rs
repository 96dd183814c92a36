//! Domain services: the work between an HTTP handler (which parses, authorizes and renders)
//! and the storage layer (which runs SQL and hands back rows).
//!
//! - [`reports`]: performance reports — resolving a request to a query over the tenant's
//!   devices, keeping the rollup current, running the figures and assembling the report.
//! - [`items`]: item status — reading an item and building the document the caller's role may
//!   see (lookup, timeline, search), registering items, SLA classes.
//! - [`registry`]: enrolling a device, reading and replacing a tenant's policy.
//!
//! Ingest's work lives with the rest of the ingest path, in [`crate::ingest::accept`].
//!
//! A service takes what it needs (storage handles, caches, the clock), never the HTTP
//! layer's `AppState` or an axum type, so it runs and is tested without a server. Where a
//! call changes something, a service works in two steps (`prepare…`, then the write) so that
//! the handler records the call in the audit log in between.
pub mod items;
pub mod registry;
pub mod reports;

/// The time now, in ms since the epoch: [`backlight_shared::now_ms`] in the server, a fixed
/// instant in tests.
pub type Clock = fn() -> u64;
