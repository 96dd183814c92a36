//! `backlight-loadgen`: the ingest benchmark (a measuring tool, not a timed test).
//!
//! Three modes:
//!
//! - **load** (default): enrolls `--agents` devices with `--enrollment-key`, then drives them as
//!   concurrent simulated agents against a running server with real HTTP, real JSON batches
//!   and real zstd (level 3). Each agent keeps its own sequence counter, resends the same batch
//!   after a 503 (honouring `Retry-After`) or a transport error, and by default sends its next
//!   batch as soon as the previous one is acknowledged (closed loop: the server's capacity is
//!   what is measured); `--rate` paces the fleet to a fixed offered load instead. It reports
//!   the acknowledged events/s over the measurement window, request latency, errors by status,
//!   the server's peak RSS (sampled from `/proc` every 200 ms), where the CPU went, and checks
//!   the acknowledged count against `SELECT count() FROM events FINAL` in ClickHouse.
//! - **baseline** (`--baseline`): writes the same kind of rows (built by the server's own
//!   `EventRow::new`) to a file and inserts them straight into a copy of the `events` table with
//!   `clickhouse-client` (RowBinary or TSV on stdin, `--batch-rows`-row blocks), `--repeat`
//!   times: the ceiling the server is compared with.
//! - **profile** (`--profile-stages`): times each stage of the ingest path on one core, in
//!   process, with the server's own code (decompress, JSON parse, validate, row building), to
//!   tell which stage costs what per event.
//!
//! Every mode prints plain text, then one final line of JSON for scripts.
//! Everything is loopback-only and bounded in time: the process stops by itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backlight_e2e::loadkit::args::Watched;
use backlight_e2e::loadkit::clickhouse::tsv_counters;
use backlight_e2e::loadkit::procfs::{sample_memory, CpuSample, CpuUse, Memory};
use backlight_e2e::loadkit::server::{enroll_all, wait_healthy, Device, Metrics};
use backlight_e2e::loadkit::{raise_fd_limit, stats::rounded_position};
use backlight_e2e::Db;
use backlight_server::cli::parse_duration;
use backlight_server::storage::events::{EncodedRows, EventRow};
use backlight_shared::api::{IngestResponse, INGEST_PATH};
use backlight_shared::batch::Batch;
use backlight_shared::event::{
    ActivitySpan, ActivityState, AgentHealth, Event, EventBody, ItemAction, ItemSource,
    WorkItemEvent,
};
use backlight_shared::{now_ms, PROTOCOL_VERSION};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// The tenant the benchmark's rows belong to in baseline and profile modes.
const BENCH_TENANT: &str = "bench";
/// zstd level agents use.
const ZSTD_LEVEL: i32 = 3;
/// Interval of the RSS sampler.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Interval of the progress line on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Longest a baseline `clickhouse-client` run may take before it is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a ClickHouse HTTP query (the counts) may take.
const CLICKHOUSE_QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// What ClickHouse holds, once copies collapsed: what the run is checked against.
const EVENTS_FINAL: &str = "SELECT count() FROM events FINAL";
/// Upper bounds that keep a mistyped flag from turning into a runaway process.
const MAX_AGENTS: usize = 20_000;
const MAX_RUN: Duration = Duration::from_secs(600);
const MAX_BASELINE_ROWS: u64 = 50_000_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "backlight-loadgen",
    about = "Backlight ingest benchmark: simulated agents, ClickHouse baseline, stage profile"
)]
struct Args {
    /// Insert rows straight into ClickHouse with clickhouse-client instead (the ceiling).
    #[arg(long, conflicts_with = "profile_stages")]
    baseline: bool,
    /// Time each stage of the ingest path in process, on one core.
    #[arg(long)]
    profile_stages: bool,

    /// The server's base URL (load mode).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Enrollment key for the tenant the simulated devices join (load mode).
    #[arg(long, env = "BACKLIGHT_ENROLLMENT_KEY", hide_env_values = true)]
    enrollment_key: Option<String>,
    /// Simulated agents (each one an enrolled device with its own connection and seq counter).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 200)]
    batch_events: usize,
    /// Length of the measurement window (after the warm-up).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the window starts, not counted in the rates.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,
    /// Offered load in events/s for the whole fleet; without it each agent sends its next batch
    /// as soon as the previous one is acknowledged (closed loop: measures capacity).
    #[arg(long)]
    rate: Option<f64>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Client-side timeout of one request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    #[command(flatten)]
    watched: Watched,
    /// A label copied into the JSON line (e.g. the run number).
    #[arg(long, default_value = "")]
    label: String,

    /// Baseline: rows to insert (use the load run's acknowledged count for a like-for-like ceiling).
    #[arg(long, default_value_t = 2_000_000)]
    rows: u64,
    /// Baseline: rows per INSERT (one clickhouse-client process each, like one group commit).
    #[arg(long, default_value_t = 100_000)]
    batch_rows: u64,
    /// Baseline: repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Baseline: input format fed to clickhouse-client.
    #[arg(long, value_enum, default_value_t = Format::RowBinary)]
    format: Format,
    /// Baseline: the clickhouse-client executable.
    #[arg(long, default_value = "clickhouse-client")]
    clickhouse_client: PathBuf,
    /// Baseline: ClickHouse's native TCP port on 127.0.0.1 (for clickhouse-client).
    #[arg(long)]
    clickhouse_tcp_port: Option<u16>,
    /// Baseline: directory for the generated data file (a temporary directory by default).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    #[value(name = "rowbinary")]
    RowBinary,
    #[value(name = "tsv")]
    Tsv,
}

