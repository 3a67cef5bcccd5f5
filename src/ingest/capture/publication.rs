//! The host's publication: kept holding every table `tables` matches, checked to publish
//! them whole, and what an `ALTER PUBLICATION` left out.

use std::collections::HashSet;

use serde_json::Value;
use sqlx::PgPool;

use super::gaps::Gaps;
use super::settings::PostgresCapture;
use crate::ingest::Misconfigured;
use crate::store::Store;

/// A table of the host: its schema, its name, and whether it has a replica identity (without
/// one, a publication that holds it makes the host's own UPDATEs and DELETEs on it fail).
pub(super) struct HostTable {
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) identified: bool,
    /// Whether the capture's role may add it to the publication (it owns it, or is a member
    /// of its owner's role, or is a superuser).
    pub(super) owned: bool,
}

impl HostTable {
    pub(super) fn qualified(&self) -> String {
        format!(
            "\"{}\".\"{}\"",
            self.schema.replace('"', "\"\""),
            self.name.replace('"', "\"\"")
        )
    }

    pub(super) fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// What the looks at the publication remember from one to the next.
#[derive(Default)]
pub(super) struct Looks {
    /// What has been warned of (each once).
    pub(super) warned: HashSet<String>,
    /// The tables seen in the publication.
    pub(super) seen: HashSet<(String, String)>,
    /// Tables the publication's trace saw put in by hand since the last look: their gap is
    /// recorded already, at that point of the log.
    pub(super) traced: HashSet<(String, String)>,
}

/// Makes the publication hold every table of the host that `tables` matches, table by table
/// (never `FOR TABLES IN SCHEMA`, which would take in a later table without a replica identity
/// and so break the host's writes to it): creates it when missing, adds a matching table
/// created since. Returns the tables added. A table named in `tables` that lacks a replica
/// identity is an error at the start (`started` false); one a pattern matches is left out with
/// a warning, as is a name that matches no table (each warned of once, through `looks`), and a
/// table the capture's role cannot add (warned of, and recorded as a gap, once). When
/// `missed_before` (the slot exists), a table added now missed the changes before: each is
/// recorded as a gap first. A publication `FOR ALL TABLES` is used as it is.
pub(super) async fn sync_publication<S: Store>(
    pool: &PgPool,
    settings: &PostgresCapture,
    looks: &mut Looks,
    started: bool,
    gaps: &Gaps<'_, S>,
    missed_before: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let host: Vec<HostTable> = sqlx::query_as::<_, (String, String, bool, bool)>(
        "SELECT n.nspname::text, c.relname::text, \
           NOT (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))), \
           pg_has_role(c.relowner, 'USAGE') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(schema, name, identified, owned)| HostTable {
        schema,
        name,
        identified,
        owned,
    })
    .collect();
    let matching: Vec<&HostTable> = host
        .iter()
        .filter(|t| settings.captures(&t.schema, &t.name))
        .collect();
    for named in settings.tables.iter().filter(|t| !t.ends_with(".*")) {
        if !host.iter().any(|t| t.display() == *named) && looks.warned.insert(named.clone()) {
            tracing::warn!(
                capture = %settings.name, table = %named,
                "a table named in `tables` does not exist on the host; it is captured once it is \
                 created (within seconds of it)"
            );
        }
    }
    let unidentified: Vec<&&HostTable> = matching.iter().filter(|t| !t.identified).collect();
    let named: Vec<String> = unidentified
        .iter()
        .filter(|t| settings.tables.contains(&t.display()))
        .map(|t| t.display())
        .collect();
    if !named.is_empty() && !started {
        return Err(Misconfigured(format!(
            "not publishing {}: without a replica identity the host's UPDATE and DELETE on them \
             would fail; give them a primary key or `ALTER TABLE … REPLICA IDENTITY FULL`, or \
             leave them out of `tables`",
            named.join(", ")
        ))
        .into());
    }
    // With no publication yet, this is empty.
    let published: HashSet<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(&settings.publication)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    // Once capturing, a named table created without one is passed over like any other: the
    // others' changes go on being captured.
    for table in unidentified {
        if !looks.warned.insert(table.display()) {
            continue;
        }
        if published.contains(&(table.schema.clone(), table.name.clone())) {
            tracing::warn!(
                capture = %settings.name, table = %table.display(),
                "a captured table has lost its replica identity (its primary key dropped?): \
                 the host's UPDATE and DELETE on it fail until it has one again; its inserts \
                 are still captured; give it a primary key or `REPLICA IDENTITY FULL`"
            );
        } else {
            tracing::warn!(
                capture = %settings.name, table = %table.display(),
                "not capturing a matching table without a replica identity: publishing it would \
                 make the host's UPDATE and DELETE on it fail; give it a primary key or \
                 `REPLICA IDENTITY FULL`"
            );
        }
    }
    let mut wanted: Vec<&HostTable> = matching.into_iter().filter(|t| t.identified).collect();
    // One the capture's role cannot add (someone else's table in a captured schema) must not
    // stop the capture of the others: it is told once, in the log itself, and passed over.
    let mut unaddable = Vec::new();
    wanted.retain(|t| {
        let keep = t.owned || published.contains(&(t.schema.clone(), t.name.clone()));
        if !keep {
            unaddable.push(*t);
        }
        keep
    });
    // From the first look the slot exists at: recorded before it, the gap would be this
    // capture's last record when the slot is made, and so read as a slot lost since.
    for table in unaddable.into_iter().filter(|_| missed_before) {
        if looks
            .warned
            .insert(format!("unaddable {}", table.display()))
        {
            tracing::warn!(
                capture = %settings.name, table = %table.display(),
                "a table `tables` matches belongs to a role the capture's role is not a member \
                 of, so it cannot be added to the publication: its changes are not captured"
            );
            gaps.record_unaddable(&table.display()).await?;
        }
    }
    let publication: Option<bool> =
        sqlx::query_scalar("SELECT puballtables FROM pg_publication WHERE pubname = $1")
            .bind(&settings.publication)
            .fetch_optional(pool)
            .await?;
    let added: Vec<&HostTable> = match publication {
        Some(true) => return Ok(Vec::new()),
        None => {
            let list: Vec<String> = wanted.iter().map(|t| t.qualified()).collect();
            // The publication's name was checked to be a plain identifier (`validate`).
            let statement = if list.is_empty() {
                format!("CREATE PUBLICATION {}", settings.publication)
            } else {
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    settings.publication,
                    list.join(", ")
                )
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(pool)
                .await?;
            tracing::info!(publication = %settings.publication, tables = list.len(), "created the publication");
            looks
                .seen
                .extend(wanted.iter().map(|t| (t.schema.clone(), t.name.clone())));
            wanted
        }
        Some(false) => {
            // A table renamed or moved out of what `tables` matches stays in the publication,
            // but its changes are no longer captured: said once for each.
            for (schema, table) in &published {
                let name = format!("{schema}.{table}");
                if !settings.captures(schema, table)
                    && looks.warned.insert(format!("unmatched {name}"))
                {
                    tracing::warn!(
                        capture = %settings.name, table = %name,
                        "a table of the publication is not matched by `tables` (renamed or \
                         moved since it was added, or put there by someone else): its changes \
                         are not captured"
                    );
                    if missed_before {
                        gaps.record_unmatched(&name).await?;
                    }
                }
            }
            // Put in the publication by someone else since the last look: what it held, and
            // its changes before, were not captured; its role trigger is installed as for one
            // this capture adds.
            let mut appeared = Vec::new();
            for table in &wanted {
                let key = (table.schema.clone(), table.name.clone());
                if started && published.contains(&key) && !looks.seen.contains(&key) {
                    // Its gap is recorded already where the trace saw it put in.
                    if !looks.traced.remove(&key) {
                        gaps.record_table(pool, table).await?;
                    }
                    appeared.push(*table);
                }
            }
            looks.seen.retain(|table| published.contains(table));
            looks.seen.extend(published.iter().cloned());
            let missing: Vec<&HostTable> = wanted
                .into_iter()
                .filter(|t| !published.contains(&(t.schema.clone(), t.name.clone())))
                .collect();
            for table in &missing {
                if missed_before {
                    gaps.record_table(pool, table).await?;
                }
                let statement = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    settings.publication,
                    table.qualified()
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(pool)
                    .await?;
                tracing::info!(
                    publication = %settings.publication, table = %table.display(),
                    "added a table to the publication"
                );
                looks
                    .seen
                    .insert((table.schema.clone(), table.name.clone()));
            }
            missing.into_iter().chain(appeared).collect()
        }
    };
    Ok(added
        .into_iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect())
}

