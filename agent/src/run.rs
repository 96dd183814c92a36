//! `backlight-agent run`: records events from a source into the spool and uploads them, until
//! SIGINT/SIGTERM (on Windows: Ctrl-C, the end of the session or `taskkill`), or, with
//! `--exit-when-drained`, until the source is exhausted and the spool is empty.
//!
//! Tasks share one spool: the source pump, the health reporter, the uploader, the policy poller,
//! the wake listener (`crate::wake`) and the local item API; with the desktop source also the
//! consent control loop (gate, asking) and the local consent page. On shutdown each stops at its next await point; a spool commit
//! already started always finishes (the spool's owner thread does not abandon a transaction
//! because a caller stopped waiting), the desktop source's open span is flushed, and events not
//! yet acknowledged simply wait for the next run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::consent::{self, AskOptions};
use crate::credentials::{self, CredentialsError};
use crate::data_dir;
use crate::desktop::{DesktopSource, Opener};
use crate::health::{self, ClockOffset};
use crate::http::{self, InvalidServerUrl};
use crate::policy::{self, ActivePolicy, Fetcher};
use crate::source::file::FileSource;
use crate::source::none::NoSource;
use crate::source::synthetic::SyntheticSource;
use crate::source::{Pulled, Source, SourceError, SourceSpec};
use crate::spool::{Spool, SpoolConfig, SpoolError, MAX_SEEN_ITEMS};
use crate::upload::{Finished, UploadConfig, Uploader};

/// How often an exhausted source is asked again (a file may grow).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How long `run` waits for the server's policy at start before it uses the cached one (so
/// the employee is asked about the current notice, not an old one).
const FIRST_POLICY_WAIT: Duration = Duration::from_secs(5);
/// How long tasks get to reach a stopping point after shutdown is requested. Each is at most
/// one spool transaction away from it; the margin covers a slow disk.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What `backlight-agent run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: SourceSpec,
    /// Events per second of the synthetic source.
    pub rate: f64,
    pub exit_when_drained: bool,
    pub batch_max_events: usize,
    /// `None`: the policy's `upload_interval_ms`, following policy changes.
    pub batch_max_age: Option<Duration>,
    pub spool_max_events: u64,
    pub health_interval: Duration,
    /// How often the server is asked for a new policy.
    pub policy_interval: Duration,
    /// Where the local item API listens (`None`: it does not run).
    pub local_api: Option<SocketAddr>,
    /// Open the consent page in the browser when asking.
    pub open_browser: bool,
}

/// The agent could not run, or stopped because of a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("this device is not enrolled (no credentials in {dir}); run `backlight-agent enroll --server URL --key KEY` first")]
    NotEnrolled { dir: PathBuf },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    InvalidServerUrl(#[from] InvalidServerUrl),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("cannot listen for shutdown signals: {0}")]
    Signals(std::io::Error),
    #[error("an agent task failed: {0}")]
    Task(String),
}

/// How a task ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskEnd {
    Stopped,
    SourceExhausted,
    Drained,
}