impl Format {
    fn clickhouse_name(self) -> &'static str {
        match self {
            Format::RowBinary => "RowBinary",
            Format::Tsv => "TabSeparated",
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.agents == 0 || args.agents > MAX_AGENTS {
        bail!("--agents must be between 1 and {MAX_AGENTS}");
    }
    if args.batch_events == 0
        || args.batch_events > backlight_shared::batch::limits::MAX_EVENTS_PER_BATCH
    {
        bail!("--batch-events must be between 1 and the protocol's limit");
    }
    if args.duration + args.warmup > MAX_RUN || args.duration.is_zero() {
        bail!("--warmup + --duration must be positive and at most {MAX_RUN:?}");
    }
    if args.rows == 0
        || args.rows > MAX_BASELINE_ROWS
        || args.batch_rows == 0
        || args.repeat == 0
        || args.repeat > 10
    {
        bail!("--rows must be 1..={MAX_BASELINE_ROWS}, --batch-rows positive, --repeat 1..=10");
    }
    if args.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        bail!("--rate must be a positive number of events/s");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = if args.profile_stages {
        profile_stages(&args)
    } else if args.baseline {
        runtime.block_on(baseline(&args))
    } else {
        runtime.block_on(load(&args))
    };
    // Requests still open after their deadline must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

// -----------------------------------------------------------------------------------------
// Realistic events
// -----------------------------------------------------------------------------------------

const APPS: &[&str] = &[
    "claims-desk",
    "outlook",
    "chrome",
    "excel",
    "teams",
    "sap-gui",
    "winword",
    "citrix-receiver",
    "salesforce",
    "slack",
    "gnome-terminal",
    "acrobat",
];
const STEPS: &[&str] = &[
    "intake",
    "triage",
    "assessment",
    "approval",
    "payment",
    "review",
];
const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;

/// One simulated desktop: what it is doing, its clock and its sequence counter.
struct Generator {
    rng: StdRng,
    /// The last sequence number assigned (the first event gets 1).
    seq: u64,
    /// The desktop's own clock, advancing by each span; wraps back a week when it reaches now.
    clock_ms: u64,
    item: String,
    step: usize,
    app: usize,
    batches: u64,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let clock_ms = now_ms() - WEEK_MS + rng.random_range(0..3_600_000);
        let item = format!("CLM-{:06}", rng.random_range(0..1_000_000));
        Generator {
            rng,
            seq: 0,
            clock_ms,
            item,
            step: 0,
            app: 0,
            batches: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The start of a span of `ms` that ends at least a minute before now. The wrap comes
    /// first: checked after the step, a 15-minute span taken just below the limit ended up to
    /// 14 minutes in the future, which the server refuses (422: more than 10 minutes ahead); an
    /// agent sending thousands of events a second wraps its week every few seconds.
    fn tick(&mut self, ms: u64) -> u64 {
        if self.clock_ms + ms + 60_000 > now_ms() {
            self.clock_ms = now_ms() - WEEK_MS;
        }
        let at = self.clock_ms;
        self.clock_ms += ms;
        at
    }

    fn span(&mut self) -> EventBody {
        if self.rng.random_bool(0.3) {
            self.app = self.rng.random_range(0..APPS.len());
        }
        let length = if self.rng.random_bool(0.8) {
            self.rng.random_range(1_000..60_000)
        } else {
            self.rng.random_range(60_000..900_000)
        };
        let start_ms = self.tick(length);
        let app = APPS[self.app];
        let on_item = self.rng.random_bool(0.6);
        let title = match self.rng.random_range(0..10) {
            0..5 => Some(format!("{} – {} – {app}", self.item, STEPS[self.step])),
            5..8 => Some(format!("{:032x}", self.rng.random::<u128>())),
            _ => None,
        };
        let state = match self.rng.random_range(0..20) {
            0..16 => ActivityState::Active,
            16..19 => ActivityState::Idle,
            _ => ActivityState::Locked,
        };
        EventBody::ActivitySpan(ActivitySpan {
            app: app.to_string(),
            title,
            start_ms,
            end_ms: start_ms + length,
            state,
            item_id: on_item.then(|| self.item.clone()),
            step: (on_item && self.rng.random_bool(0.7)).then(|| STEPS[self.step].to_string()),
        })
    }

    fn work_item(&mut self) -> EventBody {
        let action = match self.rng.random_range(0..10) {
            0..3 => ItemAction::Started,
            3..5 => ItemAction::Paused,
            5..7 => ItemAction::Resumed,
            7..9 => ItemAction::Completed,
            _ => ItemAction::Transferred,
        };
        if action == ItemAction::Started {
            self.item = format!("CLM-{:06}", self.rng.random_range(0..1_000_000));
            self.step = 0;
        } else if self.rng.random_bool(0.3) {
            self.step = (self.step + 1) % STEPS.len();
        }
        let source = match self.rng.random_range(0..10) {
            0..6 => ItemSource::Rule,
            6..9 => ItemSource::App,
            _ => ItemSource::Manual,
        };
        let pause = self.rng.random_range(0..2_000);
        EventBody::WorkItem(WorkItemEvent {
            item_id: self.item.clone(),
            action,
            step: self
                .rng
                .random_bool(0.8)
                .then(|| STEPS[self.step].to_string()),
            at_ms: self.tick(pause),
            source,
        })
    }

    fn health(&mut self) -> EventBody {
        EventBody::Health(AgentHealth {
            agent_version: "0.1.0".into(),
            spool_depth: self.rng.random_range(0..500),
            events_dropped: 0,
            events_rejected: 0,
            clock_offset_ms: self.rng.random_range(-250..250),
            at_ms: self.tick(0),
            session: None,
        })
    }

    /// The next batch: mostly activity spans, a quarter work-item events, and a health report
    /// in one batch out of ten.
    fn batch(&mut self, device_id: Uuid, events: usize) -> Batch {
        self.batches += 1;
        let health_at = (self.batches % 10 == 1).then(|| self.rng.random_range(0..events));
        let events = (0..events)
            .map(|i| {
                let body = if health_at == Some(i) {
                    self.health()
                } else if self.rng.random_bool(0.75) {
                    self.span()
                } else {
                    self.work_item()
                };
                Event {
                    seq: self.next_seq(),
                    id: uuid::Builder::from_random_bytes(self.rng.random()).into_uuid(),
                    body,
                }
            })
            .collect();
        Batch {
            protocol: PROTOCOL_VERSION,
            device_id,
            events,
        }
    }
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// The body an agent sends: JSON, zstd level 3 (one compressor context per thread, not per agent).
fn encode_batch(batch: &Batch) -> Result<(Vec<u8>, usize)> {
    let json = serde_json::to_vec(batch)?;
    let compressed = COMPRESSOR.with(|cell| -> Result<Vec<u8>> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        Ok(slot.as_mut().expect("just set").compress(&json)?)
    })?;
    Ok((compressed, json.len()))
}

// -----------------------------------------------------------------------------------------
// Load mode
// -----------------------------------------------------------------------------------------

/// What one agent saw.
#[derive(Default)]
struct AgentResult {
    /// Latency of acknowledged requests that completed inside the window, in µs.
    latencies_us: Vec<u32>,
    window_events: u64,
    window_requests: u64,
    acked_events: u64,
    acked_requests: u64,
    /// Attempts that failed, by HTTP status or transport error kind.
    errors: BTreeMap<String, u64>,
    /// Events in batches the server refused for good (4xx other than 408/429): a bug if > 0.
    refused_events: u64,
    /// Events of a batch still unacknowledged when the run stopped.
    unacked_at_end: u64,
    compressed_bytes: u64,
    json_bytes: u64,
}

struct Timeline {
    start: Instant,
    window_start: Instant,
    end: Instant,
}

async fn load(args: &Args) -> Result<()> {
    let key = args
        .enrollment_key
        .clone()
        .context("--enrollment-key is required (backlight-server admin enrollment-key create --tenant bench)")?;
    let server = args.server.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.agents + 16)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .timeout(args.request_timeout)
        .tcp_nodelay(true)
        .build()?;
    wait_healthy(&client, &server).await?;

    let enroll_started = Instant::now();
    let devices = enroll_all(
        &client,
        &server,
        &key,
        args.agents,
        args.enroll_concurrency,
        |i| format!("bench-desktop-{i:05}"),
        "0.1.0-loadgen",
    )
    .await?;
    let enroll_secs = enroll_started.elapsed().as_secs_f64();
    eprintln!("enrolled {} devices in {enroll_secs:.1} s", devices.len());

    let clickhouse = args.watched.clickhouse(CLICKHOUSE_QUERY_TIMEOUT)?;
    let stored_before = match &clickhouse {
        Some(ch) => Some(ch.try_count(EVENTS_FINAL).await?),
        None => None,
    };

    let start = Instant::now();
    let timeline = Arc::new(Timeline {
        start,
        window_start: start + args.warmup,
        end: start + args.warmup + args.duration,
    });
    let acked_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_memory(
        [args.watched.server_pid, args.watched.clickhouse_pid],
        RSS_SAMPLE_EVERY,
        stop.clone(),
        timeline.end + args.request_timeout + Duration::from_secs(10),
    ));
    let progress = tokio::spawn(report_progress(acked_total.clone(), timeline.clone()));

    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.agents as f64 * args.batch_events as f64 / rate));
    let url = format!("{server}{INGEST_PATH}");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, device) in devices.into_iter().enumerate() {
        let agent = Agent {
            client: client.clone(),
            url: url.clone(),
            device,
            generator: Generator::new((0x5EED_0000 + i as u64) ^ now_ms()),
            batch_events: args.batch_events,
            interval,
            timeline: timeline.clone(),
            acked_total: acked_total.clone(),
        };
        tasks.spawn(agent.run());
    }

    // CPU and server counters over exactly the window.
    tokio::time::sleep_until(timeline.window_start.into()).await;
    let cpu_before = CpuSample::take(args.watched.server_pid, args.watched.clickhouse_pid);
    let metrics_before = Metrics::scrape(&client, &server, args.watched.metrics_token.as_deref())
        .await
        .as_ref()
        .map(ServerMetrics::of);
    let ch_before = clickhouse_events(clickhouse.as_ref()).await;
    tokio::time::sleep_until(timeline.end.into()).await;
    let cpu_after = CpuSample::take(args.watched.server_pid, args.watched.clickhouse_pid);
    let metrics_after = Metrics::scrape(&client, &server, args.watched.metrics_token.as_deref())
        .await
        .as_ref()
        .map(ServerMetrics::of);
    let ch_after = clickhouse_events(clickhouse.as_ref()).await;
    let ch_work = ch_before.zip(ch_after).map(|(a, b)| {
        b.into_iter()
            .map(|(k, v)| {
                let before = a.get(&k).copied().unwrap_or(0);
                (k, v.saturating_sub(before))
            })
            .collect::<BTreeMap<_, _>>()
    });

    // Requests in flight finish (or time out) before anything is counted.
    let mut results = Vec::with_capacity(args.agents);
    let drain_deadline =
        tokio::time::Instant::now() + args.request_timeout + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(drain_deadline, tasks.join_next()).await {
            Ok(Some(Ok(result))) => results.push(result),
            Ok(Some(Err(e))) => eprintln!("an agent task failed: {e}"),
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "{} agents still busy after the drain deadline; aborting them",
                    tasks.len()
                );
                tasks.abort_all();
                break;
            }
        }
    }
    progress.abort();
    stop.store(true, Ordering::Relaxed);
    let memory = sampler.await.unwrap_or_default();

    let stored_after = match &clickhouse {
        Some(ch) => Some(ch.try_count(EVENTS_FINAL).await?),
        None => None,
    };

    let report = LoadReport::new(&results, &timeline, enroll_secs);
    let stored = stored_before
        .zip(stored_after)
        .map(|(b, a)| a.saturating_sub(b));
    report.print(
        args,
        &server,
        &Measured {
            stored,
            memory,
            cpu: cpu_before.delta(&cpu_after),
            metrics: metrics_before.zip(metrics_after),
            ch_work,
        },
    );
    Ok(())
}

