//! Versioned schema migrations, applied at start.
//!
//! The SQL lives in `deploy/clickhouse/migrations/NNNN_name.sql`, one file per step, compiled
//! into the binary. Every statement is idempotent (`IF NOT EXISTS`; an `ADD COLUMN`, which
//! ClickHouse 18.16 cannot make conditional, is skipped when the column exists; a `RENAME` is
//! skipped once done, see [`renamed_tables`]), so servers starting at the same time, or a start
//! interrupted half-way, are harmless. Applied versions are recorded in `schema_migrations`;
//! `/readyz` reports not-ready until every step this build knows is recorded.
//!
//! Two paths, one schema:
//! - A **new database** (no migration recorded) gets `deploy/clickhouse/baseline.sql`: the
//!   schema as migrations 1 to [`BASELINE_VERSION`] leave it, with the final table names and no
//!   table nothing reads. Then every migration up to [`BASELINE_VERSION`] is recorded as
//!   applied, and later migrations run as usual (0018 on), on both paths alike.
//! - A database made by an earlier release runs the migrations it has not recorded, one by
//!   one: 0017 drops the tables nothing reads any more and renames the `_v2` tables to their
//!   plain names, so it ends where the baseline starts.
//!
//! **Architecture invariants:** both paths end in the same tables, views, engines, sorting
//! keys and columns (`server/tests/schema_paths.rs` compares a new database with ones upgraded
//! from 0001-0011 and 0001-0016 on a real server); a change to the schema is a new migration
//! numbered above [`BASELINE_VERSION`], never an edit of the baseline or of a released step.
//! Every table the schema has is read by the server. Table definitions exist only in these
//! files, written for one node. On a cluster (`--clickhouse-cluster`) the runner passes every
//! statement through [`ClusterDdl`], which derives the replicated, sharded schema from it: not
//! a second copy.

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

/// The last migration `deploy/clickhouse/baseline.sql` includes: a new database runs the
/// baseline instead of the migrations up to this one.
pub const BASELINE_VERSION: u32 = 17;

/// The whole schema of a new database as of [`BASELINE_VERSION`].
pub const BASELINE_SQL: &str = include_str!("../../../deploy/clickhouse/baseline.sql");

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
    Migration {
        version: 17,
        name: "final_table_names",
        sql: include_str!("../../../deploy/clickhouse/migrations/0017_final_table_names.sql"),
    },
    Migration {
        version: 18,
        name: "item_events_in_item_lookup",
        sql: include_str!(
            "../../../deploy/clickhouse/migrations/0018_item_events_in_item_lookup.sql"
        ),
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
    let start = if applied.is_empty() && last_version >= BASELINE_VERSION {
        Start::New
    } else {
        Start::Upgrade
    };
    for step in planned(&mut layout, start, last_version)? {
        if step.versions.iter().all(|m| applied.contains(&m.version)) {
            continue;
        }
        tracing::info!(step = %step.name(), "applying migration");
        for statement in &step.statements {
            apply(db, database, &step, statement).await?;
        }
        // One INSERT (one block) for all of a step's versions, so a crash cannot record a part
        // of the baseline and have the next start take the database for an old release's.
        let rows = vec!["(?, ?, ?)"; step.versions.len()].join(", ");
        let sql =
            format!("INSERT INTO schema_migrations (version, name, applied_ms) VALUES {rows}");
        let now = backlight_shared::now_ms();
        with_write_retry(|| {
            let mut query = db.query(&sql);
            for migration in &step.versions {
                query = query.bind(migration.version).bind(migration.name).bind(now);
            }
            query.execute()
        })
        .await?;
    }
    Ok(())
}

/// Runs one statement of `step`, skipping what an earlier or concurrent run already did.
async fn apply(
    db: &Client,
    database: &str,
    step: &Step,
    statement: &str,
) -> Result<(), ClickHouseError> {
    let added = added_column(statement);
    if let Some((table, column)) = added {
        if column_exists(db, database, table, column).await? {
            return Ok(());
        }
    }
    let renamed = renamed_tables(statement);
    if let Some(renames) = &renamed {
        if rename_done(db, database, renames).await? {
            return Ok(());
        }
    }
    let Err(error) = run(db, statement).await else {
        return Ok(());
    };
    // Another server starting at the same time did it first, or (on a cluster) replication
    // brought the column to a replica before the replica's own `ALTER` ran.
    let done_meanwhile = match (added, &renamed) {
        (Some((table, column)), _) => column_exists(db, database, table, column).await?,
        (None, Some(renames)) => rename_done(db, database, renames).await?,
        (None, None) => false,
    };
    if done_meanwhile {
        tracing::info!(%error, statement, "done meanwhile; the statement's error is ignored");
        return Ok(());
    }
    Err(ClickHouseError::Schema(format!(
        "migration {} failed: {error}\nstatement: {statement}",
        step.name()
    )))
}

