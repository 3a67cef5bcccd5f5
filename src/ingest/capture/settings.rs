//! `[[capture.postgres]]`: what a capture reads and what it copies.

use serde::{Deserialize, Serialize};

use crate::ingest::default_tenant;
use crate::model::TenantId;

/// `[capture]`: the databases whose changes are captured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres: Vec<PostgresCapture>,
}

impl CaptureSettings {
    /// Each capture valid, and no two that would take each other's changes: two on one slot
    /// each confirm what the other has not recorded, and two of one name derive the same keys.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        for capture in &self.postgres {
            capture.validate()?;
            if !names.insert(&capture.name) {
                return Err(format!(
                    "capture: the name `{}` is given to two captures; each names its own \
                     database",
                    capture.name
                ));
            }
            if !slots.insert((capture.url.expose(), &capture.slot)) {
                return Err(format!(
                    "capture `{}`: slot `{}` of that database is another capture's too; each \
                     needs its own",
                    capture.name, capture.slot
                ));
            }
        }
        Ok(())
    }
}

/// `[[capture.postgres]]`: one host database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCapture {
    /// The database's name in the log: its events' `source`.
    pub name: String,
    /// The host database (`wal_level = logical`; a role with `REPLICATION`).
    pub url: crate::config::DatabaseUrl,
    /// Created for `tables` when missing; an existing one is used as it is.
    pub publication: String,
    /// The logical replication slot (`pgoutput`), created when missing.
    pub slot: String,
    /// `schema.table` or `schema.*`.
    pub tables: Vec<String>,
    /// `schema.table.column`s never copied into an event.
    #[serde(default)]
    pub deny_columns: Vec<String>,
    /// `schema.table.column`s: for a table named here, only these are copied.
    #[serde(default)]
    pub allow_columns: Vec<String>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Changes read at a time (whole transactions; a larger one is read whole).
    #[serde(default = "default_batch_changes")]
    pub batch_changes: u32,
    /// How long to wait when there is nothing new, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A warning is logged while the slot holds back more write-ahead log than this.
    #[serde(default = "default_lag_warning_bytes")]
    pub lag_warning_bytes: i64,
    /// Install on the captured tables a statement trigger that names the database role of
    /// each change (logical decoding does not carry it); needs the tables' owner.
    #[serde(default = "default_record_role")]
    pub record_role: bool,
}

fn default_record_role() -> bool {
    true
}

fn default_batch_changes() -> u32 {
    10_000
}
fn default_poll_interval_ms() -> u64 {
    200
}
fn default_lag_warning_bytes() -> i64 {
    1 << 30
}

