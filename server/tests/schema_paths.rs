//! A new database gets the baseline schema in one step; a database made by an earlier release
//! runs the migrations it lacks. Both must end in the same schema, and an upgrade must keep
//! every row the API reads. Real ClickHouse 18.16 (fails loudly without `clickhouse-server`),
//! and the current release in-process (chDB, `scripts/clickhouse-schema-paths.py`).

mod support;

use std::collections::BTreeMap;
use std::io::Write;

use axum::http::StatusCode;
use backlight_server::storage::migrations::{
    migrate, migrate_through, missing_versions, statements, BASELINE_SQL, BASELINE_VERSION,
    MIGRATIONS,
};
use backlight_server::tenancy::Role;
use clickhouse::{Client, Compression};
use serde::Deserialize;
use support::TestApp;

/// Tables and views of `database` as ClickHouse describes them, with the database name taken
/// out: name -> (engine, CREATE statement, sorting key, columns with types and defaults).
async fn schema(server: &Client, database: &str) -> BTreeMap<String, String> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Table {
        name: String,
        engine: String,
        create_table_query: String,
        sorting_key: String,
        partition_key: String,
    }
    #[derive(clickhouse::Row, Deserialize)]
    struct Column {
        table: String,
        name: String,
        r#type: String,
        default_kind: String,
        default_expression: String,
    }
    let tables: Vec<Table> = server
        .query(
            "SELECT name, engine, create_table_query, sorting_key, partition_key
             FROM system.tables WHERE database = ? ORDER BY name",
        )
        .bind(database)
        .fetch_all()
        .await
        .unwrap();
    let columns: Vec<Column> = server
        .query(
            "SELECT table, name, type, default_kind, default_expression
             FROM system.columns WHERE database = ? ORDER BY table, name",
        )
        .bind(database)
        .fetch_all()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut described = format!(
            "{} | sorting key: {} | partition key: {}\n{}\n",
            t.engine,
            t.sorting_key,
            t.partition_key,
            t.create_table_query.replace(&format!("{database}."), "DB.")
        );
        for c in columns.iter().filter(|c| c.table == t.name) {
            described.push_str(&format!(
                "  {} {} {} {}\n",
                c.name, c.r#type, c.default_kind, c.default_expression
            ));
        }
        out.insert(t.name, described);
    }
    out
}

/// What a server that crashed after running migration 17's statements, before recording it,
/// leaves behind: the runner then runs the whole step again.
async fn run_migration_17_by_hand(db: &Client) {
    let step = MIGRATIONS.iter().find(|m| m.version == 17).unwrap();
    for statement in statements(step.sql) {
        db.query(&statement).execute().await.unwrap();
    }
}

#[tokio::test]
async fn a_new_database_and_upgraded_ones_have_the_same_schema() {
    let (_dir, clickhouse, config) = support::start_clickhouse("fresh").await;
    let server = config.client_without_database(Compression::None);
    let mut schemas = Vec::new();
    // (database, the release that made it: the last migration it ran, interrupted 17)
    for (database, made_through, interrupted) in [
        ("fresh", None, false),
        ("from_0011", Some(11), false),
        ("from_0016", Some(16), false),
        ("from_0016_interrupted", Some(16), true),
    ] {
        let db = server.clone().with_database(database);
        if let Some(version) = made_through {
            migrate_through(&server, database, &db, None, version)
                .await
                .unwrap();
        }
        if interrupted {
            run_migration_17_by_hand(&db).await;
        }
        migrate(&server, database, &db, None).await.unwrap();
        assert!(
            missing_versions(&db).await.unwrap().is_empty(),
            "{database}"
        );
        // A second server starting changes nothing.
        migrate(&server, database, &db, None).await.unwrap();
        schemas.push((database, schema(&server, database).await));
    }

    let (_, fresh) = &schemas[0];
    for gone in [
        "item_events_v2",
        "item_registrations",
        "report_rollup_v2",
        "report_rollup_state_v2",
        "item_events_unread",
        // Folded into item_lookup by 0018.
        "item_events",
        "item_events_mv",
    ] {
        assert!(!fresh.contains_key(gone), "{gone} in a new database");
    }
    for kept in [
        "item_lookup_events_mv",
        "item_lookup_registrations_mv",
        "report_rollup",
        "report_rollup_state",
        "report_day_rows",
        "item_lookup",
        "device_seq",
    ] {
        assert!(fresh.contains_key(kept), "{kept} missing: {fresh:#?}");
    }
    assert!(
        fresh["item_lookup"].contains("index_granularity = 256"),
        "{}",
        fresh["item_lookup"]
    );
    assert!(
        fresh["item_lookup"].contains("action Enum8"),
        "{}",
        fresh["item_lookup"]
    );
    assert!(
        fresh["report_rollup"].contains("sorting key: tenant_id, device_id, day"),
        "{}",
        fresh["report_rollup"]
    );
    for (database, upgraded) in &schemas[1..] {
        let names = |s: &BTreeMap<String, String>| s.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(upgraded), names(fresh), "tables of {database}");
        for (name, described) in fresh {
            assert_eq!(&upgraded[name], described, "{name} in {database}");
        }
    }
    clickhouse.stop().await.unwrap();
}