/// How a database is brought to this build's schema.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Nothing recorded: the baseline, then the migrations after it.
    New,
    /// Every migration not recorded yet, one by one.
    Upgrade,
}

/// Statements run together and the migrations recorded once they all ran.
struct Step {
    versions: Vec<&'static Migration>,
    statements: Vec<String>,
}

impl Step {
    fn name(&self) -> String {
        match self.versions.as_slice() {
            [one] => format!("{} ({})", one.version, one.name),
            _ => format!("baseline (1 to {BASELINE_VERSION})"),
        }
    }
}

/// The steps that bring a database from `start` to `last_version`, with the statements each
/// runs in `layout`. All are rewritten, applied or not: on a cluster a later statement depends
/// on what earlier ones made.
fn planned(
    layout: &mut Layout,
    start: Start,
    last_version: u32,
) -> Result<Vec<Step>, ClickHouseError> {
    let rewrite = |layout: &mut Layout, sql: &str, what: &str| {
        let mut out = Vec::new();
        for statement in statements(sql) {
            out.extend(
                layout
                    .statements(&statement)
                    .map_err(|e| ClickHouseError::Schema(format!("{what}: {e}")))?,
            );
        }
        Ok::<_, ClickHouseError>(out)
    };
    let mut plan = Vec::new();
    let mut after = 0;
    if start == Start::New {
        plan.push(Step {
            versions: MIGRATIONS
                .iter()
                .filter(|m| m.version <= BASELINE_VERSION)
                .collect(),
            statements: rewrite(layout, BASELINE_SQL, "baseline")?,
        });
        after = BASELINE_VERSION;
    }
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > after && m.version <= last_version)
    {
        plan.push(Step {
            versions: vec![migration],
            statements: rewrite(
                layout,
                migration.sql,
                &format!("migration {}", migration.version),
            )?,
        });
    }
    Ok(plan)
}

/// Every statement [`migrate`] runs on `cluster` to create a new database, in order (for
/// review, and for checking them on other ClickHouse versions).
pub fn cluster_statements(
    cluster: &ClusterName,
    database: &str,
) -> Result<Vec<String>, ClickHouseError> {
    cluster_path_statements(cluster, database, Start::New)
}

/// Every statement [`migrate`] runs on `cluster` to bring a database made by the first release
/// to this build's schema: every migration in turn.
pub fn cluster_upgrade_statements(
    cluster: &ClusterName,
    database: &str,
) -> Result<Vec<String>, ClickHouseError> {
    cluster_path_statements(cluster, database, Start::Upgrade)
}

fn cluster_path_statements(
    cluster: &ClusterName,
    database: &str,
    start: Start,
) -> Result<Vec<String>, ClickHouseError> {
    let ddl = ClusterDdl::new(cluster.clone(), database);
    let mut out = vec![ddl.create_database()];
    let mut layout = Layout::Cluster(ddl);
    out.extend(layout.statements(SCHEMA_MIGRATIONS)?);
    for step in planned(&mut layout, start, u32::MAX)? {
        out.extend(step.statements);
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

/// The `(from, to)` pairs of a `RENAME TABLE a TO b[, c TO d …] [ON CLUSTER n]` statement, in
/// order (names may be qualified with their database; the table is what follows the last dot).
///
/// A rename cannot be made conditional, so the runner decides: migrations write a rename whose
/// first `from` is gone once the statement has run (a swap starts by moving the new table to a
/// spare name), and the runner skips the statement when that table is gone and the last `to`
/// exists ([`rename_done`]). A repeat after a crash or by a second server then changes nothing,
/// instead of moving the live table away.
pub fn renamed_tables(statement: &str) -> Option<Vec<(&str, &str)>> {
    let mut rest = statement.trim_start();
    for keyword in ["RENAME", "TABLE"] {
        let (word, tail) = rest.split_once(char::is_whitespace)?;
        if !word.eq_ignore_ascii_case(keyword) {
            return None;
        }
        rest = tail.trim_start();
    }
    // ` ON CLUSTER name` at the end (the cluster rewrite puts it there).
    let upper = rest.to_ascii_uppercase();
    if let Some(at) = upper.rfind(" ON CLUSTER ") {
        rest = &rest[..at];
    }
    let pairs: Option<Vec<(&str, &str)>> = rest
        .split(',')
        .map(|pair| {
            let words: Vec<&str> = pair.split_whitespace().collect();
            match words.as_slice() {
                [from, to_kw, to] if to_kw.eq_ignore_ascii_case("TO") => {
                    Some((unqualified(from), unqualified(to)))
                }
                _ => None,
            }
        })
        .collect();
    pairs.filter(|p| !p.is_empty())
}

/// `t` of `` `db`.`t` ``, `db.t` or `t`.
fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name).trim_matches('`')
}