/// Runs the agent whose state is in `dir`.
pub async fn run(dir: &Path, options: RunOptions) -> Result<(), RunError> {
    // Listen first: a SIGTERM during start-up must stop us cleanly, not kill us mid-commit.
    let mut signals = Signals::listen().map_err(RunError::Signals)?;
    let credentials = credentials::load(dir)?.ok_or_else(|| RunError::NotEnrolled {
        dir: dir.to_path_buf(),
    })?;
    data_dir::ensure(dir).map_err(|source| RunError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let spool = Spool::open(
        &data_dir::spool_path(dir),
        SpoolConfig {
            max_events: options.spool_max_events,
        },
    )?;
    let result = run_with(
        dir,
        &credentials,
        &spool,
        options,
        DesktopSource::production_opener(),
        &mut signals,
    )
    .await;
    spool.close().await;
    result
}

/// Runs with an already open spool; `opener` opens the desktop backend (a script in tests).
async fn run_with(
    dir: &Path,
    credentials: &credentials::Credentials,
    spool: &Spool,
    options: RunOptions,
    opener: Opener,
    signals: &mut Signals,
) -> Result<(), RunError> {
    let clock = ClockOffset::new();
    let client = http::client().map_err(RunError::Client)?;
    tracing::info!(
        device_id = %credentials.device_id,
        server = %credentials.server_url,
        "backlight-agent {} starting",
        crate::AGENT_VERSION
    );
    health::record(spool, &clock).await?;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (drain_tx, drain) = watch::channel(false);
    let mut tasks: JoinSet<Result<TaskEnd, RunError>> = JoinSet::new();
    let exit = options.exit_when_drained;

    // The policy: cached, then the server's answer (briefly awaited), then polled.
    let cached = policy::load_cached(spool).await?;
    let mut fetcher = Fetcher::new(client.clone(), credentials, &cached)?;
    let (policy_tx, policy_rx) = watch::channel(Arc::new(cached));
    tokio::select! {
        first = tokio::time::timeout(FIRST_POLICY_WAIT, fetcher.fetch()) => match first {
            Ok(result) => policy::apply(result, spool, &policy_tx).await?,
            Err(_) => tracing::info!("the server did not send the policy in time; using the cached one"),
        },
        signal = signals.next() => {
            tracing::info!(signal, "stopping");
            return Ok(());
        }
    }
    {
        let spool = spool.clone();
        let shutdown = shutdown.clone();
        let interval = options.policy_interval;
        tasks.spawn(async move {
            policy::poll(fetcher, spool, policy_tx, interval, shutdown).await?;
            Ok(TaskEnd::Stopped)
        });
    }
    // Before the first item can be missed: `item` commands wake the uploader through this.
    match crate::wake::WakeListener::bind(dir).await {
        Ok(listener) => {
            let spool = spool.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                listener.serve(spool, shutdown).await;
                Ok(TaskEnd::Stopped)
            });
        }
        // Not fatal: `item` reports then wait for the uploader's next look at the spool.
        Err(error) => {
            tracing::error!(%error, "cannot listen for wakes from `backlight-agent item`")
        }
    }
    if let Some(addr) = options.local_api {
        match crate::local_api::start(
            addr,
            dir,
            spool.clone(),
            policy_rx.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(addr) => tracing::info!(%addr, "local item API listening"),
            // Not fatal: capture and uploads matter more than this door (another user's agent
            // may hold the port on a shared machine).
            Err(error) => tracing::error!(%error, "the local item API is not available"),
        }
    }

    match options.source {
        SourceSpec::Synthetic => {
            let source = SyntheticSource::new(options.rate);
            tasks.spawn(pump(
                source,
                spool.clone(),
                shutdown.clone(),
                drain_tx,
                exit,
            ));
        }
        SourceSpec::File(path) => {
            let source = FileSource::open(path, spool).await?;
            tasks.spawn(pump(
                source,
                spool.clone(),
                shutdown.clone(),
                drain_tx,
                exit,
            ));
        }
        SourceSpec::None => {
            tasks.spawn(pump(
                NoSource,
                spool.clone(),
                shutdown.clone(),
                drain_tx,
                exit,
            ));
        }
        SourceSpec::Desktop => {
            let refresh = Arc::new(Notify::new());
            let page_url = match consent::page::start(
                spool.clone(),
                dir.to_path_buf(),
                policy_rx.clone(),
                Arc::clone(&refresh),
                shutdown.clone(),
            )
            .await
            {
                Ok(url) => Some(url),
                Err(error) => {
                    tracing::error!(%error, "cannot start the local consent page; use `backlight-agent consent grant`");
                    None
                }
            };
            let initial = consent::gate(
                &spool.control().await?,
                policy_rx.borrow().policy.version,
                backlight_shared::now_ms(),
            );
            let (gate_tx, gate_rx) = watch::channel(initial);
            let ask = AskOptions {
                open_browser: options.open_browser,
                page_url,
            };
            {
                let spool = spool.clone();
                let policy_rx = policy_rx.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    consent::watch_control(spool, policy_rx, gate_tx, refresh, ask, shutdown)
                        .await?;
                    Ok(TaskEnd::Stopped)
                });
            }
            let seen = spool.seen_items(MAX_SEEN_ITEMS as usize).await?;
            let source =
                DesktopSource::new(opener, spool.clone(), policy_rx.clone(), gate_rx, seen);
            tasks.spawn(pump(
                source,
                spool.clone(),
                shutdown.clone(),
                drain_tx,
                exit,
            ));
        }
    }
    tasks.spawn(report_health(
        spool.clone(),
        clock.clone(),
        options.health_interval,
        shutdown.clone(),
    ));
    tasks.spawn(upload(
        client,
        credentials.clone(),
        spool.clone(),
        clock,
        options.batch_max_events,
        options.batch_max_age,
        policy_rx,
        shutdown,
        drain,
    ));

    let mut outcome = Ok(());
    loop {
        tokio::select! {
            signal = signals.next() => {
                tracing::info!(signal, "stopping");
                break;
            }
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(TaskEnd::Drained))) => {
                    tracing::info!("source exhausted and spool drained; exiting");
                    break;
                }
                Some(Ok(Ok(_))) => continue,
                Some(Ok(Err(error))) => {
                    outcome = Err(error);
                    break;
                }
                Some(Err(error)) => {
                    outcome = Err(RunError::Task(error.to_string()));
                    break;
                }
                None => break,
            },
        }
    }

    // Every task watches this flag and stops at its next await point.
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Err(error))) if outcome.is_ok() => outcome = Err(error),
                Some(_) => {}
            },
            _ = &mut deadline => {
                tracing::warn!("tasks did not stop within {SHUTDOWN_GRACE:?}; abandoning them");
                tasks.abort_all();
                break;
            }
        }
    }
    outcome
}

