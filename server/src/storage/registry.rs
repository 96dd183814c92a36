//! Tenants, enrollment keys, devices and API keys (schema in
//! `deploy/clickhouse/migrations/0001_registry.sql`).
//!
//! Rows are versioned by `updated_ms`: a change inserts a new version, reads take the newest
//! (`FINAL`). That keeps every server stateless — any of them can enroll, authenticate or
//! revoke — with ClickHouse as the one store.
//!
//! The row structs are private: reads hand back [`crate::tenancy`]'s types (a tenant id parsed,
//! a role a [`Role`], flags as `bool`, "never expires" as `None`), and a row that does not
//! parse is an [`UnreadableRow`] naming its table, key and field.

use backlight_shared::credential::{SecretKind, Token};
use backlight_shared::now_ms;
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ReadError, UnreadableRow};
use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};
use crate::secrets;
use crate::tenancy::{
    ApiKey, Assignment, Device, DeviceCredential, EnrollmentKey, Role, Tenant, TenantId,
    TenantSettings,
};

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    #[error(
        "tenant {0} does not exist (create it with `backlight-server admin tenant create {0}`)"
    )]
    NoSuchTenant(TenantId),
    #[error("{what} {id} not found in tenant {tenant}")]
    NotFound {
        what: &'static str,
        id: String,
        tenant: TenantId,
    },
}

/// A row of `tenants` (read as [`Tenant`]).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct TenantRow {
    tenant_id: String,
    name: String,
    created_ms: u64,
    updated_ms: u64,
}

impl TenantRow {
    fn into_tenant(self) -> Result<Tenant, UnreadableRow> {
        Ok(Tenant {
            id: parse_tenant("tenants", &self.tenant_id, &self.tenant_id)?,
            name: self.name,
            created_ms: self.created_ms,
        })
    }
}

/// A row of `enrollment_keys` (read as [`EnrollmentKey`]; `expires_ms` 0: never).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct EnrollmentKeyRow {
    key_id: String,
    tenant_id: String,
    secret_hash: String,
    note: String,
    created_ms: u64,
    expires_ms: u64,
    revoked: u8,
    updated_ms: u64,
}

impl EnrollmentKeyRow {
    fn into_key(self) -> Result<EnrollmentKey, UnreadableRow> {
        Ok(EnrollmentKey {
            tenant: parse_tenant("enrollment_keys", &self.key_id, &self.tenant_id)?,
            key_id: self.key_id,
            secret_hash: self.secret_hash,
            note: self.note,
            created_ms: self.created_ms,
            expires_ms: Some(self.expires_ms).filter(|&e| e != 0),
            revoked: self.revoked != 0,
        })
    }
}

/// The tenant id of a row of `table` (keyed `key`). Rows are written only from parsed ids;
/// one that does not parse was edited by hand or written by a newer release.
fn parse_tenant(
    table: &'static str,
    key: &str,
    tenant_id: &str,
) -> Result<TenantId, UnreadableRow> {
    tenant_id.parse().map_err(|_| UnreadableRow {
        table,
        key: key.to_string(),
        field: "tenant_id",
        value: tenant_id.to_string(),
    })
}

/// How long an enrollment key lives when its creator names no expiry.
pub const DEFAULT_ENROLLMENT_KEY_TTL: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);
/// The longest expiry an enrollment key may be given.
pub const MAX_ENROLLMENT_KEY_TTL: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 3600);

/// `devices.revoked` of a device whose enrollment was refused after its row was written: its
/// key was used up by devices that enrolled first (see [`Registry::enroll_device`]). Such a
/// device never received its credential and does not count as a use.
pub const REVOKED_KEY_USED_UP: u8 = 2;

/// An enrollment key to create.
#[derive(Debug, Clone, Default)]
pub struct NewEnrollmentKey<'a> {
    /// When it stops working; `None`: [`DEFAULT_ENROLLMENT_KEY_TTL`] from now.
    pub expires_ms: Option<u64>,
    /// The most devices it may enroll; `None`: no limit.
    pub max_uses: Option<u32>,
    /// A note for admins.
    pub note: &'a str,
}

