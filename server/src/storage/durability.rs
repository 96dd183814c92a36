//! What a 200 from `/v1/ingest` promises about the rows, and the ClickHouse settings behind it.
//!
//! - On a cluster, an INSERT returns once `insert_quorum` replicas of every shard it wrote to
//!   hold the rows ([`resolve_quorum`]; the settings themselves are in
//!   [`ClickHouseConfig::cluster_settings`]). A replica dying right after the 200 loses nothing.
//!   `auto` means a majority where ClickHouse runs quorum INSERTs in parallel (20.10+,
//!   `insert_quorum_parallel`). Older versions run them one at a time per table and shard
//!   across the whole cluster, so with several servers ingesting most INSERTs would be turned
//!   away and retried: there `auto` means no quorum (a warning says so), and a quorum must be
//!   asked for explicitly.
//! - On every server that supports it (ClickHouse ≥ 21.2), inserted parts are fsynced before
//!   the INSERT returns ([`enable_fsync`]): a power loss after the 200 loses nothing.
//! - Where neither holds (one 18.16 server), acknowledged rows are in the operating system's
//!   page cache until the kernel writes them back (within `vm.dirty_expire_centisecs`, 30 s by
//!   default): a crash of ClickHouse loses nothing, a power loss of its host can lose that
//!   window. The server says so in its log at start and in `/metrics`.

use serde::Deserialize;

use crate::clickhouse::{
    with_timeout, ClickHouseConfig, ClickHouseError, ClusterConfig, ClusterName, InsertQuorum,
};

/// Whether inserted parts reach the disk before an INSERT returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// `fsync_after_insert` and `fsync_part_directory` are on for every table.
    OnInsert,
    /// This ClickHouse version cannot fsync inserts.
    Unavailable { version: String },
}

/// What a 200 means with this ClickHouse and configuration (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durability {
    /// Replicas of each shard that hold acknowledged rows (1 on one server).
    pub insert_quorum: u8,
    pub fsync: Fsync,
    /// `auto` was asked for on a cluster of a version that runs quorum INSERTs one at a time,
    /// so no quorum is used.
    pub auto_quorum_off: bool,
}

/// Resolves the insert quorum and turns on fsync where supported: the configuration the
/// server's clients are built from, and what an acknowledgement then means.
pub async fn configure(
    config: &ClickHouseConfig,
) -> Result<(ClickHouseConfig, Durability), ClickHouseError> {
    let (config, auto_quorum_off) = resolve_quorum(config).await?;
    let fsync = enable_fsync(&config).await?;
    let insert_quorum = match config.cluster.as_ref().map(|c| c.insert_quorum) {
        Some(InsertQuorum::Replicas(n)) => n,
        _ => 1,
    };
    Ok((
        config,
        Durability {
            insert_quorum,
            fsync,
            auto_quorum_off,
        },
    ))
}

/// The first version whose `fsync_after_insert` works (added in 20.6, made effective by
/// ClickHouse#18845, released in 21.2).
const FSYNC_SINCE: (u32, u32) = (21, 2);

/// The MergeTree settings that make an INSERT (and, on a replica, a fetch) reach the disk.
const FSYNC_SETTINGS: [&str; 2] = ["fsync_after_insert", "fsync_part_directory"];

