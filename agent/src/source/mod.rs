//! Where events come from.
//!
//! A [`Source`] produces event bodies; the runner commits them to the spool together with the
//! source's progress, in one transaction, so a source that reads an input resumes exactly where
//! its last committed events end. Implementations:
//!
//! - [`synthetic`]: realistic demo data for trials and load tests.
//! - [`file`](mod@file): a JSON Lines file, each line recorded exactly once, even across crashes.
//! - [`none`]: nothing (the agent then only reports its own health).
//! - [`crate::desktop`]: the desktop itself (focused window, idle, lock), behind consent.

pub mod file;
pub mod none;
pub mod synthetic;

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

use backlight_shared::event::{Event, EventBody};
use backlight_shared::validate::{validate_event, ValidationError};
use backlight_shared::UnixMillis;
use uuid::Uuid;

use crate::spool::{ConsentGuard, SourceProgress, SpoolError};

/// What one pull from a source gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Pulled {
    /// Events to record, and what the source consumed to produce them. `bodies` may be empty
    /// when only the progress changed (e.g. every line read was malformed).
    Events {
        bodies: Vec<EventBody>,
        progress: SourceProgress,
    },
    /// Desktop data, committed only if the stored consent covers `guard` (checked in the
    /// inserting transaction; see the spool's design note).
    Guarded {
        bodies: Vec<EventBody>,
        guard: ConsentGuard,
    },
    /// Nothing more for now: the input is read to its end (a file may still grow later).
    Exhausted,
}

/// A producer of events.
pub trait Source: Send {
    /// Names the source in logs, e.g. `file:/var/lib/claims/events.jsonl`.
    fn describe(&self) -> String;

    /// Waits until events are available and returns them, or [`Pulled::Exhausted`]. Dropping
    /// the future (on shutdown) must not lose anything: progress only counts once the runner
    /// has committed it.
    fn pull(&mut self) -> impl Future<Output = Result<Pulled, SourceError>> + Send;

    /// Called once on shutdown, after the last pull was dropped: what the source still holds
    /// (an open activity span), to be committed before the agent exits.
    fn finish(&mut self) -> Option<Pulled> {
        None
    }
}

/// A source failed in a way the agent cannot skip over.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the stored position in {path} is damaged ({value:?}); remove the cursor or the spool to start over")]
    BadCursor { path: PathBuf, value: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The `--source` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Generated demo activity.
    Synthetic,
    /// A JSON Lines file of event bodies.
    File(PathBuf),
    /// No events besides the agent's health reports.
    None,
    /// The desktop: focused window, idle and lock, work-item rules — after consent.
    Desktop,
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "synthetic" => Ok(SourceSpec::Synthetic),
            "none" => Ok(SourceSpec::None),
            "desktop" => Ok(SourceSpec::Desktop),
            _ => match s.strip_prefix("file:") {
                Some("") => Err("file: needs a path, e.g. file:/var/lib/app/events.jsonl".into()),
                Some(path) => Ok(SourceSpec::File(PathBuf::from(path))),
                None => Err(format!(
                    "unknown source {s:?} (expected desktop, synthetic, file:PATH or none)"
                )),
            },
        }
    }
}

/// Checks a body the way the server will, so the spool never keeps what the server would
/// refuse. The seq and id are placeholders: the spool assigns the real ones.
pub fn check(body: EventBody, now_ms: UnixMillis) -> Result<EventBody, ValidationError> {
    let event = Event {
        seq: 1,
        id: Uuid::from_u128(1),
        body,
    };
    validate_event(&event, now_ms)?;
    Ok(event.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_flags() {
        assert_eq!("synthetic".parse(), Ok(SourceSpec::Synthetic));
        assert_eq!("none".parse(), Ok(SourceSpec::None));
        assert_eq!(
            "file:/tmp/a b.jsonl".parse(),
            Ok(SourceSpec::File("/tmp/a b.jsonl".into()))
        );
        assert!("file:".parse::<SourceSpec>().is_err());
        assert_eq!("desktop".parse(), Ok(SourceSpec::Desktop));
        assert!("x11".parse::<SourceSpec>().is_err());
    }
}
