//! Outbound webhooks (issue 11) against a real HTTP receiver on loopback: registration and its
//! refusals, signed deliveries, an SLA breach announced by the clock alone, and a receiver that
//! is down for a while — across a restart of the server — then answers 500 once, then comes
//! back: the delivery arrives, with the same id and a valid signature on every attempt.

use std::time::Duration;

use backlight_e2e::harness::http_client;
use backlight_e2e::*;
use backlight_server::webhooks::signature::{self, verify, TOLERANCE_SECS};
use serde_json::{json, Value};

use crate::live::api_key;

async fn post_json(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> Posted {
    let response = http
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    Posted::read(response).await
}

async fn get_json(http: &reqwest::Client, url: &str, key: &str) -> Value {
    let response = http
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    Posted::read(response).await.ok_json()
}

/// Waits until the receiver got a request for which `pick` says yes, and returns it.
async fn received(
    receiver: &Receiver,
    timeout: Duration,
    what: &str,
    pick: impl Fn(&Received) -> bool,
) -> Received {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(r) = receiver.received().into_iter().find(|r| pick(r)) {
            return r;
        }
        if tokio::time::Instant::now() >= deadline {
            let got: Vec<String> = receiver
                .received()
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect();
            panic!("no webhook delivery {what} within {timeout:?}; received: {got:#?}");
        }
        tokio::time::sleep(millis(100)).await;
    }
}

/// Checks the signature and the headers of a delivery against its body.
fn assert_signed(r: &Received, secret: &str) -> Value {
    let header = r.header(signature::SIGNATURE_HEADER);
    verify(secret, header, &r.body, now_ms() / 1000, TOLERANCE_SECS)
        .unwrap_or_else(|e| panic!("signature {header:?} does not verify: {e}"));
    assert!(verify(
        "whsec_not-the-secret",
        header,
        &r.body,
        now_ms() / 1000,
        TOLERANCE_SECS
    )
    .is_err());
    let body = r.json();
    assert_eq!(r.header(signature::DELIVERY_HEADER), body["id"], "{body}");
    assert_eq!(r.header(signature::EVENT_HEADER), body["type"], "{body}");
    assert_eq!(r.header("content-type"), "application/json");
    body
}