struct Agent {
    client: reqwest::Client,
    url: String,
    device: Device,
    generator: Generator,
    batch_events: usize,
    interval: Option<Duration>,
    timeline: Arc<Timeline>,
    acked_total: Arc<AtomicU64>,
}

enum Attempt {
    Acked,
    /// Retry the same batch after this long.
    Retry(Duration),
    /// The server refused the batch for good.
    Refused,
}

impl Agent {
    async fn run(mut self) -> AgentResult {
        let mut result = AgentResult::default();
        let end = self.timeline.end;
        // Spread the fleet's first requests over the first second (or the pacing interval).
        let spread = self
            .interval
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(10));
        let mut next_send =
            self.timeline.start + spread.mul_f64(self.generator.rng.random::<f64>());
        let mut pending: Option<(Vec<u8>, usize, usize)> = None;
        let mut logged_refusals = 0;
        // Bounded: every pass either waits, sends or stops, and stops at `end`.
        while Instant::now() < end {
            if next_send > Instant::now() {
                if next_send >= end {
                    break;
                }
                tokio::time::sleep_until(next_send.into()).await;
            }
            let (body, events, json_len) = match pending.take() {
                Some(p) => p,
                None => {
                    let batch = self
                        .generator
                        .batch(self.device.device_id, self.batch_events);
                    match encode_batch(&batch) {
                        Ok((body, json_len)) => (body, batch.events.len(), json_len),
                        Err(e) => {
                            *result.errors.entry(format!("encode: {e}")).or_default() += 1;
                            break;
                        }
                    }
                }
            };
            let sent_at = Instant::now();
            let outcome = self
                .send(&body, events, &mut result, &mut logged_refusals)
                .await;
            let done_at = Instant::now();
            match outcome {
                Attempt::Acked => {
                    result.acked_events += events as u64;
                    result.acked_requests += 1;
                    result.compressed_bytes += body.len() as u64;
                    result.json_bytes += json_len as u64;
                    self.acked_total.fetch_add(events as u64, Ordering::Relaxed);
                    if done_at >= self.timeline.window_start && done_at <= end {
                        result.window_events += events as u64;
                        result.window_requests += 1;
                        let us = (done_at - sent_at).as_micros();
                        result
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    next_send = match self.interval {
                        Some(interval) => (next_send + interval).max(done_at),
                        None => done_at,
                    };
                }
                Attempt::Retry(after) => {
                    pending = Some((body, events, json_len));
                    next_send = done_at + after;
                }
                Attempt::Refused => {
                    result.refused_events += events as u64;
                    next_send = done_at + Duration::from_secs(1);
                }
            }
        }
        if let Some((_, events, _)) = pending {
            result.unacked_at_end += events as u64;
        }
        result
    }

