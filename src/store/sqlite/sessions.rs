//! The web viewer sessions of the SQLite backend (statements in `store::sessions`).

use rusqlite::params;
use time::OffsetDateTime;

use super::{SqliteStore, decode_all, micros};
use crate::integrity::Digest;
use crate::model::session::SessionRecord;
use crate::store::{StoreError, rows, sessions};

impl SqliteStore {
    pub(super) async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let session = session.clone();
        self.write(move |conn| {
            conn.prepare_cached(sessions::INSERT)?.execute(params![
                session.secret_hash.as_bytes(),
                session.user_name,
                session.credential_tag.as_bytes(),
                micros(session.created_at),
                micros(session.last_seen_at),
                session.granted.as_ref().map(|g| g.scopes.to_string()),
                session
                    .granted
                    .as_ref()
                    .map(|g| g.tenants.as_str().to_owned()),
                session.granted.as_ref().map(|g| micros(g.expires_at)),
            ])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn select_session(
        &self,
        secret_hash: &Digest,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let hash = secret_hash.as_bytes().to_vec();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&sessions::FIND)?;
            Ok(decode_all(select.query([hash])?, |row| rows::session(row))?.pop())
        })
        .await
    }

    pub(super) async fn update_session_seen(
        &self,
        secret_hash: &Digest,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let hash = secret_hash.as_bytes().to_vec();
        self.write(move |conn| {
            conn.prepare_cached(sessions::TOUCH)?
                .execute(params![micros(at), hash])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn delete_session(&self, secret_hash: &Digest) -> Result<(), StoreError> {
        let hash = secret_hash.as_bytes().to_vec();
        self.write(move |conn| {
            conn.prepare_cached(sessions::REMOVE)?.execute([hash])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn delete_expired_sessions(
        &self,
        idle_before: OffsetDateTime,
        begun_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let removed = conn
                .prepare_cached(sessions::REMOVE_EXPIRED)?
                .execute(params![micros(idle_before), micros(begun_before)])?;
            Ok(removed as u64)
        })
        .await
    }
}
