//! The desktop source (`run --source desktop`): samples the desktop and turns what it sees into
//! activity spans and work-item events.
//!
//! ```text
//!  gate (consent, pause) ──► backend.sample() every policy.sample_interval_ms
//!                               │  Sample {focus, idle_ms, locked}
//!                               ▼
//!                            privacy ──► rules ──► spans ──► Pulled::Guarded ──► spool
//! ```
//!
//! - **Nothing before consent.** While the [gate](crate::consent::Gate) is not open the backend
//!   is not even opened or sampled; the source waits for the gate to change. When it closes,
//!   open spans are flushed and the current item paused (pause, new policy version) — or, when
//!   consent was refused or withdrawn, everything in memory is forgotten unrecorded.
//! - **The policy applies on the fly:** a new policy closes the open span and pauses the current
//!   item under the old one, then privacy, rules, thresholds and the interval change.
//! - **The display may come and go.** `Unavailable` (no X server, Wayland…) is logged once and
//!   retried every minute; `Disconnected` (X server restarted) closes open spans at the last
//!   sample and reopens with backoff. Each sample runs on a blocking thread with a deadline, so
//!   a hung display cannot stall uploads.
//! - **Cancel-safe:** closed spans and item events wait in `pending` until a pull returns
//!   them; a pull dropped at an await point loses nothing, and [`Source::finish`] flushes the
//!   open span on shutdown.
//!
//! [`Pipeline`] is the synchronous core (privacy → rules → spans), tested without a runtime.

use std::sync::Arc;
use std::time::Duration;

use backlight_shared::event::{EventBody, ItemAction};
use backlight_shared::policy::Policy;
use backlight_shared::validate::ValidationError;
use backlight_shared::{now_ms, UnixMillis};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::capture::{CaptureError, DesktopBackend, Sample};
use crate::consent::Gate;
use crate::policy::ActivePolicy;
use crate::privacy::{Filtered, Privacy, PRIVATE_APP};
use crate::rules::{RuleEngine, Rules, SeenItems, Window};
use crate::source::{check, Pulled, Source, SourceError};
use crate::spans::{Activity, Observation, SpanConfig, Spans};
use crate::spool::{ConsentGuard, Note, Spool, MAX_SEEN_ITEMS};

/// Longest a sample may take before the display is considered hung.
pub const SAMPLE_DEADLINE: Duration = Duration::from_secs(5);
/// How often an unavailable capture is tried again (a display may appear later).
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(60);
/// First and longest wait before reconnecting to a lost display.
pub const RECONNECT_MIN: Duration = Duration::from_secs(1);
pub const RECONNECT_MAX: Duration = Duration::from_secs(60);

/// Opens a desktop backend: [`crate::capture::open_backend`] in production, a script in tests.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn DesktopBackend>, CaptureError> + Send>;

/// What the pipeline produced from some samples.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub bodies: Vec<EventBody>,
    /// Items seen for the first time.
    pub seen: Vec<String>,
}

/// Privacy, rules and spans for one policy: samples in, events out. No I/O, no clock.
pub struct Pipeline {
    version: u32,
    privacy: Privacy,
    rules: RuleEngine,
    spans: Spans,
    seen: SeenItems,
    last_at_ms: Option<UnixMillis>,
}

impl Pipeline {
    pub fn new(policy: &Policy, seen: SeenItems) -> Result<Pipeline, ValidationError> {
        Ok(Pipeline {
            version: policy.version,
            privacy: Privacy::compile(policy)?,
            rules: RuleEngine::new(Rules::compile(policy)?),
            spans: Spans::new(SpanConfig::new(
                policy.idle_threshold_ms,
                policy.sample_interval_ms,
            )),
            seen,
            last_at_ms: None,
        })
    }

