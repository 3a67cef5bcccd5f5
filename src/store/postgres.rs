//! The PostgreSQL backend, for many stateless instances sharing one database. `event_data` is
//! JSONB with a GIN index; appenders from every instance serialise on the tenant's chain-head row.

use std::collections::HashMap;
use std::str::FromStr;

use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::assemble::{self, KeyIndex};
use super::{
    Appended, EVENT_COLUMNS, Store, StoreError, corrupt, decode_digest, decode_role,
    pending_versions,
};
use crate::auth::{NewUser, Role, UserRecord};
use crate::integrity::{Chained, Digest};
use crate::model::event::truncate_to_micros;
use crate::model::{
    Action, Event, EventId, EventQuery, Field, Filter, Order, Outcome, Seq, Submission, TenantId,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }
}

fn event_from_row(row: &PgRow) -> Result<Event, StoreError> {
    let digest = |column: &str| -> Result<Digest, StoreError> {
        let bytes: Vec<u8> = row.try_get(column)?;
        decode_digest(column, &bytes)
    };
    let event_data: Option<Json<Map<String, Value>>> = row.try_get("event_data")?;
    let action: Option<String> = row.try_get("action")?;
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(Event {
        id: EventId(row.try_get("id")?),
        seq: Seq(row.try_get("seq")?),
        tenant: TenantId::new(row.try_get::<String, _>("tenant")?),
        event_type: row.try_get("event_type")?,
        user_identity: row.try_get("user_identity")?,
        action: action
            .map(|a| Action::parse(&a).ok_or_else(|| corrupt("action", a)))
            .transpose()?,
        entity: row.try_get("entity")?,
        entity_id: row.try_get("entity_id")?,
        property: row.try_get("property")?,
        source: row.try_get("source")?,
        ip: row.try_get("ip")?,
        outcome: outcome
            .map(|o| Outcome::parse(&o).ok_or_else(|| corrupt("outcome", o)))
            .transpose()?,
        occurred_at: row.try_get("occurred_at")?,
        recorded_at: row.try_get("recorded_at")?,
        recorded_by: row.try_get("recorded_by")?,
        event_data: event_data.map(|Json(map)| map),
        idempotency_key: row.try_get("idempotency_key")?,
        amends: row.try_get::<Option<Uuid>, _>("amends")?.map(EventId),
        request_hash: digest("request_hash")?,
        prev_hash: digest("prev_hash")?,
        hash: digest("hash")?,
    })
}

async fn insert_event(conn: &mut sqlx::PgConnection, event: &Event) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (tenant, seq, id, event_type, user_identity, action, entity, \
         entity_id, property, source, ip, outcome, occurred_at, recorded_at, recorded_by, \
         event_data, idempotency_key, amends, request_hash, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21)",
    )
    .bind(event.tenant.as_str())
    .bind(event.seq.0)
    .bind(event.id.0)
    .bind(&event.event_type)
    .bind(&event.user_identity)
    .bind(event.action.map(Action::as_str))
    .bind(&event.entity)
    .bind(&event.entity_id)
    .bind(&event.property)
    .bind(&event.source)
    .bind(&event.ip)
    .bind(event.outcome.map(Outcome::as_str))
    .bind(event.occurred_at)
    .bind(event.recorded_at)
    .bind(&event.recorded_by)
    .bind(event.event_data.as_ref().map(Json))
    .bind(&event.idempotency_key)
    .bind(event.amends.map(|a| a.0))
    .bind(event.request_hash.as_bytes())
    .bind(event.prev_hash.as_bytes())
    .bind(event.hash.as_bytes())
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the tenant's chain head for the rest of the transaction, creating it on first use.
/// Every instance appending to the tenant queues here, which keeps `seq` gapless and the chain
/// linear without any coordination between instances.
async fn lock_head(
    conn: &mut sqlx::PgConnection,
    tenant: &TenantId,
) -> Result<Chained, StoreError> {
    sqlx::query(
        "INSERT INTO chain_heads (tenant, seq, hash) VALUES ($1, 0, $2) \
         ON CONFLICT (tenant) DO NOTHING",
    )
    .bind(tenant.as_str())
    .bind(Digest::ZERO.as_bytes())
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query("SELECT seq, hash FROM chain_heads WHERE tenant = $1 FOR UPDATE")
        .bind(tenant.as_str())
        .fetch_one(&mut *conn)
        .await?;
    let hash: Vec<u8> = row.try_get("hash")?;
    Ok(Chained {
        seq: Seq(row.try_get("seq")?),
        hash: decode_digest("chain_heads.hash", &hash)?,
    })
}

