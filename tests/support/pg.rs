//! A PostgreSQL server shared by the tests of one test binary, and a fresh,
//! migrated database of its own for every test.
//!
//! With `SHOTLIST_TEST_DATABASE_URL` set, the databases are created on that
//! server (over a plain connection, so it must not require TLS) and dropped
//! when the test process exits. Otherwise the first test to ask starts a
//! private cluster ([`TempCluster`]) listening on a unix socket in a temporary
//! folder; it is stopped and the folder removed when the process exits.
//!
//! Every `#[tokio::test]` runs on a runtime of its own, and a client belongs
//! to the runtime that spawned its connection: nothing here keeps a client
//! between calls. Each database is created over a short-lived maintenance
//! connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use shotlist_shared::db::Db;
use shotlist_shared::localdb::TempCluster;

/// Names a server to create the test databases on instead of a private one.
pub const SERVER_URL_VAR: &str = "SHOTLIST_TEST_DATABASE_URL";

/// Connections in the pool [`fresh_db`] returns.
const POOL_SIZE: usize = 8;

/// Where this process creates its databases, decided once.
#[derive(Debug, Clone)]
enum Server {
    /// The server of `SHOTLIST_TEST_DATABASE_URL`.
    External { url: String },
    /// The private cluster held in [`CLUSTER`].
    Private { maintenance_url: String },
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The private cluster, taken out and dropped (stopped, folder removed) by
/// [`stop_cluster`] when the process exits.
static CLUSTER: Mutex<Option<TempCluster>> = Mutex::new(None);

/// The databases made on an external server, dropped at exit.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, with the migrations applied: a pool
/// of 8 connections to it, and its connection string.
///
/// # Panics
/// When no server can be had or the database cannot be made: a test cannot
/// go on without it.
pub async fn fresh_db() -> (Db, String) {
    let url = fresh_database().await;
    let db = Db::connect(&url, POOL_SIZE)
        .await
        .unwrap_or_else(|e| panic!("connect to the test database: {}", chain(&e)));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate the test database: {}", chain(&e)));
    (db, url)
}

/// An empty database of its own, without migrations (for tests of the
/// migrations themselves); returns its connection string.
///
/// # Panics
/// As [`fresh_db`].
pub async fn fresh_database() -> String {
    let server = tokio::task::spawn_blocking(server)
        .await
        .expect("starting the test server panicked");
    let name = unique_name();
    let maintenance = match &server {
        Server::External { url } => url.clone(),
        Server::Private { maintenance_url } => maintenance_url.clone(),
    };
    let client = connect(&maintenance).await;
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
    match server {
        Server::External { url } => {
            lock(&CREATED).push(name.clone());
            with_dbname(&url, &name)
        }
        Server::Private { .. } => {
            let cluster = lock(&CLUSTER);
            cluster
                .as_ref()
                .expect("the private cluster runs until exit")
                .database_url(&name)
        }
    }
}

/// A plain client for `url`, its connection driven by a task on the current
/// runtime: for raw SQL the [`Db`] API does not offer.
///
/// # Panics
/// When the server cannot be reached.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"));
    tokio::spawn(async move {
        // The connection ends with an error only when the server goes away,
        // which the test then sees on its client.
        let _ = connection.await;
    });
    client
}

/// The server, started on first use. Blocks for about a second then.
fn server() -> Server {
    SERVER
        .get_or_init(|| match std::env::var(SERVER_URL_VAR) {
            Ok(url) if !url.trim().is_empty() => {
                register_at_exit(drop_created_databases);
                Server::External { url }
            }
            _ => start_cluster(),
        })
        .clone()
}

fn start_cluster() -> Server {
    let cluster = TempCluster::start()
        .unwrap_or_else(|e| panic!("start a private PostgreSQL for the tests: {e}"));
    let maintenance_url = cluster.url();
    *lock(&CLUSTER) = Some(cluster);
    register_at_exit(stop_cluster);
    Server::Private { maintenance_url }
}

fn register_at_exit(handler: extern "C" fn()) {
    // SAFETY: `handler` is a plain function that lives as long as the
    // program; atexit only stores the pointer.
    let status = unsafe { libc::atexit(handler) };
    assert_eq!(status, 0, "atexit refused the clean-up handler");
}

/// Stops the private cluster and removes its folder. Runs at exit, so it must
/// not panic: a poisoned lock still holds the cluster.
extern "C" fn stop_cluster() {
    let cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(cluster);
}

/// Drops the databases this process made on an external server. Best effort:
/// it runs at exit, where a failure can only be reported.
extern "C" fn drop_created_databases() {
    let names = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    let Some(Server::External { url }) = SERVER.get() else {
        return;
    };
    if names.is_empty() {
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return eprintln!("cannot drop the test databases: {e}"),
    };
    runtime.block_on(async {
        let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await
        else {
            return eprintln!("cannot drop the test databases: the server is gone");
        };
        tokio::spawn(connection);
        for name in names {
            if let Err(e) = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
            {
                eprintln!("cannot drop test database {name}: {e}");
            }
        }
    });
}

/// A database name no other test, test binary or earlier run uses.
fn unique_name() -> String {
    let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
    let salt = uuid::Uuid::new_v4().simple().to_string();
    format!("shotlist_test_{}_{n}_{}", std::process::id(), &salt[..8])
}

/// `url` with its database replaced by `name` (a plain identifier), for both
/// `postgresql://` URLs and `key=value` strings.
fn with_dbname(url: &str, name: &str) -> String {
    let scheme_end = ["postgresql://", "postgres://"]
        .iter()
        .find(|s| url.starts_with(**s))
        .map(|s| s.len());
    let Some(scheme_end) = scheme_end else {
        // In a key=value string the last value of a key wins.
        return format!("{url} dbname={name}");
    };
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &head[..authority_end])
}

/// An error with its causes, for panic messages: tokio-postgres keeps the
/// server's message in the source.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn dbname(url: &str) -> Option<String> {
        tokio_postgres::Config::from_str(url)
            .unwrap()
            .get_dbname()
            .map(str::to_string)
    }

    #[test]
    fn with_dbname_replaces_the_database_of_urls_and_key_value_strings() {
        let cases = [
            "postgresql://u:p@localhost:5433/postgres?sslmode=disable",
            "postgres://u@localhost",
            "postgresql://localhost/",
            "host=/tmp/x port=5432 user=postgres dbname=postgres",
            "host=/tmp/x user=postgres",
        ];
        for url in cases {
            let changed = with_dbname(url, "shotlist_test_1");
            assert_eq!(
                dbname(&changed).as_deref(),
                Some("shotlist_test_1"),
                "{url} -> {changed}"
            );
        }
        let kept = with_dbname(cases[0], "t");
        assert!(
            kept.ends_with("/t?sslmode=disable")
                && kept.starts_with("postgresql://u:p@localhost:5433")
        );
    }
}
