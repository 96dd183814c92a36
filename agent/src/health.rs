//! The agent's report on itself: recorded into the spool like any event, at start and then
//! periodically, so losses (dropped or rejected events) and clock trouble show up centrally.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use backlight_shared::event::{AgentHealth, EventBody};
use backlight_shared::now_ms;

use crate::spool::{SourceProgress, Spool, SpoolError, SpoolStats};
use crate::AGENT_VERSION;

/// Server clock minus agent clock, in ms, as last measured by the uploader. Shared between the
/// uploader (writer) and health reports (reader).
#[derive(Debug, Default)]
pub struct ClockOffset(AtomicI64);

impl ClockOffset {
    pub fn new() -> Arc<ClockOffset> {
        Arc::new(ClockOffset::default())
    }

    pub fn set(&self, offset_ms: i64) {
        self.0.store(offset_ms, Ordering::Relaxed);
    }

    /// The last measurement; 0 before the first answer from the server.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The health event for the spool's current state, with the desktop session this agent runs
/// in where the platform can tell (a remote session is a property of the device).
pub fn report(stats: &SpoolStats, clock: &ClockOffset) -> EventBody {
    EventBody::Health(AgentHealth {
        agent_version: AGENT_VERSION.to_string(),
        spool_depth: stats.depth,
        events_dropped: stats.events_dropped,
        events_rejected: stats.events_rejected,
        clock_offset_ms: clock.get(),
        at_ms: now_ms(),
        session: crate::capture::desktop_session(),
    })
}

/// Records one health event into the spool.
pub async fn record(spool: &Spool, clock: &ClockOffset) -> Result<(), SpoolError> {
    let stats = spool.stats().await?;
    spool
        .append(vec![report(&stats, clock)], SourceProgress::default())
        .await?;
    Ok(())
}
