//! API tokens, for services: `auditor_` and 43 base64url characters (256 random bits), so that
//! a secret scanner can recognise a leaked one. Only the SHA-256 of the whole token is stored: a
//! secret of 256 random bits needs no password hashing, so checking one costs a lookup.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use super::validate_user_name;
use crate::model::token::{NewToken, TokenRecord};
use crate::model::{Digest, FieldError, Scopes, TenantScope};
use crate::store::{Store, StoreError};

/// What every token begins with.
pub const TOKEN_PREFIX: &str = "auditor_";

/// Characters after the prefix: 32 bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// The longest lifetime a token may be given: ten years.
pub const MAX_LIFETIME: time::Duration = time::Duration::days(3_652);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A field of the request: `name`, `scopes` or the lifetime (`expires_in_secs`).
    #[error("{}", .0.message)]
    Invalid(FieldError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new random token.
fn generate() -> String {
    let secret: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret))
}

/// How a token is stored and looked up.
pub fn secret_hash(token: &str) -> Digest {
    Digest::sha256(&[token.as_bytes()])
}

/// Whether `text` has a token's shape (prefix, length, alphabet); nothing else is looked up.
pub fn has_token_shape(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX).is_some_and(|secret| {
        secret.len() == SECRET_CHARS
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Creates a token acting in `tenant` with `scopes`, valid for `lifetime` if given; returns its
/// record and the token itself, which is never stored and cannot be shown again.
pub async fn create<S: Store>(
    store: &S,
    name: &str,
    tenant: TenantScope,
    scopes: Scopes,
    lifetime: Option<time::Duration>,
) -> Result<(TokenRecord, String), TokenError> {
    validate_user_name(name)
        .map_err(|e| TokenError::Invalid(FieldError::new("name", e.replace("user", "token"))))?;
    if scopes.is_empty() {
        return Err(TokenError::Invalid(FieldError::new(
            "scopes",
            "a token needs at least one scope",
        )));
    }
    if let Some(lifetime) = lifetime
        && !(time::Duration::SECOND..=MAX_LIFETIME).contains(&lifetime)
    {
        return Err(TokenError::Invalid(FieldError::new(
            "expires_in_secs",
            "a token's lifetime is between 1 second and 3652 days",
        )));
    }
    let token = generate();
    let created_at = crate::model::event::truncate_to_micros(OffsetDateTime::now_utc());
    let new = NewToken {
        name: name.to_owned(),
        tenant,
        scopes,
        secret_hash: secret_hash(&token),
        created_at,
        expires_at: lifetime.map(|lifetime| created_at + lifetime),
    };
    store.add_token(&new).await?;
    let record = TokenRecord {
        name: new.name,
        tenant: new.tenant,
        scopes: new.scopes,
        created_at: new.created_at,
        expires_at: new.expires_at,
        revoked_at: None,
        secret_hash: new.secret_hash,
    };
    Ok((record, token))
}

/// Parses a lifetime such as `90d`, `12h`, `30m` or `3600s` (a number and one unit).
pub fn parse_lifetime(text: &str) -> Result<time::Duration, String> {
    let invalid = || format!("`{text}` is not a lifetime such as 90d, 12h, 30m or 3600s");
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(seconds)
        .map(time::Duration::seconds)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_prefix_and_256_random_bits() {
        let (a, b) = (generate(), generate());
        assert!(has_token_shape(&a) && has_token_shape(&b), "{a}");
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert!(!has_token_shape("auditor_short"));
        assert!(!has_token_shape(&a.replacen("auditor_", "other___", 1)));
    }

    #[test]
    fn lifetimes_take_one_unit() {
        assert_eq!(parse_lifetime("90d"), Ok(time::Duration::days(90)));
        assert_eq!(parse_lifetime("12h"), Ok(time::Duration::hours(12)));
        assert!(parse_lifetime("90").is_err());
        assert!(parse_lifetime("1w").is_err());
        assert!(parse_lifetime("d").is_err());
        assert!(parse_lifetime("99999999999999999999d").is_err());
    }
}
