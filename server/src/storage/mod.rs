//! Everything the server keeps lives in ClickHouse; this module is the only one that writes SQL.
//!
//! - [`migrations`]: the versioned schema, applied at start; [`cluster_ddl`] derives the
//!   replicated, sharded schema from it for `--clickhouse-cluster`; [`durability`] sets and
//!   reports what an acknowledged INSERT promises (insert quorum, fsync).
//! - [`registry`]: tenants, enrollment keys, devices, API keys, settings, assignments.
//! - [`events`]: the events agents recorded, and per-device sequence progress.
//! - [`items`], [`lookup_row`], [`item_reader`], [`tenant_cache`]: item status — registration,
//!   SLA classes, the lookup view and its batched, cached reads.
//! - [`reports`]: the report rollup and the report queries.
//! - [`policies`], [`audit`]: capture policies; the audit log.
//! - [`changes`], [`servers`], [`webhooks`], [`retention`]: the item change feed, server
//!   heartbeats, webhook registrations and deliveries, dropping expired partitions.
//!
//! Storage depends on the domain types (`items`, `reports`, `tenancy`) and on nothing of the
//! HTTP layer. Errors are typed ([`ClickHouseError`]; [`ReadError`] where a read parses its rows,
//! with [`UnreadableRow`] for a row that does not parse; and per module where a caller must
//! tell cases apart, e.g. `registry::EnrollError`, `policies::PolicyError`); their text is for
//! the log, never for a client.
//!
//! Rows are read by column name: a query selects `?fields`, which the `clickhouse` crate
//! replaces with the Row struct's field names (an inner query renames a column where an
//! aggregate must carry its name), and every value is bound with `?`.
//!
//! **Architecture invariant:** storage hands back domain types. A module's row structs
//! (`#[derive(clickhouse::Row)]`: the columns as the table stores them, `0` and `""` for none,
//! `UInt8` flags, tenant ids as strings) are private to it; each read parses its rows into
//! domain values ([`crate::items::ItemRegistration`], [`crate::tenancy`]'s `Tenant`,
//! `ApiKey`, `EnrollmentKey`, `Device`, `DeviceCredential`, `Assignment`, `TenantSettings`;
//! [`crate::reports`]' `GroupFigures`, `ItemFiguresByGroup`, `QueueBacklog`;
//! [`crate::webhooks::records`]) and each write builds its rows from them. A row that does not parse is an
//! [`UnreadableRow`], never a panic and never dropped unseen (the packed `item_lookup` rows,
//! [`lookup_row`], are skipped one by one but logged and counted; so are bad webhook rows in
//! the webhook engine's reads over every tenant). Public still, because tests read them as
//! stored: [`events::EventRow`], [`audit::AuditRow`] and [`policies::HistoryRow`].
//!
//! **Architecture invariant:** the server holds no state of its own. Anything one server knows
//! (a device, a revocation, an accepted event) another server behind the same load balancer
//! learns from ClickHouse.

pub mod audit;
pub mod changes;
pub mod cluster_ddl;
pub mod durability;
pub mod events;
pub mod item_reader;
pub mod items;
pub mod lookup_row;
pub mod migrations;
pub mod policies;
pub mod registry;
pub mod reports;
pub mod retention;
pub mod servers;
pub mod tenant_cache;
pub mod webhooks;

use clickhouse::Client;
use serde::Deserialize;

use crate::clickhouse::{with_timeout, ClickHouseConfig, ClickHouseError, ClusterName};

/// A row ClickHouse returned that does not parse into its domain type (a value this build
/// does not know, or a row edited by hand). Never a panic, never skipped silently: the read
/// that met it fails with this, naming the row and the field, and the caller decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable {table} row {key}: {field} {value:?} is not valid")]
pub struct UnreadableRow {
    pub table: &'static str,
    /// The row's key, to find it.
    pub key: String,
    pub field: &'static str,
    pub value: String,
}

impl UnreadableRow {
    /// Logs and counts (`backlight_unreadable_rows_total{table}`) that the credential or
    /// record `what` of this row was refused rather than trusted.
    pub fn report_refused(&self, what: &str) {
        metrics::counter!("backlight_unreadable_rows_total", "table" => self.table).increment(1);
        tracing::warn!(error = %self, "refused {what} whose row does not parse");
    }
}

/// Why a read that parses its rows failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error(transparent)]
    Unreadable(#[from] UnreadableRow),
}

/// A connection to Backlight's database, migrated and self-tested.
#[derive(Clone)]
pub struct Store {
    client: Client,
    registry: registry::Registry,
    durability: durability::Durability,
    cluster: Option<ClusterName>,
}

impl Store {
    /// Creates the database if needed, applies migrations and picks a compression setting
    /// that round-trips against this server.
    pub async fn open(config: &ClickHouseConfig) -> Result<Store, ClickHouseError> {
        let compression = clickhouse::Compression::None;
        migrations::migrate(
            &config.client_without_database(compression),
            &config.database,
            &config.client(compression),
            config.cluster.as_ref().map(|c| &c.name),
        )
        .await?;
        let (config, durability) = durability::configure(config).await?;
        let config = &config;
        let compression = config.negotiate_compression().await?;
        tracing::info!(?compression, url = %config.url, database = %config.database, cluster = ?config.cluster, "ClickHouse ready");
        let client = config.client(compression);
        Ok(Store {
            registry: registry::Registry::new(client.clone()),
            client,
            durability,
            cluster: config.cluster.as_ref().map(|c| c.name.clone()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn registry(&self) -> &registry::Registry {
        &self.registry
    }

    /// The cluster the database lives on (`--clickhouse-cluster`), if any.
    pub fn cluster(&self) -> Option<&ClusterName> {
        self.cluster.as_ref()
    }

    /// What an acknowledged INSERT promises with this ClickHouse (quorum, fsync).
    pub fn durability(&self) -> &durability::Durability {
        &self.durability
    }

    /// Whether ClickHouse answers and the schema is at the version this build needs. The
    /// error carries ClickHouse's own words: for the log, not for an unauthenticated client.
    pub async fn readiness(&self) -> Result<(), String> {
        #[derive(clickhouse::Row, Deserialize)]
        struct One {
            one: u8,
        }
        let probe = with_timeout(
            self.client
                .query("SELECT toUInt8(1) AS one")
                .fetch_one::<One>(),
        )
        .await;
        match probe {
            Ok(One { one: 1 }) => {}
            Ok(_) => return Err("ClickHouse answered SELECT 1 wrongly".into()),
            Err(e) => return Err(format!("ClickHouse unreachable: {e}")),
        }
        let missing = migrations::missing_versions(&self.client)
            .await
            .map_err(|e| format!("cannot read schema_migrations: {e}"))?;
        if !missing.is_empty() {
            return Err(format!("schema migrations not applied yet: {missing:?}"));
        }
        Ok(())
    }
}
