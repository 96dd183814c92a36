//! Upgrading a database that already holds data: every migration that copies or moves data
//! must keep every row. Real ClickHouse (fails loudly without `clickhouse-server`).

mod support;

use backlight_server::storage::items::{self, read_items};
use backlight_server::storage::migrations::{migrate, migrate_through, missing_versions};
use clickhouse::Compression;

async fn count(client: &clickhouse::Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap()
}

/// Migration 9 moves the item-keyed copy of events to `item_events_v2`: events ingested before
/// the upgrade must be there afterwards, and events ingested after it too (through the new
/// view, once: the old view is gone). Migration 10 copies registrations the same way, and
/// migration 11 packs both into `item_lookup`, which lookups read through the server's parser;
/// migration 17 gives `item_events_v2` its plain name back and drops what nothing reads, and
/// migration 18 folds it into `item_lookup`.
#[tokio::test]
async fn item_events_and_registrations_survive_the_move_to_fine_granules() {
    let (_dir, clickhouse, config) = support::start_clickhouse("upgrade_test").await;
    let (server, db) = (
        config.client_without_database(Compression::None),
        config.client(Compression::None),
    );
    migrate_through(&server, &config.database, &db, None, 8)
        .await
        .unwrap();
    assert_eq!(missing_versions(&db).await.unwrap()[..3], [9, 10, 11]);

    // (Functions are refused in VALUES on 18.16, hence INSERT … SELECT.)
    // Events of the old release: 3 naming items (one of them stored twice, as after a re-sent
    // batch), 1 not naming any.
    let insert = |seq: u64, item: &str| {
        format!(
            "INSERT INTO events (tenant_id, device_id, seq, event_id, kind, event_date, time_ms, end_ms, received_ms, item_id, action)
             SELECT 'acme', toUUID('00000000-0000-4000-8000-000000000001'), {seq}, generateUUIDv4(), 'work_item',
                    toDate('2026-11-01'), 1793491200000, 1793491200000, 1793491200000, '{item}', 'started'"
        )
    };
    for (seq, item) in [(1, "A"), (2, "B"), (2, "B"), (3, "C"), (4, "")] {
        db.query(&insert(seq, item)).execute().await.unwrap();
    }
    assert_eq!(count(&db, "SELECT count() FROM item_events").await, 4);
    let register = |item: &str, version: u64| {
        format!(
            "INSERT INTO items (tenant_id, item_id, queue, priority, sla_due_ms, sla_class, customer_ref, registered_ms, updated_ms)
             VALUES ('acme', '{item}', 'claims', 1, 0, '', '', 1, {version})"
        )
    };
    db.query(&register("A", 1)).execute().await.unwrap();
    db.query(&register("A", 2)).execute().await.unwrap();

    migrate_through(&server, &config.database, &db, None, 11)
        .await
        .unwrap();
    assert_eq!(missing_versions(&db).await.unwrap()[..1], [12]);
    let distinct = "SELECT count() FROM (SELECT DISTINCT device_id, seq FROM item_events_v2)";
    assert_eq!(
        count(&db, distinct).await,
        3,
        "every item event of before the upgrade"
    );

    let registrations =
        "SELECT count() FROM (SELECT DISTINCT item_id, updated_ms FROM item_registrations)";
    assert_eq!(
        count(&db, registrations).await,
        2,
        "both registrations of A"
    );

    // After the upgrade: copied once by the new view; the old table gets nothing new.
    db.query(&insert(5, "D")).execute().await.unwrap();
    assert_eq!(count(&db, distinct).await, 4);
    assert_eq!(
        count(
            &db,
            "SELECT count() FROM item_events_v2 WHERE item_id = 'D'"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT count() FROM item_events").await, 4);
    // Registrations after 11 go to `item_lookup` only: `item_registrations` is no longer read.
    db.query(&register("D", 1)).execute().await.unwrap();
    assert_eq!(count(&db, registrations).await, 2);

    // `item_lookup` (11): the rows of before the upgrade (backfilled) and after it (the views),
    // read and parsed as a lookup does.
    let ids: Vec<String> = ["A", "B", "C", "D", "E"].map(String::from).to_vec();
    let read = read_items(&db, "acme", &ids).await.unwrap();
    let events = |item: &str| {
        let mut seqs: Vec<u64> = read[item].events.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    };
    assert_eq!(
        (events("A"), events("B"), events("C"), events("D")),
        (vec![1], vec![2], vec![3], vec![5])
    );
    let a = read["A"].events[0].clone();
    assert_eq!(a.time_ms, 1793491200000);
    assert_eq!(
        a.what,
        backlight_server::items::Occurrence::Action(backlight_shared::event::ItemAction::Started)
    );
    let newest = |item: &str| read[item].registration.as_ref().map(|r| r.updated_ms);
    assert_eq!(
        (newest("A"), newest("B"), newest("D")),
        (Some(2), None, Some(1))
    );
    assert_eq!(read["A"].registration.as_ref().unwrap().queue, "claims");
    assert!(
        !read.contains_key("E"),
        "nothing invented for an unknown item"
    );
    // The registrations-only read (bulk registration) sees the same newest versions.
    let mut newest_only: Vec<(String, u64)> = items::registrations(&db, "acme", &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.item_id, r.updated_ms))
        .collect();
    newest_only.sort();
    assert_eq!(newest_only, vec![("A".into(), 2), ("D".into(), 1)]);

    // The rest of the migrations, twice (a second server starting): 17 renames
    // `item_events_v2` to `item_events` (the old one dropped) and drops `item_registrations`;
    // 18 folds `item_events` into `item_lookup`, whose new columns read the packed rows.
    for _ in 0..2 {
        migrate(&server, &config.database, &db, None).await.unwrap();
        assert!(missing_versions(&db).await.unwrap().is_empty());
        assert_eq!(
            count(
                &db,
                "SELECT count() FROM (SELECT DISTINCT device_id, seq FROM item_lookup
                                      WHERE kind = 'work_item' AND action = 'started')"
            )
            .await,
            4
        );
        assert_eq!(
            count(
                &db,
                "SELECT count() FROM system.tables WHERE database = currentDatabase()
                 AND name IN ('item_events_v2', 'item_registrations', 'item_events', 'item_events_mv')"
            )
            .await,
            0
        );
    }
    // Identities, so merges (which may fold A's two registrations into one) change nothing.
    let lookup_rows =
        "SELECT count() FROM (SELECT DISTINCT item_id, device_id, seq FROM item_lookup)";
    assert_eq!(
        count(&db, lookup_rows).await,
        4 + 2,
        "4 events, registrations of A and D"
    );
    clickhouse.stop().await.unwrap();
}

