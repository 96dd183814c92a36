//! HTTPS: the certificate chain and private key given with `--tls-cert` / `--tls-key`.
//!
//! Both files are read and checked before anything else starts (the embedded ClickHouse
//! included), so a mistyped path or a swapped file stops the server at once, and every failure
//! names the file at fault.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS configuration the server listens with: `cert` is a PEM certificate chain (the
/// server's certificate first), `key` the PEM private key of that certificate (PKCS#8, PKCS#1
/// or SEC1).
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    Ok(RustlsConfig::from_config(Arc::new(server_config(
        cert, key,
    )?)))
}

/// [`load`], as a rustls configuration (HTTP/2 and HTTP/1.1 offered through ALPN).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let chain = read_chain(cert)?;
    let private_key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Parse the key alone first, so an unusable key is reported as the key file's fault.
    provider
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|e| {
            anyhow!(
                "TLS key file {}: not a usable private key: {e}",
                key.display()
            )
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing the TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            anyhow!(
                "TLS certificate file {} and key file {} do not go together: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read TLS certificate file {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow!(
                "TLS certificate file {}: not valid PEM: {e}",
                path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(anyhow!(
            "TLS certificate file {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read TLS key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow!(
            "TLS key file {}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        other => anyhow!("TLS key file {}: not valid PEM: {other}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        /// A self-signed certificate for 127.0.0.1/localhost in `cert.pem`, its key in
        /// `key.pem`.
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let generated =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                    .unwrap();
            std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
            std::fs::write(
                dir.path().join("key.pem"),
                generated.signing_key.serialize_pem(),
            )
            .unwrap();
            Files { dir }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> std::path::PathBuf {
            let path = self.path(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        /// The error message (with its causes) of loading `cert` and `key`.
        fn error(&self, cert: &Path, key: &Path) -> String {
            let e = server_config(cert, key).expect_err("must be refused");
            format!("{e:#}")
        }
    }

    #[test]
    fn a_matching_pair_loads_with_http2_and_http1() {
        let f = Files::new();
        let config = server_config(&f.path("cert.pem"), &f.path("key.pem")).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn missing_files_are_named() {
        let f = Files::new();
        let missing = f.path("nowhere.pem");
        let message = f.error(&missing, &f.path("key.pem"));
        assert!(
            message.contains("certificate file") && message.contains(&*missing.to_string_lossy()),
            "{message}"
        );
        let message = f.error(&f.path("cert.pem"), &missing);
        assert!(
            message.contains("key file") && message.contains(&*missing.to_string_lossy()),
            "{message}"
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_named() {
        let f = Files::new();
        let garbage = f.write("garbage.pem", "this is not a key\n");
        let message = f.error(&f.path("cert.pem"), &garbage);
        assert!(
            message.contains("no PEM private key") && message.contains(&*garbage.to_string_lossy()),
            "{message}"
        );
        // The certificate given twice: PEM, but no key in it.
        let message = f.error(&f.path("cert.pem"), &f.path("cert.pem"));
        assert!(message.contains("no PEM private key"), "{message}");
        // A PEM key block whose contents are not a key.
        let fake = f.write(
            "fake.pem",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        );
        let message = f.error(&f.path("cert.pem"), &fake);
        assert!(
            message.contains("not a usable private key")
                && message.contains(&*fake.to_string_lossy()),
            "{message}"
        );
    }

    #[test]
    fn a_certificate_file_without_a_certificate_is_named() {
        let f = Files::new();
        let message = f.error(&f.path("key.pem"), &f.path("key.pem"));
        assert!(
            message.contains("no PEM certificate") && message.contains("key.pem"),
            "{message}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let f = Files::new();
        let other = rcgen::KeyPair::generate().unwrap();
        let other_key = f.write("other-key.pem", other.serialize_pem());
        let message = f.error(&f.path("cert.pem"), &other_key);
        assert!(message.contains("do not go together"), "{message}");
    }
}
