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
    // 200 at once: below the per-address connection cap (256), which would refuse first.
    let burst = join_all((0..200).map(|i| lookup(greedy.clone(), i)));
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
        "200 lookups at once from one key, none limited"
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
    let anonymous = Db::new(url.to_string(), "system".into())
        .try_query("SELECT count() FROM system.tables")
        .await;
    assert!(
        anonymous.is_err(),
        "user default without a password was let in: {anonymous:?}"
    );
    Db::new(url.to_string(), "system".into())
        .with_password(password.trim())
        .try_query("SELECT 1")
        .await
        .unwrap_or_else(|e| panic!("the password from the data directory: {e}"));

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
/// up to 200 documents a call with the person and `handle_time_ms`, the timeline named the
/// person behind every action, and the live stream sent the same document as the lookup.
/// Through the real server and admin command line.
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
    // The live stream builds its documents apart from the lookup: the same line holds there.
    let mut stream = SseStream::open(
        &http,
        &format!("{}/v1/items/PP-4/events", server.url()),
        &cc,
    )
    .await
    .unwrap_or_else(|refused| panic!("the stream was refused: {refused:?}"));
    let streamed = stream.next_status(secs(10)).await.to_string();
    drop(stream);
    for (what, text) in [
        ("search", get(search.clone(), cc.clone()).await),
        ("timeline", get(timeline, cc.clone()).await),
        (
            "lookup",
            get(format!("{}/v1/items/PP-4", server.url()), cc.clone()).await,
        ),
        ("stream", streamed),
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

// ---- The desktop: what the agent must refuse, even from its own server ----------------------

/// An address of this machine that is not loopback, to name "another computer" without one:
/// the address the kernel would send from (a UDP `connect` sends nothing). A documentation
/// address when the machine has no route at all: nothing answers there, which is fine, since
/// the agent must refuse before connecting.
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("binding a UDP socket");
    socket
        .connect("192.0.2.1:9")
        .ok()
        .and_then(|()| socket.local_addr().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .unwrap_or(std::net::IpAddr::from([192, 0, 2, 1]))
}

/// The agent sent the device credential and the record of someone's work over plain
/// `http://` to any server. Now plain HTTP is refused for anything but this computer, before a
/// connection is made; `--insecure-http` is the explicit opt-in for a lab.
#[tokio::test]
async fn the_agent_sends_nothing_over_plain_http_to_another_computer() {
    // A listener on every address of this machine that counts who connects.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    let accept = tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let agent = Agent::new();
    let url = format!("http://{}:{port}", non_loopback_address());
    let key = format!("ble_{}_{}", "0123456789abcdef", "c".repeat(64));
    let output = agent.try_enroll(&url, &key).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "enrolled over {url}: {stderr}");
    assert!(
        stderr.contains("https://") && stderr.contains("--insecure-http"),
        "the refusal names the fix: {stderr}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the agent connected to {url}"
    );
    assert!(
        !agent.data_dir().join("credentials.json").exists(),
        "nothing was saved"
    );
    accept.abort();
}

/// The agent used `credentials.json` whatever its permissions: a file others could read may
/// have leaked, one others could write may carry a planted server URL. Now `run` refuses it
/// with what to do, and uploads nothing.
#[tokio::test]
async fn the_agent_refuses_a_credential_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;

    let spine = Spine::start("private").await;
    let agent = Agent::new();
    agent.enroll(&spine.server.url(), &spine.key).await;
    let file = agent.data_dir().join("credentials.json");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let output = agent
        .command(&[
            "run",
            "--source",
            "none",
            "--local-api",
            "off",
            "--no-browser",
            "--health-interval",
            "1s",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "ran with a 0644 credential file");
    assert!(
        stderr.contains("credentials.json") && stderr.contains("chmod 600"),
        "the refusal names the file and the fix: {stderr}"
    );
    let uploaded = spine
        .server
        .db()
        .count(&format!(
            "SELECT count() FROM events WHERE tenant_id = '{}'",
            spine.tenant
        ))
        .await;
    assert_eq!(uploaded, 0, "events uploaded with a refused credential");
}

/// Writes a policy row the way a compromised server or a hand-edited database would: without
/// the server's validation.
async fn plant_policy(db: &Db, tenant: &str, policy: &serde_json::Value) {
    let json = policy.to_string();
    let literal = json.replace('\\', "\\\\").replace('\'', "\\'");
    let version = policy["version"].as_u64().unwrap();
    db.query(&format!(
        "INSERT INTO policies (tenant_id, version, policy_json, etag, saved_by, updated_ms) \
         VALUES ('{tenant}', {version}, '{literal}', '\"planted-{}\"', 'planted', {})",
        uuid::Uuid::new_v4().simple(),
        now_ms()
    ))
    .await;
}

