//! Hand-made events and batches, the answers to posting them, and the JSON Lines files the
//! agent's file source reads.

use backlight_shared::api::ErrorBody;
use backlight_shared::batch::Batch;
use backlight_shared::event::{
    ActivitySpan, ActivityState, Event, EventBody, ItemAction, ItemSource, WorkItemEvent,
};
use backlight_shared::{UnixMillis, PROTOCOL_VERSION};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// An enrolled device as the server sees it: what a hand-made upload needs.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: Uuid,
    pub tenant: String,
    pub credential: String,
}

/// A work-item event with sequence number `seq`.
pub fn work_item(seq: u64, item_id: &str, action: ItemAction, at_ms: UnixMillis) -> Event {
    Event {
        seq,
        id: Uuid::new_v4(),
        body: EventBody::WorkItem(WorkItemEvent {
            item_id: item_id.to_string(),
            action,
            step: None,
            at_ms,
            source: ItemSource::App,
        }),
    }
}

/// An active span of `app` on no item, with sequence number `seq`.
pub fn activity_span(seq: u64, app: &str, start_ms: UnixMillis, end_ms: UnixMillis) -> Event {
    Event {
        seq,
        id: Uuid::new_v4(),
        body: EventBody::ActivitySpan(ActivitySpan {
            app: app.to_string(),
            title: None,
            start_ms,
            end_ms,
            state: ActivityState::Active,
            item_id: None,
            step: None,
        }),
    }
}

/// A batch of `events` from `device`.
pub fn batch(device: &Device, events: Vec<Event>) -> Batch {
    Batch {
        protocol: PROTOCOL_VERSION,
        device_id: device.id,
        events,
    }
}

/// zstd-compresses `bytes` (level 3, as the agent does).
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd compression of an in-memory buffer")
}

/// One event of a file-source input, with what the test expects to find stored for it.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEvent {
    /// The line as the agent reads it (one `EventBody` as JSON).
    pub line: String,
    /// `work_item` or `activity_span`.
    pub kind: &'static str,
    /// Unique per line: `CLM-<n>` for items, `SPAN-<n>` on spans.
    pub item_id: String,
    /// `at_ms` or `start_ms`, unique per line.
    pub time_ms: UnixMillis,
    /// The action of a work item, `""` for spans.
    pub action: &'static str,
    /// The app of a span, `""` for work items.
    pub app: &'static str,
}

/// `n` events for the agent's file source: work items (cycling through the actions) and
/// activity spans (app `claims-desk`, never a title) alternating, each with a unique item id and
/// a unique time, starting an hour ago, 10 ms apart.
pub fn events_file_lines(n: usize) -> Vec<FileEvent> {
    let base = backlight_shared::now_ms() - 3_600_000;
    (0..n)
        .map(|i| {
            let time_ms = base + 10 * i as u64;
            if i % 2 == 0 {
                let action = ItemAction::ALL[(i / 2) % ItemAction::ALL.len()];
                let item_id = format!("CLM-{i}");
                let body = EventBody::WorkItem(WorkItemEvent {
                    item_id: item_id.clone(),
                    action,
                    step: None,
                    at_ms: time_ms,
                    source: ItemSource::App,
                });
                FileEvent {
                    line: serde_json::to_string(&body).expect("serializes"),
                    kind: "work_item",
                    item_id,
                    time_ms,
                    action: action.as_str(),
                    app: "",
                }
            } else {
                let item_id = format!("SPAN-{i}");
                let body = EventBody::ActivitySpan(ActivitySpan {
                    app: "claims-desk".into(),
                    title: None,
                    start_ms: time_ms,
                    end_ms: time_ms + 5,
                    state: ActivityState::Active,
                    item_id: Some(item_id.clone()),
                    step: None,
                });
                FileEvent {
                    line: serde_json::to_string(&body).expect("serializes"),
                    kind: "activity_span",
                    item_id,
                    time_ms,
                    action: "",
                    app: "claims-desk",
                }
            }
        })
        .collect()
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Posted {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Posted {
    pub async fn read(response: reqwest::Response) -> Posted {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| format!("(unreadable body: {e})"));
        Posted {
            status,
            headers,
            body,
        }
    }

    /// Panics unless the answer is 200.
    pub fn assert_ok(&self) -> &Posted {
        assert_eq!(self.status, StatusCode::OK, "expected 200, got {self}");
        self
    }

    /// The body of a 200 answer, parsed.
    pub fn ok_json<T: DeserializeOwned>(&self) -> T {
        self.assert_ok();
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("200 body does not parse ({e}): {}", self.body))
    }

    /// The [`ErrorBody`] of an error answer; panics if the body is not one.
    pub fn error(&self) -> ErrorBody {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error answer is not a JSON ErrorBody ({e}): {self}"))
    }

    /// Checks status, error code and field; `Err` describes every mismatch.
    pub fn check_error(
        &self,
        status: u16,
        code: &str,
        field: Option<&str>,
    ) -> Result<ErrorBody, String> {
        if self.status.as_u16() != status {
            return Err(format!("expected {status} {code}, got {self}"));
        }
        let body: ErrorBody = serde_json::from_str(&self.body)
            .map_err(|e| format!("not a JSON ErrorBody ({e}): {self}"))?;
        if body.error != code {
            return Err(format!("expected error code {code:?}, got {body:?}"));
        }
        if body.field.as_deref() != field {
            return Err(format!("expected field {field:?}, got {body:?}"));
        }
        Ok(body)
    }

    /// Panics unless the answer is `status` with error `code` naming `field`.
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) -> ErrorBody {
        self.check_error(status, code, field)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl std::fmt::Display for Posted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(500).collect();
        write!(f, "{} {body}", self.status)
    }
}
