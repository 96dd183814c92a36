//! `backlight-server`: see `backlight-server --help` and the crate docs of `backlight_server`.

use anyhow::Result;
use backlight_server::cli::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    backlight_server::serve::install_crypto_provider();
    match cli.command {
        None | Some(Command::Serve) => {
            backlight_server::telemetry::init_logging(cli.serve.log_json);
            backlight_server::serve::serve(cli.storage, cli.serve, cli.webhooks).await
        }
        Some(Command::Admin(command)) => {
            // Admin output is for people: keep logs to warnings unless asked.
            if std::env::var_os("BACKLIGHT_LOG").is_none() {
                std::env::set_var("BACKLIGHT_LOG", "warn");
            }
            backlight_server::telemetry::init_logging(false);
            backlight_server::admin::run(cli.storage, cli.webhooks, command).await
        }
    }
}
