//! The pieces of the end-to-end harness; see the crate docs for the map.

pub mod agent;
pub mod bins;
pub mod clickhouse;
pub mod ingest;
pub mod process;
pub mod server;
pub mod wait;

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
    // reqwest is built without a TLS provider of its own; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("building the HTTP client")
}
