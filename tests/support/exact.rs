//! What an exact analyzer reports: the shots a chunk sees of a film whose
//! cut list is known, for tests of everything after the analyzer.

use shotlist_shared::analyzer::shots_from_cuts;
use shotlist_shared::model::Shot;
use shotlist_shared::plan::FrameSpan;

/// The shots of chunk `span` of a film with a new shot at each of `cuts`, in
/// absolute frames: one from the chunk's start to the first cut inside it,
/// one per cut, the last to the chunk's end. Each is described as
/// `"from <start frame>"` so tests can tell which chunk's shot survived.
pub fn exact_shots(span: FrameSpan, cuts: &[i64]) -> Vec<Shot> {
    let local: Vec<i64> = cuts.iter().map(|c| c - span.start_frame).collect();
    shots_from_cuts(span.end_frame - span.start_frame, &local)
        .into_iter()
        .map(|shot| {
            let mut shot = shot.shifted(span.start_frame);
            shot.description = format!("from {}", shot.start_frame);
            shot
        })
        .collect()
}
