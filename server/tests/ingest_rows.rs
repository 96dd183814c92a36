//! What `/v1/ingest` stores: every column of every kind of event, exactly as `EventRow::new`
//! maps it. The handler sends its own RowBinary encoding; the rows are read back with the
//! clickhouse crate's decoder, so the two have to agree byte for byte.

mod support;

use backlight_server::storage::events::EventRow;
use backlight_shared::batch::Batch;
use backlight_shared::event::*;
use backlight_shared::{now_ms, PROTOCOL_VERSION};
use support::TestApp;
use uuid::Uuid;

#[tokio::test]
async fn ingested_events_are_stored_column_for_column() {
    let app = TestApp::start().await;
    let tenant = app.create_tenant("rows").await;
    let device = app.enroll(&tenant).await;
    let at = now_ms() - 60_000;
    let bodies = [
        EventBody::ActivitySpan(ActivitySpan {
            app: "claims-desk".into(),
            title: Some("Schaden №42 – Prüfung ✓".into()),
            start_ms: at,
            end_ms: at + 5_000,
            state: ActivityState::Active,
            item_id: Some("CLM-1".into()),
            step: Some("assess".into()),
        }),
        EventBody::ActivitySpan(ActivitySpan {
            // Longer than 127 bytes: a two-byte length prefix.
            app: "a".repeat(200),
            title: None,
            start_ms: at + 5_000,
            end_ms: at + 9_000,
            state: ActivityState::Locked,
            item_id: None,
            step: None,
        }),
        EventBody::WorkItem(WorkItemEvent {
            item_id: "CLM-1".into(),
            action: ItemAction::Completed,
            at_ms: at + 9_000,
            source: ItemSource::Manual,
            step: None,
        }),
        EventBody::Consent(ConsentChange {
            granted: true,
            policy_version: 7,
            scope: "activity".into(),
            at_ms: at + 10_000,
        }),
        EventBody::Health(AgentHealth {
            agent_version: "1.2.3".into(),
            spool_depth: 12,
            events_dropped: 3,
            events_rejected: 1,
            clock_offset_ms: -250,
            at_ms: at + 11_000,
            session: None,
        }),
        EventBody::Health(AgentHealth {
            agent_version: "1.2.3".into(),
            spool_depth: 0,
            events_dropped: 0,
            events_rejected: 0,
            clock_offset_ms: 0,
            at_ms: at + 12_000,
            session: Some(DesktopSession {
                kind: SessionKind::Citrix,
                client_name: Some("THIN-CLIENT-7".into()),
            }),
        }),
    ];
    // Two batches sent at once, so an INSERT (10 ms group commit here) usually carries the
    // rows of both requests back to back.
    let batch = |first_seq: u64| Batch {
        protocol: PROTOCOL_VERSION,
        device_id: device.device_id,
        events: bodies
            .iter()
            .zip(first_seq..)
            .map(|(body, seq)| Event {
                seq,
                id: Uuid::new_v4(),
                body: body.clone(),
            })
            .collect(),
    };
    let (first, second) = (batch(1), batch(1 + bodies.len() as u64));
    tokio::join!(
        app.ingest_batch(&device, &first),
        app.ingest_batch(&device, &second)
    );

    let stored: Vec<EventRow> = app
        .store
        .client()
        .query("SELECT ?fields FROM events WHERE device_id = ? ORDER BY seq")
        .bind(device.device_id.to_string())
        .fetch_all()
        .await
        .expect("reading the rows back");
    let sent: Vec<&Event> = first.events.iter().chain(&second.events).collect();
    assert_eq!(stored.len(), sent.len(), "{stored:#?}");
    for (row, event) in stored.iter().zip(sent) {
        let expected = EventRow::new(tenant.as_str(), device.device_id, event, row.received_ms);
        assert_eq!(row, &expected);
        assert!(row.received_ms >= at, "{row:?}");
    }
}

/// With the group commit's budget taken, a batch is turned away before it is decoded: 503
/// with `Retry-After`, nothing stored; once there is room the same batch is stored.
#[tokio::test]
async fn a_full_group_commit_turns_batches_away_with_retry_after() {
    use std::time::Duration;

    use axum::http::{header, StatusCode};
    use backlight_server::http::AppState;
    use backlight_server::ingest::writer::{IngestWriter, WriterConfig};

    let parts = support::start_parts().await;
    let writer = IngestWriter::spawn(
        parts.store.client().clone(),
        WriterConfig {
            min_insert_interval: Duration::ZERO,
            max_bytes_in_flight: 1024 * 1024,
            admission_timeout: Duration::from_millis(200),
            // One tenant may take all of it here (another one does, below).
            tenant_share: 1.0,
            ..WriterConfig::default()
        },
    );
    let app = TestApp::from_state(
        AppState::new(parts.store.clone(), writer.clone(), Duration::ZERO),
        parts,
    );
    let tenant = app.create_tenant("full").await;
    let device = app.enroll(&tenant).await;
    let batch = Batch {
        protocol: PROTOCOL_VERSION,
        device_id: device.device_id,
        events: vec![Event {
            seq: 1,
            id: Uuid::new_v4(),
            body: EventBody::WorkItem(WorkItemEvent {
                item_id: "CLM-FULL".into(),
                action: ItemAction::Started,
                at_ms: now_ms() - 1_000,
                source: ItemSource::App,
                step: None,
            }),
        }],
    };
    let post = || support::ingest_request(&device, &batch);

    let everything = writer.reserve("someone-else", usize::MAX).await.unwrap();
    let refused = app.request(post()).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(refused.json()["error"], "unavailable", "{}", refused.json());
    let stored = || async {
        app.store
            .client()
            .query("SELECT count() FROM events WHERE device_id = ?")
            .bind(device.device_id.to_string())
            .fetch_one::<u64>()
            .await
            .unwrap()
    };
    assert_eq!(stored().await, 0);

    drop(everything);
    let accepted = app.request(post()).await;
    assert_eq!(accepted.status, StatusCode::OK);
    assert_eq!(stored().await, 1);
}
