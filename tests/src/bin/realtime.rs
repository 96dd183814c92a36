//! `backlight-realtime`: end-to-end latency as users see it (a measuring tool, not a timed
//! test). Driven by `scripts/bench-realtime.sh`; see docs/BENCHMARKS.md, "Real time".
//!
//! For each sample it takes a fresh item through a real, running `backlight-agent`:
//!
//! 1. `backlight-agent item start ID` (the item must exist before a stream can be opened), then
//!    waits until `GET /v1/items/ID` shows it;
//! 2. opens the live stream `GET /v1/items/ID/events` and reads its first `status` event;
//! 3. starts the clock and runs `backlight-agent item done ID` — a separate process, exactly
//!    what an employee or a script on the desktop runs;
//! 4. polls `GET /v1/items/ID` every `--poll-interval` until it says `completed` (a), and
//!    waits for the stream to push a `status` event saying `completed` (b).
//!
//! It reports p50 / p99 / max of (a) and (b) from the moment `item done` was started, and how
//! long the `item done` process itself took. The agent runs with whatever settings the caller
//! gave it (the script: the defaults). Loopback only; every wait is bounded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backlight_e2e::loadkit::clickhouse::loopback_db;
use backlight_e2e::loadkit::stats::nearest_rank;
use backlight_e2e::Db;
use backlight_server::cli::parse_duration;
use clap::Parser;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "backlight-realtime",
    about = "Backlight end-to-end latency: `item done` on a desktop to the status API and a live stream"
)]
struct Args {
    /// The server's base URL.
    #[arg(long)]
    server: String,
    /// A cc_agent API key (what the contact center uses).
    #[arg(long, env = "BACKLIGHT_LOOKUP_KEY", hide_env_values = true)]
    api_key: String,
    /// The backlight-agent executable.
    #[arg(long)]
    agent_bin: PathBuf,
    /// The data directory of the running, enrolled and consented agent.
    #[arg(long)]
    agent_dir: PathBuf,
    /// Items to take through (one sample each).
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Pause between samples.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pause: Duration,
    /// How often the status API is asked while waiting (the resolution of figure (a)).
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Longest wait for one change, on either path, before the sample counts as timed out.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Prefix of the item ids (a random suffix keeps runs apart).
    #[arg(long, default_value = "RT")]
    prefix: String,
    /// ClickHouse HTTP URL (loopback): split each figure at the moment the server received the
    /// event (`received_ms` of its row), into "desktop to server" and "server to the API".
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// ClickHouse database.
    #[arg(long, default_value = "backlight")]
    clickhouse_database: String,
    /// Password of ClickHouse's `default` user (the embedded one keeps it in
    /// `DATA_DIR/clickhouse/password`).
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
    /// A label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

/// One sample's figures, in ms from the start of `item done`.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    command_ms: f64,
    api_ms: Option<f64>,
    stream_ms: Option<f64>,
    /// When the server received the event (its `received_ms`), with `--clickhouse-url`.
    received_ms: Option<f64>,
    /// Wall-clock start of `item done`, ms since the epoch.
    started_wall_ms: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.samples == 0 || args.samples > 10_000 {
        bail!("--samples must be 1..=10000");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(&args))
}

