//! A PostgreSQL of a test's own that the test may stop and start again, as
//! a real database restarts under a running system. The shared server of
//! [`crate::pg`] is never restarted: other tests use it at the same time.

use std::sync::{Arc, Mutex, MutexGuard};

use shotlist_shared::db::Db;
use shotlist_shared::localdb::TempCluster;

use crate::pg::chain;

/// The test's database name on its own cluster.
const DATABASE: &str = "shotlist_restart";

/// A private cluster with one migrated database; stopped and removed when
/// dropped.
pub struct RestartablePg {
    cluster: Arc<Mutex<TempCluster>>,
    url: String,
}

impl RestartablePg {
    /// Starts a cluster, creates the database and applies the migrations;
    /// returns it with a pool of `pool_size` connections to the database.
    ///
    /// # Panics
    /// When any of that fails: the test cannot go on without it.
    pub async fn start(pool_size: usize) -> (RestartablePg, Db) {
        let cluster = tokio::task::spawn_blocking(TempCluster::start)
            .await
            .expect("starting the cluster panicked")
            .unwrap_or_else(|e| panic!("start a private PostgreSQL: {}", chain(&e)));
        let url = cluster
            .create_database(DATABASE)
            .await
            .unwrap_or_else(|e| panic!("create the test database: {}", chain(&e)));
        let db = Db::connect(&url, pool_size)
            .await
            .unwrap_or_else(|e| panic!("connect to the test database: {}", chain(&e)));
        db.migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate the test database: {}", chain(&e)));
        let pg = RestartablePg {
            cluster: Arc::new(Mutex::new(cluster)),
            url,
        };
        (pg, db)
    }

    /// The database's connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server (a fast shutdown: every connection is cut); new
    /// connections are refused until [`RestartablePg::start_again`].
    pub async fn stop(&self) {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || lock(&cluster).stop_server())
            .await
            .expect("stopping the server panicked");
    }

    /// Starts the stopped server again and waits until it takes connections.
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start_again(&self) {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || lock(&cluster).start_server())
            .await
            .expect("starting the server panicked")
            .unwrap_or_else(|e| panic!("restart the private PostgreSQL: {}", chain(&e)));
    }

    /// Stops and starts the server on the calling thread, blocking it: on a
    /// current-thread runtime nothing else runs meanwhile, as in a Lambda
    /// frozen between two invocations while its database restarts.
    ///
    /// # Panics
    /// When the server does not start again.
    pub fn restart_blocking(&self) {
        let mut cluster = lock(&self.cluster);
        cluster.stop_server();
        cluster
            .start_server()
            .unwrap_or_else(|e| panic!("restart the private PostgreSQL: {}", chain(&e)));
    }
}

fn lock(cluster: &Mutex<TempCluster>) -> MutexGuard<'_, TempCluster> {
    cluster.lock().unwrap_or_else(|e| e.into_inner())
}