/// Whether a rename ([`renamed_tables`]) has run: its first table is gone and its last name
/// exists.
async fn rename_done(
    db: &Client,
    database: &str,
    renames: &[(&str, &str)],
) -> Result<bool, ClickHouseError> {
    let (Some((first, _)), Some((_, last))) = (renames.first(), renames.last()) else {
        return Ok(false);
    };
    Ok(!table_exists(db, database, first).await? && table_exists(db, database, last).await?)
}

async fn table_exists(db: &Client, database: &str, table: &str) -> Result<bool, ClickHouseError> {
    let n: u64 = with_timeout(
        db.query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
            .bind(database)
            .bind(table)
            .fetch_one(),
    )
    .await?;
    Ok(n > 0)
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
    /// runner skips it when the column exists), a `RENAME` (skipped once done), or a backfill
    /// `INSERT INTO … SELECT` into a copy whose readers remove duplicates by identity.
    #[test]
    fn every_statement_is_harmless_to_repeat() {
        // `device_seq` is read with max(), so a repeated backfill changes nothing.
        const DEDUPED_COPIES: [&str; 6] = [
            "item_events",
            "item_events_v2",
            "item_registrations",
            "item_lookup",
            "policy_history",
            "device_seq",
        ];
        let baseline = ("baseline", BASELINE_SQL);
        let steps = MIGRATIONS.iter().map(|m| (m.name, m.sql));
        for (name, sql) in std::iter::once(baseline).chain(steps) {
            for s in statements(sql) {
                let backfill = DEDUPED_COPIES.iter().any(|t| {
                    s.starts_with(&format!("INSERT INTO {t}\nSELECT"))
                        || (s.starts_with(&format!("INSERT INTO {t} (")) && s.contains(")\nSELECT"))
                });
                assert!(
                    (s.starts_with("CREATE ") && s.contains("IF NOT EXISTS"))
                        || s.starts_with("DROP TABLE IF EXISTS ")
                        || added_column(&s).is_some()
                        || renamed_tables(&s).is_some()
                        || backfill,
                    "{name} has a statement that is not harmless to repeat: {s}"
                );
            }
        }
    }

    /// A swap must start by moving the new table away (see [`renamed_tables`]): otherwise a
    /// repeat would move the live table, which then has the old table's name, aside.
    #[test]
    fn renames_start_with_a_table_that_is_gone_once_done() {
        for m in MIGRATIONS {
            for s in statements(m.sql) {
                let Some(renames) = renamed_tables(&s) else {
                    continue;
                };
                let (first, _) = renames[0];
                assert!(
                    renames.iter().all(|&(_, to)| to != first),
                    "migration {}: {first} is renamed and then named again: {s}",
                    m.version
                );
            }
        }
    }

    /// The baseline has only the final names: nothing named `_v2`, and none of the tables 0017
    /// drops as unread.
    #[test]
    fn the_baseline_has_no_versioned_or_unread_tables() {
        for s in statements(BASELINE_SQL) {
            assert!(!s.contains("_v2"), "{s}");
            for unread in ["item_registrations", "_unread", "_next"] {
                assert!(!s.contains(unread), "{s}");
            }
        }
    }

    #[test]
    fn renames_are_recognised() {
        assert_eq!(
            renamed_tables("RENAME TABLE a_v2 TO a_next, a TO a_unread,\n  a_next TO a"),
            Some(vec![("a_v2", "a_next"), ("a", "a_unread"), ("a_next", "a")])
        );
        assert_eq!(
            renamed_tables("RENAME TABLE `bl`.`a_v2_local` TO `bl`.`a_local` ON CLUSTER backlight"),
            Some(vec![("a_v2_local", "a_local")])
        );
        assert_eq!(
            renamed_tables("rename table x to y"),
            Some(vec![("x", "y")])
        );
        assert_eq!(renamed_tables("RENAME TABLE x"), None);
        assert_eq!(renamed_tables("DROP TABLE x"), None);
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
