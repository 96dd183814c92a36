//! Versioned schema migrations, applied at start.
//!
//! The SQL lives in `deploy/clickhouse/migrations/NNNN_name.sql`, one file per step, compiled
//! into the binary. Every statement is idempotent (`IF NOT EXISTS`; an `ADD COLUMN`, which
//! ClickHouse 18.16 cannot make conditional, is skipped when the column exists), so servers
//! starting at the same time, or a start interrupted half-way, are harmless. Applied versions are recorded in
//! `schema_migrations`; `/readyz` reports not-ready until every step this build knows is recorded.
//!
//! **Architecture invariant:** table definitions exist only in these files, written for one
//! node. On a cluster (`--clickhouse-cluster`) the runner passes every statement through
//! [`ClusterDdl`], which derives the replicated, sharded schema from it: not a second copy.

use clickhouse::Client;
use serde::Deserialize;

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError, ClusterName};
use crate::storage::cluster_ddl::ClusterDdl;

/// One migration step.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Longest one migration statement may run (the server does not serve until migrations ran).
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Every migration, in order. Append only: never edit a released step, add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("../../../deploy/clickhouse/migrations/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "events",
        sql: include_str!("../../../deploy/clickhouse/migrations/0002_events.sql"),
    },
    Migration {
        version: 3,
        name: "assignments",
        sql: include_str!("../../../deploy/clickhouse/migrations/0003_assignments.sql"),
    },
    Migration {
        version: 4,
        name: "items",
        sql: include_str!("../../../deploy/clickhouse/migrations/0004_items.sql"),
    },
    Migration {
        version: 5,
        name: "audit",
        sql: include_str!("../../../deploy/clickhouse/migrations/0005_audit.sql"),
    },
    Migration {
        version: 6,
        name: "reports",
        sql: include_str!("../../../deploy/clickhouse/migrations/0006_reports.sql"),
    },
    Migration {
        version: 7,
        name: "policies",
        sql: include_str!("../../../deploy/clickhouse/migrations/0007_policies.sql"),
    },
    Migration {
        version: 8,
        name: "report_rollup_by_device",
        sql: include_str!("../../../deploy/clickhouse/migrations/0008_report_rollup_by_device.sql"),
    },
    Migration {
        version: 9,
        name: "item_events_fine_granules",
        sql: include_str!(
            "../../../deploy/clickhouse/migrations/0009_item_events_fine_granules.sql"
        ),
    },
    Migration {
        version: 10,
        name: "item_registrations_fine_granules",
        sql: include_str!(
            "../../../deploy/clickhouse/migrations/0010_item_registrations_fine_granules.sql"
        ),
    },
    Migration {
        version: 11,
        name: "item_lookup",
        sql: include_str!("../../../deploy/clickhouse/migrations/0011_item_lookup.sql"),
    },
    Migration {
        version: 12,
        name: "live_and_webhooks",
        sql: include_str!("../../../deploy/clickhouse/migrations/0012_live_and_webhooks.sql"),
    },
    Migration {
        version: 13,
        name: "device_seq",
        sql: include_str!("../../../deploy/clickhouse/migrations/0013_device_seq.sql"),
    },
    Migration {
        version: 14,
        name: "policy_history_and_key_limits",
        sql: include_str!(
            "../../../deploy/clickhouse/migrations/0014_policy_history_and_key_limits.sql"
        ),
    },
    Migration {
        version: 16,
        name: "health_session",
        sql: include_str!("../../../deploy/clickhouse/migrations/0016_health_session.sql"),
    },
];

/// Splits a migration file into statements: comments (`-- …` lines) removed, split on `;`.
/// Migration files therefore must not contain `;` inside string literals.
pub fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Where the schema lives: one server, or every node of a cluster.
pub enum Layout {
    SingleNode,
    /// Statements rewritten by [`ClusterDdl`], which must see every migration in order.
    Cluster(ClusterDdl),
}

impl Layout {
    pub fn new(database: &str, cluster: Option<&ClusterName>) -> Layout {
        match cluster {
            None => Layout::SingleNode,
            Some(name) => Layout::Cluster(ClusterDdl::new(name.clone(), database)),
        }
    }

    /// The statements that do what `statement` (written for one node) does in this layout.
    pub fn statements(&mut self, statement: &str) -> Result<Vec<String>, ClickHouseError> {
        match self {
            Layout::SingleNode => Ok(vec![statement.to_string()]),
            Layout::Cluster(ddl) => ddl
                .rewrite(statement)
                .map_err(|e| ClickHouseError::Schema(e.to_string())),
        }
    }
}

/// The table recording applied migrations, created by the runner itself.
const SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32, name String, applied_ms UInt64
) ENGINE = ReplacingMergeTree(applied_ms) ORDER BY version";

/// Creates the database if needed and applies every migration not yet recorded, on one server
/// or (with `cluster`) on every node of the cluster.
pub async fn migrate(
    server: &Client,
    database: &str,
    db: &Client,
    cluster: Option<&ClusterName>,
) -> Result<(), ClickHouseError> {
    migrate_through(server, database, db, cluster, u32::MAX).await
}

