//! End-to-end harness for Backlight: the real `backlight-server` and `backlight-agent`
//! binaries against a real, throwaway ClickHouse — no storage mocks.
//!
//! The tests live in `tests/tests/e2e/` (one integration-test binary made of modules, to keep
//! link time down); this library is what they share. Everything a test starts is its own:
//! a ClickHouse under a temporary directory on free ports, a database with a unique name, a
//! server on a free port, agents with their own data directories. So tests run in parallel
//! safely, and a test may stop ClickHouse or kill the server without disturbing another.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() {
//! use backlight_e2e::*;
//! let ch = ClickHouse::start().await;
//! let server = Server::start(&ch).await;
//! let tenant = server.create_tenant("acme").await;
//! let key = server.create_enrollment_key(&tenant).await;
//! let device = server.enroll_device(&key).await;
//! let batch = batch(&device, vec![work_item(1, "CLM-1", ItemAction::Started, now_ms())]);
//! server.send_batch(&device, &batch).await.assert_ok();
//! let db = server.db();
//! wait_until(secs(10), "the event is stored", async || {
//!     db.count(&format!("SELECT count() FROM events FINAL WHERE device_id = '{}'", device.id)).await == 1
//! })
//! .await;
//! # }
//! ```
//!
//! # Map
//!
//! - [`harness::clickhouse`]: [`ClickHouse`] (start, stop, restart on the same ports with data
//!   kept) and [`Db`], SQL against one database through the server's own ClickHouse client.
//! - [`harness::cluster`]: [`ClickHouseCluster`], shards and replicas of ClickHouse on loopback
//!   with their own [`ZooKeeper`] ([`harness::zookeeper`]), any node killable and restartable.
//! - [`harness::server`]: [`Server`], the real server binary (readiness, kill -9, restart on the
//!   same port, logs printed when a test fails), and the `admin` command line.
//! - [`harness::agent`]: [`Agent`], the real agent binary with its own data directory.
//! - [`harness::file_agent`]: [`FileAgent`], an agent fed from a file of events, and the
//!   exactly-once checks run after its uploads.
//! - [`harness::ingest`]: hand-made events and batches, and posting them with reqwest.
//! - [`harness::wait`]: polling with deadlines instead of sleeps.
//! - [`harness::sse`]: reading the status stream over real HTTP.
//! - [`harness::receiver`]: a webhook receiver on loopback that can go down and come back.
//! - [`harness::bins`]: finding the binaries next to the test executable.
//! - [`harness::spine`]: [`Spine`] (ClickHouse, server, tenant and key) and the "nothing
//!   secret anywhere" check of the desktop tests.
//! - [`harness::xvfb`]: a throwaway X server and `xdotool`, for the desktop tests.
//!
//! [`loadkit`] is what the load generators (`src/bin/`) share beyond the harness: readiness,
//! enrollment and `/metrics` of a server, a loopback-only [`Db`], CPU and memory from `/proc`,
//! percentiles.
//!
//! **Invariant:** a missing ClickHouse or binary fails the test loudly with what to do about it;
//! nothing here ever skips a test.

pub mod harness;
pub mod loadkit;

pub use harness::agent::{write_lines, Agent, AgentStatus};
pub use harness::clickhouse::{ClickHouse, Db, DbError};
pub use harness::cluster::{ClickHouseCluster, NodeId};
pub use harness::file_agent::{assert_every_seq_once, assert_file_stored_once, FileAgent};
pub use harness::ingest::{
    activity_span, batch, events_file_lines, work_item, zstd, Device, FileEvent, Posted,
};
pub use harness::receiver::{Received, Receiver};
pub use harness::server::{Server, ServerOptions, TlsFiles};
pub use harness::spine::Spine;
pub use harness::sse::{SseEvent, SseStream};
pub use harness::wait::{millis, secs, wait_for, wait_until};
pub use harness::zookeeper::ZooKeeper;

pub use backlight_shared::api::{EnrollResponse, ErrorBody, IngestResponse};
pub use backlight_shared::batch::{limits, Batch};
pub use backlight_shared::event::{
    ActivitySpan, ActivityState, Event, EventBody, ItemAction, ItemSource, WorkItemEvent,
};
pub use backlight_shared::{now_ms, PROTOCOL_VERSION};
