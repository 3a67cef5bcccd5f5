//! What the capture installs on the host so that the slot carries what logical decoding
//! leaves out: each statement's database role, and each change to the publications.

use sqlx::PgPool;

use super::settings::PostgresCapture;
use super::{PUBLICATION_PREFIX, ROLE_PREFIX};
use crate::ingest::Misconfigured;

/// The key the capture's triggers sign their messages with: HMAC-SHA256 over
/// `<prefix>:<transaction id>:<body>`, sent as `<hex MAC> <body>`. Any role that writes a
/// captured table may send a message of any prefix (`pg_logical_emit_message` is open to all),
/// so only a signed one is taken as the capture's: a statement that sends its own
/// `auditor-role` message cannot pass its changes off as another role's, nor a fake
/// `auditor-publication` one raise a false alarm. The key lives in a table of the host that
/// only the capture's role (and superusers) may read; the triggers read it as their owner
/// (`SECURITY DEFINER`), and bind each signature to its transaction, so none can be replayed.
pub(super) struct MessageKey {
    key: [u8; 32],
    /// The schema the key table and the trigger functions are in.
    schema: String,
    /// The capture's own role, as the triggers name it: its own `ALTER PUBLICATION`s are
    /// told apart by it.
    pub(super) capture_role: String,
}

impl MessageKey {
    /// The body of a message the capture's triggers sent with `prefix` in transaction `xid`;
    /// `None` for any other (unsigned, signed for another transaction or prefix, or altered).
    pub(super) fn verify<'a>(&self, prefix: &str, xid: u32, content: &'a [u8]) -> Option<&'a [u8]> {
        use hmac::{Hmac, KeyInit, Mac};
        let space = content.iter().position(|&b| b == b' ')?;
        let (mac, body) = (&content[..space], &content[space + 1..]);
        let mac = hex::decode(mac).ok()?;
        let mut expected = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key).ok()?;
        expected.update(format!("{prefix}:{xid}:").as_bytes());
        expected.update(body);
        expected.verify_slice(&mac).ok()?;
        Some(body)
    }

    fn table(&self) -> String {
        format!("{}.{KEY_TABLE}", quote(&self.schema))
    }

    /// plpgsql statements that send the text expression `body` as a transactional message
    /// with `prefix`, signed; they need the variables `body text` and `mac text`.
    fn emit_signed(&self, prefix: &str, body: &str) -> String {
        format!(
            "body := {body}; \
             SELECT pg_catalog.encode(pg_catalog.sha256(k.outer_pad || pg_catalog.sha256( \
               k.inner_pad || pg_catalog.convert_to('{prefix}:' || \
               (pg_catalog.txid_current() % 4294967296)::text || ':' || body, \
               pg_catalog.getdatabaseencoding()))), \
               'hex') INTO mac FROM {table} k; \
             PERFORM pg_catalog.pg_logical_emit_message(true, '{prefix}', mac || ' ' || body);",
            table = self.table()
        )
    }
}

/// The table of the host that holds the [`MessageKey`]; never captured.
pub(super) const KEY_TABLE: &str = "auditor_capture_key";

/// The role whose statement fired a trigger, read inside a `SECURITY DEFINER` function (where
/// `current_user` is the function's owner): the role set with `SET ROLE`, else the session's.
const INVOKING_ROLE: &str = "CASE WHEN pg_catalog.current_setting('role') = 'none' \
     THEN session_user::text ELSE pg_catalog.current_setting('role') END";

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The signing key, made on the host when missing (in the capture role's first schema, with
/// the triggers). A key table that another role owns (unless a superuser) or that others may
/// read is `Misconfigured`: whoever can read the key can sign.
pub(super) async fn ensure_message_key(pool: &PgPool) -> anyhow::Result<MessageKey> {
    let (schema, capture_role): (Option<String>, String) = sqlx::query_as(sqlx::AssertSqlSafe(
        format!("SELECT current_schema()::text, {INVOKING_ROLE}"),
    ))
    .fetch_one(pool)
    .await?;
    let schema = schema.ok_or_else(|| {
        Misconfigured(
            "the capture's role has no schema in its search_path to install its triggers in".into(),
        )
    })?;
    let mut key = MessageKey {
        key: [0; 32],
        schema,
        capture_role,
    };
    let table = key.table();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (one boolean PRIMARY KEY DEFAULT true CHECK (one), \
           key bytea NOT NULL, inner_pad bytea NOT NULL, outer_pad bytea NOT NULL)"
    )))
    .execute(pool)
    .await?;
    let trusted: bool = sqlx::query_scalar(
        "SELECT c.relowner = me.oid OR owner.rolsuper \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles owner ON owner.oid = c.relowner, \
           pg_catalog.pg_roles me \
         WHERE c.oid = $1::regclass AND me.rolname = current_user",
    )
    .bind(&table)
    .fetch_one(pool)
    .await?;
    if !trusted {
        return Err(Misconfigured(format!(
            "{table} belongs to a role other than the capture's: whoever made it knows the key \
             the capture's messages are signed with; drop it, and the capture makes it anew"
        ))
        .into());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE ALL ON TABLE {table} FROM PUBLIC"
    )))
    .execute(pool)
    .await?;
    let fresh: [u8; 32] = rand::random();
    let pad = |byte: u8| -> Vec<u8> {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&fresh);
        block.iter().map(|b| b ^ byte).collect()
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (key, inner_pad, outer_pad) VALUES ($1, $2, $3) \
         ON CONFLICT (one) DO NOTHING"
    )))
    .bind(fresh.as_slice())
    .bind(pad(0x36))
    .bind(pad(0x5c))
    .execute(pool)
    .await?;
    let stored: Vec<u8> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT key FROM {table}")))
            .fetch_one(pool)
            .await?;
    let shared: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c, pg_catalog.aclexplode( \
           coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a \
           WHERE c.oid = $1::regclass AND a.grantee <> c.relowner)",
    )
    .bind(&table)
    .fetch_one(pool)
    .await?;
    if shared {
        return Err(Misconfigured(format!(
            "{table} may be read by roles other than its owner: whoever can read it can sign \
             the capture's messages; revoke their privileges, or drop it and the capture \
             makes it anew"
        ))
        .into());
    }
    key.key = stored
        .try_into()
        .map_err(|_| anyhow::anyhow!("{table} holds a key that is not 32 bytes"))?;
    Ok(key)
}

