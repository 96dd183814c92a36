//! Reading server-sent events (`GET /v1/items/{id}/events`) over real HTTP.

use std::time::Duration;

use serde_json::Value;

/// One event of a stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `status`, `error`, `end`, …
    pub event: String,
    /// The `data:` lines, parsed as JSON.
    pub data: Value,
}

/// An open event stream.
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// Opens `url` with `bearer`; `Err` carries the status and body of a refusal.
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        bearer: &str,
    ) -> Result<SseStream, (reqwest::StatusCode, reqwest::header::HeaderMap, String)> {
        let response = client
            .get(url)
            .bearer_auth(bearer)
            .header("Accept", "text/event-stream")
            // The harness client's 30 s total timeout would cut a stream; this one is longer.
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        if !response.status().is_success() {
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.text().await.unwrap_or_default();
            return Err((status, headers, body));
        }
        Ok(SseStream {
            response,
            buffer: String::new(),
        })
    }

    /// The next event (keep-alive comments skipped); `None` when the stream ended; panics after
    /// `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment
                }
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"));
                return Some(SseEvent { event, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no server-sent event within {timeout:?}"))
                .unwrap_or_else(|e| panic!("reading the event stream: {e}"))?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next `status` event's document, skipping other events; panics on `end` or after
    /// `timeout`.
    pub async fn next_status(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .expect("the stream ended while waiting for a status");
            match event.event.as_str() {
                "status" => return event.data,
                "end" => panic!("the stream ended: {}", event.data),
                _ => {}
            }
        }
    }
}
