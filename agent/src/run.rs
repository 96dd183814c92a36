//! `backlight-agent run`: records events from a source into the spool and uploads them, until
//! SIGINT/SIGTERM (or, with `--exit-when-drained`, until the source is exhausted and the spool
//! is empty).
//!
//! Three tasks share one spool: the source pump, the health reporter and the uploader. On
//! shutdown each stops at its next await point; a spool commit already started always finishes
//! (the spool's owner thread does not abandon a transaction because a caller stopped waiting),
//! and events not yet acknowledged simply wait for the next run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::credentials::{self, CredentialsError};
use crate::data_dir;
use crate::health::{self, ClockOffset};
use crate::http::{self, InvalidServerUrl};
use crate::source::file::FileSource;
use crate::source::none::NoSource;
use crate::source::synthetic::SyntheticSource;
use crate::source::{Pulled, Source, SourceError, SourceSpec};
use crate::spool::{Spool, SpoolConfig, SpoolError};
use crate::upload::{Finished, UploadConfig, Uploader};

/// How often an exhausted source is asked again (a file may grow).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
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
    pub batch_max_age: Duration,
    pub spool_max_events: u64,
    pub health_interval: Duration,
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
    let result = run_with(&credentials, &spool, options, &mut signals).await;
    spool.close().await;
    result
}

async fn run_with(
    credentials: &credentials::Credentials,
    spool: &Spool,
    options: RunOptions,
    signals: &mut Signals,
) -> Result<(), RunError> {
    let clock = ClockOffset::new();
    let uploader = Uploader::new(
        http::client().map_err(RunError::Client)?,
        credentials,
        spool.clone(),
        UploadConfig::new(options.batch_max_events, options.batch_max_age),
        clock.clone(),
    )?;
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
    }
    tasks.spawn(report_health(
        spool.clone(),
        clock,
        options.health_interval,
        shutdown.clone(),
    ));
    tasks.spawn(async move {
        match uploader.run(shutdown, drain).await? {
            Finished::Drained => Ok(TaskEnd::Drained),
            Finished::Stopped => Ok(TaskEnd::Stopped),
        }
    });

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
            return Ok(TaskEnd::Stopped);
        }
        // Abandoning a pull loses nothing: its progress was not committed.
        let pulled = tokio::select! {
            pulled = source.pull() => pulled?,
            _ = shutdown.changed() => return Ok(TaskEnd::Stopped),
        };
        match pulled {
            Pulled::Events { bodies, progress } => {
                if bodies.is_empty() && progress == Default::default() {
                    continue;
                }
                // Not raced against shutdown: once started, the commit completes.
                spool.append(bodies, progress).await?;
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

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
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
        #[cfg(not(unix))]
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
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                // Without signal support, never report one.
                Err(_) => std::future::pending::<&'static str>().await,
            }
        }
    }
}
