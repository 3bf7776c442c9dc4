//! Connections that ask for TLS get it, with the certificate checked: a
//! private PostgreSQL on 127.0.0.1 that accepts only TLS connections, with a
//! server certificate signed by a test CA, as Supabase's is by its own
//! ([`shotlist_tests::tls_pg`]).

use shotlist_shared::db::{Db, DbError};
use shotlist_tests::tls_pg::TlsPostgres;

async fn connect(url: &str) -> Result<Db, DbError> {
    Db::connect(url, 1).await
}

// One test, because DATABASE_CA_CERT is process-wide.
#[tokio::test]
async fn a_url_asking_for_tls_gets_a_verified_tls_connection() {
    let server = tokio::task::spawn_blocking(TlsPostgres::start)
        .await
        .expect("a PostgreSQL that takes only TLS");
    let url = |mode: &str| server.url(mode);

    // Without our CA the server's certificate is not trusted: refused.
    std::env::remove_var("DATABASE_CA_CERT");
    let err = connect(&url("require"))
        .await
        .err()
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    // With it, TLS works and the whole schema installs over it.
    std::env::set_var("DATABASE_CA_CERT", server.ca());
    let db = connect(&url("require"))
        .await
        .expect("a verified TLS connection");
    let every: Vec<String> = shotlist_shared::db::MIGRATIONS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(db.migrate().await.unwrap(), every);
    let count = db
        .register_video(uuid::Uuid::new_v4(), 2940.0, Default::default())
        .await
        .unwrap();
    assert_eq!(count, 18);

    // The server takes only TLS: asking for none is refused, by the server.
    let err = connect(&url("disable"))
        .await
        .err()
        .expect("plain TCP is refused")
        .to_string();
    assert!(
        err.contains("no encryption") || err.contains("rejects"),
        "{err}"
    );

    // A CA file that is not a certificate is named.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), "not a certificate").unwrap();
    std::env::set_var("DATABASE_CA_CERT", bogus.path());
    let err = connect(&url("require"))
        .await
        .err()
        .expect("a bad CA file is an error")
        .to_string();
    assert!(
        err.contains("DATABASE_CA_CERT") && err.contains("not a PEM certificate"),
        "{err}"
    );
    std::env::remove_var("DATABASE_CA_CERT");
}
