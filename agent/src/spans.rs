//! Merging samples into activity spans. Pure: samples in, closed spans out.
//!
//! A span is one continuous stretch of the same (app, recorded title, state, item, step). It
//! closes when any of them changes, when its length reaches [`SpanConfig::max_span_ms`] (it is
//! then continued by a new span, so a crash loses at most that much), when samples stop
//! arriving for longer than [`SpanConfig::max_gap_ms`] (suspend, pause, lost display: the span
//! ends at the last sample, never covering time nobody observed), and on [`Spans::flush`].
//!
//! # Presence
//!
//! - **Locked beats idle:** a locked screen is `locked`, whatever the idle time. Locked spans
//!   carry no app, title or item.
//! - **Idle starts at the last input.** When `idle_ms` reaches the threshold, the person has
//!   been away since `at_ms - idle_ms`: the active span is cut back to that instant and the idle
//!   span starts there. Idle spans keep the app and title but no item: time away is not work on
//!   the item. If the screen locks after at least [`MIN_IDLE_BEFORE_LOCK_MS`] without input
//!   (but not yet long enough to count as idle), that stretch is recorded as idle before the
//!   locked one.
//! - **Presence returns at the input that ended it:** from idle or locked back to active, the
//!   boundary is `at_ms - idle_ms`.
//!
//! Boundaries are clamped into the open span, so a span never ends before it starts; spans of
//! zero length are not emitted.

use backlight_shared::batch::limits;
use backlight_shared::event::{ActivitySpan, ActivityState};
use backlight_shared::UnixMillis;

/// Default longest span: an open span is at most this much work lost in a crash.
pub const DEFAULT_MAX_SPAN_MS: u64 = 15 * 60_000;

/// No input for at least this long before the screen locks is recorded as idle before the
/// locked span; anything shorter is just the time it takes to lock the screen.
pub const MIN_IDLE_BEFORE_LOCK_MS: u64 = 10_000;

/// How samples become spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanConfig {
    /// No input for this long means idle (the policy's `idle_threshold_ms`).
    pub idle_threshold_ms: u64,
    /// Longest span before it is closed and continued (capped at the protocol's limit).
    pub max_span_ms: u64,
    /// Samples further apart than this are not joined: the span ends at the earlier one.
    pub max_gap_ms: u64,
}

impl SpanConfig {
    /// The configuration for a sampling interval: gaps over three intervals (at least 10 s)
    /// break a span.
    pub fn new(idle_threshold_ms: u64, sample_interval_ms: u64) -> SpanConfig {
        SpanConfig {
            idle_threshold_ms,
            max_span_ms: DEFAULT_MAX_SPAN_MS,
            max_gap_ms: sample_interval_ms.saturating_mul(3).max(10_000),
        }
    }
}

/// What the focused window looks like once privacy and rules have been applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The recorded app name (empty when nothing has focus).
    pub app: String,
    /// The recorded title (`None` unless the policy lets titles leave the desktop).
    pub title: Option<String>,
    pub item_id: Option<String>,
    pub step: Option<String>,
}

/// One sample, ready to merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub at_ms: UnixMillis,
    pub activity: Activity,
    pub idle_ms: u64,
    pub locked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    activity: Activity,
    state: ActivityState,
    start_ms: UnixMillis,
    /// The last sample that continued this span.
    last_ms: UnixMillis,
}

/// The span being built, and the rules for closing it.
#[derive(Debug, Clone)]
pub struct Spans {
    config: SpanConfig,
    open: Option<Open>,
}

impl Spans {
    pub fn new(mut config: SpanConfig) -> Spans {
        config.max_span_ms = config.max_span_ms.clamp(1, limits::MAX_SPAN_MS);
        Spans { config, open: None }
    }