/// The configuration with [`InsertQuorum::Auto`] replaced by the number it means on this
/// cluster, checked against the cluster's replicas (on one server, unchanged), and whether
/// `auto` was left off because the version runs quorum INSERTs one at a time.
pub async fn resolve_quorum(
    config: &ClickHouseConfig,
) -> Result<(ClickHouseConfig, bool), ClickHouseError> {
    let Some(cluster) = &config.cluster else {
        return Ok((config.clone(), false));
    };
    #[derive(clickhouse::Row, Deserialize)]
    struct Shard {
        shard_num: u32,
        replicas: u64,
    }
    let shards: Vec<Shard> = with_timeout(
        config
            .client_without_database(clickhouse::Compression::None)
            .query(
                "SELECT shard_num, count() AS replicas FROM system.clusters WHERE cluster = ? \
                 GROUP BY shard_num ORDER BY shard_num",
            )
            .bind(cluster.name.as_str())
            .fetch_all(),
    )
    .await?;
    let replicas: Vec<(u32, u64)> = shards.iter().map(|s| (s.shard_num, s.replicas)).collect();
    let parallel: u64 = with_timeout(
        config
            .client_without_database(clickhouse::Compression::None)
            .query("SELECT count() FROM system.settings WHERE name = 'insert_quorum_parallel'")
            .fetch_one(),
    )
    .await?;
    let quorum = quorum_for(
        &cluster.name,
        cluster.insert_quorum,
        &replicas,
        parallel > 0,
    )
    .map_err(ClickHouseError::Schema)?;
    let auto_quorum_off = cluster.insert_quorum == InsertQuorum::Auto
        && parallel == 0
        && replicas.iter().all(|&(_, n)| n >= 2);
    let config = ClickHouseConfig {
        cluster: Some(ClusterConfig {
            insert_quorum: InsertQuorum::Replicas(quorum),
            ..cluster.clone()
        }),
        ..config.clone()
    };
    Ok((config, auto_quorum_off))
}

/// The quorum for `wanted` on a cluster whose shards have `replicas` (shard number, replica
/// count): `auto` is a majority of the smallest shard (1, no quorum, when it has one replica,
/// or when the version runs quorum INSERTs one at a time: `parallel` false).
fn quorum_for(
    cluster: &ClusterName,
    wanted: InsertQuorum,
    replicas: &[(u32, u64)],
    parallel: bool,
) -> Result<u8, String> {
    let Some(&(smallest_shard, fewest)) = replicas.iter().min_by_key(|(_, n)| *n) else {
        return Err(format!(
            "cluster {cluster} has no shards in system.clusters"
        ));
    };
    let fewest = u8::try_from(fewest).unwrap_or(u8::MAX);
    match wanted {
        InsertQuorum::Auto if !parallel => Ok(1),
        InsertQuorum::Auto => Ok(if fewest >= 2 { fewest / 2 + 1 } else { 1 }),
        InsertQuorum::Replicas(n) if n <= fewest => Ok(n),
        InsertQuorum::Replicas(n) => Err(format!(
            "an insert quorum of {n} needs {n} replicas in every shard, and shard \
             {smallest_shard} of cluster {cluster} has {fewest}"
        )),
    }
}

/// Turns on fsync of inserted parts for every MergeTree table of `database` where this
/// ClickHouse supports it, and says which it is.
pub async fn enable_fsync(config: &ClickHouseConfig) -> Result<Fsync, ClickHouseError> {
    let client = config.client_without_database(clickhouse::Compression::None);
    let version: String = with_timeout(client.query("SELECT version()").fetch_one()).await?;
    let known: Vec<String> = with_timeout(
        client
            .query("SELECT name FROM system.merge_tree_settings WHERE has(?, name)")
            .bind(FSYNC_SETTINGS.as_slice())
            .fetch_all(),
    )
    .await?;
    if !fsync_supported(&version, &known) {
        return Ok(Fsync::Unavailable { version });
    }
    // Tables not yet set (on a cluster the node-local ones; views' own storage included).
    let tables: Vec<String> = with_timeout(
        client
            .query(
                "SELECT name FROM system.tables WHERE database = ? AND engine LIKE '%MergeTree' \
                 AND position(create_table_query, 'fsync_after_insert = 1') = 0",
            )
            .bind(&config.database)
            .fetch_all(),
    )
    .await?;
    let on_cluster = config
        .cluster
        .as_ref()
        .map(|c| format!(" ON CLUSTER {}", c.name))
        .unwrap_or_default();
    let settings = FSYNC_SETTINGS.map(|s| format!("{s} = 1")).join(", ");
    for table in tables {
        let sql = format!(
            "ALTER TABLE `{}`.`{}`{on_cluster} MODIFY SETTING {settings}",
            config.database.replace('`', "\\`"),
            table.replace('`', "\\`")
        );
        with_timeout(client.query(&sql).execute()).await?;
    }
    Ok(Fsync::OnInsert)
}

/// Whether `version` (`SELECT version()`) fsyncs inserts when asked, given the MergeTree
/// settings it knows.
fn fsync_supported(version: &str, known_settings: &[String]) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return false;
    };
    (major, minor) >= FSYNC_SINCE
        && FSYNC_SETTINGS
            .iter()
            .all(|s| known_settings.iter().any(|k| k == s))
}

