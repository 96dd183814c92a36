//! The tenant's policy: what agents may record and how, managed centrally by admins and fetched
//! by every agent (`GET /v1/agent/policy`, with ETag), applied without a restart.
//!
//! Privacy is the default: titles stay on the desktop ([`TitlePolicy::Drop`]) unless an admin
//! chooses otherwise, and nothing is recorded before the employee consents to the notice of the
//! policy's current `version`.
//!
//! [`Policy::validate`] is run by the server before a policy is saved (so a bad regex is refused
//! with its reason) and by the agent before it applies one.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

/// Path agents fetch their tenant's policy from.
pub const POLICY_PATH: &str = "/v1/agent/policy";

/// What may leave the desktop of a window title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TitlePolicy {
    /// Titles never leave the desktop (only the app name and matched item id/step do).
    #[default]
    Drop,
    /// A salted SHA-256 of the title is sent: equal titles can be grouped, not read.
    Hash,
    /// The title is sent as it is.
    Send,
}

/// A tenant's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Version of the notice. Employees are asked for consent again whenever it increases.
    pub version: u32,
    /// The organisation's notice shown to the employee before consent: what is recorded, why,
    /// who sees it, how to withdraw.
    pub notice: String,
    #[serde(default)]
    pub title_policy: TitlePolicy,
    /// Salt for [`TitlePolicy::Hash`]; keep it secret from report readers.
    #[serde(default)]
    pub title_salt: String,
    /// How often the desktop is sampled.
    #[serde(default = "defaults::sample_interval_ms")]
    pub sample_interval_ms: u64,
    /// Longest an event waits on the desktop before it is uploaded.
    #[serde(default = "defaults::upload_interval_ms")]
    pub upload_interval_ms: u64,
    /// No input for this long makes the person idle (the idle stretch starts at the last input).
    #[serde(default = "defaults::idle_threshold_ms")]
    pub idle_threshold_ms: u64,
    /// Regexes on the app name; when non-empty, only matching apps are recorded by name
    /// (others are recorded as `other`).
    #[serde(default)]
    pub app_allow: Vec<String>,
    /// Regexes on the app name; matching apps are recorded as `other`.
    #[serde(default)]
    pub app_deny: Vec<String>,
    /// Regexes on the window title; a matching window (a banking or health site, say) is never
    /// recorded at all: its time shows as `private`, with no app, title or item.
    #[serde(default)]
    pub private_titles: Vec<String>,
    /// How focused windows map to work items.
    #[serde(default)]
    pub rules: Vec<ItemRule>,
}

/// Maps focused windows to a work item.
///
/// When focus enters a window whose app matches `app` and whose title matches `title` (a regex
/// with a named capture `item` and optionally `step`), the item is started (first time) or
/// resumed; when focus leaves it, the item is paused. A title matching `complete_title` (also
/// capturing `item`) completes the item; with `complete_on_close`, closing the item's window does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ItemRule {
    /// A name for admins and logs.
    pub name: String,
    /// Regex on the app name; any app when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Regex on the window title with a named capture `item` (and optional `step`).
    pub title: String,
    /// Regex on the window title, with a named capture `item`, that marks the item completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_title: Option<String>,
    /// Closing the item's window completes it.
    #[serde(default)]
    pub complete_on_close: bool,
}

mod defaults {
    pub fn sample_interval_ms() -> u64 {
        1_000
    }
    pub fn upload_interval_ms() -> u64 {
        30_000
    }
    pub fn idle_threshold_ms() -> u64 {
        5 * 60_000
    }
}

/// Most rules, patterns and notice bytes a policy may carry (keeps agents' work bounded).
pub mod limits {
    pub const MAX_RULES: usize = 200;
    pub const MAX_PATTERNS: usize = 200;
    pub const MAX_PATTERN_LEN: usize = 1_000;
    pub const MAX_NOTICE_LEN: usize = 20_000;
    /// Compiled regex size cap, so a pathological pattern cannot eat the desktop's memory.
    pub const MAX_REGEX_BYTES: usize = 256 * 1024;
}

