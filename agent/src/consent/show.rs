//! Transparency: `backlight-agent show` (and the local page's `/show`) lists exactly what this
//! desktop recorded today — every event, as it was or will be sent — and which are still
//! waiting for upload. It reads the spool's local log (`recent`), which keeps events for a
//! week after they were recorded, uploaded or not.

use std::fmt::Write as _;
use std::path::Path;

use backlight_shared::event::EventBody;
use backlight_shared::{now_ms, UnixMillis};
use serde::Serialize;

use super::format_ms;
use crate::data_dir;
use crate::local_api::http1::escape_html;
use crate::spool::{self, RecentEvent, SpoolError};

/// Most events listed (a day of one-second samples merges into far fewer spans).
pub const MAX_SHOWN: usize = 20_000;

/// What `show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Today {
    /// Local midnight, in ms since the epoch.
    pub since_ms: UnixMillis,
    /// Events recorded since then, oldest first.
    pub events: Vec<Shown>,
    /// How many of them are still waiting for upload.
    pub waiting: usize,
}

/// One recorded event.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub seq: u64,
    pub recorded_ms: UnixMillis,
    /// `waiting` (still on this desktop only) or `sent`.
    pub upload: &'static str,
    /// The event exactly as it travels to the server.
    pub event: EventBody,
}

/// Today's events of the agent whose state is in `dir`.
pub fn today(dir: &Path) -> Result<Today, SpoolError> {
    let since_ms = local_midnight(now_ms());
    let recent =
        spool::recent(&data_dir::spool_path(dir), since_ms, MAX_SHOWN)?.unwrap_or_default();
    Ok(build(since_ms, recent))
}

fn build(since_ms: UnixMillis, recent: Vec<RecentEvent>) -> Today {
    let waiting = recent.iter().filter(|e| e.waiting).count();
    Today {
        since_ms,
        waiting,
        events: recent
            .into_iter()
            .map(|e| Shown {
                seq: e.seq,
                recorded_ms: e.recorded_ms,
                upload: if e.waiting { "waiting" } else { "sent" },
                event: e.body,
            })
            .collect(),
    }
}

/// One line per event, for a person.
pub fn render_text(today: &Today) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Recorded on this computer since {} ({} events, {} waiting for upload):",
        format_ms(today.since_ms),
        today.events.len(),
        today.waiting
    );
    for shown in &today.events {
        let _ = writeln!(out, "  [{}] {}", shown.upload, summary(&shown.event));
    }
    if today.events.is_empty() {
        let _ = writeln!(out, "  nothing");
    }
    out
}

/// The same list as an HTML page body.
pub fn render_html(today: &Today) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<h1>Recorded today</h1><p>Since {}: {} events, {} still waiting for upload. This is \
         exactly what leaves this computer.</p><table><tr><th>upload</th><th>event</th></tr>",
        escape_html(&format_ms(today.since_ms)),
        today.events.len(),
        today.waiting
    );
    for shown in &today.events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            shown.upload,
            escape_html(&summary(&shown.event))
        );
    }
    out.push_str("</table>");
    out
}

/// An event in words.
pub fn summary(event: &EventBody) -> String {
    let time = |ms: UnixMillis| format_ms(ms);
    match event {
        EventBody::ActivitySpan(s) => {
            let mut text = format!(
                "{} – {} {} {}",
                time(s.start_ms),
                time(s.end_ms),
                s.state.as_str(),
                if s.app.is_empty() { "-" } else { &s.app }
            );
            if let Some(title) = &s.title {
                let _ = write!(text, " title {title:?}");
            }
            if let Some(item) = &s.item_id {
                let _ = write!(text, " item {item}");
            }
            if let Some(step) = &s.step {
                let _ = write!(text, " step {step}");
            }
            text
        }
        EventBody::WorkItem(w) => {
            let mut text = format!(
                "{} item {} {} ({})",
                time(w.at_ms),
                w.item_id,
                w.action.as_str(),
                w.source.as_str()
            );
            if let Some(step) = &w.step {
                let _ = write!(text, " step {step}");
            }
            text
        }
        EventBody::Consent(c) => format!(
            "{} consent {} for policy version {}",
            time(c.at_ms),
            if c.granted {
                "granted"
            } else {
                "declined/withdrawn"
            },
            c.policy_version
        ),
        EventBody::Health(h) => format!(
            "{} agent health: {} events waiting, {} dropped",
            time(h.at_ms),
            h.spool_depth,
            h.events_dropped
        ),
    }
}

