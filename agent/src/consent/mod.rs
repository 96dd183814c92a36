//! Consent, enforced in code: nothing is captured before the employee agrees to the
//! organisation's notice, and withdrawing consent stops capture at once and deletes what was
//! not sent yet.
//!
//! # How it holds together
//!
//! - **State** lives in the spool (`meta.consent`, the latest [`ConsentChange`]); every answer
//!   is also recorded as an [`EventBody::Consent`](backlight_shared::event::EventBody) event for
//!   the server, in the same transaction ([`Spool::set_consent`]).
//! - **The gate** ([`gate`]) turns the stored answer, the pause and the policy version into one
//!   decision. `run` re-reads the state every second ([`watch_control`]) and publishes the gate
//!   on a `watch` channel; the desktop source does not even sample the desktop unless the gate
//!   is [`Gate::Open`]. So `backlight-agent consent revoke` or `pause` from another terminal is
//!   obeyed within a second.
//! - **Belt and braces:** desktop data is appended with a [`ConsentGuard`], so the spool itself
//!   refuses spans and work items that the stored consent does not cover, in the inserting
//!   transaction. A race between a revoke and a span being written cannot record the span.
//! - **A new policy version asks again:** consent covers the version it was given for (and
//!   earlier ones); a higher version closes the gate until the employee answers again.
//! - **Asking:** with `run --source desktop`, while the gate is [`Gate::Ask`], the agent opens
//!   its local page ([`page`]) in the browser (`xdg-open`, unless `--no-browser`), logs its URL,
//!   and, when started from a terminal, asks there too. A decline is recorded and respected:
//!   the agent does not ask again until the policy version changes or the employee runs
//!   `backlight-agent consent grant`.
//!
//! [`ConsentGuard`]: crate::spool::ConsentGuard

pub mod commands;
pub mod page;
pub mod show;

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use backlight_shared::event::ConsentChange;
use backlight_shared::{now_ms, UnixMillis};
use tokio::sync::{mpsc, watch, Notify};

use crate::policy::ActivePolicy;
use crate::spool::{ConsentRecorded, Control, Spool, SpoolError};

/// What a consent covers, as recorded in consent events.
pub const SCOPE: &str = "activity,items";

/// How often `run` re-reads consent and pause from the spool.
pub const CONTROL_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the desktop may be captured now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Consent covers the policy in force and no pause is on: capture.
    Open,
    /// No answer for this policy version yet (first run, or a new version): ask.
    Ask { version: u32 },
    /// The employee declined or withdrew consent for this version: capture nothing, and forget
    /// what is in memory.
    Refused { version: u32 },
    /// Private time until `until_ms`.
    Paused { until_ms: UnixMillis },
}

impl Gate {
    pub fn is_open(self) -> bool {
        self == Gate::Open
    }

    /// Words for logs and `status`.
    pub fn describe(self) -> String {
        match self {
            Gate::Open => "capturing".into(),
            Gate::Ask { version } => format!("waiting for consent to policy version {version}"),
            Gate::Refused { version } => {
                format!("not capturing: consent declined or withdrawn (policy version {version})")
            }
            Gate::Paused { until_ms } => format!("paused until {}", format_ms(until_ms)),
        }
    }
}

/// The gate for the stored `control` state under policy `version` at `now`.
pub fn gate(control: &Control, version: u32, now: UnixMillis) -> Gate {
    match &control.consent {
        Some(c) if c.policy_version >= version && c.granted => match control.pause_until_ms {
            Some(until_ms) if until_ms > now => Gate::Paused { until_ms },
            _ => Gate::Open,
        },
        Some(c) if c.policy_version >= version => Gate::Refused { version },
        _ => Gate::Ask { version },
    }
}

/// A consent answer for policy `version`, now.
pub fn answer(granted: bool, version: u32) -> ConsentChange {
    ConsentChange {
        granted,
        policy_version: version,
        scope: SCOPE.to_string(),
        at_ms: now_ms(),
    }
}

/// Records consent to policy `version`.
pub async fn grant(spool: &Spool, version: u32) -> Result<ConsentRecorded, SpoolError> {
    tracing::info!(version, "consent granted");
    spool.set_consent(answer(true, version), false).await
}

/// Records a refusal to consent to policy `version` (nothing was captured under it).
pub async fn decline(spool: &Spool, version: u32) -> Result<ConsentRecorded, SpoolError> {
    tracing::info!(version, "consent declined");
    spool.set_consent(answer(false, version), false).await
}

/// Withdraws consent: records it and deletes unsent activity and work items.
pub async fn revoke(spool: &Spool, version: u32) -> Result<ConsentRecorded, SpoolError> {
    let recorded = spool.set_consent(answer(false, version), true).await?;
    tracing::info!(
        version,
        purged = recorded.purged,
        "consent withdrawn; unsent desktop data deleted"
    );
    Ok(recorded)
}

/// The stored consent in words.
pub fn describe(consent: Option<&ConsentChange>) -> String {
    match consent {
        None => "not given yet".to_string(),
        Some(c) => format!(
            "{} for policy version {} ({}) on {}",
            if c.granted {
                "granted"
            } else {
                "declined/withdrawn"
            },
            c.policy_version,
            c.scope,
            format_ms(c.at_ms)
        ),
    }
}

pub(crate) fn format_ms(ms: UnixMillis) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// How `run` asks for consent.
#[derive(Debug, Clone, Default)]
pub struct AskOptions {
    /// Open the consent page in the browser (`xdg-open`; the default browser on Windows) when
    /// asking.
    pub open_browser: bool,
    /// The consent page's URL, when the page runs.
    pub page_url: Option<String>,
}

