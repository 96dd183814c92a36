//! What of a focused window may be recorded, by the tenant's policy. Pure: no I/O, no clock.
//!
//! Applied to every sample before anything else sees it:
//!
//! 1. A title matching one of `private_titles` makes the whole window invisible: it is
//!    recorded as app [`PRIVATE_APP`] with no title, and work-item rules never see it.
//! 2. The app name is kept only if it passes `app_allow` (when non-empty) and no `app_deny`;
//!    otherwise it is recorded as [`OTHER_APP`].
//! 3. The title follows [`TitlePolicy`]: dropped (the default), a salted SHA-256 in hex, or sent.
//!
//! Desktop strings are untrusted input: control characters become spaces and lengths are cut
//! to the protocol's limits (at a character boundary), so a window cannot make an event the
//! server would refuse.
//!
//! **Privacy invariant:** a title leaves this module only as `Visible::title`, and only when
//! the policy says so.

use backlight_shared::batch::limits;
use backlight_shared::policy::{compile, Policy, TitlePolicy};
use backlight_shared::validate::{clean, ValidationError};
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::capture::Focus;

/// The app recorded for windows whose name the policy does not let through.
pub const OTHER_APP: &str = "other";
/// The app recorded for windows matching `private_titles`.
pub const PRIVATE_APP: &str = "private";

/// The privacy part of a policy, compiled.
#[derive(Debug, Clone)]
pub struct Privacy {
    titles: TitlePolicy,
    salt: String,
    allow: Vec<Regex>,
    deny: Vec<Regex>,
    private: Vec<Regex>,
}

/// What may be recorded of one focused window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// A private window: recorded as [`PRIVATE_APP`] only, invisible to rules.
    Private,
    /// An ordinary window.
    Visible(Visible),
}

/// The recordable view of an ordinary window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    /// The app name, or [`OTHER_APP`].
    pub app: String,
    /// The title as the policy lets it leave the desktop (`None` under [`TitlePolicy::Drop`]).
    pub title: Option<String>,
}

impl Privacy {
    /// Compiles the privacy settings of `policy` (already validated, so errors are unexpected).
    pub fn compile(policy: &Policy) -> Result<Privacy, ValidationError> {
        let all = |field: &str, patterns: &[String]| {
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| compile(&format!("{field}[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Privacy {
            titles: policy.title_policy,
            salt: policy.title_salt.clone(),
            allow: all("app_allow", &policy.app_allow)?,
            deny: all("app_deny", &policy.app_deny)?,
            private: all("private_titles", &policy.private_titles)?,
        })
    }

    /// Whether a window title is private (the window is then not recorded at all).
    pub fn is_private(&self, title: &str) -> bool {
        self.private.iter().any(|re| re.is_match(title))
    }

    /// The recordable view of `focus`.
    pub fn filter(&self, focus: &Focus) -> Filtered {
        if self.is_private(&focus.title) {
            return Filtered::Private;
        }
        let named = (self.allow.is_empty() || self.allow.iter().any(|re| re.is_match(&focus.app)))
            && !self.deny.iter().any(|re| re.is_match(&focus.app));
        let app = if named {
            clean(&focus.app, limits::MAX_APP_LEN)
        } else {
            OTHER_APP.to_string()
        };
        let title = match self.titles {
            TitlePolicy::Drop => None,
            TitlePolicy::Hash => Some(hash_title(&self.salt, &focus.title)),
            TitlePolicy::Send => Some(clean(&focus.title, limits::MAX_TITLE_LEN)),
        };
        Filtered::Visible(Visible { app, title })
    }
}

/// Hex SHA-256 of the salt followed by the title: equal titles give equal hashes, and without
/// the salt a reader cannot test guesses.
pub fn hash_title(salt: &str, title: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(title.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn focus(app: &str, title: &str) -> Focus {
        Focus {
            app: app.into(),
            process: None,
            product: None,
            title: title.into(),
            window: 1,
        }
    }

    fn privacy(edit: impl FnOnce(&mut Policy)) -> Privacy {
        let mut policy = Policy::default();
        edit(&mut policy);
        policy.validate().unwrap();
        Privacy::compile(&policy).unwrap()
    }

    fn visible(p: &Privacy, app: &str, title: &str) -> Visible {
        match p.filter(&focus(app, title)) {
            Filtered::Visible(v) => v,
            Filtered::Private => panic!("{title:?} should not be private"),
        }
    }

    #[test]
    fn titles_are_dropped_by_default() {
        let p = privacy(|_| {});
        assert_eq!(
            visible(&p, "claims-desk", "Claim CLM-1 — Jane Doe"),
            Visible {
                app: "claims-desk".into(),
                title: None
            }
        );
    }

    #[test]
    fn hashed_titles_are_salted_sha256() {
        let p = privacy(|p| {
            p.title_policy = TitlePolicy::Hash;
            p.title_salt = "0123456789abcdef".into();
        });
        let v = visible(&p, "claims-desk", "Claim CLM-1");
        let hash = v.title.unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hash_title("0123456789abcdef", "Claim CLM-1"));
        assert_ne!(hash, hash_title("another salt 1234", "Claim CLM-1"));
        assert!(!hash.contains("CLM"));
    }

    #[test]
    fn sent_titles_are_cleaned_and_capped() {
        let p = privacy(|p| p.title_policy = TitlePolicy::Send);
        assert_eq!(visible(&p, "x", "a\nb\tc").title.as_deref(), Some("a b c"));
        let long = "é".repeat(1000);
        let title = visible(&p, "x", &long).title.unwrap();
        assert!(title.len() <= limits::MAX_TITLE_LEN && title.len() >= limits::MAX_TITLE_LEN - 1);
    }

    #[test]
    fn allow_and_deny_lists_hide_app_names() {
        let p = privacy(|p| {
            p.app_allow = vec!["^claims-".into(), "^outlook$".into()];
            p.app_deny = vec!["^claims-secret$".into()];
        });
        assert_eq!(visible(&p, "claims-desk", "").app, "claims-desk");
        assert_eq!(visible(&p, "outlook", "").app, "outlook");
        assert_eq!(visible(&p, "spotify", "").app, OTHER_APP);
        assert_eq!(visible(&p, "claims-secret", "").app, OTHER_APP);
        let deny_only = privacy(|p| p.app_deny = vec!["^steam$".into()]);
        assert_eq!(visible(&deny_only, "steam", "").app, OTHER_APP);
        assert_eq!(visible(&deny_only, "firefox", "").app, "firefox");
    }

    #[test]
    fn private_titles_hide_the_whole_window() {
        let p = privacy(|p| {
            p.title_policy = TitlePolicy::Send;
            p.private_titles = vec!["(?i)online banking".into()];
        });
        assert_eq!(
            p.filter(&focus("firefox", "My Online Banking — Firefox")),
            Filtered::Private
        );
        assert!(matches!(
            p.filter(&focus("firefox", "News")),
            Filtered::Visible(_)
        ));
    }
}
