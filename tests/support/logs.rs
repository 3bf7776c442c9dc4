//! Every log line of a test binary, captured at trace level, for tests
//! that prove what is never logged (keys) and what is (keys by number).
//!
//! The capture is the binary's global subscriber, installed once by the
//! first test that asks for it. A subscriber set for one test alone is not
//! enough: tracing decides once, for all threads, whether a log statement
//! is enabled, so statements that other tests reached first could be missed.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The captured lines of this test binary.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

static LOGS: OnceLock<Logs> = OnceLock::new();

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Everything logged so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Starts capturing every log line of this binary at trace level (once),
/// and returns the capture.
///
/// # Panics
/// When another global subscriber was installed first: this is test support.
pub fn capture() -> &'static Logs {
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}
