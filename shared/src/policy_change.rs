//! What changes between two policies, and whether the new one records more than the old.
//!
//! Consent is given to a notice *version*. A policy that records more than the one the employee
//! agreed to — titles sent instead of dropped, a private-window pattern removed, a new item rule
//! — must therefore carry a higher version, so every employee is asked again. The server refuses
//! to save such a policy without a new version ([`widenings`]), and the agent refuses to apply one
//! (a server that was bypassed, a database edited by hand). Every saved change is audited with
//! the list [`changes`] makes.
//!
//! What counts as recording more (each a separate [`widenings`] entry):
//! - `title_policy` moving up `drop` → `hash` → `send`;
//! - a `private_titles` or `app_deny` pattern removed;
//! - `app_allow` emptied (every app recorded by name), or a pattern added to a non-empty list;
//! - an item rule that the previous policy does not have exactly (new, or changed).
//!
//! Sampling and upload intervals and the idle threshold change how often, not what, is recorded;
//! they are listed by [`changes`] but are not widenings.

use std::collections::BTreeSet;

use crate::policy::{ItemRule, Policy, TitlePolicy};

fn title_rank(t: TitlePolicy) -> u8 {
    match t {
        TitlePolicy::Drop => 0,
        TitlePolicy::Hash => 1,
        TitlePolicy::Send => 2,
    }
}

fn title_name(t: TitlePolicy) -> &'static str {
    match t {
        TitlePolicy::Drop => "drop",
        TitlePolicy::Hash => "hash",
        TitlePolicy::Send => "send",
    }
}

fn set(patterns: &[String]) -> BTreeSet<&str> {
    patterns.iter().map(String::as_str).collect()
}

/// Patterns in `a` that are not in `b`.
fn missing<'a>(a: &'a [String], b: &[String]) -> Vec<&'a str> {
    let b = set(b);
    set(a).into_iter().filter(|p| !b.contains(p)).collect()
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rules of `next` that `previous` does not have exactly, by name.
fn new_or_changed_rules<'a>(previous: &[ItemRule], next: &'a [ItemRule]) -> Vec<&'a str> {
    next.iter()
        .filter(|rule| !previous.contains(rule))
        .map(|rule| rule.name.as_str())
        .collect()
}

/// Every way `next` records more than `previous`, in words (empty when it records nothing more).
pub fn widenings(previous: &Policy, next: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    if title_rank(next.title_policy) > title_rank(previous.title_policy) {
        out.push(format!(
            "window titles {} instead of {}",
            title_name(next.title_policy),
            title_name(previous.title_policy)
        ));
    }
    let unprivate = missing(&previous.private_titles, &next.private_titles);
    if !unprivate.is_empty() {
        out.push(format!(
            "private_titles no longer has {}",
            quoted(&unprivate)
        ));
    }
    let undenied = missing(&previous.app_deny, &next.app_deny);
    if !undenied.is_empty() {
        out.push(format!("app_deny no longer has {}", quoted(&undenied)));
    }
    if !previous.app_allow.is_empty() {
        if next.app_allow.is_empty() {
            out.push("app_allow emptied: every application is recorded by name".to_string());
        } else {
            let allowed = missing(&next.app_allow, &previous.app_allow);
            if !allowed.is_empty() {
                out.push(format!("app_allow adds {}", quoted(&allowed)));
            }
        }
    }
    let rules = new_or_changed_rules(&previous.rules, &next.rules);
    if !rules.is_empty() {
        out.push(format!("item rules new or changed: {}", quoted(&rules)));
    }
    out
}

