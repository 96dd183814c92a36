//! Wire types shared by the Backlight agent and server.
//!
//! **Architecture invariant:** this crate is the only place that defines what crosses the
//! network between an agent and the server. It depends on neither side. Changing a type here
//! changes the protocol: bump [`PROTOCOL_VERSION`] for incompatible changes and document them in
//! `docs/protocol.md`.
//!
//! - [`event`]: what an agent records (activity spans, work-item events, consent, health).
//! - [`batch`]: how events travel (a batch from one device), and the limits the server enforces.
//! - [`validate`]: the checks both sides run, so an agent never spools what the server would refuse.
//! - [`api`]: request/response bodies of the HTTP API (enrollment, ingest, errors).
//! - [`credential`]: the formats of secrets (enrollment keys, device credentials, API keys).
//! - [`policy`]: the tenant's centrally managed policy (rules, privacy, consent notice);
//!   [`policy_change`]: what a new policy changes and whether it records more (asks again).

pub mod api;
pub mod batch;
pub mod credential;
pub mod event;
pub mod policy;
pub mod policy_change;
pub mod validate;

/// Version of the agent ↔ server protocol carried in every batch.
///
/// The server accepts exactly the versions it knows; an agent that is newer than the server gets a
/// clear 422 naming `protocol`, and keeps its data until the server is upgraded.
pub const PROTOCOL_VERSION: u16 = 1;

/// Milliseconds since the Unix epoch, UTC. All timestamps on the wire use it.
pub type UnixMillis = u64;

/// The current wall-clock time as [`UnixMillis`].
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