    /// The policy version data from this pipeline was captured under.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Merges one sample.
    pub fn observe(&mut self, sample: &Sample, out: &mut Output) {
        self.last_at_ms = Some(sample.at_ms);
        let (activity, window) = match (&sample.focus, sample.locked) {
            // A locked screen: nobody is working on anything, whatever keeps focus.
            (_, true) | (None, false) => (Activity::default(), None),
            (Some(focus), false) => match self.privacy.filter(focus) {
                Filtered::Private => (
                    Activity {
                        app: PRIVATE_APP.to_string(),
                        ..Activity::default()
                    },
                    None,
                ),
                Filtered::Visible(visible) => (
                    Activity {
                        app: visible.app,
                        title: visible.title,
                        item_id: None,
                        step: None,
                    },
                    Some(Window {
                        app: &focus.app,
                        title: &focus.title,
                        window: focus.window,
                    }),
                ),
            },
        };
        let items = self.rules.focus(window, sample.at_ms, &mut self.seen);
        let (item_id, step) = match self.rules.current() {
            Some((item, step)) => (Some(item.to_string()), step.map(str::to_string)),
            None => (None, None),
        };
        let spans = self.spans.observe(&Observation {
            at_ms: sample.at_ms,
            activity: Activity {
                item_id,
                step,
                ..activity
            },
            idle_ms: sample.idle_ms,
            locked: sample.locked,
        });
        out.bodies
            .extend(spans.into_iter().map(EventBody::ActivitySpan));
        push_items(items, out);
    }

    /// Windows whose closing completes an item.
    pub fn watched_windows(&self) -> Vec<u64> {
        self.rules.watched_windows()
    }

    /// These watched windows no longer exist.
    pub fn closed(&mut self, windows: &[u64], at_ms: UnixMillis, out: &mut Output) {
        for &window in windows {
            let items = self.rules.closed(window, at_ms);
            if !items.is_empty() {
                // The span ran on the item until now; what follows is not on it.
                out.bodies
                    .extend(self.spans.flush(at_ms).map(EventBody::ActivitySpan));
            }
            push_items(items, out);
        }
    }

    /// Capture stops with consent intact (pause, shutdown, lost display, new policy): the open
    /// span is closed and the current item paused, at `at_ms` (clamped near the last sample).
    pub fn stop(&mut self, at_ms: UnixMillis, out: &mut Output) {
        let at_ms = match self.last_at_ms {
            Some(last) => at_ms.max(last),
            None => at_ms,
        };
        let span = self.spans.flush(at_ms);
        // The pause is stamped where the span ended, not at a late flush.
        let paused_at = span.as_ref().map_or(at_ms, |s| s.end_ms);
        out.bodies.extend(span.map(EventBody::ActivitySpan));
        push_items(self.rules.stop(paused_at), out);
        self.last_at_ms = None;
    }

    /// Consent refused or withdrawn: forget the open span and the current item, record nothing.
    pub fn discard(&mut self) {
        self.spans.discard();
        // Stopping the engine emits a `paused` we deliberately drop.
        let _ = self.rules.stop(0);
        self.last_at_ms = None;
    }

    /// When the last sample was taken.
    pub fn last_sample_ms(&self) -> Option<UnixMillis> {
        self.last_at_ms
    }
}

fn push_items(items: Vec<backlight_shared::event::WorkItemEvent>, out: &mut Output) {
    for item in items {
        if item.action == ItemAction::Started {
            out.seen.push(item.item_id.clone());
        }
        out.bodies.push(EventBody::WorkItem(item));
    }
}

/// The desktop as a [`Source`].
pub struct DesktopSource {
    opener: Opener,
    backend: Option<Box<dyn DesktopBackend>>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// Whether "unavailable" was already logged (it is logged once, then retried quietly).
    unavailable_logged: bool,
    spool: Spool,
    policy: watch::Receiver<Arc<ActivePolicy>>,
    applied: Arc<ActivePolicy>,
    gate: watch::Receiver<Gate>,
    pipeline: Pipeline,
    capturing: bool,
    pending: Output,
    pending_version: u32,
    next_sample: Instant,
    note: Option<String>,
}

impl DesktopSource {
    /// A desktop source reading the policy and gate channels of `run`. `seen` are the items
    /// remembered in the spool.
    pub fn new(
        opener: Opener,
        spool: Spool,
        policy: watch::Receiver<Arc<ActivePolicy>>,
        gate: watch::Receiver<Gate>,
        seen: Vec<String>,
    ) -> DesktopSource {
        let applied = policy.borrow().clone();
        let seen = SeenItems::new(seen, MAX_SEEN_ITEMS as usize);
        let pipeline = Pipeline::new(&applied.policy, seen.clone()).unwrap_or_else(|error| {
            // Policies are validated before they are applied, so this is a bug; fall back to
            // the default policy's privacy rather than capture with none.
            tracing::error!(%error, "cannot compile the policy; using the default");
            Pipeline::new(&Policy::default(), seen).expect("the default policy compiles")
        });
        DesktopSource {
            opener,
            backend: None,
            retry_at: None,
            retry_delay: RECONNECT_MIN,
            unavailable_logged: false,
            spool,
            policy,
            pending_version: applied.policy.version,
            applied,
            gate,
            pipeline,
            capturing: false,
            pending: Output::default(),
            next_sample: Instant::now(),
            note: None,
        }
    }

