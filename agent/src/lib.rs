//! The Backlight desktop agent: records work events, keeps them in a durable local spool, and
//! uploads them to the Backlight server in batches.
//!
//! # Bird's-eye view
//!
//! ```text
//!   source (synthetic | file | none | desktop later)
//!      │  Vec<EventBody> + cursor, one SQLite transaction
//!      ▼
//!   spool (SQLite, one owner thread) ──► uploader ──► POST /v1/ingest
//!      ▲                                    │  200 → delete exactly the sent seqs
//!   health events (start + every interval)  └─ otherwise keep, back off, record last_error
//! ```
//!
//! # Code map
//!
//! - [`cli`]: the command line (`enroll`, `run`, `status`).
//! - [`enroll`]: exchanges an enrollment key for a device credential.
//! - [`run`]: wires a source, the spool, health reports and the uploader together until a signal.
//! - [`status`]: what an operator (or the end-to-end tests, via `--json`) sees.
//! - [`spool`]: the durable, bounded event queue. Its `mod.rs` lists the invariants.
//! - [`upload`]: batching, compression, retries and the server's answers.
//! - [`source`]: where events come from, behind the [`source::Source`] trait.
//! - [`health`]: the agent's periodic report on itself.
//! - [`credentials`], [`data_dir`], [`http`], [`duration`]: small helpers with one job each.
//!
//! **Architecture invariant:** an event leaves this machine's disk only after the server has
//! acknowledged it. Nothing is deleted from the spool before a `200` carrying an
//! [`backlight_shared::api::IngestResponse`] for exactly those events.
//!
//! **Architecture invariant:** wire types come from `backlight-shared` only; this crate never
//! defines what crosses the network.

pub mod capture;
pub mod cli;
pub mod credentials;
pub mod data_dir;
pub mod duration;
pub mod enroll;
pub mod health;
pub mod http;
pub mod run;
pub mod source;
pub mod spool;
pub mod status;
pub mod upload;

/// This agent's version, reported at enrollment and in every health event.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
