//! Signing in to the web viewer through the identity provider of `[auth.jwt]`: the OAuth 2.0
//! authorization-code flow with PKCE (RFC 7636, `S256`), for a public client. The browser is
//! sent to the provider with a random `state` and the challenge of a random verifier, both kept
//! in a short-lived cookie of its own; the provider sends it back with a code, which is
//! exchanged, with the verifier, for an access token. That token is checked as any bearer JWT
//! is (`JwtVerifier`), and a viewer session holds what it grants until it expires.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::sessions::secret_hash;
use super::{AuthError, Authenticator, Credential, tokens};
use crate::model::Digest;
use crate::model::session::SessionRecord;
use crate::store::Store;

/// `[auth.jwt.login]`: the viewer's client at the identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcLogin {
    /// The viewer's client id, registered at the provider as a public client (no secret).
    pub client_id: String,
    /// The provider's authorization endpoint (`authorization_endpoint` of its discovery document).
    pub authorization_url: String,
    /// The provider's token endpoint (`token_endpoint`).
    pub token_url: String,
    /// This service's `/ui/oidc/callback` as the browser reaches it, e.g.
    /// `https://audit.example.com/ui/oidc/callback`; registered at the provider as a redirect URI.
    pub redirect_url: String,
}

impl OidcLogin {
    /// The settings' own rules, checked when the configuration is loaded.
    pub fn validate(&self) -> Result<(), String> {
        if self.client_id.is_empty() {
            return Err("auth.jwt.login.client_id must not be empty".into());
        }
        for (key, url) in [
            ("authorization_url", &self.authorization_url),
            ("token_url", &self.token_url),
            ("redirect_url", &self.redirect_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("auth.jwt.login.{key} must be an http(s) URL"));
            }
        }
        if !self.redirect_url.ends_with("/ui/oidc/callback") {
            return Err(
                "auth.jwt.login.redirect_url must be this service's /ui/oidc/callback".into(),
            );
        }
        Ok(())
    }
}

/// A sign-in under way: where to send the browser, and what to remember until it comes back.
pub struct LoginStart {
    /// The provider's authorization URL with this flow's parameters.
    pub location: String,
    /// `state`, `.`, and the PKCE verifier: the cookie that binds the flow to this browser.
    pub binding: String,
}

/// Why a sign-in through the provider failed. The browser is told little; the log says more.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the sign-in was not started in this browser, or took too long")]
    NotThisFlow,
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the identity provider's token endpoint failed: {0}")]
    TokenEndpoint(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// How long the provider may take to answer the code exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Digest::sha256(&[verifier.as_bytes()]).0)
}

/// Starts a sign-in: a fresh `state` and PKCE verifier.
pub fn start(login: &OidcLogin) -> LoginStart {
    let (state, verifier) = (random_text(), random_text());
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &login.client_id)
        .append_pair("redirect_uri", &login.redirect_url)
        .append_pair("scope", "openid")
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge(&verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let separator = if login.authorization_url.contains('?') {
        '&'
    } else {
        '?'
    };
    LoginStart {
        location: format!("{}{separator}{query}", login.authorization_url),
        binding: format!("{state}.{verifier}"),
    }
}

/// The PKCE verifier of the flow `binding` (the cookie) belongs to, if `state` (from the
/// provider's redirect) is that flow's; compared in constant time.
pub fn verifier_for<'a>(binding: &'a str, state: &str) -> Option<&'a str> {
    use subtle::ConstantTimeEq;
    let (expected, verifier) = binding.split_once('.')?;
    bool::from(expected.as_bytes().ct_eq(state.as_bytes())).then_some(verifier)
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

/// Exchanges `code` for an access token at the provider's token endpoint.
async fn exchange(login: &OidcLogin, code: &str, verifier: &str) -> Result<String, OidcError> {
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(EXCHANGE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| OidcError::TokenEndpoint(e.to_string()))?;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &login.redirect_url)
        .append_pair("client_id", &login.client_id)
        .append_pair("code_verifier", verifier)
        .finish();
    let response = client
        .post(&login.token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(form)
        .send()
        .await
        .map_err(|e| OidcError::TokenEndpoint(e.to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| OidcError::TokenEndpoint(e.to_string()))?;
    if !status.is_success() {
        return Err(OidcError::Refused(format!(
            "the token endpoint answered {status}"
        )));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|e| OidcError::TokenEndpoint(format!("its answer is not a token: {e}")))?;
    Ok(answer.access_token)
}

/// When a JWT expires (`exp`, seconds since the epoch), read after its signature was checked.
fn expiry(token: &str) -> Option<OffsetDateTime> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    OffsetDateTime::from_unix_timestamp(claims.get("exp")?.as_i64()?).ok()
}

impl<S: Store> Authenticator<S> {
    /// Completes a sign-in through the provider: exchanges `code` with `verifier`, checks the
    /// access token as a bearer JWT, and opens a session holding its credential until the
    /// token expires (or the session's idle or absolute limit ends it first). Returns the
    /// session's secret and its credential.
    pub async fn begin_provider_session(
        &self,
        login: &OidcLogin,
        code: &str,
        verifier: &str,
    ) -> Result<(String, Credential), OidcError> {
        let token = exchange(login, code, verifier).await?;
        // Only the provider's JWTs: an API token is no sign-in.
        if token.starts_with(tokens::TOKEN_PREFIX) {
            return Err(OidcError::Refused(
                "the token endpoint answered with no JWT".into(),
            ));
        }
        let credential = self.authenticate_bearer(&token).await?;
        let expires_at = expiry(&token)
            .ok_or_else(|| OidcError::Refused("the access token has no expiry".into()))?;
        let now = OffsetDateTime::now_utc();
        let secret = random_text();
        self.store()
            .add_session(&SessionRecord {
                secret_hash: secret_hash(&secret),
                user_name: credential.name.clone(),
                // No local password to follow: the provider's grant is held as it was given.
                credential_tag: Digest::ZERO,
                created_at: now,
                last_seen_at: now,
                granted: Some(crate::model::session::Granted {
                    scopes: credential.scopes,
                    tenants: credential.tenants.clone(),
                    expires_at,
                }),
            })
            .await
            .map_err(AuthError::from)?;
        Ok((secret, credential))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> OidcLogin {
        OidcLogin {
            client_id: "auditor-ui".into(),
            authorization_url: "https://idp.test/authorize?realm=a".into(),
            token_url: "https://idp.test/token".into(),
            redirect_url: "https://audit.test/ui/oidc/callback".into(),
        }
    }

    #[test]
    fn a_start_sends_a_s256_challenge_of_the_kept_verifier_and_binds_the_state() {
        let started = start(&login());
        let (state, verifier) = started.binding.split_once('.').unwrap_or_default();
        let query = started
            .location
            .split_once("?realm=a&")
            .map(|(_, q)| q)
            .unwrap_or_default();
        let pairs: std::collections::HashMap<String, String> =
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(pairs["state"], state);
        assert_eq!(pairs["code_challenge"], challenge(verifier));
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert_eq!(pairs["redirect_uri"], "https://audit.test/ui/oidc/callback");
        assert_eq!(verifier_for(&started.binding, state), Some(verifier));
        assert_eq!(verifier_for(&started.binding, "another"), None);
        assert!(login().validate().is_ok());
    }
}
