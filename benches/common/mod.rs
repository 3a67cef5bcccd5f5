//! What every store-level benchmark shares.

/// The same allocator as the `auditor` binary, so the figures match the service.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A numeric setting from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A PostgreSQL database of its own for one benchmark run, on the server at
/// `AUDITOR_BENCH_DATABASE_URL` (default: the local one), dropped by [`BenchDatabase::drop_now`].
#[allow(dead_code)] // not every benchmark runs on PostgreSQL
pub struct BenchDatabase {
    admin: sqlx::PgConnection,
    name: String,
    pub url: String,
}

#[allow(dead_code)]
impl BenchDatabase {
    pub async fn create(prefix: &str) -> Self {
        use sqlx::Connection;
        let admin_url = std::env::var("AUDITOR_BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("{prefix}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    pub async fn drop_now(mut self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .expect("drop database");
    }
}