/// Every difference between `previous` and `next`, in words, for the audit log. The title salt
/// is never shown, only that it changed.
pub fn changes(previous: &Policy, next: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    if previous.version != next.version {
        out.push(format!("version {} → {}", previous.version, next.version));
    }
    if previous.notice != next.notice {
        out.push("notice text changed".to_string());
    }
    if previous.title_policy != next.title_policy {
        out.push(format!(
            "title_policy {} → {}",
            title_name(previous.title_policy),
            title_name(next.title_policy)
        ));
    }
    if previous.title_salt != next.title_salt {
        out.push("title_salt changed".to_string());
    }
    for (name, a, b) in [
        (
            "sample_interval_ms",
            previous.sample_interval_ms,
            next.sample_interval_ms,
        ),
        (
            "upload_interval_ms",
            previous.upload_interval_ms,
            next.upload_interval_ms,
        ),
        (
            "idle_threshold_ms",
            previous.idle_threshold_ms,
            next.idle_threshold_ms,
        ),
    ] {
        if a != b {
            out.push(format!("{name} {a} → {b}"));
        }
    }
    for (name, a, b) in [
        ("app_allow", &previous.app_allow, &next.app_allow),
        ("app_deny", &previous.app_deny, &next.app_deny),
        (
            "private_titles",
            &previous.private_titles,
            &next.private_titles,
        ),
    ] {
        let added = missing(b, a);
        if !added.is_empty() {
            out.push(format!("{name} adds {}", quoted(&added)));
        }
        let removed = missing(a, b);
        if !removed.is_empty() {
            out.push(format!("{name} removes {}", quoted(&removed)));
        }
    }
    let names =
        |rules: &[ItemRule]| -> BTreeSet<String> { rules.iter().map(|r| r.name.clone()).collect() };
    let (before, after) = (names(&previous.rules), names(&next.rules));
    let added: Vec<&str> = after.difference(&before).map(String::as_str).collect();
    let removed: Vec<&str> = before.difference(&after).map(String::as_str).collect();
    let changed: Vec<&str> = new_or_changed_rules(&previous.rules, &next.rules)
        .into_iter()
        .filter(|n| before.contains(*n))
        .collect();
    for (what, list) in [
        ("rules added", added),
        ("rules removed", removed),
        ("rules changed", changed),
    ] {
        if !list.is_empty() {
            out.push(format!("{what}: {}", quoted(&list)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, title: &str) -> ItemRule {
        ItemRule {
            name: name.into(),
            app: None,
            title: title.into(),
            complete_title: None,
            complete_on_close: false,
        }
    }

    fn base() -> Policy {
        Policy {
            version: 3,
            app_allow: vec!["claims".into()],
            app_deny: vec!["chat".into()],
            private_titles: vec!["(?i)bank".into()],
            rules: vec![rule("claims", r"(?P<item>CLM-\d+)")],
            ..Policy::default()
        }
    }

    #[test]
    fn the_same_policy_widens_nothing_and_changes_nothing() {
        assert!(widenings(&base(), &base()).is_empty());
        assert!(changes(&base(), &base()).is_empty());
    }

    #[test]
    fn each_widening_is_named() {
        type Change = fn(&mut Policy);
        let cases: Vec<(Change, &str)> = vec![
            (|p| p.title_policy = TitlePolicy::Send, "titles send"),
            (|p| p.private_titles.clear(), "private_titles"),
            (|p| p.app_deny.clear(), "app_deny"),
            (|p| p.app_allow.clear(), "app_allow emptied"),
            (|p| p.app_allow.push("browser".into()), "app_allow adds"),
            (
                |p| p.rules.push(rule("orders", r"(?P<item>\d+)")),
                "\"orders\"",
            ),
            (|p| p.rules[0].complete_on_close = true, "\"claims\""),
        ];
        for (change, words) in cases {
            let mut next = base();
            change(&mut next);
            let found = widenings(&base(), &next);
            assert_eq!(found.len(), 1, "{words}: {found:?}");
            assert!(found[0].contains(words), "{words}: {found:?}");
        }
    }

    #[test]
    fn narrowing_is_not_widening() {
        let mut next = base();
        next.title_policy = TitlePolicy::Drop;
        next.private_titles.push("(?i)health".into());
        next.app_deny.push("games".into());
        next.app_allow.clear();
        next.app_allow.push("claims".into());
        next.rules.clear();
        next.sample_interval_ms = 500;
        assert!(widenings(&base(), &next).is_empty());
        let mut from_hash = base();
        from_hash.title_policy = TitlePolicy::Hash;
        assert!(widenings(&from_hash, &base()).is_empty());
    }

    #[test]
    fn changes_list_everything_but_the_salt() {
        let mut next = base();
        next.version = 4;
        next.title_policy = TitlePolicy::Hash;
        next.title_salt = "a-very-secret-salt-value".into();
        next.rules = vec![rule("orders", r"(?P<item>\d+)")];
        let words = changes(&base(), &next).join("; ");
        assert_eq!(
            words,
            "version 3 → 4; title_policy drop → hash; title_salt changed; \
             rules added: \"orders\"; rules removed: \"claims\""
        );
        assert!(!words.contains("secret"));
    }
}