/// The most devices an enrollment key may enroll (`enrollment_key_limits`).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct EnrollmentKeyLimitRow {
    key_id: String,
    tenant_id: String,
    max_uses: u32,
    updated_ms: u64,
}

/// Why a device was not enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("enrollment key used up: it may enroll at most {max_uses} devices")]
    UsedUp { max_uses: u32 },
    /// The device's row took longer than [`ENROLL_SETTLE`] to be stored, so whether it is
    /// within the key's limit cannot be told; it was refused and may simply try again.
    #[error("the enrollment could not be confirmed in time; try again")]
    Unconfirmed,
}

/// How long after a limited key's device is stamped its server waits before reading which
/// devices came first. Every device stamped earlier whose row took at most this long to store is
/// then visible to the check; a device whose row took longer refuses itself
/// ([`EnrollError::Unconfirmed`]). Without the wait a device stamped earlier but stored later
/// could push one already accepted out of the first `max_uses`, and both would be enrolled.
pub const ENROLL_SETTLE: std::time::Duration = std::time::Duration::from_millis(1_000);

/// A row of `devices` (read as [`Device`]).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct DeviceRow {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    tenant_id: String,
    secret_hash: String,
    hostname: String,
    os: String,
    agent_version: String,
    enrollment_key_id: String,
    enrolled_ms: u64,
    revoked: u8,
    updated_ms: u64,
}

impl DeviceRow {
    fn into_device(self) -> Result<Device, UnreadableRow> {
        Ok(Device {
            tenant: parse_tenant("devices", &self.device_id.to_string(), &self.tenant_id)?,
            device_id: self.device_id,
            hostname: self.hostname,
            os: self.os,
            agent_version: self.agent_version,
            enrollment_key_id: self.enrollment_key_id,
            enrolled_ms: self.enrolled_ms,
            revoked: self.revoked != 0,
        })
    }
}

/// The columns of `devices` that authentication needs (read as [`DeviceCredential`]).
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq)]
struct DeviceAuthRow {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    tenant_id: String,
    secret_hash: String,
    revoked: u8,
    updated_ms: u64,
}

impl DeviceAuthRow {
    fn into_credential(self) -> Result<DeviceCredential, UnreadableRow> {
        Ok(DeviceCredential {
            tenant: parse_tenant("devices", &self.device_id.to_string(), &self.tenant_id)?,
            device_id: self.device_id,
            secret_hash: self.secret_hash,
            revoked: self.revoked != 0,
            updated_ms: self.updated_ms,
        })
    }
}

/// A row of `api_keys` (read as [`ApiKey`]).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct ApiKeyRow {
    key_id: String,
    tenant_id: String,
    secret_hash: String,
    role: String,
    name: String,
    created_ms: u64,
    revoked: u8,
    updated_ms: u64,
}

impl ApiKeyRow {
    /// Rows are written only through [`Registry::create_api_key`], which writes parsed values;
    /// one that does not parse was edited by hand or written by a newer release.
    fn into_api_key(self) -> Result<ApiKey, UnreadableRow> {
        let tenant = parse_tenant("api_keys", &self.key_id, &self.tenant_id)?;
        let role = self.role.parse().map_err(|_| UnreadableRow {
            table: "api_keys",
            key: self.key_id.clone(),
            field: "role",
            value: self.role.clone(),
        })?;
        Ok(ApiKey {
            key_id: self.key_id,
            tenant,
            role,
            name: self.name,
            secret_hash: self.secret_hash,
            created_ms: self.created_ms,
            revoked: self.revoked != 0,
        })
    }
}

/// Which team (and, where the tenant allows names, which person) works at a device: a row of
/// `device_assignments` (read as [`Assignment`]).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct DeviceAssignmentRow {
    tenant_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    team: String,
    person: String,
    updated_ms: u64,
}

