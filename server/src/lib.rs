//! Backlight server: enrolls devices, ingests their batches into ClickHouse, and serves item
//! status and performance data. The binary (`main.rs`) only parses the
//! command line and calls [`serve::serve`] or [`admin::run`].
//!
//! Code map:
//! - [`cli`]: the command-line contract.
//! - [`serve`] / [`admin`]: the two things the binary does.
//! - [`launch`]: which ClickHouse to use (external URL or embedded and supervised).
//! - [`clickhouse`]: client configuration (every ClickHouse client of the project, the tools'
//!   included, is built there), the embedded ClickHouse process.
//! - [`storage`]: all SQL — migrations, registry, events, items, reports, audit.
//! - [`items`], [`reports`]: pure domain logic (item status, SLA, ETA; report figures).
//! - [`ingest`]: the ingest path — shares, body, decoding, first copy, group commit — and
//!   [`ingest::accept`], which runs one batch through it.
//! - [`http`]: the axum router and handlers: parse, authorize, audit, render.
//! - [`service`]: the work between a handler and storage, per domain (items, registry,
//!   reports).
//! - [`live`]: change notification for open status streams.
//! - [`webhooks`]: outbound webhooks (evaluation, signing, delivery, retries).
//! - [`auth`], [`secrets`], [`tenancy`]: who may do what.
//! - [`telemetry`]: metrics and logs.
//! - [`tls`]: loading the HTTPS certificate and key.
//! - [`listen`]: accepting connections within caps and timeouts (HTTP and HTTPS).

pub mod admin;
pub mod auth;
pub mod cli;
pub mod clickhouse;
pub mod http;
pub mod ingest;
pub mod items;
pub mod launch;
pub mod listen;
pub mod live;
pub mod reports;
pub mod secrets;
pub mod serve;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod tenancy;
pub mod tls;
pub mod webhooks;

/// Locks a mutex that guards counts or caches updated only in short, panic-free sections, so
/// that a poisoned lock still holds consistent data: the poison is ignored.
pub(crate) fn lock_counts<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