/// The last local midnight at or before `now`.
fn local_midnight(now: UnixMillis) -> UnixMillis {
    let offset_ms = utc_offset_ms(now);
    let local = now as i64 + offset_ms;
    let midnight_local = local - local.rem_euclid(86_400_000);
    u64::try_from(midnight_local - offset_ms).unwrap_or(0)
}

/// The local time zone's offset from UTC at `now`, from the C library (which reads `TZ` and
/// the system's zone); 0 where that is not available.
fn utc_offset_ms(now: UnixMillis) -> i64 {
    #[cfg(unix)]
    {
        let seconds = (now / 1000) as libc::time_t;
        // SAFETY: `localtime_r` writes only into the `tm` we pass, and reads `seconds`.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let result = unsafe { libc::localtime_r(&seconds, &mut tm) };
        if result.is_null() {
            return 0;
        }
        tm.tm_gmtoff * 1000
    }
    #[cfg(windows)]
    {
        let _ = now;
        windows_utc_offset_ms()
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = now;
        0
    }
}

/// The offset in force now (standard or daylight time), from `GetTimeZoneInformation`.
#[cfg(windows)]
fn windows_utc_offset_ms() -> i64 {
    use windows_sys::Win32::System::Time::{GetTimeZoneInformation, TIME_ZONE_INFORMATION};
    const TIME_ZONE_ID_INVALID: u32 = u32::MAX;
    const TIME_ZONE_ID_DAYLIGHT: u32 = 2;
    // SAFETY: a plain-data out-parameter, zeroed and owned here.
    let mut zone: TIME_ZONE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: writes into `zone` only.
    let state = unsafe { GetTimeZoneInformation(&mut zone) };
    if state == TIME_ZONE_ID_INVALID {
        return 0;
    }
    // Bias is UTC minus local time, in minutes.
    let bias = i64::from(zone.Bias)
        + i64::from(if state == TIME_ZONE_ID_DAYLIGHT {
            zone.DaylightBias
        } else {
            zone.StandardBias
        });
    -bias * 60_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use backlight_shared::event::{ItemAction, ItemSource, WorkItemEvent};

    #[test]
    fn midnight_is_within_a_day_before_now() {
        let now = 1_800_000_123_456;
        let midnight = local_midnight(now);
        assert!(midnight <= now && now - midnight < 86_400_000);
    }

    #[test]
    fn lists_waiting_and_sent() {
        let body = EventBody::WorkItem(WorkItemEvent {
            item_id: "CLM-<1>".into(),
            action: ItemAction::Started,
            step: None,
            at_ms: 1_800_000_000_000,
            source: ItemSource::Manual,
        });
        let recent = vec![
            RecentEvent {
                seq: 1,
                recorded_ms: 1,
                waiting: false,
                body: body.clone(),
            },
            RecentEvent {
                seq: 2,
                recorded_ms: 2,
                waiting: true,
                body,
            },
        ];
        let today = build(0, recent);
        assert_eq!(today.waiting, 1);
        let text = render_text(&today);
        assert!(
            text.contains("[sent]") && text.contains("[waiting]"),
            "{text}"
        );
        assert!(text.contains("item CLM-<1> started (manual)"), "{text}");
        let html = render_html(&today);
        assert!(
            html.contains("CLM-&lt;1&gt;") && !html.contains("CLM-<1>"),
            "{html}"
        );
    }
}