async fn run(args: &Args) -> Result<()> {
    let server = args.server.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let mut samples = Vec::with_capacity(args.samples);
    let mut errors: Vec<String> = Vec::new();
    for i in 0..args.samples {
        let item = format!("{}-{run_id}-{i:05}", args.prefix);
        match tokio::time::timeout(args.timeout * 3, sample(args, &client, &server, &item)).await {
            Ok(Ok(s)) => {
                eprintln!(
                    "{item}: command {:.0} ms, status API {}, stream {}",
                    s.command_ms,
                    show(s.api_ms),
                    show(s.stream_ms)
                );
                samples.push((item, s));
            }
            Ok(Err(e)) => {
                eprintln!("{item}: {e:#}");
                errors.push(format!("{e:#}"));
            }
            Err(_) => errors.push(format!("{item}: the sample took too long")),
        }
        tokio::time::sleep(args.pause).await;
    }
    // One read after the samples, so it does not load ClickHouse while they run.
    if let Some(url) = &args.clickhouse_url {
        let prefix = format!("{}-{run_id}-", args.prefix);
        let clickhouse = loopback_db(
            "--clickhouse-url",
            url,
            &args.clickhouse_database,
            args.clickhouse_password.as_deref(),
            Duration::from_secs(120),
        )?;
        match received_at(&clickhouse, &prefix).await {
            Ok(received) => {
                for (item, s) in &mut samples {
                    s.received_ms = received
                        .get(item.as_str())
                        .map(|at| *at as f64 - s.started_wall_ms as f64);
                }
            }
            Err(e) => eprintln!("cannot read when the server received the events: {e:#}"),
        }
    }
    let samples: Vec<Sample> = samples.into_iter().map(|(_, s)| s).collect();
    report(args, &samples, &errors);
    Ok(())
}

fn show(ms: Option<f64>) -> String {
    ms.map_or("timed out".into(), |ms| format!("{ms:.0} ms"))
}

async fn agent(args: &Args, words: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new(&args.agent_bin)
        .arg("--data-dir")
        .arg(&args.agent_dir)
        .args(words)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", args.agent_bin.display()))?;
    if !output.status.success() {
        bail!(
            "`backlight-agent {}` failed: {}",
            words.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The item's status per the status API, `None` while it is unknown (404).
async fn status(
    client: &reqwest::Client,
    server: &str,
    key: &str,
    item: &str,
) -> Result<Option<String>> {
    let response = client
        .get(format!("{server}/v1/items/{item}"))
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::OK => {
            let doc: Value = response.json().await?;
            Ok(doc["status"].as_str().map(String::from))
        }
        other => bail!("GET /v1/items/{item}: {other}"),
    }
}

/// Polls the status API until `item` has `wanted` status; returns when it first did.
async fn poll_until(
    args: &Args,
    client: &reqwest::Client,
    server: &str,
    item: &str,
    wanted: &str,
) -> Result<Instant> {
    let deadline = Instant::now() + args.timeout;
    loop {
        if status(client, server, &args.api_key, item)
            .await?
            .as_deref()
            == Some(wanted)
        {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!(
                "the status API did not show {item} {wanted} within {:?}",
                args.timeout
            );
        }
        tokio::time::sleep(args.poll_interval).await;
    }
}

/// An open live stream, read event by event.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(client: &reqwest::Client, server: &str, key: &str, item: &str) -> Result<Stream> {
        let response = client
            .get(format!("{server}/v1/items/{item}/events"))
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(ACCEPT, "text/event-stream")
            .send()
            .await?;
        if response.status() != StatusCode::OK {
            bail!("GET /v1/items/{item}/events: {}", response.status());
        }
        Ok(Stream {
            response,
            buffer: String::new(),
        })
    }

    /// The `status` field of the next `status` event.
    async fn next_status(&mut self) -> Result<String> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = if v.trim() == "status" {
                            "status"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if name == "status" {
                    let doc: Value =
                        serde_json::from_str(&data).context("a status event's data")?;
                    return Ok(doc["status"].as_str().unwrap_or("").to_string());
                }
            }
            match self.response.chunk().await? {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => bail!("the stream ended"),
            }
        }
    }
}

