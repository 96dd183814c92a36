//! Work-item rules: from focus changes to `started` / `resumed` / `paused` / `completed`
//! events. Pure: the caller passes the focused window, the time and the items seen before.
//!
//! # Semantics
//!
//! Rules come from the policy ([`ItemRule`]), tried in order; the first whose `app` regex (if
//! any) matches the app and whose `title` regex matches the title names the item (capture
//! `item`) and optionally its step (capture `step`).
//!
//! - Focus enters a window naming item X: `started` if this agent never saw X before (see
//!   [`SeenItems`]), else `resumed`. If another item Y was current, Y is `paused` first.
//! - Focus moves to a window naming no item (or a private window, nothing, a locked screen):
//!   the current item is `paused`.
//! - Focus stays on item X but the step changes (a tab or form in the same window, or another
//!   window of the same item): `resumed` with the new step. A title without a step keeps the
//!   step known so far.
//! - A title matching a rule's `complete_title` (capture `item`): that item is `completed`.
//! - With `complete_on_close`, the item's window disappearing: the item is `completed`. The
//!   engine remembers at most [`MAX_WATCHED_WINDOWS`] such windows (oldest forgotten).
//!
//! Only changes count: the same window with the same title sampled again emits nothing, and an
//! item is completed once — coming back to its "closed" window does not complete it again
//! (until it is started or resumed in between).

use std::collections::{HashSet, VecDeque};

use backlight_shared::batch::limits;
use backlight_shared::event::{ItemAction, ItemSource, WorkItemEvent};
use backlight_shared::policy::{compile, ItemRule, Policy};
use backlight_shared::validate::{clean, ValidationError};
use backlight_shared::UnixMillis;
use regex::Regex;

/// Most windows watched for closing (rules with `complete_on_close`).
pub const MAX_WATCHED_WINDOWS: usize = 64;
/// Most recently completed items remembered, so looking at a completed item's window again
/// does not complete it twice.
pub const MAX_RECENTLY_COMPLETED: usize = 64;

/// The rules of a policy, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    app: Option<Regex>,
    title: Regex,
    complete_title: Option<Regex>,
    complete_on_close: bool,
}

impl Rules {
    /// Compiles the rules of `policy` (already validated, so errors are unexpected).
    pub fn compile(policy: &Policy) -> Result<Rules, ValidationError> {
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| CompiledRule::new(&format!("rules[{i}]"), rule))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }
}

impl CompiledRule {
    fn new(prefix: &str, rule: &ItemRule) -> Result<CompiledRule, ValidationError> {
        Ok(CompiledRule {
            app: rule
                .app
                .as_deref()
                .map(|a| compile(&format!("{prefix}.app"), a))
                .transpose()?,
            title: compile(&format!("{prefix}.title"), &rule.title)?,
            complete_title: rule
                .complete_title
                .as_deref()
                .map(|c| compile(&format!("{prefix}.complete_title"), c))
                .transpose()?,
            complete_on_close: rule.complete_on_close,
        })
    }

    fn app_matches(&self, app: &str) -> bool {
        self.app.as_ref().is_none_or(|re| re.is_match(app))
    }
}

/// The focused window as rules see it (never a private one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'a> {
    pub app: &'a str,
    pub title: &'a str,
    pub window: u64,
}

/// Items this agent has seen, bounded: the oldest are forgotten first. Persisted by the caller
/// (the spool's `seen_items`), so `started` means "first time on this desktop" across restarts.
#[derive(Debug, Clone)]
pub struct SeenItems {
    set: HashSet<String>,
    order: VecDeque<String>,
    max: usize,
}

impl SeenItems {
    /// Starts from `items` (newest first, as the spool returns them), keeping at most `max`.
    pub fn new(items: Vec<String>, max: usize) -> SeenItems {
        let mut seen = SeenItems {
            set: HashSet::new(),
            order: VecDeque::new(),
            max: max.max(1),
        };
        for item in items.into_iter().take(seen.max).rev() {
            seen.insert(item);
        }
        seen
    }

    pub fn contains(&self, item: &str) -> bool {
        self.set.contains(item)
    }

