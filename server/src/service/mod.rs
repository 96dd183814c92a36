//! Domain services: the work between an HTTP handler (which parses, authorizes and renders)
//! and the storage layer (which runs SQL and hands back rows).
//!
//! - [`reports`]: performance reports — resolving a request to a query over the tenant's
//!   devices, keeping the rollup current, running the figures and assembling the report.
//!
//! Items, ingest and the registry still do this work in their handlers (`http/items.rs`,
//! `http/ingest.rs`, `http/enroll.rs`); they move here the same way.
pub mod reports;
