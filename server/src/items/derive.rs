//! From an item's events to its state.
//!
//! Rules (documented for users in `docs/status-api.md`):
//! - Events are deduplicated by `(device_id, seq)` (the first copy wins) and ordered by
//!   `(time_ms, device_id, seq)`; arrival order never matters.
//! - **Status** follows the latest `work_item` action: `started`/`resumed` → `in_progress`,
//!   `paused` → `paused`, `completed` → `completed`, `transferred` → `waiting` (handed on, nobody
//!   has picked it up yet). A `started`/`resumed` after `completed` reopens the item. Without any
//!   action, an item with activity spans is `in_progress`; one with no events is `waiting`.
//! - **Handler**: the device of the latest action (none after `transferred`); without actions, the
//!   device of the latest span.
//! - **Step**: the step of the latest event that names one.
//! - **Handle time**: the summed length of `active` spans on the item; `idle` and `locked` spans
//!   do not count.
//! - **Touches**: the number of `started` and `resumed` actions.

use std::collections::HashSet;

use backlight_shared::event::{ActivityState, ItemAction};
use serde::Serialize;
use uuid::Uuid;

/// What an event says about the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    /// A stretch of focused time on the item, `[time_ms, end_ms)`.
    Span { end_ms: u64, state: ActivityState },
    /// A work-item action at `time_ms`.
    Action(ItemAction),
}

/// One event naming the item (an event row of `item_lookup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemEvent {
    pub device_id: Uuid,
    pub seq: u64,
    /// Span start, or the instant of the action.
    pub time_ms: u64,
    pub what: Occurrence,
    /// Empty when unknown.
    pub step: String,
}

impl ItemEvent {
    /// Where the event ends (the span end, or the action's instant).
    pub fn end_ms(&self) -> u64 {
        match self.what {
            Occurrence::Span { end_ms, .. } => end_ms.max(self.time_ms),
            Occurrence::Action(_) => self.time_ms,
        }
    }
}

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Waiting,
    InProgress,
    Paused,
    Completed,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Waiting,
        Status::InProgress,
        Status::Paused,
        Status::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::InProgress => "in_progress",
            Status::Paused => "paused",
            Status::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The state of one item, derived from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemState {
    pub status: Status,
    /// The step of the latest event naming one.
    pub step: Option<String>,
    /// The device that has the item (see the module rules).
    pub handler_device: Option<Uuid>,
    /// Earliest event time.
    pub first_seen_ms: Option<u64>,
    /// First `started` action, or the first active span when no action says so.
    pub started_ms: Option<u64>,
    /// Latest event end.
    pub last_activity_ms: Option<u64>,
    /// Time of the `completed` action, when the item is completed.
    pub completed_ms: Option<u64>,
    /// Active span time on the item.
    pub handle_time_ms: u64,
    /// `started` + `resumed` actions.
    pub touches: u32,
    /// Devices that produced events, in order of first appearance.
    pub devices: Vec<Uuid>,
    /// Every distinct event, ordered.
    pub timeline: Vec<ItemEvent>,
}

/// Dedupes by `(device_id, seq)` (first copy wins) and orders by `(time_ms, device_id, seq)`.
pub fn normalize(mut events: Vec<ItemEvent>) -> Vec<ItemEvent> {
    let mut seen = HashSet::with_capacity(events.len());
    events.retain(|e| seen.insert((e.device_id, e.seq)));
    events.sort_by_key(|e| (e.time_ms, e.device_id, e.seq));
    events
}

