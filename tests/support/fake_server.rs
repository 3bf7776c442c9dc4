//! An axum router served over real TCP on 127.0.0.1, as the fake provider
//! APIs ([`crate::fake_gemini`], [`crate::fake_replicate`]) and a test's
//! own web servers need.
//!
//! The server runs on a thread and runtime of its own, so it serves tests on
//! any runtime (or none), outlives a test's runtime, and its logs never mix
//! with a test's. Dropping the [`FakeServer`] shuts it down gracefully and
//! waits for its thread.

use std::net::TcpListener;
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

/// A running server; stopped when dropped.
pub struct FakeServer {
    base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Serves `app` on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When it cannot bind a port on 127.0.0.1: this is test support.
    pub fn start(app: Router) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let base_url = format!("http://{}", listener.local_addr().expect("an address"));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the fake server");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serving the fake server");
            });
        });
        FakeServer {
            base_url,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The server's root, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
