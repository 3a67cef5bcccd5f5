//! Who is calling and what they may do: users and roles, password checks and their caches. Knows
//! nothing of HTTP; `api::access` turns a request's credentials into a [`Credential`] through it,
//! and the credential into a [`Principal`] acting in the tenant the request names.

mod authenticator;
mod cache;
pub mod jwt;
pub mod oidc;
pub mod password;
pub mod sessions;
pub mod throttle;
pub mod tokens;
mod user_cache;
pub mod users;

pub use authenticator::{AuthError, Authenticator};
pub use cache::CredentialCache;

pub use crate::model::user::{NewUser, Role, UserRecord};
use crate::model::{Scope, Scopes, TenantId, TenantScope};

/// Whose credentials a request carries: the name its events record as `recorded_by`, what it
/// may do, and in which tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub scopes: Scopes,
    pub tenants: TenantScope,
}

impl From<UserRecord> for Credential {
    fn from(user: UserRecord) -> Self {
        Self {
            name: user.name,
            scopes: Scopes::of_role(user.role),
            tenants: user.tenant,
        }
    }
}

/// Why a credential may not act in the tenant a request names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("{0}")]
    Invalid(String),
    #[error("these credentials may not act in tenant `{0}`")]
    NotAdmitted(TenantId),
}

impl Credential {
    /// The caller acting in `requested`, or when none is named in its own tenant (`default`
    /// for a credential of every tenant).
    pub fn act_in(self, requested: Option<&str>) -> Result<Principal, TenantError> {
        let tenant = match (requested, &self.tenants) {
            (Some(name), _) => TenantId::parse(name).map_err(TenantError::Invalid)?,
            (None, TenantScope::One(own)) => own.clone(),
            (None, TenantScope::All) => TenantId::default(),
        };
        if !self.tenants.admits(&tenant) {
            return Err(TenantError::NotAdmitted(tenant));
        }
        Ok(Principal {
            name: self.name,
            scopes: self.scopes,
            tenant,
            tenants: self.tenants,
        })
    }
}

/// The authenticated caller acting in one tenant, as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// What its events record as `recorded_by`.
    pub name: String,
    pub scopes: Scopes,
    /// The tenant this request acts in.
    pub tenant: TenantId,
    /// The tenants its credential admits.
    pub tenants: TenantScope,
}

impl Principal {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// The same caller acting in `tenant`, if its credential admits it (the system log: if it
    /// may read it).
    pub fn in_tenant(&self, tenant: TenantId) -> Option<Self> {
        let admitted = match tenant.as_str() {
            crate::log::access_log::SYSTEM_TENANT => self.may_read_the_system_log(),
            _ => self.tenants.admits(&tenant),
        };
        admitted.then(|| Self {
            tenant,
            ..self.clone()
        })
    }

    /// Whether it may read the system log: an admin of every tenant.
    pub fn may_read_the_system_log(&self) -> bool {
        self.tenants == TenantScope::All && self.may(Scope::Admin)
    }
}

/// User names are printable, short and free of `:` (which HTTP Basic uses as the separator).
pub fn validate_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("a user name is 1 to 64 characters long");
    }
    // They would be normalised away in the paths that name them (`/admin/tokens/..`).
    if name == "." || name == ".." {
        return Err("`.` and `..` are not names");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
    {
        return Err("a user name may contain only letters, digits, `_`, `-`, `.` and `@`");
    }
    Ok(())
}