/// Logs (and exports as metrics) what an acknowledgement means (by `serve`; `admin` stays
/// quiet about it).
pub fn report(durability: &Durability) {
    let Durability {
        insert_quorum: quorum,
        fsync,
        auto_quorum_off,
    } = durability;
    metrics::gauge!("backlight_clickhouse_insert_quorum").set(f64::from(*quorum));
    metrics::gauge!("backlight_clickhouse_fsync_on_insert").set(if *fsync == Fsync::OnInsert {
        1.0
    } else {
        0.0
    });
    if *auto_quorum_off {
        tracing::warn!(
            "this ClickHouse runs quorum INSERTs into a table one at a time across the cluster \
             (no insert_quorum_parallel before 20.10), so the automatic insert quorum is off: a \
             200 means one replica has the rows and replication copies them within seconds. \
             --clickhouse-insert-quorum 2 asks for a quorum anyway (ingest from several \
             servers then waits and retries)"
        );
    }
    match (fsync, quorum) {
        (Fsync::OnInsert, _) => tracing::info!(
            insert_quorum = quorum,
            "acknowledged rows are fsynced on {quorum} replica(s) before the 200"
        ),
        (Fsync::Unavailable { version }, 2..) => tracing::info!(
            insert_quorum = quorum,
            %version,
            "acknowledged rows are on {quorum} replicas before the 200 (ClickHouse {version} cannot fsync inserts)"
        ),
        (Fsync::Unavailable { version }, _) => tracing::warn!(
            %version,
            "ClickHouse {version} cannot fsync inserts and no replica quorum is in use: \
             acknowledged rows stay in the OS page cache until the kernel writes them back \
             (normally within 30 s); a power loss of the ClickHouse host in that window loses \
             them. Use ClickHouse >= 21.2 or a replicated cluster (deploy/README.md)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_quorum_is_a_majority_of_the_smallest_shard() {
        let c: ClusterName = "c".parse().unwrap();
        let auto = |r: &[(u32, u64)]| quorum_for(&c, InsertQuorum::Auto, r, true);
        assert_eq!(auto(&[(1, 1), (2, 1)]), Ok(1));
        assert_eq!(auto(&[(1, 2), (2, 2)]), Ok(2));
        assert_eq!(auto(&[(1, 3), (2, 2)]), Ok(2));
        assert_eq!(auto(&[(1, 3), (2, 5)]), Ok(2));
        assert_eq!(auto(&[(1, 5)]), Ok(3));
        assert!(auto(&[]).is_err());
        // Quorum INSERTs one at a time (before 20.10): no automatic quorum.
        assert_eq!(
            quorum_for(&c, InsertQuorum::Auto, &[(1, 3), (2, 3)], false),
            Ok(1)
        );
    }

    #[test]
    fn an_explicit_quorum_must_fit_every_shard() {
        let c: ClusterName = "c".parse().unwrap();
        for parallel in [true, false] {
            let q = |n, r: &[(u32, u64)]| quorum_for(&c, InsertQuorum::Replicas(n), r, parallel);
            assert_eq!(q(2, &[(1, 3), (2, 2)]), Ok(2));
            let error = q(3, &[(1, 3), (2, 2)]).unwrap_err();
            assert!(
                error.contains("shard 2") && error.contains("has 2"),
                "{error}"
            );
            assert_eq!(q(1, &[(1, 1)]), Ok(1));
        }
    }

    #[test]
    fn fsync_needs_a_version_where_it_works_and_the_settings() {
        let both: Vec<String> = FSYNC_SETTINGS.iter().map(|s| s.to_string()).collect();
        assert!(!fsync_supported("18.16.1", &[]));
        assert!(
            !fsync_supported("20.8.3.18", &both),
            "present but broken before 21.2"
        );
        assert!(fsync_supported("21.2.1.5869", &both));
        assert!(fsync_supported("26.9.1.1", &both));
        assert!(!fsync_supported("26.9.1.1", &both[..1]));
        assert!(!fsync_supported("garbage", &both));
    }
}
