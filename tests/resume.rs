//! `shotlist process --video-id ID --database-url URL` with the id of a film
//! the database already holds continues that film. Two such runs at the same
//! time share its chunks: each chunk is analyzed once, one sheet is stored,
//! and both runs write that sheet. A run after the film is finished analyzes
//! nothing and writes the stored sheet again. (A run killed midway and then
//! resumed is in `tests/faults.rs`.) A resume says once how many chunks
//! were already done and which chunk a dead run still holds; a resume with
//! another film or plan is refused in the words of the command line.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use shotlist_shared::db::{Claim, Db};
use shotlist_shared::model::{Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::sheet::Sheet;
use shotlist_shared::time::Fps;
use shotlist_tests::cli_bin::shotlist_bin;
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::pg::{self, fresh_db};
use shotlist_tests::sheets::{assert_well_formed, essence};
use uuid::Uuid;

/// Five chunks of 20 s with 5 s of overlap over a 75 s film at 25 fps.
const FRAMES: i64 = 1_875;
const CHUNKS: i64 = 5;
const CUTS: [i64; 12] = [
    110, 240, 370, 500, 640, 745, 880, 1_020, 1_130, 1_390, 1_500, 1_760,
];

/// The longest one run may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(180);

async fn film() -> Film {
    tokio::task::spawn_blocking(|| {
        make_film(
            &film_dir(),
            Fps::new(25, 1).expect("25 fps"),
            &CUTS,
            FRAMES,
            true,
        )
    })
    .await
    .expect("making the film panicked")
}

async fn bin() -> &'static Path {
    tokio::task::spawn_blocking(shotlist_bin)
        .await
        .expect("building shotlist panicked")
}

/// The plan of the runs here, as [`process`] passes it.
const PLAN: PlanParams = PlanParams {
    chunk_seconds: 20.0,
    overlap_seconds: 5.0,
};

