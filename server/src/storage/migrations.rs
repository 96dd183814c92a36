//! Versioned schema migrations, applied at start.
//!
//! The SQL lives in `deploy/clickhouse/migrations/NNNN_name.sql`, one file per step, compiled
//! into the binary. Every statement is idempotent (`IF NOT EXISTS`), so servers starting at the
//! same time, or a start interrupted half-way, are harmless. Applied versions are recorded in
//! `schema_migrations`; `/readyz` reports not-ready until the newest one is recorded.
//!
//! **Architecture invariant:** table definitions exist only in these files. Engines are named
//! once per table, so a clustered deployment (Replicated*MergeTree + Distributed) is a rewrite of
//! the `ENGINE` clause applied by this runner, not a second copy of the schema.

use clickhouse::Client;
use serde::Deserialize;

use crate::clickhouse::{with_timeout, ClickHouseError};

/// One migration step.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

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
];

/// The newest schema version this build needs.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

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

/// Creates the database if needed and applies every migration not yet recorded.
pub async fn migrate(server: &Client, database: &str, db: &Client) -> Result<u32, ClickHouseError> {
    with_timeout(
        server
            .query(&format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
            .execute(),
    )
    .await?;
    with_timeout(
        db.query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version UInt32, name String, applied_ms UInt64
            ) ENGINE = ReplacingMergeTree(applied_ms) ORDER BY version",
        )
        .execute(),
    )
    .await?;
    let applied = applied_version(db).await?;
    for migration in MIGRATIONS.iter().filter(|m| m.version > applied) {
        tracing::info!(version = migration.version, name = migration.name, "applying migration");
        for statement in statements(migration.sql) {
            with_timeout(db.query(&statement).execute()).await?;
        }
        with_timeout(
            db.query("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)")
                .bind(migration.version)
                .bind(migration.name)
                .bind(backlight_shared::now_ms())
                .execute(),
        )
        .await?;
    }
    Ok(latest_version())
}

/// The highest migration version recorded as applied (0 when none).
pub async fn applied_version(db: &Client) -> Result<u32, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Version {
        version: u32,
    }
    let row: Version = with_timeout(
        db.query("SELECT toUInt32(max(version)) AS version FROM schema_migrations")
            .fetch_one(),
    )
    .await?;
    Ok(row.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(latest_version(), *versions.last().unwrap());
    }

    #[test]
    fn every_statement_is_idempotent() {
        for m in MIGRATIONS {
            for s in statements(m.sql) {
                assert!(
                    s.contains("IF NOT EXISTS"),
                    "migration {} has a statement that is not idempotent: {s}",
                    m.version
                );
            }
        }
    }

    #[test]
    fn splitting_drops_comments() {
        let s = statements("-- a; comment\nCREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log;\n\n-- b\nSELECT 1;");
        assert_eq!(s, vec!["CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log", "SELECT 1"]);
    }
}
