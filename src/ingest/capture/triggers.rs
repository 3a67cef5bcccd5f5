//! What the capture installs on the host so that the slot carries what logical decoding
//! leaves out: each statement's database role, and each change to the publications.

use sqlx::PgPool;

use super::settings::PostgresCapture;
use super::{PUBLICATION_PREFIX, ROLE_PREFIX};

/// Installs, on each of `tables`, a statement trigger that sends the role running the
/// statement (`current_user`) as a transactional `ROLE_PREFIX` message, so that its changes
/// are recorded as by that role. Idempotent.
pub(super) async fn ensure_role_triggers(
    pool: &PgPool,
    tables: &[(String, String)],
) -> anyhow::Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION auditor_capture_role() RETURNS trigger LANGUAGE plpgsql \
         SET search_path = pg_catalog, pg_temp AS \
         $$ BEGIN \
           PERFORM pg_catalog.pg_logical_emit_message(true, '{ROLE_PREFIX}', current_user::text); \
         RETURN NULL; END $$"
    )))
    .execute(pool)
    .await?;
    for (schema, table) in tables {
        let statement = format!(
            "CREATE OR REPLACE TRIGGER auditor_capture_role \
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON \"{}\".\"{}\" \
             FOR EACH STATEMENT EXECUTE FUNCTION auditor_capture_role()",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Installs the event triggers that send, before and after each `ALTER PUBLICATION`, every
/// publication's state (`PUBLICATION_PREFIX`), in the command's transaction: the
/// capture reads it in WAL order, so a narrowing is seen however briefly it lasted, also one
/// made while the service was stopped. Event triggers need a superuser; without one, this is
/// warned of and changes are only looked for every `PUBLICATION_SYNC_EVERY`.
pub(super) async fn ensure_publication_trace(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<()> {
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await?;
    if !superuser {
        tracing::warn!(
            capture = %settings.name,
            "the capture's role is no superuser, so it cannot install the event trigger that \
             traces changes to the publication: one narrowed and restored within 5 s would \
             leave changes out without a trace"
        );
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION auditor_capture_publication() RETURNS event_trigger \
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$ DECLARE p record; BEGIN \
           FOR p IN SELECT pubname, pubinsert, pubupdate, pubdelete, pubtruncate \
                    FROM pg_catalog.pg_publication LOOP \
             PERFORM pg_catalog.pg_logical_emit_message(true, '{PUBLICATION_PREFIX}', \
               pg_catalog.json_build_object( \
               'publication', p.pubname, 'insert', p.pubinsert, 'update', p.pubupdate, \
               'delete', p.pubdelete, 'truncate', p.pubtruncate, 'role', current_user, \
               'event', tg_event, \
               'tables', (SELECT coalesce(json_agg(t.schemaname || '.' || t.tablename), '[]') \
                          FROM pg_catalog.pg_publication_tables t \
                          WHERE t.pubname = p.pubname))::text); \
           END LOOP; END $$; \
         DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger \
                          WHERE evtname = 'auditor_capture_publication') THEN \
             CREATE EVENT TRIGGER auditor_capture_publication ON ddl_command_end \
               WHEN TAG IN ('ALTER PUBLICATION') \
               EXECUTE FUNCTION auditor_capture_publication(); \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger \
                          WHERE evtname = 'auditor_capture_publication_before') THEN \
             CREATE EVENT TRIGGER auditor_capture_publication_before ON ddl_command_start \
               WHEN TAG IN ('ALTER PUBLICATION') \
               EXECUTE FUNCTION auditor_capture_publication(); \
           END IF; END $$"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// [`ensure_role_triggers`], a failure warned of: the changes are still captured, as by the
/// capture's name when no context message names someone.
pub(super) async fn install_role_triggers(
    pool: &PgPool,
    settings: &PostgresCapture,
    tables: &[(String, String)],
) {
    if let Err(error) = ensure_role_triggers(pool, tables).await {
        tracing::warn!(
            capture = %settings.name, error = crate::telemetry::error_chain(error.as_ref()),
            "cannot install the triggers that name a change's database role; changes \
             without a context message are recorded as by the capture's name"
        );
    }
}