/// Migration 13 records each device's highest stored `seq` in `device_seq`, which ingest reads
/// to keep the first copy of an event: devices with events of before the upgrade must be there
/// (backfill), and later inserts must raise it (view).
#[tokio::test]
async fn device_progress_is_backfilled_and_kept_in_step() {
    use backlight_server::storage::events::stored_max_seq;
    use uuid::Uuid;

    let (_dir, clickhouse, config) = support::start_clickhouse("upgrade_seq_test").await;
    let (server, db) = (
        config.client_without_database(Compression::None),
        config.client(Compression::None),
    );
    migrate_through(&server, &config.database, &db, None, 11)
        .await
        .unwrap();
    let (one, two) = (
        Uuid::parse_str("00000000-0000-4000-8000-000000000001").unwrap(),
        Uuid::parse_str("00000000-0000-4000-8000-000000000002").unwrap(),
    );
    let insert = |tenant: &str, device: Uuid, seq: u64, month: &str| {
        format!(
            "INSERT INTO events (tenant_id, device_id, seq, event_id, kind, event_date, time_ms, end_ms, received_ms)
             SELECT '{tenant}', toUUID('{device}'), {seq}, generateUUIDv4(), 'health',
                    toDate('{month}-01'), 1, 1, 1"
        )
    };
    // Device one over two months (so two partitions), one seq stored twice; device two; the
    // same device id under another tenant.
    for (tenant, device, seq, month) in [
        ("acme", one, 1, "2026-10"),
        ("acme", one, 7, "2026-11"),
        ("acme", one, 7, "2026-11"),
        ("acme", one, 2, "2026-11"),
        ("acme", two, 3, "2026-11"),
        ("other", one, 40, "2026-11"),
    ] {
        db.query(&insert(tenant, device, seq, month))
            .execute()
            .await
            .unwrap();
    }

    migrate(&server, &config.database, &db, None).await.unwrap();
    let stored = |tenant: &'static str, device: Uuid| {
        let db = db.clone();
        async move { stored_max_seq(&db, tenant, device).await.unwrap() }
    };
    assert_eq!(
        (
            stored("acme", one).await,
            stored("acme", two).await,
            stored("other", one).await,
            stored("acme", Uuid::new_v4()).await
        ),
        (7, 3, 40, 0)
    );

    // After the upgrade the view keeps it in step.
    db.query(&insert("acme", two, 9, "2026-12"))
        .execute()
        .await
        .unwrap();
    assert_eq!(stored("acme", two).await, 9);
    // Running the migrations again (another server starting) changes nothing.
    migrate(&server, &config.database, &db, None).await.unwrap();
    assert_eq!(
        (stored("acme", one).await, stored("acme", two).await),
        (7, 9)
    );
    clickhouse.stop().await.unwrap();
}

/// Migration 14 starts the policy history: the policy saved before the upgrade is its first
/// entry, and running the step twice (an interrupted start) does not duplicate it.
#[tokio::test]
async fn the_policy_saved_before_the_upgrade_starts_the_history() {
    let (_dir, _clickhouse, config) = support::start_clickhouse("policy_upgrade_test").await;
    let (server, db) = (
        config.client_without_database(Compression::None),
        config.client(Compression::None),
    );
    migrate_through(&server, &config.database, &db, None, 11)
        .await
        .unwrap();
    db.query(
        "INSERT INTO policies (tenant_id, version, policy_json, etag, saved_by, updated_ms)
         VALUES ('acme', 3, '{}', '\"e3\"', 'admin-cli', 1793491200000)",
    )
    .execute()
    .await
    .unwrap();
    migrate(&server, &config.database, &db, None).await.unwrap();
    let step = backlight_server::storage::migrations::MIGRATIONS
        .iter()
        .find(|m| m.name == "policy_history_and_key_limits")
        .unwrap();
    for statement in backlight_server::storage::migrations::statements(step.sql) {
        db.query(&statement).execute().await.unwrap();
    }
    let history = backlight_server::storage::policies::history(&db, &"acme".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].version, history[0].saved_by.as_str()),
        (3, "admin-cli")
    );
}
