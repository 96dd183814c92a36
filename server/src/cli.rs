//! The command-line contract of `backlight-server` (other tools and the docs rely on it):
//!
//! - no arguments: serve on `127.0.0.1:8080`, data (and the embedded ClickHouse) under
//!   `./backlight-data`;
//! - `--listen`, `--data-dir`, `--clickhouse-url` (and `BACKLIGHT_LISTEN`, `BACKLIGHT_DATA_DIR`,
//!   `BACKLIGHT_CLICKHOUSE_URL`) override;
//! - `--clickhouse-cluster NAME` (`BACKLIGHT_CLICKHOUSE_CLUSTER`): the database spans that
//!   ClickHouse cluster (same binary, same queries; see `storage::cluster_ddl`);
//! - `admin …` manages tenants, keys and devices.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::clickhouse::{ClusterName, InsertQuorum};
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
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where webhooks may deliver. Shared by `serve` (checked at every delivery) and `admin`
/// (checked at registration).
#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Hosts webhooks may reach although they are internal (loopback, private addresses) or
    /// over plain http, comma-separated, e.g. `crm.internal,10.0.4.7`. Everything else must be
    /// https to a public address.
    #[arg(
        long,
        env = "BACKLIGHT_WEBHOOK_ALLOW_HOSTS",
        value_delimiter = ',',
        global = true
    )]
    pub webhook_allow_hosts: Vec<String>,
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
    /// The ClickHouse cluster (a name in <remote_servers>) that holds the database: tables are
    /// created ON CLUSTER, replicated and sharded; reads and writes go through Distributed
    /// tables. Needs --clickhouse-url (any node of the cluster, or a balancer in front of them).
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_CLUSTER", global = true)]
    pub clickhouse_cluster: Option<ClusterName>,
    /// On a cluster: how many replicas of a shard must hold ingested rows before the server
    /// answers 200. `auto`: a majority of the smallest shard's replicas (on ClickHouse 20.10+;
    /// older versions run quorum INSERTs one at a time, so there `auto` means 1).
    #[arg(
        long,
        env = "BACKLIGHT_CLICKHOUSE_INSERT_QUORUM",
        default_value = "auto",
        global = true
    )]
    pub clickhouse_insert_quorum: InsertQuorum,
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
    /// Shortest time between the starts of two ClickHouse INSERTs of ingested events: bounds
    /// new parts per second (batches arriving meanwhile share the next INSERT). Not a wait: a
    /// batch is written at once when no INSERT is in flight and the last one started longer
    /// ago than this.
    #[arg(long, env = "BACKLIGHT_INSERT_MIN_INTERVAL", default_value = "20ms", value_parser = parse_duration)]
    pub insert_min_interval: Duration,
    /// Open status streams (`GET /v1/items/{id}/events`) one API key may hold on this server;
    /// more are refused with 429.
    #[arg(long, env = "BACKLIGHT_MAX_STREAMS_PER_KEY", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_key: u32,
    /// The first retry delay of a failed webhook delivery; it doubles per attempt up to an hour
    /// (20 attempts or 24 h at most).
    #[arg(long, env = "BACKLIGHT_WEBHOOK_RETRY_BASE", default_value = "10s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,
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
    #[command(flatten)]
    pub limits: LimitArgs,
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