/// What `status --json` says about policies.
async fn policy_status(agent: &Agent) -> (u64, String) {
    let output = agent.command(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            backlight_e2e::harness::agent::describe(&output)
        )
    });
    (
        status["policy_version"].as_u64().unwrap_or(0),
        status["policy_error"].as_str().unwrap_or("").to_string(),
    )
}

/// The agent applied whatever policy its server sent: one that records more under the
/// version employees consented to (titles sent, private windows unhidden), and a notice with
/// terminal escape sequences, which `consent show` printed raw (clear the screen, hide text).
/// Planted past the server's own checks, as a compromised server or database would; the agent
/// refuses both, keeps the policy in force and says why.
#[tokio::test]
async fn the_agent_refuses_a_tampered_policy_from_its_server() {
    let spine = Spine::start("tamper").await;
    let mut agent = Agent::new();
    agent.enroll(&spine.server.url(), &spine.key).await;
    agent.spawn_run(&[
        "--source",
        "none",
        "--local-api",
        "off",
        "--no-browser",
        "--policy-interval",
        "1s",
    ]);
    let db = spine.server.db();

    // Version 1 is the default the agent ships with; the same version sending titles.
    plant_policy(
        &db,
        &spine.tenant,
        &serde_json::json!({"version": 1, "notice": "Work is recorded.", "title_policy": "send"}),
    )
    .await;
    let (version, error) = wait_for(secs(20), "the widened policy refused", async || {
        let (version, error) = policy_status(&agent).await;
        if error.is_empty() {
            Err(format!("version {version}, no policy error"))
        } else {
            Ok((version, error))
        }
    })
    .await;
    assert_eq!(version, 1, "{error}");
    assert!(
        error.contains("version") && error.contains("title"),
        "the refusal says what widened: {error}"
    );

    // A new version whose notice would clear the terminal and hide text.
    plant_policy(
        &db,
        &spine.tenant,
        &serde_json::json!({"version": 2, "notice": "\u{1b}[2J\u{1b}[8mhidden\u{1b}[0mWork is recorded."}),
    )
    .await;
    wait_for(secs(20), "the notice with escapes refused", async || {
        let (version, error) = policy_status(&agent).await;
        if error.contains("notice") {
            Ok(())
        } else {
            Err(format!("version {version}, policy error {error:?}"))
        }
    })
    .await;
    let shown = agent.command(&["consent", "show"]).await;
    assert!(
        shown.status.success(),
        "{}",
        backlight_e2e::harness::agent::describe(&shown)
    );
    assert!(
        !shown.stdout.contains(&0x1b) && !shown.stderr.contains(&0x1b),
        "consent show printed an escape sequence: {}",
        backlight_e2e::harness::agent::describe(&shown)
    );
    let (version, _) = policy_status(&agent).await;
    assert_eq!(version, 1, "the policy in force stays");
    agent.terminate(secs(20)).await;
}

/// A team or queue name reaches report CSVs; one starting with a tab or CR followed by `=` ran
/// as a formula in some spreadsheets (the guard knew only `=`, `+`, `-`, `@`). Through the
/// admin command line and the real report endpoint.
#[tokio::test]
async fn a_team_name_cannot_become_a_spreadsheet_formula() {
    let spine = Spine::start("csv").await;
    let server = &spine.server;
    let tenant = spine.tenant.as_str();
    let device = server.enroll_device(&spine.key).await;
    let team = "\t=HYPERLINK(\"http://evil.example\";\"open\")";
    server
        .admin(&[
            "device",
            "assign",
            "--tenant",
            tenant,
            &device.id.to_string(),
            "--team",
            team,
        ])
        .await;
    server
        .send_batch(&device, &batch(&device, crate::events(1, 6)))
        .await
        .assert_ok();
    let wfm = server
        .admin(&[
            "api-key", "create", "--tenant", tenant, "--role", "wfm", "--name", "wfm",
        ])
        .await;
    // Reports run on 15-minute boundaries: the hour before the current quarter to its end.
    const QUARTER: u64 = 15 * 60_000;
    let quarter = now_ms() / QUARTER * QUARTER;
    let url = format!(
        "{}/v1/reports/performance?from={}&to={}&tz=UTC&group_by=team&format=csv",
        server.url(),
        quarter - 4 * QUARTER,
        quarter + QUARTER
    );
    let http = backlight_e2e::harness::http_client();
    let csv = wait_for(secs(20), "the team's row in the CSV", async || {
        let r = http
            .get(&url)
            .bearer_auth(wfm.trim())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let text = r.text().await.map_err(|e| e.to_string())?;
        if text.contains("HYPERLINK") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    let row = csv.split("\r\n").find(|l| l.contains("HYPERLINK")).unwrap();
    assert!(
        row.starts_with("\"'\t=HYPERLINK("),
        "the team cell starts with ' so it stays text: {row:?}"
    );
}
