//! `backlight-server serve`: wire storage, ingest and HTTP together and run until a signal.

use std::time::Duration;

use anyhow::Context;

use crate::cli::{LimitArgs, ServeArgs, StorageArgs, WebhookArgs};
use crate::clickhouse::ClickHouseConfig;
use crate::http::{router, AppState};
use crate::ingest::devices::DeviceLimits;
use crate::ingest::writer::{IngestWriter, WriterConfig};
use crate::ingest::IngestLimits;
use crate::launch;
use crate::listen::ConnectionLimits;
use crate::live::{LiveConfig, LiveHub};
use crate::storage::Store;
use crate::webhooks::target::TargetPolicy;
use crate::webhooks::{WebhookConfig, WebhookEngine};

/// Longest the server waits for open requests to finish after a shutdown signal.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(30);

pub async fn serve(
    storage: StorageArgs,
    args: ServeArgs,
    webhooks: WebhookArgs,
) -> anyhow::Result<()> {
    // Install the recorder before anything records, or early metrics are lost.
    crate::telemetry::prometheus();
    // The certificate and key are checked before ClickHouse starts: a bad file fails at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::load(cert, key)?),
        _ => None,
    };
    let (config, clickhouse) = launch::for_serve(&storage).await?;
    let result = serve_with(&config, &args, &webhooks, tls).await;
    clickhouse.shutdown().await;
    result
}

async fn serve_with(
    config: &ClickHouseConfig,
    args: &ServeArgs,
    webhooks: &WebhookArgs,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> anyhow::Result<()> {
    let store = open_store(config, args.clickhouse_wait).await?;
    crate::storage::durability::report(store.durability());
    let limits = &args.limits;
    let writer = IngestWriter::spawn(
        store.client().clone(),
        WriterConfig {
            min_insert_interval: args.insert_min_interval,
            max_bytes_in_flight: usize::try_from(limits.ingest_commit_budget).unwrap_or(usize::MAX),
            tenant_share: limits.ingest_tenant_share,
            ..WriterConfig::default()
        },
    );
    let mut state = AppState::new(store, writer, args.auth_cache_ttl)
        .with_ingest_limits(ingest_limits(limits))
        .with_live_config(LiveConfig {
            max_streams_per_key: args.max_streams_per_key as usize,
            ..LiveConfig::default()
        })
        .with_access_limits(&args.access_limits())
        .with_device_directory(args.device_directory_size, args.auth_cache_ttl)
        .with_metrics(args.metrics());
    if args.metrics_token.is_none() {
        tracing::info!(
            "/metrics is off: set --metrics-token (BACKLIGHT_METRICS_TOKEN) to scrape it"
        );
    }
    state.webhook_targets = TargetPolicy::allowing(webhooks.webhook_allow_hosts.iter().cloned());
    crate::storage::retention::spawn(state.store.client().clone(), state.store.cluster().cloned());
    let webhook_engine = WebhookEngine::spawn(
        state.clone(),
        WebhookConfig {
            policy: state.webhook_targets.clone(),
            retry_base: args.webhook_retry_base,
            host: host_name(),
            ..WebhookConfig::default()
        },
    )
    .context("starting webhook deliveries")?;
    let audit = state.audit.clone();
    let live = state.live.clone();
    let app = router(state);

    let handle = axum_server::Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone(), live));
    match &tls {
        Some(_) => tracing::info!(listen = %args.listen, "serving HTTPS"),
        None => {
            if !args.listen.ip().is_loopback() {
                tracing::warn!(listen = %args.listen, "serving plain HTTP on a non-loopback address: use --tls-cert/--tls-key or a TLS-terminating proxy");
            }
            tracing::info!(listen = %args.listen, "serving HTTP");
        }
    }
    let connections = ConnectionLimits {
        max_connections: limits.max_connections,
        max_per_ip: limits.max_connections_per_ip,
        header_read_timeout: limits.header_read_timeout,
    };
    crate::listen::serve(app, args.listen, tls, connections, handle)
        .await
        .with_context(|| format!("serving on {}", args.listen))?;
    // Outcomes of running deliveries stored, and the others take this server's tenants over.
    webhook_engine.stop().await;
    // Audit entries are written in the background; the last ones must not die with the process.
    if let Err(e) = audit.flush().await {
        tracing::error!(error = %e, "could not write the last audit entries before stopping");
    }
    tracing::info!("server stopped");
    Ok(())
}

/// The ingest limits from the command line.
fn ingest_limits(args: &LimitArgs) -> IngestLimits {
    IngestLimits {
        device: DeviceLimits {
            concurrency: args.ingest_device_concurrency,
            requests_per_second: args.ingest_device_rate,
            burst: args.ingest_device_burst,
            decoded_bytes_per_second: args.ingest_device_decoded_rate,
        },
        body_budget: usize::try_from(args.ingest_body_budget).unwrap_or(usize::MAX),
        tenant_share: args.ingest_tenant_share,
        body_idle: args.body_read_timeout,
        min_body_rate: args.min_body_rate,
        decode_threads: match args.decode_threads {
            0 => crate::ingest::decoder::default_threads(),
            n => n,
        },
    }
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

async fn shutdown_on_signal(handle: axum_server::Handle, live: LiveHub) {
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
    // Open status streams would hold the shutdown up for its whole grace period.
    live.stop_streams();
    handle.graceful_shutdown(Some(GRACEFUL_SHUTDOWN));
}

/// This machine's host name, for the server heartbeats (empty when unknown).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_default()
}

/// Installs the process-wide TLS crypto provider (ring: no C toolchain surprises, fast build).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
