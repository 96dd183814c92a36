//! `backlight-agent`: the command-line entry point. Parses arguments, sets up logging and a
//! single-threaded runtime (the agent must stay small on a desktop), and hands over to the
//! library's commands.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use backlight_agent::cli::{Cli, Command, ConsentCommand};
use backlight_agent::consent::{commands, show};
use backlight_agent::{data_dir, enroll, run, status};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("backlight-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let dir = data_dir::resolve(cli.data_dir)?;
    match cli.command {
        Command::Enroll(args) => {
            let credentials = runtime()?.block_on(enroll::enroll(&dir, &args.options()))?;
            println!("enrolled");
            println!("device id: {}", credentials.device_id);
            println!("tenant:    {}", credentials.tenant_id);
            println!("server:    {}", credentials.server_url);
            println!("state in:  {}", dir.display());
        }
        Command::Run(args) => runtime()?.block_on(run::run(&dir, args.options()))?,
        Command::Status(args) => print_status(&dir, args.json)?,
        Command::Consent(ConsentCommand::Show) => {
            print!("{}", runtime()?.block_on(commands::show(&dir))?)
        }
        Command::Consent(ConsentCommand::Grant { yes }) => {
            print!("{}", runtime()?.block_on(commands::grant(&dir, yes))?)
        }
        Command::Consent(ConsentCommand::Revoke) => {
            print!("{}", runtime()?.block_on(commands::revoke(&dir))?)
        }
        Command::Pause(args) => print!(
            "{}",
            runtime()?.block_on(commands::pause(
                &dir,
                args.duration.filter(|_| !args.resume)
            ))?
        ),
        Command::Item(args) => print!(
            "{}",
            runtime()?.block_on(commands::item(&dir, args.action, &args.item, args.step))?
        ),
        Command::Show(args) => {
            let today = show::today(&dir)?;
            if args.json {
                println!("{}", serde_json::to_string(&today)?);
            } else {
                print!("{}", show::render_text(&today));
            }
        }
    }
    Ok(())
}

fn print_status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let report = status::gather(dir)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", status::render(&report));
    }
    Ok(())
}

/// One thread for everything async: the agent's work is a trickle of events and one upload at
/// a time, and every extra worker thread costs memory on each desktop.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Compact logs on stderr, filtered by `BACKLIGHT_LOG` (`RUST_LOG` syntax, default `info`).
fn init_logging() {
    let filter = match std::env::var("BACKLIGHT_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|error| {
            eprintln!(
                "backlight-agent: ignoring BACKLIGHT_LOG={spec:?} ({error}); logging at info"
            );
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .compact()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}
