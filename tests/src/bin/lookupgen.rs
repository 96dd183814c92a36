//! `backlight-lookupgen`: the status lookup benchmark (a measuring tool, not a timed test).
//!
//! Against a running server it
//!
//! 1. **sets up** (unless `--skip-setup`): registers `--items` items with `POST /v1/items`
//!    (admin key, `--register-batch` per call), enrolls `--seed-devices` devices with the
//!    enrollment key and uploads a short, realistic history for every item through
//!    `/v1/ingest` (started, active/idle spans, paused/resumed, about 60 % completed; zstd JSON);
//! 2. **looks up** `GET /v1/items/{id}` for uniformly random registered ids with a `cc_agent`
//!    key at a fixed **open-loop** rate: request *k* is scheduled at `start + k / rate`, and its
//!    latency is measured from that scheduled time, so a stall of the server (or of this
//!    process) shows up in the percentiles instead of silently lowering the offered load
//!    (coordinated omission). Requests go over a keep-alive connection pool; at most
//!    `--max-in-flight` are open at once, a request that would exceed it counts as an error
//!    `client_backlog` (so an overloaded server cannot make the generator grow without bound);
//! 3. optionally (`--with-ingest`) runs a concurrent ingest load: `--ingest-agents` freshly
//!    enrolled devices, paced to `--ingest-rate` events/s in total, real zstd JSON batches whose
//!    events name the registered items (so lookups read items that are being written);
//! 4. optionally (`--clickhouse-url`) probes ClickHouse directly during the window with the
//!    lookup's own primary-key reads, to tell ClickHouse query time from the rest of the
//!    server's time;
//! 5. optionally (`--query-log`, with a ClickHouse that has `log_queries=1`) reads ClickHouse's
//!    own CPU accounting of the server's queries in the window from `system.query_log`
//!    (`UserTimeMicroseconds + SystemTimeMicroseconds` of each query, all its threads) and
//!    reports it per lookup answered: the item reads, the audit INSERTs and the other reads
//!    (per-tenant caches), apart from the ingest INSERTs. Background merges are not queries
//!    and are not in it.
//!
//! Prints the achieved lookup rate, latency percentiles (p50/p90/p99/p99.9/max), errors by
//! status, how late the generator itself sent, the server's peak RSS (sampled from `/proc`),
//! CPU by process, the server's own mean handling time from `/metrics`, then one JSON line.
//! Loopback use only; every loop is bounded in count and in time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backlight_e2e::loadkit::args::Watched;
use backlight_e2e::loadkit::procfs::{sample_memory, CpuSample, CpuUse};
use backlight_e2e::loadkit::server::{enroll_all, wait_healthy, Device, Metrics};
use backlight_e2e::loadkit::{raise_fd_limit, stats::nearest_rank};
use backlight_e2e::Db;
use backlight_server::cli::parse_duration;
use backlight_shared::api::INGEST_PATH;
use backlight_shared::batch::Batch;
use backlight_shared::event::{
    ActivitySpan, ActivityState, Event, EventBody, ItemAction, ItemSource, WorkItemEvent,
};
use backlight_shared::{now_ms, PROTOCOL_VERSION};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

const ZSTD_LEVEL: i32 = 3;
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const MAX_ITEMS: u64 = 5_000_000;
const MAX_RATE: f64 = 50_000.0;
const MAX_RUN: Duration = Duration::from_secs(600);
const MAX_AGENTS: usize = 5_000;
/// Longest the whole setup (registration and seeding) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(900);
const STEPS: &[&str] = &["intake", "triage", "assess", "approve", "pay"];
const QUEUES: &[&str] = &["motor", "home", "travel", "health"];
const APPS: &[&str] = &["claims-desk", "outlook", "chrome", "sap-gui", "teams"];
const DAY_MS: u64 = 86_400_000;
/// The lookup latency target (issue #4): answers slower than this are counted per second.
const SLOW_US: u32 = 20_000;
const CLICKHOUSE_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
const ENROLL_CONCURRENCY: usize = 16;
const AGENT_VERSION: &str = "0.1.0-lookupgen";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "backlight-lookupgen",
    about = "Backlight status lookup benchmark: open-loop GET /v1/items/{id}, optionally under ingest"
)]
struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Admin API key (registers the items).
    #[arg(long, env = "BACKLIGHT_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// cc_agent API key (the lookups).
    #[arg(long, env = "BACKLIGHT_LOOKUP_KEY", hide_env_values = true)]
    lookup_key: String,
    /// Enrollment key (seeding devices and the ingest agents).
    #[arg(long, env = "BACKLIGHT_ENROLLMENT_KEY", hide_env_values = true)]
    enrollment_key: Option<String>,
    /// The tenant of the keys (used only by the ClickHouse probe).
    #[arg(long, default_value = "bench")]
    tenant: String,

    /// Items registered and looked up (ids `<prefix>-0000000` …).
    #[arg(long, default_value_t = 100_000)]
    items: u64,
    /// Item id prefix.
    #[arg(long, default_value = "LKP")]
    item_prefix: String,
    /// Items per `POST /v1/items` (1–1,000).
    #[arg(long, default_value_t = 1_000)]
    register_batch: usize,
    /// Devices that upload the items' histories during setup.
    #[arg(long, default_value_t = 8)]
    seed_devices: usize,
    /// Events per seeding batch.
    #[arg(long, default_value_t = 2_000)]
    seed_batch_events: usize,
    /// The items already exist (an earlier run with the same --items and --item-prefix).
    #[arg(long)]
    skip_setup: bool,

    /// Lookups per second, scheduled on a clock (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measurement window (after the warm-up).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the window, not counted.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,
    /// Most lookups open at once; beyond it a scheduled lookup is counted as `client_backlog`.
    #[arg(long, default_value_t = 2_000)]
    max_in_flight: usize,
    /// Client-side timeout of one request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,

    /// Run a concurrent ingest load during warm-up and window.
    #[arg(long)]
    with_ingest: bool,
    /// Ingest events/s offered in total.
    #[arg(long, default_value_t = 20_000.0)]
    ingest_rate: f64,
    /// Simulated agents sending the ingest load.
    #[arg(long, default_value_t = 200)]
    ingest_agents: usize,
    /// Events per ingest batch.
    #[arg(long, default_value_t = 100)]
    ingest_batch_events: usize,

    // `--clickhouse-url`: probe the lookup's queries directly during the window.
    #[command(flatten)]
    watched: Watched,
    /// Direct ClickHouse probes per second (each runs the lookup's two primary-key reads).
    #[arg(long, default_value_t = 5.0)]
    probe_rate: f64,
    /// Read ClickHouse's CPU per query from `system.query_log` for the window (needs
    /// `--clickhouse-url` and a ClickHouse logging queries, e.g. `log_queries=1` in its profile).
    #[arg(long)]
    query_log: bool,
    /// A label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.items == 0 || args.items > MAX_ITEMS {
        bail!("--items must be 1..={MAX_ITEMS}");
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= MAX_RATE) {
        bail!("--rate must be in (0, {MAX_RATE}]");
    }
    if args.duration.is_zero() || args.duration + args.warmup > MAX_RUN {
        bail!("--warmup + --duration must be positive and at most {MAX_RUN:?}");
    }
    if args.register_batch == 0 || args.register_batch > 1_000 {
        bail!("--register-batch must be 1..=1000");
    }
    if args.seed_devices == 0 || args.seed_devices > 256 {
        bail!("--seed-devices must be 1..=256");
    }
    let max_batch = backlight_shared::batch::limits::MAX_EVENTS_PER_BATCH;
    if args.seed_batch_events < 10 || args.seed_batch_events > max_batch {
        bail!("--seed-batch-events must be 10..={max_batch}");
    }
    if args.ingest_agents == 0 || args.ingest_agents > MAX_AGENTS {
        bail!("--ingest-agents must be 1..={MAX_AGENTS}");
    }
    if args.ingest_batch_events == 0 || args.ingest_batch_events > max_batch {
        bail!("--ingest-batch-events must be 1..={max_batch}");
    }
    if !(args.ingest_rate.is_finite() && args.ingest_rate > 0.0) {
        bail!("--ingest-rate must be positive");
    }
    if args.max_in_flight == 0 || args.max_in_flight > 20_000 {
        bail!("--max-in-flight must be 1..=20000");
    }
    if !(args.probe_rate.is_finite() && (0.0..=100.0).contains(&args.probe_rate)) {
        bail!("--probe-rate must be 0..=100");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(&args));
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

