//! What a credential may do, and in which tenants: its scopes (the names OAuth 2.0 access tokens
//! carry, RFC 9068's space-separated `scope`) and its tenant, one or all (`*`).

use std::fmt;

use super::ids::TenantId;
use super::user::Role;

/// One permission. Roles are sets of them ([`Scopes::of_role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Record events (`POST /events`, bulk, the seed routes that create or amend).
    EventsWrite,
    /// Read events, proofs, checkpoints and tiles.
    EventsRead,
    /// Erase or redact events, by one event, data subject or retention.
    EventsRedact,
    /// Issue a checkpoint on demand.
    CheckpointsWrite,
    /// Manage users and tokens.
    Admin,
}

impl Scope {
    pub const ALL: [Self; 5] = [
        Self::EventsWrite,
        Self::EventsRead,
        Self::EventsRedact,
        Self::CheckpointsWrite,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventsWrite => "events:write",
            Self::EventsRead => "events:read",
            Self::EventsRedact => "events:redact",
            Self::CheckpointsWrite => "checkpoints:write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes. Displayed and parsed space-separated, in [`Scope::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// What a user of `role` may do: a reader reads, a writer records, an admin does all.
    pub fn of_role(role: Role) -> Self {
        match role {
            Role::Reader => Self::from_iter([Scope::EventsRead]),
            Role::Writer => Self::from_iter([Scope::EventsWrite]),
            Role::Admin => Self::from_iter(Scope::ALL),
        }
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Scopes separated by spaces or commas; an unknown name is the error.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split([' ', ','])
            .filter(|name| !name.is_empty())
            .map(|name| Scope::parse(name).ok_or_else(|| name.to_owned()))
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Self(scopes.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(" "))
    }
}

/// The tenants a credential may act in: one, or all (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    All,
    One(TenantId),
}

impl TenantScope {
    /// How it is stored and shown: `*` or the tenant's name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::All => "*",
            Self::One(tenant) => tenant.as_str(),
        }
    }

    /// `*`, or a valid tenant name ([`TenantId::parse`]) other than the system log's
    /// (`_system`), which no credential belongs to.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "*" => Ok(Self::All),
            "_system" => Err("`_system` is the system log's; no credential belongs to it".into()),
            name => TenantId::parse(name).map(Self::One),
        }
    }

    /// Whether a credential of this scope may manage credentials of `other`: every tenant's
    /// covers all; one tenant's only that tenant's.
    pub fn covers(&self, other: &TenantScope) -> bool {
        match other {
            Self::All => *self == Self::All,
            Self::One(tenant) => self.admits(tenant),
        }
    }

    /// Whether the credential may act in `tenant`.
    pub fn admits(&self, tenant: &TenantId) -> bool {
        match self {
            Self::All => true,
            Self::One(own) => own == tenant,
        }
    }
}

impl fmt::Display for TenantScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_sets_of_scopes() {
        let reader = Scopes::of_role(Role::Reader);
        assert!(reader.contains(Scope::EventsRead) && !reader.contains(Scope::EventsWrite));
        assert_eq!(Scopes::of_role(Role::Writer).to_string(), "events:write");
        assert_eq!(
            Scopes::of_role(Role::Admin).to_string(),
            "events:write events:read events:redact checkpoints:write admin"
        );
    }

    #[test]
    fn scopes_parse_from_lists_and_name_an_unknown_one() {
        let parsed = Scopes::parse("events:read,events:write").unwrap();
        assert_eq!(parsed.to_string(), "events:write events:read");
        assert_eq!(
            Scopes::parse("events:read events:delete"),
            Err("events:delete".into())
        );
        assert!(Scopes::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_tenant_scope_admits_its_tenant_or_all() {
        let acme = TenantId::new("acme");
        assert!(TenantScope::All.admits(&acme));
        assert!(TenantScope::parse("acme").unwrap().admits(&acme));
        assert!(!TenantScope::parse("other").unwrap().admits(&acme));
        assert!(TenantScope::parse("Acme").is_err());
    }
}
