//! Retention of the tables that are feeds and logs, not history: ClickHouse 18.16 has no `TTL`,
//! so servers drop whole day partitions once they are older than the table keeps
//! (`deploy/clickhouse/migrations/0012_live_and_webhooks.sql`).
//!
//! Every server runs this now and then; dropping a partition that another server dropped a
//! moment ago is harmless (the next listing no longer shows it).
//!
//! The expired days are read from the table itself (its day column, pruned by partition), so
//! the same query lists them on one node and, through the `Distributed` table, on every shard
//! of a cluster; there the partitions are dropped from the node-local tables `ON CLUSTER`.

use std::time::Duration;

use backlight_shared::now_ms;
use clickhouse::Client;
use serde::Deserialize;

use crate::clickhouse::{with_timeout, ClickHouseError, ClusterName};
use crate::reports::time::{civil_from_days, days_from_civil};
use crate::storage::cluster_ddl::LOCAL_SUFFIX;

/// A table partitioned by day (`PARTITION BY <Date column>`) whose old days can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DailyTable {
    /// The item change feed: read only a few seconds back.
    ItemChanges,
    /// The webhook delivery log: shown to admins, retried for at most a day.
    WebhookDeliveries,
}

impl DailyTable {
    pub const ALL: [DailyTable; 2] = [DailyTable::ItemChanges, DailyTable::WebhookDeliveries];

    fn table(self) -> &'static str {
        match self {
            DailyTable::ItemChanges => "item_changes",
            DailyTable::WebhookDeliveries => "webhook_deliveries",
        }
    }

    /// Its `Date` column, the partition key.
    fn day_column(self) -> &'static str {
        match self {
            DailyTable::ItemChanges => "change_date",
            DailyTable::WebhookDeliveries => "created_date",
        }
    }

    /// Whole days kept before today (UTC).
    pub fn keep_days(self) -> u64 {
        match self {
            DailyTable::ItemChanges => 2,
            DailyTable::WebhookDeliveries => 30,
        }
    }
}

/// How often each server looks for expired partitions.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Drops expired partitions of every [`DailyTable`] now and every [`EVERY`], until the runtime
/// stops. Failures are logged and retried at the next round (a day's partition more or less is
/// no harm).
pub fn spawn(client: Client, cluster: Option<ClusterName>) {
    tokio::spawn(async move {
        loop {
            for table in DailyTable::ALL {
                if let Err(e) = drop_expired(&client, cluster.as_ref(), table).await {
                    tracing::warn!(table = table.table(), error = %e, "could not drop expired partitions; retrying later");
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
}

/// Drops the partitions of `table` older than it keeps (on every node of `cluster`, if the
/// database is on one); returns how many were dropped.
pub async fn drop_expired(
    client: &Client,
    cluster: Option<&ClusterName>,
    table: DailyTable,
) -> Result<usize, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Partition {
        partition_id: String,
    }
    let oldest_kept = day_number(now_ms()).saturating_sub(table.keep_days());
    let (year, month, day) = civil_from_days(oldest_kept as i64);
    // The table's names are ours; the cut-off day is bound.
    let partitions: Vec<Partition> = with_timeout(
        client
            .query(&format!(
                "SELECT DISTINCT toString(toYYYYMMDD({day})) AS partition_id FROM {table}
                 WHERE {day} < toDate(?)",
                day = table.day_column(),
                table = table.table(),
            ))
            .bind(format!("{year:04}-{month:02}-{day:02}"))
            .fetch_all(),
    )
    .await?;
    let target = match cluster {
        // An ON CLUSTER statement runs on every node with that node's default database, so it
        // names ours.
        Some(cluster) if !partitions.is_empty() => {
            let database: String =
                with_timeout(client.query("SELECT currentDatabase()").fetch_one()).await?;
            format!(
                "`{}`.`{}{LOCAL_SUFFIX}` ON CLUSTER {cluster}",
                database.replace('\\', "\\\\").replace('`', "\\`"),
                table.table()
            )
        }
        _ => table.table().to_string(),
    };
    let mut dropped = 0;
    for p in partitions {
        // The id of a Date partition is its day as YYYYMMDD (on every version).
        let Some(date) = parse_yyyymmdd(&p.partition_id) else {
            tracing::warn!(table = table.table(), partition = %p.partition_id, "unexpected partition id; not dropping it");
            continue;
        };
        if date.day_number >= oldest_kept {
            continue;
        }
        // DDL takes no bound parameters; the literal is built from digits we parsed.
        let sql = format!("ALTER TABLE {target} DROP PARTITION '{}'", date.iso);
        with_timeout(client.query(&sql).execute()).await?;
        tracing::info!(table = table.table(), partition = %date.iso, "dropped an expired partition");
        dropped += 1;
    }
    Ok(dropped)
}

struct PartitionDate {
    iso: String,
    day_number: u64,
}

fn parse_yyyymmdd(id: &str) -> Option<PartitionDate> {
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = id[0..4].parse().ok()?;
    let month: u32 = id[4..6].parse().ok()?;
    let day: u32 = id[6..8].parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(PartitionDate {
        iso: format!("{year:04}-{month:02}-{day:02}"),
        day_number: u64::try_from(days).ok()?,
    })
}

/// Days since 1970-01-01 of `ms`.
fn day_number(ms: u64) -> u64 {
    ms / 86_400_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ids_are_days() {
        let d = parse_yyyymmdd("20231114").unwrap();
        assert_eq!(d.iso, "2023-11-14");
        assert_eq!(d.day_number, day_number(1_699_920_000_000));
        assert_eq!(parse_yyyymmdd("19700101").unwrap().day_number, 0);
        for bad in [
            "2023111",
            "202311145",
            "2023-11-",
            "20231314",
            "tuple()",
            "",
        ] {
            assert!(parse_yyyymmdd(bad).is_none(), "{bad}");
        }
    }
}
