//! Making and checking secrets. The server never stores a secret, only its SHA-256 hash: the
//! secrets are 256 random bits, so a fast hash is enough (no password stretching needed).

use backlight_shared::credential::{SecretKind, Token, SECRET_HEX_LEN};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random token of `kind` with the given id.
pub fn new_token(kind: SecretKind, id: String) -> Token {
    let mut secret = [0u8; SECRET_HEX_LEN / 2];
    rand::rng().fill_bytes(&mut secret);
    Token {
        kind,
        id,
        secret: hex::encode(secret),
    }
}

/// A new random 16-hex-digit id for keys that have no natural id.
pub fn new_key_id() -> String {
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    hex::encode(id)
}

/// The hash stored for a token's secret.
pub fn hash_secret(token: &Token) -> String {
    hex::encode(Sha256::digest(token.secret.as_bytes()))
}

/// Whether `token` matches `stored_hash`, compared in constant time.
pub fn verify(token: &Token, stored_hash: &str) -> bool {
    let computed = hash_secret(token);
    computed.len() == stored_hash.len()
        && computed
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_against_their_hash_only() {
        let a = new_token(SecretKind::Device, "ab".into());
        let b = new_token(SecretKind::Device, "ab".into());
        assert_ne!(a.secret, b.secret);
        let stored = hash_secret(&a);
        assert!(verify(&a, &stored));
        assert!(!verify(&b, &stored));
        assert!(!stored.contains(&a.secret));
        assert_eq!(a.to_string().parse::<Token>().unwrap(), a);
    }
}
