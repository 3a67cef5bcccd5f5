//! The web viewer sessions of the PostgreSQL backend (statements in `store::sessions`).

use time::OffsetDateTime;

use super::{Columns, PgStore};
use crate::integrity::Digest;
use crate::model::session::SessionRecord;
use crate::store::{StoreError, rows, sessions};

impl PgStore {
    pub(super) async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(sessions::INSERT)
            .bind(session.secret_hash.as_bytes())
            .bind(&session.user_name)
            .bind(session.credential_tag.as_bytes())
            .bind(session.created_at)
            .bind(session.last_seen_at)
            .bind(session.granted.as_ref().map(|g| g.scopes.to_string()))
            .bind(
                session
                    .granted
                    .as_ref()
                    .map(|g| g.tenants.as_str().to_owned()),
            )
            .bind(session.granted.as_ref().map(|g| g.expires_at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn select_session(
        &self,
        secret_hash: &Digest,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sessions::FIND.as_str()))
            .bind(secret_hash.as_bytes())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|row| rows::session(&mut Columns::new(row)))
            .transpose()
    }

    pub(super) async fn update_session_seen(
        &self,
        secret_hash: &Digest,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(sessions::TOUCH)
            .bind(at)
            .bind(secret_hash.as_bytes())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn delete_session(&self, secret_hash: &Digest) -> Result<(), StoreError> {
        sqlx::query(sessions::REMOVE)
            .bind(secret_hash.as_bytes())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn delete_expired_sessions(
        &self,
        idle_before: OffsetDateTime,
        begun_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sessions::REMOVE_EXPIRED)
            .bind(idle_before)
            .bind(begun_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
