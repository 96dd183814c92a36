//! The policy as an agent receives it, end to end: the JSON parser, validation, the widening
//! check against the built-in default, and the rule engine driven by a sequence of focused
//! windows. A policy that validates must compile into rules; the rules must never panic,
//! whatever the titles; and every work-item event they emit must pass the same validation the
//! server runs (an agent must never spool what the server would refuse).
//!
//! Input: `<policy JSON>\0<window>\0<window>…`, each window `app\ttitle` (a window id from its
//! position; an empty window means "nothing focused", `!` closes the previous one).
#![no_main]

/// The agent's module itself (see fuzz/Cargo.toml for why it is compiled from source).
#[path = "../../agent/src/rules.rs"]
#[allow(dead_code)]
mod rules;

use backlight_shared::event::{Event, EventBody};
use backlight_shared::policy::Policy;
use backlight_shared::policy_change;
use backlight_shared::validate::validate_event;
use libfuzzer_sys::fuzz_target;
use rules::{RuleEngine, Rules, SeenItems, Window};

const NOW: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let Some(policy_json) = parts.next() else {
        return;
    };
    let Ok(policy) = serde_json::from_slice::<Policy>(policy_json) else {
        return;
    };
    if policy.validate().is_err() {
        return;
    }
    let _ = policy_change::widenings(&Policy::default(), &policy);
    let _ = policy_change::changes(&Policy::default(), &policy);
    let rules = Rules::compile(&policy).expect("a validated policy compiles");
    let mut engine = RuleEngine::new(rules);
    let mut seen = SeenItems::new(Vec::new(), 16);
    let mut emitted = Vec::new();
    let mut at = NOW - 60_000;
    for (i, raw) in parts.take(64).enumerate() {
        at += 1_000;
        let text = String::from_utf8_lossy(raw);
        if text == "!" {
            emitted.extend(engine.closed((i as u64).saturating_sub(1), at));
            continue;
        }
        let window = text.split_once('\t').map(|(app, title)| Window {
            app,
            title,
            window: i as u64,
        });
        emitted.extend(engine.focus(window, at, &mut seen));
    }
    emitted.extend(engine.stop(at + 1_000));
    for (seq, item) in emitted.into_iter().enumerate() {
        let event = Event {
            seq: seq as u64 + 1,
            id: uuid::Uuid::new_v4(),
            body: EventBody::WorkItem(item),
        };
        if let Err(e) = validate_event(&event, NOW) {
            panic!("the rules emitted an event the server refuses: {e}: {event:?}");
        }
    }
});
