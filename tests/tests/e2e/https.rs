//! HTTPS: the real server with `--tls-cert`/`--tls-key`, using a certificate made for the test
//! (self-signed for 127.0.0.1 and localhost), and the start-up errors of a certificate or key
//! that cannot be used.

use std::path::Path;
use std::time::Duration;

use backlight_e2e::harness::server::serve_until_exit;
use backlight_e2e::*;

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files in `dir`.
fn self_signed(dir: &Path) -> TlsFiles {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generating a self-signed certificate");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, generated.cert.pem()).expect("writing cert.pem");
    std::fs::write(&files.key, generated.signing_key.serialize_pem()).expect("writing key.pem");
    files
}

#[tokio::test]
async fn serves_the_api_over_https_and_no_plain_http_on_that_port() {
    let certs = tempfile::tempdir().expect("temp dir");
    let tls = self_signed(certs.path());
    let ch = ClickHouse::start().await;
    // Ready means `GET /readyz` answered 200 over HTTPS, verified against the certificate.
    let server = Server::start_with(
        ch.fresh_db(),
        ServerOptions {
            tls: Some(tls.clone()),
            ..ServerOptions::default()
        },
    )
    .await;
    let port = server.port();
    assert_eq!(server.url(), format!("https://127.0.0.1:{port}"));
    let trusting = tls.client();
    for url in [
        format!("https://127.0.0.1:{port}/healthz"),
        format!("https://localhost:{port}/healthz"),
    ] {
        let response = trusting
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        assert_eq!(response.status(), 200, "GET {url}");
    }

    // A client that does not trust the test's certificate refuses the connection: the server
    // really presents that certificate, and verification is on.
    let refused = backlight_e2e::harness::http_client()
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "an untrusted certificate was accepted: {refused:?}"
    );

    // Plain HTTP to the TLS port gets no normal answer (an error, or at least not a 200).
    match backlight_e2e::harness::http_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
    {
        Ok(response) => assert_ne!(
            response.status(),
            200,
            "plain HTTP on the HTTPS port was answered normally"
        ),
        Err(e) => println!("plain HTTP on the HTTPS port: {e}"),
    }

    // The API works over HTTPS, and the bad clients above did not disturb the server:
    // enroll a device and ingest a batch; 200 means ClickHouse has the row.
    let tenant = server.create_tenant("tls").await;
    let key = server.create_enrollment_key(&tenant).await;
    let device = server.enroll_device(&key).await;
    let sent = batch(
        &device,
        vec![work_item(1, "CLM-TLS", ItemAction::Started, now_ms())],
    );
    server.send_batch(&device, &sent).await.assert_ok();
    assert_eq!(server.db().events_final(device.id).await, 1);
}

/// A certificate or key that cannot be used stops the server at once (before it starts
/// ClickHouse: none is running here), non-zero, with a message naming the file.
#[tokio::test]
async fn refuses_to_start_with_a_missing_certificate_or_a_key_that_is_not_one() {
    let certs = tempfile::tempdir().expect("temp dir");
    let tls = self_signed(certs.path());
    let missing_cert = certs.path().join("missing-cert.pem");
    let not_a_key = certs.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "this is not a PEM private key\n").expect("writing not-a-key.pem");

    let cases = [
        (
            &missing_cert,
            &tls.key,
            &missing_cert,
            "cannot read TLS certificate file",
        ),
        (&tls.cert, &not_a_key, &not_a_key, "no PEM private key"),
        // The certificate where the key belongs: PEM, but not a key.
        (&tls.cert, &tls.cert, &tls.cert, "no PEM private key"),
    ];
    for (cert, key, named, reason) in cases {
        let args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            certs.path().join("data").display().to_string(),
            // Nothing listens there; the certificate must be refused before it matters.
            "--clickhouse-url".into(),
            "http://127.0.0.1:9".into(),
            "--clickhouse-wait".into(),
            "2s".into(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        let output = serve_until_exit(&args, Duration::from_secs(20)).await;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "the server started with cert {} and key {}: {printed}",
            cert.display(),
            key.display()
        );
        assert!(
            printed.contains(&named.display().to_string()) && printed.contains(reason),
            "the message should name {} ({reason}), it was: {printed}",
            named.display()
        );
    }
}
