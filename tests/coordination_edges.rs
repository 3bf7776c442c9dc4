//! Coordination edge cases against a real PostgreSQL: leases taken over,
//! replies lost after a commit, the old entry point racing a worker, and frame
//! rates the timecode rule cannot serve.

use std::str::FromStr;
use std::time::Duration;

use shotlist_shared::db::{Claim, ClaimedChunk, Db, Outcome};
use shotlist_shared::model::{Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::time::Fps;
use shotlist_tests::fixtures::described_film;
use shotlist_tests::pg::fresh_db;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

async fn film(db: &Db, frames: i64, fps: &str) -> Uuid {
    described_film(db, frames, fps).await
}

async fn claimed(db: &Db, id: Uuid, chunk: u32) -> ClaimedChunk {
    match db
        .claim_chunk(id, chunk, Duration::from_secs(600), 3)
        .await
        .unwrap()
    {
        Claim::Claimed(c) => *c,
        other => panic!("not claimed: {other:?}"),
    }
}

fn shots(start: i64, end: i64) -> Vec<Shot> {
    let mid = (start + end) / 2;
    [(start, mid), (mid, end)]
        .into_iter()
        .map(|(s, e)| Shot {
            start_frame: s,
            end_frame: e,
            shot_type: ShotType::Wide,
            description: "x".into(),
            dialogue: vec![],
        })
        .collect()
}

/// The old entry point cannot mark a chunk `completed` while a worker holds
/// it: "completed" keeps meaning "its shots are saved", and the worker's
/// commit goes through.
#[tokio::test]
async fn update_chunk_status_cannot_complete_a_leased_chunk_without_its_shots() {
    let (db, _) = fresh_db().await;
    let id = film(&db, 2500, "25/1").await;
    let c = claimed(&db, id, 0).await;
    let refused = db
        .update_chunk_status(id, 0, "completed", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("complete_chunk"), "{refused}");
    let report = db
        .complete_chunk(id, 0, c.lease_token, &shots(c.start_frame, c.end_frame))
        .await
        .unwrap();
    let results = db.chunk_results(id).await.unwrap();
    assert_eq!(
        (report.outcome, results.chunks[0].shots.len()),
        (Outcome::Completed, 2),
        "chunk completed with {} shots; the lease holder's commit got {:?}",
        results.chunks[0].shots.len(),
        report.outcome
    );
}

/// A worker whose lease was taken over can neither commit nor fail
/// the chunk, and the new holder's commit is the one that counts.
#[tokio::test]
async fn a_taken_over_lease_can_neither_commit_nor_fail() {
    let (db, _) = fresh_db().await;
    let id = film(&db, 2500, "25/1").await;
    let old = match db
        .claim_chunk(id, 0, Duration::from_millis(50), 3)
        .await
        .unwrap()
    {
        Claim::Claimed(c) => *c,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = claimed(&db, id, 0).await;
    assert_eq!(new.attempt, 2);
    let late = db
        .complete_chunk(id, 0, old.lease_token, &shots(0, 2500))
        .await
        .unwrap();
    assert_eq!(late.outcome, Outcome::LeaseLost);
    let late_fail = db
        .fail_chunk(id, 0, old.lease_token, "old", false, 3)
        .await
        .unwrap();
    assert_eq!(late_fail.outcome, Outcome::LeaseLost);
    let ok = db
        .complete_chunk(id, 0, new.lease_token, &shots(0, 2500))
        .await
        .unwrap();
    assert_eq!(ok.outcome, Outcome::Completed);
    assert!(ok.progress.finished);
    // The same attempt asking again (its answer was lost) gets the same
    // answer; the old holder is told it is too late.
    let again = db
        .complete_chunk(id, 0, new.lease_token, &shots(0, 2500))
        .await
        .unwrap();
    assert_eq!(
        (again.outcome, again.progress.finished),
        (Outcome::Completed, true)
    );
    let stale = db
        .complete_chunk(id, 0, old.lease_token, &shots(0, 2500))
        .await
        .unwrap();
    assert_eq!(stale.outcome, Outcome::AlreadyCompleted);
    assert!(!stale.progress.finished && stale.progress.film_finished);
}

/// A commit that arrives after the chunk was failed for good (as
/// force-finalize does) is told `already_failed`, as `fail_chunk` is.
#[tokio::test]
async fn complete_after_a_forced_failure_says_already_failed() {
    let (db, _) = fresh_db().await;
    let id = film(&db, 2500, "25/1").await;
    let c = claimed(&db, id, 0).await;
    db.update_chunk_status(id, 0, "failed", Some("force-finalized"))
        .await
        .unwrap();
    let report = db
        .complete_chunk(id, 0, c.lease_token, &shots(0, 2500))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::AlreadyFailed);
}

/// A film below one frame per second (a 1/3 fps slideshow) is refused
/// before anything is written: the timecode rule needs a whole frame rate.
#[tokio::test]
async fn a_film_below_one_frame_per_second_is_refused_by_describe_video() {
    assert!("1/3".parse::<Fps>().is_err());
    let (db, url) = fresh_db().await;
    let id = Uuid::new_v4();
    db.register_video(id, 30.0, PlanParams::default())
        .await
        .unwrap();
    let client = shotlist_tests::pg::connect(&url).await;
    let err = client
        .query_one("SELECT public.describe_video($1, 'x', 1, 3, 10)", &[&id])
        .await
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("1 to 1000 frames per second"), "{message}");
    let progress = db.chunk_progress(id).await.unwrap();
    assert!(progress["chunks"][0]["startTimecode"].is_null());
}

