//! Samples the desktop capture backend about once a second and reports what it costs.
//!
//! A measuring tool for `scripts/bench-agent-footprint.sh` (the backend's own CPU, memory and
//! per-sample latency, without spool or uploads) and a quick check on a real desktop:
//!
//! ```text
//! cargo run --release -p backlight-agent --example capture_probe -- --seconds 10 --print
//! ```
//!
//! Arguments: `--seconds N` (default 60), `--interval-ms N` (default 1000), `--print` (one line
//! per sample). At the end it prints one JSON object: samples, errors, reconnects, distinct
//! windows seen and sample latency (mean, p99, max, in microseconds). When the display goes
//! away it reopens the backend every 5 s, as the agent does.

use std::time::{Duration, Instant};

use backlight_agent::capture::{open_backend, CaptureError, DesktopBackend};

/// How long to wait before reopening a lost display.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

struct Args {
    seconds: u64,
    interval: Duration,
    print: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        interval: Duration::from_millis(1000),
        print: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seconds" => args.seconds = number("--seconds")?,
            "--interval-ms" => args.interval = Duration::from_millis(number("--interval-ms")?),
            "--print" => args.print = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("capture_probe: {e}");
            std::process::exit(2);
        }
    };
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut backend: Option<Box<dyn DesktopBackend>> = None;
    let mut next_open = Instant::now();
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut errors = 0u64;
    let mut opens = 0u64;
    let mut windows = std::collections::BTreeSet::new();
    let mut described = String::new();

    while Instant::now() < end {
        let tick = Instant::now();
        if backend.is_none() && tick >= next_open {
            match open_backend() {
                Ok(b) => {
                    described = b.describe();
                    opens += 1;
                    backend = Some(b);
                }
                Err(CaptureError::Unavailable(why)) => {
                    eprintln!("capture_probe: {why}");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("capture_probe: {e}; retrying in {REOPEN_AFTER:?}");
                    next_open = tick + REOPEN_AFTER;
                }
            }
        }
        if let Some(b) = backend.as_mut() {
            let started = Instant::now();
            let result = b.sample();
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            match result {
                Ok(sample) => {
                    latencies_us.push(took);
                    if let Some(focus) = &sample.focus {
                        windows.insert(focus.window);
                    }
                    if args.print {
                        println!(
                            "{:>6}us idle={}ms locked={} focus={:?}",
                            took, sample.idle_ms, sample.locked, sample.focus
                        );
                    }
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("capture_probe: {e}");
                    backend = None;
                    next_open = Instant::now() + REOPEN_AFTER;
                }
            }
        }
        std::thread::sleep(args.interval.saturating_sub(tick.elapsed()));
    }

    latencies_us.sort_unstable();
    let n = latencies_us.len();
    let mean = if n == 0 {
        0
    } else {
        latencies_us.iter().sum::<u64>() / n as u64
    };
    let p99 = latencies_us
        .get((n * 99 / 100).min(n.saturating_sub(1)))
        .copied();
    println!(
        "{{\"backend\":{:?},\"samples\":{n},\"errors\":{errors},\"opens\":{opens},\
         \"windows_seen\":{},\"sample_us_mean\":{mean},\"sample_us_p99\":{},\"sample_us_max\":{}}}",
        described,
        windows.len(),
        p99.unwrap_or(0),
        latencies_us.last().copied().unwrap_or(0)
    );
}