async fn sample(args: &Args, client: &reqwest::Client, server: &str, item: &str) -> Result<Sample> {
    agent(args, &["item", "start", item]).await?;
    poll_until(args, client, server, item, "in_progress").await?;
    let mut stream = Stream::open(client, server, &args.api_key, item).await?;
    let first = stream.next_status().await?;
    if first != "in_progress" {
        bail!("the stream opened with status {first:?}");
    }

    let started = Instant::now();
    let started_wall_ms = backlight_shared::now_ms();
    let since = |at: Instant| (at - started).as_secs_f64() * 1000.0;
    let command = async {
        agent(args, &["item", "done", item]).await?;
        Ok::<f64, anyhow::Error>(since(Instant::now()))
    };
    let api = async {
        poll_until(args, client, server, item, "completed")
            .await
            .ok()
            .map(since)
    };
    let pushed = async {
        let deadline = tokio::time::sleep(args.timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = stream.next_status() => match next {
                    Ok(s) if s == "completed" => return Some(since(Instant::now())),
                    Ok(_) => {}
                    Err(_) => return None,
                },
                _ = &mut deadline => return None,
            }
        }
    };
    let (command_ms, api_ms, stream_ms) = tokio::join!(command, api, pushed);
    Ok(Sample {
        command_ms: command_ms?,
        api_ms,
        stream_ms,
        received_ms: None,
        started_wall_ms,
    })
}

/// The server's `received_ms` of each `completed` event of an item whose id starts with
/// `prefix`, by item.
async fn received_at(
    clickhouse: &Db,
    prefix: &str,
) -> Result<std::collections::HashMap<String, u64>> {
    let sql = format!(
        "SELECT item_id, min(received_ms) FROM events WHERE startsWith(item_id, '{prefix}') \
         AND action = 'completed' GROUP BY item_id FORMAT TSV"
    );
    let text = clickhouse.try_query(&sql).await?;
    let mut received = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some((item, at)) = line.split_once('\t') {
            received.insert(item.to_string(), at.parse()?);
        }
    }
    Ok(received)
}

fn figures(values: impl Iterator<Item = Option<f64>>) -> Value {
    let all: Vec<Option<f64>> = values.collect();
    let mut seen: Vec<f64> = all.iter().flatten().copied().collect();
    seen.sort_by(f64::total_cmp);
    let round = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
    json!({
        "samples": seen.len(),
        "timed_out": all.len() - seen.len(),
        "p50_ms": round(nearest_rank(&seen, 0.50)),
        "p99_ms": round(nearest_rank(&seen, 0.99)),
        "max_ms": round(seen.last().copied()),
    })
}

fn report(args: &Args, samples: &[Sample], errors: &[String]) {
    let api = figures(samples.iter().map(|s| s.api_ms));
    let stream = figures(samples.iter().map(|s| s.stream_ms));
    let command = figures(samples.iter().map(|s| Some(s.command_ms)));
    let to_server = figures(samples.iter().map(|s| s.received_ms));
    let server_to_api = figures(
        samples
            .iter()
            .map(|s| s.received_ms.zip(s.api_ms).map(|(r, a)| a - r)),
    );
    let line = |name: &str, f: &Value| {
        println!(
            "{name:<28} p50 {} ms, p99 {} ms, max {} ms ({} samples, {} timed out)",
            f["p50_ms"], f["p99_ms"], f["max_ms"], f["samples"], f["timed_out"]
        )
    };
    println!(
        "== end-to-end latency{}",
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", args.label)
        }
    );
    line("(a) status API", &api);
    line("(b) live stream", &stream);
    line("`item done` process", &command);
    if args.clickhouse_url.is_some() {
        line("start to server receipt", &to_server);
        line("server receipt to (a)", &server_to_api);
    }
    if !errors.is_empty() {
        println!("errors: {} (first: {})", errors.len(), errors[0]);
    }
    println!(
        "{}",
        json!({
            "label": args.label,
            "samples": args.samples,
            "poll_interval_ms": args.poll_interval.as_millis() as u64,
            "status_api": api,
            "stream": stream,
            "item_command": command,
            "to_server": args.clickhouse_url.is_some().then_some(to_server),
            "server_to_status_api": args.clickhouse_url.is_some().then_some(server_to_api),
            "errors": errors.len(),
        })
    );
}