/// A loopback proxy to the test cluster's unix socket. On the first
/// connection that sends `complete_chunk`, it forwards the query, swallows
/// the answer, and closes the connection a second later: the reply of a
/// committed call is lost, as when a network drops after the commit.
async fn lossy_proxy(socket: std::path::PathBuf) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tripped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let tripped = tripped.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let mute2 = mute.clone();
                let up = async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let hit = buf[..n].windows(14).any(|w| w == b"complete_chunk");
                        if hit && !tripped.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            mute2.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = sw.write_all(&buf[..n]).await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return; // drops both halves: the connection closes
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if mute.load(std::sync::atomic::Ordering::SeqCst) {
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    port
}

/// `Db::call` repeats a call whose connection died. When the first
/// `complete_chunk` committed (and was the one that finished the film) but
/// its answer was lost, the repeat by the same attempt gets the same answer,
/// `finished` included, so finalize is still triggered exactly once.
#[tokio::test]
async fn a_lost_reply_to_the_finishing_commit_still_reports_finished_once() {
    let (db, url) = fresh_db().await;
    let config = tokio_postgres::Config::from_str(&url).unwrap();
    let tokio_postgres::config::Host::Unix(dir) = config.get_hosts()[0].clone() else {
        eprintln!("needs the private cluster (unix socket); skipped");
        return;
    };
    let socket = dir.join(format!(".s.PGSQL.{}", config.get_ports()[0]));
    let port = lossy_proxy(socket).await;
    let proxied = Db::connect(
        &format!(
            "host=127.0.0.1 port={port} user=postgres dbname={}",
            config.get_dbname().unwrap()
        ),
        2,
    )
    .await
    .unwrap();
    let id = film(&db, 2500, "25/1").await;
    let c = claimed(&db, id, 0).await;
    let report = proxied
        .complete_chunk(id, 0, c.lease_token, &shots(c.start_frame, c.end_frame))
        .await
        .expect("retried on a new connection");
    let progress = db.chunk_progress(id).await.unwrap();
    assert_eq!(progress["finished"], true, "the first call did commit");
    assert!(
        report.progress.finished,
        "the only commit finished the film, but its caller got {report:?}"
    );
}