    /// Opens the first desktop backend that works in this session.
    pub fn production_opener() -> Opener {
        Box::new(crate::capture::open_backend)
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.applied.policy.sample_interval_ms.max(1))
    }

    /// Moves pipeline output into `pending`, remembering the version it was captured under.
    fn collect(&mut self, out: Output) {
        if out.bodies.is_empty() {
            return;
        }
        if self.pending.bodies.is_empty() {
            self.pending_version = self.pipeline.version();
        }
        self.pending.bodies.extend(out.bodies);
        self.pending.seen.extend(out.seen);
    }

    /// Hands pending events to the runner, each checked the way the server will.
    fn take(&mut self) -> Pulled {
        let pending = std::mem::take(&mut self.pending);
        let now = now_ms();
        let bodies = pending
            .bodies
            .into_iter()
            .filter_map(|body| match check(body, now) {
                Ok(body) => Some(body),
                Err(error) => {
                    tracing::warn!(%error, "dropping a desktop event the server would refuse");
                    None
                }
            })
            .collect();
        Pulled::Guarded {
            bodies,
            guard: ConsentGuard {
                policy_version: self.pending_version,
                seen_items: pending.seen,
            },
        }
    }

    async fn set_note(&mut self, text: String) {
        if self.note.as_deref() == Some(text.as_str()) {
            return;
        }
        if let Err(error) = self.spool.set_note(Note::Capture, Some(text.clone())).await {
            tracing::debug!(%error, "cannot store the capture state");
        }
        self.note = Some(text);
    }

    fn apply_policy(&mut self, new: Arc<ActivePolicy>) {
        if new.policy == self.applied.policy {
            self.applied = new;
            return;
        }
        let mut out = Output::default();
        if self.capturing {
            self.pipeline.stop(now_ms(), &mut out);
        }
        self.collect(out);
        match Pipeline::new(&new.policy, self.pipeline.seen.clone()) {
            Ok(pipeline) => {
                self.pipeline = pipeline;
                self.applied = new;
                self.next_sample = Instant::now();
            }
            Err(error) => {
                tracing::error!(%error, "cannot compile the new policy; keeping the old one")
            }
        }
    }

    /// The display went away: close what is open at the last sample and reconnect later.
    fn lost(&mut self, reason: &str) {
        tracing::warn!(%reason, retry_in = ?self.retry_delay, "lost the desktop; reconnecting");
        let mut out = Output::default();
        let at = self.pipeline.last_sample_ms().unwrap_or_else(now_ms);
        self.pipeline.stop(at, &mut out);
        self.collect(out);
        self.backend = None;
        self.retry_at = Some(Instant::now() + self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(RECONNECT_MAX);
    }

    /// Waits for the gate or the policy to change, or until `until`.
    async fn wait(&mut self, until: Option<Instant>) {
        let sleep = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            changed = self.gate.changed() => {
                // The runner stopped publishing: we are shutting down.
                if changed.is_err() { std::future::pending::<()>().await }
            }
            changed = self.policy.changed() => {
                if changed.is_err() { std::future::pending::<()>().await }
            }
        }
    }
}

impl Source for DesktopSource {
    fn describe(&self) -> String {
        match &self.backend {
            Some(backend) => format!("desktop ({})", backend.describe()),
            None => "desktop".into(),
        }
    }