/// Derives an item's state from its events (in any order, duplicates allowed).
pub fn derive(events: Vec<ItemEvent>) -> ItemState {
    let timeline = normalize(events);
    let mut state = ItemState {
        status: Status::Waiting,
        step: None,
        handler_device: None,
        first_seen_ms: timeline.first().map(|e| e.time_ms),
        started_ms: None,
        last_activity_ms: timeline.iter().map(ItemEvent::end_ms).max(),
        completed_ms: None,
        handle_time_ms: 0,
        touches: 0,
        devices: Vec::new(),
        timeline: Vec::new(),
    };
    let mut first_active_span = None;
    let mut last_action: Option<&ItemEvent> = None;
    let mut last_span: Option<&ItemEvent> = None;
    for event in &timeline {
        if !state.devices.contains(&event.device_id) {
            state.devices.push(event.device_id);
        }
        if !event.step.is_empty() {
            state.step = Some(event.step.clone());
        }
        match event.what {
            Occurrence::Span {
                end_ms,
                state: presence,
            } => {
                if presence == ActivityState::Active {
                    state.handle_time_ms += end_ms.saturating_sub(event.time_ms);
                    first_active_span.get_or_insert(event.time_ms);
                }
                last_span = Some(event);
            }
            Occurrence::Action(action) => {
                match action {
                    ItemAction::Started => {
                        state.touches += 1;
                        state.started_ms.get_or_insert(event.time_ms);
                    }
                    ItemAction::Resumed => state.touches += 1,
                    ItemAction::Paused | ItemAction::Completed | ItemAction::Transferred => {}
                }
                last_action = Some(event);
            }
        }
    }
    if state.started_ms.is_none() {
        state.started_ms = first_active_span;
    }
    match last_action {
        Some(event) => {
            let Occurrence::Action(action) = event.what else {
                unreachable!("only actions are kept")
            };
            state.status = match action {
                ItemAction::Started | ItemAction::Resumed => Status::InProgress,
                ItemAction::Paused => Status::Paused,
                ItemAction::Completed => Status::Completed,
                ItemAction::Transferred => Status::Waiting,
            };
            state.handler_device = (action != ItemAction::Transferred).then_some(event.device_id);
            if action == ItemAction::Completed {
                state.completed_ms = Some(event.time_ms);
            }
        }
        None => {
            if let Some(span) = last_span {
                state.status = Status::InProgress;
                state.handler_device = Some(span.device_id);
            }
        }
    }
    state.timeline = timeline;
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Uuid = Uuid::from_u128(0xa);
    const B: Uuid = Uuid::from_u128(0xb);

    fn action(device: Uuid, seq: u64, at: u64, action: ItemAction, step: &str) -> ItemEvent {
        ItemEvent {
            device_id: device,
            seq,
            time_ms: at,
            what: Occurrence::Action(action),
            step: step.into(),
        }
    }

    fn span(device: Uuid, seq: u64, start: u64, end: u64, state: ActivityState) -> ItemEvent {
        ItemEvent {
            device_id: device,
            seq,
            time_ms: start,
            what: Occurrence::Span { end_ms: end, state },
            step: String::new(),
        }
    }

    use ActivityState::{Active, Idle, Locked};
    use ItemAction::{Completed, Paused, Resumed, Started, Transferred};

    #[test]
    fn no_events_is_waiting_with_nothing_known() {
        let s = derive(vec![]);
        assert_eq!(s.status, Status::Waiting);
        assert_eq!(
            (s.first_seen_ms, s.last_activity_ms, s.handler_device),
            (None, None, None)
        );
        assert_eq!((s.handle_time_ms, s.touches), (0, 0));
    }

    #[test]
    fn started_then_paused_then_resumed_then_completed() {
        let mut events = vec![action(A, 1, 1_000, Started, "intake")];
        assert_eq!(derive(events.clone()).status, Status::InProgress);
        events.push(action(A, 2, 2_000, Paused, "intake"));
        let s = derive(events.clone());
        assert_eq!(s.status, Status::Paused);
        assert_eq!(s.handler_device, Some(A));
        events.push(action(A, 3, 3_000, Resumed, "assess"));
        let s = derive(events.clone());
        assert_eq!(
            (s.status, s.step.as_deref(), s.touches),
            (Status::InProgress, Some("assess"), 2)
        );
        events.push(action(A, 4, 4_000, Completed, ""));
        let s = derive(events);
        assert_eq!(s.status, Status::Completed);
        assert_eq!(s.completed_ms, Some(4_000));
        assert_eq!(
            s.step.as_deref(),
            Some("assess"),
            "an action without a step keeps the last known step"
        );
        assert_eq!(
            (s.first_seen_ms, s.started_ms, s.last_activity_ms),
            (Some(1_000), Some(1_000), Some(4_000))
        );
    }

    #[test]
    fn transferred_is_waiting_without_handler_until_someone_starts() {
        let events = vec![
            action(A, 1, 1_000, Started, "s"),
            action(A, 2, 2_000, Transferred, "s"),
        ];
        let s = derive(events.clone());
        assert_eq!((s.status, s.handler_device), (Status::Waiting, None));
        let mut events = events;
        events.push(action(B, 1, 3_000, Started, "s2"));
        let s = derive(events);
        assert_eq!((s.status, s.handler_device), (Status::InProgress, Some(B)));
        assert_eq!(s.devices, vec![A, B]);
        assert_eq!(s.started_ms, Some(1_000));
    }

    #[test]
    fn started_after_completed_reopens() {
        let s = derive(vec![
            action(A, 1, 1_000, Started, ""),
            action(A, 2, 2_000, Completed, ""),
            action(B, 5, 3_000, Resumed, ""),
        ]);
        assert_eq!(
            (s.status, s.completed_ms, s.handler_device),
            (Status::InProgress, None, Some(B))
        );
    }

    #[test]
    fn duplicates_count_once() {
        let events = vec![
            action(A, 1, 1_000, Started, ""),
            span(A, 2, 1_000, 61_000, Active),
            action(A, 1, 1_000, Started, ""),
            span(A, 2, 1_000, 61_000, Active),
            span(A, 2, 1_000, 61_000, Active),
        ];
        let s = derive(events);
        assert_eq!(
            (s.handle_time_ms, s.touches, s.timeline.len()),
            (60_000, 1, 2)
        );
    }

    #[test]
    fn out_of_order_arrival_gives_the_same_answer() {
        let ordered = vec![
            action(A, 1, 1_000, Started, "a"),
            span(A, 2, 1_000, 5_000, Active),
            action(A, 3, 5_000, Paused, "a"),
            action(B, 7, 9_000, Resumed, "b"),
            span(B, 8, 9_000, 12_000, Active),
        ];
        let mut shuffled = ordered.clone();
        shuffled.reverse();
        shuffled.swap(0, 2);
        let (x, y) = (derive(ordered), derive(shuffled));
        assert_eq!(x, y);
        assert_eq!(
            (x.status, x.handler_device, x.step.as_deref()),
            (Status::InProgress, Some(B), Some("b"))
        );
    }

    #[test]
    fn same_instant_orders_by_device_then_seq() {
        // Two actions at the same millisecond: (device, seq) decides, so B's completion is last.
        let s = derive(vec![
            action(B, 1, 1_000, Completed, ""),
            action(A, 9, 1_000, Started, ""),
        ]);
        assert_eq!(s.status, Status::Completed);
    }

    #[test]
    fn idle_and_locked_do_not_count_as_handle_time() {
        let s = derive(vec![
            span(A, 1, 0, 10_000, Active),
            span(A, 2, 10_000, 70_000, Idle),
            span(A, 3, 70_000, 80_000, Locked),
            span(A, 4, 80_000, 85_000, Active),
        ]);
        assert_eq!(s.handle_time_ms, 15_000);
        assert_eq!(s.last_activity_ms, Some(85_000));
    }

    #[test]
    fn spans_without_actions_mean_in_progress_by_the_last_device() {
        let s = derive(vec![
            span(A, 1, 0, 1_000, Active),
            span(B, 1, 2_000, 3_000, Idle),
        ]);
        assert_eq!(
            (s.status, s.handler_device, s.started_ms),
            (Status::InProgress, Some(B), Some(0))
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Status::parse("done"), None);
    }
}
