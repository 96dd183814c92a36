//! A batch sent again (the agent never saw the first acknowledgement) is stored again, and
//! every way of counting still counts it once.

use backlight_e2e::*;

use crate::{events, Spine};

#[tokio::test]
async fn same_batch_twice_counts_once() {
    let spine = Spine::start("dedup").await;
    let server = &spine.server;
    let device = server.enroll_device(&spine.key).await;
    let db = server.db();

    let n = 100u64;
    let sent = batch(&device, events(1, n));
    let body = zstd(&serde_json::to_vec(&sent).unwrap());
    for attempt in 1..=2 {
        let answer: IngestResponse = server
            .post_ingest(Some(&device.credential), Some("zstd"), body.clone())
            .await
            .ok_json();
        assert_eq!(
            answer,
            IngestResponse {
                accepted: n as usize,
                max_seq: n
            },
            "answer to attempt {attempt}"
        );
    }

    let raw = db
        .count(&format!(
            "SELECT count() FROM events WHERE device_id = '{}'",
            device.id
        ))
        .await;
    println!("plain count() after sending the same {n}-event batch twice: {raw} (without FINAL)");
    assert!(
        raw == n || raw == 2 * n,
        "plain count() is {raw}, expected {n} or {}",
        2 * n
    );
    assert_counts_once(&spine, &device, n).await;

    // What is stored is what was sent: the wire ids and items come back under FINAL.
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Stored {
        seq: u64,
        event_id: uuid::Uuid,
        item_id: String,
    }
    let stored: Vec<Stored> = db
        .rows(&format!(
            "SELECT seq, event_id, item_id FROM events FINAL WHERE device_id = '{}' AND seq <= 4 ORDER BY seq",
            device.id
        ))
        .await;
    let expected: Vec<Stored> = sent.events[..4]
        .iter()
        .map(|e| Stored {
            seq: e.seq,
            event_id: e.id,
            item_id: match &e.body {
                EventBody::WorkItem(w) => w.item_id.clone(),
                _ => String::new(),
            },
        })
        .collect();
    assert_eq!(stored, expected);

    // A retry that overlaps: 51..=150, the first half identical to what was already stored.
    let overlap: Vec<Event> = sent.events[50..]
        .iter()
        .cloned()
        .chain(events(n + 1, 50))
        .collect();
    server
        .send_batch(&device, &batch(&device, overlap))
        .await
        .assert_ok();
    assert_counts_once(&spine, &device, 150).await;

    // Once merged, the copies are gone for good: even a plain count agrees.
    db.query("OPTIMIZE TABLE events FINAL").await;
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{}'",
            device.id
        ))
        .await,
        150,
        "plain count() after OPTIMIZE … FINAL"
    );
}

/// Every count a report can make equals `n`.
async fn assert_counts_once(spine: &Spine, device: &Device, n: u64) {
    let db = spine.server.db();
    let d = device.id;
    let queries = [
        format!("SELECT count() FROM events FINAL WHERE device_id = '{d}'"),
        format!("SELECT uniqExact(seq) FROM events WHERE device_id = '{d}'"),
        format!("SELECT uniqExact(event_id) FROM events WHERE device_id = '{d}'"),
        format!("SELECT max(seq) FROM events WHERE device_id = '{d}'"),
        format!(
            "SELECT toUInt64(sum(c)) FROM (SELECT kind, count() AS c FROM events FINAL WHERE device_id = '{d}' GROUP BY kind)"
        ),
        format!("SELECT count() FROM (SELECT DISTINCT tenant_id, device_id, seq FROM events WHERE device_id = '{d}')"),
    ];
    for sql in &queries {
        assert_eq!(db.count(sql).await, n, "{sql}");
    }
    let items = db
        .count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{d}' AND kind = 'work_item'"
        ))
        .await;
    assert_eq!(items, n / 2, "work items under FINAL");

    let entry = spine
        .server
        .device_entry(&spine.tenant, &d.to_string())
        .await;
    assert_eq!(entry["received"], n, "admin device list: {entry}");
    assert_eq!(entry["max_seq"], n, "admin device list: {entry}");
    assert_eq!(entry["missing"], 0, "admin device list: {entry}");
}
