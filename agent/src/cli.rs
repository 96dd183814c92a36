//! The command line: `backlight-agent [--data-dir DIR] enroll|run|status`.

use std::path::PathBuf;
use std::time::Duration;

use backlight_shared::batch::limits;
use clap::{Args, Parser, Subcommand};

use crate::duration;
use crate::enroll::EnrollOptions;
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
}

impl EnrollArgs {
    pub fn options(&self) -> EnrollOptions {
        EnrollOptions {
            server_url: self.server.clone(),
            enrollment_key: self.key.clone(),
            force: self.force,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where events come from: `synthetic` (demo data; never on a real employee's desktop),
    /// `file:PATH` (JSON Lines of event bodies, each line recorded once), or `none` (only the
    /// agent's health reports)
    #[arg(long, default_value = "none", value_name = "SOURCE")]
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
    /// Longest an event waits for its batch to fill (e.g. 500ms, 5s, 2m)
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = duration::parse)]
    pub batch_max_age: Duration,
    /// Most events kept while the server is unreachable; beyond it the oldest are dropped (and
    /// counted)
    #[arg(long, default_value_t = 1_000_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_events: u64,
    /// How often the agent records a health report
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration::parse)]
    pub health_interval: Duration,
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
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object (fields: enrolled, device_id, tenant_id, server_url, spool_depth,
    /// last_seq, events_dropped, events_rejected, last_upload_ms, last_error)
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
        assert_eq!(options.source, SourceSpec::None);
        assert_eq!(options.rate, 2.0);
        assert_eq!(options.batch_max_events, 1000);
        assert_eq!(options.batch_max_age, Duration::from_secs(5));
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
        assert_eq!(args.batch_max_age, Duration::from_millis(500));
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
            vec!["run", "--source", "desktop"],
            vec!["run", "--spool-max-events", "0"],
        ] {
            let argv = std::iter::once("backlight-agent").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
