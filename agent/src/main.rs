//! `backlight-agent`: the command-line entry point. Parses arguments, sets up logging and a
//! single-threaded runtime (the agent must stay small on a desktop), and hands over to the
//! library's commands.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use backlight_agent::cli::{Cli, Command, ConsentCommand};
use backlight_agent::consent::{commands, show};
use backlight_agent::data_dir::RunLockError;
use backlight_agent::{autostart, credentials, data_dir, enroll, provisioning, run, status};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = match data_dir::resolve(cli.data_dir.clone()) {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("backlight-agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    let to_file = cli.log_to_file.then(|| dir.join(data_dir::LOG_DIR));
    if to_file.is_some() {
        // Before the log folder is made inside it: a data directory is created private.
        if let Err(error) = data_dir::ensure(&dir) {
            eprintln!(
                "backlight-agent: cannot create the data directory {}: {error}",
                dir.display()
            );
        }
    }
    init_logging(to_file.as_deref());
    match dispatch(cli, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if to_file.is_some() {
                tracing::error!("{error:#}");
            }
            eprintln!("backlight-agent: {error:#}");
            match error.downcast_ref::<RunLockError>() {
                Some(RunLockError::AlreadyRunning { .. }) => {
                    ExitCode::from(autostart::EXIT_ALREADY_RUNNING)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn dispatch(cli: Cli, dir: &Path) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    match cli.command {
        Command::Enroll(args) => {
            let credentials = runtime()?.block_on(enroll::enroll(&dir, &args.options()))?;
            println!("enrolled");
            println!("device id: {}", credentials.device_id);
            println!("tenant:    {}", credentials.tenant_id);
            println!("server:    {}", credentials.server_url);
            println!("state in:  {}", dir.display());
        }
        Command::Run(args) => {
            let runtime = runtime()?;
            let enrolled = credentials::load(&dir)?.is_some();
            let deployed = if enrolled {
                None
            } else {
                provisioning::machine_enrollment()?
            };
            // Without an enrollment or settings to enroll with there is nothing to lock: `run`
            // says the device is not enrolled, and no directory is made for that.
            let _lock = if enrolled || deployed.is_some() {
                data_dir::ensure(&dir).with_context(|| {
                    format!("cannot create the data directory {}", dir.display())
                })?;
                Some(data_dir::lock_for_run(&dir)?)
            } else {
                None
            };
            if let Some(settings) = deployed {
                runtime.block_on(enroll_with_machine_settings(&dir, &settings))?;
            }
            runtime.block_on(run::run(&dir, args.options()))?
        }
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
        #[cfg(windows)]
        Command::Install(args) => install(&dir, cli.data_dir.as_deref(), args.no_start)?,
        #[cfg(windows)]
        Command::Uninstall => uninstall(&dir)?,
    }
    Ok(())
}

/// On a device not enrolled yet, enrolls with the server and key an administrator deployed to
/// the machine (the MSI's properties, Group Policy), so a silent roll-out needs no step by the
/// employee. Runs under the run lock, so two agents starting together enroll once.
async fn enroll_with_machine_settings(
    dir: &Path,
    settings: &provisioning::MachineEnrollment,
) -> anyhow::Result<()> {
    if credentials::load(dir)?.is_some() {
        return Ok(());
    }
    tracing::info!(
        server = %settings.server_url,
        from = %settings.source,
        "not enrolled yet; enrolling with the machine's deployment settings"
    );
    let credentials = enroll::enroll(dir, &settings.options())
        .await
        .with_context(|| format!("enrolling with the settings in {}", settings.source))?;
    tracing::info!(device_id = %credentials.device_id, tenant = %credentials.tenant_id, "enrolled");
    Ok(())
}

#[cfg(windows)]
fn install(dir: &Path, explicit_dir: Option<&Path>, no_start: bool) -> anyhow::Result<()> {
    use backlight_agent::autostart::{Installed, RUN_KEY, RUN_VALUE};
    if credentials::load(dir)?.is_none() && provisioning::machine_enrollment()?.is_none() {
        anyhow::bail!(
            "this device is not enrolled: run `backlight-agent enroll --server URL --key KEY` \
             first (or deploy the MSI with SERVER= and ENROLLMENT_KEY=)"
        );
    }
    let command = match autostart::install(explicit_dir)? {
        Installed::PerUser { command } => {
            println!("the agent now starts at each logon of this user, without a window");
            println!("autostart: HKCU\\{RUN_KEY}\\{RUN_VALUE} = {command}");
            command
        }
        Installed::MachineWide { command } => {
            println!(
                "the agent already starts at each logon of every user of this computer \
                 (installed with the MSI); nothing to add"
            );
            println!("autostart: HKLM\\{RUN_KEY}\\{RUN_VALUE} = {command}");
            command
        }
    };
    println!("state in:  {}", dir.display());
    if !no_start {
        let exe = std::env::current_exe()?.with_file_name(autostart::LAUNCHER_EXE);
        let mut launcher = std::process::Command::new(exe);
        if let Some(explicit) = explicit_dir {
            launcher.arg("--data-dir").arg(explicit);
        }
        launcher
            .arg("run")
            .spawn()
            .with_context(|| format!("cannot start the agent ({command})"))?;
        println!("started; `backlight-agent status` shows what it does");
    }
    Ok(())
}

#[cfg(windows)]
fn uninstall(dir: &Path) -> anyhow::Result<()> {
    use backlight_agent::autostart::{RUN_KEY, RUN_VALUE};
    let done = autostart::uninstall()?;
    if done.removed {
        println!("the agent no longer starts at logon for this user (removed HKCU\\{RUN_KEY}\\{RUN_VALUE})");
    } else {
        println!("the agent was not set to start at logon for this user; nothing to remove");
    }
    if let Some(command) = done.machine_wide {
        println!(
            "note: the MSI starts it for every user of this computer ({command}); \
             uninstall the MSI to stop that"
        );
    }
    println!(
        "a running agent keeps running until you sign out (stop it now: taskkill /im backlight-agent.exe);\n\
         recorded data stays in {} (`backlight-agent consent revoke` deletes what was not sent)",
        dir.display()
    );
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

/// Compact logs on stderr, or in daily files in `to_file` (the last 7 kept), filtered by
/// `BACKLIGHT_LOG` (`RUST_LOG` syntax, default `info`).
fn init_logging(to_file: Option<&Path>) {
    let filter = match std::env::var("BACKLIGHT_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|error| {
            eprintln!(
                "backlight-agent: ignoring BACKLIGHT_LOG={spec:?} ({error}); logging at info"
            );
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().compact().with_env_filter(filter);
    let files = to_file.map(|dir| {
        tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("agent")
            .filename_suffix("log")
            .max_log_files(LOG_FILES_KEPT)
            .build(dir)
    });
    match files {
        Some(Ok(appender)) => builder.with_ansi(false).with_writer(appender).init(),
        Some(Err(error)) => {
            eprintln!("backlight-agent: cannot log to files ({error}); logging to stderr");
            builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init()
        }
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
}

/// Daily log files kept by `--log-to-file`: a week of history for support, bounded on disk.
const LOG_FILES_KEPT: usize = 7;