fn item_id(prefix: &str, i: u64) -> String {
    format!("{prefix}-{i:07}")
}

fn http_client(args: &Args, pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .timeout(args.request_timeout)
        .tcp_nodelay(true)
        .build()?)
}

async fn run(args: &Args) -> Result<()> {
    let server = args.server.trim_end_matches('/').to_string();
    let client = http_client(args, args.max_in_flight + args.ingest_agents + 16)?;
    wait_healthy(&client, &server).await?;

    let mut setup_secs = None;
    if !args.skip_setup {
        let started = Instant::now();
        tokio::time::timeout(SETUP_TIMEOUT, setup(args, &client, &server))
            .await
            .context("setup took longer than its limit")??;
        setup_secs = Some(started.elapsed().as_secs_f64());
    }

    let clickhouse = args.watched.clickhouse(CLICKHOUSE_QUERY_TIMEOUT)?;
    let eta_scan_ms = match &clickhouse {
        Some(ch) => time_eta_scan(ch, &args.tenant).await.ok(),
        None => None,
    };

    // One lookup before the clock: the server computes the tenant's ETA statistics on its first
    // lookup (a scan); the benchmark measures the steady state, this reports the cold start.
    let first_lookup = {
        let started = Instant::now();
        let response = client
            .get(format!(
                "{server}/v1/items/{}",
                item_id(&args.item_prefix, 0)
            ))
            .header(AUTHORIZATION, format!("Bearer {}", args.lookup_key))
            .timeout(Duration::from_secs(120))
            .send()
            .await;
        let status = match response {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) => transport_kind(&e).to_string(),
        };
        (started.elapsed().as_secs_f64() * 1000.0, status)
    };
    eprintln!(
        "first lookup (cold ETA statistics): {} after {:.0} ms",
        first_lookup.1, first_lookup.0
    );

    // Ingest agents enroll before the clock starts.
    let ingest_devices = if args.with_ingest {
        let key = args
            .enrollment_key
            .as_deref()
            .context("--with-ingest needs --enrollment-key")?;
        enroll_all(
            &client,
            &server,
            key,
            args.ingest_agents,
            ENROLL_CONCURRENCY,
            hostnames("lookupgen-ingest"),
            AGENT_VERSION,
        )
        .await?
    } else {
        Vec::new()
    };

    let start = Instant::now() + Duration::from_millis(200);
    let clock = Arc::new(Clock {
        start,
        window_start: start + args.warmup,
        end: start + args.warmup + args.duration,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_memory(
        [args.watched.server_pid],
        RSS_SAMPLE_EVERY,
        stop.clone(),
        clock.end + args.request_timeout + Duration::from_secs(10),
    ));

    let ingest = Arc::new(IngestStats::default());
    let mut ingest_tasks = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(
        args.ingest_agents as f64 * args.ingest_batch_events as f64 / args.ingest_rate,
    );
    for (i, device) in ingest_devices.into_iter().enumerate() {
        let agent = IngestAgent {
            client: client.clone(),
            url: format!("{server}{INGEST_PATH}"),
            device,
            rng: StdRng::seed_from_u64((0x1A6E_0000 + i as u64) ^ now_ms()),
            seq: 0,
            items: args.items,
            prefix: args.item_prefix.clone(),
            batch_events: args.ingest_batch_events,
            interval,
            clock: clock.clone(),
            stats: ingest.clone(),
        };
        ingest_tasks.spawn(agent.run());
    }

    let probe = match clickhouse.clone() {
        Some(ch) if args.probe_rate > 0.0 => Some(tokio::spawn(probe_clickhouse(
            ch,
            args.tenant.clone(),
            args.item_prefix.clone(),
            args.items,
            args.probe_rate,
            clock.clone(),
        ))),
        _ => None,
    };

    let results = Arc::new(Mutex::new(LookupResults::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let progress = tokio::spawn(report_progress(
        results.clone(),
        ingest.clone(),
        clock.clone(),
    ));

    // Counters over exactly the window.
    let window_probe = {
        let (client, server, clock) = (client.clone(), server.clone(), clock.clone());
        let (server_pid, ch_pid) = (args.watched.server_pid, args.watched.clickhouse_pid);
        let token = args.watched.metrics_token.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(clock.window_start.into()).await;
            let cpu0 = CpuSample::take(server_pid, ch_pid);
            let m0 = Metrics::scrape(&client, &server, token.as_deref())
                .await
                .as_ref()
                .map(ServerMetrics::of);
            let from_ms = now_ms();
            tokio::time::sleep_until(clock.end.into()).await;
            let to_ms = now_ms();
            let cpu1 = CpuSample::take(server_pid, ch_pid);
            let m1 = Metrics::scrape(&client, &server, token.as_deref())
                .await
                .as_ref()
                .map(ServerMetrics::of);
            (cpu0.delta(&cpu1), m0.zip(m1), (from_ms, to_ms))
        })
    };

    // The open-loop schedule. Bounded: exactly `total` iterations, each sleeping at most until
    // its slot, and the slots end at `clock.end`.
    let lookup_url = format!("{server}/v1/items/");
    let bearer = format!("Bearer {}", args.lookup_key);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).floor() as u64;
    let mut rng = StdRng::seed_from_u64(now_ms());
    let mut lookups = tokio::task::JoinSet::new();
    for k in 0..total {
        let scheduled = clock.start + Duration::from_secs_f64(k as f64 / args.rate);
        if scheduled > Instant::now() {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        let in_window = scheduled >= clock.window_start;
        let send_lag_us = Instant::now()
            .saturating_duration_since(scheduled)
            .as_micros()
            .min(u128::from(u32::MAX)) as u32;
        if in_window {
            results
                .lock()
                .expect("not poisoned")
                .send_lag_us
                .push(send_lag_us);
        }
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            let mut r = results.lock().expect("not poisoned");
            r.scheduled += 1;
            if in_window {
                *r.errors.entry("client_backlog".into()).or_default() += 1;
            }
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let id = item_id(&args.item_prefix, rng.random_range(0..args.items));
        let (client, url, bearer) = (client.clone(), format!("{lookup_url}{id}"), bearer.clone());
        let (results, in_flight) = (results.clone(), in_flight.clone());
        let window_start = clock.window_start;
        lookups.spawn(async move {
            let outcome = match client.get(&url).header(AUTHORIZATION, &bearer).send().await {
                Ok(r) => {
                    let status = r.status();
                    match r.bytes().await {
                        Ok(body) => Ok((status, body.len())),
                        Err(e) => Err(transport_kind(&e)),
                    }
                }
                Err(e) => Err(transport_kind(&e)),
            };
            let latency_us = scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let mut r = results.lock().expect("not poisoned");
            r.scheduled += 1;
            r.completed += 1;
            if !in_window {
                return;
            }
            if latency_us > SLOW_US {
                let second = scheduled.saturating_duration_since(window_start).as_secs() as usize;
                if r.slow_per_second.len() <= second {
                    r.slow_per_second.resize(second + 1, 0);
                }
                r.slow_per_second[second] += 1;
            }
            match outcome {
                Ok((StatusCode::OK, bytes)) => {
                    r.ok_latencies_us.push(latency_us);
                    r.body_bytes += bytes as u64;
                }
                Ok((status, _)) => {
                    *r.errors.entry(status.as_u16().to_string()).or_default() += 1;
                    r.error_latencies_us.push(latency_us);
                }
                Err(kind) => {
                    *r.errors.entry(kind.to_string()).or_default() += 1;
                    r.error_latencies_us.push(latency_us);
                }
            }
        });
        // Reap finished tasks so the set stays small.
        while lookups.try_join_next().is_some() {}
    }
    let (cpu, metrics, window_ms) = window_probe.await.unwrap_or_default();

    // What is still open finishes or times out (the client timeout bounds it).
    let drain_deadline =
        tokio::time::Instant::now() + args.request_timeout + Duration::from_secs(5);
    while let Ok(Some(_)) = tokio::time::timeout_at(drain_deadline, lookups.join_next()).await {}
    lookups.abort_all();
    while let Ok(Some(_)) = tokio::time::timeout_at(drain_deadline, ingest_tasks.join_next()).await
    {
    }
    ingest_tasks.abort_all();
    progress.abort();
    let probes = match probe {
        Some(p) => p.await.ok(),
        None => None,
    };
    stop.store(true, Ordering::Relaxed);
    let [memory] = sampler.await.unwrap_or_default();
    let rss = (memory.peak_rss_kb, memory.hwm_kb);
    let query_cpu = match &clickhouse {
        Some(ch) if args.query_log => match query_log_cpu(ch, window_ms).await {
            Ok(cpu) => Some(cpu),
            Err(e) => {
                eprintln!("cannot read system.query_log: {e:#}");
                None
            }
        },
        _ => None,
    };

    let results = std::mem::take(&mut *results.lock().expect("not poisoned"));
    print_report(
        args,
        &server,
        Report {
            results,
            window_s: args.duration.as_secs_f64(),
            ingest: &ingest,
            rss,
            cpu,
            metrics,
            probes,
            eta_scan_ms,
            setup_secs,
            first_lookup,
            query_cpu,
        },
    );
    Ok(())
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

struct Clock {
    start: Instant,
    window_start: Instant,
    end: Instant,
}

#[derive(Default)]
struct LookupResults {
    scheduled: u64,
    completed: u64,
    /// Latency from the scheduled time, µs, of 200 answers scheduled in the window.
    ok_latencies_us: Vec<u32>,
    error_latencies_us: Vec<u32>,
    /// How late the generator sent each lookup of the window, µs (its own health).
    send_lag_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    body_bytes: u64,
    /// Per second of the window (by scheduled time), answers slower than the 20 ms target:
    /// bursts (a background scan, a merge) and steady contention look different here.
    slow_per_second: Vec<u32>,
}

// -----------------------------------------------------------------------------------------
// Setup: registration and each item's history
// -----------------------------------------------------------------------------------------

async fn setup(args: &Args, client: &reqwest::Client, server: &str) -> Result<()> {
    let admin = args
        .admin_key
        .as_deref()
        .context("setup needs --admin-key (or pass --skip-setup)")?;
    let enrollment = args
        .enrollment_key
        .as_deref()
        .context("setup needs --enrollment-key (or pass --skip-setup)")?;
    let now = now_ms();

    // Registration: 4 calls in flight.
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let batches = args.items.div_ceil(args.register_batch as u64);
    for b in 0..batches {
        let from = b * args.register_batch as u64;
        let to = (from + args.register_batch as u64).min(args.items);
        let items: Vec<serde_json::Value> = (from..to)
            .map(|i| {
                json!({
                    "item_id": item_id(&args.item_prefix, i),
                    "queue": QUEUES[(i % QUEUES.len() as u64) as usize],
                    "priority": i % 10,
                    "sla_due_ms": now + (1 + i % 72) * 3_600_000,
                    "customer_ref": format!("C-{}", i % 50_000),
                })
            })
            .collect();
        let (client, limit) = (client.clone(), limit.clone());
        let url = format!("{server}/v1/items");
        let bearer = format!("Bearer {admin}");
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let body = json!({ "items": items });
            let mut last = String::new();
            for attempt in 0..5u64 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                }
                match client
                    .post(&url)
                    .header(AUTHORIZATION, &bearer)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) if r.status().is_client_error() => {
                        bail!(
                            "registration refused: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Ok(r) => {
                        last = format!("{} {}", r.status(), r.text().await.unwrap_or_default())
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            bail!("registration failed after 5 attempts: {last}")
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    eprintln!(
        "registered {} items in {:.1} s",
        args.items,
        started.elapsed().as_secs_f64()
    );

    // Histories: each seeding device uploads the items i with i % devices == its index.
    let started = Instant::now();
    let devices = enroll_all(
        client,
        server,
        enrollment,
        args.seed_devices,
        ENROLL_CONCURRENCY,
        hostnames("lookupgen-seed"),
        AGENT_VERSION,
    )
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    let events_total = Arc::new(AtomicU64::new(0));
    for (d, device) in devices.into_iter().enumerate() {
        let (client, events_total) = (client.clone(), events_total.clone());
        let url = format!("{server}{INGEST_PATH}");
        let (items, n, prefix, per_batch) = (
            args.items,
            args.seed_devices as u64,
            args.item_prefix.clone(),
            args.seed_batch_events,
        );
        tasks.spawn(async move {
            let mut seq = 0u64;
            let mut rng = StdRng::seed_from_u64(0x5EED + d as u64);
            let mut pending: Vec<Event> = Vec::with_capacity(per_batch + 16);
            let mut i = d as u64;
            loop {
                if i < items {
                    history(&mut rng, &mut seq, &item_id(&prefix, i), now, &mut pending);
                    i += n;
                }
                if pending.len() >= per_batch || (i >= items && !pending.is_empty()) {
                    let batch = Batch {
                        protocol: PROTOCOL_VERSION,
                        device_id: device.device_id,
                        events: std::mem::take(&mut pending),
                    };
                    let count = batch.events.len() as u64;
                    send_batch(&client, &url, &device, &batch).await?;
                    events_total.fetch_add(count, Ordering::Relaxed);
                }
                if i >= items && pending.is_empty() {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    eprintln!(
        "uploaded {} history events for {} items in {:.1} s",
        events_total.load(Ordering::Relaxed),
        args.items,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A plausible history of one item, ending in the last 20 days: started, worked on in active
/// and idle spans, maybe paused and resumed, and completed in about 60 % of the items.
fn history(rng: &mut StdRng, seq: &mut u64, item: &str, now: u64, out: &mut Vec<Event>) {
    let mut t = now - rng.random_range(DAY_MS..20 * DAY_MS);
    let mut step = 0usize;
    let mut push = |rng: &mut StdRng, body: EventBody| {
        *seq += 1;
        out.push(Event {
            seq: *seq,
            id: uuid::Builder::from_random_bytes(rng.random()).into_uuid(),
            body,
        });
    };
    let action = |item: &str, action, step: usize, at_ms| {
        EventBody::WorkItem(WorkItemEvent {
            item_id: item.to_string(),
            action,
            step: Some(STEPS[step].to_string()),
            at_ms,
            source: ItemSource::Rule,
        })
    };
    push(rng, action(item, ItemAction::Started, step, t));
    let rounds = rng.random_range(1..=3);
    for round in 0..rounds {
        let len = rng.random_range(60_000..1_800_000);
        let state = if rng.random_bool(0.8) {
            ActivityState::Active
        } else {
            ActivityState::Idle
        };
        let app = APPS[rng.random_range(0..APPS.len())].to_string();
        push(
            rng,
            EventBody::ActivitySpan(ActivitySpan {
                app,
                title: Some(format!("{item} – {}", STEPS[step])),
                start_ms: t,
                end_ms: t + len,
                state,
                item_id: Some(item.to_string()),
                step: Some(STEPS[step].to_string()),
            }),
        );
        t += len;
        if round + 1 < rounds {
            push(rng, action(item, ItemAction::Paused, step, t));
            t += rng.random_range(60_000..DAY_MS / 4);
            step = (step + 1).min(STEPS.len() - 1);
            push(rng, action(item, ItemAction::Resumed, step, t));
        }
    }
    if rng.random_bool(0.6) {
        push(rng, action(item, ItemAction::Completed, step, t));
    }
}

/// Host names `{prefix}-{run}-{i:05}`, `run` unique to this run (so reruns enroll new devices).
fn hostnames(prefix: &str) -> impl Fn(usize) -> String {
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let prefix = prefix.to_string();
    move |i| format!("{prefix}-{run}-{i:05}")
}

fn encode(batch: &Batch) -> Result<Vec<u8>> {
    Ok(zstd::bulk::compress(
        &serde_json::to_vec(batch)?,
        ZSTD_LEVEL,
    )?)
}

/// Sends one batch until it is acknowledged (at most 10 attempts).
async fn send_batch(
    client: &reqwest::Client,
    url: &str,
    device: &Device,
    batch: &Batch,
) -> Result<()> {
    let body = encode(batch)?;
    let mut last = String::new();
    for attempt in 0..10u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
        }
        match post_batch(client, url, device, body.clone()).await {
            Ok(StatusCode::OK) => return Ok(()),
            Ok(s) if s.is_client_error() && s != 429 && s != 408 => {
                bail!("a seeding batch was refused: {s}")
            }
            Ok(s) => last = s.to_string(),
            Err(e) => last = e.to_string(),
        }
    }
    bail!("a seeding batch failed after 10 attempts: {last}")
}

async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    device: &Device,
    body: Vec<u8>,
) -> Result<StatusCode, reqwest::Error> {
    let r = client
        .post(url)
        .header(AUTHORIZATION, &device.bearer)
        .header(CONTENT_ENCODING, "zstd")
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let _ = r.bytes().await?;
    Ok(status)
}

// -----------------------------------------------------------------------------------------
// Concurrent ingest
// -----------------------------------------------------------------------------------------

#[derive(Default)]
struct IngestStats {
    acked_events: AtomicU64,
    window_events: AtomicU64,
    window_requests: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latencies_us: Mutex<Vec<u32>>,
}

struct IngestAgent {
    client: reqwest::Client,
    url: String,
    device: Device,
    rng: StdRng,
    seq: u64,
    items: u64,
    prefix: String,
    batch_events: usize,
    interval: Duration,
    clock: Arc<Clock>,
    stats: Arc<IngestStats>,
}

impl IngestAgent {
    /// A batch of what a desktop sends while working on items: mostly activity spans on an item,
    /// a quarter work-item actions; all within the last hour.
    fn batch(&mut self) -> Batch {
        let now = now_ms();
        let events = (0..self.batch_events)
            .map(|_| {
                let item = item_id(&self.prefix, self.rng.random_range(0..self.items));
                let step = STEPS[self.rng.random_range(0..STEPS.len())].to_string();
                let t = now - self.rng.random_range(60_000..3_600_000);
                let body = if self.rng.random_bool(0.75) {
                    EventBody::ActivitySpan(ActivitySpan {
                        app: APPS[self.rng.random_range(0..APPS.len())].to_string(),
                        title: Some(format!("{item} – {step}")),
                        start_ms: t,
                        end_ms: t + self.rng.random_range(1_000..60_000),
                        state: if self.rng.random_bool(0.85) {
                            ActivityState::Active
                        } else {
                            ActivityState::Idle
                        },
                        item_id: Some(item),
                        step: Some(step),
                    })
                } else {
                    let action = match self.rng.random_range(0..4) {
                        0 => ItemAction::Started,
                        1 => ItemAction::Paused,
                        2 => ItemAction::Resumed,
                        _ => ItemAction::Completed,
                    };
                    EventBody::WorkItem(WorkItemEvent {
                        item_id: item,
                        action,
                        step: Some(step),
                        at_ms: t,
                        source: ItemSource::App,
                    })
                };
                self.seq += 1;
                Event {
                    seq: self.seq,
                    id: uuid::Builder::from_random_bytes(self.rng.random()).into_uuid(),
                    body,
                }
            })
            .collect();
        Batch {
            protocol: PROTOCOL_VERSION,
            device_id: self.device.device_id,
            events,
        }
    }

    /// Paced: one batch every `interval` (later if the last was slow); the same batch is resent
    /// after an error. Bounded by `clock.end`.
    async fn run(mut self) {
        let end = self.clock.end;
        let mut next = self.clock.start + self.interval.mul_f64(self.rng.random::<f64>());
        let mut pending: Option<(Vec<u8>, usize)> = None;
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            let (body, events) = match pending.take() {
                Some(p) => p,
                None => {
                    let batch = self.batch();
                    match encode(&batch) {
                        Ok(body) => (body, batch.events.len()),
                        Err(_) => return,
                    }
                }
            };
            let sent = Instant::now();
            let outcome = post_batch(&self.client, &self.url, &self.device, body.clone()).await;
            let done = Instant::now();
            match outcome {
                Ok(StatusCode::OK) => {
                    self.stats
                        .acked_events
                        .fetch_add(events as u64, Ordering::Relaxed);
                    if done >= self.clock.window_start && done <= end {
                        self.stats
                            .window_events
                            .fetch_add(events as u64, Ordering::Relaxed);
                        self.stats.window_requests.fetch_add(1, Ordering::Relaxed);
                        let us = (done - sent).as_micros().min(u128::from(u32::MAX)) as u32;
                        self.stats
                            .latencies_us
                            .lock()
                            .expect("not poisoned")
                            .push(us);
                    }
                    next = (next + self.interval).max(done);
                }
                other => {
                    let key = match other {
                        Ok(s) => s.as_u16().to_string(),
                        Err(e) => transport_kind(&e).to_string(),
                    };
                    *self
                        .stats
                        .errors
                        .lock()
                        .expect("not poisoned")
                        .entry(key)
                        .or_default() += 1;
                    pending = Some((body, events));
                    next = done + Duration::from_secs(1);
                }
            }
        }
    }
}

// -----------------------------------------------------------------------------------------
// ClickHouse probe: the lookup's own reads, straight to ClickHouse
// -----------------------------------------------------------------------------------------

/// Runs `sql` on ClickHouse, returns how long it took in ms (answer included).
async fn timed(ch: &Db, sql: &str) -> Result<f64> {
    let started = Instant::now();
    ch.try_query_bytes(sql).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The ETA statistics scan the server repeats per tenant every 60 s, timed once.
async fn time_eta_scan(ch: &Db, tenant: &str) -> Result<f64> {
    let now = now_ms();
    let spans_from = now - 90 * DAY_MS;
    let t = quote(tenant);
    // Same shape as `handle_time_samples` in server/src/storage/items.rs.
    let sql = format!(
        "SELECT count() FROM (SELECT queue, handle_ms FROM (
           SELECT item_id, sumIf(end_ms - time_ms, state = 'active') AS handle_ms,
                  argMaxIf(action, time_ms, kind = 'work_item') AS last_action,
                  maxIf(time_ms, action = 'completed') AS completed_ms
           FROM (SELECT DISTINCT item_id, device_id, seq, kind, state, action, time_ms, end_ms
                 FROM item_lookup WHERE tenant_id = {t}
                   AND event_date >= toDate(toDateTime(intDiv({spans_from}, 1000))) AND time_ms >= {spans_from}
                   AND kind != '')
           GROUP BY item_id HAVING last_action = 'completed' AND completed_ms >= {}
           ORDER BY completed_ms DESC LIMIT 20000
         ) AS completed ANY LEFT JOIN (SELECT item_id, argMax(queue, updated_ms) AS queue FROM items
                          WHERE tenant_id = {t} GROUP BY item_id) AS registered USING item_id)",
        now - 30 * DAY_MS
    );
    timed(ch, &sql).await
}

/// ClickHouse's own CPU accounting of the server's queries in the window, by kind.
#[derive(Debug, Default, Clone)]
struct QueryCpu {
    /// kind → (queries, CPU µs): `item_read`, `audit_insert`, `ingest_insert`, `other`.
    kinds: BTreeMap<String, (u64, u64)>,
}

impl QueryCpu {
    fn get(&self, kind: &str) -> (u64, u64) {
        self.kinds.get(kind).copied().unwrap_or_default()
    }
}

/// Sums `UserTimeMicroseconds + SystemTimeMicroseconds` of the finished queries the server
/// started in `[from_ms, to_ms)`: the `clickhouse` crate's user agent without the harness's
/// product name (this generator's own probes use the same crate through the harness).
async fn query_log_cpu(ch: &Db, (from_ms, to_ms): (u64, u64)) -> Result<QueryCpu> {
    ch.try_query("SYSTEM FLUSH LOGS").await?;
    let sql = format!(
        "SELECT multiIf(query LIKE 'INSERT INTO events%', 'ingest_insert',
                        query LIKE 'INSERT INTO audit_log%', 'audit_insert',
                        query LIKE '%FROM item_lookup%', 'item_read', 'other') AS kind,
                count(),
                sum(arraySum(arrayMap((n, v) -> (n = 'UserTimeMicroseconds' OR n = 'SystemTimeMicroseconds') * v,
                                      ProfileEvents.Names, ProfileEvents.Values)))
         FROM system.query_log
         WHERE type = 2 AND http_user_agent LIKE '%clickhouse-rs/%'
           AND http_user_agent NOT LIKE '%{harness}/%'
           AND event_date >= toDate(toDateTime({from_s})) AND query_start_time >= toDateTime({from_s})
           AND query_start_time < toDateTime({to_s})
         GROUP BY kind FORMAT TSV",
        from_s = from_ms / 1000,
        to_s = to_ms / 1000,
        harness = backlight_e2e::harness::clickhouse::PRODUCT,
    );
    let text = ch.try_query(&sql).await?;
    let mut cpu = QueryCpu::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let [kind, n, us] = f[..] {
            cpu.kinds
                .insert(kind.to_string(), (n.parse()?, us.parse()?));
        }
    }
    if cpu.kinds.is_empty() {
        bail!("no query of the server in the window: is log_queries on?");
    }
    Ok(cpu)
}

#[derive(Default, Debug)]
struct Probes {
    /// The lookup's own read of `item_lookup` for one item, straight to ClickHouse.
    lookup_ms: Vec<f64>,
    /// Active parts of `item_lookup`, one sample per probe: a lookup reads a granule of every
    /// part whose key range may hold the item, so this count is its cost.
    parts: Vec<f64>,
    failures: u64,
}

async fn probe_clickhouse(
    ch: Db,
    tenant: String,
    prefix: String,
    items: u64,
    rate: f64,
    clock: Arc<Clock>,
) -> Probes {
    let mut probes = Probes::default();
    let mut rng = StdRng::seed_from_u64(now_ms() ^ 0x9E37);
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut next = clock.window_start;
    let t = quote(&tenant);
    while next < clock.end {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let id = quote(&item_id(&prefix, rng.random_range(0..items)));
        let lookup = format!(
            "SELECT item_id, row FROM item_lookup WHERE tenant_id = {t} AND item_id = {id} \
             LIMIT 20000 SETTINGS max_threads = 1 FORMAT RowBinary"
        );
        match timed(&ch, &lookup).await {
            Ok(ms) => probes.lookup_ms.push(ms),
            Err(_) => probes.failures += 1,
        }
        let parts = ch
            .try_query(
                "SELECT count() FROM system.parts \
                 WHERE active AND database = currentDatabase() AND table = 'item_lookup' FORMAT TSV",
            )
            .await
            .ok()
            .and_then(|t| t.trim().parse().ok());
        match parts {
            Some(p) => probes.parts.push(p),
            None => probes.failures += 1,
        }
    }
    probes
}

// -----------------------------------------------------------------------------------------
// /proc and /metrics
// -----------------------------------------------------------------------------------------

/// The server's `backlight_http_request_seconds` sum and count for the lookup route, its
/// audit rows and its lookup read batches (how many lookups share one ClickHouse query).
#[derive(Clone, Copy, Debug, Default)]
struct ServerMetrics {
    lookup_seconds: f64,
    lookup_count: f64,
    audit_rows: f64,
    batched_lookups: f64,
    batches: f64,
}

impl ServerMetrics {
    fn of(metrics: &Metrics) -> ServerMetrics {
        let lookups = |name| metrics.sum_where(name, "route=\"/v1/items/{id}\"");
        ServerMetrics {
            lookup_seconds: lookups("backlight_http_request_seconds_sum"),
            lookup_count: lookups("backlight_http_request_seconds_count"),
            audit_rows: metrics.sum("backlight_audit_rows_written_total"),
            batched_lookups: metrics.sum("backlight_item_read_batch_size_sum"),
            batches: metrics.sum("backlight_item_read_batch_size_count"),
        }
    }
}

async fn report_progress(
    results: Arc<Mutex<LookupResults>>,
    ingest: Arc<IngestStats>,
    clock: Arc<Clock>,
) {
    let mut last = (Instant::now(), 0u64, 0u64);
    while Instant::now() < clock.end {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let now = Instant::now();
        let done = results.lock().expect("not poisoned").completed;
        let acked = ingest.acked_events.load(Ordering::Relaxed);
        let secs = (now - last.0).as_secs_f64();
        eprintln!(
            "t={:>5.1}s  {:<7}  {:>6.0} lookups/s  {:>7.0} ingest events/s",
            (now - clock.start).as_secs_f64(),
            if now < clock.window_start {
                "warm-up"
            } else {
                "window"
            },
            (done - last.1) as f64 / secs,
            (acked - last.2) as f64 / secs
        );
        last = (now, done, acked);
    }
}

// -----------------------------------------------------------------------------------------
// The report
// -----------------------------------------------------------------------------------------

struct Report<'a> {
    results: LookupResults,
    window_s: f64,
    ingest: &'a IngestStats,
    rss: (u64, u64),
    cpu: CpuUse,
    metrics: Option<(ServerMetrics, ServerMetrics)>,
    probes: Option<Probes>,
    eta_scan_ms: Option<f64>,
    setup_secs: Option<f64>,
    /// Milliseconds and status of the lookup made before the clock started.
    first_lookup: (f64, String),
    query_cpu: Option<QueryCpu>,
}

fn quantiles_ms(mut us: Vec<u32>) -> serde_json::Value {
    us.sort_unstable();
    let q = |p| nearest_rank(&us, p).map(|v| (v / 10.0).round() / 100.0);
    json!({
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999),
        "max": us.last().map(|&v| (f64::from(v) / 10.0).round() / 100.0),
        "mean": (!us.is_empty()).then(|| (us.iter().map(|&v| f64::from(v)).sum::<f64>() / us.len() as f64 / 10.0).round() / 100.0),
        "count": us.len(),
    })
}

