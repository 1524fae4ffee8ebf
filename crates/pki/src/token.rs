//! Join tokens: `OUTPOST-1-<ca digest>-<secret>`, as Swarm's `SWMTKN-1-…`. The digest (sha256 of
//! the cluster CA certificate's DER, 64 hex digits) lets a joiner check it reached the right
//! cluster before it sends the secret; servers keep only a digest of the secret.
//!
//! A join secret is derived from the CA key ([`derived_secret`]): every server holds that key,
//! so whichever leads can show the current token from the generation the replicated state
//! keeps, and no server needs a file of its own for it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "OUTPOST-1-";

/// 24 bytes (192 bits) per secret: far beyond guessing, short enough to paste.
pub const SECRET_BYTES: usize = 24;

/// What a join token lets its holder become, or the admin credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Server,
    Agent,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "server" => Some(Role::Server),
            "agent" => Some(Role::Agent),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the cluster CA certificate, lowercase hex.
    pub ca_digest: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({PREFIX}{}-..)", self.ca_digest)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the token does not start with {PREFIX}: give the whole join token `outpost token show agent` (or `server`) prints"
    )]
    Prefix,
    #[error(
        "the token's CA digest is not 64 hex digits: it was cut or changed; copy it again from `outpost token show`"
    )]
    Digest,
    #[error(
        "the token's secret is missing or not hex: it was cut or changed; copy it again from `outpost token show`"
    )]
    Secret,
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let rest = text.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let (digest, secret) = rest.split_once('-').ok_or(TokenError::Digest)?;
        if digest.len() != 64 || !is_lower_hex(digest) {
            return Err(TokenError::Digest);
        }
        if secret.is_empty() || !is_lower_hex(secret) {
            return Err(TokenError::Secret);
        }
        Ok(JoinToken {
            ca_digest: digest.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The join secret of `role` at `generation`, derived from `key` (the CA key's PKCS#8 DER):
/// the first [`SECRET_BYTES`] of HMAC-SHA256(key, `outpost join <role> <generation>`), hex.
/// The same on every server that holds the key; a new generation gives an unrelated secret,
/// and without the key none can be guessed from another.
pub fn derived_secret(key: &[u8], role: Role, generation: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let message = format!("outpost join {role} {generation}");
    let tag = ring::hmac::sign(&key, message.as_bytes());
    hex(&tag.as_ref()[..SECRET_BYTES])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// What servers keep of a secret: its sha256, so a copy of the state gives no token away.
pub fn secret_digest(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// Whether `secret` is the one whose digest is `digest`, compared in constant time (the digests
/// have a fixed length, so nothing of the kept one leaks through answer times).
pub fn secret_matches(secret: &str, digest: &str) -> bool {
    bool::from(secret_digest(secret).as_bytes().ct_eq(digest.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_reads_back_as_it_was_written() {
        let token = JoinToken {
            ca_digest: DIGEST.into(),
            secret: derived_secret(b"key", Role::Agent, 1),
        };
        let text = token.to_string();
        assert!(text.starts_with(&format!("OUTPOST-1-{DIGEST}-")), "{text}");
        assert_eq!(text.len(), 10 + 64 + 1 + 2 * SECRET_BYTES);
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), token);
    }

    #[test]
    fn a_malformed_token_is_refused_saying_which_part_is_wrong() {
        let good = format!("OUTPOST-1-{DIGEST}-abcd");
        assert!(JoinToken::parse(&good).is_ok());
        let cases = [
            ("SWMTKN-1-abc-def".to_string(), TokenError::Prefix),
            ("abcd".to_string(), TokenError::Prefix),
            (
                format!("OUTPOST-1-{}-abcd", &DIGEST[1..]),
                TokenError::Digest,
            ),
            (
                format!("OUTPOST-1-{}-abcd", DIGEST.to_uppercase()),
                TokenError::Digest,
            ),
            (format!("OUTPOST-1-{DIGEST}"), TokenError::Digest),
            (format!("OUTPOST-1-{DIGEST}-"), TokenError::Secret),
            (format!("OUTPOST-1-{DIGEST}-xyz"), TokenError::Secret),
            (format!("OUTPOST-1-{DIGEST}-ab-cd"), TokenError::Secret),
        ];
        for (text, want) in cases {
            assert_eq!(JoinToken::parse(&text), Err(want.clone()), "{text}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn a_secret_matches_only_its_own_digest() {
        let digest = secret_digest("s3cret");
        assert_eq!(digest.len(), 64);
        assert!(secret_matches("s3cret", &digest));
        assert!(!secret_matches("s3cre", &digest));
        assert!(!secret_matches("s3creT", &digest));
        assert!(!secret_matches("", &digest));
        assert!(!secret_matches("s3cret", ""));
        assert!(!secret_matches("s3cret", &digest[..63]));
    }

    #[test]
    fn a_derived_secret_is_hmac_sha256_of_role_and_generation_cut_to_the_secret_length() {
        // Pinned (Python's hmac gives the same): every server of a cluster, whatever its
        // version, must derive the same token from the same key and generation.
        let key = b"outpost test key";
        assert_eq!(
            derived_secret(key, Role::Agent, 7),
            "0119928e4c9917445eedd44c31b0de32f1aa43a6f70d861a"
        );
        assert_eq!(
            derived_secret(key, Role::Server, 1),
            "c8362b88c0820d9b5c9955b2c541117164ddac7a9dcfec26"
        );
    }

    #[test]
    fn derived_secrets_differ_by_key_role_and_generation() {
        let key = b"one key";
        let secret = derived_secret(key, Role::Agent, 1);
        assert_eq!(secret, derived_secret(key, Role::Agent, 1));
        assert_eq!(secret.len(), 2 * SECRET_BYTES);
        for other in [
            derived_secret(key, Role::Agent, 2),
            derived_secret(key, Role::Server, 1),
            derived_secret(b"another key", Role::Agent, 1),
            // The message ends with the generation: 1 and 11 are not confused.
            derived_secret(key, Role::Agent, 11),
        ] {
            assert_ne!(secret, other);
        }
    }

    #[test]
    fn roles_read_back_by_name() {
        for role in [Role::Server, Role::Agent, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
