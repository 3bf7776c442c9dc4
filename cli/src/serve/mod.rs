//! `shotlist serve`: the progress page and the sheets of the films in one
//! database, over HTTP on 127.0.0.1.
//!
//! Serve uses the database `--database-url` (or `DATABASE_URL`) names, or
//! else starts a private PostgreSQL that lives as long as it runs, brings
//! the schema up to date, listens on 127.0.0.1:`--port` (8787; 0 takes a
//! free port), and prints `serving http://127.0.0.1:PORT` on stdout once
//! it answers. While it runs it keeps an announcement file
//! ([`announce`]) through which `shotlist process` finds it, runs its film
//! in the same database and prints the film's page. Ctrl-C or SIGTERM
//! stops it: the announcement and the private database are removed, and
//! it exits 130 as an interrupted `process` does.

pub mod announce;
mod routes;

use std::future::IntoFuture;
use std::net::Ipv4Addr;
use std::time::Duration;

use shotlist_shared::db::Db;

use crate::{start_cluster, stop_cluster, CliError, Interrupt};
use announce::{Announced, Announcement};

/// The port serve listens on without `--port`.
pub const DEFAULT_PORT: u16 = 8787;

/// Connections to the database: a page polls one film every few seconds.
const CONNECTIONS: usize = 4;

/// How long requests under way may take to finish after Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A `serve` request whose arguments passed every check.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// `None` means a private database for as long as serve runs.
    pub database_url: Option<String>,
    pub port: u16,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on 127.0.0.1:{port}: {source}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(
        "shotlist serve is already running at {0}; stop it first, or give this one its own \
         SHOTLIST_SERVE_FILE"
    )]
    AlreadyRunning(String),
    #[error(
        "another shotlist serve is starting (it holds {}.lock); stop it first, or give this \
         one its own SHOTLIST_SERVE_FILE",
        .0.display()
    )]
    AlreadyStarting(std::path::PathBuf),
}

/// Serves until Ctrl-C or SIGTERM, which end it with
/// [`CliError::Interrupted`] once everything it made is removed. Refuses to
/// start beside a serve already announced at the same place: the second
/// would hide the first from `shotlist process`.
pub async fn run(settings: ServeSettings) -> Result<(), CliError> {
    let mut interrupt = Interrupt::listen()?;
    if let Some(running) = announce::find_live().await {
        return Err(ServeError::AlreadyRunning(running.url).into());
    }
    // Held until serve returns: a serve starting at the same moment stops.
    let _claim = match announce::path().map(|path| (announce::claim(&path), path)) {
        Some((Ok(None), path)) => return Err(ServeError::AlreadyStarting(path).into()),
        Some((Ok(claim), _)) => claim,
        Some((Err(error), path)) => {
            note!(
                "shotlist: warning: could not lock {}.lock: {error}; shotlist process may not \
                 find this server",
                path.display()
            );
            None
        }
        None => None,
    };
    // The port first: a port in use is told before a database is started.
    let port = settings.port;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|source| ServeError::Listen { port, source })?;
    match &settings.database_url {
        Some(url) => serve(listener, url, false, &mut interrupt).await,
        None => {
            note!("starting the embedded PostgreSQL");
            let cluster = start_cluster(&mut interrupt).await?;
            let result = serve(listener, &cluster.url(), true, &mut interrupt).await;
            stop_cluster(cluster).await;
            result
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    database_url: &str,
    private_database: bool,
    interrupt: &mut Interrupt,
) -> Result<(), CliError> {
    let db = interrupt
        .guard(Db::connect(database_url, CONNECTIONS))
        .await?;
    let applied = interrupt.guard(db.migrate()).await?;
    tracing::debug!(?applied, "migrations applied");
    let port = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { port: 0, source })?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let announced = announce(Announcement {
        url: url.clone(),
        database_url: database_url.to_string(),
        pid: std::process::id(),
        private_database,
    });
    out!("serving {url}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, routes::router(db, port))
        .with_graceful_shutdown(async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        })
        .into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        ended = &mut server => ended.map_err(|e| CliError::from(ServeError::Http(e))),
        () = interrupt.recv() => {
            let _ = stop.send(());
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                tracing::debug!("requests still under way were cut off");
            }
            Err(CliError::Interrupted)
        }
    };
    drop(announced);
    result
}

/// Writes the announcement where [`announce::path`] says, if anywhere. A
/// failure only costs discovery, so it is a warning, not an error.
fn announce(announcement: Announcement) -> Option<Announced> {
    let Some(path) = announce::path() else {
        note!(
            "shotlist: warning: not announcing this server (set {} or HOME); \
             shotlist process will not find it",
            announce::FILE_VAR
        );
        return None;
    };
    match Announced::write(&path, &announcement) {
        Ok(announced) => Some(announced),
        Err(error) => {
            note!(
                "shotlist: warning: could not write {}: {error}; shotlist process will not find \
                 this server",
                path.display()
            );
            None
        }
    }
}

/// What a run does with the serve it found: without a database of its own
/// it takes the serve's (and says so), and with the serve's database it is
/// shown too. The base URL of the film pages when the serve sees the run;
/// `None` (and nothing changed) when the run uses another database.
pub fn join(found: Announcement, database_url: &mut Option<String>) -> Option<String> {
    match database_url {
        None => {
            note!("using the database of shotlist serve at {}", found.url);
            *database_url = Some(found.database_url);
            Some(found.url)
        }
        Some(url) if url.trim() == found.database_url.trim() => Some(found.url),
        Some(_) => None,
    }
}
