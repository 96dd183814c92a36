//! Explicit work-item reports: `backlight-agent item start|pause|resume|done|transfer ITEM`
//! (source `manual`) and the local API's `POST /v1/items/{id}/{action}` (source `app`).
//!
//! A report is one [`WorkItemEvent`] committed straight into the spool, checked the way the
//! server will check it (so an id the server would refuse is refused here, naming the field),
//! and only if the employee's consent covers the policy in force: the check is made inside the
//! inserting transaction ([`ConsentGuard`]). The command line works while `run` is running:
//! both write the same SQLite database, whose WAL mode lets them take turns.

use std::str::FromStr;

use backlight_shared::event::{EventBody, ItemAction, ItemSource, WorkItemEvent};
use backlight_shared::now_ms;
use backlight_shared::validate::ValidationError;

use crate::source::check;
use crate::spool::{ConsentGuard, SourceProgress, Spool, SpoolError};

/// The verbs of `backlight-agent item` and of the local API's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verb(pub ItemAction);

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let action = match s {
            "start" | "started" => ItemAction::Started,
            "pause" | "paused" => ItemAction::Paused,
            "resume" | "resumed" => ItemAction::Resumed,
            "done" | "complete" | "completed" => ItemAction::Completed,
            "transfer" | "transferred" => ItemAction::Transferred,
            _ => {
                return Err(format!(
                    "unknown action {s:?} (expected start, pause, resume, done or transfer)"
                ))
            }
        };
        Ok(Verb(action))
    }
}

/// A report was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("invalid report: {0}")]
    Invalid(#[from] ValidationError),
    #[error("not recorded: consent to policy version {version} has not been given (see `backlight-agent consent show`)")]
    NoConsent { version: u32 },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Records one report; returns its sequence number.
pub async fn record(
    spool: &Spool,
    item_id: &str,
    action: ItemAction,
    step: Option<String>,
    source: ItemSource,
    policy_version: u32,
) -> Result<u64, ItemError> {
    let now = now_ms();
    let body = check(
        EventBody::WorkItem(WorkItemEvent {
            item_id: item_id.to_string(),
            action,
            step,
            at_ms: now,
            source,
        }),
        now,
    )?;
    let appended = spool
        .append_guarded(
            vec![body],
            SourceProgress::default(),
            ConsentGuard {
                policy_version,
                seen_items: Vec::new(),
            },
        )
        .await?;
    match appended.seqs {
        Some((seq, _)) => Ok(seq),
        None => Err(ItemError::NoConsent {
            version: policy_version,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;

    #[test]
    fn verbs_parse() {
        assert_eq!("done".parse(), Ok(Verb(ItemAction::Completed)));
        assert_eq!("transferred".parse(), Ok(Verb(ItemAction::Transferred)));
        assert!("finish".parse::<Verb>().is_err());
    }

    #[tokio::test]
    async fn reports_need_consent_and_valid_ids() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.db"), SpoolConfig::default()).unwrap();
        let refused = record(
            &spool,
            "CLM-1",
            ItemAction::Started,
            None,
            ItemSource::Manual,
            1,
        )
        .await;
        assert!(
            matches!(refused, Err(ItemError::NoConsent { version: 1 })),
            "{refused:?}"
        );
        crate::consent::grant(&spool, 1).await.unwrap();
        let seq = record(
            &spool,
            "CLM-1",
            ItemAction::Started,
            Some("intake".into()),
            ItemSource::Manual,
            1,
        )
        .await
        .unwrap();
        assert_eq!(seq, 2, "after the consent event");
        let invalid = record(
            &spool,
            " ",
            ItemAction::Started,
            None,
            ItemSource::Manual,
            1,
        )
        .await;
        match invalid {
            Err(ItemError::Invalid(e)) => assert_eq!(e.field, "item_id"),
            other => panic!("{other:?}"),
        }
        // A newer policy version needs a new consent.
        let refused = record(
            &spool,
            "CLM-1",
            ItemAction::Paused,
            None,
            ItemSource::Manual,
            2,
        )
        .await;
        assert!(matches!(refused, Err(ItemError::NoConsent { version: 2 })));
        spool.close().await;
    }
}
