//! Who is calling and what they may do: users and roles, password checks and their cache. Knows
//! nothing of HTTP; `api::access` turns a request's credentials into a [`Principal`] through it.

mod authenticator;
mod cache;
pub mod password;
pub mod users;

use serde::Serialize;

pub use authenticator::{AuthError, Authenticator};
pub use cache::CredentialCache;

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
}

/// A stored user.
#[derive(Clone, Serialize)]
pub struct UserRecord {
    pub name: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: Role,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The authenticated caller, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl From<UserRecord> for Principal {
    fn from(user: UserRecord) -> Self {
        Self {
            name: user.name,
            role: user.role,
        }
    }
}

/// User names are printable, short and free of `:` (which HTTP Basic uses as the separator).
pub fn validate_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("a user name is 1 to 64 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
    {
        return Err("a user name may contain only letters, digits, `_`, `-`, `.` and `@`");
    }
    Ok(())
}