/// Re-reads consent and pause every second (and when `refresh` is notified), publishes the
/// gate, and asks for consent whenever the gate is [`Gate::Ask`] for a version not asked yet.
pub async fn watch_control(
    spool: Spool,
    policy: watch::Receiver<Arc<ActivePolicy>>,
    gate_tx: watch::Sender<Gate>,
    refresh: Arc<Notify>,
    ask: AskOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SpoolError> {
    let (answers_tx, mut answers) = mpsc::channel::<(u32, bool)>(4);
    let mut asked: Option<u32> = None;
    loop {
        let control = spool.control().await?;
        let version = policy.borrow().policy.version;
        let new = gate(&control, version, now_ms());
        gate_tx.send_if_modified(|current| {
            if *current == new {
                return false;
            }
            tracing::info!(capture = %new.describe(), "capture state changed");
            *current = new;
            true
        });
        if let Gate::Ask { version } = new {
            if asked != Some(version) {
                asked = Some(version);
                let notice = policy.borrow().policy.notice.clone();
                ask_for_consent(version, &notice, &ask, answers_tx.clone());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CONTROL_INTERVAL) => {}
            _ = refresh.notified() => {}
            Some((version, granted)) = answers.recv() => {
                // Only an answer to the question still open counts.
                let still_asking = gate(&spool.control().await?, policy.borrow().policy.version, now_ms())
                    == Gate::Ask { version };
                if still_asking {
                    if granted {
                        grant(&spool, version).await?;
                    } else {
                        decline(&spool, version).await?;
                    }
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Shows the notice and the way to answer: log line, browser, terminal.
fn ask_for_consent(
    version: u32,
    notice: &str,
    ask: &AskOptions,
    answers: mpsc::Sender<(u32, bool)>,
) {
    match &ask.page_url {
        Some(url) => {
            tracing::warn!(version, %url, "nothing is recorded until you answer the notice: open this page, or run `backlight-agent consent grant`");
            if ask.open_browser {
                open_in_browser(url);
            }
        }
        None => tracing::warn!(
            version,
            "nothing is recorded until you consent: run `backlight-agent consent show` to read the notice and `backlight-agent consent grant` to agree"
        ),
    }
    if std::io::stdin().is_terminal() {
        let notice = notice.to_string();
        // A plain thread: a blocking read of stdin cannot be cancelled, and a runtime waits for
        // its blocking tasks at shutdown; a detached thread ends with the process.
        let spawned = std::thread::Builder::new()
            .name("consent-prompt".into())
            .spawn(move || {
                if let Some(granted) = prompt_terminal(version, &notice) {
                    let _ = answers.blocking_send((version, granted));
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot ask on the terminal");
        }
    }
}

/// Asks on the terminal; `None` when stdin closes without an answer.
pub fn prompt_terminal(version: u32, notice: &str) -> Option<bool> {
    let mut out = std::io::stdout().lock();
    let notice = crate::terminal::printable(notice);
    let _ = writeln!(
        out,
        "\n── Backlight: your organisation's notice (policy version {version}) ──\n\n{notice}\n"
    );
    let _ = write!(out, "Do you consent to this recording? [y/N] ");
    let _ = out.flush();
    drop(out);
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(matches!(
            line.trim().to_ascii_lowercase().as_str(),
            "y" | "yes"
        )),
    }
}

/// Opens `url` in the default browser (Windows), or with `xdg-open` when a graphical session
/// is there; failures are only logged.
#[cfg(windows)]
fn open_in_browser(url: &str) {
    if let Err(error) = crate::platform::windows::open_url(url) {
        tracing::info!(%error, "cannot open the default browser; open the URL above yourself");
    }
}

/// Opens `url` with `xdg-open` when a graphical session is there; failures are only logged.
#[cfg(not(windows))]
fn open_in_browser(url: &str) {
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !graphical {
        return;
    }
    match std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // Reap it in the background so it does not linger as a zombie.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(error) => tracing::info!(%error, "cannot run xdg-open; open the URL above yourself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(consent: Option<(bool, u32)>, pause: Option<u64>) -> Control {
        Control {
            consent: consent.map(|(granted, version)| ConsentChange {
                granted,
                policy_version: version,
                scope: SCOPE.into(),
                at_ms: 1,
            }),
            pause_until_ms: pause,
        }
    }

    #[test]
    fn no_answer_asks() {
        assert_eq!(gate(&control(None, None), 1, 100), Gate::Ask { version: 1 });
    }

    #[test]
    fn granted_opens_for_that_version_and_earlier() {
        assert_eq!(gate(&control(Some((true, 3)), None), 3, 100), Gate::Open);
        assert_eq!(gate(&control(Some((true, 3)), None), 2, 100), Gate::Open);
    }

    #[test]
    fn a_new_policy_version_asks_again() {
        assert_eq!(
            gate(&control(Some((true, 3)), None), 4, 100),
            Gate::Ask { version: 4 }
        );
        assert_eq!(
            gate(&control(Some((false, 3)), None), 4, 100),
            Gate::Ask { version: 4 }
        );
    }

    #[test]
    fn declined_or_revoked_refuses() {
        assert_eq!(
            gate(&control(Some((false, 3)), None), 3, 100),
            Gate::Refused { version: 3 }
        );
    }

    #[test]
    fn pause_closes_until_it_ends() {
        assert_eq!(
            gate(&control(Some((true, 1)), Some(200)), 1, 100),
            Gate::Paused { until_ms: 200 }
        );
        assert_eq!(
            gate(&control(Some((true, 1)), Some(200)), 1, 200),
            Gate::Open
        );
        // A pause never opens a gate that consent keeps shut.
        assert_eq!(
            gate(&control(None, Some(200)), 1, 300),
            Gate::Ask { version: 1 }
        );
    }
}