    /// Remembers `item`; returns whether it is new.
    pub fn insert(&mut self, item: String) -> bool {
        if self.set.contains(&item) {
            return false;
        }
        if self.order.len() >= self.max {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(item.clone());
        self.set.insert(item);
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    item: String,
    step: Option<String>,
}

/// Applies rules to focus changes, remembering the current item.
#[derive(Debug, Clone)]
pub struct RuleEngine {
    rules: Rules,
    current: Option<Current>,
    /// The last window and title given, to act on changes only.
    last: Option<(u64, String)>,
    /// Windows whose closing completes an item: (window, item, step).
    watched: VecDeque<(u64, String, Option<String>)>,
    /// Items completed recently (bounded), not to be completed again.
    completed: VecDeque<String>,
}

impl RuleEngine {
    pub fn new(rules: Rules) -> RuleEngine {
        RuleEngine {
            rules,
            current: None,
            last: None,
            watched: VecDeque::new(),
            completed: VecDeque::new(),
        }
    }

    /// The item (and step) focus is on, which activity spans are attributed to.
    pub fn current(&self) -> Option<(&str, Option<&str>)> {
        self.current
            .as_ref()
            .map(|c| (c.item.as_str(), c.step.as_deref()))
    }

    /// Focus is now on `window` (`None`: nothing a rule may see has focus). Returns the
    /// resulting events, stamped `at_ms`.
    pub fn focus(
        &mut self,
        window: Option<Window<'_>>,
        at_ms: UnixMillis,
        seen: &mut SeenItems,
    ) -> Vec<WorkItemEvent> {
        let key = window.map(|w| (w.window, w.title.to_string()));
        if key == self.last {
            return Vec::new();
        }
        self.last = key;
        let mut events = Vec::new();
        let Some(window) = window else {
            self.leave(at_ms, &mut events);
            return events;
        };
        if let Some(item) = self.completion(window) {
            let step = self
                .current
                .as_ref()
                .filter(|c| c.item == item)
                .and_then(|c| c.step.clone());
            if self.current.as_ref().is_some_and(|c| c.item == item) {
                self.current = None;
            }
            self.leave(at_ms, &mut events);
            self.watched.retain(|(_, watched, _)| *watched != item);
            if self.mark_completed(&item) {
                events.push(event(item, ItemAction::Completed, step, at_ms));
            }
            return events;
        }
        let Some((rule, item, step)) = self.matching(window) else {
            self.leave(at_ms, &mut events);
            return events;
        };
        if self.rules.rules[rule].complete_on_close {
            self.watch(window.window, &item, step.as_deref());
        }
        match &mut self.current {
            Some(current) if current.item == item => {
                if step.is_some() && step != current.step {
                    current.step = step.clone();
                    events.push(event(item, ItemAction::Resumed, step, at_ms));
                }
            }
            _ => {
                self.leave(at_ms, &mut events);
                let action = if seen.insert(item.clone()) {
                    ItemAction::Started
                } else {
                    ItemAction::Resumed
                };
                self.completed.retain(|done| *done != item);
                self.current = Some(Current {
                    item: item.clone(),
                    step: step.clone(),
                });
                events.push(event(item, action, step, at_ms));
            }
        }
        events
    }

    /// Windows whose closing completes an item; the caller checks which still exist.
    pub fn watched_windows(&self) -> Vec<u64> {
        self.watched.iter().map(|(w, _, _)| *w).collect()
    }

    /// `window` no longer exists: completes the item it was watched for.
    pub fn closed(&mut self, window: u64, at_ms: UnixMillis) -> Vec<WorkItemEvent> {
        let Some(index) = self.watched.iter().position(|(w, _, _)| *w == window) else {
            return Vec::new();
        };
        let Some((_, item, step)) = self.watched.remove(index) else {
            return Vec::new();
        };
        // Another window of the same item may still be open and watched; the item is
        // completed once, when the first of them closes.
        self.watched.retain(|(_, watched, _)| *watched != item);
        if self.current.as_ref().is_some_and(|c| c.item == item) {
            self.current = None;
        }
        if self.last.as_ref().is_some_and(|(w, _)| *w == window) {
            self.last = None;
        }
        if !self.mark_completed(&item) {
            return Vec::new();
        }
        vec![event(item, ItemAction::Completed, step, at_ms)]
    }

    /// Remembers `item` as completed; false when it already was.
    fn mark_completed(&mut self, item: &str) -> bool {
        if self.completed.iter().any(|done| done == item) {
            return false;
        }
        if self.completed.len() >= MAX_RECENTLY_COMPLETED {
            self.completed.pop_front();
        }
        self.completed.push_back(item.to_string());
        true
    }

    /// Capture stops (pause, shutdown, lost display, new policy): the current item is paused
    /// and the next focus counts as a change.
    pub fn stop(&mut self, at_ms: UnixMillis) -> Vec<WorkItemEvent> {
        let mut events = Vec::new();
        self.leave(at_ms, &mut events);
        self.last = None;
        events
    }

    fn leave(&mut self, at_ms: UnixMillis, events: &mut Vec<WorkItemEvent>) {
        if let Some(current) = self.current.take() {
            events.push(event(current.item, ItemAction::Paused, current.step, at_ms));
        }
    }

    fn completion(&self, window: Window<'_>) -> Option<String> {
        self.rules.rules.iter().find_map(|rule| {
            let re = rule.complete_title.as_ref()?;
            if !rule.app_matches(window.app) {
                return None;
            }
            capture(re, window.title, "item", limits::MAX_ITEM_ID_LEN)
        })
    }

    fn matching(&self, window: Window<'_>) -> Option<(usize, String, Option<String>)> {
        self.rules.rules.iter().enumerate().find_map(|(i, rule)| {
            if !rule.app_matches(window.app) {
                return None;
            }
            let captures = rule.title.captures(window.title)?;
            let item = usable(captures.name("item")?.as_str(), limits::MAX_ITEM_ID_LEN)?;
            let step = captures
                .name("step")
                .and_then(|s| usable(s.as_str(), limits::MAX_STEP_LEN));
            Some((i, item, step))
        })
    }

    fn watch(&mut self, window: u64, item: &str, step: Option<&str>) {
        self.watched.retain(|(w, _, _)| *w != window);
        if self.watched.len() >= MAX_WATCHED_WINDOWS {
            self.watched.pop_front();
        }
        self.watched
            .push_back((window, item.to_string(), step.map(str::to_string)));
    }
}

fn capture(re: &Regex, text: &str, name: &str, max: usize) -> Option<String> {
    usable(re.captures(text)?.name(name)?.as_str(), max)
}

/// A captured id or step as the protocol accepts it; `None` when nothing usable is left.
fn usable(text: &str, max: usize) -> Option<String> {
    let cleaned = clean(text.trim(), max);
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_string())
}

fn event(
    item_id: String,
    action: ItemAction,
    step: Option<String>,
    at_ms: UnixMillis,
) -> WorkItemEvent {
    WorkItemEvent {
        item_id,
        action,
        step,
        at_ms,
        source: ItemSource::Rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(rules: Vec<ItemRule>) -> RuleEngine {
        let policy = Policy {
            rules,
            ..Policy::default()
        };
        policy.validate().unwrap();
        RuleEngine::new(Rules::compile(&policy).unwrap())
    }

    fn claims_rule() -> ItemRule {
        ItemRule {
            name: "claims".into(),
            app: Some("^claims-desk$".into()),
            title: r"Claim (?P<item>CLM-\d+)(?: — (?P<step>\w+))?".into(),
            complete_title: Some(r"Claim (?P<item>CLM-\d+) — closed".into()),
            complete_on_close: false,
        }
    }

    fn w<'a>(app: &'a str, title: &'a str, window: u64) -> Option<Window<'a>> {
        Some(Window { app, title, window })
    }

    /// Events as `action item [step]` strings, easy to compare.
    fn names(events: Vec<WorkItemEvent>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| {
                assert_eq!(e.source, ItemSource::Rule);
                let mut s = format!("{} {}", e.action.as_str(), e.item_id);
                if let Some(step) = e.step {
                    s.push_str(&format!(" {step}"));
                }
                s
            })
            .collect()
    }

    fn seen() -> SeenItems {
        SeenItems::new(Vec::new(), 100)
    }

    #[test]
    fn start_pause_resume_across_focus_changes() {
        let mut e = engine(vec![claims_rule()]);
        let mut seen = seen();
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-1", 1), 1, &mut seen)),
            ["started CLM-1"]
        );
        assert_eq!(e.current(), Some(("CLM-1", None)));
        // The same window sampled again: nothing.
        assert!(e
            .focus(w("claims-desk", "Claim CLM-1", 1), 2, &mut seen)
            .is_empty());
        assert_eq!(
            names(e.focus(w("outlook", "Inbox", 2), 3, &mut seen)),
            ["paused CLM-1"]
        );
        assert_eq!(e.current(), None);
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-1", 1), 4, &mut seen)),
            ["resumed CLM-1"]
        );
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-2", 3), 5, &mut seen)),
            ["paused CLM-1", "started CLM-2"]
        );
        assert_eq!(names(e.stop(6)), ["paused CLM-2"]);
    }

    #[test]
    fn app_regex_restricts_rules() {
        let mut e = engine(vec![claims_rule()]);
        assert!(e
            .focus(w("firefox", "Claim CLM-1", 1), 1, &mut seen())
            .is_empty());
    }

    #[test]
    fn steps_are_captured_and_step_changes_resume() {
        let mut e = engine(vec![claims_rule()]);
        let mut seen = seen();
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-7 — intake", 1), 1, &mut seen)),
            ["started CLM-7 intake"]
        );
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-7 — assess", 1), 2, &mut seen)),
            ["resumed CLM-7 assess"]
        );
        // No step in the title: the known step stays, no event.
        assert!(e
            .focus(w("claims-desk", "Claim CLM-7", 2), 3, &mut seen)
            .is_empty());
        assert_eq!(e.current(), Some(("CLM-7", Some("assess"))));
    }

    #[test]
    fn seen_items_make_resumed_across_restarts() {
        let mut seen = SeenItems::new(vec!["CLM-1".into()], 100);
        let mut e = engine(vec![claims_rule()]);
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-1", 1), 1, &mut seen)),
            ["resumed CLM-1"]
        );
    }

    #[test]
    fn seen_items_are_bounded() {
        let mut seen = SeenItems::new(Vec::new(), 2);
        assert!(seen.insert("a".into()));
        assert!(seen.insert("b".into()));
        assert!(!seen.insert("b".into()));
        assert!(seen.insert("c".into()));
        assert_eq!(seen.len(), 2);
        assert!(!seen.contains("a"));
        // Newest first in, so the newest two are kept.
        let seen = SeenItems::new(vec!["z".into(), "y".into(), "x".into()], 2);
        assert!(seen.contains("z") && seen.contains("y") && !seen.contains("x"));
    }

    #[test]
    fn complete_by_title() {
        let mut e = engine(vec![claims_rule()]);
        let mut seen = seen();
        e.focus(w("claims-desk", "Claim CLM-3 — review", 1), 1, &mut seen);
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-3 — closed", 1), 2, &mut seen)),
            ["completed CLM-3 review"]
        );
        // Completed: leaving it does not pause it, and coming back to it does not complete
        // it again.
        assert!(e.focus(w("outlook", "Inbox", 2), 3, &mut seen).is_empty());
        assert!(e
            .focus(w("claims-desk", "Claim CLM-3 — closed", 1), 4, &mut seen)
            .is_empty());
        // Reopened, it can be completed again.
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-3", 1), 5, &mut seen)),
            ["resumed CLM-3"]
        );
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-3 — closed", 1), 6, &mut seen)),
            ["completed CLM-3"]
        );
    }

    #[test]
    fn completing_another_item_pauses_the_current_one() {
        let mut e = engine(vec![claims_rule()]);
        let mut seen = seen();
        e.focus(w("claims-desk", "Claim CLM-3", 1), 1, &mut seen);
        assert_eq!(
            names(e.focus(w("claims-desk", "Claim CLM-4 — closed", 2), 2, &mut seen)),
            ["paused CLM-3", "completed CLM-4"]
        );
    }

    #[test]
    fn complete_on_close() {
        let mut rule = claims_rule();
        rule.complete_on_close = true;
        let mut e = engine(vec![rule]);
        let mut seen = seen();
        e.focus(w("claims-desk", "Claim CLM-5 — assess", 10), 1, &mut seen);
        e.focus(w("outlook", "Inbox", 11), 2, &mut seen);
        assert_eq!(e.watched_windows(), [10]);
        assert!(e.closed(99, 3).is_empty());
        assert_eq!(names(e.closed(10, 3)), ["completed CLM-5 assess"]);
        assert!(e.watched_windows().is_empty());
        assert!(e.closed(10, 4).is_empty(), "completed once");
    }

    #[test]
    fn closing_the_focused_item_window_completes_it_without_pause() {
        let mut rule = claims_rule();
        rule.complete_on_close = true;
        let mut e = engine(vec![rule]);
        let mut seen = seen();
        e.focus(w("claims-desk", "Claim CLM-5", 10), 1, &mut seen);
        assert_eq!(names(e.closed(10, 2)), ["completed CLM-5"]);
        assert!(e.focus(None, 3, &mut seen).is_empty());
    }

    #[test]
    fn hidden_windows_pause_the_item() {
        // Private windows, locked screens and empty desktops reach the engine as `None`.
        let mut e = engine(vec![claims_rule()]);
        let mut seen = seen();
        e.focus(w("claims-desk", "Claim CLM-1", 1), 1, &mut seen);
        assert_eq!(names(e.focus(None, 2, &mut seen)), ["paused CLM-1"]);
        assert!(e.focus(None, 3, &mut seen).is_empty());
    }

    #[test]
    fn captured_ids_are_cleaned_and_blank_ones_ignored() {
        let mut e = engine(vec![ItemRule {
            name: "any".into(),
            app: None,
            title: r"Case (?P<item>[^|]*)\|".into(),
            complete_title: None,
            complete_on_close: false,
        }]);
        let mut seen = seen();
        assert!(e.focus(w("app", "Case  |", 1), 1, &mut seen).is_empty());
        assert_eq!(
            names(e.focus(w("app", "Case A\tB|", 2), 2, &mut seen)),
            ["started A B"]
        );
    }
}
