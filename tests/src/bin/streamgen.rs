//! `backlight-streamgen`: the live-stream benchmark (a measuring tool, not a timed test).
//!
//! What does it cost ClickHouse to keep N status streams (`GET /v1/items/{id}/events`) open on
//! one server, and how soon does a change reach its stream? Against running servers it
//!
//! 1. **sets up** (unless `--skip-setup`): registers `--streams` items, enrolls one device
//!    through `--ingest-server` and uploads a `started` event for every item;
//! 2. **measures a baseline without streams**: changes at `--change-rate` for `--idle`, while
//!    counting ClickHouse's queries (`system.events`: `SelectQuery`, `InsertQuery`);
//! 3. **opens `--streams` streams** on `--server`, one per item, round-robin over the
//!    `--lookup-keys` (cc_agent keys), and waits for each stream's first document;
//! 4. **measures with the streams open**: after `--warmup`, changes at `--change-rate` for
//!    `--duration` — each a one-event batch (`paused`/`resumed`, alternating per item) uploaded
//!    to `--ingest-server` (another server than the streams' for the cross-server case) on an
//!    open-loop clock, every item at most once — and for each change the time from the
//!    upload's 200 (and from sending it) until its stream shows the new status.
//!
//! Prints queries per second with and without the streams (the difference is the streams'
//! cost), change-to-stream latency percentiles, changes never seen (within 10 s), CPU of the
//! server and ClickHouse (`--server-pid`, `--clickhouse-pid`), then one JSON line.
//! Loopback use only; every loop is bounded in count and in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backlight_e2e::loadkit::clickhouse::{loopback_db, tsv_counters};
use backlight_e2e::loadkit::procfs::CpuSample;
use backlight_e2e::loadkit::server::enroll;
use backlight_e2e::loadkit::stats::rounded_position;
use backlight_e2e::Db;
use backlight_server::cli::parse_duration;
use backlight_shared::api::{EnrollResponse, INGEST_PATH};
use backlight_shared::batch::Batch;
use backlight_shared::event::{Event, EventBody, ItemAction, ItemSource, WorkItemEvent};
use backlight_shared::{now_ms, PROTOCOL_VERSION};
use clap::Parser;
use rand::seq::SliceRandom;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use serde_json::json;
use uuid::Uuid;

const MAX_STREAMS: usize = 20_000;
const MAX_RATE: f64 = 1_000.0;
/// A change not seen on its stream within this long counts as missed.
const SEEN_WITHIN: Duration = Duration::from_secs(10);
const SETUP_BATCH: usize = 1_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "backlight-streamgen",
    about = "Backlight live-stream benchmark: ClickHouse queries/s and change-to-stream latency with N open streams"
)]
struct Args {
    /// The server the streams are opened on.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server changes are uploaded to (default: --server). Another server measures the
    /// cross-server path.
    #[arg(long)]
    ingest_server: Option<String>,
    /// Admin API key (registers the items).
    #[arg(long, env = "BACKLIGHT_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
    /// cc_agent API keys for the streams, comma-separated (streams are spread round-robin;
    /// each key may hold a limited number of streams per server).
    #[arg(
        long,
        env = "BACKLIGHT_LOOKUP_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    lookup_keys: Vec<String>,
    /// Enrollment key (the device that uploads the changes).
    #[arg(long, env = "BACKLIGHT_ENROLLMENT_KEY", hide_env_values = true)]
    enrollment_key: String,
    /// Open streams, one per item.
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// Item id prefix.
    #[arg(long, default_value = "LIVE")]
    item_prefix: String,
    /// Changes per second (open loop).
    #[arg(long, default_value_t = 10.0)]
    change_rate: f64,
    /// The baseline window without streams.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    idle: Duration,
    /// Changes with the streams open before the window, not counted.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,
    /// The measured window with the streams open.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// ClickHouse HTTP URL, for its query counters.
    #[arg(long)]
    clickhouse_url: String,
    /// Password of ClickHouse's `default` user (the embedded one keeps it in
    /// `DATA_DIR/clickhouse/password`).
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
    /// Process id of the streams' server (CPU).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Process id of ClickHouse (CPU).
    #[arg(long)]
    clickhouse_pid: Option<u32>,
    /// The items exist already (an earlier run with the same --streams and --item-prefix).
    #[arg(long)]
    skip_setup: bool,
    /// Free text printed with the results.
    #[arg(long, default_value = "")]
    label: String,
}

/// A change waiting to be seen on its stream.
struct Pending {
    status: &'static str,
    sent: Instant,
    acked: Option<Instant>,
}

#[derive(Default)]
struct Measured {
    from_ack_ms: Vec<f64>,
    from_send_ms: Vec<f64>,
}