    async fn send(
        &self,
        body: &[u8],
        events: usize,
        result: &mut AgentResult,
        logged: &mut u32,
    ) -> Attempt {
        let response = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, &self.device.bearer)
            .header(CONTENT_ENCODING, "zstd")
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                *result.errors.entry(kind.to_string()).or_default() += 1;
                return Attempt::Retry(Duration::from_secs(1));
            }
        };
        let status = response.status();
        if status == StatusCode::OK {
            return match response.json::<IngestResponse>().await {
                Ok(ack) if ack.accepted == events => Attempt::Acked,
                Ok(ack) => {
                    *result.errors.entry("short_ack".into()).or_default() += 1;
                    eprintln!("server acknowledged {} of {events} events", ack.accepted);
                    Attempt::Refused
                }
                Err(e) => {
                    let kind = if e.is_timeout() { "timeout" } else { "bad_ack" };
                    *result.errors.entry(kind.into()).or_default() += 1;
                    Attempt::Retry(Duration::from_secs(1))
                }
            };
        }
        *result
            .errors
            .entry(status.as_u16().to_string())
            .or_default() += 1;
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(60)));
        let body = response.text().await.unwrap_or_default();
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Attempt::Retry(retry_after.unwrap_or(Duration::from_secs(1)))
        } else {
            if *logged < 3 {
                *logged += 1;
                eprintln!("batch refused with {status}: {body}");
            }
            Attempt::Refused
        }
    }
}

async fn report_progress(acked: Arc<AtomicU64>, timeline: Arc<Timeline>) {
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < timeline.end {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let now = Instant::now();
        let total = acked.load(Ordering::Relaxed);
        let rate = (total - last.1) as f64 / (now - last.0).as_secs_f64();
        let phase = if now < timeline.window_start {
            "warm-up"
        } else {
            "window"
        };
        eprintln!(
            "t={:>5.1}s  {phase:<7}  {:>9.0} events/s acked  ({total} total)",
            (now - timeline.start).as_secs_f64(),
            rate
        );
        last = (now, total);
    }
}

// -----------------------------------------------------------------------------------------
// The server's own counters
// -----------------------------------------------------------------------------------------

#[derive(Clone, Copy, Default, Debug)]
struct ServerMetrics {
    insert_count: f64,
    insert_seconds: f64,
    insert_rows: f64,
    insert_failures: f64,
}

impl ServerMetrics {
    fn of(metrics: &Metrics) -> ServerMetrics {
        ServerMetrics {
            insert_count: metrics.sum("backlight_clickhouse_insert_seconds_count"),
            insert_seconds: metrics.sum("backlight_clickhouse_insert_seconds_sum"),
            insert_rows: metrics.sum("backlight_clickhouse_insert_rows_sum"),
            insert_failures: metrics.sum("backlight_clickhouse_insert_failures_total"),
        }
    }
}

/// ClickHouse's cumulative counters (`system.events`): queries, inserted and merged rows.
async fn clickhouse_events(ch: Option<&Db>) -> Option<BTreeMap<String, u64>> {
    const WANTED: [&str; 7] = [
        "Query",
        "SelectQuery",
        "InsertQuery",
        "InsertedRows",
        "Merge",
        "MergedRows",
        "MergedUncompressedBytes",
    ];
    let text = ch?
        .try_query("SELECT event, value FROM system.events")
        .await
        .ok()?;
    let mut events: BTreeMap<String, u64> = WANTED.iter().map(|k| (k.to_string(), 0)).collect();
    for (name, value) in tsv_counters(&text) {
        if let Some(slot) = events.get_mut(name) {
            *slot = value;
        }
    }
    Some(events)
}

// -----------------------------------------------------------------------------------------
// The load report
// -----------------------------------------------------------------------------------------

/// What was measured around the agents: storage, memory, CPU and both servers' counters.
struct Measured {
    /// Growth of `count() FROM events FINAL` over the run.
    stored: Option<u64>,
    /// Server, then ClickHouse.
    memory: [Memory; 2],
    cpu: CpuUse,
    /// The server's /metrics at the window's start and end.
    metrics: Option<(ServerMetrics, ServerMetrics)>,
    /// ClickHouse's `system.events` growth over the window.
    ch_work: Option<BTreeMap<String, u64>>,
}

struct LoadReport {
    agents: usize,
    window_s: f64,
    window_events: u64,
    window_requests: u64,
    acked_events: u64,
    acked_requests: u64,
    refused_events: u64,
    unacked_at_end: u64,
    errors: BTreeMap<String, u64>,
    latency_ms: Option<[f64; 5]>,
    avg_compressed: f64,
    avg_json: f64,
    enroll_secs: f64,
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    rounded_position(sorted, q).unwrap_or(0.0) / 1000.0
}

