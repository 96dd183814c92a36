//! `backlight-attackgen`: the attack benchmark (docs/BENCHMARKS.md, "Hostile clients"). A
//! measuring tool, not a timed test.
//!
//! Against a running server it enrolls a fleet of well-behaved devices (the others), a probe
//! device and the attackers, then runs phases of `--warmup` + `--duration` each: first with no
//! attack (the baseline), then during each attack of issue 10:
//!
//! - **starvation**: devices announcing 4 MiB of zstd bodies they never send, re-opening each
//!   connection the server closes;
//! - **bombs**: zstd bodies of a few KB that inflate to just under 16 MiB of JSON with an unknown
//!   field full of zeros, four at a time per attacking device, as fast as they are answered;
//! - **slowloris**: connections from another loopback address (127.0.0.2) that never finish
//!   their headers (a byte every 5 s), re-opened when closed;
//! - **flood**: one device sending valid batches from many connections at once, ignoring
//!   `Retry-After`.
//!
//! In every phase it measures what the others get: the fleet's acknowledged events/s (closed
//! loop, honouring `Retry-After`), a probe's one-event batch every 250 ms (status and latency),
//! `GET /healthz` every 50 ms (latency), and the server's RSS (sampled every 100 ms). It prints a
//! table, the targets (probe 200 within 1 s, /healthz within 100 ms, RSS under 300 MB, the
//! fleet's capacity at least 80 % of the baseline measured in the same run) and one JSON line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backlight_e2e::loadkit::{self, procfs::sample_memory};
use backlight_e2e::{activity_span, batch, now_ms, work_item, zstd, Device, ItemAction};
use backlight_server::cli::parse_duration;
use backlight_shared::api::INGEST_PATH;
use clap::Parser;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

