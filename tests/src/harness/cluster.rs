//! A ClickHouse cluster on loopback: a [`ZooKeeper`] and one `clickhouse-server` per replica,
//! each a [`ClickHouse`] of the harness (so any node can be killed and restarted on its ports
//! with its data), configured as shards and replicas of one cluster.
//!
//! [`node_config`] writes what turns a single server into a cluster node: `remote_servers`
//! (every node's native port), `macros` (its shard and replica, used in the replicated tables'
//! ZooKeeper paths), `zookeeper`, the `distributed_ddl` queue for `ON CLUSTER`, and the
//! interserver port replicas fetch parts over. `deploy/clickhouse/cluster.d/` has the same
//! sections for real hosts.

use std::fmt::Write as _;

use backlight_server::clickhouse::embedded::{Ports, USER};

use super::clickhouse::{ClickHouse, Db};
use super::zookeeper::ZooKeeper;

/// The cluster's name in `remote_servers` (what `--clickhouse-cluster` names).
pub const CLUSTER_NAME: &str = "backlight";

/// Where one node sits in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeId {
    /// 1-based, as in ClickHouse's `system.clusters`.
    pub shard: usize,
    /// 1-based.
    pub replica: usize,
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} replica {}", self.shard, self.replica)
    }
}

/// Ports of one node: what clients and other nodes use.
#[derive(Clone, Copy, Debug)]
struct NodePorts {
    ports: Ports,
    interserver: u16,
}

/// A running cluster. Nodes go before ZooKeeper when dropped.
pub struct ClickHouseCluster {
    nodes: Vec<(NodeId, ClickHouse)>,
    zookeeper: ZooKeeper,
}

impl ClickHouseCluster {
    /// Starts ZooKeeper and `replicas[i]` servers for shard `i + 1`, and waits until every
    /// node sees the cluster.
    pub async fn start(replicas: &[usize]) -> ClickHouseCluster {
        let zookeeper = ZooKeeper::start().await;
        let ids: Vec<NodeId> = replicas
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| {
                (1..=n).map(move |r| NodeId {
                    shard: s + 1,
                    replica: r,
                })
            })
            .collect();
        let mut ports = distinct_free_ports(3 * ids.len()).into_iter();
        let mut next = || ports.next().expect("enough ports");
        let layout: Vec<(NodeId, NodePorts)> = ids
            .into_iter()
            .map(|id| {
                let ports = Ports {
                    http: next(),
                    tcp: next(),
                };
                (
                    id,
                    NodePorts {
                        ports,
                        interserver: next(),
                    },
                )
            })
            .collect();
        // One password for user `default` on every node: nodes query each other as that user
        // (Distributed reads and writes), so each `<replica>` names it.
        let password = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut nodes = Vec::new();
        for &(id, ports) in &layout {
            let dir = tempfile::Builder::new()
                .prefix(&format!("backlight-e2e-ch-s{}r{}-", id.shard, id.replica))
                .tempdir()
                .expect("creating a temporary directory for a ClickHouse node");
            let config_d = dir.path().join("config.d");
            std::fs::create_dir_all(&config_d).expect("creating config.d");
            std::fs::write(
                config_d.join("cluster.xml"),
                node_config(id, ports, zookeeper.port(), &layout, &password),
            )
            .expect("writing the node's cluster configuration");
            write_private(
                &dir.path()
                    .join(backlight_server::clickhouse::embedded::PASSWORD_FILE),
                &password,
            );
            nodes.push((id, ClickHouse::start_in(dir, ports.ports).await));
        }
        let cluster = ClickHouseCluster { nodes, zookeeper };
        for (id, ch) in &cluster.nodes {
            let seen = ch
                .db("system")
                .count(&format!(
                    "SELECT count() FROM system.clusters WHERE cluster = '{CLUSTER_NAME}'"
                ))
                .await;
            assert_eq!(seen as usize, layout.len(), "{id} sees {seen} nodes");
            // Alive and talking to ZooKeeper (a node that lost it at startup may have died).
            ch.db("system")
                .try_count("SELECT count() FROM system.zookeeper WHERE path = '/'")
                .await
                .unwrap_or_else(|e| panic!("{id} cannot use ZooKeeper: {e}"));
        }
        cluster
    }

    pub fn name(&self) -> &'static str {
        CLUSTER_NAME
    }

    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &ClickHouse)> {
        self.nodes.iter().map(|(id, ch)| (*id, ch))
    }

    /// The node of `shard`, `replica` (1-based).
    pub fn node(&self, shard: usize, replica: usize) -> &ClickHouse {
        self.nodes
            .iter()
            .find(|(id, _)| id.shard == shard && id.replica == replica)
            .map(|(_, ch)| ch)
            .unwrap_or_else(|| panic!("no node shard {shard} replica {replica}"))
    }

    pub fn node_mut(&mut self, shard: usize, replica: usize) -> &mut ClickHouse {
        self.nodes
            .iter_mut()
            .find(|(id, _)| id.shard == shard && id.replica == replica)
            .map(|(_, ch)| ch)
            .unwrap_or_else(|| panic!("no node shard {shard} replica {replica}"))
    }

    /// Database `name` as seen through the node of `shard`, `replica`.
    pub fn db(&self, shard: usize, replica: usize, name: &str) -> Db {
        self.node(shard, replica).db(name)
    }

    pub fn zookeeper(&self) -> &ZooKeeper {
        &self.zookeeper
    }
}