/// Moves events from `source` into the spool, one transaction per pull.
async fn pump<S: Source>(
    mut source: S,
    spool: Spool,
    mut shutdown: watch::Receiver<bool>,
    drain: watch::Sender<bool>,
    exit_when_drained: bool,
) -> Result<TaskEnd, RunError> {
    tracing::info!(source = %source.describe(), "recording");
    loop {
        if *shutdown.borrow() {
            return finish(&mut source, &spool).await;
        }
        // Abandoning a pull loses nothing: its progress was not committed.
        let pulled = tokio::select! {
            pulled = source.pull() => pulled?,
            _ = shutdown.changed() => return finish(&mut source, &spool).await,
        };
        match pulled {
            Pulled::Events { bodies, progress } => {
                if bodies.is_empty() && progress == Default::default() {
                    continue;
                }
                // Not raced against shutdown: once started, the commit completes.
                spool.append(bodies, progress).await?;
            }
            Pulled::Guarded { bodies, guard } => {
                if !bodies.is_empty() {
                    spool
                        .append_guarded(bodies, Default::default(), guard)
                        .await?;
                }
            }
            Pulled::Exhausted if exit_when_drained => {
                tracing::info!(source = %source.describe(), "source exhausted; exiting once the spool is drained");
                // The uploader may already be gone on shutdown; nothing is lost then.
                let _ = drain.send(true);
                return Ok(TaskEnd::SourceExhausted);
            }
            Pulled::Exhausted => {
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                    _ = shutdown.changed() => return Ok(TaskEnd::Stopped),
                }
            }
        }
    }
}

/// Commits what the source still holds at shutdown (the desktop's open span).
async fn finish<S: Source>(source: &mut S, spool: &Spool) -> Result<TaskEnd, RunError> {
    match source.finish() {
        Some(Pulled::Events { bodies, progress }) => {
            spool.append(bodies, progress).await?;
        }
        Some(Pulled::Guarded { bodies, guard }) if !bodies.is_empty() => {
            spool
                .append_guarded(bodies, Default::default(), guard)
                .await?;
        }
        _ => {}
    }
    Ok(TaskEnd::Stopped)
}

