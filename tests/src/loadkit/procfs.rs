//! CPU and memory of processes (and of the whole machine), read from Linux's `/proc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Memory of one process over a run, from `/proc/PID/status`.
#[derive(Default, Clone, Copy, Debug)]
pub struct Memory {
    /// Highest VmRSS seen by the sampler, kB.
    pub peak_rss_kb: u64,
    /// VmHWM at the last sample (the kernel's own peak since process start), kB.
    pub hwm_kb: u64,
    pub samples: u64,
}

/// `(VmRSS, VmHWM)` of `pid` in kB, if it runs.
pub fn read_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples the memory of each of `pids` `every` so often until `stop` is set or `deadline`.
pub async fn sample_memory<const N: usize>(
    pids: [Option<u32>; N],
    every: Duration,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> [Memory; N] {
    let mut memory = [Memory::default(); N];
    if pids.iter().all(Option::is_none) {
        return memory;
    }
    let mut ticker = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        ticker.tick().await;
        for (pid, m) in pids.iter().zip(memory.iter_mut()) {
            if let Some((rss, hwm)) = pid.and_then(read_memory) {
                m.peak_rss_kb = m.peak_rss_kb.max(rss);
                m.hwm_kb = hwm;
                m.samples += 1;
            }
        }
    }
    memory
}

/// CPU time a process has used so far (user + system), in clock ticks; `pid` may be `self`.
pub fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The whole machine's (busy, total) clock ticks over all cores.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time used so far by the server, ClickHouse, this generator and the whole machine.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    at: Instant,
    server: Option<u64>,
    clickhouse: Option<u64>,
    generator: Option<u64>,
    machine: Option<(u64, u64)>,
}

/// CPU used over an interval, in cores (1.0 = one core fully busy).
#[derive(Clone, Copy, Default, Debug)]
pub struct CpuUse {
    pub seconds: f64,
    pub server: Option<f64>,
    pub clickhouse: Option<f64>,
    pub generator: Option<f64>,
    /// Busy cores of the whole machine.
    pub machine_busy: Option<f64>,
    /// Cores the machine has (as its tick count says).
    pub machine_cores: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>, clickhouse_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: server_pid.and_then(|p| process_ticks(&p.to_string())),
            clickhouse: clickhouse_pid.and_then(|p| process_ticks(&p.to_string())),
            generator: process_ticks("self"),
            machine: machine_ticks(),
        }
    }

    /// What was used between this sample and `later`.
    pub fn delta(&self, later: &CpuSample) -> CpuUse {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let hz = clock_ticks_per_second();
        let cores = |x: Option<u64>, y: Option<u64>| {
            x.zip(y)
                .map(|(x, y)| y.saturating_sub(x) as f64 / hz / seconds)
        };
        let (machine_busy, machine_cores) = match self.machine.zip(later.machine) {
            Some(((b0, t0), (b1, t1))) if t1 > t0 => (
                Some(b1.saturating_sub(b0) as f64 / hz / seconds),
                Some((t1 - t0) as f64 / hz / seconds),
            ),
            _ => (None, None),
        };
        CpuUse {
            seconds,
            server: cores(self.server, later.server),
            clickhouse: cores(self.clickhouse, later.clickhouse),
            generator: cores(self.generator, later.generator),
            machine_busy,
            machine_cores,
        }
    }
}
