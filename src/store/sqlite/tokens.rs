//! The API tokens of the SQLite backend (statements in `store::tokens`).

use rusqlite::{named_params, params};
use time::OffsetDateTime;

use super::{SqliteStore, decode_all, is_unique_violation, micros};
use crate::integrity::Digest;
use crate::model::token::{NewToken, TokenRecord};
use crate::store::{StoreError, rows, tokens};

impl SqliteStore {
    pub(super) async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError> {
        let token = token.clone();
        self.write(move |conn| {
            let added = conn
                .prepare_cached(
                    "INSERT INTO api_tokens \
                     (name, tenant, scopes, secret_hash, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    token.name,
                    token.tenant.as_str(),
                    token.scopes.to_string(),
                    token.secret_hash.as_bytes(),
                    micros(token.created_at),
                    token.expires_at.map(micros),
                ]);
            match added {
                Err(e) if is_unique_violation(&e) => Err(tokens::name_taken(&token.name)),
                other => other.map(drop).map_err(StoreError::from),
            }
        })
        .await
    }

    pub(super) async fn select_token(
        &self,
        secret_hash: &Digest,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let hash = secret_hash.as_bytes().to_vec();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&tokens::FIND)?;
            Ok(decode_all(select.query([hash])?, |row| rows::token(row))?.pop())
        })
        .await
    }

    pub(super) async fn select_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(&tokens::LIST)?;
            decode_all(select.query([])?, |row| rows::token(row))
        })
        .await
    }

    pub(super) async fn mark_token_revoked(
        &self,
        name: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let revoked = conn
                .prepare_cached(tokens::REVOKE)?
                // By name: `$2` comes first in the statement, so it would take position 1.
                .execute(named_params! {"$1": name, "$2": micros(at)})?;
            if revoked == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }
}