impl DeviceAssignmentRow {
    fn into_assignment(self) -> Assignment {
        Assignment {
            device_id: self.device_id,
            team: self.team,
            person: self.person,
        }
    }
}

/// A row of `tenant_settings` (read as [`TenantSettings`]).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct TenantSettingsRow {
    tenant_id: String,
    show_person_names: u8,
    time_zone: String,
    updated_ms: u64,
}

impl TenantSettingsRow {
    /// The settings of a tenant that never changed them: names hidden, reports in UTC.
    fn defaults(tenant: &TenantId) -> TenantSettingsRow {
        TenantSettingsRow {
            tenant_id: tenant.to_string(),
            show_person_names: 0,
            time_zone: "UTC".to_string(),
            updated_ms: 0,
        }
    }

    fn into_settings(self) -> TenantSettings {
        TenantSettings {
            // Written only as 0 or 1; anything else was meant as "shown" by whoever wrote it.
            show_person_names: self.show_person_names != 0,
            time_zone: self.time_zone,
        }
    }
}

/// What an agent supplies about itself at enrollment.
pub struct NewDevice<'a> {
    pub hostname: &'a str,
    pub os: &'a str,
    pub agent_version: &'a str,
}

/// A registry record that can be revoked by writing a newer version of it.
trait Revocable {
    fn tenant_id(&self) -> &str;
    fn mark_revoked(&mut self);
}

macro_rules! revocable {
    ($($row:ty),*) => {$(
        impl Revocable for $row {
            fn tenant_id(&self) -> &str {
                &self.tenant_id
            }
            fn mark_revoked(&mut self) {
                self.revoked = 1;
                self.updated_ms = next_version(self.updated_ms);
            }
        }
    )*};
}

revocable!(EnrollmentKeyRow, DeviceRow, ApiKeyRow);

/// Access to the registry tables.
#[derive(Clone)]
pub struct Registry {
    client: Client,
}

/// A version stamp strictly newer than `previous`, so a change always wins over what it replaces
/// even when two happen within one millisecond.
fn next_version(previous: u64) -> u64 {
    now_ms().max(previous + 1)
}

impl Registry {
    pub fn new(client: Client) -> Registry {
        Registry { client }
    }

