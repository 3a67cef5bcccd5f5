//! The API tokens of the PostgreSQL backend (statements in `store::tokens`).

use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::{Columns, PgStore};
use crate::integrity::Digest;
use crate::model::token::{NewToken, TokenRecord};
use crate::store::{StoreError, rows, tokens};

fn token_from_row(row: &PgRow) -> Result<TokenRecord, StoreError> {
    rows::token(&mut Columns::new(row))
}

impl PgStore {
    pub(super) async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (name, tenant, scopes, secret_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&token.name)
        .bind(token.tenant.as_str())
        .bind(token.scopes.to_string())
        .bind(token.secret_hash.as_bytes())
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(tokens::name_taken(&token.name));
        }
        Ok(())
    }

    pub(super) async fn select_token(
        &self,
        secret_hash: &Digest,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(tokens::FIND.as_str()))
            .bind(secret_hash.as_bytes())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub(super) async fn select_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(tokens::LIST.as_str()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub(super) async fn mark_token_revoked(
        &self,
        name: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(tokens::REVOKE)
            .bind(name)
            .bind(at)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
