//! One desktop, from first start to withdrawn consent: nothing before consent; spans, idle
//! and rule-driven work items reach ClickHouse; a private title and dropped titles appear in no
//! column anywhere; policy changes apply without a restart and a bad policy is refused; revoking
//! stops capture.

use std::time::Duration;

use backlight_e2e::harness::spine::{
    assert_claim_items, assert_idle_span, assert_nowhere, assert_private_and_titleless,
};
use backlight_e2e::*;
use serde_json::json;

use super::desk::Desk;
use super::{status, DesktopRun};

/// Strings that must never leave the desktop: in a private window's title, and in titles
/// while the policy drops titles.
// Each secret holds a character no hex digest has: the hashes of device secrets are in these
// tables too, and a bare "4711" once turned up inside one.
const SECRETS: [&str; 3] = ["Secret Bank", "acct-4711", "Jane Doe"];

fn policy(version: u32, notice: &str) -> serde_json::Value {
    json!({
        "version": version,
        "notice": notice,
        "sample_interval_ms": 250,
        "idle_threshold_ms": 10_000,
        // Not the literal text: the policy itself is stored in ClickHouse and grepped too.
        "private_titles": ["(?i)secret\\s+bank"],
        "rules": [{
            "name": "claims",
            "title": "Claim (?P<item>CLM-\\d+)(?: - (?P<step>intake|assess))?",
            "complete_title": "Claim (?P<item>CLM-\\d+) - closed"
        }]
    })
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_capture_end_to_end() {
    let spine = Spine::start("desk").await;
    let db = spine.server.db();
    let scratch = tempfile::tempdir().unwrap();
    let output = spine
        .set_policy(scratch.path(), &policy(2, "Claims work is recorded."))
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut desk = Desk::start();
    let claim = desk.open("claims-desk", "Claim CLM-1 - intake - Jane Doe");
    let inbox = desk.open("mail", "Inbox");
    let bank = desk.open("browser", "Secret Bank acct-4711 - accounts");

    let agent = Agent::new();
    agent.enroll(&spine.server.url(), &spine.key).await;
    let device = agent.status().await.device_id.expect("enrolled");
    let run = DesktopRun::spawn(&agent, desk.display());

    // ---- consent gate: the policy arrives, nothing is captured until the employee agrees.
    wait_until(
        secs(30),
        "the agent to wait for consent to version 2",
        async || {
            status(&agent).await["capture"]
                .as_str()
                .is_some_and(|c| c.contains("waiting for consent to policy version 2"))
        },
    )
    .await;
    desk.focus(&claim);
    desk.touch();
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

    let granted = agent.command(&["consent", "grant", "--yes"]).await;
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    wait_until(secs(10), "capture to start", async || {
        status(&agent).await["capture"]
            .as_str()
            .is_some_and(|c| c.starts_with("capturing"))
    })
    .await;

    // ---- a little work: item with a step change, other windows, a private one, completion.
    desk.touch();
    sleep_ms(2_000).await;
    desk.retitle(&claim, "Claim CLM-1 - assess - Jane Doe");
    sleep_ms(1_500).await;
    desk.focus(&inbox);
    sleep_ms(1_500).await;
    desk.focus(&bank);
    sleep_ms(1_500).await;
    desk.focus(&claim);
    sleep_ms(1_500).await;
    desk.retitle(&claim, "Claim CLM-1 - closed");
    sleep_ms(1_000).await;
    desk.focus(&inbox);
    desk.touch();
    let last_input = now_ms();
    // ---- idle: no input for longer than the 10 s threshold, then input again.
    sleep_ms(13_000).await;
    desk.touch();
    sleep_ms(1_000).await;
    desk.focus(&claim);
    sleep_ms(1_000).await;

    // Titles set by xmessage are Latin-1 (WM_NAME): ASCII separators keep the regexes simple.
    assert_claim_items(&db, &device.to_string()).await;
    assert_idle_span(&db, &device.to_string(), last_input).await;
    assert_private_and_titleless(&db, &device.to_string(), &SECRETS).await;

    // ---- policy: a bad one is refused by the server with its reason; a new one applies live.
    let bad =
        json!({"version": 3, "notice": "x", "rules": [{"name": "r", "title": "Claim (unclosed"}]});
    let refused = spine.set_policy(scratch.path(), &bad).await;
    assert!(!refused.status.success(), "a bad policy was saved");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("rules[0].title") && stderr.contains("invalid regex"),
        "{stderr}"
    );

    let saved = spine
        .set_policy(
            scratch.path(),
            &policy(3, "Claims work is recorded. New: teams."),
        )
        .await;
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    wait_until(
        secs(15),
        "policy version 3 in the running agent",
        async || {
            let s = status(&agent).await;
            s["policy_version"] == 3
                && s["capture"]
                    .as_str()
                    .is_some_and(|c| c.contains("waiting for consent to policy version 3"))
        },
    )
    .await;
    // The new notice stops capture until answered.
    let before = db.count(&captured).await;
    desk.focus(&inbox);
    sleep_ms(1_500).await;
    desk.focus(&claim);
    sleep_ms(1_500).await;
    assert!(
        db.count(&captured).await <= before + 2,
        "capture continued under an unanswered notice"
    );

    // ---- revoke: recorded at the server, and capture stays off.
    let granted = agent.command(&["consent", "grant", "--yes"]).await;
    assert!(granted.status.success());
    wait_until(secs(10), "capture under version 3", async || {
        status(&agent).await["capture"]
            .as_str()
            .is_some_and(|c| c.starts_with("capturing"))
    })
    .await;
    let revoked = agent.command(&["consent", "revoke"]).await;
    assert!(revoked.status.success());
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("consent withdrawn"));
    wait_until(secs(30), "the withdrawal at the server", async || {
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind = 'consent' \
             AND consent_granted = 0 AND policy_version = 3"
        ))
        .await
            == 1
    })
    .await;
    sleep_ms(2_000).await;
    let after_revoke = db.count(&captured).await;
    desk.focus(&inbox);
    sleep_ms(1_500).await;
    desk.focus(&claim);
    sleep_ms(2_000).await;
    assert_eq!(
        db.count(&captured).await,
        after_revoke,
        "desktop data after revoke"
    );

    run.terminate().await;
    assert_nowhere(&db, &SECRETS).await;
}