fn float_quantiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let q = |p| nearest_rank(&v, p).map(|x| (x * 100.0).round() / 100.0);
    json!({"p50": q(0.5), "p99": q(0.99), "max": v.last().map(|x| (x * 100.0).round() / 100.0), "count": v.len()})
}

fn print_report(args: &Args, server: &str, r: Report<'_>) {
    let ok = r.results.ok_latencies_us.len() as u64;
    let errors_total: u64 = r.results.errors.values().sum();
    let achieved = ok as f64 / r.window_s;
    let offered = (r.results.send_lag_us.len() as f64) / r.window_s;
    let mut all = r.results.ok_latencies_us.clone();
    all.extend_from_slice(&r.results.error_latencies_us);
    let latency = quantiles_ms(all);
    let ok_latency = quantiles_ms(r.results.ok_latencies_us.clone());
    let mut lag = r.results.send_lag_us.clone();
    lag.sort_unstable();
    let lag_ms = |q| nearest_rank(&lag, q).map_or(0.0, |v| v / 1000.0);
    let ingest_latency = quantiles_ms(std::mem::take(
        &mut *r.ingest.latencies_us.lock().expect("not poisoned"),
    ));
    let ingest_window = r.ingest.window_events.load(Ordering::Relaxed) as f64 / r.window_s;
    let ingest_errors = r.ingest.errors.lock().expect("not poisoned").clone();
    let server_mean_ms = r.metrics.and_then(|(a, b)| {
        let n = b.lookup_count - a.lookup_count;
        (n > 0.0).then(|| (b.lookup_seconds - a.lookup_seconds) / n * 1000.0)
    });
    let audit_rows_per_s = r
        .metrics
        .map(|(a, b)| (b.audit_rows - a.audit_rows) / r.window_s);
    let batches = r.metrics.and_then(|(a, b)| {
        let n = b.batches - a.batches;
        (n > 0.0).then(|| (n / r.window_s, (b.batched_lookups - a.batched_lookups) / n))
    });
    // Whole seconds of query start times: the window the query log covers.
    let query_cpu = r.query_cpu.as_ref().map(|q| {
        let per_lookup = |us: u64| (us as f64 / 1000.0 / ok.max(1) as f64 * 1000.0).round() / 1000.0;
        let (reads, read_us) = q.get("item_read");
        let (audits, audit_us) = q.get("audit_insert");
        let (others, other_us) = q.get("other");
        let (inserts, insert_us) = q.get("ingest_insert");
        json!({
            "item_read": {"queries": reads, "cpu_ms_per_lookup": per_lookup(read_us),
                          "cpu_ms_per_query": (read_us as f64 / 1000.0 / reads.max(1) as f64 * 1000.0).round() / 1000.0},
            "audit_insert": {"queries": audits, "cpu_ms_per_lookup": per_lookup(audit_us)},
            "other": {"queries": others, "cpu_ms_per_lookup": per_lookup(other_us)},
            "lookup_total_cpu_ms_per_lookup": per_lookup(read_us + audit_us + other_us),
            "ingest_insert": {"queries": inserts, "cpu_cores": insert_us as f64 / 1e6 / r.window_s},
        })
    });
    let probes = r.probes.map(|p| {
        json!({
            "item_lookup_ms": float_quantiles(p.lookup_ms),
            "item_lookup_parts": float_quantiles(p.parts),
            "failures": p.failures,
        })
    });
    let errors = if r.results.errors.is_empty() {
        "none".to_string()
    } else {
        r.results
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let f = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .map_or("?".into(), |x| format!("{x:.1}"))
    };
    let c = |x: Option<f64>| x.map_or("?".to_string(), |v| format!("{v:.2}"));
    let mb = |kb: u64| kb as f64 / 1024.0;

    println!("== Backlight status lookup benchmark {}", args.label);
    println!(
        "server          {server} (pid {})",
        args.watched
            .server_pid
            .map_or("?".into(), |p| p.to_string())
    );
    if let Some(s) = r.setup_secs {
        println!(
            "setup           {} items registered and given histories in {s:.1} s",
            args.items
        );
    }
    println!(
        "lookups         open loop at {:.0}/s offered ({offered:.0}/s scheduled in the window), {:.0} s window after {:.0} s warm-up, {} random registered ids",
        args.rate,
        r.window_s,
        args.warmup.as_secs_f64(),
        args.items
    );
    println!(
        "achieved        {achieved:.1} answered 200/s ({ok} in the window; mean body {:.0} bytes)",
        r.results.body_bytes as f64 / ok.max(1) as f64
    );
    println!(
        "latency         p50 {} ms  p90 {} ms  p99 {} ms  p99.9 {} ms  max {} ms  (from the scheduled time, all answers)",
        f(&latency, "p50"),
        f(&latency, "p90"),
        f(&latency, "p99"),
        f(&latency, "p99_9"),
        f(&latency, "max")
    );
    println!(
        "errors          {errors} (of {} scheduled in the window)",
        r.results.send_lag_us.len()
    );
    println!(
        "generator lag   send after schedule: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lag_ms(0.5),
        lag_ms(0.99),
        lag_ms(1.0)
    );
    if let Some(ms) = server_mean_ms {
        println!(
            "server time     mean {ms:.2} ms per lookup (its own /metrics, route /v1/items/{{id}})"
        );
    }
    if let Some(a) = audit_rows_per_s {
        println!("audit           {a:.0} rows/s written");
    }
    if let Some((per_s, size)) = batches {
        println!(
            "read batches    {per_s:.0}/s, {size:.2} lookups per batch (one ClickHouse query each)"
        );
    }
    if let Some(p) = &probes {
        println!(
            "clickhouse      direct probe ({:.0}/s): item_lookup read p50 {} ms p99 {} ms max {} ms; failures {}",
            args.probe_rate,
            f(&p["item_lookup_ms"], "p50"),
            f(&p["item_lookup_ms"], "p99"),
            f(&p["item_lookup_ms"], "max"),
            p["failures"]
        );
        println!(
            "clickhouse      active parts: item_lookup p50 {} max {}",
            f(&p["item_lookup_parts"], "p50"),
            f(&p["item_lookup_parts"], "max"),
        );
    }
    if let Some(q) = &query_cpu {
        println!(
            "clickhouse cpu  per lookup (system.query_log, user+system): {} ms in all = item reads {} ms ({} queries, {} ms each) + audit {} ms + other {} ms; ingest INSERTs {:.2} cores ({} queries)",
            q["lookup_total_cpu_ms_per_lookup"],
            q["item_read"]["cpu_ms_per_lookup"],
            q["item_read"]["queries"],
            q["item_read"]["cpu_ms_per_query"],
            q["audit_insert"]["cpu_ms_per_lookup"],
            q["other"]["cpu_ms_per_lookup"],
            q["ingest_insert"]["cpu_cores"].as_f64().unwrap_or(0.0),
            q["ingest_insert"]["queries"],
        );
    }
    println!(
        "first lookup    {} after {:.0} ms (before the clock; computes the tenant's ETA statistics when cold)",
        r.first_lookup.1, r.first_lookup.0
    );
    if let Some(ms) = r.eta_scan_ms {
        println!("eta scan        {ms:.0} ms (the per-tenant ETA statistics query, repeated every 60 s by the server)");
    }
    if args.with_ingest {
        println!(
            "ingest          {ingest_window:.0} events/s acknowledged in the window ({:.0} offered, {} agents, {} events/batch); p50 {} ms p99 {} ms; errors {:?}",
            args.ingest_rate,
            args.ingest_agents,
            args.ingest_batch_events,
            f(&ingest_latency, "p50"),
            f(&ingest_latency, "p99"),
            ingest_errors
        );
    }
    println!(
        "server RSS      peak {:.1} MB (sampled every {} ms; VmHWM {:.1} MB)",
        mb(r.rss.0),
        RSS_SAMPLE_EVERY.as_millis(),
        mb(r.rss.1)
    );
    println!(
        "cpu (cores)     server {}  clickhouse {}  generator {}  machine busy {} of {} (all share the machine)",
        c(r.cpu.server),
        c(r.cpu.clickhouse),
        c(r.cpu.generator),
        c(r.cpu.machine_busy),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let slow = &r.results.slow_per_second;
    println!(
        "over 20 ms      {} answers; per second of the window: {}",
        slow.iter().sum::<u32>(),
        slow.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let line = json!({
        "mode": "lookup",
        "label": args.label,
        "with_ingest": args.with_ingest,
        "items": args.items,
        "rate_offered": args.rate,
        "lookups_per_s": (achieved * 10.0).round() / 10.0,
        "latency_ms": latency,
        "ok_latency_ms": ok_latency,
        "errors": r.results.errors,
        "errors_total": errors_total,
        "generator_lag_ms": {"p50": lag_ms(0.5), "p99": lag_ms(0.99), "max": lag_ms(1.0)},
        "server_mean_ms": server_mean_ms,
        "audit_rows_per_s": audit_rows_per_s,
        "read_batches_per_s": batches.map(|b| b.0),
        "lookups_per_batch": batches.map(|b| b.1),
        "clickhouse_probe": probes,
        "clickhouse_query_cpu": query_cpu,
        "eta_scan_ms": r.eta_scan_ms,
        "first_lookup": {"ms": r.first_lookup.0, "status": r.first_lookup.1},
        "ingest_events_per_s": args.with_ingest.then_some(ingest_window.round()),
        "ingest_latency_ms": args.with_ingest.then_some(ingest_latency),
        "ingest_errors": ingest_errors,
        "server_peak_rss_mb": (mb(r.rss.0) * 10.0).round() / 10.0,
        "slow_per_second": slow,
        "cpu_cores": {"server": r.cpu.server, "clickhouse": r.cpu.clickhouse, "generator": r.cpu.generator, "machine_busy": r.cpu.machine_busy},
    });
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_and_ingest_batches_pass_the_servers_checks() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seq = 0;
        let mut events = Vec::new();
        let now = now_ms();
        for i in 0..200 {
            history(&mut rng, &mut seq, &item_id("LKP", i), now, &mut events);
        }
        let batch = Batch {
            protocol: PROTOCOL_VERSION,
            device_id: Uuid::new_v4(),
            events,
        };
        backlight_shared::validate::validate_batch(&batch, now).unwrap();
        let body = encode(&batch).unwrap();
        let decoded = backlight_server::ingest::decode::decode_body(Some("zstd"), &body).unwrap();
        assert_eq!(decoded, batch);
    }
}
