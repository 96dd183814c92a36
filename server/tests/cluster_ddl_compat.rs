//! The schema a cluster gets (the baseline of a new database and every migration of an
//! upgrade, rewritten by `storage::cluster_ddl`) on the current ClickHouse engine: `scripts/clickhouse-cluster-ddl.py` parses every statement with
//! chDB's parser and creates every node-local table (replication taken out: chDB has no
//! ZooKeeper), with the fsync settings the server turns on. Running the statements on a real
//! cluster is the cluster end-to-end test's job (`tests/tests/cluster/`, ClickHouse 18.16).

mod support;

use std::io::Write;

use backlight_server::storage::migrations::{cluster_statements, cluster_upgrade_statements};

#[test]
fn the_cluster_schema_is_valid_on_the_current_release() {
    let cluster = "backlight".parse().unwrap();
    let mut statements = cluster_statements(&cluster, "backlight").unwrap();
    statements.extend(cluster_upgrade_statements(&cluster, "backlight_upgraded").unwrap());
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for statement in &statements {
        writeln!(file, "{}", serde_json::to_string(statement).unwrap()).unwrap();
    }
    file.flush().unwrap();
    support::run_check_script("clickhouse-cluster-ddl.py", &[file.path().as_os_str()], &[]);
}
