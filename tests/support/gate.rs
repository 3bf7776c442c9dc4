//! A gate for fault tests: work that reaches it (a fake provider's answer,
//! an analysis) waits there until the test opens it, and the test can see
//! how many wait. That is how a test stops a worker at a precise point (in
//! the middle of its analyzer call, before its commit) without hooks in the
//! product.
//!
//! The gate is runtime-agnostic (a `tokio::sync::watch` channel and
//! counters): the fake servers wait at it on their own runtime while the
//! test opens it from another.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How often [`Gate::wait_for_waiting`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// A point where callers of [`Gate::pass`] wait while the gate is closed.
/// Clones share one gate.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    open: watch::Sender<bool>,
    waiting: AtomicUsize,
    arrived: AtomicUsize,
}

impl Gate {
    /// A gate everyone waits at until [`Gate::open`].
    pub fn closed() -> Gate {
        Gate::new(false)
    }

    /// A gate nobody waits at until [`Gate::close`].
    pub fn opened() -> Gate {
        Gate::new(true)
    }

    fn new(open: bool) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                open: watch::Sender::new(open),
                waiting: AtomicUsize::new(0),
                arrived: AtomicUsize::new(0),
            }),
        }
    }

    /// Lets every waiting caller through, and every later one.
    pub fn open(&self) {
        self.inner.open.send_replace(true);
    }

    /// Makes later callers wait.
    pub fn close(&self) {
        self.inner.open.send_replace(false);
    }

    /// Returns once the gate is open: at once when it is.
    pub async fn pass(&self) {
        self.inner.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.inner.open.subscribe();
        if *open.borrow_and_update() {
            return;
        }
        // Counted down on drop too: a caller may be cancelled while it
        // waits (its client went away, its task was aborted).
        let _counted = Waiting::enter(&self.inner.waiting);
        // The sender lives in `self`: the channel cannot close under us.
        let _ = open.wait_for(|open| *open).await;
    }

    /// Callers waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Callers that reached the gate so far, open or not.
    pub fn arrived(&self) -> usize {
        self.inner.arrived.load(Ordering::SeqCst)
    }

    /// Returns once at least `count` callers wait at the gate.
    ///
    /// # Panics
    /// After `limit`, naming `what` was awaited: the run never got there.
    pub async fn wait_for_waiting(&self, count: usize, limit: Duration, what: &str) {
        let give_up = Instant::now() + limit;
        while self.waiting() < count {
            assert!(
                Instant::now() < give_up,
                "{what}: {} of {count} waited at the gate after {limit:?}",
                self.waiting()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One caller counted as waiting while this lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn callers_wait_until_the_gate_opens_and_are_counted() {
        let gate = Gate::closed();
        let (a, b) = (gate.clone(), gate.clone());
        let first = tokio::spawn(async move { a.pass().await });
        let second = tokio::spawn(async move { b.pass().await });
        gate.wait_for_waiting(2, Duration::from_secs(10), "two callers")
            .await;
        assert!(!first.is_finished() && !second.is_finished());
        gate.open();
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!((gate.waiting(), gate.arrived()), (0, 2));
        gate.pass().await;
        assert_eq!(gate.arrived(), 3, "an open gate lets callers through");
    }

    #[tokio::test]
    async fn a_caller_cancelled_while_waiting_is_no_longer_counted() {
        let gate = Gate::closed();
        let waiter = gate.clone();
        let task = tokio::spawn(async move { waiter.pass().await });
        gate.wait_for_waiting(1, Duration::from_secs(10), "one caller")
            .await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(gate.waiting(), 0);
    }
}
