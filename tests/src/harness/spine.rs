//! The server side of an end-to-end test: a ClickHouse, a server on its own database, one
//! tenant and an enrollment key for it; and what the desktop tests (X11 and Windows) assert
//! about what reached it from a scripted day at the desk.

use std::path::Path;

use super::clickhouse::{ClickHouse, Db};
use super::server::{Server, ServerOptions};
use super::wait::{secs, wait_for};

pub struct Spine {
    // Fields drop in order: the server goes before the ClickHouse it writes to.
    pub server: Server,
    pub ch: ClickHouse,
    pub tenant: String,
    pub key: String,
}

impl Spine {
    pub async fn start(tenant_prefix: &str) -> Spine {
        Spine::start_with(tenant_prefix, ServerOptions::default()).await
    }

    pub async fn start_with(tenant_prefix: &str, options: ServerOptions) -> Spine {
        let ch = ClickHouse::start().await;
        let server = Server::start_with(ch.fresh_db(), options).await;
        let tenant = server.create_tenant(tenant_prefix).await;
        let key = server.create_enrollment_key(&tenant).await;
        Spine {
            server,
            ch,
            tenant,
            key,
        }
    }

    /// `admin policy set --tenant T FILE` with `policy` written to `dir`; the raw output.
    pub async fn set_policy(&self, dir: &Path, policy: &serde_json::Value) -> std::process::Output {
        let file = dir.join(format!("policy-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, policy.to_string()).expect("writing the policy file");
        let file = file.display().to_string();
        self.server
            .try_admin(&["policy", "set", "--tenant", &self.tenant, &file])
            .await
    }
}

/// Greps every String column of every table in `db` for each of `secrets`: strings that must
/// never leave the desktop (a private window's title, titles while the policy drops them).
pub async fn assert_nowhere(db: &Db, secrets: &[&str]) {
    let columns = db
        .tsv(&format!(
            "SELECT table, name FROM system.columns WHERE database = '{}' AND type LIKE '%String%'",
            db.name()
        ))
        .await;
    assert!(
        columns.iter().any(|c| c[0] == "events" && c[1] == "title"),
        "{columns:?}"
    );
    for column in &columns {
        for secret in secrets {
            let hits = db
                .count(&format!(
                    "SELECT count() FROM `{}` WHERE positionCaseInsensitive(toString(`{}`), '{secret}') > 0",
                    column[0], column[1]
                ))
                .await;
            assert_eq!(hits, 0, "{secret:?} found in {}.{}", column[0], column[1]);
        }
    }
}

/// The work items of claim CLM-1 from the desktop tests' script (intake, retitled to assess,
/// away and back, closed): all derived by the rule, in this order.
pub async fn assert_claim_items(db: &Db, device: &str) {
    let actions = format!(
        "SELECT action, step, source FROM events FINAL WHERE device_id = '{device}' AND kind = 'work_item' \
         AND item_id = 'CLM-1' ORDER BY seq"
    );
    let rows = wait_for(secs(30), "the work items in ClickHouse", async || {
        let rows = db.tsv(&actions).await;
        if rows.iter().filter(|r| r[0] == "completed").count() >= 1 && rows.len() >= 5 {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await;
    let summary: Vec<String> = rows.iter().map(|r| format!("{} {}", r[0], r[1])).collect();
    assert!(rows.iter().all(|r| r[2] == "rule"), "{rows:?}");
    assert_eq!(
        &summary[..5],
        [
            "started intake",
            "resumed assess",
            "paused assess",
            "resumed assess",
            "completed assess"
        ],
        "{summary:?}"
    );
    let on_item = db
        .count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind = 'activity_span' \
             AND state = 'active' AND item_id = 'CLM-1' AND step IN ('intake', 'assess')"
        ))
        .await;
    assert!(
        on_item >= 2,
        "spans on the item with their steps: {on_item}"
    );
}

/// The idle span after the script's last input at `last_input` (ms) and more than 10 s without
/// input: it starts at that input, not at the threshold, and is no work on the item. Returns
/// its row (time_ms, end_ms, app, item_id).
pub async fn assert_idle_span(db: &Db, device: &str, last_input: u64) -> Vec<String> {
    let idle = wait_for(secs(30), "the idle span", async || {
        let rows = db
            .tsv(&format!(
                "SELECT time_ms, end_ms, app, item_id FROM events FINAL WHERE device_id = '{device}' \
                 AND kind = 'activity_span' AND state = 'idle'"
            ))
            .await;
        rows.into_iter().next().ok_or_else(|| "none yet".to_string())
    })
    .await;
    let start: u64 = idle[0].parse().expect("time_ms");
    let end: u64 = idle[1].parse().expect("end_ms");
    assert!(
        start.abs_diff(last_input) < 2_500,
        "the idle stretch starts at the last input ({last_input}), not at the threshold: {idle:?}"
    );
    assert!(end - start >= 10_000, "{idle:?}");
    assert_eq!(idle[3], "", "idle time is not work on the item: {idle:?}");
    idle
}

/// The private window's time is recorded as app `private` with no item and no title, no
/// title left the desktop (the default policy drops them), and none of `secrets` is anywhere.
pub async fn assert_private_and_titleless(db: &Db, device: &str, secrets: &[&str]) {
    let private = db
        .tsv(&format!(
            "SELECT item_id, ifNull(title, '') FROM events FINAL WHERE device_id = '{device}' \
             AND kind = 'activity_span' AND app = 'private'"
        ))
        .await;
    assert!(
        !private.is_empty(),
        "the private window's time is recorded as `private`"
    );
    assert!(
        private.iter().all(|r| r[0].is_empty() && r[1].is_empty()),
        "{private:?}"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND title IS NOT NULL"
        ))
        .await,
        0,
        "titles are dropped by default"
    );
    assert_nowhere(db, secrets).await;
}
