//! The short-lived commands that change what the running agent may do: `consent
//! show|grant|revoke`, `pause`, `item`. Each opens the spool read-write next to a running
//! `run` (SQLite WAL lets both write); the running agent notices within a second, and `item`
//! wakes it at once (`crate::wake`) so the report is uploaded without waiting.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use backlight_shared::event::ItemSource;
use backlight_shared::now_ms;

use super::{describe, format_ms, gate, prompt_terminal};
use crate::data_dir;
use crate::items::{self, ItemError, Verb};
use crate::policy::{self, ActivePolicy};
use crate::spool::{Note, Spool, SpoolConfig, SpoolError};
use crate::wake::{self, Woken};

/// A short-lived command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Item(#[from] ItemError),
    #[error("not granted: {0}")]
    NotGranted(&'static str),
}

async fn open(dir: &Path) -> Result<Spool, CommandError> {
    data_dir::ensure(dir).map_err(|source| CommandError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(Spool::open(
        &data_dir::spool_path(dir),
        SpoolConfig::default(),
    )?)
}

/// The policy the running agent last applied (cached), or the default.
async fn policy(spool: &Spool) -> Result<ActivePolicy, CommandError> {
    Ok(policy::load_cached(spool).await?)
}

/// `consent show`.
pub async fn show(dir: &Path) -> Result<String, CommandError> {
    let spool = open(dir).await?;
    let active = policy(&spool).await?;
    let control = spool.control().await?;
    let url = spool.note(Note::ConsentUrl).await?;
    spool.close().await;
    let version = active.policy.version;
    let mut text = format!(
        "Your organisation's notice (policy version {version}):\n\n{}\n\nYour answer: {}\nNow: {}\n",
        crate::terminal::printable(&active.policy.notice),
        describe(control.consent.as_ref()),
        gate(&control, version, now_ms()).describe()
    );
    if let Some(url) = url {
        text.push_str(&format!("Local page (while the agent runs): {url}\n"));
    }
    text.push_str(
        "Answer with `backlight-agent consent grant` or `backlight-agent consent revoke`.\n",
    );
    Ok(text)
}

/// `consent grant [--yes]`: shows the notice and records consent to its version.
pub async fn grant(dir: &Path, yes: bool) -> Result<String, CommandError> {
    let spool = open(dir).await?;
    let active = policy(&spool).await?;
    let version = active.policy.version;
    if !yes && std::io::stdin().is_terminal() {
        let notice = active.policy.notice.clone();
        let answer = tokio::task::spawn_blocking(move || prompt_terminal(version, &notice))
            .await
            .ok()
            .flatten();
        if answer != Some(true) {
            spool.close().await;
            return Err(CommandError::NotGranted(
                "you did not agree; nothing changed",
            ));
        }
    }
    let recorded = super::grant(&spool, version).await?;
    spool.close().await;
    Ok(format!(
        "consent granted for policy version {version} (event seq {}); recording starts within a second if the agent is running\n",
        recorded.seq
    ))
}

/// `consent revoke`.
pub async fn revoke(dir: &Path) -> Result<String, CommandError> {
    let spool = open(dir).await?;
    let version = policy(&spool).await?.policy.version;
    let recorded = super::revoke(&spool, version).await?;
    spool.close().await;
    Ok(format!(
        "consent withdrawn; recording stopped; deleted {} unsent activity and work-item records (the withdrawal itself is sent to your organisation)\n",
        recorded.purged
    ))
}

/// `pause DURATION` / `pause --resume`.
pub async fn pause(dir: &Path, duration: Option<Duration>) -> Result<String, CommandError> {
    let spool = open(dir).await?;
    let text = match duration {
        Some(d) => {
            let until = now_ms().saturating_add(d.as_millis() as u64);
            spool.set_pause(Some(until)).await?;
            format!("recording paused until {}\n", format_ms(until))
        }
        None => {
            spool.set_pause(None).await?;
            "recording resumed\n".to_string()
        }
    };
    spool.close().await;
    Ok(text)
}

/// `item ACTION ITEM [--step S]`.
pub async fn item(
    dir: &Path,
    verb: Verb,
    item_id: &str,
    step: Option<String>,
) -> Result<String, CommandError> {
    let spool = open(dir).await?;
    let version = policy(&spool).await?.policy.version;
    let result = items::record(&spool, item_id, verb.0, step, ItemSource::Manual, version).await;
    spool.close().await;
    let seq = result?;
    // Committed: from here on a failed wake only delays the upload.
    let upload = match wake::wake(dir) {
        Ok(Woken::Sent) => "the running agent uploads it now",
        Ok(Woken::NoAgent) => "uploaded when the agent runs",
        Err(error) => {
            tracing::warn!(%error, "cannot wake the running agent; it uploads the report at its next look");
            "the running agent uploads it within a minute"
        }
    };
    Ok(format!(
        "recorded: {item_id} {} (seq {seq}); {upload}\n",
        verb.0.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: the notice comes from the server; printed raw, its escape sequences could
    /// clear the screen, hide text or rewrite what the employee reads before answering.
    #[tokio::test]
    async fn consent_show_prints_no_control_characters_from_the_notice() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await.unwrap();
        let notice = "We record \u{1b}[2J\u{1b}[8mhidden\u{1b}[0m\rnothing.\u{202e}txt.exe";
        let cached = serde_json::json!({
            "etag": "\"x\"",
            "policy": {"version": 2, "notice": notice},
        });
        spool
            .set_note(Note::Policy, Some(cached.to_string()))
            .await
            .unwrap();
        spool.close().await;
        let text = show(dir.path()).await.unwrap();
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{text:?}"
        );
    }
}
