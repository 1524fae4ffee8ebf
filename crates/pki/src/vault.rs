//! The cluster key that seals secrets at rest in the replicated state. It is derived from the
//! CA key (HMAC-SHA256, as join secrets are), so every server that holds the CA key opens what
//! any other sealed, and nothing but the CA key needs to be kept or copied.
//!
//! A sealed value is a random 96-bit nonce followed by the ChaCha20-Poly1305 ciphertext and tag;
//! the label (`secret/<name>`) is the associated data, so a sealed value moved to another name
//! does not open.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::PkiError;

/// What the sealing key is derived with; a new purpose would take a new label.
const SEAL_LABEL: &[u8] = b"outpost secrets seal 1";
/// What the digest key is derived with: digests are keyed so that a listed digest of a short
/// password cannot be checked against guesses without the CA key.
const DIGEST_LABEL: &[u8] = b"outpost secrets digest 1";

pub struct Vault {
    seal: LessSafeKey,
    digest: hmac::Key,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// The vault of key material every server holds (the CA key's PKCS#8 DER).
    pub fn from_key_material(material: &[u8]) -> Vault {
        let root = hmac::Key::new(hmac::HMAC_SHA256, material);
        let seal_key = hmac::sign(&root, SEAL_LABEL);
        let digest_key = hmac::sign(&root, DIGEST_LABEL);
        // 32 bytes of HMAC-SHA256 is exactly a ChaCha20-Poly1305 key: this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, seal_key.as_ref())
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits ChaCha20-Poly1305"));
        Vault {
            seal: LessSafeKey::new(unbound),
            digest: hmac::Key::new(hmac::HMAC_SHA256, digest_key.as_ref()),
        }
    }

    /// `plain` sealed under `label`: nonce, then ciphertext and tag.
    pub fn seal(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>, PkiError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PkiError::Generate("the kernel gave no randomness for a nonce".into()))?;
        let mut out = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label.as_bytes()),
                &mut out,
            )
            .map_err(|_| PkiError::Seal(format!("cannot seal {label}")))?;
        let mut sealed = nonce.to_vec();
        sealed.append(&mut out);
        Ok(sealed)
    }

    /// The value sealed under `label`; refused when it was sealed under another label or
    /// key, or changed.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, PkiError> {
        let refused = || {
            PkiError::Seal(format!(
                "{label} does not open with this cluster's key: it was sealed by another \
                 cluster's CA, or damaged; create it again"
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut body = body.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(label.as_bytes()), &mut body)
            .map_err(|_| refused())?;
        Ok(plain.to_vec())
    }

    /// A keyed digest of `plain`, hex: equal values have equal digests within one cluster.
    pub fn digest(&self, plain: &[u8]) -> String {
        crate::token::hex(hmac::sign(&self.digest, plain).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_label() {
        let vault = Vault::from_key_material(b"key one");
        let sealed = vault.seal("secret/db", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(vault.open("secret/db", &sealed).unwrap(), b"hunter2");
        assert!(vault.open("secret/other", &sealed).is_err());
        let other = Vault::from_key_material(b"key two");
        assert!(other.open("secret/db", &sealed).is_err());
        let mut changed = sealed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(vault.open("secret/db", &changed).is_err());
        assert!(vault.open("secret/db", &sealed[..4]).is_err());
    }

    #[test]
    fn the_same_key_material_makes_the_same_vault() {
        let a = Vault::from_key_material(b"ca key");
        let b = Vault::from_key_material(b"ca key");
        let sealed = a.seal("config/x", b"value").unwrap();
        assert_eq!(b.open("config/x", &sealed).unwrap(), b"value");
        assert_eq!(a.digest(b"value"), b.digest(b"value"));
        assert_ne!(a.digest(b"value"), a.digest(b"other"));
        assert_ne!(
            a.seal("config/x", b"value").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
    }
}
