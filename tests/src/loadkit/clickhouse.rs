//! ClickHouse for the load generators: the harness's [`Db`] (the server's own client), on
//! loopback only, because they count, drop and create tables.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::Db;

/// A [`Db`] on `url`'s `database` (as user `default` with `password`, if given) whose queries
/// give up after `timeout`. Refuses a `url` that is not on loopback: `what` names the option
/// it came from in the error.
pub fn loopback_db(
    what: &str,
    url: &str,
    database: &str,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Db> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{what} {url:?}"))?;
    if !matches!(
        parsed.host_str(),
        Some("127.0.0.1" | "localhost" | "::1" | "[::1]")
    ) {
        bail!("{what} must be a loopback address: the benchmarks drop and create tables");
    }
    let db =
        Db::new(url.trim_end_matches('/').to_string(), database.to_string()).with_timeout(timeout);
    Ok(match password {
        Some(password) => db.with_password(password),
        None => db,
    })
}

/// The numbers of `SELECT name, value … FORMAT TSV` lines, by name (other lines skipped).
pub fn tsv_counters(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (name, value) = line.split_once('\t')?;
        Some((name, value.trim().parse().ok()?))
    })
}
