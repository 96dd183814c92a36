//! The command line: `backlight-agent [--data-dir DIR] [--log-to-file]
//! enroll|run|status|consent|pause|item|show` (and `install|uninstall` on Windows).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use backlight_shared::batch::limits;
use clap::{Args, Parser, Subcommand};

use crate::duration;
use crate::enroll::EnrollOptions;
use crate::items::Verb;
use crate::run::RunOptions;
use crate::source::SourceSpec;

/// Backlight desktop agent: records work with consent, keeps it in a local spool, and uploads
/// it to the Backlight server.
#[derive(Debug, Parser)]
#[command(name = "backlight-agent", version, propagate_version = true)]
pub struct Cli {
    /// Directory for the agent's state (credentials and spool) [default: the platform's
    /// per-user local data directory, e.g. ~/.local/share/backlight-agent]
    #[arg(long, global = true, env = "BACKLIGHT_AGENT_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Write logs to daily files in the data directory's `logs` folder (the last 7 kept)
    /// instead of standard error. The Windows launcher (backlight-agentw) sets it.
    #[arg(long, global = true)]
    pub log_to_file: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this device with a Backlight server, using an enrollment key from an admin.
    Enroll(EnrollArgs),
    /// Record events and upload them until stopped (SIGINT/SIGTERM).
    Run(RunArgs),
    /// Show the enrollment, the spool and the last upload. Works while `run` is running.
    Status(StatusArgs),
    /// Read the organisation's notice, and grant or withdraw consent to recording.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Pause recording for private time (e.g. `pause 30m`); it resumes by itself.
    Pause(PauseArgs),
    /// Report a work item yourself: `item start CLM-1042 --step intake`.
    Item(ItemArgs),
    /// Show exactly what this computer recorded today, and what is waiting to be sent.
    Show(ShowArgs),
    /// Start the agent at each logon of this user, without a console window (the per-user Run
    /// key), and start it now.
    #[cfg(windows)]
    Install(InstallArgs),
    /// Stop starting the agent at logon. Removes only the Run value: recorded data and a
    /// running agent are left alone.
    #[cfg(windows)]
    Uninstall,
}

#[cfg(windows)]
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Only register the autostart; do not start the agent now
    #[arg(long)]
    pub no_start: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Show the notice, your answer, and the local consent page (while `run` is running).
    Show,
    /// Consent to the notice of the policy in force (recording starts within a second).
    Grant {
        /// Do not ask for confirmation on the terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Withdraw consent: recording stops at once and data not yet sent is deleted.
    Revoke,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["duration", "resume"])))]
pub struct PauseArgs {
    /// How long to pause (e.g. 30m, 2h; at most 24h)
    #[arg(value_parser = parse_pause)]
    pub duration: Option<Duration>,
    /// End the pause now
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Args)]
pub struct ItemArgs {
    /// What happened: start, pause, resume, done or transfer
    pub action: Verb,
    /// The work item's id (claim, order, case number)
    pub item: String,
    /// The step of the work item
    #[arg(long)]
    pub step: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print one JSON object (fields: since_ms, waiting, events[{seq, recorded_ms, upload,
    /// event}])
    #[arg(long)]
    pub json: bool,
}

/// Longest pause: private time is for a break, not a way to stop the agent for days (that is
/// what withdrawing consent is for).
const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

fn parse_pause(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text).map_err(|e| e.to_string())?;
    if d > MAX_PAUSE {
        return Err("a pause lasts at most 24h".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    // `help` rather than a doc comment: a bare URL in a doc comment trips rustdoc.
    #[arg(
        long,
        value_name = "URL",
        help = "Base URL of the Backlight server, e.g. https://backlight.example.com"
    )]
    pub server: String,
    /// Enrollment key (ble_…). Prefer the environment variable: command lines are visible to
    /// other users of the machine.
    #[arg(
        long,
        value_name = "KEY",
        env = "BACKLIGHT_ENROLLMENT_KEY",
        hide_env_values = true
    )]
    pub key: String,
    /// Replace an existing enrollment (events already spooled are uploaded as the new device).
    #[arg(long)]
    pub force: bool,
    /// Allow a plain http:// server that is not on this computer: the device credential and
    /// the recorded work then cross the network unencrypted. For labs only; remembered in
    /// credentials.json.
    #[arg(long)]
    pub insecure_http: bool,
}

impl EnrollArgs {
    pub fn options(&self) -> EnrollOptions {
        EnrollOptions {
            server_url: self.server.clone(),
            enrollment_key: self.key.clone(),
            force: self.force,
            insecure_http: self.insecure_http,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where events come from: `desktop` (the focused window, idle and lock, after consent),
    /// `synthetic` (demo data; never on a real employee's desktop), `file:PATH` (JSON Lines of
    /// event bodies, each line recorded once), or `none` (only the agent's health reports)
    #[arg(long, default_value = "desktop", value_name = "SOURCE")]
    pub source: SourceSpec,
    /// Events per second of the synthetic source
    #[arg(long, default_value_t = 2.0, value_name = "EVENTS_PER_SEC", value_parser = parse_rate)]
    pub rate: f64,
    /// Exit (status 0) once the source is exhausted and every event is uploaded
    #[arg(long)]
    pub exit_when_drained: bool,
    /// Most events per upload batch
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=limits::MAX_EVENTS_PER_BATCH as u64))]
    pub batch_max_events: u64,
    /// Longest an event waits for its batch to fill (e.g. 500ms, 5s, 2m) [default: the policy's
    /// upload_interval_ms, 30s unless an admin changed it]
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub batch_max_age: Option<Duration>,
    /// Most events kept while the server is unreachable; beyond it the oldest are dropped (and
    /// counted)
    #[arg(long, default_value_t = 1_000_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_events: u64,
    /// How often the agent records a health report
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration::parse)]
    pub health_interval: Duration,
    /// How often the agent asks the server for a new policy
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration::parse)]
    pub policy_interval: Duration,
    /// Where the local item API listens (a loopback address), or `off`
    #[arg(long, default_value = crate::local_api::DEFAULT_ADDR, value_name = "ADDR|off", value_parser = parse_local_api)]
    pub local_api: LocalApi,
    /// Do not open the consent page in a browser (its address is still logged)
    #[arg(long)]
    pub no_browser: bool,
}

