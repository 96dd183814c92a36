//! `backlight-server admin …`: tenants, keys and devices, straight against ClickHouse (so it
//! works with no server running, and against any server of a cluster).

use std::collections::HashMap;

use anyhow::Context;
use backlight_shared::now_ms;

use crate::cli::{
    AdminCommand, ApiKeyCommand, DeviceCommand, EnrollmentKeyCommand, PolicyCommand, StorageArgs,
    TenantCommand, WebhookArgs, WebhookCommand,
};
use crate::launch;
use crate::storage::audit::{AuditEntry, AuditLog};
use crate::storage::events::{self, DeviceProgress, DeviceSession};
use crate::storage::policies::{self, PolicyError};
use crate::storage::registry::NewEnrollmentKey;
use crate::storage::Store;
use crate::tenancy::TenantId;

pub async fn run(
    storage: StorageArgs,
    webhooks: WebhookArgs,
    command: AdminCommand,
) -> anyhow::Result<()> {
    let (config, clickhouse) = launch::for_admin(&storage).await?;
    let result = async {
        let store = Store::open(&config)
            .await
            .with_context(|| format!("opening Backlight's database at {}", config.url))?;
        match command {
            AdminCommand::Webhook(command) => webhook(&store, &webhooks, command).await,
            command => execute(&store, command).await,
        }
    }
    .await;
    clickhouse.shutdown().await;
    result
}