impl PostgresCapture {
    pub fn validate(&self) -> Result<(), String> {
        let identifier = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !identifier(&self.publication) || !identifier(&self.slot) {
            return Err(format!(
                "capture `{}`: publication and slot are lower-case identifiers (a-z, 0-9, _)",
                self.name
            ));
        }
        if self.name.is_empty() || self.tables.is_empty() {
            return Err("capture: name and tables must not be empty".into());
        }
        for pattern in &self.tables {
            match pattern.split_once('.') {
                Some((schema, table))
                    if identifier(schema) && (table == "*" || identifier(table)) => {}
                _ => {
                    return Err(format!(
                        "capture `{}`: `{pattern}` is not `schema.table` or `schema.*`",
                        self.name
                    ));
                }
            }
        }
        for column in self.deny_columns.iter().chain(&self.allow_columns) {
            if column.split('.').count() != 3 || column.split('.').any(str::is_empty) {
                return Err(format!(
                    "capture `{}`: `{column}` in deny_columns or allow_columns is not \
                     `schema.table.column`",
                    self.name
                ));
            }
        }
        TenantId::parse(&self.tenant).map_err(|e| format!("capture `{}`: {e}", self.name))?;
        // Any other scheme (a MySQL URL, say) would be read as PostgreSQL's defaults.
        let url = self.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "capture `{}`: url must be a PostgreSQL URL (postgres://…); it is `{}`",
                self.name, self.url
            ));
        }
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|error| {
                format!(
                    "capture `{}`: url `{}` is not a PostgreSQL URL: {error}",
                    self.name, self.url
                )
            })?;
        Ok(())
    }

    /// Whether the table is captured: matched by `tables`, and not the capture's own key table
    /// (whose key would then be copied into the log, where anyone who reads it could sign).
    pub(super) fn captures(&self, schema: &str, table: &str) -> bool {
        table != super::triggers::KEY_TABLE
            && self
                .tables
                .iter()
                .any(|pattern| match pattern.split_once('.') {
                    Some((s, "*")) => s == schema,
                    Some((s, t)) => s == schema && t == table,
                    None => false,
                })
    }

    /// Whether `column` of `schema.table` may be copied into an event. The deny list matches
    /// without regard to case, so that a quoted `"Secret"` is not let through by
    /// `public.users.secret`: it errs towards copying less.
    pub(super) fn copies(&self, schema: &str, table: &str, column: &str) -> bool {
        if self.denies(schema, table, column) {
            return false;
        }
        let full = format!("{schema}.{table}.{column}");
        let prefix = format!("{schema}.{table}.");
        let restricted = self.allow_columns.iter().any(|c| {
            c.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
        });
        !restricted
            || self
                .allow_columns
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(&full))
    }

    /// Whether `deny_columns` names the column (without regard to case).
    pub(super) fn denies(&self, schema: &str, table: &str, column: &str) -> bool {
        let full = format!("{schema}.{table}.{column}");
        self.deny_columns
            .iter()
            .any(|denied| denied.eq_ignore_ascii_case(&full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> PostgresCapture {
        PostgresCapture {
            name: "app".into(),
            url: crate::config::DatabaseUrl::new("postgres://host/app"),
            publication: "auditor".into(),
            slot: "auditor".into(),
            tables: vec!["public.*".into()],
            deny_columns: vec!["public.users.secret".into()],
            allow_columns: Vec::new(),
            tenant: "default".into(),
            batch_changes: 10,
            poll_interval_ms: 10,
            lag_warning_bytes: 1,
            record_role: true,
        }
    }

    /// A URL that cannot reach a PostgreSQL server is refused when the configuration is read,
    /// without its password, instead of being retried as if the host were down.
    #[test]
    fn urls_that_are_no_postgresql_urls_are_refused() {
        for url in [
            "mysql://user:pw-secret@127.0.0.1/app",
            "postgres://user:pw-secret@127.0.0.1:notaport/app",
        ] {
            let capture = PostgresCapture {
                url: crate::config::DatabaseUrl::new(url),
                ..capture()
            };
            let error = capture.validate().unwrap_err();
            assert!(error.contains("url"), "{error}");
            assert!(!error.contains("pw-secret"), "{error}");
        }
        assert!(capture().validate().is_ok());
    }

    #[test]
    fn two_captures_of_one_name_or_one_slot_are_refused() {
        let settings = |captures: Vec<PostgresCapture>| CaptureSettings { postgres: captures };
        let other = PostgresCapture {
            name: "other".into(),
            slot: "other".into(),
            ..capture()
        };
        assert!(settings(vec![capture(), other.clone()]).validate().is_ok());
        let same_name = PostgresCapture {
            slot: "third".into(),
            ..capture()
        };
        assert!(settings(vec![capture(), same_name]).validate().is_err());
        let same_slot = PostgresCapture {
            slot: "auditor".into(),
            ..other.clone()
        };
        assert!(settings(vec![capture(), same_slot]).validate().is_err());
        // One slot name on another database is another slot.
        let elsewhere = PostgresCapture {
            slot: "auditor".into(),
            url: crate::config::DatabaseUrl::new("postgres://host/other"),
            ..other
        };
        assert!(settings(vec![capture(), elsewhere]).validate().is_ok());
    }

    #[test]
    fn allow_columns_match_without_regard_to_case_and_keys_are_never_hidden_by_them() {
        let settings = PostgresCapture {
            allow_columns: vec!["public.USERS.Email".into()],
            ..capture()
        };
        assert!(settings.copies("public", "users", "email"));
        assert!(!settings.copies("public", "users", "id"));
        assert!(!settings.denies("public", "users", "id"));
        assert!(settings.denies("public", "users", "SECRET"));
    }

    #[test]
    fn column_lists_name_schema_table_and_column() {
        assert!(capture().validate().is_ok());
        let unqualified = PostgresCapture {
            deny_columns: vec!["password_hash".into()],
            ..capture()
        };
        assert!(
            unqualified.validate().is_err(),
            "an entry that denies nothing"
        );
        let allowed = PostgresCapture {
            allow_columns: vec!["public.users".into()],
            ..capture()
        };
        assert!(allowed.validate().is_err());
    }

    #[test]
    fn the_deny_list_ignores_case_and_the_allow_list_restricts_its_tables() {
        let settings = PostgresCapture {
            allow_columns: vec!["public.orders.id".into()],
            ..capture()
        };
        assert!(!settings.copies("public", "users", "Secret"));
        assert!(settings.copies("public", "users", "name"));
        assert!(settings.copies("public", "orders", "id"));
        assert!(!settings.copies("public", "orders", "total"));
    }
}