impl LoadReport {
    fn new(results: &[AgentResult], timeline: &Timeline, enroll_secs: f64) -> LoadReport {
        let mut latencies: Vec<u32> = results
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        let mut errors = BTreeMap::new();
        for (k, v) in results.iter().flat_map(|r| r.errors.iter()) {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        let sum = |f: fn(&AgentResult) -> u64| results.iter().map(f).sum::<u64>();
        let acked_requests = sum(|r| r.acked_requests);
        LoadReport {
            agents: results.len(),
            window_s: (timeline.end - timeline.window_start).as_secs_f64(),
            window_events: sum(|r| r.window_events),
            window_requests: sum(|r| r.window_requests),
            acked_events: sum(|r| r.acked_events),
            acked_requests,
            refused_events: sum(|r| r.refused_events),
            unacked_at_end: sum(|r| r.unacked_at_end),
            errors,
            latency_ms: (!latencies.is_empty()).then(|| {
                [
                    quantile(&latencies, 0.5),
                    quantile(&latencies, 0.9),
                    quantile(&latencies, 0.99),
                    f64::from(*latencies.last().expect("non-empty")) / 1000.0,
                    latencies.iter().map(|&x| f64::from(x)).sum::<f64>()
                        / latencies.len() as f64
                        / 1000.0,
                ]
            }),
            avg_compressed: sum(|r| r.compressed_bytes) as f64 / acked_requests.max(1) as f64,
            avg_json: sum(|r| r.json_bytes) as f64 / acked_requests.max(1) as f64,
            enroll_secs,
        }
    }

    fn print(&self, args: &Args, server: &str, measured: &Measured) {
        let Measured {
            stored,
            memory,
            cpu,
            metrics,
            ch_work,
        } = measured;
        let (stored, ch_work) = (*stored, ch_work.as_ref());
        let events_per_s = self.window_events as f64 / self.window_s;
        let requests_per_s = self.window_requests as f64 / self.window_s;
        let mode = match args.rate {
            Some(rate) => format!("paced at {rate:.0} events/s offered"),
            None => "closed loop (next batch as soon as the last is acknowledged)".into(),
        };
        let mb = |kb: u64| kb as f64 / 1024.0;
        let mut out = String::new();
        let _ = writeln!(out, "== Backlight ingest benchmark: load {}", args.label);
        let _ = writeln!(
            out,
            "server          {server} (pid {})",
            opt(args.watched.server_pid)
        );
        let _ = writeln!(
            out,
            "agents          {} enrolled in {:.1} s; batches of {} events (~{:.1} KB JSON, ~{:.1} KB zstd-{ZSTD_LEVEL}); {mode}",
            self.agents,
            self.enroll_secs,
            args.batch_events,
            self.avg_json / 1024.0,
            self.avg_compressed / 1024.0
        );
        let _ = writeln!(
            out,
            "window          {:.0} s after {:.0} s warm-up",
            self.window_s,
            args.warmup.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "acknowledged    {} events in the window = {events_per_s:.0} events/s ({requests_per_s:.0} requests/s)",
            self.window_events
        );
        // Every acknowledged event must be stored, once. A batch still unacknowledged at the
        // stop may be stored too: its INSERT can land after the server gave up waiting and
        // answered 503, and the agent's re-send is then stored once (ReplacingMergeTree).
        let confirmed = stored
            .map(|s| (self.acked_events..=self.acked_events + self.unacked_at_end).contains(&s));
        match stored {
            Some(s) => {
                let verdict = match (confirmed, s.saturating_sub(self.acked_events)) {
                    (Some(true), 0) => "match".to_string(),
                    (Some(true), extra) => format!(
                        "match: every acknowledged event stored, and {extra} of the {} unacknowledged at the stop",
                        self.unacked_at_end
                    ),
                    _ => "MISMATCH".to_string(),
                };
                let _ = writeln!(
                    out,
                    "confirmed       count() FINAL grew by {s}; events acknowledged over the whole run {} -> {verdict}",
                    self.acked_events,
                );
            }
            None => {
                let _ = writeln!(out, "confirmed       (no --clickhouse-url: not checked)");
            }
        }
        if let Some([p50, p90, p99, max, mean]) = self.latency_ms {
            let _ = writeln!(
                out,
                "latency         p50 {p50:.1} ms  p90 {p90:.1} ms  p99 {p99:.1} ms  max {max:.1} ms  (mean {mean:.1} ms; acknowledged requests)"
            );
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "errors          {errors}; refused events {}, unacknowledged at stop {}",
            self.refused_events, self.unacked_at_end
        );
        for (name, m) in ["server", "clickhouse"].iter().zip(memory) {
            if m.samples > 0 {
                let _ = writeln!(
                    out,
                    "{name:<15} peak RSS {:.1} MB sampled every {} ms (VmHWM {:.1} MB)",
                    mb(m.peak_rss_kb),
                    RSS_SAMPLE_EVERY.as_millis(),
                    mb(m.hwm_kb)
                );
            }
        }
        let c = |x: Option<f64>| x.map_or("?".to_string(), |v| format!("{v:.2}"));
        let other = match (cpu.machine_busy, cpu.server, cpu.clickhouse, cpu.generator) {
            (Some(m), Some(s), Some(ch), Some(l)) => Some((m - s - ch - l).max(0.0)),
            _ => None,
        };
        let _ = writeln!(
            out,
            "cpu (cores)     server {}  clickhouse {}  loadgen {}  other {}  machine busy {} of {}",
            c(cpu.server),
            c(cpu.clickhouse),
            c(cpu.generator),
            c(other),
            c(cpu.machine_busy),
            c(cpu.machine_cores)
        );
        let per_event = |cores: Option<f64>| {
            cores.map_or("?".to_string(), |c| {
                format!("{:.1}", c * 1e6 / events_per_s.max(1.0))
            })
        };
        let _ = writeln!(
            out,
            "cpu per event   server {} µs  clickhouse {} µs  loadgen {} µs",
            per_event(cpu.server),
            per_event(cpu.clickhouse),
            per_event(cpu.generator)
        );
        let inserts = metrics.map(|(a, b)| {
            let n = b.insert_count - a.insert_count;
            (
                n / cpu.seconds.max(1e-9),
                (b.insert_rows - a.insert_rows) / n.max(1.0),
                (b.insert_seconds - a.insert_seconds) / n.max(1.0) * 1000.0,
                b.insert_failures - a.insert_failures,
            )
        });
        if let Some((per_s, rows, ms, failures)) = inserts {
            let _ = writeln!(
                out,
                "clickhouse      {per_s:.1} INSERTs/s, {rows:.0} rows and {ms:.0} ms each on average, {failures} failed (server's /metrics)"
            );
        }
        if let Some(work) = ch_work {
            let get = |k: &str| work.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "clickhouse work {} queries in the window ({} SELECT, {} INSERT); {} rows inserted; {} merges rewrote {} rows",
                get("Query"),
                get("SelectQuery"),
                get("InsertQuery"),
                get("InsertedRows"),
                get("Merge"),
                get("MergedRows")
            );
        }
        print!("{out}");
        let [p50, p90, p99, max, mean] = self.latency_ms.unwrap_or_default();
        let line = json!({
            "mode": "load",
            "label": args.label,
            "agents": self.agents,
            "batch_events": args.batch_events,
            "rate_offered": args.rate,
            "window_s": self.window_s,
            "warmup_s": args.warmup.as_secs_f64(),
            "events_per_s": events_per_s.round(),
            "requests_per_s": requests_per_s.round(),
            "window_events": self.window_events,
            "acked_events": self.acked_events,
            "acked_requests": self.acked_requests,
            "stored_events": stored,
            "stored_matches_acked": confirmed,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max, "mean": mean},
            "errors": self.errors,
            "refused_events": self.refused_events,
            "unacked_at_end": self.unacked_at_end,
            "server_peak_rss_mb": (memory[0].samples > 0).then(|| mb(memory[0].peak_rss_kb)),
            "server_hwm_mb": (memory[0].samples > 0).then(|| mb(memory[0].hwm_kb)),
            "clickhouse_peak_rss_mb": (memory[1].samples > 0).then(|| mb(memory[1].peak_rss_kb)),
            "cpu_cores": {"server": cpu.server, "clickhouse": cpu.clickhouse, "loadgen": cpu.generator,
                          "machine_busy": cpu.machine_busy, "machine": cpu.machine_cores},
            "inserts_per_s": inserts.map(|i| i.0),
            "rows_per_insert": inserts.map(|i| i.1),
            "insert_ms": inserts.map(|i| i.2),
            "bytes_per_request": {"zstd": self.avg_compressed.round(), "json": self.avg_json.round()},
            "clickhouse_events": ch_work,
            "enroll_s": self.enroll_secs,
        });
        println!("{line}");
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("not given".into(), |v| v.to_string())
}