/// Refuses a publication that leaves changes of the captured tables out: a `publish` option
/// without one of insert, update, delete and truncate, or (PostgreSQL 15 and later) a row filter
/// or column list on a captured table. What it leaves out would be missing from the log without
/// a trace; columns are kept out of events by `deny_columns` and `allow_columns` instead.
pub(super) async fn check_publication(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<()> {
    let publication = &settings.publication;
    let whole: Option<bool> = sqlx::query_scalar(
        "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication \
         WHERE pubname = $1",
    )
    .bind(publication)
    .fetch_optional(pool)
    .await?;
    if whole == Some(false) {
        return Err(Misconfigured(format!(
            "publication `{publication}` does not publish every insert, update, delete and \
             truncate (its `publish` option), so the changes it leaves out would be missing \
             from the log; `ALTER PUBLICATION {publication} SET (publish = 'insert, update, \
             delete, truncate')`"
        ))
        .into());
    }
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await?;
    if version < 150_000 {
        return Ok(());
    }
    let partial: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel r \
         JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE p.pubname = $1 AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL) ORDER BY 1, 2",
    )
    .bind(publication)
    .fetch_all(pool)
    .await?;
    let partial: Vec<String> = partial
        .into_iter()
        .filter(|(schema, table)| settings.captures(schema, table))
        .map(|(schema, table)| format!("{schema}.{table}"))
        .collect();
    if !partial.is_empty() {
        return Err(Misconfigured(format!(
            "publication `{publication}` publishes only some rows or columns of {} (a row \
             filter or a column list), so the changes it leaves out would be missing from the \
             log; publish those tables whole, and keep columns out of events with \
             `deny_columns` or `allow_columns`",
            partial.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// Warns of each `deny_columns` or `allow_columns` entry that names no column of the host: a
/// misspelt entry denies nothing, or keeps back the columns it meant to let through.
pub(super) async fn warn_of_unmatched_denials(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<()> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name || '.' || column_name \
         FROM information_schema.columns",
    )
    .fetch_all(pool)
    .await?;
    for (list, entries) in [
        ("deny_columns", &settings.deny_columns),
        ("allow_columns", &settings.allow_columns),
    ] {
        for entry in entries {
            if !columns.iter().any(|c| c.eq_ignore_ascii_case(entry)) {
                tracing::warn!(
                    capture = %settings.name, column = %entry, list,
                    "an entry names no column of the host database"
                );
            }
        }
    }
    Ok(())
}

/// The gap an `ALTER PUBLICATION` of this capture's publication made, from its state `before`
/// and `after` the command: the operations it no longer publishes and the captured tables it
/// took out, and who ran it; `None` when it left out nothing this capture reads.
pub(super) fn publication_narrowed(
    settings: &PostgresCapture,
    before: Option<&Value>,
    after: &Value,
) -> Option<Value> {
    let left_out: Vec<&str> = ["insert", "update", "delete", "truncate"]
        .into_iter()
        .filter(|operation| after[operation] != true)
        .collect();
    let tables = |state: &Value| -> HashSet<String> { names(&state["tables"]) };
    let captured = |table: &String| {
        table
            .split_once('.')
            .is_some_and(|(schema, name)| settings.captures(schema, name))
    };
    let now = tables(after);
    let mut taken_out: Vec<String> = before
        .map(tables)
        .unwrap_or_default()
        .into_iter()
        .filter(|table| !now.contains(table))
        .filter(captured)
        .collect();
    taken_out.sort();
    // A row filter or a column list on a captured table (PostgreSQL 15 and later).
    let mut filtered: Vec<String> = names(&after["partial"])
        .into_iter()
        .filter(captured)
        .collect();
    filtered.sort();
    if left_out.is_empty() && taken_out.is_empty() && filtered.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "publication": settings.publication,
        "left_out": left_out,
        "tables_taken_out": taken_out,
        "tables_filtered": filtered,
        "role": after["role"],
        "reason": "the publication was changed to leave these operations, tables, or rows and \
                   columns of tables out: their changes from this event until it publishes \
                   them whole again were not captured",
    }))
}

