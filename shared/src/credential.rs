//! The textual form of Backlight's secrets.
//!
//! Every secret reads `bl<kind>_<id>_<secret>`: the kind letter tells a human what they hold, the
//! id lets the server find the record by primary key without scanning, and the secret (256 random
//! bits, hex) is what the server keeps only a hash of.

use std::fmt;
use std::str::FromStr;

/// What a secret grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// Lets one agent enroll into a tenant (`ble_`).
    Enrollment,
    /// Lets one device ingest (`bld_`).
    Device,
    /// Lets a person or system call the query APIs with a role (`blk_`).
    ApiKey,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::Enrollment => "ble",
            SecretKind::Device => "bld",
            SecretKind::ApiKey => "blk",
        }
    }
}

/// Length of the secret part, in hex digits.
pub const SECRET_HEX_LEN: usize = 64;

/// A parsed secret token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: SecretKind,
    /// Lowercase hex, 1–32 digits.
    pub id: String,
    /// Lowercase hex, [`SECRET_HEX_LEN`] digits.
    pub secret: String,
}

// Never print the secret part, even in debug logs.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_…", self.kind.prefix(), self.id)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{}", self.kind.prefix(), self.id, self.secret)
    }
}

/// A string that is not a well-formed token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token kind (expected a ble_, bld_ or blk_ prefix)")]
    UnknownKind,
    #[error("a {expected} token was expected")]
    WrongKind { expected: &'static str },
    #[error("malformed token (expected <prefix>_<id>_<secret> in lowercase hex)")]
    Malformed,
}

impl FromStr for Token {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, '_');
        let kind = match parts.next() {
            Some("ble") => SecretKind::Enrollment,
            Some("bld") => SecretKind::Device,
            Some("blk") => SecretKind::ApiKey,
            _ => return Err(TokenError::UnknownKind),
        };
        let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let is_hex = |v: &str| {
            v.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if id.is_empty()
            || id.len() > 32
            || !is_hex(id)
            || secret.len() != SECRET_HEX_LEN
            || !is_hex(secret)
        {
            return Err(TokenError::Malformed);
        }
        Ok(Token {
            kind,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl Token {
    /// Parses a token and checks that it is of the expected kind.
    pub fn parse_kind(s: &str, kind: SecretKind) -> Result<Token, TokenError> {
        let token: Token = s.parse()?;
        if token.kind != kind {
            return Err(TokenError::WrongKind {
                expected: kind.prefix(),
            });
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Token {
            kind: SecretKind::Device,
            id: "0123abcd".into(),
            secret: "f".repeat(SECRET_HEX_LEN),
        };
        let parsed: Token = t.to_string().parse().unwrap();
        assert_eq!(parsed, t);
        assert!(!format!("{t:?}").contains("ffff"));
    }

    #[test]
    fn rejects_bad_forms() {
        assert_eq!("xyz_1_2".parse::<Token>(), Err(TokenError::UnknownKind));
        assert_eq!("bld_12".parse::<Token>(), Err(TokenError::Malformed));
        assert_eq!(
            format!("bld_XY_{}", "a".repeat(64)).parse::<Token>(),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            format!("bld_12_{}", "a".repeat(63)).parse::<Token>(),
            Err(TokenError::Malformed)
        );
        let enroll = format!("ble_12_{}", "a".repeat(64));
        assert!(matches!(
            Token::parse_kind(&enroll, SecretKind::Device),
            Err(TokenError::WrongKind { .. })
        ));
    }
}