struct Shared {
    pending: Mutex<HashMap<String, Pending>>,
    measured: Mutex<Measured>,
    /// Whether seen changes are recorded (the measured window).
    recording: std::sync::atomic::AtomicBool,
    streams_open: AtomicUsize,
    streams_ended: AtomicUsize,
    upload_errors: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.streams == 0 || args.streams > MAX_STREAMS {
        bail!("--streams must be 1-{MAX_STREAMS}");
    }
    if !(args.change_rate > 0.0 && args.change_rate <= MAX_RATE) {
        bail!("--change-rate must be in (0, {MAX_RATE}]");
    }
    if args.lookup_keys.is_empty() {
        bail!("give at least one --lookup-keys key");
    }
    let total = args.warmup + args.duration;
    let needed = (total.as_secs_f64() * args.change_rate) as usize;
    if needed > args.streams {
        bail!(
            "{needed} changes would touch items twice: use more --streams or a lower --change-rate"
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()?;
    let ingest_server = args.ingest_server.clone().unwrap_or(args.server.clone());
    let items: Vec<String> = (0..args.streams)
        .map(|i| format!("{}-{i:07}", args.item_prefix))
        .collect();

    let clickhouse = loopback_db(
        "--clickhouse-url",
        &args.clickhouse_url,
        "system",
        args.clickhouse_password.as_deref(),
        Duration::from_secs(30),
    )?;
    let device = enroll(
        &http,
        &ingest_server,
        &args.enrollment_key,
        "streamgen".into(),
        "streamgen",
    )
    .await
    .context("enrolling")?;
    let seq = Arc::new(AtomicU64::new(1));
    if !args.skip_setup {
        eprintln!("setup: registering {} items and starting each", items.len());
        setup(&http, &args, &ingest_server, &items, &device, &seq).await?;
    }
    let shared = Arc::new(Shared {
        pending: Mutex::default(),
        measured: Mutex::default(),
        recording: false.into(),
        streams_open: AtomicUsize::new(0),
        streams_ended: AtomicUsize::new(0),
        upload_errors: AtomicU64::new(0),
    });
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.shuffle(&mut rand::rng());
    let mut order = order.into_iter();
    let status: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![true; items.len()])); // in progress?
    let changer = Changer {
        http: http.clone(),
        server: ingest_server.clone(),
        device,
        seq,
        items: items.clone(),
        status,
        shared: shared.clone(),
    };

    // Baseline: the same changes, no streams.
    eprintln!(
        "baseline: {:?} of changes at {}/s without streams",
        args.idle, args.change_rate
    );
    let before = Counters::read(&clickhouse).await?;
    let cpu_before = CpuSample::take(args.server_pid, args.clickhouse_pid);
    changer.run(args.idle, args.change_rate, &mut order).await;
    let idle = Counters::read(&clickhouse).await?.since(&before);
    let idle_cpu = cpu_before.delta(&CpuSample::take(args.server_pid, args.clickhouse_pid));

