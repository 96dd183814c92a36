//! Enrollment settings an administrator deployed to the machine, so a silent roll-out needs no
//! step by the employee: `run` on a device that is not enrolled yet enrolls with them first.
//!
//! On Windows they are two string values, `Server` and `EnrollmentKey`, read from
//! `HKLM\SOFTWARE\Policies\Backlight\Agent` (Group Policy) and then
//! `HKLM\SOFTWARE\Backlight\Agent` (what the MSI writes from its `SERVER` and `ENROLLMENT_KEY`
//! properties). Only administrators can write either key, so a user cannot point the agent at
//! another server this way. Every user of the machine can read them, by design: the agent runs
//! as each user, and each user's agent enrolls as a device of its own. An enrollment key is
//! therefore a roll-out secret, not a personal one: give each roll-out its own key with an
//! expiry, and revoke it when the roll-out is done.
//!
//! Other platforms have no machine configuration yet (`None`).

use crate::enroll::EnrollOptions;

/// The registry keys read, in order of precedence.
pub const POLICY_KEY: &str = r"SOFTWARE\Policies\Backlight\Agent";
pub const MSI_KEY: &str = r"SOFTWARE\Backlight\Agent";
/// The value names under them.
pub const SERVER_VALUE: &str = "Server";
pub const ENROLLMENT_KEY_VALUE: &str = "EnrollmentKey";

/// A server and enrollment key deployed to this machine.
#[derive(Clone, PartialEq, Eq)]
pub struct MachineEnrollment {
    /// Where the values were found, for messages (e.g. `HKLM\SOFTWARE\Backlight\Agent`).
    pub source: String,
    pub server_url: String,
    pub enrollment_key: String,
}

// The key must not reach a log line.
impl std::fmt::Debug for MachineEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineEnrollment")
            .field("source", &self.source)
            .field("server_url", &self.server_url)
            .field("enrollment_key", &"<redacted>")
            .finish()
    }
}

impl MachineEnrollment {
    /// The settings from one place, when both values are there and not blank. A place with only
    /// one of them is incomplete and refused (an MSI run without one of its properties).
    pub fn from_values(
        source: &str,
        server_url: Option<String>,
        enrollment_key: Option<String>,
    ) -> Result<Option<MachineEnrollment>, ProvisioningError> {
        let present = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        match (present(server_url), present(enrollment_key)) {
            (None, None) => Ok(None),
            (Some(server_url), Some(enrollment_key)) => Ok(Some(MachineEnrollment {
                source: source.to_string(),
                server_url,
                enrollment_key,
            })),
            (Some(_), None) => Err(ProvisioningError::Incomplete {
                place: source.to_string(),
                missing: ENROLLMENT_KEY_VALUE,
            }),
            (None, Some(_)) => Err(ProvisioningError::Incomplete {
                place: source.to_string(),
                missing: SERVER_VALUE,
            }),
        }
    }

    /// What `enroll` needs.
    pub fn options(&self) -> EnrollOptions {
        EnrollOptions {
            server_url: self.server_url.clone(),
            enrollment_key: self.enrollment_key.clone(),
            force: false,
            // A deployed server is reached over https (or on this computer): no roll-out
            // setting allows plain http to another machine.
            insecure_http: false,
        }
    }
}

/// The machine configuration is there but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    #[error("{place} has a value but no {missing}: set both (msiexec … SERVER=https://… ENROLLMENT_KEY=ble_…)")]
    Incomplete {
        place: String,
        missing: &'static str,
    },
    #[error("cannot read {place}: {error}")]
    Read {
        place: String,
        error: std::io::Error,
    },
}

/// The enrollment settings deployed to this machine, if any.
pub fn machine_enrollment() -> Result<Option<MachineEnrollment>, ProvisioningError> {
    #[cfg(windows)]
    {
        for key in [POLICY_KEY, MSI_KEY] {
            if let Some(found) = windows::read(key)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
    #[cfg(not(windows))]
    {
        Ok(None)
    }
}

#[cfg(windows)]
mod windows {
    use super::*;
    use crate::platform::windows::registry::{Key, Root};

    pub(super) fn read(path: &str) -> Result<Option<MachineEnrollment>, ProvisioningError> {
        let source = format!(r"HKLM\{path}");
        let error = |error| ProvisioningError::Read {
            place: source.clone(),
            error,
        };
        let Some(key) = Key::open(Root::LocalMachine, path, false).map_err(error)? else {
            return Ok(None);
        };
        let server = key.get_string(SERVER_VALUE).map_err(error)?;
        let enrollment_key = key.get_string(ENROLLMENT_KEY_VALUE).map_err(error)?;
        MachineEnrollment::from_values(&source, server, enrollment_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_values_or_none() {
        let found = MachineEnrollment::from_values(
            "HKLM\\x",
            Some(" https://backlight.example.com ".into()),
            Some("ble_abc".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.server_url, "https://backlight.example.com");
        assert!(!format!("{found:?}").contains("ble_abc"));
        assert!(
            MachineEnrollment::from_values("HKLM\\x", None, Some(" ".into()))
                .unwrap()
                .is_none()
        );
        let error = MachineEnrollment::from_values("HKLM\\x", Some("https://b".into()), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no EnrollmentKey"), "{error}");
    }
}