/// The `--local-api` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalApi {
    Off,
    On(SocketAddr),
}

fn parse_local_api(text: &str) -> Result<LocalApi, String> {
    if text == "off" {
        return Ok(LocalApi::Off);
    }
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:47777 (or off)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the local API is for this computer only"
        ));
    }
    Ok(LocalApi::On(addr))
}

impl RunArgs {
    pub fn options(&self) -> RunOptions {
        RunOptions {
            source: self.source.clone(),
            rate: self.rate,
            exit_when_drained: self.exit_when_drained,
            // The parser bounds it to the protocol's batch limit, which fits any usize.
            batch_max_events: usize::try_from(self.batch_max_events)
                .unwrap_or(limits::MAX_EVENTS_PER_BATCH),
            batch_max_age: self.batch_max_age,
            spool_max_events: self.spool_max_events,
            health_interval: self.health_interval,
            policy_interval: self.policy_interval,
            local_api: match self.local_api {
                LocalApi::Off => None,
                LocalApi::On(addr) => Some(addr),
            },
            open_browser: !self.no_browser,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object (fields: enrolled, device_id, tenant_id, server_url, spool_depth,
    /// last_seq, events_dropped, events_rejected, last_upload_ms, last_error, consent_granted,
    /// consent_policy_version, policy_version, policy_error, paused_until_ms, capture)
    #[arg(long)]
    pub json: bool,
}

/// Highest synthetic rate: enough for load tests, low enough that a typo cannot fill the disk
/// in seconds.
const MAX_RATE: f64 = 100_000.0;

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(rate > 0.0 && rate <= MAX_RATE) {
        return Err(format!("the rate must be above 0 and at most {MAX_RATE}"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_match_the_documentation() {
        let cli = Cli::try_parse_from(["backlight-agent", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        let options = args.options();
        assert_eq!(options.source, SourceSpec::Desktop);
        assert_eq!(options.rate, 2.0);
        assert_eq!(options.batch_max_events, 1000);
        assert_eq!(options.batch_max_age, None);
        assert_eq!(options.policy_interval, Duration::from_secs(60));
        assert_eq!(options.local_api, Some("127.0.0.1:47777".parse().unwrap()));
        assert!(options.open_browser);
        assert_eq!(options.spool_max_events, 1_000_000);
        assert_eq!(options.health_interval, Duration::from_secs(60));
        assert!(!options.exit_when_drained);
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "backlight-agent",
            "run",
            "--data-dir",
            "/tmp/x",
            "--source",
            "file:/tmp/in.jsonl",
            "--rate",
            "50",
            "--exit-when-drained",
            "--batch-max-events",
            "10",
            "--batch-max-age",
            "500ms",
            "--health-interval",
            "2m",
        ])
        .unwrap();
        assert_eq!(cli.data_dir, Some(PathBuf::from("/tmp/x")));
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.source, SourceSpec::File("/tmp/in.jsonl".into()));
        assert_eq!(args.batch_max_age, Some(Duration::from_millis(500)));
        assert!(args.exit_when_drained);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            vec!["run", "--rate", "0"],
            vec!["run", "--rate", "NaN"],
            vec!["run", "--batch-max-events", "0"],
            vec!["run", "--batch-max-events", "5001"],
            vec!["run", "--batch-max-age", "5"],
            vec!["run", "--source", "x11"],
            vec!["run", "--spool-max-events", "0"],
            vec!["run", "--local-api", "0.0.0.0:47777"],
            vec!["run", "--local-api", "192.168.1.2:80"],
            vec!["pause"],
            vec!["pause", "25h"],
            vec!["item", "finish", "CLM-1"],
            vec!["consent", "maybe"],
        ] {
            let argv = std::iter::once("backlight-agent").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn new_commands_parse() {
        let cli = Cli::try_parse_from(["backlight-agent", "item", "done", "CLM-1", "--step", "x"])
            .unwrap();
        let Command::Item(item) = cli.command else {
            panic!("expected item");
        };
        assert_eq!(
            item.action,
            Verb(backlight_shared::event::ItemAction::Completed)
        );
        assert_eq!(item.step.as_deref(), Some("x"));
        let cli = Cli::try_parse_from(["backlight-agent", "pause", "30m"]).unwrap();
        let Command::Pause(pause) = cli.command else {
            panic!("expected pause");
        };
        assert_eq!(pause.duration, Some(Duration::from_secs(1800)));
        assert!(Cli::try_parse_from(["backlight-agent", "pause", "--resume"]).is_ok());
        assert!(Cli::try_parse_from(["backlight-agent", "run", "--local-api", "off"]).is_ok());
        assert!(Cli::try_parse_from(["backlight-agent", "run", "--local-api", "[::1]:9"]).is_ok());
    }
}