const PHASES: [&str; 5] = ["baseline", "starvation", "bombs", "slowloris", "flood"];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "backlight-attackgen",
    about = "Backlight attack benchmark: what the other devices get during each attack"
)]
struct Args {
    /// The server's base URL (plain HTTP on loopback).
    #[arg(long)]
    server: String,
    /// Enrollment key for the tenant every device joins.
    #[arg(long, env = "BACKLIGHT_ENROLLMENT_KEY", hide_env_values = true)]
    enrollment_key: String,
    /// The server's pid, for its RSS.
    #[arg(long)]
    server_pid: u32,
    /// Well-behaved devices (closed loop).
    #[arg(long, default_value_t = 32)]
    agents: usize,
    /// Events per batch of the well-behaved devices and the flood.
    #[arg(long, default_value_t = 200)]
    batch_events: usize,
    /// Phases to run, in order (the baseline always runs first).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "starvation,bombs,slowloris,flood"
    )]
    attacks: Vec<String>,
    /// Warm-up of each phase (attack running, not measured).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured window of each phase.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Starvation: attacking devices, and stalled connections of each.
    #[arg(long, default_value_t = 2)]
    starvation_devices: usize,
    #[arg(long, default_value_t = 4)]
    starvation_connections: usize,
    /// Bombs: attacking devices (each keeps four bombs in flight).
    #[arg(long, default_value_t = 2)]
    bomb_devices: usize,
    /// Slowloris: connections kept open from 127.0.0.2.
    #[arg(long, default_value_t = 2000)]
    slowloris_connections: usize,
    /// Flood: connections of the flooding device.
    #[arg(long, default_value_t = 32)]
    flood_connections: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    for attack in &args.attacks {
        if !PHASES[1..].contains(&attack.as_str()) {
            bail!("unknown attack {attack:?} (known: {:?})", &PHASES[1..]);
        }
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let addr: SocketAddr = args
        .server
        .trim_start_matches("http://")
        .parse()
        .context("--server must be http://<ip>:<port>")?;

    let need = args.agents + 1 + args.starvation_devices + args.bomb_devices + 1;
    eprintln!("enrolling {need} devices");
    let mut devices = Vec::with_capacity(need);
    for _ in 0..need {
        devices.push(enroll(&http, &args).await?);
    }
    let agents: Vec<Device> = devices.drain(..args.agents).collect();
    let probe = devices.remove(0);
    let starvers: Vec<Device> = devices.drain(..args.starvation_devices).collect();
    let bombers: Vec<Device> = devices.drain(..args.bomb_devices).collect();
    let flooder = devices.remove(0);

    // The fleet runs through every phase; each phase reads its counters.
    let fleet = Arc::new(Fleet::default());
    let mut background = JoinSet::new();
    for device in agents {
        background.spawn(agent(args.clone(), device, fleet.clone()));
    }
    let mut results = Vec::new();
    let phases = std::iter::once("baseline".to_string()).chain(args.attacks.iter().cloned());
    let seqs = Arc::new(AtomicU64::new(1));
    for phase in phases {
        eprintln!(
            "phase {phase}: {:?} warm-up + {:?}",
            args.warmup, args.duration
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut attack = JoinSet::new();
        let attack_state = Arc::new(AttackState::default());
        match phase.as_str() {
            "starvation" => {
                for device in &starvers {
                    for _ in 0..args.starvation_connections {
                        attack.spawn(stall(
                            addr,
                            device.clone(),
                            stop.clone(),
                            attack_state.clone(),
                        ));
                    }
                }
            }
            "bombs" => {
                let bomb = Arc::new(bomb_body(&bombers[0]));
                for device in &bombers {
                    for _ in 0..4 {
                        attack.spawn(throw_bombs(
                            http.clone(),
                            args.server.clone(),
                            device.clone(),
                            bomb.clone(),
                            stop.clone(),
                            attack_state.clone(),
                        ));
                    }
                }
            }
            "slowloris" => {
                for _ in 0..args.slowloris_connections {
                    attack.spawn(slowloris(addr, stop.clone(), attack_state.clone()));
                }
            }
            "flood" => {
                for _ in 0..args.flood_connections {
                    attack.spawn(flood(
                        args.clone(),
                        flooder.clone(),
                        seqs.clone(),
                        stop.clone(),
                        attack_state.clone(),
                    ));
                }
            }
            _ => {}
        }
        tokio::time::sleep(args.warmup).await;
        let result = measure(&args, &http, &probe, &fleet, &attack_state, &phase).await;
        println!("{}", result.line());
        results.push(result);
        stop.store(true, Ordering::Relaxed);
        attack.abort_all();
        while attack.join_next().await.is_some() {}
        // Let the server close what the attack left and settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    background.abort_all();

    summarize(&results);
    Ok(())
}

async fn enroll(http: &reqwest::Client, args: &Args) -> Result<Device> {
    let answer = loadkit::server::enroll(
        http,
        &args.server,
        &args.enrollment_key,
        "attackgen".into(),
        "0.0.0-attackgen",
    )
    .await?;
    Ok(Device {
        id: answer.device_id,
        tenant: answer.tenant_id,
        credential: answer.device_credential,
    })
}

/// A batch of `n` realistic events (spans and work items, times in the last minute) from `seq`.
fn body(device: &Device, seq: u64, n: usize) -> Vec<u8> {
    let now = now_ms();
    let events = (seq..seq + n as u64)
        .map(|s| {
            let at = now - 60_000 + (s % 50_000);
            if s % 4 == 0 {
                work_item(s, &format!("CLM-{}", s % 5_000), ItemAction::Started, at)
            } else {
                activity_span(s, "claims-desk", at, at + 900)
            }
        })
        .collect();
    zstd(&serde_json::to_vec(&batch(device, events)).expect("a batch serializes"))
}

async fn post(
    http: &reqwest::Client,
    server: &str,
    device: &Device,
    body: Vec<u8>,
) -> std::result::Result<(u16, Option<u64>), String> {
    let response = http
        .post(format!("{server}{INGEST_PATH}"))
        .bearer_auth(&device.credential)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "zstd")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let _ = response.bytes().await;
    Ok((status, retry_after))
}

#[derive(Default)]
struct Fleet {
    acked_events: AtomicU64,
    refused: AtomicU64,
}

/// A well-behaved agent: next batch when the last one is acknowledged; `Retry-After` honoured.
async fn agent(args: Args, device: Device, fleet: Arc<Fleet>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let mut seq = 1u64;
    loop {
        let payload = body(&device, seq, args.batch_events);
        match post(&http, &args.server, &device, payload).await {
            Ok((200, _)) => {
                fleet
                    .acked_events
                    .fetch_add(args.batch_events as u64, Ordering::Relaxed);
                seq += args.batch_events as u64;
            }
            Ok((_, retry_after)) => {
                fleet.refused.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after.unwrap_or(1).clamp(1, 5);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(_) => {
                fleet.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[derive(Default)]
struct AttackState {
    /// Attack requests or connections made.
    attempts: AtomicU64,
    /// Of which the server took on (200 for the flood; connections it kept open to the end).
    succeeded: AtomicU64,
    /// Answers by status.
    statuses: std::sync::Mutex<BTreeMap<u16, u64>>,
    /// Attack connections open now.
    open: AtomicU64,
}

impl AttackState {
    fn status(&self, status: u16) {
        *self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
    }
}

async fn connect(addr: SocketAddr, source: [u8; 4]) -> Option<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    socket.connect(addr).await.ok()
}

/// Reads the status code of whatever the server answers, or `None` when it closes first.
async fn answer_status(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1)?.parse().ok()
}

/// Announces 4 MiB of zstd and sends nothing, again and again.
async fn stall(addr: SocketAddr, device: Device, stop: Arc<AtomicBool>, state: Arc<AttackState>) {
    while !stop.load(Ordering::Relaxed) {
        state.attempts.fetch_add(1, Ordering::Relaxed);
        let Some(mut stream) = connect(addr, [127, 0, 0, 1]).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let head = format!(
            "POST {INGEST_PATH} HTTP/1.1\r\nHost: backlight\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Encoding: zstd\r\nContent-Length: 4194304\r\n\r\n",
            device.credential
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        state.open.fetch_add(1, Ordering::Relaxed);
        let status = answer_status(&mut stream).await;
        state.open.fetch_sub(1, Ordering::Relaxed);
        state.status(status.unwrap_or(0));
    }
}

/// The bomb: just under 16 MiB of JSON, mostly `,0`, in an unknown field.
fn bomb_body(device: &Device) -> Vec<u8> {
    let head = format!(
        r#"{{"protocol":1,"device_id":"{}","events":[{{"seq":1,"id":"{}","kind":"health","pad":[0"#,
        device.id,
        uuid::Uuid::new_v4()
    );
    let tail = "]}]}";
    let limit = backlight_shared::batch::limits::MAX_DECOMPRESSED_BODY_BYTES;
    let mut json = String::with_capacity(limit);
    json.push_str(&head);
    while json.len() + 2 + tail.len() < limit - 16 {
        json.push_str(",0");
    }
    json.push_str(tail);
    zstd(json.as_bytes())
}

async fn throw_bombs(
    http: reqwest::Client,
    server: String,
    device: Device,
    bomb: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    state: Arc<AttackState>,
) {
    while !stop.load(Ordering::Relaxed) {
        state.attempts.fetch_add(1, Ordering::Relaxed);
        match post(&http, &server, &device, bomb.to_vec()).await {
            Ok((status, _)) => state.status(status),
            Err(_) => state.status(0),
        }
    }
}

/// Never finishes its headers: a byte every 5 s; re-opened when closed.
async fn slowloris(addr: SocketAddr, stop: Arc<AtomicBool>, state: Arc<AttackState>) {
    while !stop.load(Ordering::Relaxed) {
        state.attempts.fetch_add(1, Ordering::Relaxed);
        let Some(mut stream) = connect(addr, [127, 0, 0, 2]).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .is_err()
        {
            continue;
        }
        state.open.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Err(_) => {
                    if stream.write_all(b"X").await.is_err() {
                        break;
                    }
                }
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        state.open.fetch_sub(1, Ordering::Relaxed);
        // "Answers" of this attack: how long the server kept the connection, in whole seconds.
        state.status(opened.elapsed().as_secs().min(u64::from(u16::MAX)) as u16);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Valid batches as fast as the server answers, `Retry-After` ignored.
async fn flood(
    args: Args,
    device: Device,
    seqs: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    state: Arc<AttackState>,
) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        state.attempts.fetch_add(1, Ordering::Relaxed);
        let seq = seqs.fetch_add(args.batch_events as u64, Ordering::Relaxed);
        match post(
            &http,
            &args.server,
            &device,
            body(&device, seq, args.batch_events),
        )
        .await
        {
            Ok((status, _)) => {
                if status == 200 {
                    state.succeeded.fetch_add(1, Ordering::Relaxed);
                }
                state.status(status);
            }
            Err(_) => state.status(0),
        }
    }
}

struct PhaseResult {
    phase: String,
    events_per_s: f64,
    fleet_refused: u64,
    probe_max_ms: f64,
    probe_p50_ms: f64,
    probe_non_200: u64,
    probe_sent: u64,
    healthz_max_ms: f64,
    healthz_p99_ms: f64,
    healthz_failed: u64,
    rss_peak_mb: f64,
    attack_attempts: u64,
    attack_open_at_end: u64,
    attack_statuses: BTreeMap<u16, u64>,
}

impl PhaseResult {
    fn line(&self) -> String {
        format!(
            "{:<11} others {:>9.0} events/s | probe max {:>6.0} ms p50 {:>5.0} ms, non-200 {}/{} | /healthz max {:>6.1} ms p99 {:>6.1} ms, failed {} | RSS peak {:>6.1} MB | attack: {} attempts, {} open at end, answers {:?}",
            self.phase,
            self.events_per_s,
            self.probe_max_ms,
            self.probe_p50_ms,
            self.probe_non_200,
            self.probe_sent,
            self.healthz_max_ms,
            self.healthz_p99_ms,
            self.healthz_failed,
            self.rss_peak_mb,
            self.attack_attempts,
            self.attack_open_at_end,
            self.attack_statuses
        )
    }
}

async fn measure(
    args: &Args,
    http: &reqwest::Client,
    probe: &Device,
    fleet: &Fleet,
    attack: &AttackState,
    phase: &str,
) -> PhaseResult {
    let until = Instant::now() + args.duration;
    let acked_before = fleet.acked_events.load(Ordering::Relaxed);
    let refused_before = fleet.refused.load(Ordering::Relaxed);
    let started = Instant::now();

    let rss = tokio::spawn(sample_rss(args.server_pid, until));
    let healthz = tokio::spawn(probe_healthz(args.server.clone(), until));
    // The probe: a one-event batch every 250 ms, each with a new seq.
    let mut latencies = Vec::new();
    let mut non_200 = 0;
    let base_seq = now_ms() * 10;
    let mut i = 0;
    while Instant::now() < until {
        let sent = Instant::now();
        let payload = body(probe, base_seq + i, 1);
        let result = post(http, &args.server, probe, payload).await;
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        if !matches!(result, Ok((200, _))) {
            non_200 += 1;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(sent.elapsed())).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = fleet.acked_events.load(Ordering::Relaxed) - acked_before;
    let (healthz_max, healthz_p99, healthz_failed) =
        healthz.await.unwrap_or((f64::NAN, f64::NAN, 0));
    let rss_peak = rss.await.unwrap_or(0.0);
    latencies.sort_by(f64::total_cmp);
    PhaseResult {
        phase: phase.to_string(),
        events_per_s: acked as f64 / elapsed,
        fleet_refused: fleet.refused.load(Ordering::Relaxed) - refused_before,
        probe_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        probe_p50_ms: latencies
            .get(latencies.len() / 2)
            .copied()
            .unwrap_or(f64::NAN),
        probe_non_200: non_200,
        probe_sent: i,
        healthz_max_ms: healthz_max,
        healthz_p99_ms: healthz_p99,
        healthz_failed,
        rss_peak_mb: rss_peak,
        attack_attempts: attack.attempts.load(Ordering::Relaxed),
        attack_open_at_end: attack.open.load(Ordering::Relaxed),
        attack_statuses: attack
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    }
}

/// Highest VmRSS of `pid` until `until`, in MB.
async fn sample_rss(pid: u32, until: Instant) -> f64 {
    let never = Arc::new(AtomicBool::new(false));
    let [memory] = sample_memory([Some(pid)], Duration::from_millis(100), never, until).await;
    memory.peak_rss_kb as f64 / 1024.0
}

/// `GET /healthz` every 50 ms on a kept-alive connection: (max ms, p99 ms, failures).
async fn probe_healthz(server: String, until: Instant) -> (f64, f64, u64) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut latencies = Vec::new();
    let mut failed = 0;
    while Instant::now() < until {
        let sent = Instant::now();
        let ok = http
            .get(format!("{server}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        if !ok {
            failed += 1;
        }
        latencies.push(ms);
        tokio::time::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed())).await;
    }
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN);
    (latencies.last().copied().unwrap_or(f64::NAN), p99, failed)
}

fn summarize(results: &[PhaseResult]) {
    let baseline = results.first().map(|r| r.events_per_s).unwrap_or(f64::NAN);
    println!();
    println!("== Attack benchmark: what the other devices get (targets: probe 200 within 1 s, /healthz within 100 ms, RSS < 300 MB, capacity >= 80 % of the baseline)");
    println!(
        "{:<11} {:>12} {:>9} {:>14} {:>16} {:>12} {:>10}",
        "phase", "others ev/s", "ratio", "probe max ms", "probe non-200", "healthz max", "RSS MB"
    );
    let mut phases = Vec::new();
    for r in results {
        let ratio = r.events_per_s / baseline;
        let met = r.probe_non_200 == 0
            && r.probe_max_ms <= 1_000.0
            && r.healthz_max_ms <= 100.0
            && r.healthz_failed == 0
            && r.rss_peak_mb < 300.0
            && ratio >= 0.8;
        println!(
            "{:<11} {:>12.0} {:>9.2} {:>14.0} {:>16} {:>12.1} {:>10.1}  {}",
            r.phase,
            r.events_per_s,
            ratio,
            r.probe_max_ms,
            format!("{}/{}", r.probe_non_200, r.probe_sent),
            r.healthz_max_ms,
            r.rss_peak_mb,
            if met { "MET" } else { "NOT MET" }
        );
        phases.push(json!({
            "phase": r.phase,
            "events_per_s": r.events_per_s.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "fleet_refused": r.fleet_refused,
            "probe_max_ms": r.probe_max_ms.round(),
            "probe_p50_ms": r.probe_p50_ms.round(),
            "probe_non_200": r.probe_non_200,
            "probe_sent": r.probe_sent,
            "healthz_max_ms": (r.healthz_max_ms * 10.0).round() / 10.0,
            "healthz_p99_ms": (r.healthz_p99_ms * 10.0).round() / 10.0,
            "healthz_failed": r.healthz_failed,
            "rss_peak_mb": (r.rss_peak_mb * 10.0).round() / 10.0,
            "attack_attempts": r.attack_attempts,
            "attack_open_at_end": r.attack_open_at_end,
            "attack_statuses": r.attack_statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "targets_met": met,
        }));
    }
    println!("{}", json!({ "phases": phases }));
}
