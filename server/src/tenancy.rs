//! Tenants and roles: the parsed, always-valid forms of the names admins type; and what the
//! registry holds about a tenant (settings, keys, devices, who works at them), as the storage
//! layer hands it back ([`crate::storage::registry`]).

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A tenant's id: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit.
/// Short and URL-safe because admins type it and it prefixes every row the tenant owns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id {0:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit")]
pub struct InvalidTenantId(String);

impl FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(TenantId(s.to_string()))
        } else {
            Err(InvalidTenantId(s.to_string()))
        }
    }
}

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Contact-center agents: item status only, never per-person performance.
    CcAgent,
    /// Workforce managers: reports.
    Wfm,
    /// Administrators: devices, policy, keys.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::CcAgent, Role::Wfm, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::CcAgent => "cc_agent",
            Role::Wfm => "wfm",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected cc_agent, wfm or admin")]
pub struct InvalidRole(String);

impl FromStr for Role {
    type Err = InvalidRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InvalidRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        assert!("acme-insurance".parse::<TenantId>().is_ok());
        assert!("7bank".parse::<TenantId>().is_ok());
        for bad in ["", "-acme", "Acme", "acme corp", "a/b", &"a".repeat(64)] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}

/// Team and person of one device (empty strings when unassigned or unnamed, which reports
/// group as such).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub device_id: Uuid,
    pub team: String,
    pub person: String,
}

/// Per-tenant choices that change what is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    /// Whether wfm and admin see the person at a device, and reports group by person.
    pub show_person_names: bool,
    /// The zone reports use when a request names none. Checked when it is set; parsed where
    /// it is used ([`crate::reports::TimeZone`]), so a zone a tenant set before a stricter
    /// check fails that report with a clear error instead of every read of the settings.
    pub time_zone: String,
}

/// An API key as the registry holds it: whose it is, what it may do, and the hash its secret
/// is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: String,
    pub tenant: TenantId,
    pub role: Role,
    pub name: String,
    pub secret_hash: String,
    pub created_ms: u64,
    pub revoked: bool,
}

/// A tenant as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_ms: u64,
}

/// An enrollment key: the secret's hash, whose devices it enrolls, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentKey {
    pub key_id: String,
    pub tenant: TenantId,
    pub secret_hash: String,
    pub note: String,
    pub created_ms: u64,
    /// `None`: never expires.
    pub expires_ms: Option<u64>,
    pub revoked: bool,
}

impl EnrollmentKey {
    /// Why this key cannot enroll a device now, if it cannot (a use limit aside, which is
    /// counted in storage).
    pub fn unusable_reason(&self, now_ms: u64) -> Option<&'static str> {
        if self.revoked {
            Some("enrollment key revoked")
        } else if self.expires_ms.is_some_and(|expires| expires <= now_ms) {
            Some("enrollment key expired")
        } else {
            None
        }
    }
}

/// An enrolled device as admins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: Uuid,
    pub tenant: TenantId,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub enrollment_key_id: String,
    pub enrolled_ms: u64,
    /// Revoked by an admin, or refused at enrollment (its key was used up).
    pub revoked: bool,
}

/// What authenticating a device needs: its tenant, the hash its secret is checked against,
/// whether it is revoked, and the version (`updated_ms`) a directory of devices refreshes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    pub device_id: Uuid,
    pub tenant: TenantId,
    pub secret_hash: String,
    pub revoked: bool,
    pub updated_ms: u64,
}
