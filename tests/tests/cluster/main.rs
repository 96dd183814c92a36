//! Backlight on a ClickHouse cluster, with real processes only: a ZooKeeper, five
//! `clickhouse-server`s on loopback forming two shards (shard 1 with three replicas, shard 2
//! with two), two `backlight-server`s started with `--clickhouse-cluster` on different nodes,
//! and agents uploading through both.
//!
//! Why this topology: shard 1 has three replicas so an insert quorum of 2 survives one of them
//! dying; shard 2 makes the data sharded. Measured idle on this machine: about 0.3 % of a core
//! and 95 MB per ClickHouse, 0.3 % and 155 MB for ZooKeeper.
//!
//! One test, in phases sharing the expensive setup (2 to 3 minutes on 2 shared cores: 115 s,
//! 142 s and 188 s measured):
//! 1. agents on both servers, a batch re-sent through both: every event exactly once; the rows
//!    are spread over both shards, each device's on one shard only; replicas converge;
//! 2. a lookup and a report answer the same on either server;
//! 3. a replica of shard 1 is SIGKILLed while agents upload: nothing is lost, the uploads go
//!    on, and the replica catches up when it returns;
//! 4. a 200 means a quorum has the rows: a third server asks for a quorum of 2 (18.16 runs
//!    quorum INSERTs one at a time, so `auto` leaves it off there, which A and B check); with
//!    replica 3 not fetching, the replica that took its INSERT is SIGKILLed right after the
//!    200, and replica 2 has every row of it; the next batch is acknowledged by 2 and 3; the
//!    killed replica returns, catches up, and the server using it serves again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backlight_e2e::harness::server::{admin, try_admin};
use backlight_e2e::harness::{http_client, unique_name};
use backlight_e2e::*;
use backlight_server::clickhouse::{ClickHouseConfig, ClusterConfig, InsertQuorum};
use backlight_server::storage::migrations::{migrate, migrate_through};
use clickhouse::Compression;
use uuid::Uuid;

