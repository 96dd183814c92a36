//! Registering and deleting webhooks, for the admin API and the `admin webhook` command alike.

use backlight_shared::now_ms;
use clickhouse::Client;
use serde::Deserialize;

use super::events::EventType;
use super::records::Webhook;
use super::signature::new_secret;
use super::target::TargetPolicy;
use crate::clickhouse::ClickHouseError;
use crate::storage::webhooks as store;
use crate::storage::{ReadError, UnreadableRow};
use crate::tenancy::TenantId;
use reqwest::Url;

/// Most webhooks one tenant may have.
pub const MAX_WEBHOOKS_PER_TENANT: usize = 20;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 200;

/// `POST /v1/admin/webhooks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: `https://…` (plain `http` only to hosts the server operator
    /// allowed).
    pub url: String,
    /// What to deliver: any of `item.status_changed`, `item.sla_at_risk`, `item.sla_breached`.
    pub events: Vec<String>,
    /// For admins, e.g. "CRM case updates".
    #[serde(default)]
    pub description: String,
}

/// Why a webhook was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the tenant already has {MAX_WEBHOOKS_PER_TENANT} webhooks (the most allowed); delete one first")]
    TooMany,
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    /// One of the tenant's webhooks (counted against the limit) does not parse.
    #[error(transparent)]
    Unreadable(#[from] UnreadableRow),
}

impl From<ReadError> for CreateError {
    fn from(e: ReadError) -> CreateError {
        match e {
            ReadError::ClickHouse(e) => e.into(),
            ReadError::Unreadable(e) => e.into(),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> CreateError {
    CreateError::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks a request; the URL as it will be called and the events, deduplicated.
pub fn validate(
    request: &CreateWebhook,
    policy: &TargetPolicy,
) -> Result<(Url, Vec<EventType>), CreateError> {
    let url = policy
        .check(request.url.trim())
        .map_err(|e| invalid("url", e.to_string()))?;
    if request.events.is_empty() {
        return Err(invalid("events", "name at least one event"));
    }
    let mut events = Vec::new();
    for name in &request.events {
        let event = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            invalid(
                "events",
                format!("unknown event {name:?}; known: {}", known.join(", ")),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    let description = &request.description;
    if description.len() > MAX_DESCRIPTION_LEN || description.chars().any(char::is_control) {
        return Err(invalid(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_LEN} bytes without control characters"),
        ));
    }
    Ok((url, events))
}

/// Validates and saves a new webhook of `tenant`. The returned webhook holds the signing secret:
/// show it once, it is not shown again.
pub async fn create(
    client: &Client,
    tenant: &TenantId,
    request: &CreateWebhook,
    policy: &TargetPolicy,
) -> Result<Webhook, CreateError> {
    let (url, events) = validate(request, policy)?;
    if store::webhooks_of(client, tenant.as_str()).await?.len() >= MAX_WEBHOOKS_PER_TENANT {
        return Err(CreateError::TooMany);
    }
    let now = now_ms();
    let webhook = Webhook {
        tenant_id: tenant.to_string(),
        webhook_id: format!("wh_{}", crate::secrets::new_key_id()),
        url,
        events,
        description: request.description.clone(),
        secret: new_secret(),
        created_ms: now,
        deleted: false,
        updated_ms: now,
    };
    store::insert_webhook(client, &webhook).await?;
    Ok(webhook)
}

/// Deletes a webhook of `tenant`: nothing more is delivered to it (attempts already running
/// finish). `false` when the tenant has no such webhook.
pub async fn delete(
    client: &Client,
    tenant: &TenantId,
    webhook_id: &str,
) -> Result<bool, ReadError> {
    let Some(mut webhook) = store::webhook(client, tenant.as_str(), webhook_id).await? else {
        return Ok(false);
    };
    if webhook.deleted {
        return Ok(false);
    }
    webhook.deleted = true;
    webhook.updated_ms = now_ms().max(webhook.updated_ms + 1);
    store::insert_webhook(client, &webhook).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str, events: &[&str]) -> CreateWebhook {
        CreateWebhook {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            description: String::new(),
        }
    }

    fn field(e: CreateError) -> &'static str {
        match e {
            CreateError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let policy = TargetPolicy::strict();
        let (url, events) = validate(
            &request(
                "https://crm.example.com/hook",
                &[
                    "item.sla_breached",
                    "item.status_changed",
                    "item.sla_breached",
                ],
            ),
            &policy,
        )
        .unwrap();
        assert_eq!(url.as_str(), "https://crm.example.com/hook");
        assert_eq!(
            events,
            vec![EventType::SlaBreached, EventType::StatusChanged]
        );
        assert_eq!(
            field(
                validate(
                    &request("http://crm.example.com/", &["item.sla_breached"]),
                    &policy
                )
                .unwrap_err()
            ),
            "url"
        );
        assert_eq!(
            field(validate(&request("https://crm.example.com/", &[]), &policy).unwrap_err()),
            "events"
        );
        assert_eq!(
            field(
                validate(
                    &request("https://crm.example.com/", &["item.created"]),
                    &policy
                )
                .unwrap_err()
            ),
            "events"
        );
        let mut long = request("https://crm.example.com/", &["item.sla_breached"]);
        long.description = "x".repeat(MAX_DESCRIPTION_LEN + 1);
        assert_eq!(field(validate(&long, &policy).unwrap_err()), "description");
    }
}