/// [`migrate`], but only the steps up to `last_version` (tests of an upgrade from an older
/// schema with data in it).
pub async fn migrate_through(
    server: &Client,
    database: &str,
    db: &Client,
    cluster: Option<&ClusterName>,
    last_version: u32,
) -> Result<(), ClickHouseError> {
    check_layout(server, database, cluster).await?;
    let mut layout = Layout::new(database, cluster);
    match &layout {
        Layout::SingleNode => {
            with_timeout(
                server
                    .query(&format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
                    .execute(),
            )
            .await?;
        }
        Layout::Cluster(ddl) => {
            check_cluster(server, ddl.cluster()).await?;
            run(server, &ddl.create_database()).await?;
        }
    }
    for statement in layout.statements(SCHEMA_MIGRATIONS)? {
        run(db, &statement).await?;
    }
    // Apply every step not recorded yet (not just those above the highest recorded one), so a
    // step merged later with a lower number than one already applied still runs.
    #[derive(clickhouse::Row, Deserialize)]
    struct Applied {
        version: u32,
    }
    let applied: Vec<u32> = with_timeout(
        db.query("SELECT version FROM schema_migrations FINAL")
            .fetch_all::<Applied>(),
    )
    .await?
    .into_iter()
    .map(|a| a.version)
    .collect();
    for (migration, steps) in planned(&mut layout, last_version)? {
        if applied.contains(&migration.version) {
            continue;
        }
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applying migration"
        );
        for step in steps {
            let added = added_column(&step);
            if let Some((table, column)) = added {
                if column_exists(db, database, table, column).await? {
                    continue;
                }
            }
            match (run(db, &step).await, added) {
                (Ok(()), _) => {}
                // Another server starting at the same time added it first, or (on a cluster)
                // replication brought it to a replica before the replica's own `ALTER` ran.
                (Err(error), Some((table, column)))
                    if column_exists(db, database, table, column).await? =>
                {
                    tracing::info!(
                        table,
                        column,
                        %error,
                        "the column was added meanwhile; the statement's error is ignored"
                    );
                }
                (Err(e), _) => {
                    return Err(ClickHouseError::Schema(format!(
                        "migration {} ({}) failed: {e}\nstatement: {step}",
                        migration.version, migration.name
                    )))
                }
            }
        }
        with_write_retry(|| {
            db.query("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)")
                .bind(migration.version)
                .bind(migration.name)
                .bind(backlight_shared::now_ms())
                .execute()
        })
        .await?;
    }
    Ok(())
}

/// Every migration up to `last_version` with the statements it runs in `layout`. All are
/// rewritten, applied or not: on a cluster a later statement depends on what earlier ones made.
fn planned(
    layout: &mut Layout,
    last_version: u32,
) -> Result<Vec<(&'static Migration, Vec<String>)>, ClickHouseError> {
    let mut plan = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= last_version) {
        let mut steps = Vec::new();
        for statement in statements(migration.sql) {
            steps.extend(layout.statements(&statement).map_err(|e| {
                ClickHouseError::Schema(format!("migration {}: {e}", migration.version))
            })?);
        }
        plan.push((migration, steps));
    }
    Ok(plan)
}

/// Every statement [`migrate`] runs to create a fresh database on `cluster`, in order (for
/// review, and for checking them on other ClickHouse versions).
pub fn cluster_statements(
    cluster: &ClusterName,
    database: &str,
) -> Result<Vec<String>, ClickHouseError> {
    let ddl = ClusterDdl::new(cluster.clone(), database);
    let mut out = vec![ddl.create_database()];
    let mut layout = Layout::Cluster(ddl);
    out.extend(layout.statements(SCHEMA_MIGRATIONS)?);
    for (_, steps) in planned(&mut layout, u32::MAX)? {
        out.extend(steps);
    }
    Ok(out)
}

/// Runs one schema statement. Not `with_timeout`: a backfill copies a whole table, which may
/// take minutes. `wait_end_of_query` makes ClickHouse answer only when the statement is done,
/// so an error on a node of the cluster reaches us as an error, not as text after a 200.
async fn run(client: &Client, statement: &str) -> Result<(), ClickHouseError> {
    tokio::time::timeout(
        STATEMENT_TIMEOUT,
        client
            .query(statement)
            .with_setting("wait_end_of_query", "1")
            .execute(),
    )
    .await
    .map_err(|_| ClickHouseError::Timeout(STATEMENT_TIMEOUT))??;
    Ok(())
}

/// The cluster must be one the ClickHouse we talk to knows.
async fn check_cluster(server: &Client, cluster: &ClusterName) -> Result<(), ClickHouseError> {
    let nodes: u64 = with_timeout(
        server
            .query("SELECT count() FROM system.clusters WHERE cluster = ?")
            .bind(cluster.as_str())
            .fetch_one(),
    )
    .await?;
    if nodes == 0 {
        return Err(ClickHouseError::Schema(format!(
            "ClickHouse has no cluster named {cluster} in its <remote_servers> configuration \
             (see deploy/clickhouse/cluster.d/ for an example)"
        )));
    }
    Ok(())
}

