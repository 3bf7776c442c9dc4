//! The local runner when one worker gives up.

use std::time::Duration;

use shotlist_shared::plan::PlanParams;
use shotlist_shared::runner::{run_local, RunOptions};
use shotlist_shared::time::Fps;
use shotlist_tests::film::{film_dir, make_film};
use shotlist_tests::pg::{connect, fresh_db};

/// A worker that meets a permanent database error (here a trigger refuses
/// the claim of chunk 0) ends the run with that error; the other workers are
/// dropped with it instead of waiting forever for a chunk nobody will close.
#[tokio::test]
async fn a_worker_error_ends_the_run_instead_of_hanging_it() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE FUNCTION shotlist.refuse_claim() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'test: refusing chunk 0'; END $$;
             CREATE TRIGGER refuse_claim BEFORE UPDATE ON shotlist.chunks FOR EACH ROW
             WHEN (NEW.chunk_index = 0 AND NEW.status = 'processing')
             EXECUTE FUNCTION shotlist.refuse_claim();",
        )
        .await
        .unwrap();
    let film = make_film(
        &film_dir(),
        Fps::new(25, 1).unwrap(),
        &[60, 130, 200],
        250,
        false,
    );
    let options = RunOptions {
        concurrency: 2,
        plan: PlanParams {
            chunk_seconds: 4.0,
            overlap_seconds: 1.0,
        },
        ..RunOptions::default()
    };
    let run = run_local(&db, &film.path, &options, &|_| {});
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(result) => assert!(result.is_err(), "the refused chunk must fail the run"),
        Err(_) => panic!("run_local still running after 60 s: the other worker spins forever"),
    }
}
