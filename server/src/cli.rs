//! The command-line contract of `backlight-server` (other tools and the docs rely on it):
//!
//! - no arguments: serve on `127.0.0.1:8080`, data (and the embedded ClickHouse) under
//!   `./backlight-data`;
//! - `--listen`, `--data-dir`, `--clickhouse-url` (and `BACKLIGHT_LISTEN`, `BACKLIGHT_DATA_DIR`,
//!   `BACKLIGHT_CLICKHOUSE_URL`) override;
//! - `admin …` manages tenants, keys and devices.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::tenancy::{Role, TenantId};

#[derive(Parser, Debug)]
#[command(
    name = "backlight-server",
    version,
    about = "Backlight server: enrollment, ingest into ClickHouse, item status and reports"
)]
pub struct Cli {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (the default when no subcommand is given).
    Serve,
    /// Manage tenants, enrollment keys, API keys and devices.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Where data lives. Shared by `serve` and `admin`.
#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Directory for the server's data, including the embedded ClickHouse.
    #[arg(
        long,
        env = "BACKLIGHT_DATA_DIR",
        default_value = "./backlight-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// ClickHouse HTTP URL, e.g. http://clickhouse:8123. Without it the server starts and
    /// supervises its own local ClickHouse under the data directory.
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_URL", global = true)]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database holding Backlight's tables (created if missing).
    #[arg(
        long,
        env = "BACKLIGHT_CLICKHOUSE_DATABASE",
        default_value = "backlight",
        global = true
    )]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_USER", global = true)]
    pub clickhouse_user: Option<String>,
    /// ClickHouse password (prefer the environment variable to keep it out of `ps`).
    #[arg(
        long,
        env = "BACKLIGHT_CLICKHOUSE_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub clickhouse_password: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BACKLIGHT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long, env = "BACKLIGHT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "BACKLIGHT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How long a device lookup is cached; a revocation takes effect on every server within it.
    /// Item lookups reuse a tenant's settings and device assignments for at most this (≤ 5 s).
    #[arg(long, env = "BACKLIGHT_AUTH_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,
    /// Longest an accepted batch waits to be grouped with others into one ClickHouse INSERT.
    #[arg(long, env = "BACKLIGHT_INSERT_MAX_DELAY", default_value = "500ms", value_parser = parse_duration)]
    pub insert_max_delay: Duration,
    /// How long to keep trying to reach ClickHouse at start before giving up.
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub clickhouse_wait: Duration,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "BACKLIGHT_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Tenants: the organisations whose data Backlight keeps apart.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Enrollment keys: what an agent needs to enroll a desktop.
    #[command(subcommand, name = "enrollment-key")]
    EnrollmentKey(EnrollmentKeyCommand),
    /// API keys for the status and report APIs.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The tenant's agent policy: rules, privacy, consent notice.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the tenant's current policy as JSON.
    Show {
        #[arg(long)]
        tenant: TenantId,
    },
    /// Validate and save a policy from a JSON file (`-` for stdin); agents apply it without a
    /// restart. A changed notice or a policy that records more needs a higher version.
    Set {
        #[arg(long)]
        tenant: TenantId,
        file: PathBuf,
    },
    /// Every policy the tenant saved: when, by whom, what changed (newest first).
    History {
        #[arg(long)]
        tenant: TenantId,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Tenant id: a-z, 0-9 and '-', e.g. acme-insurance.
        id: TenantId,
        /// Display name (defaults to the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List,
    /// Change a tenant's settings.
    Set {
        id: TenantId,
        /// Show people's names (otherwise only teams) to roles allowed per-person data.
        #[arg(long)]
        show_person_names: Option<bool>,
        /// IANA time zone reports use when the caller names none, e.g. Europe/Berlin.
        #[arg(long)]
        time_zone: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentKeyCommand {
    /// Create an enrollment key; its secret is printed once.
    Create {
        #[arg(long)]
        tenant: TenantId,
        /// Expire the key after this long (e.g. 7d); never by default.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
        /// A note for admins, e.g. "claims team rollout".
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List a tenant's enrollment keys (never their secrets).
    List {
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke an enrollment key: no new devices can enroll with it.
    Revoke {
        #[arg(long)]
        tenant: TenantId,
        key_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Create an API key; its secret is printed once.
    Create {
        #[arg(long)]
        tenant: TenantId,
        /// cc_agent (item status), wfm (reports) or admin.
        #[arg(long)]
        role: Role,
        /// Who or what uses the key, e.g. "crm-integration".
        #[arg(long)]
        name: String,
    },
    /// List a tenant's API keys (never their secrets).
    List {
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke an API key.
    Revoke {
        #[arg(long)]
        tenant: TenantId,
        key_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// List a tenant's devices with their upload progress and sequence gaps.
    List {
        #[arg(long)]
        tenant: TenantId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its uploads are refused with 403 from then on.
    Revoke {
        #[arg(long)]
        tenant: TenantId,
        device_id: Uuid,
    },
    /// Say which team (and person) works at a device; work is attributed accordingly.
    Assign {
        #[arg(long)]
        tenant: TenantId,
        device_id: Uuid,
        #[arg(long)]
        team: String,
        /// The person's name, shown only where the tenant enabled names.
        #[arg(long, default_value = "")]
        person: String,
    },
}

/// Parses durations such as `500ms`, `5s`, `2m`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 5s, 2m, 7d)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["backlight-server"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.storage.data_dir, PathBuf::from("./backlight-data"));
    }

    #[test]
    fn admin_takes_global_storage_flags() {
        let cli = Cli::try_parse_from([
            "backlight-server",
            "admin",
            "tenant",
            "create",
            "acme",
            "--clickhouse-url",
            "http://ch:8123",
        ])
        .unwrap();
        assert_eq!(
            cli.storage.clickhouse_url.as_deref(),
            Some("http://ch:8123")
        );
        assert!(
            Cli::try_parse_from(["backlight-server", "admin", "tenant", "create", "Bad Name"])
                .is_err()
        );
    }
}