/// `shotlist process` of `film` into `out`, its state in `url` under
/// `video_id`, with the local analyzer and chunks of `chunk_seconds`.
async fn command(
    film: &Film,
    url: &str,
    video_id: Uuid,
    out: &Path,
    chunk_seconds: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(bin().await);
    command
        .arg("process")
        .arg(&film.path)
        .arg("--out")
        .arg(out)
        .args(["--database-url", url])
        .args(["--video-id", &video_id.to_string()])
        .args(["--chunk-seconds", chunk_seconds, "--overlap-seconds", "5"])
        .args(["--concurrency", "3", "--lease-seconds", "3"])
        .env_remove("DATABASE_URL")
        .env_remove("SHOTLIST_ANALYZER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// [`command`] with [`PLAN`], run to its end.
async fn process(film: &Film, url: &str, video_id: Uuid, out: &Path) -> Output {
    let mut command = command(film, url, video_id, out, "20").await;
    tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("shotlist process finished in time")
        .expect("shotlist process ran")
}

/// The sheet a successful run wrote to `out`.
fn written_sheet(output: &Output, out: &Path) -> Sheet {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "shotlist process failed: {:?}\n{stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let bytes = std::fs::read(out.join("sheet.json")).expect("sheet.json was written");
    serde_json::from_slice(&bytes).expect("sheet.json is a sheet")
}

/// Per chunk: its status and attempts; then the number of stored sheets,
/// of shot rows and of distinct shot starts.
async fn stored(url: &str, video_id: Uuid) -> (Vec<(String, i32)>, i64, i64, i64) {
    let client = pg::connect(url).await;
    let chunks = client
        .query(
            "SELECT status, attempts FROM shotlist.chunks WHERE video_id = $1 ORDER BY chunk_index",
            &[&video_id],
        )
        .await
        .expect("the chunks")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM shotlist.sheets WHERE video_id = $1),
                    count(*),
                    count(DISTINCT (chunk_index, start_frame))
             FROM shotlist.shots WHERE video_id = $1",
            &[&video_id],
        )
        .await
        .expect("the counts");
    (chunks, counts.get(0), counts.get(1), counts.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_id_at_once_share_its_chunks_and_store_one_sheet() {
    let film = film().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // The sheet of one uninterrupted run.
    let (_, reference_url) = fresh_db().await;
    let reference_out = dir.path().join("reference");
    let output = process(&film, &reference_url, Uuid::new_v4(), &reference_out).await;
    let reference = written_sheet(&output, &reference_out);
    assert_well_formed(&reference);
    assert_eq!(reference.total_chunks, CHUNKS as u32);
    assert_eq!(reference.shots.len(), CUTS.len() + 1);

    // Two runs of one new id, started together.
    let (_, url) = fresh_db().await;
    let video_id = Uuid::new_v4();
    let (first_out, second_out) = (dir.path().join("first"), dir.path().join("second"));
    let (first, second) = tokio::join!(
        process(&film, &url, video_id, &first_out),
        process(&film, &url, video_id, &second_out),
    );
    let first = written_sheet(&first, &first_out);
    let second = written_sheet(&second, &second_out);
    assert_eq!(first, second, "both runs write the one stored sheet");
    assert_eq!(essence(&first), essence(&reference));
    assert_eq!(first.video_id, video_id);

    let (chunks, sheets, shots, distinct) = stored(&url, video_id).await;
    assert_eq!(chunks.len(), CHUNKS as usize);
    for (index, (status, attempts)) in chunks.iter().enumerate() {
        assert_eq!(status, "completed", "chunk {index}");
        assert_eq!(*attempts, 1, "chunk {index} was analyzed once, by one run");
    }
    assert_eq!(sheets, 1, "one sheet is stored");
    assert_eq!(shots, distinct, "no shot is saved twice");

    // A third run of the finished film analyzes nothing and writes the same
    // sheet again.
    let third_out = dir.path().join("third");
    let output = process(&film, &url, video_id, &third_out).await;
    let third = written_sheet(&output, &third_out);
    assert_eq!(third, first);
    let after = stored(&url, video_id).await;
    assert_eq!(after, (chunks, sheets, shots, distinct), "nothing changed");
    let stored_sheet: Value =
        serde_json::from_slice(&std::fs::read(third_out.join("sheet.json")).expect("sheet.json"))
            .expect("JSON");
    assert_eq!(stored_sheet["videoId"], video_id.to_string());
}

/// `film` registered under a new id with [`PLAN`], as a run that was then
/// killed left it: chunk 0 completed, chunk 1 claimed under a lease of an
/// hour that nobody renews.
async fn killed_run(db: &Db, film: &Film) -> Uuid {
    let media = shotlist_shared::probe::probe(&film.path)
        .await
        .expect("probe");
    let source = film.path.canonicalize().expect("the film's path");
    let video_id = Uuid::new_v4();
    db.register_film(video_id, &source.to_string_lossy(), &media, PLAN)
        .await
        .expect("registered");
    let claim = |index| db.claim_chunk(video_id, index, Duration::from_secs(3600), 3);
    let Claim::Claimed(chunk) = claim(0).await.expect("claim chunk 0") else {
        panic!("chunk 0 is claimable");
    };
    let shot = Shot {
        start_frame: chunk.start_frame,
        end_frame: chunk.end_frame,
        shot_type: ShotType::Other,
        description: "saved before the kill".into(),
        dialogue: vec![],
    };
    db.complete_chunk(video_id, 0, chunk.lease_token, &[shot])
        .await
        .expect("chunk 0 saved");
    assert!(
        matches!(claim(1).await.expect("claim chunk 1"), Claim::Claimed(_)),
        "chunk 1 is claimable"
    );
    video_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_a_killed_run_says_once_what_was_done_and_which_chunk_the_dead_run_holds() {
    use tokio::io::AsyncBufReadExt;

    let film = film().await;
    let (db, url) = fresh_db().await;
    let video_id = killed_run(&db, &film).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut command = command(&film, &url, video_id, &out, "20").await;
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shotlist process started");
    let stderr = child.stderr.take().expect("stderr is piped");
    let client = pg::connect(&url).await;
    let read = async {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.expect("a stderr line") {
            if line.starts_with("chunk 2/5 is held by another run") && !seen.contains(&line) {
                // The dead run's lease runs out now rather than in an hour.
                client
                    .execute(
                        "UPDATE shotlist.chunks SET lease_until = now() \
                         WHERE video_id = $1 AND chunk_index = 1",
                        &[&video_id],
                    )
                    .await
                    .expect("the lease ended");
            }
            seen.push(line);
        }
        seen
    };
    let lines = tokio::time::timeout(LIMIT, read)
        .await
        .expect("the run ended in time");
    let status = child.wait().await.expect("shotlist process exited");
    let text = lines.join("\n");
    assert!(status.success(), "{status:?}\n{text}");

    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        count("resuming: 1 of 5 chunks already done"),
        1,
        "the finished chunk is reported once:\n{text}"
    );
    let held: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("chunk 2/5 is held by another run until "))
        .collect();
    assert_eq!(held.len(), 1, "the held chunk is reported once:\n{text}");
    assert!(
        held[0].ends_with("; waiting for it (a live run renews its lease, a dead run's runs out)")
            && held[0].contains(" UTC (in "),
        "{}",
        held[0]
    );
    // "chunk N/5 done": each count once, growing, from past the resumed one.
    let done: Vec<u32> = lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("chunk ")?
                .strip_suffix("/5 done")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        done.windows(2).all(|pair| pair[0] < pair[1]),
        "no progress line twice:\n{text}"
    );
    assert_eq!(done.first().map(|&n| n > 1), Some(true), "{text}");
    assert_eq!(done.last(), Some(&5), "{text}");

    let (chunks, sheets, _, _) = stored(&url, video_id).await;
    let expected: Vec<(String, i32)> = [1, 2, 1, 1, 1]
        .into_iter()
        .map(|attempts| ("completed".to_string(), attempts))
        .collect();
    assert_eq!(chunks, expected, "chunk 0 was kept, chunk 1 taken over");
    assert_eq!(sheets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_another_plan_is_refused_naming_both_plans_by_their_flags() {
    let film = film().await;
    let (db, url) = fresh_db().await;
    let video_id = killed_run(&db, &film).await;
    let before = stored(&url, video_id).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut command = command(&film, &url, video_id, &out, "30").await;
    let output = tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("shotlist process finished in time")
        .expect("shotlist process ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The command line is as it should be; the database's film is another.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!(
            "shotlist: error: --video-id {video_id} is already registered for another plan: it \
             was registered with a 75 s film, --chunk-seconds 20, --overlap-seconds 5; this run \
             has a 75 s film, --chunk-seconds 30, --overlap-seconds 5"
        )
    );
    assert!(!out.exists(), "no output folder was left");
    assert_eq!(stored(&url, video_id).await, before, "nothing changed");
}
