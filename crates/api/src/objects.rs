//! Secrets and configs on the wire and in the store. A value crosses the API only to be
//! created (`ObjectUpload`) and, to the agent of a node whose task uses it, to be read
//! (`GET /v1/nodes/{node}/secrets/{name}`); every listing shows `ObjectInfo`, which has none.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use spec::ObjectKind;

use crate::Timestamp;

/// A secret or config as the replicated state keeps it. A secret's `data` is sealed with the
/// cluster key (`pki::Vault`, label `secret/<name>`); a config's is its value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub kind: ObjectKind,
    pub name: String,
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
    /// The value's size in bytes.
    pub size: u64,
    /// A digest of the value (keyed with the cluster key for secrets): equal values, equal
    /// digests, so storing the same value again changes nothing.
    pub digest: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl std::fmt::Debug for StoredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredObject({}/{}, {} bytes)",
            self.kind, self.name, self.size
        )
    }
}

impl StoredObject {
    /// Its key in the state, and the label a secret is sealed under: `secret/<name>`.
    pub fn key(kind: ObjectKind, name: &str) -> String {
        format!("{kind}/{name}")
    }
}

/// A secret or config as listings show it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectInfo {
    pub kind: ObjectKind,
    pub name: String,
    pub size: u64,
    /// The first 12 hex digits of the digest: enough to tell two versions apart.
    pub digest: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The services whose specs refer to it.
    pub services: Vec<String>,
}

/// A value to store: `POST /v1/secrets` and `/v1/configs` take one, a deploy may carry many
/// (a Compose file's `file:` definitions), stored only if the whole deploy is accepted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectUpload {
    pub kind: ObjectKind,
    pub name: String,
    /// The value, hex-encoded on the wire.
    #[serde(with = "hex_bytes")]
    #[schema(value_type = String)]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for ObjectUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectUpload({}/{}, {} bytes)",
            self.kind,
            self.name,
            self.data.len()
        )
    }
}

/// A value as the agent of a node whose task uses it receives it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectValue {
    pub kind: ObjectKind,
    pub name: String,
    pub digest: String,
    #[serde(with = "hex_bytes")]
    #[schema(value_type = String)]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for ObjectValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectValue({}/{}, {} bytes)",
            self.kind,
            self.name,
            self.data.len()
        )
    }
}

/// Bytes as lowercase hex: JSON has no bytes, and an array of numbers would be four times
/// the size.
pub mod hex_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text)
            .ok_or_else(|| serde::de::Error::custom("expected an even number of hex digits"))
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        if !text.len().is_multiple_of(2) {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cross_as_hex_and_never_show_in_debug() {
        let up = ObjectUpload {
            kind: ObjectKind::Secret,
            name: "pw".into(),
            data: b"hunter2\x00\xff".to_vec(),
        };
        let json = serde_json::to_string(&up).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"secret","name":"pw","data":"68756e7465723200ff"}"#
        );
        assert_eq!(serde_json::from_str::<ObjectUpload>(&json).unwrap(), up);
        assert!(!format!("{up:?}").contains("hunter2"));
        assert!(
            serde_json::from_str::<ObjectUpload>(r#"{"kind":"secret","name":"p","data":"abc"}"#)
                .is_err()
        );
    }
}
