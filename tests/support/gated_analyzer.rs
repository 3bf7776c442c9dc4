//! An analyzer wrapper for fault tests: it counts every chunk's analyses and
//! holds chosen chunks at a [`Gate`] before the real analysis starts, so
//! that a test can act (restart the database, force-finalize the film)
//! while those chunks are in the middle of their analyzer call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::model::ChunkAnalysis;

use crate::gate::Gate;

/// Which chunks wait at the gate.
#[derive(Debug, Clone)]
enum Held {
    All,
    Only(BTreeSet<u32>),
}

/// Runs `inner` on every chunk, after the gate for the held ones.
pub struct GatedAnalyzer {
    inner: Arc<dyn Analyzer>,
    gate: Gate,
    held: Held,
    runs: Mutex<BTreeMap<u32, u32>>,
    finished: AtomicUsize,
}

impl GatedAnalyzer {
    /// Every chunk waits at `gate` before `inner` analyzes it.
    pub fn holding_all(inner: Arc<dyn Analyzer>, gate: Gate) -> Arc<GatedAnalyzer> {
        GatedAnalyzer::new(inner, gate, Held::All)
    }

    /// Only `chunks` wait at `gate`; the others are analyzed at once.
    pub fn holding(inner: Arc<dyn Analyzer>, gate: Gate, chunks: &[u32]) -> Arc<GatedAnalyzer> {
        GatedAnalyzer::new(inner, gate, Held::Only(chunks.iter().copied().collect()))
    }

    fn new(inner: Arc<dyn Analyzer>, gate: Gate, held: Held) -> Arc<GatedAnalyzer> {
        Arc::new(GatedAnalyzer {
            inner,
            gate,
            held,
            runs: Mutex::new(BTreeMap::new()),
            finished: AtomicUsize::new(0),
        })
    }

    /// How often each chunk was analyzed (or began to be), by index.
    pub fn runs(&self) -> BTreeMap<u32, u32> {
        self.lock_runs().clone()
    }

    /// Analyses that returned (with shots or an error): their workers are
    /// committing or reporting the failure now, or have done so.
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn lock_runs(&self) -> MutexGuard<'_, BTreeMap<u32, u32>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holds(&self, chunk_index: u32) -> bool {
        match &self.held {
            Held::All => true,
            Held::Only(chunks) => chunks.contains(&chunk_index),
        }
    }
}

#[async_trait]
impl Analyzer for GatedAnalyzer {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        *self.lock_runs().entry(request.chunk_index).or_default() += 1;
        if self.holds(request.chunk_index) {
            self.gate.pass().await;
        }
        let result = self.inner.analyze(request).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }
}