    /// Whether a span is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Merges one sample; returns the spans it closed, oldest first.
    pub fn observe(&mut self, o: &Observation) -> Vec<ActivitySpan> {
        let mut closed = Vec::new();
        // Time went backwards or nobody looked for a while: end at the last sample.
        if let Some(open) = &self.open {
            if o.at_ms < open.last_ms || o.at_ms - open.last_ms > self.config.max_gap_ms {
                let end = open.last_ms;
                self.close(end, &mut closed);
            }
        }
        let state = if o.locked {
            ActivityState::Locked
        } else if o.idle_ms >= self.config.idle_threshold_ms {
            ActivityState::Idle
        } else {
            ActivityState::Active
        };
        let activity = match state {
            ActivityState::Active => o.activity.clone(),
            ActivityState::Idle => Activity {
                item_id: None,
                step: None,
                ..o.activity.clone()
            },
            ActivityState::Locked => Activity::default(),
        };
        let input_ms = o.at_ms.saturating_sub(o.idle_ms);
        let Some(open) = &mut self.open else {
            self.open_at(activity, state, o.at_ms, o.at_ms);
            return closed;
        };
        if open.state == state && open.activity == activity {
            if o.at_ms - open.start_ms >= self.config.max_span_ms {
                self.close(o.at_ms, &mut closed);
                self.open_at(activity, state, o.at_ms, o.at_ms);
            } else {
                open.last_ms = o.at_ms;
            }
            return closed;
        }
        let (open_state, open_start, open_app, open_title) = (
            open.state,
            open.start_ms,
            open.activity.app.clone(),
            open.activity.title.clone(),
        );
        let clamp = |t: UnixMillis| t.clamp(open_start, o.at_ms);
        match (open_state, state) {
            (ActivityState::Active, ActivityState::Idle) => {
                let boundary = clamp(input_ms);
                self.close(boundary, &mut closed);
                self.open_at(activity, state, boundary, o.at_ms);
            }
            (ActivityState::Active, ActivityState::Locked)
                if o.idle_ms >= MIN_IDLE_BEFORE_LOCK_MS =>
            {
                // Away before the lock: active until the last input, idle until the lock.
                let boundary = clamp(input_ms);
                self.close(boundary, &mut closed);
                self.open_at(
                    Activity {
                        app: open_app,
                        title: open_title,
                        item_id: None,
                        step: None,
                    },
                    ActivityState::Idle,
                    boundary,
                    o.at_ms,
                );
                self.close(o.at_ms, &mut closed);
                self.open_at(activity, state, o.at_ms, o.at_ms);
            }
            (ActivityState::Idle | ActivityState::Locked, ActivityState::Active) => {
                let boundary = clamp(input_ms);
                self.close(boundary, &mut closed);
                self.open_at(activity, state, boundary, o.at_ms);
            }
            _ => {
                self.close(o.at_ms, &mut closed);
                self.open_at(activity, state, o.at_ms, o.at_ms);
            }
        }
        closed
    }

    /// Closes the open span at `at_ms` (capture stops: shutdown, pause, lost display, policy
    /// change). The end is clamped to at most one gap after the last sample, so a late flush
    /// does not claim unobserved time.
    pub fn flush(&mut self, at_ms: UnixMillis) -> Option<ActivitySpan> {
        let open = self.open.as_ref()?;
        let end = at_ms.clamp(
            open.start_ms,
            open.last_ms.saturating_add(self.config.max_gap_ms),
        );
        let mut closed = Vec::new();
        self.close(end, &mut closed);
        closed.pop()
    }

    /// Forgets the open span without recording it (consent withdrawn).
    pub fn discard(&mut self) {
        self.open = None;
    }

    fn open_at(
        &mut self,
        activity: Activity,
        state: ActivityState,
        start_ms: UnixMillis,
        last_ms: UnixMillis,
    ) {
        self.open = Some(Open {
            activity,
            state,
            start_ms,
            last_ms: last_ms.max(start_ms),
        });
    }