async fn execute(store: &Store, command: AdminCommand) -> anyhow::Result<()> {
    let registry = store.registry();
    match command {
        AdminCommand::Tenant(TenantCommand::Create { id, name }) => {
            registry
                .create_tenant(&id, name.as_deref().unwrap_or(id.as_str()))
                .await?;
            audit(store, &id, "tenant_create", id.as_str()).await?;
            println!("created tenant {id}");
        }
        AdminCommand::Tenant(TenantCommand::List) => {
            println!("{:<32} {:<32} CREATED", "TENANT", "NAME");
            for t in registry.tenants().await? {
                println!(
                    "{:<32} {:<32} {}",
                    t.id.as_str(),
                    t.name,
                    format_ms(t.created_ms)
                );
            }
        }
        AdminCommand::Tenant(TenantCommand::Set {
            id,
            show_person_names,
            time_zone,
        }) => {
            let target = format!(
                "show_person_names={} time_zone={}",
                show_person_names.map_or("unchanged".to_string(), |v| v.to_string()),
                time_zone.as_deref().unwrap_or("unchanged")
            );
            audit(store, &id, "tenant_settings", &target).await?;
            let settings = registry
                .update_settings(&id, show_person_names, time_zone.as_deref())
                .await?;
            println!(
                "tenant {id}: show_person_names={} time_zone={}",
                settings.show_person_names, settings.time_zone
            );
        }
        AdminCommand::EnrollmentKey(EnrollmentKeyCommand::Create {
            tenant,
            expires_in,
            max_uses,
            note,
        }) => {
            let expires_ms = now_ms().saturating_add(expires_in.as_millis() as u64);
            let token = registry
                .create_enrollment_key_with(
                    &tenant,
                    NewEnrollmentKey {
                        expires_ms: Some(expires_ms),
                        max_uses,
                        note: &note,
                    },
                )
                .await?;
            let target = format!(
                "{} expires {} max_uses {}",
                token.id,
                format_ms(expires_ms),
                max_uses.map_or("unlimited".to_string(), |n| n.to_string())
            );
            if let Err(e) = audit(store, &tenant, "enrollment_key_create", &target).await {
                registry.revoke_enrollment_key(&tenant, &token.id).await?;
                return Err(e.context("the new key was revoked again"));
            }
            eprintln!(
                "enrollment key {} for tenant {tenant} (shown once; store it safely):",
                token.id
            );
            println!("{token}");
        }
        AdminCommand::EnrollmentKey(EnrollmentKeyCommand::List { tenant }) => {
            println!(
                "{:<18} {:<8} {:<24} {:<24} {:<11} NOTE",
                "KEY ID", "STATE", "CREATED", "EXPIRES", "USES"
            );
            for k in registry.enrollment_keys(&tenant).await? {
                let used = registry.enrollment_key_uses(&k.key_id).await?;
                let limit = registry.enrollment_key_limit(&k.key_id).await?;
                let uses = match limit {
                    Some(max) => format!("{used}/{max}"),
                    None => used.to_string(),
                };
                let state = match k.unusable_reason(now_ms()) {
                    Some(_) if k.revoked => "revoked",
                    Some(_) => "expired",
                    None if limit.is_some_and(|max| used >= u64::from(max)) => "used-up",
                    None => "active",
                };
                let expires = k.expires_ms.map_or("never".to_string(), format_ms);
                println!(
                    "{:<18} {:<8} {:<24} {:<24} {:<11} {}",
                    k.key_id,
                    state,
                    format_ms(k.created_ms),
                    expires,
                    uses,
                    k.note
                );
            }
        }
        AdminCommand::EnrollmentKey(EnrollmentKeyCommand::Revoke { tenant, key_id }) => {
            audit(store, &tenant, "enrollment_key_revoke", &key_id).await?;
            registry.revoke_enrollment_key(&tenant, &key_id).await?;
            println!("revoked enrollment key {key_id}");
        }
        AdminCommand::ApiKey(ApiKeyCommand::Create { tenant, role, name }) => {
            let token = registry.create_api_key(&tenant, role, &name).await?;
            let target = format!("{} role={role} name={name:?}", token.id);
            if let Err(e) = audit(store, &tenant, "api_key_create", &target).await {
                // A key nobody can trace back is not handed out.
                registry.revoke_api_key(&tenant, &token.id).await?;
                return Err(e.context("the new key was revoked again"));
            }
            eprintln!(
                "API key {} ({role}) for tenant {tenant} (shown once; store it safely):",
                token.id
            );
            println!("{token}");
        }
        AdminCommand::ApiKey(ApiKeyCommand::List { tenant }) => {
            println!(
                "{:<18} {:<9} {:<8} {:<24} NAME",
                "KEY ID", "ROLE", "STATE", "CREATED"
            );
            for k in registry.api_keys(&tenant).await? {
                let state = if k.revoked { "revoked" } else { "active" };
                println!(
                    "{:<18} {:<9} {:<8} {:<24} {}",
                    k.key_id,
                    k.role.as_str(),
                    state,
                    format_ms(k.created_ms),
                    k.name
                );
            }
        }
        AdminCommand::ApiKey(ApiKeyCommand::Revoke { tenant, key_id }) => {
            audit(store, &tenant, "api_key_revoke", &key_id).await?;
            registry.revoke_api_key(&tenant, &key_id).await?;
            println!("revoked API key {key_id}");
        }
        AdminCommand::Device(DeviceCommand::List { tenant, json }) => {
            let devices = registry.devices(&tenant).await?;
            let progress: HashMap<_, DeviceProgress> =
                events::device_progress(store.client(), Some(tenant.as_str()))
                    .await?
                    .into_iter()
                    .map(|p| (p.device_id, p))
                    .collect();
            let sessions: HashMap<_, DeviceSession> =
                events::device_sessions(store.client(), tenant.as_str())
                    .await?
                    .into_iter()
                    .map(|s| (s.device_id, s))
                    .collect();
            if json {
                let rows: Vec<_> = devices
                    .iter()
                    .map(|d| {
                        let p = progress.get(&d.device_id);
                        let session = sessions.get(&d.device_id);
                        serde_json::json!({
                            "device_id": d.device_id,
                            "hostname": d.hostname,
                            "os": d.os,
                            "session": session.map(|s| s.session.as_str()),
                            "session_client": session
                                .map(|s| s.session_client.as_str())
                                .filter(|c| !c.is_empty()),
                            "agent_version": d.agent_version,
                            "enrolled_ms": d.enrolled_ms,
                            "revoked": d.revoked,
                            "max_seq": p.map_or(0, |p| p.max_seq),
                            "received": p.map_or(0, |p| p.received),
                            "missing": p.map_or(0, |p| p.missing),
                            "last_received_ms": p.map_or(0, |p| p.last_received_ms),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<36} {:<20} {:<8} {:<20} {:>10} {:>10} {:>8} LAST SEEN",
                    "DEVICE", "HOSTNAME", "STATE", "SESSION", "MAX SEQ", "RECEIVED", "MISSING"
                );
                for d in devices {
                    let p = progress.get(&d.device_id);
                    let session = match sessions.get(&d.device_id) {
                        None => "-".to_string(),
                        Some(s) if s.session_client.is_empty() => s.session.clone(),
                        Some(s) => format!("{} ({})", s.session, s.session_client),
                    };
                    println!(
                        "{:<36} {:<20} {:<8} {:<20} {:>10} {:>10} {:>8} {}",
                        d.device_id,
                        d.hostname,
                        if d.revoked { "revoked" } else { "active" },
                        session,
                        p.map_or(0, |p| p.max_seq),
                        p.map_or(0, |p| p.received),
                        p.map_or(0, |p| p.missing),
                        p.map_or("never".to_string(), |p| format_ms(p.last_received_ms)),
                    );
                }
            }
        }
        AdminCommand::Device(DeviceCommand::Assign {
            tenant,
            device_id,
            team,
            person,
        }) => {
            let target = format!(
                "{device_id} team={team:?} person set={}",
                !person.is_empty()
            );
            audit(store, &tenant, "device_assign", &target).await?;
            registry
                .assign_device(&tenant, device_id, &team, &person)
                .await?;
            println!("device {device_id} now works for team {team:?}");
        }
        AdminCommand::Policy(PolicyCommand::Show { tenant }) => {
            let stored = policies::current(store.client(), &tenant).await?;
            println!("{}", serde_json::to_string_pretty(&stored.policy)?);
        }
        AdminCommand::Policy(PolicyCommand::Set { tenant, file }) => {
            registry
                .tenant(&tenant)
                .await?
                .with_context(|| format!("tenant {tenant} does not exist"))?;
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading the policy from stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let policy = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid policy", file.display()))?;
            let change = match policies::prepare(store.client(), &tenant, policy).await {
                Ok(change) => change,
                Err(PolicyError::Invalid(e)) => anyhow::bail!("policy refused: {e}"),
                Err(PolicyError::ClickHouse(e)) => return Err(e.into()),
            };
            let summary = change.summary();
            audit(store, &tenant, "policy_save", &summary).await?;
            let stored = policies::save(store.client(), &change, &cli_actor())
                .await
                .map_err(|e| anyhow::anyhow!("saving the policy failed: {e}"))?;
            println!(
                "saved policy version {} for tenant {tenant} ({}): {summary}",
                stored.policy.version, stored.etag
            );
        }
        AdminCommand::Policy(PolicyCommand::History { tenant }) => {
            println!("{:<24} {:>7} {:<40} CHANGES", "SAVED", "VERSION", "BY");
            for h in policies::history(store.client(), &tenant).await? {
                println!(
                    "{:<24} {:>7} {:<40} {}",
                    format_ms(h.saved_ms),
                    h.version,
                    h.saved_by,
                    h.changes
                );
            }
        }
        AdminCommand::Device(DeviceCommand::Revoke { tenant, device_id }) => {
            audit(store, &tenant, "device_revoke", &device_id.to_string()).await?;
            registry.revoke_device(&tenant, device_id).await?;
            println!("revoked device {device_id}; its uploads are refused from now on");
        }
        AdminCommand::Webhook(_) => unreachable!("dispatched to `webhook` by `run`"),
    }
    Ok(())
}

/// `admin webhook …`: the same rules as the admin API (`/v1/admin/webhooks`).
async fn webhook(store: &Store, args: &WebhookArgs, command: WebhookCommand) -> anyhow::Result<()> {
    use crate::storage::webhooks;
    use crate::webhooks::records::DeliveryState;
    use crate::webhooks::registration::{self, CreateError, CreateWebhook};
    use crate::webhooks::target::TargetPolicy;

    let client = store.client();
    match command {
        WebhookCommand::Create {
            tenant,
            url,
            events,
            description,
        } => {
            store
                .registry()
                .tenant(&tenant)
                .await?
                .with_context(|| format!("tenant {tenant} does not exist"))?;
            let policy = TargetPolicy::allowing(args.webhook_allow_hosts.iter().cloned());
            let request = CreateWebhook {
                url,
                events,
                description,
            };
            let row = match registration::create(client, &tenant, &request, &policy).await {
                Ok(row) => row,
                Err(CreateError::Invalid { field, message }) => {
                    anyhow::bail!("webhook refused ({field}): {message}")
                }
                Err(e) => return Err(e.into()),
            };
            eprintln!(
                "webhook {} for tenant {tenant} -> {} ({}); signing secret (shown once; store it safely):",
                row.webhook_id,
                row.url,
                event_names(&row.events).join(", ")
            );
            println!("{}", row.secret);
        }
        WebhookCommand::List { tenant } => {
            println!("{:<20} {:<24} {:<48} URL", "WEBHOOK", "CREATED", "EVENTS");
            for w in webhooks::webhooks_of(client, tenant.as_str()).await? {
                println!(
                    "{:<20} {:<24} {:<48} {}",
                    w.webhook_id,
                    format_ms(w.created_ms),
                    event_names(&w.events).join(","),
                    w.url
                );
            }
        }
        WebhookCommand::Delete { tenant, webhook_id } => {
            if !registration::delete(client, &tenant, &webhook_id).await? {
                anyhow::bail!("webhook {webhook_id} not found in tenant {tenant}");
            }
            println!("deleted webhook {webhook_id}; nothing more is delivered to it");
        }
        WebhookCommand::Deliveries {
            tenant,
            webhook_id,
            state,
            limit,
        } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(DeliveryState::parse(s).with_context(|| {
                    format!("unknown state {s:?}: pending, delivered or failed")
                })?),
            };
            let from_ms = now_ms().saturating_sub(
                crate::storage::retention::DailyTable::WebhookDeliveries.keep_days() * 86_400_000,
            );
            let rows = webhooks::recent_deliveries(
                client,
                tenant.as_str(),
                &webhook_id,
                from_ms,
                state,
                limit.clamp(1, 500),
            )
            .await?;
            println!(
                "{:<36} {:<20} {:<10} {:>8} {:<24} {:<24} LAST ERROR",
                "DELIVERY", "EVENT", "STATE", "ATTEMPTS", "CREATED", "NEXT ATTEMPT"
            );
            for d in rows {
                let next = if d.state == DeliveryState::Pending && d.next_attempt_ms != 0 {
                    format_ms(d.next_attempt_ms)
                } else {
                    "-".to_string()
                };
                println!(
                    "{:<36} {:<20} {:<10} {:>8} {:<24} {:<24} {}",
                    d.delivery_id,
                    d.event_type.as_str(),
                    d.state.as_str(),
                    d.attempts,
                    format_ms(d.created_ms),
                    next,
                    d.last_error
                );
            }
        }
    }
    Ok(())
}

/// Who runs this command, for the audit log: the operating-system user (the command line has
/// no API key; whoever can reach ClickHouse with the data directory or its password can run it).
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn cli_actor() -> String {
    format!("admin-cli:{}", os_user())
}

/// Records an administrative change in the tenant's audit log before it is made; a change that
/// cannot be audited is not made.
async fn audit(store: &Store, tenant: &TenantId, action: &str, target: &str) -> anyhow::Result<()> {
    let log = AuditLog::new(store.client().clone());
    log.record(AuditEntry {
        tenant_id: tenant.to_string(),
        key_id: "admin-cli".to_string(),
        key_name: os_user(),
        role: "admin-cli".to_string(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: "ok".to_string(),
    })?;
    log.flush()
        .await
        .context("writing the audit log (the change was not made)")
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp (second precision).
/// The names of webhook event types, as the API spells them.
fn event_names(events: &[crate::webhooks::events::EventType]) -> Vec<&'static str> {
    events.iter().map(|e| e.as_str()).collect()
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