// -----------------------------------------------------------------------------------------
// Baseline mode: the same rows straight into ClickHouse with clickhouse-client
// -----------------------------------------------------------------------------------------

const BASELINE_TABLE: &str = "events_baseline";

async fn baseline(args: &Args) -> Result<()> {
    let url = args
        .watched
        .clickhouse_url
        .as_deref()
        .context("--baseline needs --clickhouse-url")?;
    let port = args
        .clickhouse_tcp_port
        .context("--baseline needs --clickhouse-tcp-port")?;
    let ch = args
        .watched
        .clickhouse(CLICKHOUSE_QUERY_TIMEOUT)?
        .context("--baseline needs --clickhouse-url")?;
    let version = ch.try_query("SELECT version()").await?.trim().to_string();

    let dir = match &args.work_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("loadgen-baseline")
            .tempdir_in(dir)?,
        None => tempfile::Builder::new()
            .prefix("loadgen-baseline")
            .tempdir()?,
    };
    let generated = Instant::now();
    let (files, bytes) = tokio::task::block_in_place(|| write_rows(dir.path(), args))?;
    eprintln!(
        "generated {} rows ({:.0} MB of {} in {} files of {} rows) in {:.1} s",
        args.rows,
        bytes as f64 / 1e6,
        args.format.clickhouse_name(),
        files.len(),
        args.batch_rows,
        generated.elapsed().as_secs_f64()
    );
    // What one clickhouse-client process costs without any data, part of every INSERT below.
    let startup = Instant::now();
    run_client(args, port, "SELECT 1", None).await?;
    let client_startup_ms = startup.elapsed().as_secs_f64() * 1000.0;

    let mut runs = Vec::new();
    for repetition in 1..=args.repeat {
        ch.try_query(&format!("DROP TABLE IF EXISTS {BASELINE_TABLE}"))
            .await?;
        ch.try_query(&format!("CREATE TABLE {BASELINE_TABLE} AS events"))
            .await?;
        let cpu_before = CpuSample::take(args.watched.server_pid, args.watched.clickhouse_pid);
        let insert = format!(
            "INSERT INTO {BASELINE_TABLE} FORMAT {}",
            args.format.clickhouse_name()
        );
        let started = Instant::now();
        for file in &files {
            run_client(args, port, &insert, Some(file)).await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_before.delta(&CpuSample::take(
            args.watched.server_pid,
            args.watched.clickhouse_pid,
        ));
        let stored = ch
            .try_count(&format!("SELECT count() FROM {BASELINE_TABLE}"))
            .await?;
        let parts = ch
            .try_count(&format!(
                "SELECT count() FROM system.parts WHERE database = '{}' AND table = '{BASELINE_TABLE}' AND active",
                args.watched.clickhouse_database
            ))
            .await?;
        if stored != args.rows {
            bail!(
                "clickhouse-client reported success but {BASELINE_TABLE} holds {stored} of {} rows",
                args.rows
            );
        }
        let rows_per_s = args.rows as f64 / seconds;
        eprintln!(
            "baseline {repetition}/{}: {} rows in {seconds:.2} s = {rows_per_s:.0} rows/s ({parts} active parts after; clickhouse {} cores = {} µs CPU per row; machine busy {})",
            args.repeat,
            args.rows,
            cpu.clickhouse.map_or("?".into(), |c| format!("{c:.2}")),
            cpu.clickhouse.map_or("?".into(), |c| format!("{:.2}", c * seconds * 1e6 / args.rows as f64)),
            cpu.machine_busy.map_or("?".into(), |c| format!("{c:.2}"))
        );
        runs.push((rows_per_s, seconds, cpu.clickhouse, cpu.machine_busy));
    }
    ch.try_query(&format!("DROP TABLE IF EXISTS {BASELINE_TABLE}"))
        .await?;

    let mut rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    // The same, minus the start-up of one clickhouse-client process per INSERT (which the
    // server, holding a connection pool, does not pay).
    let mut net: Vec<f64> = runs
        .iter()
        .map(|r| {
            args.rows as f64 / (r.1 - files.len() as f64 * client_startup_ms / 1000.0).max(1e-3)
        })
        .collect();
    net.sort_by(f64::total_cmp);
    let net_median = net[net.len() / 2];
    println!(
        "== Backlight ingest benchmark: ClickHouse baseline {}",
        args.label
    );
    println!(
        "clickhouse      {version} at {url}; clickhouse-client {} on stdin, one INSERT (and one client process, {client_startup_ms:.0} ms to start) per {} rows, into a copy of `events`",
        args.format.clickhouse_name(),
        args.batch_rows
    );
    println!(
        "rows            {} ({:.0} bytes each as {})",
        args.rows,
        bytes as f64 / args.rows as f64,
        args.format.clickhouse_name()
    );
    println!(
        "ceiling         median {median:.0} rows/s over {} runs (each: {})",
        runs.len(),
        runs.iter()
            .map(|r| format!("{:.0}", r.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "                {net_median:.0} rows/s without the {} client start-ups",
        files.len()
    );
    let line = json!({
        "mode": "baseline",
        "rows_per_s_without_client_startup": net_median.round(),
        "label": args.label,
        "clickhouse_version": version,
        "format": args.format.clickhouse_name(),
        "rows": args.rows,
        "batch_rows": args.batch_rows,
        "bytes_per_row": bytes as f64 / args.rows as f64,
        "rows_per_s": median.round(),
        "runs_rows_per_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "runs_seconds": runs.iter().map(|r| r.1).collect::<Vec<_>>(),
        "inserts": files.len(),
        "client_startup_ms": client_startup_ms,
        "clickhouse_cpu_cores": runs.iter().map(|r| r.2).collect::<Vec<_>>(),
    });
    println!("{line}");
    Ok(())
}

/// Runs one `clickhouse-client` query, with `input` on stdin: one INSERT per batch file, as
/// the server sends one INSERT per group of requests.
async fn run_client(args: &Args, port: u16, query: &str, input: Option<&Path>) -> Result<()> {
    let stdin = match input {
        Some(file) => Stdio::from(std::fs::File::open(file)?),
        None => Stdio::null(),
    };
    let mut command = tokio::process::Command::new(&args.clickhouse_client);
    if let Some(password) = &args.watched.clickhouse_password {
        // On the command line: a throwaway benchmark ClickHouse on loopback.
        command.arg(format!("--password={password}"));
    }
    let mut child = command
        .arg("--host=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--database={}", args.watched.clickhouse_database))
        .arg(format!(
            "--max_insert_block_size={}",
            args.batch_rows.max(1_000_000)
        ))
        .arg(format!("--query={query}"))
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.clickhouse_client.display()))?;
    let mut stderr = child.stderr.take().expect("piped");
    let status = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            child.kill().await?;
            bail!("clickhouse-client took longer than {CLIENT_TIMEOUT:?}; killed");
        }
    };
    if !status.success() {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await?;
        bail!("clickhouse-client failed ({status}): {text}");
    }
    Ok(())
}