/// A database is made for one server or for a cluster, and stays so: refuse the other.
async fn check_layout(
    server: &Client,
    database: &str,
    cluster: Option<&ClusterName>,
) -> Result<(), ClickHouseError> {
    let engine: Option<String> = with_timeout(
        server
            .query("SELECT engine FROM system.tables WHERE database = ? AND name = 'schema_migrations'")
            .bind(database)
            .fetch_optional(),
    )
    .await?;
    match (engine.as_deref(), cluster) {
        (Some("Distributed"), None) => Err(ClickHouseError::Schema(format!(
            "database {database} was created on a cluster: pass --clickhouse-cluster with its name"
        ))),
        (Some(engine), Some(cluster)) if engine != "Distributed" => {
            Err(ClickHouseError::Schema(format!(
                "database {database} was created for a single ClickHouse server, not for cluster \
                 {cluster}: a cluster needs a new database (deploy/README.md, \"A ClickHouse cluster\")"
            )))
        }
        _ => Ok(()),
    }
}

/// `(table, column)` of an `ALTER TABLE t [ON CLUSTER n] ADD COLUMN c …` statement (one column
/// per statement; `t` may be qualified with its database). ClickHouse 18.16 has no
/// `ADD COLUMN IF NOT EXISTS`, so the runner makes such a statement harmless to repeat by
/// skipping it when the column is there.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let head: Vec<&str> = words.by_ref().take(2).collect();
    if !head
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .eq(["ALTER", "TABLE"])
    {
        return None;
    }
    // `db`.`t` on a cluster: the table is what follows the last dot.
    let table = words.next()?.rsplit('.').next()?;
    let mut add: Vec<&str> = words.by_ref().take(2).collect();
    if add
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .eq(["ON", "CLUSTER"])
    {
        words.next()?;
        add = words.by_ref().take(2).collect();
    }
    if !add
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .eq(["ADD", "COLUMN"])
    {
        return None;
    }
    let column = words.next()?;
    Some((table.trim_matches('`'), column.trim_matches('`')))
}

async fn column_exists(
    db: &Client,
    database: &str,
    table: &str,
    column: &str,
) -> Result<bool, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Count {
        n: u64,
    }
    let found = with_timeout(
        db.query(
            "SELECT count() AS n FROM system.columns WHERE database = ? AND table = ? AND name = ?",
        )
        .bind(database)
        .bind(table)
        .bind(column)
        .fetch_one::<Count>(),
    )
    .await?;
    Ok(found.n > 0)
}

/// The migrations this build needs that are not recorded as applied (empty when current).
pub async fn missing_versions(db: &Client) -> Result<Vec<u32>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Applied {
        version: u32,
    }
    let applied: Vec<u32> = with_timeout(
        db.query("SELECT DISTINCT version FROM schema_migrations")
            .fetch_all::<Applied>(),
    )
    .await?
    .into_iter()
    .map(|a| a.version)
    .collect();
    Ok(MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }

    /// A migration interrupted half-way runs again from its first statement, so each must be
    /// harmless to repeat: `CREATE … IF NOT EXISTS`, `DROP … IF EXISTS`, an `ADD COLUMN` (the
    /// runner skips it when the column exists), or a backfill `INSERT INTO … SELECT` into a copy
    /// whose readers remove duplicates by identity.
    #[test]
    fn every_statement_is_harmless_to_repeat() {
        // `device_seq` is read with max(), so a repeated backfill changes nothing.
        const DEDUPED_COPIES: [&str; 5] = [
            "item_events_v2",
            "item_registrations",
            "item_lookup",
            "policy_history",
            "device_seq",
        ];
        for m in MIGRATIONS {
            for s in statements(m.sql) {
                let backfill = DEDUPED_COPIES
                    .iter()
                    .any(|t| s.starts_with(&format!("INSERT INTO {t}\nSELECT")));
                assert!(
                    (s.starts_with("CREATE ") && s.contains("IF NOT EXISTS"))
                        || s.starts_with("DROP TABLE IF EXISTS ")
                        || added_column(&s).is_some()
                        || backfill,
                    "migration {} has a statement that is not harmless to repeat: {s}",
                    m.version
                );
            }
        }
    }

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column("ALTER TABLE events ADD COLUMN session_client String DEFAULT ''"),
            Some(("events", "session_client"))
        );
        assert_eq!(
            added_column("alter table `events`\n  add column `x` UInt8"),
            Some(("events", "x"))
        );
        assert_eq!(
            added_column(
                "ALTER TABLE `bl`.`events_local` ON CLUSTER backlight ADD COLUMN session String"
            ),
            Some(("events_local", "session"))
        );
        assert_eq!(added_column("ALTER TABLE events DROP COLUMN x"), None);
        assert_eq!(added_column("CREATE TABLE IF NOT EXISTS a (x UInt8)"), None);
    }

    #[test]
    fn splitting_drops_comments() {
        let s = statements("-- a; comment\nCREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log;\n\n-- b\nSELECT 1;");
        assert_eq!(
            s,
            vec![
                "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log",
                "SELECT 1"
            ]
        );
    }
}
