//! A SHA-256 digest, shown as lowercase hex.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The chain's starting point: the `prev_hash` of each tenant's first event.
    pub const ZERO: Digest = Digest([0; 32]);

    pub fn sha256(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        ascii(&self.hex_bytes()).to_owned()
    }

    /// The lowercase hex on the stack: every event read serialises four digests, and
    /// `hex::encode` builds its `String` a `char` at a time.
    fn hex_bytes(&self) -> [u8; 64] {
        let mut buffer = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the digest's length.
        let _ = hex::encode_to_slice(self.0, &mut buffer);
        buffer
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex_bytes();
        write!(f, "Digest({})", ascii(&hex))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.hex_bytes()))
    }
}

/// Hex digits as text: they are ASCII.
fn ascii(hex: &[u8; 64]) -> &str {
    std::str::from_utf8(hex).unwrap_or_default()
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(ascii(&self.hex_bytes()))
    }
}

/// In the OpenAPI document: 64 lowercase hex digits, as it is serialised.
impl utoipa::PartialSchema for Digest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::model::digest::hex_256_schema()
    }
}

impl utoipa::ToSchema for Digest {}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        Digest::from_slice(&bytes).ok_or_else(|| serde::de::Error::custom("expected 32 bytes"))
    }
}

/// The schema of a 256-bit value written as 64 lowercase hex digits.
pub fn hex_256_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^[0-9a-f]{64}$"))
        .into()
}
