//! Issue 10, access hardening: what a holder of one credential (or of none) must not be able to
//! do, against the real server binary, its admin command line and a real ClickHouse. Each test
//! failed before its fix. (Ingest, decoding and connection limits are in `hostile.rs`.)

use std::time::{Duration, Instant};

use backlight_e2e::*;
use futures_util::future::join_all;

use crate::Spine;

/// Enrollment keys expire by default, can be limited to a number of devices (counted in
/// ClickHouse, so it holds across servers), and `/v1/enroll` is rate limited: 429 with
/// `Retry-After`, never a queue that grows.
#[tokio::test]
async fn enrollment_keys_expire_by_default_are_use_limited_and_rate_limited() {
    let spine = Spine::start_with(
        "keys",
        ServerOptions {
            extra_args: vec!["--enroll-rate".into(), "10".into()],
            ..ServerOptions::default()
        },
    )
    .await;
    let server = &spine.server;

    // The key the harness created without --expires-in expires within the default week.
    let list = server
        .admin(&["enrollment-key", "list", "--tenant", &spine.tenant])
        .await;
    assert!(
        !list.contains("never"),
        "a key without --expires-in never expires:\n{list}"
    );

    // At most two devices, even when they enroll at the same time (through two servers).
    let second = Server::start_with(server.db(), ServerOptions::default()).await;
    let key = server
        .admin(&[
            "enrollment-key",
            "create",
            "--tenant",
            &spine.tenant,
            "--max-uses",
            "2",
        ])
        .await;
    let key = key.trim();
    let attempts = (0..6).map(|i| {
        let target = if i % 2 == 0 { server } else { &second };
        target.enroll(key)
    });
    let answers = join_all(attempts).await;
    let enrolled = answers.iter().filter(|a| a.status == 200).count();
    let used_up = answers
        .iter()
        .filter(|a| a.status == 403 && a.body.contains("enrollment_key_unusable"))
        .count();
    assert_eq!((enrolled, used_up), (2, 4), "{answers:#?}");
    let list = server
        .admin(&["enrollment-key", "list", "--tenant", &spine.tenant])
        .await;
    assert!(list.contains("2/2"), "uses shown as 2/2:\n{list}");

    // A burst of attempts with made-up keys is cut off with 429 + Retry-After.
    let fake = format!("ble_{}_{}", "0123456789abcdef", "c".repeat(64));
    let started = Instant::now();
    let answers = join_all((0..60).map(|_| server.enroll(&fake))).await;
    let limited: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        limited.len() >= 20,
        "{} of 60 attempts in {:?} were rate limited",
        limited.len(),
        started.elapsed()
    );
    assert!(
        limited
            .iter()
            .all(|a| a.headers.contains_key("retry-after")),
        "429 without Retry-After"
    );
    // The limit does not stop legitimate enrollment for long.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.enroll(&spine.key).await.assert_ok();
}