/// The rows an ingest of `args.rows` events would write, from `args.agents` devices in
/// batches of `args.batch_events`, as the server builds them (`EventRow::new`), cut into files
/// of `args.batch_rows` rows: one file per INSERT. Returns the files and the bytes written.
fn write_rows(dir: &Path, args: &Args) -> Result<(Vec<PathBuf>, u64)> {
    let devices = args.agents.max(1);
    let mut generators: Vec<(Uuid, Generator)> = (0..devices)
        .map(|i| (Uuid::new_v4(), Generator::new(0xBA5E_0000 + i as u64)))
        .collect();
    let mut files = Vec::new();
    let mut out: Option<BufWriter<std::fs::File>> = None;
    let mut line = Vec::with_capacity(512);
    let (mut written, mut bytes, mut device) = (0u64, 0u64, 0usize);
    while written < args.rows {
        let (device_id, generator) = &mut generators[device];
        device = (device + 1) % devices;
        let n = (args.rows - written).min(args.batch_events as u64) as usize;
        let batch = generator.batch(*device_id, n);
        let received_ms = now_ms();
        for event in &batch.events {
            if written % args.batch_rows == 0 {
                if let Some(mut full) = out.take() {
                    full.flush()?;
                }
                let path = dir.join(format!(
                    "rows-{:05}.{}",
                    files.len(),
                    args.format.clickhouse_name()
                ));
                out = Some(BufWriter::with_capacity(
                    1 << 20,
                    std::fs::File::create(&path)?,
                ));
                files.push(path);
            }
            line.clear();
            match args.format {
                // Exactly the bytes the server sends for this row.
                Format::RowBinary => line.extend_from_slice(
                    EncodedRows::encode(
                        BENCH_TENANT,
                        batch.device_id,
                        std::slice::from_ref(event),
                        received_ms,
                    )
                    .as_bytes(),
                ),
                Format::Tsv => tsv(
                    &EventRow::new(BENCH_TENANT, batch.device_id, event, received_ms),
                    &mut line,
                ),
            }
            out.as_mut().expect("opened above").write_all(&line)?;
            bytes += line.len() as u64;
            written += 1;
        }
    }
    if let Some(mut last) = out {
        last.flush()?;
    }
    Ok((files, bytes))
}

