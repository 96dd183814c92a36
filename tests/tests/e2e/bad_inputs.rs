//! Bad inputs get the right 4xx with a JSON `ErrorBody` naming the field to blame, and nothing
//! of them is stored.

use backlight_e2e::*;
use serde_json::{json, Value};

use crate::{events, Spine};

/// One bad request and the answer it must get.
struct Case {
    name: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

/// A valid batch of `device` as JSON, for cases to break.
fn valid(device: &Device, n: u64) -> Value {
    serde_json::to_value(batch(device, events(1, n))).unwrap()
}

fn zjson(value: &Value) -> Vec<u8> {
    zstd(&serde_json::to_vec(value).unwrap())
}

fn cases(device: &Device) -> Vec<Case> {
    let years = 3 * 365 * 86_400_000u64;
    let case = |name, body: Vec<u8>, status, code, field| Case {
        name,
        encoding: Some("zstd"),
        body,
        status,
        code,
        field,
    };
    let mut out = Vec::new();

    out.push(case(
        "not JSON at all",
        zstd(b"this is not json"),
        400,
        "bad_request",
        None,
    ));
    let good = serde_json::to_vec(&valid(device, 4)).unwrap();
    out.push(case(
        "JSON cut off half-way",
        zstd(&good[..good.len() / 2]),
        400,
        "bad_request",
        None,
    ));

    let mut b = valid(device, 2);
    b["events"][0]["seq"] = json!("one");
    out.push(case(
        "seq is a string",
        zjson(&b),
        422,
        "invalid_field",
        Some("events[0].seq"),
    ));

    let mut b = valid(device, 2);
    b["events"][1]["at_ms"] = json!("yesterday");
    out.push(case(
        "at_ms is a string",
        zjson(&b),
        422,
        "invalid_field",
        Some("events[1].at_ms"),
    ));

    let mut b = valid(device, 2);
    b["events"][0]["app"] = json!("x".repeat(1 << 20));
    out.push(case(
        "1 MB app name",
        zjson(&b),
        422,
        "invalid_field",
        Some("events[0].app"),
    ));

    let mut b = valid(device, 2);
    let start = b["events"][0]["start_ms"].as_u64().unwrap() - years;
    b["events"][0]["start_ms"] = json!(start);
    b["events"][0]["end_ms"] = json!(start + 1);
    out.push(case(
        "span years in the past",
        zjson(&b),
        422,
        "invalid_field",
        Some("events[0].start_ms"),
    ));

    let mut b = valid(device, 2);
    b["events"][1]["at_ms"] = json!(now_ms() + years);
    out.push(case(
        "item years in the future",
        zjson(&b),
        422,
        "invalid_field",
        Some("events[1].at_ms"),
    ));

    let mut b = valid(device, 3);
    b["events"][2]["seq"] = json!(1);
    out.push(case(
        "seq going backwards",
        zjson(&b),
        422,
        "invalid_field",
        Some("events[2].seq"),
    ));

    let mut b = valid(device, 1);
    b["protocol"] = json!(99);
    out.push(case(
        "unknown protocol version",
        zjson(&b),
        422,
        "invalid_field",
        Some("protocol"),
    ));

    let mut b = valid(device, 1);
    b["events"] = json!([]);
    out.push(case(
        "no events",
        zjson(&b),
        422,
        "invalid_field",
        Some("events"),
    ));

    out.push(Case {
        encoding: Some("br"),
        ..case(
            "Content-Encoding br",
            zjson(&valid(device, 2)),
            415,
            "unsupported_encoding",
            None,
        )
    });
    out.push(case(
        "declared zstd, sent plain JSON",
        serde_json::to_vec(&valid(device, 2)).unwrap(),
        400,
        "bad_request",
        None,
    ));
    out.push(Case {
        encoding: Some("gzip"),
        ..case(
            "declared gzip, sent zstd",
            zjson(&valid(device, 2)),
            400,
            "bad_request",
            None,
        )
    });

    // Incompressible bytes just over the compressed limit.
    let mut noise = vec![0u8; limits::MAX_COMPRESSED_BODY_BYTES + 1024];
    rand::fill(&mut noise[..]);
    out.push(case(
        "body over 4 MiB as sent",
        noise,
        413,
        "too_large",
        None,
    ));

    // A valid batch followed by 17 MiB of spaces: tiny compressed, too big decompressed.
    let mut bomb = serde_json::to_vec(&valid(device, 1)).unwrap();
    bomb.resize(
        bomb.len() + limits::MAX_DECOMPRESSED_BODY_BYTES + (1 << 20),
        b' ',
    );
    let bomb = zstd(&bomb);
    assert!(
        bomb.len() < 64 * 1024,
        "the bomb should be small: {} bytes",
        bomb.len()
    );
    out.push(case("zstd bomb past 16 MiB", bomb, 413, "too_large", None));
    out
}

/// Posts a case's body. A server that refuses a body before reading all of it (413 on the
/// declared length) closes the connection after answering; while the client is still sending,
/// the kernel may then reset the connection before the client reads the answer. That is TCP,
/// not the server's choice of answer, so a transport error is retried (refused bodies store
/// nothing, so retrying is harmless); a wrong answer never is.
async fn post_refused(server: &Server, device: &Device, case: &Case) -> Result<Posted, String> {
    let mut errors = Vec::new();
    for _ in 0..5 {
        match server
            .try_post_ingest(Some(&device.credential), case.encoding, case.body.clone())
            .await
        {
            Ok(answer) => return Ok(answer),
            Err(e) => {
                println!("{}: transport error, retrying: {e}", case.name);
                errors.push(e.to_string());
            }
        }
    }
    Err(errors.join("; "))
}

#[tokio::test]
async fn bad_batches_get_the_right_4xx_naming_the_field_and_store_nothing() {
    let spine = Spine::start("bad-inputs").await;
    let server = &spine.server;
    let device = server.enroll_device(&spine.key).await;

    let mut failures = Vec::new();
    for case in cases(&device) {
        match post_refused(server, &device, &case).await {
            Ok(answer) => match answer.check_error(case.status, case.code, case.field) {
                Ok(body) => println!("{}: {} {body:?}", case.name, answer.status),
                Err(e) => failures.push(format!("{}: {e}", case.name)),
            },
            Err(e) => failures.push(format!("{}: no HTTP answer: {e}", case.name)),
        }
    }

    // The pipeline works (so "nothing stored" below means something): a good batch from a second
    // device is stored.
    let witness = server.enroll_device(&spine.key).await;
    server
        .send_batch(&witness, &batch(&witness, events(1, 3)))
        .await
        .assert_ok();
    let db = server.db();
    assert_eq!(
        db.events_final(witness.id).await,
        3,
        "the witness device's good batch"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{}'",
            device.id
        ))
        .await,
        0,
        "rows stored from refused batches"
    );

    assert!(
        failures.is_empty(),
        "{} case(s) answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn unknown_and_revoked_credentials_and_foreign_devices_are_refused() {
    let spine = Spine::start("auth").await;
    let server = &spine.server;
    let device = server.enroll_device(&spine.key).await;
    let good = || zjson(&valid(&device, 2));

    // No credential, a malformed one, a well-formed one nobody has, this device's id with a
    // wrong secret: all 401.
    let forged_id = format!("bld_{}_{}", uuid::Uuid::new_v4().simple(), "a".repeat(64));
    let wrong_secret = format!("bld_{}_{}", device.id.simple(), "b".repeat(64));
    for (what, credential) in [
        ("no credential", None),
        ("malformed credential", Some("bld_nonsense")),
        ("unknown device", Some(forged_id.as_str())),
        ("wrong secret", Some(wrong_secret.as_str())),
        ("an enrollment key as credential", Some(spine.key.as_str())),
    ] {
        let answer = server.post_ingest(credential, Some("zstd"), good()).await;
        answer
            .check_error(401, "unauthorized", None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    // A valid credential of another tenant's device, with this device's id in the batch.
    let other_tenant = server.create_tenant("other").await;
    let other_key = server.create_enrollment_key(&other_tenant).await;
    let intruder = server.enroll_device(&other_key).await;
    let answer = server
        .post_ingest(Some(&intruder.credential), Some("zstd"), good())
        .await;
    answer.assert_error(403, "device_mismatch", Some("device_id"));

    // Revoked: refused from the next request on (the test server caches nothing).
    server
        .send_batch(&device, &batch(&device, events(1, 1)))
        .await
        .assert_ok();
    server
        .admin(&[
            "device",
            "revoke",
            "--tenant",
            &spine.tenant,
            &device.id.to_string(),
        ])
        .await;
    let answer = server
        .send_batch(&device, &batch(&device, events(2, 5)))
        .await;
    answer.assert_error(403, "device_revoked", None);
    let entry = server
        .device_entry(&spine.tenant, &device.id.to_string())
        .await;
    assert_eq!(entry["revoked"], true, "{entry}");

    let db = server.db();
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{}'",
            device.id
        ))
        .await,
        1,
        "only the batch sent before the revocation may be stored"
    );
    assert_eq!(
        db.events_final(intruder.id).await,
        0,
        "the intruder stored nothing"
    );
    assert_eq!(db.events_raw_total().await, 1, "rows in the whole database");
}