/// The captured tables an `ALTER PUBLICATION` put in the publication, from its state `before`
/// and `after` the command, each as a gap's data: what the table held, and its changes before,
/// were not captured. None when the capture's own role ran it: the capture records the gap of
/// each table it adds itself, before adding it.
pub(super) fn publication_widened(
    settings: &PostgresCapture,
    before: Option<&Value>,
    after: &Value,
    capture_role: &str,
) -> Vec<Value> {
    let Some(before) = before else {
        return Vec::new();
    };
    if after["role"] == capture_role {
        return Vec::new();
    }
    let had = names(&before["tables"]);
    let mut added: Vec<String> = names(&after["tables"])
        .into_iter()
        .filter(|table| !had.contains(table))
        .filter(|table| {
            table
                .split_once('.')
                .is_some_and(|(schema, name)| settings.captures(schema, name))
        })
        .collect();
    added.sort();
    added
        .into_iter()
        .map(|table| {
            serde_json::json!({
                "table": table,
                "role": after["role"],
                "reason": "the table was put in the publication by hand: its changes committed \
                           before this event were not captured, and those until the capture \
                           installs its role trigger (within seconds) are recorded as by the \
                           capture's name",
            })
        })
        .collect()
}

/// The strings of a JSON array (none when it is no array).
fn names(list: &Value) -> HashSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

/// The tables the capture covers, by the publication as it is now.
pub(super) async fn published_tables(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<Vec<(String, String)>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(&settings.publication)
    .fetch_all(pool)
    .await?;
    Ok(tables
        .into_iter()
        .filter(|(schema, table)| settings.captures(schema, table))
        .collect())
}