/// `/metrics` described every tenant and device with a gap to anyone, and scanned the `events`
/// table for it. Now it needs the metrics token, shows sums by default, and scrapes do not
/// scan: the gaps are computed in the background at most once per interval (5 minutes).
#[tokio::test]
async fn metrics_need_the_token_name_no_device_and_do_not_scan_per_scrape() {
    let spine = Spine::start("metrics").await;
    let server = &spine.server;
    let device = server.enroll_device(&spine.key).await;
    // A gap: seqs 1-3 and 10.
    let mut events = crate::events(1, 3);
    events.extend(crate::events(10, 1));
    server
        .send_batch(&device, &batch(&device, events))
        .await
        .assert_ok();

    server
        .get_metrics(None)
        .await
        .check_error(401, "unauthorized", None)
        .unwrap_or_else(|e| panic!("without a token: {e}"));
    server
        .get_metrics(Some("not-the-metrics-token-at-all"))
        .await
        .check_error(401, "unauthorized", None)
        .unwrap_or_else(|e| panic!("with a wrong token: {e}"));

    let db = server.db();
    let selects = || async {
        db.count("SELECT value FROM system.events WHERE event = 'SelectQuery'")
            .await
    };
    let before = selects().await;
    let text = wait_for(secs(20), "the gap summed in /metrics", async || {
        let text = server.metrics().await;
        if text
            .lines()
            .any(|l| l == "backlight_sequence_missing_total 6")
        {
            Ok(text)
        } else {
            Err(text
                .lines()
                .filter(|l| l.contains("sequence"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    })
    .await;
    for _ in 0..10 {
        server.metrics().await;
    }
    // Our own three counting queries are SELECTs too; the server's two (the sums, nothing else
    // by default) ran once, however many scrapes.
    let scans = selects().await - before;
    assert!(scans <= 4, "{scans} SELECTs for a dozen scrapes");
    assert!(text.contains("backlight_devices_with_gaps 1"), "{text}");
    assert!(
        !text.contains(&device.id.to_string()) && !text.contains(&spine.tenant),
        "no device or tenant is named by default:\n{text}"
    );
}

/// One API key could fill the shared lookup queue (4,096) and ClickHouse's query slots. Each key
/// now has a share of work in flight per server; beyond it 429 with `Retry-After`, and another
/// key is served meanwhile.
#[tokio::test]
async fn one_api_key_cannot_take_the_servers_query_capacity() {
    let spine = Spine::start_with(
        "share",
        ServerOptions {
            extra_args: vec!["--api-key-max-in-flight".into(), "32".into()],
            ..ServerOptions::default()
        },
    )
    .await;
    let server = &spine.server;
    let key = |name: &'static str| {
        let tenant = spine.tenant.clone();
        async move {
            server
                .admin(&[
                    "api-key", "create", "--tenant", &tenant, "--role", "cc_agent", "--name", name,
                ])
                .await
                .trim()
                .to_string()
        }
    };
    let (greedy, other) = (key("greedy").await, key("other").await);
    let http = backlight_e2e::harness::http_client();
    let lookup = |key: String, i: usize| {
        let (http, url) = (http.clone(), format!("{}/v1/items/NOPE-{i}", server.url()));
        async move {
            let r = http.get(url).bearer_auth(key).send().await.expect("lookup");
            (r.status().as_u16(), r.headers().get("retry-after").cloned())
        }
    };
    let burst = join_all((0..400).map(|i| lookup(greedy.clone(), i)));
    let polite = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let answer = lookup(other.clone(), 0).await;
        (answer, started.elapsed())
    };
    let (answers, ((status, _), took)) = tokio::join!(burst, polite);
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        !limited.is_empty(),
        "400 lookups at once from one key, none limited"
    );
    assert!(
        limited.iter().all(|(_, retry)| retry.is_some()),
        "429 without Retry-After"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 404 || *s == 429),
        "{:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 404 && *s != 429)
            .collect::<Vec<_>>()
    );
    assert_eq!(status, 404, "the other key's lookup was answered");
    assert!(
        took < Duration::from_secs(2),
        "the other key waited {took:?}"
    );
}