    async fn pull(&mut self) -> Result<Pulled, SourceError> {
        loop {
            if !self.pending.bodies.is_empty() {
                return Ok(self.take());
            }
            let latest = self.policy.borrow().clone();
            if !Arc::ptr_eq(&latest, &self.applied) {
                self.apply_policy(latest);
                continue;
            }
            let gate = *self.gate.borrow_and_update();
            if !gate.is_open() {
                if self.capturing {
                    self.capturing = false;
                    if let Gate::Refused { .. } = gate {
                        self.pipeline.discard();
                    } else {
                        let mut out = Output::default();
                        self.pipeline.stop(now_ms(), &mut out);
                        self.collect(out);
                    }
                    tracing::info!(state = %gate.describe(), "desktop capture stopped");
                    continue;
                }
                self.set_note(gate.describe()).await;
                self.wait(None).await;
                continue;
            }
            if !self.capturing {
                self.capturing = true;
                self.next_sample = Instant::now();
            }
            if self.backend.is_none() {
                if let Some(at) = self.retry_at.filter(|at| *at > Instant::now()) {
                    self.wait(Some(at)).await;
                    continue;
                }
                match (self.opener)() {
                    Ok(backend) => {
                        tracing::info!(backend = %backend.describe(), "desktop capture started");
                        self.set_note(format!("capturing ({})", backend.describe()))
                            .await;
                        self.backend = Some(backend);
                        self.retry_at = None;
                        self.retry_delay = RECONNECT_MIN;
                        self.unavailable_logged = false;
                        self.next_sample = Instant::now();
                    }
                    Err(CaptureError::Unavailable(reason)) => {
                        if !self.unavailable_logged {
                            tracing::warn!(%reason, "desktop capture is unavailable in this session; the agent keeps running (explicit item reports still work) and tries again every minute");
                            self.unavailable_logged = true;
                        }
                        self.set_note(format!("unavailable: {reason}")).await;
                        self.retry_at = Some(Instant::now() + UNAVAILABLE_RETRY);
                    }
                    Err(CaptureError::Disconnected(reason)) => {
                        self.set_note(format!("reconnecting: {reason}")).await;
                        self.lost(&reason);
                    }
                }
                continue;
            }
            if let Some(backend) = &self.backend {
                // Deduplicated: only a change of state reaches the spool.
                let note = format!("capturing ({})", backend.describe());
                self.set_note(note).await;
            }
            let next = self.next_sample;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                changed = self.gate.changed() => {
                    if changed.is_err() { std::future::pending::<()>().await }
                    continue;
                }
                changed = self.policy.changed() => {
                    if changed.is_err() { std::future::pending::<()>().await }
                    continue;
                }
            }
            // The next sample is due one interval later; after a stall, not a burst.
            let now = Instant::now();
            self.next_sample = (next + self.interval()).max(now);
            let Some(mut backend) = self.backend.take() else {
                continue;
            };
            let watched = self.pipeline.watched_windows();
            let sampling = tokio::task::spawn_blocking(move || {
                let sample = backend.sample();
                let closed: Vec<u64> = match &sample {
                    // An error while checking a window counts as "still there": completing an
                    // item needs evidence.
                    Ok(_) => watched
                        .into_iter()
                        .filter(|w| matches!(backend.window_exists(*w), Ok(false)))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                (backend, sample, closed)
            });
            match tokio::time::timeout(SAMPLE_DEADLINE, sampling).await {
                Err(_) => self.lost("the desktop did not answer in time"),
                Ok(Err(error)) => self.lost(&format!("the capture thread failed: {error}")),
                Ok(Ok((backend, Ok(sample), closed))) => {
                    self.backend = Some(backend);
                    let mut out = Output::default();
                    self.pipeline.observe(&sample, &mut out);
                    self.pipeline.closed(&closed, sample.at_ms, &mut out);
                    self.collect(out);
                }
                Ok(Ok((_, Err(error), _))) => {
                    let reason = error.to_string();
                    self.set_note(format!("reconnecting: {reason}")).await;
                    self.lost(&reason);
                }
            }
        }
    }