    // Open the streams and wait for each one's first document.
    eprintln!("opening {} streams on {}", items.len(), args.server);
    let opened_at = Instant::now();
    for (i, item) in items.iter().enumerate() {
        let key = args.lookup_keys[i % args.lookup_keys.len()].clone();
        tokio::spawn(watch(
            http.clone(),
            args.server.clone(),
            key,
            item.clone(),
            shared.clone(),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.streams_open.load(Ordering::Relaxed) + shared.streams_ended.load(Ordering::Relaxed)
        < items.len()
    {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} streams opened within 120 s",
                shared.streams_open.load(Ordering::Relaxed),
                items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = shared.streams_open.load(Ordering::Relaxed);
    eprintln!("{open} streams open after {:?}", opened_at.elapsed());
    if open < items.len() {
        bail!(
            "{} streams were refused or ended while opening",
            items.len() - open
        );
    }

    eprintln!(
        "warm-up {:?}, then {:?} measured",
        args.warmup, args.duration
    );
    changer.run(args.warmup, args.change_rate, &mut order).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.pending.lock().unwrap().clear();
    shared.recording.store(true, Ordering::Relaxed);
    let before = Counters::read(&clickhouse).await?;
    let cpu_before = CpuSample::take(args.server_pid, args.clickhouse_pid);
    let sent = changer
        .run(args.duration, args.change_rate, &mut order)
        .await;
    let with = Counters::read(&clickhouse).await?.since(&before);
    let with_cpu = cpu_before.delta(&CpuSample::take(args.server_pid, args.clickhouse_pid));
    // Changes of the last second get their time to arrive (not counted in the query rates).
    tokio::time::sleep(SEEN_WITHIN).await;
    shared.recording.store(false, Ordering::Relaxed);
    let missed = shared.pending.lock().unwrap().len();
    let measured = std::mem::take(&mut *shared.measured.lock().unwrap());
    let ended = shared.streams_ended.load(Ordering::Relaxed);

    let from_ack = quantiles(measured.from_ack_ms);
    let from_send = quantiles(measured.from_send_ms);
    let streams_cost = with.selects_per_s - idle.selects_per_s;
    println!("== backlight-streamgen {}", args.label);
    println!(
        "streams: {open} open on {} (keys: {}), changes uploaded to {ingest_server}",
        args.server,
        args.lookup_keys.len()
    );
    println!(
        "ClickHouse SELECT/s: {:.2} without streams, {:.2} with {open} streams (+{:.2}); INSERT/s {:.2} / {:.2}",
        idle.selects_per_s, with.selects_per_s, streams_cost, idle.inserts_per_s, with.inserts_per_s
    );
    println!(
        "change -> stream, from the upload's 200: p50 {} p90 {} p99 {} max {} ms; from sending: p50 {} p99 {} max {} ms",
        from_ack["p50"], from_ack["p90"], from_ack["p99"], from_ack["max"], from_send["p50"], from_send["p99"], from_send["max"]
    );
    println!(
        "changes sent {sent}, seen {}, missed (not seen within {SEEN_WITHIN:?}) {missed}, upload errors {}, streams ended early {ended}",
        from_ack["n"],
        shared.upload_errors.load(Ordering::Relaxed)
    );
    println!(
        "CPU cores: server {} / {} (without / with streams), ClickHouse {} / {}",
        fmt_opt(idle_cpu.server),
        fmt_opt(with_cpu.server),
        fmt_opt(idle_cpu.clickhouse),
        fmt_opt(with_cpu.clickhouse)
    );
    let report = json!({
        "label": args.label,
        "streams": open,
        "lookup_keys": args.lookup_keys.len(),
        "cross_server": args.ingest_server.as_ref().is_some_and(|s| s != &args.server),
        "change_rate": args.change_rate,
        "duration_s": args.duration.as_secs_f64(),
        "without_streams": {"selects_per_s": idle.selects_per_s, "inserts_per_s": idle.inserts_per_s,
                            "cpu_cores": {"server": idle_cpu.server, "clickhouse": idle_cpu.clickhouse}},
        "with_streams": {"selects_per_s": with.selects_per_s, "inserts_per_s": with.inserts_per_s,
                         "cpu_cores": {"server": with_cpu.server, "clickhouse": with_cpu.clickhouse}},
        "streams_selects_per_s": streams_cost,
        "latency_from_ack_ms": from_ack,
        "latency_from_send_ms": from_send,
        "changes_sent": sent,
        "missed": missed,
        "upload_errors": shared.upload_errors.load(Ordering::Relaxed),
        "streams_ended_early": ended,
    });
    println!("{report}");
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.3}"))
}

fn work_item(seq: u64, item: &str, action: ItemAction) -> Event {
    Event {
        seq,
        id: Uuid::new_v4(),
        body: EventBody::WorkItem(WorkItemEvent {
            item_id: item.to_string(),
            action,
            step: None,
            at_ms: now_ms(),
            source: ItemSource::App,
        }),
    }
}

async fn upload(
    http: &reqwest::Client,
    server: &str,
    device: &EnrollResponse,
    events: Vec<Event>,
) -> Result<()> {
    let batch = Batch {
        protocol: PROTOCOL_VERSION,
        device_id: device.device_id,
        events,
    };
    let body = zstd::encode_all(&serde_json::to_vec(&batch)?[..], 3)?;
    let response = http
        .post(format!("{server}{INGEST_PATH}"))
        .header(
            AUTHORIZATION,
            format!("Bearer {}", device.device_credential),
        )
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "zstd")
        .timeout(Duration::from_secs(30))
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "ingest: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn setup(
    http: &reqwest::Client,
    args: &Args,
    ingest_server: &str,
    items: &[String],
    device: &EnrollResponse,
    seq: &AtomicU64,
) -> Result<()> {
    for chunk in items.chunks(SETUP_BATCH) {
        let body = json!({"items": chunk.iter().map(|id| json!({"item_id": id, "queue": "live"})).collect::<Vec<_>>()});
        let response = http
            .post(format!("{ingest_server}/v1/items"))
            .bearer_auth(&args.admin_key)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "registering: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let events = chunk
            .iter()
            .map(|id| work_item(seq.fetch_add(1, Ordering::Relaxed), id, ItemAction::Started))
            .collect();
        upload(http, ingest_server, device, events).await?;
    }
    Ok(())
}

/// Uploads changes.
struct Changer {
    http: reqwest::Client,
    server: String,
    device: EnrollResponse,
    seq: Arc<AtomicU64>,
    items: Vec<String>,
    /// Per item: whether it is in progress (else paused).
    status: Arc<Mutex<Vec<bool>>>,
    shared: Arc<Shared>,
}

impl Changer {
    /// Changes `rate` items a second for `length`, open loop; returns how many were sent.
    async fn run(
        &self,
        length: Duration,
        rate: f64,
        order: &mut impl Iterator<Item = usize>,
    ) -> usize {
        let start = Instant::now();
        let mut sent = 0usize;
        let mut uploads = tokio::task::JoinSet::new();
        loop {
            let at = start + Duration::from_secs_f64(sent as f64 / rate);
            if at >= start + length {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let Some(index) = order.next() else { break };
            let item = self.items[index].clone();
            let (action, status) = {
                let mut s = self.status.lock().unwrap();
                s[index] = !s[index];
                if s[index] {
                    (ItemAction::Resumed, "in_progress")
                } else {
                    (ItemAction::Paused, "paused")
                }
            };
            let event = work_item(self.seq.fetch_add(1, Ordering::Relaxed), &item, action);
            let sent_at = Instant::now();
            self.shared.pending.lock().unwrap().insert(
                item.clone(),
                Pending {
                    status,
                    sent: sent_at,
                    acked: None,
                },
            );
            let (http, server, device, shared) = (
                self.http.clone(),
                self.server.clone(),
                self.device.clone(),
                self.shared.clone(),
            );
            uploads.spawn(async move {
                match upload(&http, &server, &device, vec![event]).await {
                    Ok(()) => {
                        if let Some(p) = shared.pending.lock().unwrap().get_mut(&item) {
                            p.acked.get_or_insert(Instant::now());
                        }
                    }
                    Err(e) => {
                        shared.upload_errors.fetch_add(1, Ordering::Relaxed);
                        shared.pending.lock().unwrap().remove(&item);
                        eprintln!("upload failed: {e}");
                    }
                }
            });
            sent += 1;
        }
        while uploads.join_next().await.is_some() {}
        sent
    }
}

/// One stream: counts itself open at its first document, then matches status events with
/// pending changes of its item.
async fn watch(
    http: reqwest::Client,
    server: String,
    key: String,
    item: String,
    shared: Arc<Shared>,
) {
    let response = http
        .get(format!("{server}/v1/items/{item}/events"))
        .bearer_auth(&key)
        .header("Accept", "text/event-stream")
        .send()
        .await;
    let mut response = match response {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            eprintln!(
                "stream {item}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            shared.streams_ended.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(e) => {
            eprintln!("stream {item}: {e}");
            shared.streams_ended.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut buffer = String::new();
    let mut first = true;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            _ => {
                shared.streams_ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let now = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "";
            let mut data = "";
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim();
                }
            }
            if event == "end" {
                shared.streams_ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if event != "status" {
                continue;
            }
            if first {
                first = false;
                shared.streams_open.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(doc) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let mut pending = shared.pending.lock().unwrap();
            let matches = pending
                .get(&item)
                .is_some_and(|p| doc["status"].as_str() == Some(p.status));
            if !matches {
                continue;
            }
            let p = pending.remove(&item).expect("checked above");
            drop(pending);
            if shared.recording.load(Ordering::Relaxed) {
                let mut m = shared.measured.lock().unwrap();
                m.from_send_ms
                    .push(now.duration_since(p.sent).as_secs_f64() * 1e3);
                // Seen before the 200 arrived here: zero after the upload.
                let from_ack = p.acked.map_or(0.0, |a| {
                    now.saturating_duration_since(a).as_secs_f64() * 1e3
                });
                m.from_ack_ms.push(from_ack);
            }
        }
    }
}

/// ClickHouse's own query counters.
struct Counters {
    at: Instant,
    selects: u64,
    inserts: u64,
}

struct Rates {
    selects_per_s: f64,
    inserts_per_s: f64,
}

impl Counters {
    async fn read(clickhouse: &Db) -> Result<Counters> {
        let text = clickhouse
            .try_query("SELECT event, value FROM system.events WHERE event IN ('SelectQuery', 'InsertQuery') FORMAT TSV")
            .await?;
        let mut counters = Counters {
            at: Instant::now(),
            selects: 0,
            inserts: 0,
        };
        for (name, value) in tsv_counters(&text) {
            match name {
                "SelectQuery" => counters.selects = value,
                "InsertQuery" => counters.inserts = value,
                _ => {}
            }
        }
        Ok(counters)
    }

    /// Rates since `before`, not counting this tool's own reading.
    fn since(&self, before: &Counters) -> Rates {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        Rates {
            selects_per_s: self.selects.saturating_sub(before.selects + 1) as f64 / secs,
            inserts_per_s: self.inserts.saturating_sub(before.inserts) as f64 / secs,
        }
    }
}

fn quantiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let q = |q: f64| rounded_position(&v, q).map(|x| (x * 10.0).round() / 10.0);
    json!({"n": v.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)})
}