/// What one client may take: connections, time, and its share of ingest. Every limit is
/// documented, with its reason, in docs/security.md ("Ingest and connection limits").
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Connections open at once; more are closed at once.
    #[arg(long, env = "BACKLIGHT_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections open at once from one client address (raise it behind a proxy or load
    /// balancer that does not keep client addresses).
    #[arg(long, env = "BACKLIGHT_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Longest a client may take for a TLS handshake and for each request's headers; also how
    /// long a kept-alive connection may sit idle.
    #[arg(long, env = "BACKLIGHT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest pause while a request body is being sent.
    #[arg(long, env = "BACKLIGHT_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Slowest average rate of an ingest body, per second (e.g. 16KiB): a body of N bytes must
    /// arrive within --body-read-timeout + N / rate.
    #[arg(long, env = "BACKLIGHT_MIN_BODY_RATE", default_value = "16KiB", value_parser = parse_bytes)]
    pub min_body_rate: u64,
    /// Ingest requests of one device handled at once.
    #[arg(long, env = "BACKLIGHT_INGEST_DEVICE_CONCURRENCY", default_value_t = 2)]
    pub ingest_device_concurrency: usize,
    /// Ingest requests per second one device may send, sustained.
    #[arg(long, env = "BACKLIGHT_INGEST_DEVICE_RATE", default_value_t = 20)]
    pub ingest_device_rate: u32,
    /// Ingest requests one device may send at once after a quiet spell.
    #[arg(long, env = "BACKLIGHT_INGEST_DEVICE_BURST", default_value_t = 40)]
    pub ingest_device_burst: u32,
    /// Decompressed JSON one device may send per second, sustained (e.g. 4MiB).
    #[arg(long, env = "BACKLIGHT_INGEST_DEVICE_DECODED_RATE", default_value = "4MiB", value_parser = parse_bytes)]
    pub ingest_device_decoded_rate: u64,
    /// The fraction of the body and group-commit budgets one tenant may hold (0 < share ≤ 1).
    #[arg(long, env = "BACKLIGHT_INGEST_TENANT_SHARE", default_value_t = 0.75, value_parser = parse_share)]
    pub ingest_tenant_share: f64,
    /// Memory for ingest bodies being read and decoded, all requests together (e.g. 32MiB).
    #[arg(long, env = "BACKLIGHT_INGEST_BODY_BUDGET", default_value = "32MiB", value_parser = parse_bytes)]
    pub ingest_body_budget: u64,
    /// Memory for encoded rows waiting for or inside a ClickHouse INSERT (e.g. 48MiB).
    #[arg(long, env = "BACKLIGHT_INGEST_COMMIT_BUDGET", default_value = "48MiB", value_parser = parse_bytes)]
    pub ingest_commit_budget: u64,
    /// Ingest bodies decoded at once; 0 means one per CPU core (at least 2).
    #[arg(long, env = "BACKLIGHT_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,
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
    /// Outbound webhooks: signed HTTP calls on item status and SLA changes.
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Register a webhook; its signing secret is printed once.
    Create {
        #[arg(long)]
        tenant: TenantId,
        /// Where deliveries are POSTed (https; http only to --webhook-allow-hosts).
        #[arg(long)]
        url: String,
        /// Events to deliver (repeat or comma-separate): item.status_changed,
        /// item.sla_at_risk, item.sla_breached.
        #[arg(long = "event", value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// A note for admins, e.g. "CRM case updates".
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a tenant's webhooks (never their secrets).
    List {
        #[arg(long)]
        tenant: TenantId,
    },
    /// Delete a webhook: nothing more is delivered to it.
    Delete {
        #[arg(long)]
        tenant: TenantId,
        webhook_id: String,
    },
    /// Show a webhook's newest deliveries: state, attempts, last error, next retry.
    Deliveries {
        #[arg(long)]
        tenant: TenantId,
        webhook_id: String,
        /// Only deliveries in this state: pending, delivered or failed.
        #[arg(long)]
        state: Option<String>,
        /// Most deliveries shown.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
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

/// Parses byte sizes such as `65536`, `16KiB`, `4MiB`, `1GiB` (also `KB`, `MB`, `GB` as
/// powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?} (examples: 65536, 16KiB, 4MiB)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses a fraction in (0, 1], e.g. `0.75`.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!(
            "invalid share {s:?}: a fraction above 0 and at most 1, e.g. 0.75"
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
    fn sizes_and_shares() {
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("16KiB"), Ok(16_384));
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(parse_bytes("99999999999999GiB").is_err());
        assert!(parse_share("0").is_err() && parse_share("1.5").is_err());
        let cli = Cli::try_parse_from([
            "backlight-server",
            "--ingest-body-budget",
            "8MiB",
            "--ingest-tenant-share",
            "0.5",
        ])
        .unwrap();
        assert_eq!(cli.serve.limits.ingest_body_budget, 8 << 20);
        assert_eq!(cli.serve.limits.ingest_tenant_share, 0.5);
        assert_eq!(cli.serve.limits.min_body_rate, 16_384);
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

    #[test]
    fn a_cluster_has_a_safe_name_and_a_quorum() {
        let cli = Cli::try_parse_from([
            "backlight-server",
            "--clickhouse-url",
            "http://ch1:8123",
            "--clickhouse-cluster",
            "backlight",
            "--clickhouse-insert-quorum",
            "2",
        ])
        .unwrap();
        assert_eq!(
            cli.storage.clickhouse_cluster.map(|c| c.to_string()),
            Some("backlight".to_string())
        );
        assert_eq!(
            cli.storage.clickhouse_insert_quorum,
            InsertQuorum::Replicas(2)
        );
        // Global: after `admin` as well as before it.
        let cli = Cli::try_parse_from([
            "backlight-server",
            "--clickhouse-url",
            "http://ch1:8123",
            "admin",
            "--clickhouse-cluster",
            "backlight",
            "tenant",
            "list",
        ])
        .unwrap();
        assert!(cli.storage.clickhouse_cluster.is_some());
        assert!(Cli::try_parse_from([
            "backlight-server",
            "--clickhouse-url",
            "http://ch1:8123",
            "--clickhouse-cluster",
            "x;DROP"
        ])
        .is_err());
        let defaults = Cli::try_parse_from(["backlight-server"]).unwrap();
        assert_eq!(
            defaults.storage.clickhouse_insert_quorum,
            InsertQuorum::Auto
        );
    }
}
