//! What an acknowledgement means on the ClickHouse at hand (`storage::durability`), against a
//! real single 18.16 server: the version cannot fsync inserts, so the server must say so and
//! change nothing, and a single server gets no quorum. (The quorum path runs on a real cluster
//! in `tests/tests/cluster/`; the fsync statements run on the current engine in
//! `cluster_ddl_compat.rs`.)

mod support;

use backlight_server::storage::durability::{enable_fsync, resolve_quorum, Durability, Fsync};
use backlight_server::storage::Store;

#[tokio::test]
async fn a_single_18_16_server_cannot_fsync_inserts_and_nothing_is_changed() {
    let (_dir, _clickhouse, config) = support::start_clickhouse("durability_test").await;
    let store = Store::open(&config).await.unwrap();
    let version: String = store
        .client()
        .query("SELECT version()")
        .fetch_one()
        .await
        .unwrap();
    assert!(
        version.starts_with("18.16."),
        "this test covers ClickHouse 18.16, the version installable here; got {version}"
    );
    assert_eq!(
        enable_fsync(&config).await.unwrap(),
        Fsync::Unavailable {
            version: version.clone()
        },
    );
    let altered: u64 = store
        .client()
        .query(
            "SELECT count() FROM system.tables WHERE database = currentDatabase() \
             AND position(create_table_query, 'fsync') > 0",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        altered, 0,
        "no table may be given settings 18.16 does not know"
    );
    let (resolved, auto_quorum_off) = resolve_quorum(&config).await.unwrap();
    assert!(resolved.cluster.is_none() && resolved.cluster_settings().is_empty());
    assert!(!auto_quorum_off);
    assert_eq!(
        store.durability(),
        &Durability {
            insert_quorum: 1,
            fsync: Fsync::Unavailable {
                version: version.clone()
            },
            auto_quorum_off: false,
        }
    );
}
