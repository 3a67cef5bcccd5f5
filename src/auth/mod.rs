//! Who is calling and what they may do: users and roles, password checks and their caches. Knows
//! nothing of HTTP; `api::access` turns a request's credentials into a [`Principal`] through it.

mod authenticator;
mod cache;
pub mod password;
mod user_cache;
pub mod users;

pub use authenticator::{AuthError, Authenticator};
pub use cache::CredentialCache;

pub use crate::model::user::{NewUser, Role, UserRecord};

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
