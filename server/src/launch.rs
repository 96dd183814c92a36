//! Finding the ClickHouse to use: the one named by `--clickhouse-url`, or a local one under the
//! data directory that the server starts and supervises itself (the embedded default).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::StorageArgs;
use crate::clickhouse::embedded::{self, ClickHouseProcess, Supervisor};
use crate::clickhouse::{ClickHouseConfig, ClusterConfig};

/// Keeps an embedded ClickHouse alive for as long as it is held.
pub enum ClickHouseHandle {
    /// An external server; nothing to stop.
    External,
    /// The serving server's own ClickHouse, restarted if it dies.
    Supervised(Supervisor),
    /// Started for one admin command and stopped after it.
    Temporary(ClickHouseProcess),
}

impl ClickHouseHandle {
    /// Stops an embedded ClickHouse cleanly.
    pub async fn shutdown(self) {
        match self {
            ClickHouseHandle::External => {}
            ClickHouseHandle::Supervised(supervisor) => supervisor.shutdown().await,
            ClickHouseHandle::Temporary(process) => {
                if let Err(e) = process.stop().await {
                    tracing::warn!(error = %e, "stopping the temporary ClickHouse failed");
                }
            }
        }
    }
}

fn config(storage: &StorageArgs, url: String) -> ClickHouseConfig {
    ClickHouseConfig {
        url,
        database: storage.clickhouse_database.clone(),
        user: storage.clickhouse_user.clone(),
        password: storage.clickhouse_password.clone(),
        cluster: storage
            .clickhouse_cluster
            .clone()
            .map(|name| ClusterConfig {
                name,
                insert_quorum: storage.clickhouse_insert_quorum,
            }),
    }
}

/// The embedded ClickHouse at `url`, as its own user with the password from its directory.
fn embedded_config(storage: &StorageArgs, url: String, password: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        user: Some(embedded::USER.to_string()),
        password: Some(password.to_string()),
        ..config(storage, url)
    }
}

/// The embedded ClickHouse's directory under the data directory, both created owner-only
/// (0700): they hold a record of people's work and the ClickHouse password. A data directory
/// that already exists keeps its permissions, with a warning when others may enter it.
fn embedded_dir(storage: &StorageArgs) -> anyhow::Result<PathBuf> {
    let data = &storage.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .with_context(|| format!("creating the data directory {}", data.display()))?;
    let mode = std::fs::metadata(data)
        .with_context(|| format!("reading {}", data.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %data.display(), mode = format!("{:o}", mode & 0o777), "the data directory is open to other users; `chmod 700` it");
    }
    Ok(data.join("clickhouse"))
}

/// A cluster is never the embedded ClickHouse (one local server).
fn check_cluster_has_url(storage: &StorageArgs) -> anyhow::Result<()> {
    if let (Some(cluster), None) = (&storage.clickhouse_cluster, &storage.clickhouse_url) {
        anyhow::bail!(
            "--clickhouse-cluster {cluster} needs --clickhouse-url: the URL of a node of the \
             cluster (or of a load balancer in front of its nodes); the embedded ClickHouse is \
             a single server"
        );
    }
    Ok(())
}

/// For `serve`: the given URL, or a supervised embedded ClickHouse.
pub async fn for_serve(
    storage: &StorageArgs,
) -> anyhow::Result<(ClickHouseConfig, ClickHouseHandle)> {
    check_cluster_has_url(storage)?;
    if let Some(url) = &storage.clickhouse_url {
        return Ok((config(storage, url.clone()), ClickHouseHandle::External));
    }
    let dir = embedded_dir(storage)?;
    let supervisor = Supervisor::start(&dir)
        .await
        .with_context(|| format!("starting the embedded ClickHouse under {}", dir.display()))?;
    tracing::info!(url = %supervisor.url(), dir = %dir.display(), "embedded ClickHouse running");
    Ok((
        embedded_config(storage, supervisor.url(), supervisor.password()),
        ClickHouseHandle::Supervised(supervisor),
    ))
}

/// For `admin`: the given URL, the embedded ClickHouse of a server running on this data
/// directory, or (when no server runs) the embedded ClickHouse started just for this command.
pub async fn for_admin(
    storage: &StorageArgs,
) -> anyhow::Result<(ClickHouseConfig, ClickHouseHandle)> {
    check_cluster_has_url(storage)?;
    if let Some(url) = &storage.clickhouse_url {
        return Ok((config(storage, url.clone()), ClickHouseHandle::External));
    }
    let dir = embedded_dir(storage)?;
    if let Some(url) = embedded::discover_running(&dir).await {
        let password = embedded::read_password(&dir).with_context(|| {
            format!(
                "the embedded ClickHouse of {} is running, but its password cannot be read \
                 (run admin as the user the server runs as)",
                storage.data_dir.display()
            )
        })?;
        return Ok((
            embedded_config(storage, url, &password),
            ClickHouseHandle::External,
        ));
    }
    let process = ClickHouseProcess::start(&dir, None)
        .await
        .with_context(|| format!("starting the embedded ClickHouse under {}", dir.display()))?;
    Ok((
        embedded_config(storage, process.url(), process.password()),
        ClickHouseHandle::Temporary(process),
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[tokio::test]
    async fn a_cluster_without_a_url_is_refused_before_anything_starts() {
        let cli =
            Cli::try_parse_from(["backlight-server", "--clickhouse-cluster", "backlight"]).unwrap();
        let error = for_admin(&cli.storage)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("needs --clickhouse-url"), "{error}");
        let error = for_serve(&cli.storage)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("needs --clickhouse-url"), "{error}");
    }
}