fn push_filter(builder: &mut QueryBuilder<Postgres>, filter: &Filter) -> Result<(), StoreError> {
    match filter {
        Filter::Equals(field @ (Field::Id | Field::Amends), value) => {
            let id = EventId::from_str(value).map_err(|e| StoreError::Other(e.into()))?;
            builder.push(format!(" AND {} = ", field.name()));
            builder.push_bind(id.0);
        }
        Filter::Equals(field, value) => {
            builder.push(format!(" AND {} = ", field.name()));
            builder.push_bind(value.clone());
        }
        // Containment is what the GIN jsonb_path_ops index serves.
        Filter::Data(path, value) => {
            builder.push(" AND event_data @> ");
            builder.push_bind(path.containing(value.to_json()));
        }
    }
    Ok(())
}

fn user_from_row(row: &PgRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: decode_role(&row.try_get::<String, _>("role")?)?,
    })
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let applied: Vec<i64> = if has_table {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(pending_versions(&MIGRATOR, &applied))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn append(&self, batch: &[Submission]) -> Result<Vec<Appended>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut heads = HashMap::new();
        for tenant in assemble::tenants(batch) {
            let head = lock_head(&mut tx, &tenant).await?;
            heads.insert(tenant, head);
        }
        let mut known = KeyIndex::new();
        let keys = assemble::idempotency_keys(batch);
        if !keys.is_empty() {
            let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
            let names: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE (tenant, idempotency_key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&tenants)
                .bind(&names)
                .fetch_all(&mut *tx)
                .await?;
            for row in &rows {
                let event = event_from_row(row)?;
                if let Some(key) = event.idempotency_key.clone() {
                    known.insert((event.tenant.clone(), key), event);
                }
            }
        }
        let recorded_at = truncate_to_micros(OffsetDateTime::now_utc());
        let assembled = assemble::assemble(batch, known, heads, recorded_at);
        for event in &assembled.rows {
            insert_event(&mut tx, event).await?;
        }
        for (tenant, head) in &assembled.heads {
            sqlx::query("UPDATE chain_heads SET seq = $2, hash = $3 WHERE tenant = $1")
                .bind(tenant.as_str())
                .bind(head.seq.0)
                .bind(head.hash.as_bytes())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(assembled.outcomes)
    }

    async fn get(&self, tenant: &TenantId, id: EventId) -> Result<Option<Event>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = $1 AND id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn query(&self, tenant: &TenantId, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mut builder = QueryBuilder::<Postgres>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant = "
        ));
        builder.push_bind(tenant.as_str().to_owned());
        for filter in &query.filters {
            push_filter(&mut builder, filter)?;
        }
        if let Some(since) = query.since {
            builder.push(" AND occurred_at >= ").push_bind(since);
        }
        if let Some(until) = query.until {
            builder.push(" AND occurred_at < ").push_bind(until);
        }
        let (after, direction) = match query.order {
            Order::Asc => (" AND seq > ", " ORDER BY seq ASC LIMIT "),
            Order::Desc => (" AND seq < ", " ORDER BY seq DESC LIMIT "),
        };
        if let Some(seq) = query.after {
            builder.push(after).push_bind(seq.0);
        }
        builder.push(direction).push_bind(query.fetch_limit());
        let rows = builder.build().fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn add_user(&self, user: &NewUser) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, role) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a user named `{}` already exists",
                user.name
            )));
        }
        Ok(())
    }

    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query("SELECT name, password_hash, role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query("SELECT name, password_hash, role FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn count_users_with_role(&self, role: Role) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = $1")
                .bind(role.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