#[tokio::test]
async fn rows_written_before_the_upgrade_are_read_by_the_api_after_it() {
    let (dir, clickhouse, config) = support::start_clickhouse("upgrade_rows").await;
    let (server, db) = (
        config.client_without_database(Compression::None),
        config.client(Compression::None),
    );
    migrate_through(&server, &config.database, &db, None, 11)
        .await
        .unwrap();

    // Three hours ago, so the upgrade's backfill of the last hour does not copy these again:
    // what the API shows afterwards is what the renamed tables kept.
    let now = backlight_shared::now_ms();
    let minute = 60_000;
    // On a 15-minute boundary, as report periods must be.
    let l = (now - 3 * 3_600_000) / (15 * minute) * (15 * minute);
    let device = "00000000-0000-4000-8000-000000000001";
    // (Functions are refused in VALUES on 18.16, hence INSERT … SELECT.)
    let event = |seq: u64,
                 kind: &str,
                 item: &str,
                 from: u64,
                 to: u64,
                 state: &str,
                 action: &str| {
        format!(
            "INSERT INTO events (tenant_id, device_id, seq, event_id, kind, event_date, time_ms, end_ms, received_ms, state, item_id, action)
             SELECT 'acme', toUUID('{device}'), {seq}, generateUUIDv4(), '{kind}',
                    toDate(toDateTime(intDiv({from}, 1000))), {from}, {to}, {l} + 40 * 60000, '{state}', '{item}', '{action}'"
        )
    };
    // A: worked on and completed. B: started, still open.
    for sql in [
        event(1, "work_item", "A", l, l, "", "started"),
        event(2, "activity_span", "A", l, l + 30 * minute, "active", ""),
        event(
            3,
            "work_item",
            "A",
            l + 30 * minute,
            l + 30 * minute,
            "",
            "completed",
        ),
        event(
            4,
            "work_item",
            "B",
            l + 35 * minute,
            l + 35 * minute,
            "",
            "started",
        ),
    ] {
        db.query(&sql).execute().await.unwrap();
    }
    for item in ["A", "B"] {
        db.query(&format!(
            "INSERT INTO items (tenant_id, item_id, queue, priority, sla_due_ms, sla_class, customer_ref, registered_ms, updated_ms)
             VALUES ('acme', '{item}', 'claims', 1, 0, '', '', {r}, {r})",
            r = l - 60 * minute
        ))
        .execute()
        .await
        .unwrap();
    }
    // A rollup build of before the upgrade.
    db.query(&format!(
        "INSERT INTO report_rollup_v2 (tenant_id, device_id, day, bucket_ms, item_id, active_ms, idle_ms, completed_ms, version)
         SELECT 'acme', toUUID('{device}'), toDate(toDateTime(intDiv({l}, 1000))), {l}, 'A', 1, 0, 0, 7"
    ))
    .execute()
    .await
    .unwrap();
    db.query(&format!(
        "INSERT INTO report_rollup_state_v2 (tenant_id, device_id, day, version, source_rows)
         SELECT 'acme', toUUID('{device}'), toDate(toDateTime(intDiv({l}, 1000))), 7, 2"
    ))
    .execute()
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { db.query(sql).fetch_one::<u64>().await.unwrap() }
    };
    assert_eq!(count("SELECT count() FROM item_events_v2").await, 4);

    // Up to 16 as the previous release, then 17 as a server that crashed before recording it;
    // the app's start (Store::open) runs 17 again through the runner.
    migrate_through(&server, &config.database, &db, None, 16)
        .await
        .unwrap();
    run_migration_17_by_hand(&db).await;
    let parts = support::start_parts_on((dir, clickhouse, config)).await;
    let app = TestApp::from_state(parts.state.clone(), parts);

    // 0018 folded `item_events` into `item_lookup`: the events of before the upgrade are there
    // once each, and the columns 0018 added read right from their packed rows.
    assert_eq!(
        count("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name LIKE 'item_events%'").await,
        0
    );
    assert_eq!(
        count("SELECT count() FROM (SELECT DISTINCT device_id, seq FROM item_lookup WHERE kind != '')").await,
        4,
        "every item event of before the upgrade, once"
    );
    assert_eq!(
        count(
            "SELECT count() FROM (SELECT DISTINCT seq, kind, state, action, end_ms - time_ms AS ms
                                  FROM item_lookup WHERE item_id = 'A' AND kind != '')
             WHERE (seq = 1 AND kind = 'work_item' AND action = 'started' AND ms = 0)
                OR (seq = 2 AND kind = 'activity_span' AND state = 'active' AND ms = 1800000)
                OR (seq = 3 AND kind = 'work_item' AND action = 'completed' AND ms = 0)"
        )
        .await,
        3,
        "the new columns of rows written before 0018"
    );
    assert_eq!(
        count("SELECT count() FROM item_lookup WHERE seq = 0 AND (kind != '' OR action != '' OR time_ms != 0)").await,
        0,
        "registrations have no event columns"
    );
    assert_eq!(
        count("SELECT count() FROM report_rollup WHERE version = 7").await,
        1
    );
    assert_eq!(
        count("SELECT count() FROM report_rollup_state WHERE version = 7").await,
        1
    );

    let tenant = app.create_tenant("acme").await;
    let agent = app.api_key(&tenant, Role::CcAgent).await;
    let wfm = app.api_key(&tenant, Role::Wfm).await;
    // The status lookup reads `item_lookup`, filled before the upgrade.
    let a = app.get("/v1/items/A", &agent).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["status"], "completed", "{}", a.json());
    let b = app.get("/v1/items/B", &agent).await;
    assert_eq!(b.json()["status"], "in_progress", "{}", b.json());
    // The backlog reads `item_lookup`'s action column: A's completion of before the upgrade
    // must be there, or A would be counted as open.
    let report = app
        .get(
            &format!(
                "/v1/reports/performance?from={}&to={}&tz=UTC",
                l - 2 * 60 * minute,
                l + 60 * minute
            ),
            &wfm,
        )
        .await;
    assert_eq!(
        report.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&report.body)
    );
    assert_eq!(report.json()["backlog"]["count"], 1, "{}", report.json());

    // After the upgrade the view copies new item events into `item_lookup`, once, with the
    // columns filled.
    db.query(&event(5, "work_item", "C", now, now, "", "started"))
        .execute()
        .await
        .unwrap();
    assert_eq!(
        count("SELECT count() FROM item_lookup WHERE item_id = 'C' AND kind = 'work_item' AND action = 'started'").await,
        1
    );
}

/// Both paths on the current ClickHouse: every statement runs, and the schemas agree.
#[test]
fn a_new_database_and_an_upgraded_one_agree_on_the_current_release() {
    let write = |statements: Vec<String>| {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for statement in statements {
            writeln!(file, "{}", serde_json::to_string(&statement).unwrap()).unwrap();
        }
        file.flush().unwrap();
        file
    };
    // A new database: the baseline, then the migrations after it, as the runner does.
    let new = write(
        statements(BASELINE_SQL)
            .into_iter()
            .chain(
                MIGRATIONS
                    .iter()
                    .filter(|m| m.version > BASELINE_VERSION)
                    .flat_map(|m| statements(m.sql)),
            )
            .collect(),
    );
    let upgrade = write(MIGRATIONS.iter().flat_map(|m| statements(m.sql)).collect());
    support::run_check_script(
        "clickhouse-schema-paths.py",
        &[new.path().as_os_str(), upgrade.path().as_os_str()],
        &[],
    );
}
