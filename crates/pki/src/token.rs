//! Join tokens: `OUTPOST-1-<ca digest>-<secret>`, as Swarm's `SWMTKN-1-…`. The digest (sha256 of
//! the cluster CA certificate's DER, 64 hex digits) lets a joiner check it reached the right
//! cluster before it sends the secret; servers keep only a digest of the secret.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "OUTPOST-1-";

/// 24 random bytes (192 bits) per secret: far beyond guessing, short enough to paste.
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

    /// A new token for the CA whose digest is given, with a fresh random secret.
    pub fn generate(ca_digest: &str) -> std::io::Result<JoinToken> {
        Ok(JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: seal::files::random_hex(SECRET_BYTES)?,
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

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
        let token = JoinToken::generate(DIGEST).unwrap();
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
    fn two_generated_secrets_differ() {
        let a = JoinToken::generate(DIGEST).unwrap();
        let b = JoinToken::generate(DIGEST).unwrap();
        assert_ne!(a.secret, b.secret);
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
    fn roles_read_back_by_name() {
        for role in [Role::Server, Role::Agent, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
