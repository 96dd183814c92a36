//! Realistic demo data: a claims handler working through claims.
//!
//! The simulated person picks up a claim (`CLM-####`), works on it across a few applications
//! (mostly `claims-desk`, some `outlook` and `chromium`), moves it through the steps intake →
//! review → decision, now and then pauses it for an idle stretch and resumes, and completes it.
//! Between claims there are short idle stretches.
//!
//! Events are emitted at `rate` per second of wall-clock time and stamped with the real clock:
//! spans are contiguous (each starts where the previous ended) and end now, so the data is
//! valid for the server and looks like a (very fast) working day on dashboards.

use std::collections::VecDeque;
use std::time::Duration;

use backlight_shared::event::{
    ActivitySpan, ActivityState, EventBody, ItemAction, ItemSource, WorkItemEvent,
};
use backlight_shared::{now_ms, UnixMillis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::{Pulled, Source, SourceError};
use crate::spool::SourceProgress;

/// Most events returned by one pull (one spool transaction).
const MAX_EVENTS_PER_PULL: u64 = 1_000;
/// Shortest pause between pulls, so high rates are committed in batches, not one by one.
const MIN_PULL_INTERVAL: Duration = Duration::from_millis(50);
/// After a stall (laptop suspended), at most this many seconds' worth of events are caught up;
/// replaying hours of backlog at once would only produce a burst of meaningless data.
const MAX_CATCH_UP_SECONDS: f64 = 5.0;

/// Slowest and fastest rates, in events per second.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 100_000.0;
/// A stand-in for "far in the future" when a due time cannot be represented.
const MAX_WAIT: Duration = Duration::from_secs(3600);

const STEPS: [&str; 3] = ["intake", "review", "decision"];

/// Generates demo events at a fixed rate.
pub struct SyntheticSource {
    rate: f64,
    started: Instant,
    emitted: u64,
    last_pull: Option<Instant>,
    desk: Desk,
}

impl SyntheticSource {
    /// A source producing `rate` events per second. The command line only lets positive rates
    /// through; anything else is clamped here so the arithmetic below stays finite.
    pub fn new(rate: f64) -> SyntheticSource {
        let rate = if rate.is_finite() {
            rate.clamp(MIN_RATE, MAX_RATE)
        } else {
            MIN_RATE
        };
        SyntheticSource {
            rate,
            started: Instant::now(),
            emitted: 0,
            last_pull: None,
            desk: Desk::new(StdRng::from_os_rng(), now_ms()),
        }
    }

    /// When event number `n` (0-based) is due.
    fn due_at(&self, n: u64) -> Instant {
        let offset = Duration::try_from_secs_f64(n as f64 / self.rate).unwrap_or(MAX_WAIT);
        self.started
            .checked_add(offset)
            .unwrap_or_else(|| Instant::now() + MAX_WAIT)
    }
}

impl Source for SyntheticSource {
    fn describe(&self) -> String {
        format!("synthetic ({}/s)", self.rate)
    }

    async fn pull(&mut self) -> Result<Pulled, SourceError> {
        let mut wake = self.due_at(self.emitted + 1);
        if let Some(last) = self.last_pull {
            wake = wake.max(last + MIN_PULL_INTERVAL);
        }
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        self.last_pull = Some(now);
        let due = ((now - self.started).as_secs_f64() * self.rate) as u64;
        let catch_up = (self.rate * MAX_CATCH_UP_SECONDS).max(1.0) as u64;
        self.emitted = self.emitted.max(due.saturating_sub(catch_up));
        let count = due.saturating_sub(self.emitted).min(MAX_EVENTS_PER_PULL);
        self.emitted += count;
        let at = now_ms();
        let bodies = (0..count).map(|_| self.desk.next(at)).collect();
        Ok(Pulled::Events {
            bodies,
            progress: SourceProgress::default(),
        })
    }
}

/// What the simulated person does next; turned into an event when it happens.
#[derive(Debug, Clone)]
enum Plan {
    Item(ItemAction),
    Work { app: &'static str, step: usize },
    Idle { state: ActivityState },
}

#[derive(Debug, Clone)]
struct Claim {
    id: String,
    step: usize,
}

/// The simulated desk: a queue of planned actions, refilled one claim at a time.
struct Desk {
    rng: StdRng,
    plan: VecDeque<Plan>,
    claim: Option<Claim>,
    /// End of the last span: the next span starts here, so spans never overlap.
    last_end_ms: UnixMillis,
    last_app: &'static str,
}

impl Desk {
    fn new(rng: StdRng, now_ms: UnixMillis) -> Desk {
        Desk {
            rng,
            plan: VecDeque::new(),
            claim: None,
            last_end_ms: now_ms,
            last_app: "claims-desk",
        }
    }

    /// The next event, stamped `now_ms`.
    fn next(&mut self, now_ms: UnixMillis) -> EventBody {
        if self.plan.is_empty() {
            self.plan_claim();
        }
        let plan = self.plan.pop_front().unwrap_or(Plan::Idle {
            state: ActivityState::Idle,
        });
        self.materialize(plan, now_ms)
    }

    /// Plans the handling of one new claim, from start to completion.
    fn plan_claim(&mut self) {
        let id = format!("CLM-{:04}", self.rng.random_range(1..10_000));
        self.claim = Some(Claim { id, step: 0 });
        if self.rng.random_bool(0.5) {
            // A short break between claims.
            self.plan.push_back(Plan::Idle {
                state: ActivityState::Idle,
            });
        }
        self.plan.push_back(Plan::Item(ItemAction::Started));
        for step in 0..STEPS.len() {
            for _ in 0..self.rng.random_range(2..6) {
                let app = self.pick_app();
                self.plan.push_back(Plan::Work { app, step });
            }
            if self.rng.random_bool(0.25) {
                let state = if self.rng.random_bool(0.2) {
                    ActivityState::Locked
                } else {
                    ActivityState::Idle
                };
                self.plan.push_back(Plan::Item(ItemAction::Paused));
                self.plan.push_back(Plan::Idle { state });
                self.plan.push_back(Plan::Item(ItemAction::Resumed));
            }
        }
        self.plan.push_back(Plan::Item(ItemAction::Completed));
    }

    fn pick_app(&mut self) -> &'static str {
        match self.rng.random_range(0..10) {
            0..6 => "claims-desk",
            6..8 => "outlook",
            _ => "chromium",
        }
    }

    fn materialize(&mut self, plan: Plan, now_ms: UnixMillis) -> EventBody {
        let start_ms = self.last_end_ms.min(now_ms);
        match plan {
            Plan::Item(action) => {
                let (item_id, step) = match &mut self.claim {
                    Some(claim) => {
                        if action == ItemAction::Completed {
                            claim.step = STEPS.len() - 1;
                        }
                        (claim.id.clone(), STEPS[claim.step.min(STEPS.len() - 1)])
                    }
                    None => ("CLM-0000".to_string(), STEPS[0]),
                };
                if action == ItemAction::Completed {
                    self.claim = None;
                }
                EventBody::WorkItem(WorkItemEvent {
                    item_id,
                    action,
                    step: Some(step.to_string()),
                    at_ms: now_ms,
                    source: ItemSource::Rule,
                })
            }
            Plan::Work { app, step } => {
                self.last_end_ms = now_ms;
                self.last_app = app;
                let claim = self.claim.as_mut();
                let item_id = claim.map(|c| {
                    c.step = step;
                    c.id.clone()
                });
                EventBody::ActivitySpan(ActivitySpan {
                    app: app.to_string(),
                    title: None,
                    start_ms,
                    end_ms: now_ms,
                    state: ActivityState::Active,
                    item_id,
                    step: Some(STEPS[step.min(STEPS.len() - 1)].to_string()),
                })
            }
            Plan::Idle { state } => {
                self.last_end_ms = now_ms;
                EventBody::ActivitySpan(ActivitySpan {
                    // A locked screen has no focused application.
                    app: if state == ActivityState::Locked {
                        String::new()
                    } else {
                        self.last_app.to_string()
                    },
                    title: None,
                    start_ms,
                    end_ms: now_ms,
                    state,
                    item_id: None,
                    step: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::check;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn desk_produces_valid_contiguous_realistic_data() {
        let mut desk = Desk::new(StdRng::seed_from_u64(7), NOW);
        let mut last_end = NOW;
        let mut started = 0;
        let mut completed = 0;
        let mut apps = std::collections::BTreeSet::new();
        let mut idle = 0;
        for i in 0..2_000u64 {
            let at = NOW + i * 500;
            let body = desk.next(at);
            let body = check(body, at).expect("synthetic events must be valid");
            match body {
                EventBody::ActivitySpan(span) => {
                    assert_eq!(span.start_ms, last_end, "spans are contiguous");
                    assert!(span.end_ms >= span.start_ms);
                    last_end = span.end_ms;
                    if span.state == ActivityState::Active {
                        apps.insert(span.app);
                        assert!(span
                            .item_id
                            .as_deref()
                            .is_some_and(|id| id.starts_with("CLM-")));
                    } else {
                        idle += 1;
                    }
                }
                EventBody::WorkItem(item) => {
                    assert!(item.item_id.starts_with("CLM-") && item.item_id.len() == 8);
                    match item.action {
                        ItemAction::Started => started += 1,
                        ItemAction::Completed => completed += 1,
                        _ => {}
                    }
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(
            apps.into_iter().collect::<Vec<_>>(),
            ["chromium", "claims-desk", "outlook"]
        );
        assert!(
            started >= 50 && completed >= started - 1,
            "{started} {completed}"
        );
        assert!(idle > 20);
    }

    #[tokio::test(start_paused = true)]
    async fn emits_at_the_requested_rate() {
        let mut source = SyntheticSource::new(20.0);
        let mut total = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Pulled::Events { bodies, .. } = source.pull().await.unwrap() {
                total += bodies.len();
            }
        }
        assert!(
            (195..=205).contains(&total),
            "{total} events in 10 s at 20/s"
        );
    }
}
