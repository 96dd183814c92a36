//! What the load generators (`src/bin/*gen.rs`, `realtime.rs`) share, written once: reaching
//! the server ([`server`]: readiness, enrollment, its `/metrics`), reaching ClickHouse
//! ([`clickhouse`]: the harness's [`Db`](crate::Db) on loopback only), and measuring the
//! machine ([`procfs`]: CPU and memory of processes from `/proc`; [`stats`]: percentiles).
//!
//! These are measuring tools, not tests: errors are `anyhow` at their edges, every loop is
//! bounded in count and time, and they only ever talk to loopback.

pub mod args;
pub mod clickhouse;
pub mod procfs;
pub mod server;
pub mod stats;

/// Many simulated agents need many sockets: lifts the soft limit of open files to the hard one.
pub fn raise_fd_limit() {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
