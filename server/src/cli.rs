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

use crate::http::access_limits::AccessLimits;
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
    /// Requests per second one API key may send to this server (bursts up to twice that);
    /// beyond it, 429 with Retry-After.
    #[arg(long, env = "BACKLIGHT_API_KEY_RATE", default_value_t = AccessLimits::DEFAULT.api_key_rate, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_key_rate: u32,
    /// Units of query work one API key may have running on this server at once (a lookup
    /// costs 1, a search 8, a report 32); beyond it, 429 with Retry-After.
    #[arg(long, env = "BACKLIGHT_API_KEY_MAX_IN_FLIGHT", default_value_t = AccessLimits::DEFAULT.api_key_max_in_flight, value_parser = clap::value_parser!(u32).range(32..))]
    pub api_key_max_in_flight: u32,
    /// Enrollment attempts per second this server accepts, all keys together (bursts up to
    /// twice that).
    #[arg(long, env = "BACKLIGHT_ENROLL_RATE", default_value_t = AccessLimits::DEFAULT.enroll_rate, value_parser = clap::value_parser!(u32).range(1..))]
    pub enroll_rate: u32,
    /// The bearer token Prometheus must send for /metrics (at least 16 characters; prefer the
    /// environment variable). Without it /metrics is off.
    #[arg(long, env = "BACKLIGHT_METRICS_TOKEN", hide_env_values = true, value_parser = parse_metrics_token)]
    pub metrics_token: Option<String>,
    /// Also show sequence gaps per device in /metrics (labels name tenants and devices; the
    /// 1,000 devices with the most gaps). Off: only sums over all devices.
    #[arg(long, env = "BACKLIGHT_METRICS_PER_DEVICE")]
    pub metrics_per_device: bool,
    /// How often sequence gaps for /metrics are computed at most (each time a scan of the
    /// events table, in the background).
    #[arg(long, env = "BACKLIGHT_METRICS_PROGRESS_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub metrics_progress_interval: Duration,
    /// Devices whose credentials this server keeps in memory (about 150 bytes each); others
    /// are looked up in ClickHouse when they call, and the least recently seen are dropped.
    #[arg(long, env = "BACKLIGHT_DEVICE_DIRECTORY_SIZE", default_value_t = crate::auth::DEFAULT_DEVICE_DIRECTORY_SIZE, value_parser = parse_directory_size)]
    pub device_directory_size: usize,
    /// Enrollments per second one enrollment key may make on this server.
    #[arg(long, env = "BACKLIGHT_ENROLL_KEY_RATE", default_value_t = AccessLimits::DEFAULT.enroll_key_rate, value_parser = clap::value_parser!(u32).range(1..))]
    pub enroll_key_rate: u32,
}

impl ServeArgs {
    /// Who may read /metrics and what it shows.
    pub fn metrics(&self) -> crate::telemetry::MetricsConfig {
        crate::telemetry::MetricsConfig {
            token: self.metrics_token.as_deref().map(std::sync::Arc::from),
            per_device: self.metrics_per_device,
            progress_interval: self.metrics_progress_interval,
        }
    }

    /// The per-caller limits these arguments set.
    pub fn access_limits(&self) -> AccessLimits {
        AccessLimits {
            api_key_rate: self.api_key_rate,
            api_key_max_in_flight: self.api_key_max_in_flight,
            enroll_rate: self.enroll_rate,
            enroll_key_rate: self.enroll_key_rate,
        }
    }
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
        /// Expire the key after this long (e.g. 30d; at most 365d).
        #[arg(long, default_value = "7d", value_parser = parse_key_expiry)]
        expires_in: Duration,
        /// The most devices the key may enroll (e.g. the desktops of one rollout); no limit
        /// by default.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_uses: Option<u32>,
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

/// An enrollment key's lifetime: a duration of at most
/// [`crate::storage::registry::MAX_ENROLLMENT_KEY_TTL`].
fn parse_key_expiry(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > crate::storage::registry::MAX_ENROLLMENT_KEY_TTL {
        return Err(
            "an enrollment key lives at most 365d; create a new one when it expires".into(),
        );
    }
    Ok(d)
}

fn parse_metrics_token(s: &str) -> Result<String, String> {
    let min = crate::telemetry::MIN_METRICS_TOKEN_LEN;
    if s.len() < min || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the metrics token must be at least {min} characters without spaces \
             (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(s.to_string())
}

fn parse_directory_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1_000..=10_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: give a number of devices from 1000 to 10000000"
        )),
    }
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
