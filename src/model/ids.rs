//! Identifiers that must not be mixed up with one another.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The server-assigned identity of an event (UUIDv7, so it also sorts roughly by time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Position of an event in its tenant's log: gapless, starting at 1, in commit order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Seq(pub i64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The log an event belongs to. Every row and every query carries one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub const DEFAULT: &'static str = "default";

    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// A tenant name as a caller may give it: 1 to 64 of `a-z`, `0-9`, `.`, `_` and `-`.
    pub fn parse(name: &str) -> Result<Self, String> {
        // `.` and `..` would be normalised away in the paths that name a tenant (`/logs/..`).
        let valid = (1..=64).contains(&name.len())
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if valid {
            Ok(Self::new(name))
        } else {
            Err(format!(
                "`{name}` is not a tenant name: 1 to 64 of `a-z`, `0-9`, `.`, `_` and `-`, \
                 other than `.` and `..`"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new(Self::DEFAULT)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::TenantId;

    #[test]
    fn tenant_names_that_paths_would_normalise_away_are_refused() {
        assert!(TenantId::parse("acme.eu").is_ok());
        for name in [".", "..", "", "Acme", "a/b"] {
            assert!(TenantId::parse(name).is_err(), "{name:?}");
        }
        assert!(crate::auth::validate_user_name("..").is_err());
        assert!(crate::auth::validate_user_name("svc.billing").is_ok());
    }
}