/// TabSeparated of one `events` row (enums by name, dates as YYYY-MM-DD, NULL as `\N`).
fn tsv(r: &EventRow, out: &mut Vec<u8>) {
    const KINDS: [&str; 5] = ["", "activity_span", "work_item", "consent", "health"];
    const STATES: [&str; 4] = ["", "active", "idle", "locked"];
    const ACTIONS: [&str; 6] = [
        "",
        "started",
        "paused",
        "resumed",
        "completed",
        "transferred",
    ];
    const SOURCES: [&str; 4] = ["", "rule", "app", "manual"];
    fn escaped(s: &str) -> String {
        let mut e = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '\\' => e.push_str("\\\\"),
                '\t' => e.push_str("\\t"),
                '\n' => e.push_str("\\n"),
                c => e.push(c),
            }
        }
        e
    }
    let name = |names: &[&'static str], code: i8| names.get(code as usize).copied().unwrap_or("");
    let (y, m, d) = civil_from_days(i64::from(r.event_date));
    let title = r.title.as_deref().map_or("\\N".to_string(), escaped);
    let line = format!(
        "{}\t{}\t{}\t{}\t{}\t{y:04}-{m:02}-{d:02}\t{}\t{}\t{}\t{}\t{title}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        escaped(&r.tenant_id),
        r.device_id,
        r.seq,
        r.event_id,
        name(&KINDS, r.kind),
        r.time_ms,
        r.end_ms,
        r.received_ms,
        escaped(&r.app),
        name(&STATES, r.state),
        escaped(&r.item_id),
        escaped(&r.step),
        name(&ACTIONS, r.action),
        name(&SOURCES, r.source),
        r.consent_granted,
        r.policy_version,
        escaped(&r.scope),
        escaped(&r.agent_version),
        r.spool_depth,
        r.events_dropped,
        r.events_rejected,
        r.clock_offset_ms,
    );
    out.extend_from_slice(line.as_bytes());
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

// -----------------------------------------------------------------------------------------
// Profile mode: what each stage of the ingest path costs per event, on one core
// -----------------------------------------------------------------------------------------

/// CPU time used by the calling thread, in seconds.
fn thread_cpu_time() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Counts live heap bytes while `COUNT_ALLOCATIONS` is on (profile mode only; in the other
/// modes the check is one relaxed load of a flag nobody writes).
struct CountingAllocator;

static COUNT_ALLOCATIONS: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNT_ALLOCATIONS.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if COUNT_ALLOCATIONS.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(
                layout.size().min(LIVE_BYTES.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNT_ALLOCATIONS.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(
                layout.size().min(LIVE_BYTES.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The same wire format parsed without `#[serde(flatten)]` and the internally tagged enum
/// (which make serde buffer every event into an intermediate tree first): one flat struct with
/// optional fields per kind. Used only to price that alternative in the stage profile.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct FlatBatch {
    protocol: u16,
    device_id: Uuid,
    events: Vec<FlatEvent>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct FlatEvent {
    seq: u64,
    id: Uuid,
    kind: backlight_shared::event::EventKind,
    app: Option<String>,
    title: Option<String>,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    state: Option<ActivityState>,
    item_id: Option<String>,
    step: Option<String>,
    action: Option<ItemAction>,
    at_ms: Option<u64>,
    source: Option<ItemSource>,
    granted: Option<bool>,
    policy_version: Option<u32>,
    scope: Option<String>,
    agent_version: Option<String>,
    spool_depth: Option<u64>,
    events_dropped: Option<u64>,
    events_rejected: Option<u64>,
    clock_offset_ms: Option<i64>,
}

fn profile_stages(args: &Args) -> Result<()> {
    use backlight_server::ingest::decode::{decode_body, decompress, parse_batch, Encoding};
    use backlight_shared::batch::limits::MAX_DECOMPRESSED_BODY_BYTES;
    use backlight_shared::validate::validate_batch;

    let batches = 100usize;
    let mut generator = Generator::new(7);
    let device_id = Uuid::new_v4();
    let input: Vec<Batch> = (0..batches)
        .map(|_| generator.batch(device_id, args.batch_events))
        .collect();
    let events = (batches * args.batch_events) as f64;
    let bodies: Vec<(Vec<u8>, usize)> = input.iter().map(encode_batch).collect::<Result<_>>()?;
    let jsons: Vec<Vec<u8>> = input
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;

    // Each stage runs over all batches, repeated until it has used a second of this thread's
    // CPU time (CPU time, not wall time: other processes on the machine must not count).
    let mut stages: Vec<(&str, &str, f64)> = Vec::new();
    let mut time = |side: &'static str, name: &'static str, f: &mut dyn FnMut()| {
        let started = thread_cpu_time();
        let mut rounds = 0u32;
        while rounds < 3 || (thread_cpu_time() - started < 1.0 && rounds < 1_000) {
            f();
            rounds += 1;
        }
        let per_event_us = (thread_cpu_time() - started) * 1e6 / (events * f64::from(rounds));
        stages.push((side, name, per_event_us));
    };
    let now = now_ms();
    time("agent", "serialize JSON (serde_json)", &mut || {
        for b in &input {
            std::hint::black_box(serde_json::to_vec(b).expect("serializable"));
        }
    });
    time("agent", "compress zstd-3", &mut || {
        for j in &jsons {
            std::hint::black_box(zstd::bulk::compress(j, ZSTD_LEVEL).expect("compressible"));
        }
    });
    time("server", "decompress zstd", &mut || {
        for (b, _) in &bodies {
            std::hint::black_box(
                decompress(b, Encoding::Zstd, MAX_DECOMPRESSED_BODY_BYTES).expect("valid"),
            );
        }
    });
    time(
        "server",
        "parse JSON (serde_path_to_error, as served)",
        &mut || {
            for j in &jsons {
                std::hint::black_box(parse_batch(j).expect("valid"));
            }
        },
    );
    time(
        "server",
        "parse JSON (plain serde_json, for comparison)",
        &mut || {
            for j in &jsons {
                std::hint::black_box(serde_json::from_slice::<Batch>(j).expect("valid"));
            }
        },
    );
    time(
        "server?",
        "parse JSON into a flat struct (no flatten/tag buffering), with paths",
        &mut || {
            for j in &jsons {
                let mut de = serde_json::Deserializer::from_slice(j);
                let flat: FlatBatch = serde_path_to_error::deserialize(&mut de).expect("valid");
                std::hint::black_box(flat);
            }
        },
    );
    time("server", "decode_body (decompress + parse)", &mut || {
        for (b, _) in &bodies {
            std::hint::black_box(decode_body(Some("zstd"), b).expect("valid"));
        }
    });
    time("server", "validate_batch", &mut || {
        for b in &input {
            validate_batch(b, now).expect("valid");
        }
    });
    time("server", "EventRow::new for every event", &mut || {
        for b in &input {
            let rows: Vec<EventRow> = b
                .events
                .iter()
                .map(|e| EventRow::new(BENCH_TENANT, b.device_id, e, now))
                .collect();
            std::hint::black_box(rows);
        }
    });
    time(
        "server",
        "EncodedRows::encode (RowBinary per request, as served)",
        &mut || {
            for b in &input {
                std::hint::black_box(EncodedRows::encode(
                    BENCH_TENANT,
                    b.device_id,
                    &b.events,
                    now,
                ));
            }
        },
    );
    // Heap held per request of `batch_events` events at each step (bytes requested from the
    // allocator; malloc's own overhead and fragmentation come on top).
    let held = |f: &mut dyn FnMut() -> Box<dyn std::any::Any>| {
        COUNT_ALLOCATIONS.store(true, Ordering::Relaxed);
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let kept = f();
        let bytes = LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(before);
        COUNT_ALLOCATIONS.store(false, Ordering::Relaxed);
        drop(kept);
        bytes as f64 / batches as f64
    };
    let memory = [
        (
            "compressed body",
            bodies.iter().map(|b| b.0.len()).sum::<usize>() as f64 / batches as f64,
        ),
        (
            "decompressed JSON",
            jsons.iter().map(Vec::len).sum::<usize>() as f64 / batches as f64,
        ),
        (
            "parsed Batch",
            held(&mut || {
                Box::new(
                    jsons
                        .iter()
                        .map(|j| parse_batch(j).expect("valid"))
                        .collect::<Vec<_>>(),
                )
            }),
        ),
        (
            "Vec<EventRow>",
            held(&mut || {
                Box::new(
                    input
                        .iter()
                        .map(|b| {
                            b.events
                                .iter()
                                .map(|e| EventRow::new(BENCH_TENANT, b.device_id, e, now))
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>(),
                )
            }),
        ),
        (
            "EncodedRows (as served)",
            held(&mut || {
                Box::new(
                    input
                        .iter()
                        .map(|b| EncodedRows::encode(BENCH_TENANT, b.device_id, &b.events, now))
                        .collect::<Vec<_>>(),
                )
            }),
        ),
    ];

    println!(
        "== Backlight ingest benchmark: stage profile ({batches} batches of {} events, thread CPU time, in process)",
        args.batch_events
    );
    for (side, name, us) in &stages {
        println!(
            "{side:<7} {name:<72} {us:>7.2} µs/event = {:>10.0} events/s per core",
            1e6 / us
        );
    }
    println!("memory held per request of {} events:", args.batch_events);
    for (name, bytes) in &memory {
        println!("        {name:<24} {:>8.1} KB", bytes / 1024.0);
    }
    let line = json!({
        "mode": "profile",
        "batch_events": args.batch_events,
        "bytes_per_request": memory.iter().map(|(k, v)| (k.to_string(), v.round())).collect::<BTreeMap<_, _>>(),
        "stages": stages.iter().map(|(side, name, us)| json!({"side": side, "stage": name, "us_per_event": us})).collect::<Vec<_>>(),
    });
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_batches_pass_the_servers_checks() {
        let mut g = Generator::new(1);
        let device = Uuid::new_v4();
        for _ in 0..50 {
            let batch = g.batch(device, 200);
            backlight_shared::validate::validate_batch(&batch, now_ms()).unwrap();
            let (body, _) = encode_batch(&batch).unwrap();
            let decoded =
                backlight_server::ingest::decode::decode_body(Some("zstd"), &body).unwrap();
            assert_eq!(decoded, batch);
        }
        assert_eq!(g.seq, 50 * 200);
    }

    #[test]
    fn dates_and_tsv() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        let mut g = Generator::new(2);
        let batch = g.batch(Uuid::new_v4(), 20);
        let mut line = Vec::new();
        for e in &batch.events {
            line.clear();
            tsv(&EventRow::new("t", batch.device_id, e, 1), &mut line);
            assert_eq!(line.iter().filter(|&&b| b == b'\t').count(), 23);
        }
    }
}
