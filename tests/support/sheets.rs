//! Comparing a sheet made under faults with the fault-free sheet of the
//! same film.

use serde_json::{json, Value};
use shotlist_shared::sheet::{Gap, Sheet, SheetStatus};

/// What must agree between two sheets of the same film, whatever run made
/// them: everything but the film's id and path.
pub fn essence(sheet: &Sheet) -> Value {
    json!({
        "fps": sheet.fps,
        "durationFrames": sheet.duration_frames,
        "totalChunks": sheet.total_chunks,
        "completedChunks": sheet.completed_chunks,
        "failedChunks": sheet.failed_chunks,
        "status": sheet.status,
        "shots": sheet.shots,
        "gaps": sheet.gaps,
    })
}

/// The shots of `sheet` that neither overlap nor touch any of `gaps`, each
/// without its number: the part of a partial sheet that must be the same
/// as in the fault-free sheet (a shot beside a gap is cut short by it, and
/// numbers after a gap shift).
pub fn shots_clear_of(sheet: &Sheet, gaps: &[Gap]) -> Vec<Value> {
    sheet
        .shots
        .iter()
        .filter(|shot| {
            gaps.iter()
                .all(|g| shot.end_frame < g.start_frame || shot.start_frame > g.end_frame)
        })
        .map(|shot| {
            json!({
                "start": shot.start,
                "end": shot.end,
                "type": shot.shot_type,
                "description": shot.description,
                "dialogue": shot.dialogue,
            })
        })
        .collect()
}

/// Asserts what holds for every sheet, under faults too: shots numbered
/// 1..N, none twice, each ending where the next starts or a gap begins,
/// and together with the gaps covering the film from its first frame to
/// its last; the counts agree with the status.
///
/// # Panics
/// When any of that does not hold, saying what.
pub fn assert_well_formed(sheet: &Sheet) {
    let mut pieces: Vec<(i64, i64)> = sheet
        .shots
        .iter()
        .map(|s| (s.start_frame, s.end_frame))
        .chain(sheet.gaps.iter().map(|g| (g.start_frame, g.end_frame)))
        .collect();
    pieces.sort_unstable();
    let mut at = 0;
    for (start, end) in &pieces {
        assert_eq!(*start, at, "a hole or an overlap at frame {at}: {pieces:?}");
        assert!(start < end, "an empty piece at frame {start}");
        at = *end;
    }
    assert_eq!(
        at, sheet.duration_frames,
        "the sheet ends at the film's end"
    );
    for (i, shot) in sheet.shots.iter().enumerate() {
        assert_eq!(shot.number as usize, i + 1, "shots are numbered 1..N");
    }
    let failed = sheet.failed_chunks;
    assert_eq!(sheet.completed_chunks + failed, sheet.total_chunks);
    let status = if failed == 0 {
        SheetStatus::Complete
    } else {
        SheetStatus::Partial
    };
    assert_eq!(sheet.status, status);
    assert_eq!(
        sheet.gaps.is_empty(),
        failed == 0,
        "gaps only for failed chunks"
    );
}