    async fn insert<T>(&self, table: &str, row: &T) -> Result<(), ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let client = &self.client;
        with_write_retry(|| async move {
            let mut insert = client.insert::<T>(table).await?;
            insert.write(row).await?;
            insert.end().await
        })
        .await
    }

    async fn fetch_one_by<T>(
        &self,
        table: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<T>, ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let sql = format!("SELECT ?fields FROM {table} FINAL WHERE {key} = ?");
        with_timeout(self.client.query(&sql).bind(value).fetch_optional::<T>()).await
    }

    /// Every current row of `table` that belongs to `tenant`, sorted by `order_by`.
    async fn list_for_tenant<T>(
        &self,
        table: &str,
        tenant: &TenantId,
        order_by: &str,
    ) -> Result<Vec<T>, ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let sql =
            format!("SELECT ?fields FROM {table} FINAL WHERE tenant_id = ? ORDER BY {order_by}");
        with_timeout(
            self.client
                .query(&sql)
                .bind(tenant.as_str())
                .fetch_all::<T>(),
        )
        .await
    }

    /// Writes a revoked version of `row`, which must exist and belong to `tenant` (another
    /// tenant's record looks exactly like a missing one).
    async fn revoke<T>(
        &self,
        table: &str,
        what: &'static str,
        id: &str,
        tenant: &TenantId,
        row: Option<T>,
    ) -> Result<(), RegistryError>
    where
        T: Revocable + clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let mut row = row
            .filter(|r| r.tenant_id() == tenant.as_str())
            .ok_or_else(|| RegistryError::NotFound {
                what,
                id: id.to_string(),
                tenant: tenant.clone(),
            })?;
        row.mark_revoked();
        Ok(self.insert(table, &row).await?)
    }

    pub async fn create_tenant(&self, tenant: &TenantId, name: &str) -> Result<(), RegistryError> {
        if self.tenant_exists(tenant).await? {
            return Err(RegistryError::TenantExists(tenant.clone()));
        }
        let now = now_ms();
        let row = TenantRow {
            tenant_id: tenant.to_string(),
            name: name.to_string(),
            created_ms: now,
            updated_ms: now,
        };
        Ok(self.insert("tenants", &row).await?)
    }

    pub async fn tenant(&self, tenant: &TenantId) -> Result<Option<Tenant>, ReadError> {
        let row = self.tenant_row(tenant).await?;
        Ok(row.map(TenantRow::into_tenant).transpose()?)
    }

    async fn tenant_row(&self, tenant: &TenantId) -> Result<Option<TenantRow>, ClickHouseError> {
        self.fetch_one_by("tenants", "tenant_id", tenant.as_str())
            .await
    }

    /// Whether `tenant` exists.
    async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, ClickHouseError> {
        Ok(self.tenant_row(tenant).await?.is_some())
    }

    /// Every tenant, by id; one unreadable row fails the list (an admin is told which).
    pub async fn tenants(&self) -> Result<Vec<Tenant>, ReadError> {
        let rows: Vec<TenantRow> = with_timeout(
            self.client
                .query("SELECT ?fields FROM tenants FINAL ORDER BY tenant_id")
                .fetch_all(),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(TenantRow::into_tenant)
            .collect::<Result<_, _>>()?)
    }

    async fn require_tenant(&self, tenant: &TenantId) -> Result<(), RegistryError> {
        match self.tenant_exists(tenant).await? {
            true => Ok(()),
            false => Err(RegistryError::NoSuchTenant(tenant.clone())),
        }
    }

    /// Creates an enrollment key expiring at `expires_ms` (`None`: in
    /// [`DEFAULT_ENROLLMENT_KEY_TTL`]) without a use limit; the returned token is the only copy
    /// of its secret.
    pub async fn create_enrollment_key(
        &self,
        tenant: &TenantId,
        expires_ms: Option<u64>,
        note: &str,
    ) -> Result<Token, RegistryError> {
        self.create_enrollment_key_with(
            tenant,
            NewEnrollmentKey {
                expires_ms,
                max_uses: None,
                note,
            },
        )
        .await
    }

    /// Creates an enrollment key; the returned token is the only copy of its secret. The limit
    /// is written before the key, so the key never exists without it.
    pub async fn create_enrollment_key_with(
        &self,
        tenant: &TenantId,
        key: NewEnrollmentKey<'_>,
    ) -> Result<Token, RegistryError> {
        self.require_tenant(tenant).await?;
        let token = secrets::new_token(SecretKind::Enrollment, secrets::new_key_id());
        let now = now_ms();
        if let Some(max_uses) = key.max_uses {
            let limit = EnrollmentKeyLimitRow {
                key_id: token.id.clone(),
                tenant_id: tenant.to_string(),
                max_uses,
                updated_ms: now,
            };
            self.insert("enrollment_key_limits", &limit).await?;
        }
        let default_expiry = now.saturating_add(DEFAULT_ENROLLMENT_KEY_TTL.as_millis() as u64);
        let row = EnrollmentKeyRow {
            key_id: token.id.clone(),
            tenant_id: tenant.to_string(),
            secret_hash: secrets::hash_secret(&token),
            note: key.note.to_string(),
            created_ms: now,
            expires_ms: key.expires_ms.unwrap_or(default_expiry),
            revoked: 0,
            updated_ms: now,
        };
        self.insert("enrollment_keys", &row).await?;
        Ok(token)
    }

    /// The most devices an enrollment key may enroll; `None`: no limit.
    pub async fn enrollment_key_limit(&self, key_id: &str) -> Result<Option<u32>, ClickHouseError> {
        let row: Option<EnrollmentKeyLimitRow> = self
            .fetch_one_by("enrollment_key_limits", "key_id", key_id)
            .await?;
        Ok(row.map(|r| r.max_uses))
    }

    /// Devices an enrollment key has enrolled (revoked ones too: each was a use), counted in
    /// ClickHouse so every server agrees.
    pub async fn enrollment_key_uses(&self, key_id: &str) -> Result<u64, ClickHouseError> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Uses {
            uses: u64,
        }
        let row: Uses = with_timeout(
            self.client
                .query(
                    "SELECT count() AS uses FROM devices FINAL \
                     WHERE enrollment_key_id = ? AND revoked != ?",
                )
                .bind(key_id)
                .bind(REVOKED_KEY_USED_UP)
                .fetch_one(),
        )
        .await?;
        Ok(row.uses)
    }

    /// The first `n` devices enrolled with a key, in the one order every server agrees on.
    async fn first_enrolled(&self, key_id: &str, n: u32) -> Result<Vec<Uuid>, ClickHouseError> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Id {
            #[serde(with = "clickhouse::serde::uuid")]
            device_id: Uuid,
        }
        let rows: Vec<Id> = with_timeout(
            self.client
                .query(
                    "SELECT device_id FROM devices FINAL \
                     WHERE enrollment_key_id = ? AND revoked != ? \
                     ORDER BY enrolled_ms, device_id LIMIT ?",
                )
                .bind(key_id)
                .bind(REVOKED_KEY_USED_UP)
                .bind(n)
                .fetch_all(),
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.device_id).collect())
    }

    pub async fn enrollment_key(&self, key_id: &str) -> Result<Option<EnrollmentKey>, ReadError> {
        let row = self.enrollment_key_row(key_id).await?;
        Ok(row.map(EnrollmentKeyRow::into_key).transpose()?)
    }

    async fn enrollment_key_row(
        &self,
        key_id: &str,
    ) -> Result<Option<EnrollmentKeyRow>, ClickHouseError> {
        self.fetch_one_by("enrollment_keys", "key_id", key_id).await
    }

    /// A tenant's enrollment keys, oldest first; one unreadable row fails the list.
    pub async fn enrollment_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<EnrollmentKey>, ReadError> {
        let rows: Vec<EnrollmentKeyRow> = self
            .list_for_tenant("enrollment_keys", tenant, "created_ms")
            .await?;
        Ok(rows
            .into_iter()
            .map(EnrollmentKeyRow::into_key)
            .collect::<Result<_, _>>()?)
    }

    pub async fn revoke_enrollment_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
    ) -> Result<(), RegistryError> {
        let row = self.enrollment_key_row(key_id).await?;
        self.revoke("enrollment_keys", "enrollment key", key_id, tenant, row)
            .await
    }

    /// Registers a new device under a (checked, usable) enrollment key; the returned token is
    /// the only copy of the device's secret.
    ///
    /// A key with a use limit: the device is written first, then, [`ENROLL_SETTLE`] after it was
    /// stamped, the key's first `max_uses` devices are read in the order every server agrees on
    /// (enrolled_ms, device_id); a device not among them is marked [`REVOKED_KEY_USED_UP`] and
    /// refused. Two servers enrolling at the same moment therefore cannot both take the last
    /// use on one ClickHouse node, provided the servers' clocks agree to well within the settle
    /// time; against replicas read before they caught up, the limit can be exceeded by the
    /// enrollments made within the replication lag.
    pub async fn enroll_device(
        &self,
        key: &EnrollmentKey,
        device: NewDevice<'_>,
    ) -> Result<(Uuid, Token), EnrollError> {
        let limit = self.enrollment_key_limit(&key.key_id).await?;
        if let Some(max_uses) = limit {
            // Cheap early refusal when the key is plainly used up (no row written).
            if self.enrollment_key_uses(&key.key_id).await? >= u64::from(max_uses) {
                return Err(EnrollError::UsedUp { max_uses });
            }
        }
        let (row, token) = self.insert_device(key, device).await?;
        if let Some(max_uses) = limit {
            let settled = row.enrolled_ms + ENROLL_SETTLE.as_millis() as u64;
            let stored_late = now_ms() > settled;
            if !stored_late {
                tokio::time::sleep(std::time::Duration::from_millis(
                    settled.saturating_sub(now_ms()),
                ))
                .await;
            }
            let refusal = if stored_late {
                Some(EnrollError::Unconfirmed)
            } else if !self
                .first_enrolled(&key.key_id, max_uses)
                .await?
                .contains(&row.device_id)
            {
                Some(EnrollError::UsedUp { max_uses })
            } else {
                None
            };
            if let Some(refusal) = refusal {
                let mut refused = row;
                refused.revoked = REVOKED_KEY_USED_UP;
                refused.updated_ms = next_version(refused.updated_ms);
                self.insert("devices", &refused).await?;
                return Err(refusal);
            }
        }
        Ok((row.device_id, token))
    }

    async fn insert_device(
        &self,
        key: &EnrollmentKey,
        device: NewDevice<'_>,
    ) -> Result<(DeviceRow, Token), ClickHouseError> {
        let device_id = Uuid::now_v7();
        let token = secrets::new_token(SecretKind::Device, device_id.simple().to_string());
        let now = now_ms();
        let row = DeviceRow {
            device_id,
            tenant_id: key.tenant.to_string(),
            secret_hash: secrets::hash_secret(&token),
            hostname: device.hostname.to_string(),
            os: device.os.to_string(),
            agent_version: device.agent_version.to_string(),
            enrollment_key_id: key.key_id.clone(),
            enrolled_ms: now,
            revoked: 0,
            updated_ms: now,
        };
        self.insert("devices", &row).await?;
        Ok((row, token))
    }

    async fn device_row(&self, device_id: Uuid) -> Result<Option<DeviceRow>, ClickHouseError> {
        with_timeout(
            self.client
                .query("SELECT ?fields FROM devices FINAL WHERE device_id = ?")
                .bind(device_id.to_string())
                .fetch_optional(),
        )
        .await
    }

    /// What authentication needs of one device.
    pub async fn device_auth(
        &self,
        device_id: Uuid,
    ) -> Result<Option<DeviceCredential>, ReadError> {
        let row: Option<DeviceAuthRow> = with_timeout(
            self.client
                .query("SELECT ?fields FROM devices FINAL WHERE device_id = ?")
                .bind(device_id.to_string())
                .fetch_optional(),
        )
        .await?;
        Ok(row.map(DeviceAuthRow::into_credential).transpose()?)
    }

    /// Hands `each` every device (of every tenant) whose newest version was written at or
    /// after `since_ms` (with 0, every device), streamed row by row. Used by servers to keep
    /// their device directory current with one query. A row that does not parse is handed
    /// over as its [`UnreadableRow`] error (with the device's id), for the caller to refuse
    /// that device: one bad row must not stop every other device's refresh.
    pub async fn devices_changed_since(
        &self,
        since_ms: u64,
        mut each: impl FnMut(Uuid, Result<DeviceCredential, UnreadableRow>),
    ) -> Result<(), ClickHouseError> {
        with_timeout(async {
            let mut cursor = self
                .client
                .query("SELECT ?fields FROM devices FINAL WHERE updated_ms >= ?")
                .bind(since_ms)
                .fetch::<DeviceAuthRow>()?;
            while let Some(row) = cursor.next().await? {
                each(row.device_id, row.into_credential());
            }
            Ok(())
        })
        .await
    }

    /// A tenant's devices, oldest enrollment first; one unreadable row fails the list.
    pub async fn devices(&self, tenant: &TenantId) -> Result<Vec<Device>, ReadError> {
        let rows: Vec<DeviceRow> = self
            .list_for_tenant("devices", tenant, "enrolled_ms")
            .await?;
        Ok(rows
            .into_iter()
            .map(DeviceRow::into_device)
            .collect::<Result<_, _>>()?)
    }

    pub async fn revoke_device(
        &self,
        tenant: &TenantId,
        device_id: Uuid,
    ) -> Result<(), RegistryError> {
        let row = self.device_row(device_id).await?;
        self.revoke("devices", "device", &device_id.to_string(), tenant, row)
            .await
    }

    /// Creates an API key; the returned token is the only copy of its secret.
    pub async fn create_api_key(
        &self,
        tenant: &TenantId,
        role: Role,
        name: &str,
    ) -> Result<Token, RegistryError> {
        self.require_tenant(tenant).await?;
        let token = secrets::new_token(SecretKind::ApiKey, secrets::new_key_id());
        let now = now_ms();
        let row = ApiKeyRow {
            key_id: token.id.clone(),
            tenant_id: tenant.to_string(),
            secret_hash: secrets::hash_secret(&token),
            role: role.as_str().to_string(),
            name: name.to_string(),
            created_ms: now,
            revoked: 0,
            updated_ms: now,
        };
        self.insert("api_keys", &row).await?;
        Ok(token)
    }

    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKey>, ReadError> {
        let row = self.api_key_row(key_id).await?;
        Ok(row.map(ApiKeyRow::into_api_key).transpose()?)
    }

    async fn api_key_row(&self, key_id: &str) -> Result<Option<ApiKeyRow>, ClickHouseError> {
        self.fetch_one_by("api_keys", "key_id", key_id).await
    }

    /// A tenant's API keys, oldest first; one unreadable row fails the list (an admin is
    /// told which).
    pub async fn api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>, ReadError> {
        let rows: Vec<ApiKeyRow> = self
            .list_for_tenant("api_keys", tenant, "created_ms")
            .await?;
        Ok(rows
            .into_iter()
            .map(ApiKeyRow::into_api_key)
            .collect::<Result<_, _>>()?)
    }

    pub async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
    ) -> Result<(), RegistryError> {
        let row = self.api_key_row(key_id).await?;
        self.revoke("api_keys", "API key", key_id, tenant, row)
            .await
    }

    /// Which of `key_ids` are revoked now (one query, however many keys): how servers end the
    /// open streams of a key revoked through any server.
    pub async fn revoked_api_keys(
        &self,
        key_ids: &[String],
    ) -> Result<Vec<String>, ClickHouseError> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Revoked {
            key_id: String,
        }
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Revoked> = with_timeout(
            self.client
                .query(
                    "SELECT key_id FROM api_keys WHERE key_id IN (SELECT arrayJoin(?))
                     GROUP BY key_id HAVING argMax(revoked, updated_ms) = 1",
                )
                .bind(key_ids)
                .fetch_all(),
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.key_id).collect())
    }

    /// Assigns a device to a team (and optionally a person). The device must be the tenant's.
    pub async fn assign_device(
        &self,
        tenant: &TenantId,
        device_id: Uuid,
        team: &str,
        person: &str,
    ) -> Result<(), RegistryError> {
        self.device_row(device_id)
            .await?
            .filter(|d| d.tenant_id == tenant.as_str())
            .ok_or_else(|| RegistryError::NotFound {
                what: "device",
                id: device_id.to_string(),
                tenant: tenant.clone(),
            })?;
        let previous = self
            .assignment_rows(tenant)
            .await?
            .into_iter()
            .find(|a| a.device_id == device_id);
        let row = DeviceAssignmentRow {
            tenant_id: tenant.to_string(),
            device_id,
            team: team.to_string(),
            person: person.to_string(),
            updated_ms: next_version(previous.map_or(0, |p| p.updated_ms)),
        };
        Ok(self.insert("device_assignments", &row).await?)
    }

    /// The current assignment of every assigned device of a tenant.
    pub async fn assignments(&self, tenant: &TenantId) -> Result<Vec<Assignment>, ClickHouseError> {
        let rows = self.assignment_rows(tenant).await?;
        Ok(rows
            .into_iter()
            .map(DeviceAssignmentRow::into_assignment)
            .collect())
    }

    async fn assignment_rows(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<DeviceAssignmentRow>, ClickHouseError> {
        self.list_for_tenant("device_assignments", tenant, "team, person")
            .await
    }

    /// A tenant's settings (defaults when never set).
    pub async fn settings(&self, tenant: &TenantId) -> Result<TenantSettings, ClickHouseError> {
        Ok(self.settings_row(tenant).await?.into_settings())
    }

    async fn settings_row(&self, tenant: &TenantId) -> Result<TenantSettingsRow, ClickHouseError> {
        Ok(self
            .fetch_one_by("tenant_settings", "tenant_id", tenant.as_str())
            .await?
            .unwrap_or_else(|| TenantSettingsRow::defaults(tenant)))
    }

    /// Changes a tenant's settings; `None` keeps the current value.
    pub async fn update_settings(
        &self,
        tenant: &TenantId,
        show_person_names: Option<bool>,
        time_zone: Option<&str>,
    ) -> Result<TenantSettings, RegistryError> {
        self.require_tenant(tenant).await?;
        let mut row = self.settings_row(tenant).await?;
        if let Some(show) = show_person_names {
            row.show_person_names = u8::from(show);
        }
        if let Some(zone) = time_zone {
            row.time_zone = zone.to_string();
        }
        row.updated_ms = next_version(row.updated_ms);
        self.insert("tenant_settings", &row).await?;
        Ok(row.into_settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_key_row(tenant_id: &str, role: &str) -> ApiKeyRow {
        ApiKeyRow {
            key_id: "k1".into(),
            tenant_id: tenant_id.into(),
            secret_hash: "ab".into(),
            role: role.into(),
            name: "crm".into(),
            created_ms: 5,
            revoked: 1,
            updated_ms: 6,
        }
    }

    #[test]
    fn an_api_key_row_parses_into_the_domain() {
        let key = api_key_row("acme", "wfm").into_api_key().unwrap();
        assert_eq!(key.tenant, "acme".parse::<TenantId>().unwrap());
        assert_eq!(key.role, Role::Wfm);
        assert!(key.revoked);
        assert_eq!((key.key_id.as_str(), key.name.as_str()), ("k1", "crm"));
    }

    #[test]
    fn an_api_key_row_that_does_not_parse_is_a_typed_error_naming_the_field() {
        assert_eq!(
            api_key_row("acme", "root").into_api_key(),
            Err(UnreadableRow {
                table: "api_keys",
                key: "k1".into(),
                field: "role",
                value: "root".into(),
            })
        );
        let bad_tenant = api_key_row("Not A Tenant", "admin").into_api_key();
        assert!(
            matches!(&bad_tenant, Err(e) if e.field == "tenant_id"),
            "{bad_tenant:?}"
        );
    }

    #[test]
    fn an_enrollment_key_row_spells_never_as_none_and_refuses_a_bad_tenant() {
        let row = EnrollmentKeyRow {
            key_id: "e1".into(),
            tenant_id: "acme".into(),
            secret_hash: "ab".into(),
            note: String::new(),
            created_ms: 1,
            expires_ms: 0,
            revoked: 0,
            updated_ms: 1,
        };
        let key = row.clone().into_key().unwrap();
        assert_eq!(key.expires_ms, None, "0 is never");
        assert_eq!(key.unusable_reason(u64::MAX), None);
        let bad = EnrollmentKeyRow {
            tenant_id: "ACME!".into(),
            ..row
        };
        assert_eq!(
            bad.into_key(),
            Err(UnreadableRow {
                table: "enrollment_keys",
                key: "e1".into(),
                field: "tenant_id",
                value: "ACME!".into(),
            })
        );
    }
}