/// Replicas of shard 1 and shard 2.
const SHARDS: [usize; 2] = [3, 2];
/// The servers' read settings (see `ClickHouseConfig::cluster_settings`), so the test reads
/// through the Distributed tables what the servers read.
const READS: &str = "load_balancing=in_order&prefer_localhost_replica=0&distributed_product_mode=global&connect_timeout_with_failover_ms=1000";
/// Small batches, so uploads are under way when a replica dies.
const UPLOAD: [&str; 5] = [
    "--batch-max-events",
    "100",
    "--batch-max-age",
    "100ms",
    "--exit-when-drained",
];
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// An agent of `server` with `n` events to upload, running.
async fn uploading(server: &Server, key: &str, n: usize) -> FileAgent {
    let mut agent = FileAgent::enroll(&server.url(), key, n).await;
    agent.agent.spawn_run(&agent.args(&UPLOAD));
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_like_one_server_and_loses_nothing_when_a_replica_dies() {
    let started = std::time::Instant::now();
    let mut cluster = ClickHouseCluster::start(&SHARDS).await;
    println!("cluster of {SHARDS:?} up after {:?}", started.elapsed());
    let database = unique_name("cluster");
    let options = ServerOptions {
        storage_args: vec!["--clickhouse-cluster".into(), cluster.name().into()],
        // The product's default: an INSERT at most every 20 ms per server.
        insert_min_interval: "20ms".into(),
        // About 75 ON CLUSTER statements, each waiting for all five nodes.
        ready_timeout: Duration::from_secs(180),
        ..ServerOptions::default()
    };
    // The upgrade path: the database is first made as a release before migration 16 made it,
    // so the servers apply 16 (ADD COLUMN on `events`) and 17 (RENAME, DROP) to an existing
    // cluster database.
    let old_release = ClickHouseConfig {
        url: cluster.node(2, 1).url(),
        database: database.clone(),
        user: Some("default".into()),
        password: Some(cluster.node(2, 1).password().into()),
        cluster: Some(ClusterConfig {
            name: cluster.name().parse().unwrap(),
            insert_quorum: InsertQuorum::Auto,
        }),
    };
    migrate_through(
        &old_release.client_without_database(Compression::None),
        &database,
        &old_release.client(Compression::None),
        old_release.cluster.as_ref().map(|c| &c.name),
        14,
    )
    .await
    .expect("migrations 1 to 14 on the cluster");
    // Each server on the first replica of a shard: every server reads and writes the first
    // healthy replica of each shard, and 18.16 writes a node's own shard to that node, so a
    // server on a second replica would write where the others do not read yet.
    let a = Server::start_with(cluster.db(2, 1, &database), options.clone()).await;
    let b = Server::start_with(cluster.db(1, 1, &database), options.clone()).await;
    println!("servers up after {:?}", started.elapsed());
    for server in [&a, &b] {
        assert_eq!(quorum(server).await, 1, "auto on 18.16: no quorum");
    }
    let db = cluster.db(2, 2, &database).with_settings(READS);
    for (id, ch) in cluster.nodes() {
        let tables = ch
            .db(&database)
            .tsv("SELECT name, engine FROM system.tables WHERE database = currentDatabase() AND name IN ('events', 'events_local') ORDER BY name")
            .await;
        assert_eq!(
            tables,
            vec![
                vec!["events".to_string(), "Distributed".to_string()],
                vec![
                    "events_local".to_string(),
                    "ReplicatedReplacingMergeTree".to_string()
                ],
            ],
            "{id}"
        );
        // Migration 16 reached the local and the Distributed table on every node.
        let added = ch
            .db(&database)
            .tsv("SELECT table FROM system.columns WHERE database = currentDatabase() AND name = 'session_client' ORDER BY table")
            .await;
        assert_eq!(added, vec![vec!["events"], vec!["events_local"]], "{id}");
        // Migration 17 renamed the `_v2` tables (local and Distributed) and dropped the
        // tables nothing reads, and 18 folded `item_events` into `item_lookup`, on every node.
        let renamed = ch
            .db(&database)
            .tsv("SELECT name, engine FROM system.tables WHERE database = currentDatabase() AND (name LIKE 'item_events%' OR name LIKE 'item_lookup%' OR name LIKE 'item_registrations%' OR name LIKE 'report_rollup%') ORDER BY name")
            .await;
        let expected: Vec<Vec<String>> = [
            ("item_lookup", "Distributed"),
            ("item_lookup_events_mv", "MaterializedView"),
            ("item_lookup_local", "ReplicatedReplacingMergeTree"),
            ("item_lookup_registrations_mv", "MaterializedView"),
            ("report_rollup", "Distributed"),
            ("report_rollup_local", "ReplicatedReplacingMergeTree"),
            ("report_rollup_state", "Distributed"),
            ("report_rollup_state_local", "ReplicatedReplacingMergeTree"),
        ]
        .iter()
        .map(|(name, engine)| vec![name.to_string(), engine.to_string()])
        .collect();
        assert_eq!(renamed, expected, "{id}");
        let folded = ch
            .db(&database)
            .tsv("SELECT table FROM system.columns WHERE database = currentDatabase() AND name = 'action' AND table LIKE 'item_lookup%' ORDER BY table")
            .await;
        // The column is on the local and the Distributed table, and both views fill it.
        let expected = [
            "item_lookup",
            "item_lookup_events_mv",
            "item_lookup_local",
            "item_lookup_registrations_mv",
        ]
        .map(|t| vec![t.to_string()]);
        assert_eq!(folded, expected, "{id}");
    }
    // A new database (the baseline, rewritten for the cluster) has the same tables, engines,
    // keys and columns on every node as the upgraded one (only ZooKeeper paths differ).
    let new_database = unique_name("cluster_new");
    let new_release = ClickHouseConfig {
        database: new_database.clone(),
        ..old_release.clone()
    };
    migrate(
        &new_release.client_without_database(Compression::None),
        &new_database,
        &new_release.client(Compression::None),
        new_release.cluster.as_ref().map(|c| &c.name),
    )
    .await
    .expect("a new database on the cluster");
    for (id, ch) in cluster.nodes() {
        let schema = |database: String| {
            let ch = ch.db(&database);
            async move {
                ch.tsv("SELECT kind, a, b, c, d, e FROM (
                          SELECT 'table' AS kind, name AS a, engine AS b, sorting_key AS c, partition_key AS d, '' AS e
                          FROM system.tables WHERE database = currentDatabase()
                          UNION ALL
                          SELECT 'column' AS kind, table AS a, name AS b, type AS c, default_kind AS d, default_expression AS e
                          FROM system.columns WHERE database = currentDatabase()
                        ) ORDER BY kind, a, b")
                    .await
            }
        };
        let new = schema(new_database.clone()).await;
        assert!(
            new.iter()
                .any(|row| row[..3]
                    == ["table", "item_lookup_local", "ReplicatedReplacingMergeTree"]),
            "{id}: {new:?}"
        );
        assert_eq!(new, schema(database.clone()).await, "{id}");
    }

    // The registry is shared: a tenant made through A, its key through B.
    let tenant = a.create_tenant("cluster").await;
    let key = b.create_enrollment_key(&tenant).await;

    // ---- 1. Exactly once, sharded, replicated --------------------------------------------
    let mut agents = Vec::new();
    for i in 0..4 {
        let server = if i % 2 == 0 { &a } else { &b };
        agents.push(uploading(server, &key, 300).await);
    }
    // Sixteen more devices, half through each server, so both shards surely get some (all on
    // one shard: 2^-19 with the agents'), and one batch acknowledged twice: a re-send after a
    // lost acknowledgement, through the other server.
    let mut devices = Vec::new();
    for i in 0..16 {
        let server = if i % 2 == 0 { &a } else { &b };
        let device = server.enroll_device(&key).await;
        let sent = batch(&device, spans(1, 20));
        server.send_batch(&device, &sent).await.assert_ok();
        if i == 0 {
            b.send_batch(&device, &sent).await.assert_ok();
        }
        devices.push(device.id);
    }
    let mut agent_devices = Vec::new();
    for agent in &mut agents {
        agent_devices.push(agent.assert_drained_once(&db, AGENT_TIMEOUT).await);
    }
    for device in &devices {
        assert_eq!(db.events_final(device).await, 20, "device {device}");
    }
    let raw = db
        .count(&format!(
            "SELECT count() FROM events WHERE device_id = '{}'",
            devices[0]
        ))
        .await;
    // Both copies are stored (on one shard), until a merge collapses them; counted once.
    assert!(raw == 20 || raw == 40, "{raw} rows of the re-sent batch");
    let all: BTreeSet<Uuid> = devices.iter().chain(&agent_devices).copied().collect();
    let mut placed: BTreeMap<Uuid, usize> = BTreeMap::new();
    for shard in 1..=SHARDS.len() {
        let held = devices_on(&cluster.db(shard, 1, &database)).await;
        assert!(!held.is_empty(), "shard {shard} holds no device");
        for device in held {
            if let Some(other) = placed.insert(device, shard) {
                panic!("device {device} has rows on shard {other} and shard {shard}");
            }
        }
    }
    assert_eq!(placed.keys().copied().collect::<BTreeSet<_>>(), all);
    wait_for_replicas(&cluster, &database, "events_local").await;
    wait_for_replicas(&cluster, &database, "item_lookup_local").await;
    // A database is made for a cluster or for one server, and the other is refused.
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let single = try_admin(
        &cluster.db(1, 1, &database),
        scratch.path(),
        &["tenant", "list"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&single.stderr);
    assert!(
        !single.status.success() && stderr.contains("was created on a cluster"),
        "admin without --clickhouse-cluster on a cluster database: {stderr}"
    );
    let one_server = cluster.db(2, 1, &unique_name("single"));
    admin(&one_server, scratch.path(), &["tenant", "list"]).await;
    let clustered = try_admin(
        &one_server,
        scratch.path(),
        &["--clickhouse-cluster", cluster.name(), "tenant", "list"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&clustered.stderr);
    assert!(
        !clustered.status.success() && stderr.contains("created for a single ClickHouse server"),
        "admin with --clickhouse-cluster on a single-server database: {stderr}"
    );
    println!("phase 1 done after {:?}", started.elapsed());
    // ---- 2. Either server answers the same ---------------------------------------------
    let cc_agent = api_key(&a, &tenant, "cc_agent").await;
    let wfm = api_key(&b, &tenant, "wfm").await;
    // CLM-0 was started on every agent's desktop: its events live on both shards' devices.
    let on_a = get_json(&a, "/v1/items/CLM-0", &cc_agent).await;
    let on_b = get_json(&b, "/v1/items/CLM-0", &cc_agent).await;
    assert_eq!(on_a, on_b, "the lookup differs between the servers");
    println!("lookup: {on_a}");
    let hour = 3_600_000;
    let to = now_ms() / 900_000 * 900_000 + 900_000;
    let report = format!(
        "/v1/reports/performance?from={}&to={to}&group_by=device",
        to - 3 * hour
    );
    let on_a = get_json(&a, &report, &wfm).await;
    let on_b = get_json(&b, &report, &wfm).await;
    assert_eq!(on_a, on_b, "the report differs between the servers");
    let rows = on_a["rows"].as_array().map_or(0, Vec::len);
    assert!(rows >= agent_devices.len(), "report rows: {on_a}");
    println!("phase 2 done after {:?}", started.elapsed());

    // ---- 3. A replica dies mid-ingest ------------------------------------------------------
    let mut uploads = Vec::new();
    for server in [&a, &b] {
        uploads.push(uploading(server, &key, 2_000).await);
    }
    wait_until(secs(60), "the uploads to be under way", async || {
        db.try_count(&format!(
            "SELECT count() FROM events WHERE tenant_id = '{tenant}'"
        ))
        .await
        .unwrap_or(0)
            > 20 * 16 + 300 * 4 + 200
    })
    .await;
    cluster.node_mut(1, 3).kill();
    for agent in &mut uploads {
        assert!(
            agent.agent.is_running(),
            "an agent finished before the replica died: make the input bigger"
        );
    }
    println!("replica 3 of shard 1 killed after {:?}", started.elapsed());
    for agent in &mut uploads {
        agent.assert_drained_once(&db, AGENT_TIMEOUT).await;
    }
    println!("uploads drained after {:?}", started.elapsed());
    cluster.node_mut(1, 3).restart().await;
    wait_for_replicas(&cluster, &database, "events_local").await;
    wait_for_replicas(&cluster, &database, "item_lookup_local").await;
    println!("phase 3 done after {:?}", started.elapsed());

    // ---- 4. A 200 means a quorum of replicas has the rows ---------------------------------
    // A device whose rows go to shard 1 (Distributed picks shard `key % 2`, 0 = shard 1).
    let device = loop {
        let device = a.enroll_device(&key).await;
        let shard = db
            .count(&format!(
                "SELECT cityHash64(toString('{tenant}'), toString(toUUID('{}'))) % 2",
                device.id
            ))
            .await;
        if shard == 0 {
            break device;
        }
    };
    let c = Server::start_with(
        cluster.db(2, 1, &database),
        ServerOptions {
            storage_args: vec![
                "--clickhouse-cluster".into(),
                cluster.name().into(),
                "--clickhouse-insert-quorum".into(),
                "2".into(),
            ],
            ..options.clone()
        },
    )
    .await;
    assert_eq!(quorum(&c).await, 2);
    // Replica 3 stops fetching, so the quorum of 2 can only be replica 1 (which takes shard
    // 1's INSERTs: the first healthy replica) and replica 2.
    let (replica_2, replica_3) = (cluster.db(1, 2, &database), cluster.db(1, 3, &database));
    replica_3.query("SYSTEM STOP FETCHES events_local").await;
    c.send_batch(&device, &batch(&device, spans(1, 50)))
        .await
        .assert_ok();
    cluster.node_mut(1, 1).kill();
    let on_replica_2 = replica_2
        .count(&format!(
            "SELECT count() FROM events_local WHERE device_id = '{}'",
            device.id
        ))
        .await;
    assert_eq!(
        on_replica_2, 50,
        "acknowledged rows missing on replica 2 right after the replica that took them died"
    );
    replica_3.query("SYSTEM START FETCHES events_local").await;
    // The service goes on without replica 1 (B, which uses it, answers 503 meanwhile): the
    // next batch is acknowledged by replicas 2 and 3.
    c.send_batch(&device, &batch(&device, spans(51, 50)))
        .await
        .assert_ok();
    assert_eq!(db.events_final(device.id).await, 100);
    cluster.node_mut(1, 1).restart().await;
    wait_for_replicas(&cluster, &database, "events_local").await;
    // B serves again once its node is back. Its INSERT goes to that node, which other servers
    // read only once it has caught up (a restarted replica is behind until its queue ran).
    b.send_batch(&device, &batch(&device, spans(101, 10)))
        .await
        .assert_ok();
    wait_until(
        secs(60),
        "the batch written through B to be read through another node",
        async || {
            db.try_count(&format!(
                "SELECT count() FROM events FINAL WHERE device_id = '{}'",
                device.id
            ))
            .await
            .is_ok_and(|n| n == 110)
        },
    )
    .await;
    println!("phase 4 done after {:?}", started.elapsed());
    drop((a, b, c));
    drop(cluster);
    println!("everything stopped after {:?}", started.elapsed());
}

/// The insert quorum a server resolved (its `backlight_clickhouse_insert_quorum` gauge).
async fn quorum(server: &Server) -> u64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("backlight_clickhouse_insert_quorum "))
        .unwrap_or_else(|| panic!("no insert quorum gauge in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .expect("a number")
}

/// `n` activity spans with sequence numbers `first..first + n`, in the last hour.
fn spans(first: u64, n: u64) -> Vec<Event> {
    let start = now_ms() - 3_000_000;
    (first..first + n)
        .map(|seq| {
            activity_span(
                seq,
                "claims-desk",
                start + seq * 1_000,
                start + seq * 1_000 + 500,
            )
        })
        .collect()
}

/// Devices with rows in the node-local `events_local` of one node.
async fn devices_on(node: &Db) -> BTreeSet<Uuid> {
    node.tsv("SELECT DISTINCT device_id FROM events_local")
        .await
        .into_iter()
        .map(|row| row[0].parse().expect("a UUID"))
        .collect()
}

/// Waits until every replica of every shard holds the same rows of `table` (node-local).
async fn wait_for_replicas(cluster: &ClickHouseCluster, database: &str, table: &str) {
    for (shard, &replicas) in SHARDS.iter().enumerate() {
        let shard = shard + 1;
        wait_for(
            secs(60),
            &format!("the replicas of shard {shard} to agree on {table}"),
            async || {
                let mut counts = Vec::new();
                for replica in 1..=replicas {
                    let n = cluster
                        .db(shard, replica, database)
                        .try_count(&format!("SELECT count() FROM {table}"))
                        .await
                        .map_err(|e| e.to_string())?;
                    counts.push(n);
                }
                if counts.windows(2).all(|w| w[0] == w[1]) {
                    Ok(())
                } else {
                    Err(format!("row counts per replica: {counts:?}"))
                }
            },
        )
        .await;
    }
}

/// Creates an API key of `role` for `tenant` and returns its secret.
async fn api_key(server: &Server, tenant: &str, role: &str) -> String {
    server
        .admin(&[
            "api-key",
            "create",
            "--tenant",
            tenant,
            "--role",
            role,
            "--name",
            "cluster-test",
        ])
        .await
        .trim()
        .to_string()
}

/// `GET path` with a bearer key; the JSON of a 200, without the time it was made (`as_of_ms`).
async fn get_json(server: &Server, path: &str, key: &str) -> serde_json::Value {
    let response = http_client()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status();
    let body = response.text().await.expect("reading the body");
    assert_eq!(status, 200, "GET {path} on {}: {body}", server.url());
    let mut json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    if let Some(object) = json.as_object_mut() {
        object.remove("as_of_ms");
    }
    json
}
