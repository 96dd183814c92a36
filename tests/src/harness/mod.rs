//! The pieces of the end-to-end harness; see the crate docs for the map.

pub mod agent;
pub mod bins;
pub mod clickhouse;
pub mod cluster;
pub mod file_agent;
pub mod ingest;
pub mod process;
pub mod receiver;
pub mod server;
pub mod spine;
pub mod sse;
pub mod wait;
pub mod xvfb;
pub mod zookeeper;

/// A unique, ClickHouse-safe name with the given prefix, e.g. `e2e_3f2a…`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"))
}

/// The HTTP client every helper uses: short timeouts, no redirects, no connection reuse
/// surprises across server restarts.
pub fn http_client() -> reqwest::Client {
    client_builder().build().expect("building the HTTP client")
}

/// [`http_client`] that trusts only the root certificate(s) in `root_pem` for HTTPS, e.g. a
/// test's self-signed server certificate.
pub fn https_client(root_pem: &[u8]) -> reqwest::Client {
    let roots = reqwest::Certificate::from_pem_bundle(root_pem)
        .unwrap_or_else(|e| panic!("the test's root certificate is not PEM: {e}"));
    client_builder()
        .tls_certs_only(roots)
        .build()
        .expect("building the HTTPS client")
}

fn client_builder() -> reqwest::ClientBuilder {
    // reqwest is built without a TLS provider of its own; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
}
