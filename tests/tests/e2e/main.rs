//! End-to-end tests of the spine: agent → server → ClickHouse, with the real binaries and a
//! real ClickHouse per test. One test binary made of modules (link time); helpers live in the
//! `backlight-e2e` library.
//!
//! Run with `cargo build --workspace --bins && cargo test -p backlight-e2e`.

mod agent_crashes;
mod bad_inputs;
mod dedup;
mod enrollment;
mod gaps;
mod happy_path;
mod hostile;
mod hostile_access;
mod https;
mod live;
mod outages;
mod realtime;
mod webhooks;

use backlight_e2e::*;

/// A ClickHouse, a server on its own database, one tenant and an enrollment key for it.
pub struct Spine {
    // Fields drop in order: the server goes before the ClickHouse it writes to.
    pub server: Server,
    pub ch: ClickHouse,
    pub tenant: String,
    pub key: String,
}

impl Spine {
    pub async fn start(tenant_prefix: &str) -> Spine {
        Spine::start_with(tenant_prefix, ServerOptions::default()).await
    }

    pub async fn start_with(tenant_prefix: &str, options: ServerOptions) -> Spine {
        let ch = ClickHouse::start().await;
        let server = Server::start_with(ch.fresh_db(), options).await;
        let tenant = server.create_tenant(tenant_prefix).await;
        let key = server.create_enrollment_key(&tenant).await;
        Spine {
            server,
            ch,
            tenant,
            key,
        }
    }
}

/// `n` events with sequence numbers `first..first+n`, work items and spans alternating, all
/// within the last minute.
pub fn events(first: u64, n: u64) -> Vec<Event> {
    let now = now_ms();
    (first..first + n)
        .map(|seq| {
            let at = now - 60_000 + seq;
            if seq % 2 == 0 {
                work_item(seq, &format!("CLM-{seq}"), ItemAction::Started, at)
            } else {
                activity_span(seq, "claims-desk", at, at + 500)
            }
        })
        .collect()
}
