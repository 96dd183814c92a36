//! `backlight-server serve`: wire storage, ingest and HTTP together and run until a signal.

use std::time::Duration;

use anyhow::Context;

use crate::cli::{ServeArgs, StorageArgs};
use crate::clickhouse::ClickHouseConfig;
use crate::http::{router, AppState};
use crate::ingest::writer::{IngestWriter, WriterConfig};
use crate::launch;
use crate::storage::Store;

/// Longest the server waits for open requests to finish after a shutdown signal.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(30);

pub async fn serve(storage: StorageArgs, args: ServeArgs) -> anyhow::Result<()> {
    // Install the recorder before anything records, or early metrics are lost.
    crate::telemetry::prometheus();
    // The certificate and key are checked before ClickHouse starts: a bad file fails at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::load(cert, key)?),
        _ => None,
    };
    let (config, clickhouse) = launch::for_serve(&storage).await?;
    let result = serve_with(&config, &args, tls).await;
    clickhouse.shutdown().await;
    result
}

async fn serve_with(
    config: &ClickHouseConfig,
    args: &ServeArgs,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> anyhow::Result<()> {
    let store = open_store(config, args.clickhouse_wait).await?;
    let writer = IngestWriter::spawn(
        store.client().clone(),
        WriterConfig {
            max_delay: args.insert_max_delay,
            ..WriterConfig::default()
        },
    );
    let state = AppState::new(store, writer, args.auth_cache_ttl)
        .with_access_limits(&args.access_limits())
        .with_device_directory(args.device_directory_size, args.auth_cache_ttl)
        .with_metrics(args.metrics());
    if args.metrics_token.is_none() {
        tracing::info!(
            "/metrics is off: set --metrics-token (BACKLIGHT_METRICS_TOKEN) to scrape it"
        );
    }
    let audit = state.audit.clone();
    let app = router(state);

    let handle = axum_server::Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone()));
    let service = app.into_make_service();
    match tls {
        Some(tls) => {
            tracing::info!(listen = %args.listen, "serving HTTPS");
            axum_server::bind_rustls(args.listen, tls)
                .handle(handle)
                .serve(service)
                .await
        }
        None => {
            if !args.listen.ip().is_loopback() {
                tracing::warn!(listen = %args.listen, "serving plain HTTP on a non-loopback address: use --tls-cert/--tls-key or a TLS-terminating proxy");
            }
            tracing::info!(listen = %args.listen, "serving HTTP");
            axum_server::bind(args.listen).handle(handle).serve(service).await
        }
    }
    .with_context(|| format!("serving on {}", args.listen))?;
    // Audit entries are written in the background; the last ones must not die with the process.
    if let Err(e) = audit.flush().await {
        tracing::error!(error = %e, "could not write the last audit entries before stopping");
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Opens the store, retrying while ClickHouse is not reachable yet (it may still be starting).
async fn open_store(config: &ClickHouseConfig, wait: Duration) -> anyhow::Result<Store> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(200);
    loop {
        match Store::open(config).await {
            Ok(store) => return Ok(store),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, url = %config.url, "ClickHouse not ready yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("ClickHouse at {} not usable after {wait:?}", config.url)
                });
            }
        }
    }
}

async fn shutdown_on_signal(handle: axum_server::Handle) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown requested; finishing open requests");
    handle.graceful_shutdown(Some(GRACEFUL_SHUTDOWN));
}

/// Installs the process-wide TLS crypto provider (ring: no C toolchain surprises, fast build).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
