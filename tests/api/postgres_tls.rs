//! TLS to PostgreSQL, as managed services require it: `sslmode=require` encrypts the
//! connection, and `verify-full` checks the server's certificate against `sslrootcert` and the
//! host name, refusing a server whose certificate another authority signed. The test server has
//! `ssl = on` (Debian's, with its `localhost` certificate; `scripts/test` starts its own that way).

use auditor::store::{PgStore, Store};
use sqlx::Connection;

use crate::helpers::{Backend, TestDb};

/// Whether the session of `url` is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
}

#[tokio::test]
async fn require_and_verify_full_connect_encrypted_and_a_wrong_authority_is_refused() {
    let db = TestDb::new(Backend::Postgres).await;
    let ssl = db.fetch_strings("SHOW ssl").await.unwrap();
    assert_eq!(
        ssl,
        ["on"],
        "the test PostgreSQL must have ssl = on (scripts/test starts one so)"
    );
    let certificate = db
        .fetch_strings("SHOW ssl_cert_file")
        .await
        .unwrap()
        .remove(0);

    let required = format!("{}?sslmode=require", db.url);
    assert!(encrypted(&required).await.unwrap(), "sslmode=require");
    let store = PgStore::connect(&required, 2).await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert!(
        !encrypted(&format!("{}?sslmode=disable", db.url))
            .await
            .unwrap()
    );

    // The server's certificate names `localhost`; it is self-signed, so it is its own authority.
    let by_name = db.url.replacen("@127.0.0.1:", "@localhost:", 1);
    assert_ne!(by_name, db.url, "the test server is reached at 127.0.0.1");
    let verified = format!("{by_name}?sslmode=verify-full&sslrootcert={certificate}");
    assert!(encrypted(&verified).await.unwrap(), "verify-full");
    PgStore::connect(&verified, 2)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();

    // Another authority's certificate, or another name, is refused.
    let wrong_authority =
        format!("{by_name}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ISRG_Root_X1.pem");
    assert!(encrypted(&wrong_authority).await.is_err());
    let wrong_name = format!("{}?sslmode=verify-full&sslrootcert={certificate}", db.url);
    assert!(
        encrypted(&wrong_name).await.is_err(),
        "127.0.0.1 is not the name it carries"
    );
}