impl Default for Policy {
    /// The policy of a tenant whose admin has not written one: version 1, titles dropped,
    /// no rules (items come only from apps and the command line).
    fn default() -> Self {
        Policy {
            version: 1,
            notice: "Your organisation uses Backlight to see how work items flow through the back \
                     office. With your consent, this computer records which application is in \
                     focus, when you are idle or away, and when you start, pause and complete \
                     work items. Window titles stay on this computer. No keystrokes, screenshots \
                     or clipboard contents are ever recorded. You can see everything recorded \
                     with `backlight-agent show`, pause recording, or withdraw consent at any \
                     time."
                .to_string(),
            title_policy: TitlePolicy::Drop,
            title_salt: String::new(),
            sample_interval_ms: defaults::sample_interval_ms(),
            upload_interval_ms: defaults::upload_interval_ms(),
            idle_threshold_ms: defaults::idle_threshold_ms(),
            app_allow: Vec::new(),
            app_deny: Vec::new(),
            private_titles: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// Characters a notice may not contain: controls other than line breaks and tabs (a terminal
/// would act on them) and Unicode direction overrides (they reorder what the employee reads).
fn is_unprintable(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Compiles a policy regex with the size cap; errors name the field.
pub fn compile(field: &str, pattern: &str) -> Result<Regex, ValidationError> {
    if pattern.len() > limits::MAX_PATTERN_LEN {
        return Err(ValidationError::new(
            field,
            format!("pattern longer than {} bytes", limits::MAX_PATTERN_LEN),
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(limits::MAX_REGEX_BYTES)
        .build()
        .map_err(|e| ValidationError::new(field, format!("invalid regex: {e}")))
}

impl Policy {
    /// Checks every field; the error names the first bad one (`rules[2].title`, …).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.version == 0 {
            return Err(ValidationError::new("version", "versions start at 1"));
        }
        if self.notice.trim().is_empty() || self.notice.len() > limits::MAX_NOTICE_LEN {
            return Err(ValidationError::new(
                "notice",
                format!("the notice must be 1 to {} bytes", limits::MAX_NOTICE_LEN),
            ));
        }
        if let Some(c) = self.notice.chars().find(|&c| is_unprintable(c)) {
            return Err(ValidationError::new(
                "notice",
                format!(
                    "the notice contains the control character {} (only line breaks and tabs \
                     are allowed: terminals act on escape sequences)",
                    c.escape_unicode()
                ),
            ));
        }
        if self.title_policy == TitlePolicy::Hash && self.title_salt.len() < 16 {
            return Err(ValidationError::new(
                "title_salt",
                "hashing titles needs a salt of at least 16 characters",
            ));
        }
        let in_range = |field: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(ValidationError::new(
                    field,
                    format!("must be between {min} and {max} ms"),
                ))
            }
        };
        in_range("sample_interval_ms", self.sample_interval_ms, 200, 60_000)?;
        in_range(
            "upload_interval_ms",
            self.upload_interval_ms,
            1_000,
            3_600_000,
        )?;
        in_range(
            "idle_threshold_ms",
            self.idle_threshold_ms,
            10_000,
            4 * 3_600_000,
        )?;
        for (name, patterns) in [
            ("app_allow", &self.app_allow),
            ("app_deny", &self.app_deny),
            ("private_titles", &self.private_titles),
        ] {
            if patterns.len() > limits::MAX_PATTERNS {
                return Err(ValidationError::new(
                    name,
                    format!("at most {} patterns", limits::MAX_PATTERNS),
                ));
            }
            for (i, p) in patterns.iter().enumerate() {
                compile(&format!("{name}[{i}]"), p)?;
            }
        }
        if self.rules.len() > limits::MAX_RULES {
            return Err(ValidationError::new(
                "rules",
                format!("at most {} rules", limits::MAX_RULES),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("rules[{i}]"))?;
        }
        Ok(())
    }
}

impl ItemRule {
    fn validate(&self, prefix: &str) -> Result<(), ValidationError> {
        if self.name.trim().is_empty() {
            return Err(ValidationError::new(
                format!("{prefix}.name"),
                "must not be empty",
            ));
        }
        if let Some(app) = &self.app {
            compile(&format!("{prefix}.app"), app)?;
        }
        let title = compile(&format!("{prefix}.title"), &self.title)?;
        if !title.capture_names().any(|n| n == Some("item")) {
            return Err(ValidationError::new(
                format!("{prefix}.title"),
                "needs a named capture group `item`, e.g. (?P<item>CLM-\\d+)",
            ));
        }
        if let Some(complete) = &self.complete_title {
            let re = compile(&format!("{prefix}.complete_title"), complete)?;
            if !re.capture_names().any(|n| n == Some("item")) {
                return Err(ValidationError::new(
                    format!("{prefix}.complete_title"),
                    "needs a named capture group `item`",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(title: &str) -> ItemRule {
        ItemRule {
            name: "claims".into(),
            app: Some("claims-desk".into()),
            title: title.into(),
            complete_title: None,
            complete_on_close: false,
        }
    }

    #[test]
    fn default_policy_is_valid_and_private() {
        let p = Policy::default();
        p.validate().unwrap();
        assert_eq!(p.title_policy, TitlePolicy::Drop);
    }

    #[test]
    fn bad_regex_is_refused_with_reason_and_field() {
        let p = Policy {
            rules: vec![rule(r"Claim (?P<item>CLM-\d+)"), rule("Claim (unclosed")],
            ..Policy::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "rules[1].title");
        assert!(e.reason.contains("invalid regex"), "{e}");
    }

    #[test]
    fn rule_needs_item_capture() {
        let p = Policy {
            rules: vec![rule(r"Claim CLM-\d+")],
            ..Policy::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "rules[0].title");
    }

    #[test]
    fn notice_with_escape_sequences_is_refused() {
        for notice in ["We record\u{1b}[2J", "bell\u{7}", "abc\u{202e}fed"] {
            let p = Policy {
                notice: notice.into(),
                ..Policy::default()
            };
            assert_eq!(p.validate().unwrap_err().field, "notice", "{notice:?}");
        }
        let p = Policy {
            notice: "Line one\r\nLine two\n\tindented".into(),
            ..Policy::default()
        };
        p.validate().unwrap();
    }

    #[test]
    fn hashing_needs_a_salt() {
        let p = Policy {
            title_policy: TitlePolicy::Hash,
            ..Policy::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "title_salt");
    }

    #[test]
    fn missing_fields_take_defaults() {
        let p: Policy = serde_json::from_str(r#"{"version": 2, "notice": "hello"}"#).unwrap();
        assert_eq!(p.idle_threshold_ms, 300_000);
        assert_eq!(p.title_policy, TitlePolicy::Drop);
        p.validate().unwrap();
    }
}
