//! The Backlight desktop agent: records work events, keeps them in a durable local spool, and
//! uploads them to the Backlight server in batches.
//!
//! # Bird's-eye view
//!
//! ```text
//!   policy ◄── GET /v1/agent/policy (ETag, every minute; cached in the spool)
//!      │ watch
//!      ▼
//!   consent gate ──► source (desktop: capture → privacy → rules → spans | synthetic | file | none)
//!      │               │  Vec<EventBody> + cursor (+ consent guard), one SQLite transaction
//!   local API, `item` ─┤
//!      ▼               ▼
//!   spool (SQLite, one owner thread) ──► uploader ──► POST /v1/ingest
//!      ▲                                    │  200 → delete exactly the sent seqs
//!   health events (start + every interval)  └─ otherwise keep, back off, record last_error
//! ```
//!
//! # Code map
//!
//! - [`cli`]: the command line (`enroll`, `run`, `status`, `consent`, `pause`, `item`, `show`).
//! - [`enroll`]: exchanges an enrollment key for a device credential.
//! - [`run`]: wires a source, the spool, health reports and the uploader together until a signal.
//! - [`status`]: what an operator (or the end-to-end tests, via `--json`) sees.
//! - [`spool`]: the durable, bounded event queue. Its `mod.rs` lists the invariants.
//! - [`upload`]: batching, compression, retries and the server's answers.
//! - [`source`]: where events come from, behind the [`source::Source`] trait.
//! - [`capture`]: the platform's desktop backends (what has focus, idle, lock).
//! - [`desktop`]: the desktop source: samples the backend behind the consent gate and runs
//!   [`privacy`] → [`rules`] → [`spans`] (three pure modules).
//! - [`policy`]: the tenant's policy: fetched, validated, cached, applied without a restart.
//! - [`consent`]: the gate, asking (terminal, local page), grant/revoke/pause, and the
//!   transparency view behind `show`.
//! - [`items`], [`local_api`]: explicit work-item reports from the command line and from
//!   applications on this desktop (loopback HTTP with a per-user token); [`wake`]: how the
//!   `item` command wakes the running agent's uploader.
//! - [`health`]: the agent's periodic report on itself.
//! - [`provisioning`]: enrollment settings an administrator deployed to the machine (the MSI).
//! - [`autostart`]: `install`/`uninstall` (the Windows Run key) and the silent launcher.
//! - [`credentials`], [`data_dir`], [`http`], [`duration`], [`private_file`], [`terminal`]: small
//!   helpers with one job each.
//! - [`platform`]: Windows-only pieces outside capture (owner-only DACLs, the registry, stop
//!   requests from the session, the default browser).
//!
//! **Architecture invariant:** an event leaves this machine's disk only after the server has
//! acknowledged it. Nothing is deleted from the spool before a `200` carrying an
//! [`backlight_shared::api::IngestResponse`] for exactly those events.
//!
//! **Architecture invariant:** wire types come from `backlight-shared` only; this crate never
//! defines what crosses the network.
//!
//! **Privacy invariant:** nothing is sampled before consent, spans and work items are committed
//! only under a consent the spool itself checks, and window titles leave [`privacy`] only as
//! the policy allows. The capture layer offers no keystrokes, screen contents or clipboard.

pub mod autostart;
pub mod capture;
pub mod cli;
pub mod consent;
pub mod credentials;
pub mod data_dir;
pub mod desktop;
pub mod duration;
pub mod enroll;
pub mod health;
pub mod http;
pub mod items;
pub mod local_api;
pub mod platform;
pub mod policy;
pub mod privacy;
pub mod private_file;
pub mod provisioning;
pub mod rules;
pub mod run;
pub mod source;
pub mod spans;
pub mod spool;
pub mod status;
pub mod terminal;
pub mod upload;
pub mod wake;

/// This agent's version, reported at enrollment and in every health event.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