/// Installs, on each of `tables`, a statement trigger that sends the role running the
/// statement as a signed, transactional `ROLE_PREFIX` message, so that its changes are
/// recorded as by that role. Idempotent.
pub(super) async fn ensure_role_triggers(
    pool: &PgPool,
    key: &MessageKey,
    tables: &[(String, String)],
) -> anyhow::Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION {schema}.auditor_capture_role() RETURNS trigger \
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS \
         $$ DECLARE body text; mac text; BEGIN {emit} RETURN NULL; END $$",
        schema = quote(&key.schema),
        emit = key.emit_signed(ROLE_PREFIX, INVOKING_ROLE),
    )))
    .execute(pool)
    .await?;
    for (schema, table) in tables {
        let statement = format!(
            "CREATE OR REPLACE TRIGGER auditor_capture_role \
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {}.{} \
             FOR EACH STATEMENT EXECUTE FUNCTION {}.auditor_capture_role()",
            quote(schema),
            quote(table),
            quote(&key.schema),
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Installs the event triggers that send, before and after each `ALTER PUBLICATION`, every
/// publication's state (`PUBLICATION_PREFIX`, signed), in the command's transaction: the
/// capture reads it in WAL order, so a narrowing is seen however briefly it lasted, also one
/// made while the service was stopped. The state names each publication's operations, tables,
/// and (PostgreSQL 15 and later) the tables it publishes only in part (a row filter or a column
/// list). Event triggers need a superuser; without one, this is warned of and changes are only
/// looked for every `PUBLICATION_SYNC_EVERY`.
pub(super) async fn ensure_publication_trace(
    pool: &PgPool,
    key: &MessageKey,
    settings: &PostgresCapture,
) -> anyhow::Result<()> {
    let (superuser, version): (bool, i32) = sqlx::query_as(
        "SELECT rolsuper, current_setting('server_version_num')::int FROM pg_roles \
         WHERE rolname = current_user",
    )
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
    let partial = if version >= 150_000 {
        "(SELECT coalesce(pg_catalog.json_agg(n.nspname || '.' || c.relname), '[]') \
           FROM pg_catalog.pg_publication_rel r \
           JOIN pg_catalog.pg_class c ON c.oid = r.prrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE r.prpubid = p.oid AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL))"
    } else {
        "'[]'::json"
    };
    let state = format!(
        "pg_catalog.json_build_object( \
           'publication', p.pubname, 'insert', p.pubinsert, 'update', p.pubupdate, \
           'delete', p.pubdelete, 'truncate', p.pubtruncate, 'role', {INVOKING_ROLE}, \
           'event', tg_event, \
           'tables', (SELECT coalesce(pg_catalog.json_agg(t.schemaname || '.' || t.tablename), \
                        '[]') \
                      FROM pg_catalog.pg_publication_tables t WHERE t.pubname = p.pubname), \
           'partial', {partial})::text"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION {schema}.auditor_capture_publication() \
         RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp AS $$ DECLARE p record; body text; mac text; BEGIN \
           FOR p IN SELECT oid, pubname, pubinsert, pubupdate, pubdelete, pubtruncate \
                    FROM pg_catalog.pg_publication LOOP \
             {emit} \
           END LOOP; END $$; \
         DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger \
                          WHERE evtname = 'auditor_capture_publication') THEN \
             CREATE EVENT TRIGGER auditor_capture_publication ON ddl_command_end \
               WHEN TAG IN ('ALTER PUBLICATION') \
               EXECUTE FUNCTION {schema}.auditor_capture_publication(); \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger \
                          WHERE evtname = 'auditor_capture_publication_before') THEN \
             CREATE EVENT TRIGGER auditor_capture_publication_before ON ddl_command_start \
               WHEN TAG IN ('ALTER PUBLICATION') \
               EXECUTE FUNCTION {schema}.auditor_capture_publication(); \
           END IF; END $$",
        schema = quote(&key.schema),
        emit = key.emit_signed(PUBLICATION_PREFIX, &state),
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// [`ensure_role_triggers`], a failure warned of: the changes are still captured, as by the
/// capture's name when no context message names someone.
pub(super) async fn install_role_triggers(
    pool: &PgPool,
    key: &MessageKey,
    settings: &PostgresCapture,
    tables: &[(String, String)],
) {
    if let Err(error) = ensure_role_triggers(pool, key, tables).await {
        tracing::warn!(
            capture = %settings.name, error = crate::telemetry::error_chain(error.as_ref()),
            "cannot install the triggers that name a change's database role; changes \
             without a context message are recorded as by the capture's name"
        );
    }
}