    fn close(&mut self, end_ms: UnixMillis, closed: &mut Vec<ActivitySpan>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let end_ms = end_ms.max(open.start_ms);
        if end_ms == open.start_ms {
            return;
        }
        closed.push(ActivitySpan {
            app: open.activity.app,
            title: open.activity.title,
            start_ms: open.start_ms,
            end_ms,
            state: open.state,
            item_id: open.activity.item_id,
            step: open.activity.step,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;
    const IDLE: u64 = 60_000;

    fn spans() -> Spans {
        Spans::new(SpanConfig::new(IDLE, 1_000))
    }

    fn on(app: &str, item: Option<&str>) -> Activity {
        Activity {
            app: app.into(),
            title: None,
            item_id: item.map(str::to_string),
            step: None,
        }
    }

    fn obs(s: u64, activity: Activity, idle_s: u64, locked: bool) -> Observation {
        Observation {
            at_ms: T0 + s * 1000,
            activity,
            idle_ms: idle_s * 1000,
            locked,
        }
    }

    /// Feeds one sample a second from `from` to `to` (inclusive), collecting closed spans.
    fn feed(
        spans: &mut Spans,
        out: &mut Vec<ActivitySpan>,
        from: u64,
        to: u64,
        sample: impl Fn(u64) -> Observation,
    ) {
        for s in from..=to {
            out.extend(spans.observe(&sample(s)));
        }
    }

    /// Spans as `(state app item start_s end_s)`, relative seconds.
    fn summary(spans: &[ActivitySpan]) -> Vec<(ActivityState, String, Option<String>, u64, u64)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.state,
                    s.app.clone(),
                    s.item_id.clone(),
                    (s.start_ms - T0) / 1000,
                    (s.end_ms - T0) / 1000,
                )
            })
            .collect()
    }

    use ActivityState::{Active, Idle, Locked};

    #[test]
    fn samples_of_the_same_window_merge_and_changes_split() {
        let mut s = spans();
        let mut out = Vec::new();
        feed(&mut s, &mut out, 0, 9, |t| {
            obs(t, on("a", Some("X")), 0, false)
        });
        assert!(out.is_empty(), "still one open span");
        feed(&mut s, &mut out, 10, 14, |t| {
            obs(t, on("b", None), 0, false)
        });
        out.extend(s.flush(T0 + 15_000));
        assert_eq!(
            summary(&out),
            [
                (Active, "a".into(), Some("X".into()), 0, 10),
                (Active, "b".into(), None, 10, 15),
            ]
        );
    }

    #[test]
    fn idle_is_attributed_from_its_start() {
        let mut s = spans();
        let mut out = Vec::new();
        // Input until second 20, then nothing: idle_ms grows from second 21.
        feed(&mut s, &mut out, 0, 100, |t| {
            let idle = t.saturating_sub(20);
            obs(t, on("a", Some("X")), idle, false)
        });
        // Input again at second 101.
        feed(&mut s, &mut out, 101, 105, |t| {
            obs(t, on("a", Some("X")), 0, false)
        });
        out.extend(s.flush(T0 + 106_000));
        assert_eq!(
            summary(&out),
            [
                (Active, "a".into(), Some("X".into()), 0, 20),
                (Idle, "a".into(), None, 20, 101),
                (Active, "a".into(), Some("X".into()), 101, 106),
            ]
        );
    }

    #[test]
    fn locked_beats_idle_and_idle_before_the_lock_is_kept() {
        let mut s = spans();
        let mut out = Vec::new();
        // Last input at 10; the screen locks at 40 (idle 30 s, below the threshold).
        feed(&mut s, &mut out, 0, 39, |t| {
            obs(t, on("a", None), t.saturating_sub(10), false)
        });
        // Locked for a long time, idle way past the threshold: still locked.
        feed(&mut s, &mut out, 40, 200, |t| {
            obs(t, on("a", None), t - 10, true)
        });
        // Unlocked by input at 200.
        feed(&mut s, &mut out, 201, 202, |t| {
            obs(t, on("a", None), 0, false)
        });
        out.extend(s.flush(T0 + 203_000));
        assert_eq!(
            summary(&out),
            [
                (Active, "a".into(), None, 0, 10),
                (Idle, "a".into(), None, 10, 40),
                (Locked, "".into(), None, 40, 201),
                (Active, "a".into(), None, 201, 203),
            ]
        );
    }

    #[test]
    fn long_spans_are_cut() {
        let mut s = Spans::new(SpanConfig {
            max_span_ms: 100_000,
            ..SpanConfig::new(IDLE, 1_000)
        });
        let mut out = Vec::new();
        feed(&mut s, &mut out, 0, 250, |t| {
            obs(t, on("a", None), 0, false)
        });
        out.extend(s.flush(T0 + 251_000));
        assert_eq!(
            summary(&out),
            [
                (Active, "a".into(), None, 0, 100),
                (Active, "a".into(), None, 100, 200),
                (Active, "a".into(), None, 200, 251),
            ]
        );
        assert!(out
            .iter()
            .all(|s| s.end_ms - s.start_ms <= limits::MAX_SPAN_MS));
    }

    #[test]
    fn max_span_never_exceeds_the_protocol() {
        let s = Spans::new(SpanConfig {
            max_span_ms: u64::MAX,
            ..SpanConfig::new(IDLE, 1_000)
        });
        assert_eq!(s.config.max_span_ms, limits::MAX_SPAN_MS);
    }

    #[test]
    fn shutdown_flush_closes_the_open_span_once() {
        let mut s = spans();
        let mut out = Vec::new();
        feed(&mut s, &mut out, 0, 5, |t| obs(t, on("a", None), 0, false));
        let flushed = s.flush(T0 + 5_500).unwrap();
        assert_eq!((flushed.start_ms, flushed.end_ms), (T0, T0 + 5_500));
        assert!(s.flush(T0 + 6_000).is_none());
        assert!(!s.is_open());
    }

    #[test]
    fn a_late_flush_does_not_claim_unobserved_time() {
        let mut s = spans();
        let mut out = Vec::new();
        feed(&mut s, &mut out, 0, 5, |t| obs(t, on("a", None), 0, false));
        let flushed = s.flush(T0 + 3_600_000).unwrap();
        assert_eq!(flushed.end_ms, T0 + 5_000 + 10_000);
    }

    #[test]
    fn gaps_and_clock_jumps_end_the_span_at_the_last_sample() {
        let mut s = spans();
        let mut out = Vec::new();
        feed(&mut s, &mut out, 0, 5, |t| obs(t, on("a", None), 0, false));
        // Suspended for an hour.
        feed(&mut s, &mut out, 3600, 3601, |t| {
            obs(t, on("a", None), 0, false)
        });
        // The clock jumps back.
        out.extend(s.observe(&obs(3000, on("a", None), 0, false)));
        assert_eq!(
            summary(&out),
            [
                (Active, "a".into(), None, 0, 5),
                (Active, "a".into(), None, 3600, 3601),
            ]
        );
    }

    #[test]
    fn discard_forgets_without_recording() {
        let mut s = spans();
        s.observe(&obs(0, on("a", None), 0, false));
        s.observe(&obs(1, on("a", None), 0, false));
        s.discard();
        assert!(s.flush(T0 + 2_000).is_none());
    }
}