fn is_event(r: &Received, event: &str, status: Option<&str>) -> bool {
    let body = r.json();
    body["type"] == event && status.is_none_or(|s| body["data"]["item"]["status"] == s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_fire_on_sla_time_and_survive_an_outage_and_a_restart() {
    let mut receiver = Receiver::start().await;
    let ch = ClickHouse::start().await;
    let mut server = Server::start_with(
        ch.fresh_db(),
        ServerOptions {
            extra_args: [
                "--webhook-allow-hosts",
                "127.0.0.1",
                "--webhook-retry-base",
                "1s",
            ]
            .map(String::from)
            .to_vec(),
            ..ServerOptions::default()
        },
    )
    .await;
    let tenant = server.create_tenant("hooks").await;
    let enrollment = server.create_enrollment_key(&tenant).await;
    let device = server.enroll_device(&enrollment).await;
    let admin = api_key(&server, &tenant, "admin").await;
    let http = http_client();
    let hooks = format!("{}/v1/admin/webhooks", server.url());

    // Refused targets and events, each naming the field.
    for (url, events, field) in [
        (
            "http://crm.example.com/hook",
            json!(["item.status_changed"]),
            "url",
        ),
        (
            "https://10.1.2.3/hook",
            json!(["item.status_changed"]),
            "url",
        ),
        (
            "https://169.254.169.254/latest",
            json!(["item.status_changed"]),
            "url",
        ),
        (
            "http://127.0.0.1:1/hook",
            json!(["item.teleported"]),
            "events",
        ),
        ("http://127.0.0.1:1/hook", json!([]), "events"),
    ] {
        post_json(
            &http,
            &hooks,
            &admin,
            &json!({"url": url, "events": events}),
        )
        .await
        .assert_error(422, "invalid_field", Some(field));
    }
    let agent = api_key(&server, &tenant, "cc_agent").await;
    post_json(
        &http,
        &hooks,
        &agent,
        &json!({"url": receiver.url("hook"), "events": ["item.status_changed"]}),
    )
    .await
    .assert_error(403, "wrong_role", None);

    let created = post_json(
        &http,
        &hooks,
        &admin,
        &json!({
            "url": receiver.url("hook"),
            "events": ["item.status_changed", "item.sla_at_risk", "item.sla_breached"],
            "description": "CRM"
        }),
    )
    .await;
    assert_eq!(created.status.as_u16(), 201, "{created}");
    let created: Value = serde_json::from_str(&created.body).unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let webhook_id = created["webhook_id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    let listed = get_json(&http, &hooks, &admin).await;
    assert_eq!(listed["webhooks"][0]["webhook_id"], webhook_id.as_str());
    assert!(listed["webhooks"][0].get("secret").is_none(), "{listed}");
    let cli = server
        .admin(&["webhook", "list", "--tenant", &tenant])
        .await;
    assert!(cli.contains(&webhook_id), "{cli}");

    // An item due in 15 s, started: one status change. Registration alone announces nothing.
    let due = now_ms() + 15_000;
    post_json(
        &http,
        &format!("{}/v1/items", server.url()),
        &admin,
        &json!({"items": [{"item_id": "CLM-7", "queue": "motor", "sla_due_ms": due}]}),
    )
    .await
    .assert_ok();
    server
        .send_batch(
            &device,
            &batch(
                &device,
                vec![work_item(1, "CLM-7", ItemAction::Started, now_ms())],
            ),
        )
        .await
        .assert_ok();
    let started = received(&receiver, secs(20), "for the start", |r| {
        is_event(r, "item.status_changed", Some("in_progress"))
    })
    .await;
    let body = assert_signed(&started, &secret);
    assert_eq!(started.path, "/hook");
    assert_eq!(body["data"]["item_id"], "CLM-7");
    assert_eq!(body["data"]["previous"], Value::Null, "{body}");
    assert_eq!(body["webhook_id"], webhook_id.as_str());
    assert_eq!(body["data"]["item"]["registration"]["queue"], "motor");
    // A CRM gets what a contact-center key reads: no per-person figures (issue 10).
    for field in ["handle_time_ms", "touches", "people_involved"] {
        assert!(body["data"]["item"].get(field).is_none(), "{field}: {body}");
    }
    assert!(
        body["data"]["item"]["handler"].get("person").is_none(),
        "{body}"
    );

    // No event after the start: the clock alone breaches the SLA.
    let breached = received(&receiver, secs(30), "for the SLA breach", |r| {
        is_event(r, "item.sla_breached", None)
    })
    .await;
    let body = assert_signed(&breached, &secret);
    assert!(now_ms() > due, "breach announced before the due time");
    assert_eq!(body["data"]["item"]["sla"]["state"], "breached", "{body}");
    assert_eq!(body["data"]["item"]["status"], "in_progress", "{body}");

    // The receiver goes down; the item is completed; attempts fail and are retried.
    receiver.down().await;
    server
        .send_batch(
            &device,
            &batch(
                &device,
                vec![work_item(2, "CLM-7", ItemAction::Completed, now_ms())],
            ),
        )
        .await
        .assert_ok();
    let deliveries = format!("{hooks}/{webhook_id}/deliveries?state=pending");
    let mut pending = Value::Null;
    wait_until(
        secs(20),
        "a failed attempt is in the delivery log",
        async || {
            pending = get_json(&http, &deliveries, &admin).await;
            pending["deliveries"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["attempts"].as_u64() >= Some(1)))
        },
    )
    .await;
    let failing = pending["deliveries"][0].clone();
    assert_eq!(failing["event"], "item.status_changed", "{failing}");
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{failing}"
    );
    assert!(failing["next_attempt_ms"].as_u64().is_some(), "{failing}");
    let delivery_id = failing["delivery_id"].as_str().unwrap().to_string();

    // The server restarts while the receiver is down; the receiver comes back answering 500
    // once, then 204.
    server.terminate().await;
    receiver.up().await;
    receiver.answer_next(&[500]);
    server.restart().await;
    let completed = received(&receiver, secs(40), "for the completion, twice", |r| {
        r.header(signature::DELIVERY_HEADER) == delivery_id
            && receiver
                .received()
                .iter()
                .filter(|x| x.header(signature::DELIVERY_HEADER) == delivery_id)
                .count()
                >= 2
    })
    .await;
    let attempts: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|r| r.header(signature::DELIVERY_HEADER) == delivery_id)
        .collect();
    for attempt in &attempts {
        let body = assert_signed(attempt, &secret);
        assert_eq!(body["id"], delivery_id.as_str());
        assert_eq!(body["data"]["item"]["status"], "completed", "{body}");
        assert_eq!(body["data"]["previous"]["status"], "in_progress", "{body}");
    }
    assert_eq!(
        attempts[0].body, completed.body,
        "every attempt sends the same body"
    );

    // The log shows it delivered after its failed attempts.
    let mut delivered = Value::Null;
    wait_until(
        secs(15),
        "the delivery is logged as delivered",
        async || {
            delivered = get_json(&http, &format!("{hooks}/{webhook_id}/deliveries"), &admin).await;
            delivered["deliveries"].as_array().is_some_and(|d| {
                d.iter()
                    .any(|d| d["delivery_id"] == delivery_id.as_str() && d["state"] == "delivered")
            })
        },
    )
    .await;
    let log = delivered["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["delivery_id"] == delivery_id.as_str())
        .unwrap()
        .clone();
    assert!(log["attempts"].as_u64() >= Some(3), "{log}");
    assert_eq!(log["last_status"], 204, "{log}");
    // Each change was announced once: one start, one breach, one completion.
    let mut ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header(signature::DELIVERY_HEADER).to_string())
        .collect();
    ids.sort();
    ids.dedup();
    let breaches = receiver
        .received()
        .iter()
        .filter(|r| is_event(r, "item.sla_breached", None))
        .count();
    assert_eq!(breaches, 1, "the breach was announced more than once");
    assert!(
        (3..=4).contains(&ids.len()),
        "expected start, (at risk,) breach and completion: {ids:?}"
    );
}
