//! The Windows desktop from first start to withdrawn consent, asserting what the X11 desktop
//! test asserts: nothing before consent; spans with the executable as the app; rule-derived
//! work items; idle from `GetLastInputInfo`; a private title and dropped titles in no column
//! anywhere; the consent page opened in the default browser; pause, `item` and revoke from the
//! terminal; every event uploaded exactly once. Also what only Windows has: the product name
//! from the version resource, a running screensaver as a locked desktop, the session (local)
//! reported as a device property, and a clean stop on `WM_CLOSE`.

use std::time::Duration;

use backlight_e2e::harness::spine::{
    assert_claim_items, assert_idle_span, assert_nowhere, assert_private_and_titleless,
};
use backlight_e2e::*;
use serde_json::json;

use super::wine::{Window, Wine};
use super::{stop_gracefully, WinAgent};

/// Strings that must never leave the desktop (see the X11 test: each has a character no hex
/// digest has).
const SECRETS: [&str; 3] = ["Secret Bank", "acct-4711", "Jane Doe"];

fn policy(version: u32, notice: &str) -> serde_json::Value {
    json!({
        "version": version,
        "notice": notice,
        "sample_interval_ms": 250,
        "idle_threshold_ms": 10_000,
        "private_titles": ["(?i)secret\\s+bank"],
        "rules": [{
            "name": "claims",
            // Apps are executable names on Windows; rules match them case-insensitively.
            "app": "(?i)^claims-desk\\.exe$",
            "title": "Claim (?P<item>CLM-\\d+)(?: - (?P<step>intake|assess))?",
            "complete_title": "Claim (?P<item>CLM-\\d+) - closed"
        }]
    })
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Focus moves away and back, slowly enough for any capture to be uploaded.
async fn switch_back_and_forth(wine: &Wine, away: &Window, back: &Window) {
    wine.focus(away);
    sleep_ms(1_500).await;
    wine.focus(back);
    sleep_ms(2_000).await;
}

async fn capture_state(wine: &Wine, agent: &WinAgent) -> String {
    agent.status(wine).await["capture"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub async fn desktop(wine: &mut Wine, spine: &Spine) {
    let db = spine.server.db();
    let scratch = wine.scratch("policies");
    std::fs::create_dir_all(&scratch).unwrap();
    let output = spine
        .set_policy(&scratch, &policy(2, "Claims work is recorded."))
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let claim = wine.open("claims-desk.exe", "Claim CLM-1 - intake - Jane Doe");
    let inbox = wine.open_notepad();
    let bank = wine.open("browser.exe", "Secret Bank acct-4711 - accounts");

    // ---- what the backend sees of a window: executable, product name, title.
    wine.focus(&claim);
    let probe = wine
        .run(
            &wine.bin("capture_probe.exe"),
            &["--seconds", "2", "--print"],
        )
        .await;
    let printed = String::from_utf8_lossy(&probe.stdout);
    assert!(
        printed.contains(r#"app: "claims-desk.exe""#)
            && printed.contains(r#"product: Some("Backlight Test Desk")"#)
            && printed.contains(r#"title: "Claim CLM-1 - intake - Jane Doe""#)
            && printed.contains(r#""backend":"windows session 1 (local)""#),
        "{printed}"
    );
    wine.focus(&inbox);
    let probe = wine
        .run(
            &wine.bin("capture_probe.exe"),
            &["--seconds", "1", "--print"],
        )
        .await;
    let printed = String::from_utf8_lossy(&probe.stdout);
    assert!(
        printed.contains(r#"app: "notepad.exe""#) && printed.contains("product: None"),
        "Wine's notepad has no version resource: {printed}"
    );
    // A running screensaver is a locked desktop. (Seen by a fresh process: Wine keeps system
    // parameters per process once read, so a running agent would not see another process
    // change it; on Windows the state is the session's. What the spans make of `locked` is
    // platform-independent and tested in the agent.)
    let screensaver = wine.screensaver();
    wait_until(secs(60), "the backend to see the screensaver", async || {
        let probe = wine
            .run(
                &wine.bin("capture_probe.exe"),
                &["--seconds", "1", "--print"],
            )
            .await;
        String::from_utf8_lossy(&probe.stdout).contains("locked=true")
    })
    .await;
    drop(screensaver);
    wait_until(secs(60), "the screensaver to end", async || {
        let probe = wine
            .run(
                &wine.bin("capture_probe.exe"),
                &["--seconds", "1", "--print"],
            )
            .await;
        String::from_utf8_lossy(&probe.stdout).contains("locked=false")
    })
    .await;

    let agent = WinAgent::new(wine, "desk");
    let enrolled = agent
        .ok(
            wine,
            &[
                "enroll",
                "--server",
                &spine.server.url(),
                "--key",
                &spine.key,
            ],
        )
        .await;
    assert!(enrolled.contains("enrolled"), "{enrolled}");
    let device = agent.status(wine).await["device_id"]
        .as_str()
        .expect("enrolled")
        .to_string();
    let opened = wine.record_browser().await;
    let mut run = agent.spawn_run_opening_browser(wine);

    // ---- consent gate: nothing is captured until the employee agrees.
    wait_until(
        secs(60),
        "the agent to wait for consent to version 2",
        async || {
            capture_state(wine, &agent)
                .await
                .contains("waiting for consent to policy version 2")
        },
    )
    .await;
    // The first start opened the consent page in the default browser: the page that asks for
    // it, with the organisation's notice.
    let url = wait_for(secs(60), "the default browser to be opened", async || {
        let urls = std::fs::read_to_string(&opened).unwrap_or_default();
        urls.lines()
            .find(|u| u.starts_with("http://127.0.0.1:") && u.contains("token="))
            .map(str::to_string)
            .ok_or(urls)
    })
    .await;
    let page = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("the consent page at {url}: {e}"));
    assert!(page.status().is_success(), "{url}: {}", page.status());
    let page = page.text().await.expect("the consent page's body");
    assert!(
        page.contains("Claims work is recorded.") && page.contains("I agree"),
        "{page}"
    );
    wine.focus(&claim);
    wine.touch(&claim);
    wait_until(secs(30), "health reports at the server", async || {
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind = 'health'"
        ))
        .await
            >= 2
    })
    .await;
    let captured = format!(
        "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind IN ('activity_span', 'work_item')"
    );
    assert_eq!(db.count(&captured).await, 0, "desktop data before consent");
    // The session is a property of the device, reported with its health.
    assert!(
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind = 'health' \
             AND session = 'local' AND session_client = ''"
        ))
        .await
            >= 1,
        "health events carry the local session"
    );
    let listed = spine.server.device_entry(&spine.tenant, &device).await;
    assert_eq!(listed["os"], "windows", "{listed}");
    assert_eq!(listed["session"], "local", "{listed}");

    agent.ok(wine, &["consent", "grant", "--yes"]).await;
    wait_until(secs(20), "capture to start", async || {
        capture_state(wine, &agent).await.starts_with("capturing")
    })
    .await;

    // ---- a little work: item with a step change, other windows, a private one, completion.
    wine.touch(&claim);
    sleep_ms(2_000).await;
    wine.retitle(&claim, "Claim CLM-1 - assess - Jane Doe");
    sleep_ms(1_500).await;
    wine.focus(&inbox);
    sleep_ms(1_500).await;
    wine.focus(&bank);
    sleep_ms(1_500).await;
    wine.focus(&claim);
    sleep_ms(1_500).await;
    wine.retitle(&claim, "Claim CLM-1 - closed");
    sleep_ms(1_000).await;
    wine.focus(&inbox);
    wine.touch(&inbox);
    let last_input = now_ms();
    // ---- idle: no input for longer than the 10 s threshold, then input again.
    sleep_ms(13_000).await;
    wine.touch(&inbox);
    sleep_ms(1_000).await;
    wine.focus(&claim);
    wine.touch(&claim);
    sleep_ms(1_000).await;

    assert_claim_items(&db, &device).await;
    let apps = db
        .tsv(&format!(
            "SELECT DISTINCT app FROM events FINAL WHERE device_id = '{device}' \
             AND kind = 'activity_span' AND state = 'active' ORDER BY app"
        ))
        .await;
    let apps: Vec<&str> = apps.iter().map(|r| r[0].as_str()).collect();
    assert!(
        apps.contains(&"claims-desk.exe") && apps.contains(&"notepad.exe"),
        "spans name the executables: {apps:?}"
    );
    let idle = assert_idle_span(&db, &device, last_input).await;
    assert_eq!(idle[2], "notepad.exe", "{idle:?}");
    assert_private_and_titleless(&db, &device, &SECRETS).await;

    // ---- exactly once: everything recorded so far arrives, each event once.
    let recorded = agent.status(wine).await["last_seq"].as_u64().unwrap();
    wait_until(secs(30), "every recorded event at the server", async || {
        db.count(&format!(
            "SELECT uniqExact(seq) FROM events WHERE device_id = '{device}' AND seq <= {recorded}"
        ))
        .await
            == recorded
    })
    .await;
    let counts = db
        .tsv(&format!(
            "SELECT count(), uniqExact(seq), min(seq), max(seq) FROM events FINAL \
             WHERE device_id = '{device}' AND seq <= {recorded}"
        ))
        .await;
    assert_eq!(
        counts[0],
        [
            recorded.to_string(),
            recorded.to_string(),
            "1".to_string(),
            recorded.to_string()
        ],
        "events 1..={recorded} each stored once"
    );

    // ---- pause: nothing captured while paused, capture again after resuming.
    let paused = agent.ok(wine, &["pause", "10m"]).await;
    assert!(paused.contains("paused"), "{paused}");
    wait_until(secs(10), "the pause in the running agent", async || {
        capture_state(wine, &agent).await.contains("paused")
    })
    .await;
    sleep_ms(1_000).await;
    let before_pause = db.count(&captured).await;
    switch_back_and_forth(wine, &inbox, &claim).await;
    assert_eq!(
        db.count(&captured).await,
        before_pause,
        "desktop data while paused"
    );
    agent.ok(wine, &["pause", "--resume"]).await;
    wait_until(secs(10), "capture after the pause", async || {
        capture_state(wine, &agent).await.starts_with("capturing")
    })
    .await;
    wine.focus(&inbox);
    sleep_ms(1_000).await;
    wine.focus(&claim);
    wait_until(secs(30), "new spans after resuming", async || {
        db.count(&captured).await > before_pause
    })
    .await;

    // ---- an explicit report from the terminal.
    let reported = agent
        .ok(wine, &["item", "start", "CLM-9", "--step", "intake"])
        .await;
    assert!(reported.contains("CLM-9"), "{reported}");
    wait_until(secs(30), "the manual report at the server", async || {
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind = 'work_item' \
             AND item_id = 'CLM-9' AND action = 'started' AND source = 'manual'"
        ))
        .await
            == 1
    })
    .await;

    // ---- `show` on Windows: what this computer recorded today.
    let shown = agent.ok(wine, &["show"]).await;
    assert!(shown.contains("claims-desk.exe"), "{shown}");

    // ---- revoke: recorded at the server, and capture stays off.
    let revoked = agent.ok(wine, &["consent", "revoke"]).await;
    assert!(revoked.contains("consent withdrawn"), "{revoked}");
    wait_until(secs(30), "the withdrawal at the server", async || {
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind = 'consent' \
             AND consent_granted = 0 AND policy_version = 2"
        ))
        .await
            == 1
    })
    .await;
    sleep_ms(2_000).await;
    let after_revoke = db.count(&captured).await;
    switch_back_and_forth(wine, &inbox, &claim).await;
    assert_eq!(
        db.count(&captured).await,
        after_revoke,
        "desktop data after revoke"
    );

    stop_gracefully(wine, &mut run, &agent).await;
    assert_nowhere(&db, &SECRETS).await;
}
