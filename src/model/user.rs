//! Users as the log keeps them: a name, a role, the tenant they act in (or all), and the hash of
//! a password (never the password).

use serde::Serialize;

use super::access::TenantScope;

/// What a user may do. `writer` may only record, `reader` may only read, `admin` may do both and
/// manage the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reader" => Some(Self::Reader),
            "writer" => Some(Self::Writer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn can_read(self) -> bool {
        matches!(self, Self::Reader | Self::Admin)
    }

    pub fn can_write(self) -> bool {
        matches!(self, Self::Writer | Self::Admin)
    }
}

/// A user to create; the password is already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub password_hash: String,
    pub role: Role,
    pub tenant: TenantScope,
}

/// A stored user.
#[derive(Clone, Serialize)]
pub struct UserRecord {
    pub name: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: Role,
    #[serde(serialize_with = "tenant_scope")]
    pub tenant: TenantScope,
}

fn tenant_scope<S: serde::Serializer>(tenant: &TenantScope, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(tenant.as_str())
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}