impl Drop for ClickHouseCluster {
    fn drop(&mut self) {
        // Every node gets its SIGKILL first, so they die together; each node's own drop then
        // only reaps it (one at a time, each dying alone, took seconds per node).
        for (_, ch) in &self.nodes {
            if let Some(pid) = ch.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped
                // child (the harness reaps it only in its own drop, after this).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `n` different ports of 127.0.0.1 that were free a moment ago: all are bound at once, so
/// the kernel cannot hand out one twice (as `free_port` called `n` times may).
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// The `config.d` file that makes one ClickHouse server node `id` of the cluster `layout`.
/// Internal replication: a write reaches one replica per shard and replication copies it.
fn node_config(
    id: NodeId,
    own: NodePorts,
    zookeeper_port: u16,
    layout: &[(NodeId, NodePorts)],
    password: &str,
) -> String {
    let mut shards = String::new();
    let shard_count = layout.iter().map(|(id, _)| id.shard).max().unwrap_or(0);
    for shard in 1..=shard_count {
        shards
            .push_str("      <shard>\n        <internal_replication>true</internal_replication>\n");
        for (other, ports) in layout.iter().filter(|(o, _)| o.shard == shard) {
            let _ = writeln!(
                shards,
                "        <replica><host>127.0.0.1</host><port>{}</port><user>{USER}</user><password>{password}</password></replica><!-- {other} -->",
                ports.ports.tcp
            );
        }
        shards.push_str("      </shard>\n");
    }
    format!(
        r#"<?xml version="1.0"?>
<!-- Written by the Backlight test harness: node {id} of cluster {CLUSTER_NAME}. -->
<yandex>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <interserver_http_port>{interserver}</interserver_http_port>
  <zookeeper>
    <node><host>127.0.0.1</host><port>{zookeeper_port}</port></node>
  </zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <macros>
    <shard>{shard}</shard>
    <replica>r{replica}</replica>
  </macros>
  <remote_servers>
    <{CLUSTER_NAME}>
{shards}    </{CLUSTER_NAME}>
  </remote_servers>
</yandex>
"#,
        interserver = own.interserver,
        shard = id.shard,
        replica = id.replica,
    )
}

/// Writes `text` to a new file only its owner may read (the embedded ClickHouse refuses to
/// trust a password file others could read).
fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
