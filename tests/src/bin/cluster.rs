//! `backlight-cluster`: a throwaway ClickHouse cluster on loopback, for benchmarks and for
//! trying `--clickhouse-cluster` by hand. It is the test harness's cluster (a ZooKeeper of its
//! own, one `clickhouse-server` per replica, temporary directories, free ports).
//!
//! ```text
//! backlight-cluster --shards 2 --replicas 1
//! {"cluster":"backlight","zookeeper_port":…,"nodes":[{"shard":1,"replica":1,"url":"http://127.0.0.1:…","tcp_port":…,"pid":…},…]}
//! ```
//!
//! Prints one JSON line once every node is up, then runs until SIGTERM or Ctrl-C and removes
//! everything it started (the processes also die with it if it is killed).

use backlight_e2e::ClickHouseCluster;
use clap::Parser;

#[derive(Parser)]
#[command(about = "A throwaway ClickHouse cluster on loopback (ZooKeeper + shards x replicas)")]
struct Args {
    /// Number of shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Replicas of every shard.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=8).contains(&args.shards) && (1..=5).contains(&args.replicas),
        "1 to 8 shards of 1 to 5 replicas"
    );
    let cluster = ClickHouseCluster::start(&vec![args.replicas; args.shards]).await;
    let nodes: Vec<serde_json::Value> = cluster
        .nodes()
        .map(|(id, ch)| {
            serde_json::json!({
                "shard": id.shard,
                "replica": id.replica,
                "url": ch.url(),
                "tcp_port": ch.ports().tcp,
                "pid": ch.pid(),
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "cluster": cluster.name(),
            "zookeeper_port": cluster.zookeeper().port(),
            // User `default` on every node (nodes query each other as that user).
            "password": cluster.node(1, 1).password(),
            "nodes": nodes,
        })
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(cluster);
    Ok(())
}
