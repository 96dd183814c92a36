//! The Backlight server as the load generators see it: ready or not, enrolling simulated
//! desktops, and its own counters (`/metrics`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use backlight_shared::api::{EnrollRequest, EnrollResponse, ENROLL_PATH};
use reqwest::StatusCode;

/// How many times an enrollment is tried before the run gives up.
const ENROLL_ATTEMPTS: u32 = 5;

/// Waits (up to 30 s) until `server` answers `GET /healthz`.
pub async fn wait_healthy(client: &reqwest::Client, server: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(format!("{server}/healthz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(r) => bail!("{server}/healthz answered {}", r.status()),
            Err(e) => bail!("{server} not reachable: {e}"),
        }
    }
}

/// Enrolls one desktop called `hostname`, retrying what may pass on a second try (transport
/// errors, 429, 5xx) a few times, with back-off; a refusal (4xx) fails at once.
pub async fn enroll(
    client: &reqwest::Client,
    server: &str,
    key: &str,
    hostname: String,
    agent_version: &str,
) -> Result<EnrollResponse> {
    let url = format!("{server}{ENROLL_PATH}");
    let request = EnrollRequest {
        enrollment_key: key.to_string(),
        hostname,
        agent_version: agent_version.to_string(),
        os: "linux".into(),
    };
    let mut last_error = String::new();
    for attempt in 0..ENROLL_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match client.post(&url).json(&request).send().await {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r)
                if r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                bail!(
                    "enrollment refused: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
            }
            Ok(r) => last_error = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last_error = e.to_string(),
        }
    }
    bail!("enrollment failed after {ENROLL_ATTEMPTS} attempts: {last_error}")
}

/// A desktop the generator enrolled: its id and its `Authorization` header value.
pub struct Device {
    pub device_id: uuid::Uuid,
    pub bearer: String,
}

/// Enrolls `count` desktops, `concurrency` at a time; desktop `i` is called `hostname(i)`.
pub async fn enroll_all(
    client: &reqwest::Client,
    server: &str,
    key: &str,
    count: usize,
    concurrency: usize,
    hostname: impl Fn(usize) -> String,
    agent_version: &str,
) -> Result<Vec<Device>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (client, limit, server, key) = (
            client.clone(),
            limit.clone(),
            server.to_string(),
            key.to_string(),
        );
        let (hostname, agent_version) = (hostname(i), agent_version.to_string());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let e = enroll(&client, &server, &key, hostname, &agent_version).await?;
            Ok::<_, anyhow::Error>(Device {
                device_id: e.device_id,
                bearer: format!("Bearer {}", e.device_credential),
            })
        });
    }
    let mut devices = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        devices.push(joined??);
    }
    Ok(devices)
}

/// The server's Prometheus text (`GET /metrics`, with `token` as bearer if given).
pub struct Metrics(String);

impl Metrics {
    /// Scrapes `server`'s `/metrics`; `None` if it cannot be read.
    pub async fn scrape(
        client: &reqwest::Client,
        server: &str,
        token: Option<&str>,
    ) -> Option<Metrics> {
        let mut request = client.get(format!("{server}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Some(Metrics(request.send().await.ok()?.text().await.ok()?))
    }

    /// The sum of metric `name` over all its series.
    pub fn sum(&self, name: &str) -> f64 {
        self.sum_where(name, "")
    }

    /// The sum of metric `name` over its series whose line contains `label` (e.g.
    /// `route="/v1/items/{id}"`).
    pub fn sum_where(&self, name: &str, label: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter(|l| l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