/// The default set-up (no `--clickhouse-url`) ran ClickHouse with user `default` and no
/// password: any local user could read or drop every tenant's data and the audit log, and the
/// data directory took the default umask. Now a random password lives in the data directory
/// (0600, the directory 0700); the server and `admin` find it there, nobody else has it.
#[tokio::test]
async fn the_embedded_clickhouse_needs_the_password_from_the_private_data_dir() {
    use std::os::unix::fs::PermissionsExt;

    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let port = backlight_e2e::harness::free_port();
    let log = scratch.path().join("server.log");
    let args = [
        "--data-dir".to_string(),
        data.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    let _server = backlight_e2e::harness::process::Child::spawn(
        "backlight-server",
        &backlight_e2e::harness::bins::server(),
        &args,
        &log,
    );
    let http = backlight_e2e::harness::http_client();
    wait_until(
        secs(60),
        "the server with its embedded ClickHouse is ready",
        async || {
            http.get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(
        mode(&data.join("clickhouse")),
        0o700,
        "ClickHouse's directory"
    );
    let password_file = data.join("clickhouse").join("password");
    assert_eq!(mode(&password_file), 0o600, "the password file");
    let password = std::fs::read_to_string(&password_file).unwrap();
    assert!(password.trim().len() >= 32, "a long random password");

    let url = std::fs::read_to_string(data.join("clickhouse").join("endpoint")).unwrap();
    let url = url.trim();
    let anonymous = http
        .post(url)
        .body("SELECT count() FROM system.tables")
        .send()
        .await
        .unwrap();
    assert!(
        !anonymous.status().is_success(),
        "user default without a password was let in: {}",
        anonymous.text().await.unwrap_or_default()
    );
    let with_password = http
        .post(url)
        .header("X-ClickHouse-User", "default")
        .header("X-ClickHouse-Key", password.trim())
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert!(with_password.status().is_success());

    // The admin command line finds the running ClickHouse and its password in the data dir.
    let out = tokio::process::Command::new(backlight_e2e::harness::bins::server())
        .args([
            "--data-dir",
            &data.display().to_string(),
            "admin",
            "tenant",
            "create",
            "acme",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A contact-center key could read per-person performance: with names on, search handed out
/// up to 200 documents a call with the person and `handle_time_ms`, and the timeline named the
/// person behind every action. Through the real server and admin command line.
#[tokio::test]
async fn a_contact_center_key_reads_no_per_person_performance() {
    let spine = Spine::start("ccview").await;
    let server = &spine.server;
    let tenant = spine.tenant.as_str();
    server
        .admin(&["tenant", "set", tenant, "--show-person-names", "true"])
        .await;
    let device = server.enroll_device(&spine.key).await;
    let device_id = device.id.to_string();
    server
        .admin(&[
            "device",
            "assign",
            "--tenant",
            tenant,
            &device_id,
            "--team",
            "claims-a",
            "--person",
            "Ann Example",
        ])
        .await;
    let now = now_ms();
    let mut events = Vec::new();
    for i in 0..5u64 {
        let at = now - 50_000 + i * 5_000;
        let item = format!("PP-{i}");
        events.push(work_item(3 * i + 1, &item, ItemAction::Started, at));
        let mut span = activity_span(3 * i + 2, "claims-desk", at, at + 4_000);
        if let EventBody::ActivitySpan(s) = &mut span.body {
            s.item_id = Some(item.clone());
        }
        events.push(span);
        events.push(work_item(
            3 * i + 3,
            &item,
            ItemAction::Completed,
            at + 4_000,
        ));
    }
    server
        .send_batch(&device, &batch(&device, events))
        .await
        .assert_ok();
    let key = |role: &'static str| {
        let tenant = tenant.to_string();
        async move {
            server
                .admin(&[
                    "api-key", "create", "--tenant", &tenant, "--role", role, "--name", role,
                ])
                .await
                .trim()
                .to_string()
        }
    };
    let (cc, wfm) = (key("cc_agent").await, key("wfm").await);
    let admin = key("admin").await;
    let registrations: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"item_id": format!("PP-{i}"), "customer_ref": "C-1"}))
        .collect();
    let http = backlight_e2e::harness::http_client();
    let registered = http
        .post(format!("{}/v1/items", server.url()))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "items": registrations }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());
    let get = |path: String, key: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).bearer_auth(key).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.text().await.unwrap()
        }
    };
    let search = format!("{}/v1/items?customer_ref=C-1&limit=200", server.url());
    let timeline = format!("{}/v1/items/PP-4/timeline", server.url());
    for (what, text) in [
        ("search", get(search.clone(), cc.clone()).await),
        ("timeline", get(timeline, cc.clone()).await),
        (
            "lookup",
            get(format!("{}/v1/items/PP-4", server.url()), cc.clone()).await,
        ),
    ] {
        for leak in ["Ann Example", "handle_time_ms", "\"person\"", "touches"] {
            assert!(!text.contains(leak), "cc_agent {what} shows {leak}: {text}");
        }
    }
    let full = get(search, wfm).await;
    assert!(
        full.contains("Ann Example") && full.contains("handle_time_ms"),
        "wfm keeps names and handle times: {full}"
    );
}

/// A policy could record more (titles sent, private windows unhidden, new rules) under the
/// version employees consented to, and nobody recorded who changed it. Through the real
/// command line: refused without a new version, saved with one, each save in the audit log.
#[tokio::test]
async fn a_wider_policy_needs_a_new_version_and_every_save_is_audited() {
    let spine = Spine::start("widen").await;
    let server = &spine.server;
    let tenant = spine.tenant.as_str();
    let scratch = tempfile::tempdir().unwrap();
    let save = |policy: serde_json::Value| {
        let path = scratch
            .path()
            .join(format!("{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, policy.to_string()).unwrap();
        async move {
            server
                .try_admin(&[
                    "policy",
                    "set",
                    "--tenant",
                    tenant,
                    &path.display().to_string(),
                ])
                .await
        }
    };
    let v2 = serde_json::json!({"version": 2, "notice": "Claims work is recorded.", "private_titles": ["(?i)bank"]});
    assert!(save(v2.clone()).await.status.success());
    let mut wider = v2.clone();
    wider["title_policy"] = "send".into();
    wider["private_titles"] = serde_json::json!([]);
    let refused = save(wider.clone()).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a wider policy under version 2 was saved"
    );
    assert!(
        stderr.contains("version") && stderr.contains("window titles send"),
        "{stderr}"
    );
    wider["version"] = 3.into();
    assert!(save(wider).await.status.success());

    let db = server.db();
    let audited = db
        .tsv(&format!(
            "SELECT role, action, target FROM audit_log WHERE tenant_id = '{tenant}' \
             AND action = 'policy_save' ORDER BY at_ms"
        ))
        .await;
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(audited.iter().all(|r| r[0] == "admin-cli"), "{audited:?}");
    assert!(
        audited[1][2].contains("version 2 → 3")
            && audited[1][2].contains("title_policy drop → send"),
        "{audited:?}"
    );
    let history = server
        .admin(&["policy", "history", "--tenant", tenant])
        .await;
    assert_eq!(
        history.lines().count(),
        3,
        "a header and two saves:\n{history}"
    );
}