    fn finish(&mut self) -> Option<Pulled> {
        if self.capturing {
            let mut out = Output::default();
            self.pipeline.stop(now_ms(), &mut out);
            self.collect(out);
            self.capturing = false;
        }
        (!self.pending.bodies.is_empty()).then(|| self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Focus;
    use backlight_shared::event::{ActivitySpan, ActivityState, WorkItemEvent};
    use backlight_shared::policy::{ItemRule, TitlePolicy};

    const T0: u64 = 1_800_000_000_000;

    fn policy() -> Policy {
        Policy {
            private_titles: vec!["(?i)bank".into()],
            rules: vec![ItemRule {
                name: "claims".into(),
                app: None,
                title: r"Claim (?P<item>CLM-\d+)".into(),
                complete_title: None,
                complete_on_close: false,
            }],
            ..Policy::default()
        }
    }

    fn sample(s: u64, app: &str, title: &str, window: u64) -> Sample {
        Sample {
            at_ms: T0 + s * 1000,
            focus: Some(Focus {
                app: app.into(),
                process: None,
                product: None,
                title: title.into(),
                window,
            }),
            idle_ms: 0,
            locked: false,
        }
    }

    fn spans(out: &Output) -> Vec<&ActivitySpan> {
        out.bodies
            .iter()
            .filter_map(|b| match b {
                EventBody::ActivitySpan(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn items(out: &Output) -> Vec<&WorkItemEvent> {
        out.bodies
            .iter()
            .filter_map(|b| match b {
                EventBody::WorkItem(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spans_carry_the_rule_item_and_no_title_by_default() {
        let mut p = Pipeline::new(&policy(), SeenItems::new(vec![], 10)).unwrap();
        let mut out = Output::default();
        for s in 0..5 {
            p.observe(&sample(s, "claims-desk", "Claim CLM-9 — Jane", 1), &mut out);
        }
        p.observe(&sample(5, "outlook", "Inbox", 2), &mut out);
        p.stop(T0 + 6_000, &mut out);
        let spans = spans(&out);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].item_id.as_deref(), Some("CLM-9"));
        assert_eq!(spans[0].title, None);
        assert_eq!((spans[0].start_ms, spans[0].end_ms), (T0, T0 + 5_000));
        assert_eq!(spans[1].app, "outlook");
        assert_eq!(spans[1].item_id, None);
        let actions: Vec<_> = items(&out).iter().map(|i| i.action).collect();
        assert_eq!(actions, [ItemAction::Started, ItemAction::Paused]);
        assert_eq!(out.seen, ["CLM-9"]);
    }

    #[test]
    fn private_windows_are_invisible_to_rules_and_titles() {
        let mut policy = policy();
        policy.title_policy = TitlePolicy::Send;
        let mut p = Pipeline::new(&policy, SeenItems::new(vec![], 10)).unwrap();
        let mut out = Output::default();
        // Matches the claims rule too, but the private pattern wins.
        p.observe(&sample(0, "firefox", "Claim CLM-1 at My Bank", 1), &mut out);
        p.observe(&sample(1, "firefox", "Claim CLM-1 at My Bank", 1), &mut out);
        p.stop(T0 + 2_000, &mut out);
        assert!(items(&out).is_empty(), "{out:?}");
        let spans = spans(&out);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].app, PRIVATE_APP);
        assert_eq!(spans[0].title, None);
        assert_eq!(spans[0].item_id, None);
        assert!(!format!("{out:?}").contains("Bank"));
    }

    #[test]
    fn discard_records_nothing() {
        let mut p = Pipeline::new(&policy(), SeenItems::new(vec![], 10)).unwrap();
        let mut out = Output::default();
        p.observe(&sample(0, "claims-desk", "Claim CLM-1", 1), &mut out);
        p.observe(&sample(1, "claims-desk", "Claim CLM-1", 1), &mut out);
        let before = out.bodies.len();
        p.discard();
        p.stop(T0 + 5_000, &mut out);
        assert_eq!(out.bodies.len(), before, "nothing after discard: {out:?}");
    }

    #[test]
    fn locked_screen_pauses_the_item_and_hides_the_app() {
        let mut p = Pipeline::new(&policy(), SeenItems::new(vec![], 10)).unwrap();
        let mut out = Output::default();
        p.observe(&sample(0, "claims-desk", "Claim CLM-1", 1), &mut out);
        let mut locked = sample(3, "claims-desk", "Claim CLM-1", 1);
        locked.locked = true;
        p.observe(&locked, &mut out);
        p.stop(T0 + 4_000, &mut out);
        let spans = spans(&out);
        assert_eq!(spans[1].state, ActivityState::Locked);
        assert_eq!(spans[1].app, "");
        let actions: Vec<_> = items(&out).iter().map(|i| i.action).collect();
        assert_eq!(actions, [ItemAction::Started, ItemAction::Paused]);
    }
}