/// Runs the uploader; without a `--batch-max-age`, its batch age is the policy's
/// `upload_interval_ms`, and a policy change restarts it with the new one (abandoning an
/// upload step is safe: unacknowledged events stay in the spool).
#[allow(clippy::too_many_arguments)]
async fn upload(
    client: reqwest::Client,
    credentials: credentials::Credentials,
    spool: Spool,
    clock: Arc<health::ClockOffset>,
    batch_max_events: usize,
    batch_max_age: Option<Duration>,
    mut policy: watch::Receiver<Arc<ActivePolicy>>,
    mut shutdown: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
) -> Result<TaskEnd, RunError> {
    let age_of = |p: &ActivePolicy| {
        batch_max_age.unwrap_or(Duration::from_millis(p.policy.upload_interval_ms))
    };
    let mut follow_policy = batch_max_age.is_none();
    if credentials.insecure_http {
        tracing::warn!(server = %credentials.server_url, "enrolled with --insecure-http: the credential and the recorded work may cross the network unencrypted");
    }
    loop {
        let age = age_of(&policy.borrow_and_update());
        let uploader = Uploader::new(
            client.clone(),
            &credentials,
            spool.clone(),
            UploadConfig::new(batch_max_events, age),
            clock.clone(),
        )?;
        let (stop_tx, stop) = watch::channel(false);
        let running = uploader.run(stop, drain.clone());
        tokio::pin!(running);
        let restart = loop {
            tokio::select! {
                finished = &mut running => return match finished? {
                    Finished::Drained => Ok(TaskEnd::Drained),
                    Finished::Stopped => Ok(TaskEnd::Stopped),
                },
                changed = policy.changed(), if follow_policy => {
                    if changed.is_err() {
                        follow_policy = false;
                    } else if age_of(&policy.borrow()) != age {
                        break true;
                    }
                }
                _ = shutdown.changed() => break false,
            }
        };
        let _ = stop_tx.send(true);
        running.await?;
        if !restart {
            return Ok(TaskEnd::Stopped);
        }
        tracing::info!(batch_max_age = ?age_of(&policy.borrow()), "the policy changed the upload interval");
    }
}

/// Records a health event every `interval` (the first one is recorded at start).
async fn report_health(
    spool: Spool,
    clock: std::sync::Arc<ClockOffset>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<TaskEnd, RunError> {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    // After a suspend, one report, not a burst of them.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => health::record(&spool, &clock).await?,
            _ = shutdown.changed() => return Ok(TaskEnd::Stopped),
        }
    }
}

/// SIGINT and SIGTERM on unix; on Windows Ctrl-C, Ctrl-Break, a closed console, the end of
/// the Windows session and `WM_CLOSE` (`taskkill` without `/f`).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    windows: WindowsSignals,
}

#[cfg(windows)]
struct WindowsSignals {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
    ctrl_close: tokio::signal::windows::CtrlClose,
    /// Dropped when `run` returns, which lets a waiting session end proceed.
    session: crate::platform::windows::session_end::StopRequests,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
            Ok(Signals {
                windows: WindowsSignals {
                    ctrl_c: ctrl_c()?,
                    ctrl_break: ctrl_break()?,
                    ctrl_close: ctrl_close()?,
                    session: crate::platform::windows::session_end::StopRequests::listen()?,
                },
            })
        }
        #[cfg(not(any(unix, windows)))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(windows)]
        {
            let w = &mut self.windows;
            tokio::select! {
                _ = w.ctrl_c.recv() => "Ctrl-C",
                _ = w.ctrl_break.recv() => "Ctrl-Break",
                _ = w.ctrl_close.recv() => "the console was closed",
                why = w.session.next() => why,
            }
        }
        #[cfg(not(any(unix, windows)))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                // Without signal support, never report one.
                Err(_) => std::future::pending::<&'static str>().await,
            }
        }
    }
}
