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
