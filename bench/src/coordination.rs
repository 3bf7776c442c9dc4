//! Question 1, coordination: how many chunk-status updates per second can
//! writers make, with shotlist's SQL functions and with the designs they are
//! compared against?
//!
//! Four designs, each in its own schema of one database on a private
//! PostgreSQL, driven by the same writers over the same connections, run
//! after run in turn so that a noisy neighbour hurts them alike:
//!
//! - **shotlist**: the real migrations; a chunk goes pending -> processing ->
//!   completed through `claim_chunk` and `complete_chunk` (with one shot
//!   covering the chunk), sent as `Db` sends them (`query_typed`, answers
//!   decoded into the same types);
//! - **old design**: one JSONB document per film, locked `FOR UPDATE`,
//!   the chunk's status set with `jsonb_set`, the completed count recomputed
//!   over the whole array and the whole document written back;
//! - **unprotected read-modify-write**: the client reads the document, edits
//!   it with serde_json and writes it back, with no lock: it loses updates,
//!   and the table says how many;
//! - **ceiling**: `UPDATE ... SET n = n + 1` of one integer in one row.
//!
//! Each chunk is one writer's: it takes the next chunk index from a counter
//! shared by all writers, makes the chunk processing, then completed: two
//! updates. A film of 18 chunks is over in milliseconds, so a run goes
//! through films one after another (the writers wait for each other at the
//! end of each film) until its time window closes. Every run then checks
//! the final state: every chunk taken is completed, every count exact, and
//! for shotlist exactly one commit per finished film learned that it
//! finished. A wrong state is an error, except for the unprotected design,
//! whose losses are the point.
//!
//! All of it runs twice: with durable commits (`fsync` and
//! `synchronous_commit` on, as on Supabase), where a design that keeps a row
//! locked until commit pays for the WAL flush while holding it, and with
//! the private cluster's usual settings (no flush), where only CPU counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use shotlist_shared::db::{ClaimedChunk, Db, Outcome, Report};
use shotlist_shared::localdb::TempCluster;
use shotlist_shared::model::Shot;
use tokio::sync::Barrier;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

use crate::report::{self, Table};
use crate::Settings;

/// Chunk length and overlap of the films registered with shotlist, the
/// defaults: a film of `n` chunks lasts `OVERLAP + n * (CHUNK - OVERLAP)`.
const CHUNK_SECONDS: f64 = 180.0;
const OVERLAP_SECONDS: f64 = 15.0;
const FPS: i32 = 25;

/// The lease and attempts a worker asks `claim_chunk` for, as the CLI's
/// defaults do.
const LEASE_SECONDS: f64 = 60.0;
const MAX_ATTEMPTS: i32 = 3;

/// The calls a shotlist worker makes, word for word as `Db` makes them.
const CLAIM_SQL: &str = "SELECT public.claim_chunk($1, $2, $3, $4)";
const COMPLETE_SQL: &str = "SELECT public.complete_chunk($1, $2, $3, $4)";

/// The three baselines, each in a schema of its own beside shotlist's.
const BASELINES_SQL: &str = r#"
CREATE SCHEMA bench_old;
CREATE SCHEMA bench_rmw;
CREATE SCHEMA bench_ceiling;

-- The old design: one document per film, {"chunks": [{"index", "status"}],
-- "completed": n}.
CREATE TABLE bench_old.films (
    film_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc jsonb NOT NULL
);

-- The same table for the unprotected read-modify-write, so that the two
-- designs never share rows.
CREATE TABLE bench_rmw.films (
    film_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc jsonb NOT NULL
);

CREATE TABLE bench_ceiling.counters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n bigint NOT NULL DEFAULT 0
);

-- The old design's update, as it was: lock the film's document, set the
-- chunk's status, count the completed chunks over the whole array again and
-- write the whole document back. Returns the new count.
CREATE FUNCTION bench_old.update_chunk_status(p_film_id bigint, p_index integer, p_status text)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_doc jsonb;
    v_completed integer;
BEGIN
    SELECT doc INTO v_doc
    FROM bench_old.films
    WHERE film_id = p_film_id
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown film %', p_film_id;
    END IF;
    v_doc := jsonb_set(v_doc, ARRAY['chunks', p_index::text, 'status'], to_jsonb(p_status));
    SELECT count(*) INTO v_completed
    FROM jsonb_array_elements(v_doc -> 'chunks') AS c(chunk)
    WHERE c.chunk ->> 'status' = 'completed';
    v_doc := jsonb_set(v_doc, '{completed}', to_jsonb(v_completed));
    UPDATE bench_old.films
    SET doc = v_doc
    WHERE film_id = p_film_id;
    RETURN v_completed;
END
$$;
"#;

/// A fresh document of `$1` pending chunks, for `$2` films.
const NEW_DOCS_SQL: &str = "
SELECT jsonb_build_object(
           'chunks', (SELECT jsonb_agg(jsonb_build_object('index', i, 'status', 'pending')
                                       ORDER BY i)
                      FROM generate_series(0, $1 - 1) AS i),
           'completed', 0)
FROM generate_series(1, $2)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Design {
    Shotlist,
    Old,
    Unprotected,
    Ceiling,
}

impl Design {
    const ALL: [Design; 4] = [
        Design::Shotlist,
        Design::Old,
        Design::Unprotected,
        Design::Ceiling,
    ];

    fn label(self) -> &'static str {
        match self {
            Design::Shotlist => "shotlist",
            Design::Old => "old design (JSONB, FOR UPDATE)",
            Design::Unprotected => "unprotected read-modify-write",
            Design::Ceiling => "ceiling (single-row UPDATE)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Durability {
    /// `fsync` and `synchronous_commit` on: each commit waits for its flush.
    Durable,
    /// The private cluster's settings: no flush at all.
    Fast,
}

impl Durability {
    fn label(self) -> &'static str {
        match self {
            Durability::Durable => "durable",
            Durability::Fast => "no flush",
        }
    }
}

/// How big a benchmark: the full one, or a smoke run that only proves every
/// path still works.
#[derive(Debug, Clone)]
struct Plan {
    runs: usize,
    chunk_counts: Vec<u32>,
    writer_counts: Vec<usize>,
    /// How long writers keep taking chunks in one run; they finish the
    /// chunk in hand after it closes.
    window: Duration,
    /// Films ready for one run of a small film, more than the fastest
    /// design gets through in the window.
    small_films: usize,
}

impl Plan {
    fn new(settings: &Settings) -> Plan {
        if settings.smoke {
            Plan {
                runs: settings.runs,
                chunk_counts: vec![18, 50],
                writer_counts: vec![5],
                window: Duration::from_millis(50),
                small_films: 4,
            }
        } else {
            Plan {
                runs: settings.runs,
                chunk_counts: vec![18, 1000],
                writer_counts: vec![5, 50],
                window: Duration::from_millis(400),
                small_films: 500,
            }
        }
    }

    fn max_writers(&self) -> usize {
        self.writer_counts.iter().copied().max().unwrap_or(1)
    }

    /// One film per run, unless films are so small that one would be over
    /// before it could be timed.
    fn films_per_run(&self, chunks: u32) -> usize {
        if chunks < 100 {
            self.small_films
        } else {
            1
        }
    }
}

/// One run of one design in one setting.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    durability: Durability,
    chunks: u32,
    writers: usize,
    design: Design,
    updates: u64,
    elapsed: Duration,
    /// Status changes missing from the final state (unprotected design only).
    lost: u64,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.updates as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Table>> {
    let plan = Plan::new(settings);
    let writers = plan.max_writers();
    let start = |durability: Durability| async move {
        Bench::start(durability, writers)
            .await
            .with_context(|| format!("starting the {} database", durability.label()))
    };
    // Both at once: initdb takes seconds of CPU, and the two overlap.
    let (durable, fast) = tokio::try_join!(start(Durability::Durable), start(Durability::Fast))?;
    let mut measured = Vec::new();
    for (durability, bench) in [(Durability::Durable, &durable), (Durability::Fast, &fast)] {
        for &chunks in &plan.chunk_counts {
            for &writers in &plan.writer_counts {
                for _ in 0..plan.runs {
                    for design in Design::ALL {
                        let run = bench.measure(design, chunks, writers, &plan).await;
                        let (updates, elapsed, lost) = run.with_context(|| {
                            format!(
                                "{} with {} commits, films of {chunks} chunks, {writers} writers",
                                design.label(),
                                durability.label()
                            )
                        })?;
                        measured.push(Measurement {
                            durability,
                            chunks,
                            writers,
                            design,
                            updates,
                            elapsed,
                            lost,
                        });
                    }
                }
            }
        }
    }
    Ok(vec![
        rates_table(&plan, &measured),
        targets_table(settings, &measured),
    ])
}

/// The private PostgreSQL, its one database, and the writers' connections.
struct Bench {
    /// Kept alive for as long as the connections; stopped on drop.
    _cluster: TempCluster,
    admin: Client,
    writers: Vec<Arc<Writer>>,
}

/// One writer's connection, opened and prepared before any timing.
struct Writer {
    client: Client,
    old_update: Statement,
    rmw_read: Statement,
    rmw_write: Statement,
    ceiling_update: Statement,
}

impl Bench {
    async fn start(durability: Durability, writers: usize) -> anyhow::Result<Bench> {
        let cluster = tokio::task::spawn_blocking(move || match durability {
            Durability::Durable => TempCluster::start_durable(),
            Durability::Fast => TempCluster::start(),
        })
        .await
        .context("the task starting PostgreSQL")??;
        // The cluster's own `postgres` database: the cluster is ours and
        // thrown away, and CREATE DATABASE would copy a template for seconds.
        let url = cluster.url();
        let db = Db::connect(&url, 1).await?;
        db.migrate().await?;
        drop(db);
        let admin = connect(&url).await?;
        admin
            .batch_execute(BASELINES_SQL)
            .await
            .context("creating the baselines' schemas")?;
        check_durability(&admin, durability).await?;
        let mut opened = Vec::with_capacity(writers);
        for _ in 0..writers {
            opened.push(Arc::new(Writer::open(&url).await?));
        }
        Ok(Bench {
            _cluster: cluster,
            admin,
            writers: opened,
        })
    }

    /// One timed run: the films are made first, then `writers` writers go
    /// through them until the window closes; the final state is checked
    /// after. Returns the updates made, the time they took and, for the
    /// unprotected design, how many of them the final state lacks.
    async fn measure(
        &self,
        design: Design,
        chunks: u32,
        writers: usize,
        plan: &Plan,
    ) -> anyhow::Result<(u64, Duration, u64)> {
        let films = self
            .make_films(design, chunks, plan.films_per_run(chunks))
            .await?;
        let work = Arc::new(Work::new(films, chunks, plan.window, writers));
        let start = Arc::new(Barrier::new(writers + 1));
        let mut tasks = Vec::with_capacity(writers);
        for writer in self.writers.iter().take(writers) {
            let (writer, work, start) = (writer.clone(), work.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                writer.work(design, &work).await
            }));
        }
        start.wait().await;
        let started = Instant::now();
        work.open(started);
        for result in futures::future::join_all(tasks).await {
            result.context("a writer task panicked")??;
        }
        let elapsed = started.elapsed();
        let done = work.done();
        let updates = 2 * done.iter().map(|&(_, n)| u64::from(n)).sum::<u64>();
        ensure!(updates > 0, "no chunk was updated in the window");
        let lost = self.check(design, &work, &done).await?;
        Ok((updates, elapsed, lost))
    }

    async fn make_films(
        &self,
        design: Design,
        chunks: u32,
        count: usize,
    ) -> anyhow::Result<Vec<FilmId>> {
        let n = i32::try_from(count)?;
        let chunks_param = i32::try_from(chunks)?;
        let ids: Vec<i64> = match design {
            Design::Shotlist => return self.register_videos(chunks, count).await,
            Design::Old | Design::Unprotected => {
                let table = match design {
                    Design::Old => "bench_old.films",
                    _ => "bench_rmw.films",
                };
                let sql = format!("INSERT INTO {table} (doc) {NEW_DOCS_SQL} RETURNING film_id");
                let rows = self.admin.query(&sql, &[&chunks_param, &n]).await;
                rows.context("making the films' documents")?
                    .iter()
                    .map(|row| row.get(0))
                    .collect()
            }
            Design::Ceiling => {
                let sql = "INSERT INTO bench_ceiling.counters (n) \
                           SELECT 0 FROM generate_series(1, $1) RETURNING id";
                let rows = self.admin.query(sql, &[&n]).await;
                rows.context("making the counters")?
                    .iter()
                    .map(|row| row.get(0))
                    .collect()
            }
        };
        Ok(ids.into_iter().map(FilmId::Row).collect())
    }

    /// Registers and describes `count` films of `chunks` chunks in one
    /// transaction: setting up is not what is measured.
    async fn register_videos(&self, chunks: u32, count: usize) -> anyhow::Result<Vec<FilmId>> {
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
        let duration = OVERLAP_SECONDS + f64::from(chunks) * (CHUNK_SECONDS - OVERLAP_SECONDS);
        let frames = (duration * f64::from(FPS)) as i64;
        let register = "SELECT public.register_video(id, $2, $3, $4) \
                        FROM unnest($1::uuid[]) AS id";
        let describe = "SELECT public.describe_video(id, 'bench', $2, 1, $3, '{}') \
                        FROM unnest($1::uuid[]) AS id";
        let registered = async {
            self.admin.batch_execute("BEGIN").await?;
            let plan: [&(dyn ToSql + Sync); 4] =
                [&ids, &duration, &CHUNK_SECONDS, &OVERLAP_SECONDS];
            self.admin.query(register, &plan).await?;
            self.admin.query(describe, &[&ids, &FPS, &frames]).await?;
            self.admin.batch_execute("COMMIT").await
        };
        registered
            .await
            .context("registering the films with register_video and describe_video")?;
        Ok(ids.into_iter().map(FilmId::Video).collect())
    }

    /// Checks the final state of every film the run touched; returns the
    /// status changes the final state lacks (only the unprotected design
    /// may lack any).
    async fn check(
        &self,
        design: Design,
        work: &Work,
        done: &[(FilmId, u32)],
    ) -> anyhow::Result<u64> {
        let mut lost = 0;
        for (film, (id, done)) in work.films.iter().zip(done) {
            if *done == 0 {
                continue;
            }
            match (design, id) {
                (Design::Shotlist, FilmId::Video(video)) => {
                    self.check_video(*video, *done, work.chunks, film).await?;
                }
                (Design::Old, FilmId::Row(row)) => {
                    let doc = self.document("bench_old.films", *row).await?;
                    let missing = missing_updates(&doc, *done)?;
                    ensure!(
                        missing == 0,
                        "the old design lost {missing} updates of film {row}: {}",
                        summary(&doc, *done)
                    );
                }
                (Design::Unprotected, FilmId::Row(row)) => {
                    let doc = self.document("bench_rmw.films", *row).await?;
                    lost += missing_updates(&doc, *done)?;
                }
                (Design::Ceiling, FilmId::Row(row)) => {
                    let sql = "SELECT n FROM bench_ceiling.counters WHERE id = $1";
                    let n: i64 = self.admin.query_one(sql, &[row]).await?.get(0);
                    ensure!(
                        n == 2 * i64::from(*done),
                        "counter {row} is {n} after {} updates",
                        2 * done
                    );
                }
                (design, id) => bail!("{} was given film {id:?}", design.label()),
            }
        }
        Ok(lost)
    }

    /// A shotlist film after `done` chunks went through both calls: that
    /// many chunks completed, each with its one shot, the film's counter
    /// equal, nothing else moved, and the film finished (and told so to
    /// exactly one commit) when every chunk is done.
    async fn check_video(
        &self,
        video: Uuid,
        done: u32,
        total: u32,
        film: &FilmWork,
    ) -> anyhow::Result<()> {
        let sql = "
            SELECT v.completed_chunks,
                   v.failed_chunks,
                   v.finished_at IS NOT NULL,
                   (SELECT count(*) FROM shotlist.chunks AS c
                    WHERE c.video_id = v.video_id AND c.status = 'completed'),
                   (SELECT count(*) FROM shotlist.chunks AS c
                    WHERE c.video_id = v.video_id AND c.status <> 'pending'),
                   (SELECT count(*) FROM shotlist.shots AS s WHERE s.video_id = v.video_id)
            FROM shotlist.videos AS v
            WHERE v.video_id = $1";
        let row = self.admin.query_one(sql, &[&video]).await?;
        let (completed, failed, finished): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
        let (completed_rows, moved_rows, shots): (i64, i64, i64) =
            (row.get(3), row.get(4), row.get(5));
        let told = film.finished_answers.load(Ordering::SeqCst);
        let expected_told = u32::from(done == total);
        let exact = i64::from(completed) == i64::from(done)
            && failed == 0
            && completed_rows == i64::from(done)
            && moved_rows == i64::from(done)
            && shots == i64::from(done)
            && finished == (done == total)
            && told == expected_told;
        ensure!(
            exact,
            "video {video} after {done} of {total} chunks: completed_chunks {completed}, \
             failed_chunks {failed}, {completed_rows} chunk rows completed, {moved_rows} not \
             pending, {shots} shots, finished {finished}, {told} commits told they finished it \
             (expected {expected_told})"
        );
        Ok(())
    }

    async fn document(&self, table: &str, row: i64) -> anyhow::Result<Value> {
        let sql = format!("SELECT doc FROM {table} WHERE film_id = $1");
        let found = self.admin.query_one(&sql, &[&row]).await;
        Ok(found
            .with_context(|| format!("reading film {row} of {table}"))?
            .get(0))
    }
}

/// Refuses to measure a setting the server does not have: the numbers would
/// be under the wrong heading.
async fn check_durability(admin: &Client, durability: Durability) -> anyhow::Result<()> {
    let sql = "SELECT current_setting('fsync'), current_setting('synchronous_commit')";
    let row = admin.query_one(sql, &[]).await?;
    let (fsync, synchronous): (String, String) = (row.get(0), row.get(1));
    let expected = match durability {
        Durability::Durable => "on",
        Durability::Fast => "off",
    };
    ensure!(
        fsync == expected && synchronous == expected,
        "the {} server runs with fsync={fsync}, synchronous_commit={synchronous}",
        durability.label()
    );
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to the private PostgreSQL")?;
    // The connection ends with its client; how it ended adds nothing here.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Writer {
    async fn open(url: &str) -> anyhow::Result<Writer> {
        let client = connect(url).await?;
        let old_update = client
            .prepare("SELECT bench_old.update_chunk_status($1, $2, $3)")
            .await?;
        let rmw_read = client
            .prepare("SELECT doc FROM bench_rmw.films WHERE film_id = $1")
            .await?;
        let rmw_write = client
            .prepare("UPDATE bench_rmw.films SET doc = $2 WHERE film_id = $1")
            .await?;
        let ceiling_update = client
            .prepare("UPDATE bench_ceiling.counters SET n = n + 1 WHERE id = $1")
            .await?;
        Ok(Writer {
            client,
            old_update,
            rmw_read,
            rmw_write,
            ceiling_update,
        })
    }

    /// Takes chunks of one film after another until the window closes or
    /// the films run out, waiting for the other writers at the end of each
    /// film. A writer whose update fails closes the run and still meets the
    /// others at the end of the film, so that none of them waits forever.
    async fn work(&self, design: Design, work: &Work) -> anyhow::Result<()> {
        let mut failure = None;
        for film in &work.films {
            while let Some(index) = work.take(film) {
                if let Err(error) = self.update_chunk(design, film, index).await {
                    failure = Some(error.context(format!("chunk {index} of film {:?}", film.id)));
                    film.closed.store(true, Ordering::SeqCst);
                    break;
                }
            }
            work.end_of_film.wait().await;
            // Set only before every writer reached the barrier above, so
            // all of them read the same answer.
            if film.closed.load(Ordering::SeqCst) {
                break;
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Moves one chunk to processing, then to completed.
    async fn update_chunk(
        &self,
        design: Design,
        film: &FilmWork,
        index: u32,
    ) -> anyhow::Result<()> {
        match (design, film.id) {
            (Design::Shotlist, FilmId::Video(video)) => self.shotlist(video, index, film).await,
            (Design::Old, FilmId::Row(row)) => {
                for status in ["processing", "completed"] {
                    let params: [&(dyn ToSql + Sync); 3] = [&row, &(index as i32), &status];
                    self.client.query_one(&self.old_update, &params).await?;
                }
                Ok(())
            }
            (Design::Unprotected, FilmId::Row(row)) => {
                for status in ["processing", "completed"] {
                    self.read_modify_write(row, index, status).await?;
                }
                Ok(())
            }
            (Design::Ceiling, FilmId::Row(row)) => {
                for _ in 0..2 {
                    self.client.execute(&self.ceiling_update, &[&row]).await?;
                }
                Ok(())
            }
            (design, id) => bail!("{} was given film {id:?}", design.label()),
        }
    }

    /// What a shotlist worker does around its analysis: claim the chunk,
    /// then commit one shot covering it.
    async fn shotlist(&self, video: Uuid, index: u32, film: &FilmWork) -> anyhow::Result<()> {
        let chunk_index = index as i32;
        let claim: Value = self
            .client
            .query_typed_one(
                CLAIM_SQL,
                &[
                    (&video, Type::UUID),
                    (&chunk_index, Type::INT4),
                    (&LEASE_SECONDS, Type::FLOAT8),
                    (&MAX_ATTEMPTS, Type::INT4),
                ],
            )
            .await?
            .get(0);
        ensure!(
            claim["claimed"] == json!(true),
            "claim_chunk did not give the chunk: {claim}"
        );
        let claimed: ClaimedChunk = serde_json::from_value(claim)?;
        let shot = Shot {
            start_frame: claimed.start_frame,
            end_frame: claimed.end_frame,
            shot_type: Default::default(),
            description: "bench".to_string(),
            dialogue: Vec::new(),
        };
        let shots = serde_json::to_value([shot])?;
        let answer: Value = self
            .client
            .query_typed_one(
                COMPLETE_SQL,
                &[
                    (&video, Type::UUID),
                    (&chunk_index, Type::INT4),
                    (&claimed.lease_token, Type::UUID),
                    (&shots, Type::JSONB),
                ],
            )
            .await?
            .get(0);
        let report: Report = serde_json::from_value(answer.clone())?;
        ensure!(
            report.outcome == Outcome::Completed,
            "complete_chunk did not complete the chunk: {answer}"
        );
        if report.progress.finished {
            film.finished_answers.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Reads the film's document, sets the chunk's status and the completed
    /// count in it, and writes it back, with nothing to stop another writer
    /// doing the same in between.
    async fn read_modify_write(&self, row: i64, index: u32, status: &str) -> anyhow::Result<()> {
        let mut doc: Value = self.client.query_one(&self.rmw_read, &[&row]).await?.get(0);
        let chunks = doc["chunks"]
            .as_array_mut()
            .context("the document has no chunks array")?;
        let chunk = chunks
            .get_mut(index as usize)
            .context("the document lacks the chunk")?;
        chunk["status"] = json!(status);
        let completed = chunks
            .iter()
            .filter(|c| c["status"] == json!("completed"))
            .count();
        doc["completed"] = json!(completed);
        self.client.execute(&self.rmw_write, &[&row, &doc]).await?;
        Ok(())
    }
}

/// A film as its design names it.
#[derive(Debug, Clone, Copy)]
enum FilmId {
    Video(Uuid),
    Row(i64),
}

/// What the writers of one run share.
struct Work {
    films: Vec<FilmWork>,
    chunks: u32,
    window: Duration,
    /// When the window closes; set once the writers are released.
    deadline: OnceLock<Instant>,
    end_of_film: Barrier,
}

struct FilmWork {
    id: FilmId,
    /// The next chunk index to take.
    next: AtomicU32,
    /// Whether a writer found the window closed while on this film.
    closed: AtomicBool,
    /// shotlist commits whose answer said they finished the film.
    finished_answers: AtomicU32,
}

impl Work {
    fn new(films: Vec<FilmId>, chunks: u32, window: Duration, writers: usize) -> Work {
        Work {
            films: films
                .into_iter()
                .map(|id| FilmWork {
                    id,
                    next: AtomicU32::new(0),
                    closed: AtomicBool::new(false),
                    finished_answers: AtomicU32::new(0),
                })
                .collect(),
            chunks,
            window,
            deadline: OnceLock::new(),
            end_of_film: Barrier::new(writers),
        }
    }

    fn open(&self, started: Instant) {
        let _ = self.deadline.set(started + self.window);
    }

    /// The next chunk of `film` for this writer, or `None` when the film
    /// has none left or the window closed.
    fn take(&self, film: &FilmWork) -> Option<u32> {
        let closed = self
            .deadline
            .get()
            .is_some_and(|deadline| Instant::now() >= *deadline);
        if closed {
            film.closed.store(true, Ordering::SeqCst);
            return None;
        }
        let index = film.next.fetch_add(1, Ordering::SeqCst);
        (index < self.chunks).then_some(index)
    }

    /// How many chunks of each film went through both updates: every index
    /// taken, since a writer finishes the chunk it took.
    fn done(&self) -> Vec<(FilmId, u32)> {
        self.films
            .iter()
            .map(|film| (film.id, film.next.load(Ordering::SeqCst).min(self.chunks)))
            .collect()
    }
}

/// Status changes missing from a document after its first `done` chunks
/// each went pending -> processing -> completed: 2 for a chunk still
/// pending, 1 for one left processing. A completed count that disagrees
/// with the statuses is an error in any design: each writer recomputes it
/// from the array it writes.
fn missing_updates(doc: &Value, done: u32) -> anyhow::Result<u64> {
    let chunks = doc["chunks"]
        .as_array()
        .context("the document has no chunks array")?;
    let (mut missing, mut completed) = (0, 0);
    for (index, chunk) in chunks.iter().enumerate() {
        let status = chunk["status"].as_str().unwrap_or("");
        match (index < done as usize, status) {
            (true, "completed") => completed += 1,
            (true, "processing") => missing += 1,
            (true, "pending") => missing += 2,
            (false, "pending") => {}
            _ => bail!("chunk {index} is {status:?} after chunks 0 to {done} were taken"),
        }
    }
    let count = doc["completed"].as_u64();
    ensure!(
        count == Some(completed),
        "the completed count {} disagrees with the {completed} completed chunks",
        doc["completed"]
    );
    Ok(missing)
}

fn summary(doc: &Value, done: u32) -> String {
    let mut statuses: HashMap<&str, u32> = HashMap::new();
    for chunk in doc["chunks"]
        .as_array()
        .into_iter()
        .flatten()
        .take(done as usize)
    {
        *statuses
            .entry(chunk["status"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    format!(
        "of its first {done} chunks {statuses:?}, completed count {}",
        doc["completed"]
    )
}

/// The medians of one design in one setting.
struct Median {
    rate: f64,
    lost: f64,
    updates: f64,
}

/// Medians per (durability, chunks, writers, design).
fn medians(measured: &[Measurement]) -> HashMap<(Durability, u32, usize, Design), Median> {
    let mut runs: HashMap<_, Vec<&Measurement>> = HashMap::new();
    for m in measured {
        runs.entry((m.durability, m.chunks, m.writers, m.design))
            .or_default()
            .push(m);
    }
    runs.into_iter()
        .map(|(key, runs)| {
            let of = |f: fn(&Measurement) -> f64| {
                report::median(&runs.iter().map(|m| f(m)).collect::<Vec<_>>())
            };
            let median = Median {
                rate: of(Measurement::rate),
                lost: of(|m| m.lost as f64),
                updates: of(|m| m.updates as f64),
            };
            (key, median)
        })
        .collect()
}

fn rates_table(plan: &Plan, measured: &[Measurement]) -> Table {
    let medians = medians(measured);
    let mut table = Table::new(
        "1. Coordination: chunk-status updates per second",
        &[
            "commits",
            "chunks",
            "writers",
            "design",
            "updates/s (median)",
            "lost updates",
            "vs old design",
            "vs ceiling",
        ],
    );
    for durability in [Durability::Durable, Durability::Fast] {
        for &chunks in &plan.chunk_counts {
            for &writers in &plan.writer_counts {
                let rate = |design| medians.get(&(durability, chunks, writers, design));
                let (Some(old), Some(ceiling)) = (rate(Design::Old), rate(Design::Ceiling)) else {
                    continue;
                };
                for design in Design::ALL {
                    let Some(m) = rate(design) else { continue };
                    let lost = if design == Design::Unprotected {
                        format!("{:.0} of {:.0}", m.lost, m.updates)
                    } else {
                        "0 (checked)".to_string()
                    };
                    table.row(vec![
                        durability.label().to_string(),
                        chunks.to_string(),
                        writers.to_string(),
                        design.label().to_string(),
                        report::per_second(m.rate),
                        lost,
                        report::ratio(m.rate, old.rate),
                        report::ratio(m.rate, ceiling.rate),
                    ]);
                }
            }
        }
    }
    table.note(format!(
        "One private PostgreSQL per commit mode (TempCluster::start_durable: fsync and \
         synchronous_commit on, as on Supabase; TempCluster::start: fsync, synchronous_commit \
         and full_page_writes off), one database, one schema per design, the same {} \
         connections (opened before timing) for every design, designs taking turns run after \
         run; median of {} runs.",
        plan.max_writers(),
        plan.runs
    ));
    table.note(format!(
        "A run: writers take chunk indexes from one shared counter per film and make each chunk \
         processing, then completed (2 updates per chunk); they go through films one after \
         another (waiting for each other at the end of each film) until a {} ms window closes, \
         then finish the chunk in hand. updates/s = updates made / time until the last writer \
         stopped. Films of under 100 chunks: up to {} films per run; larger: one film per run.",
        plan.window.as_millis(),
        plan.small_films
    ));
    table.note(
        "shotlist: the migrations' claim_chunk (60 s lease, 3 attempts) then complete_chunk with \
         one shot covering the chunk, sent as Db sends them (query_typed, one round trip each, \
         answers decoded into ClaimedChunk and Report). Old design: one plpgsql call per update \
         (SELECT doc FOR UPDATE, jsonb_set, count over jsonb_array_elements, UPDATE of the whole \
         document). Unprotected: SELECT doc, serde_json edit of the chunk and the count, UPDATE \
         doc, no transaction. Ceiling: UPDATE counters SET n = n + 1 WHERE id = $1, one row per \
         film. Baselines use prepared statements.",
    );
    table.note(
        "Checked after every run: every chunk taken is completed and nothing else moved; counts \
         exact; shotlist films that finished were told so by exactly one commit, with one shot \
         per chunk. Lost updates (unprotected only): status changes missing from the final \
         document (2 for a chunk left pending, 1 for one left processing): the median over the \
         runs, out of the median number of updates made.",
    );
    table
}

fn targets_table(settings: &Settings, measured: &[Measurement]) -> Table {
    let medians = medians(measured);
    let (chunks, writers) = medians
        .keys()
        .map(|&(_, chunks, writers, _)| (chunks, writers))
        .max()
        .unwrap_or((0, 0));
    let mut table = Table::new(
        format!("1. Coordination: targets at {chunks} chunks x {writers} writers"),
        &["commits", "target", "measured", "target met"],
    );
    for durability in [Durability::Durable, Durability::Fast] {
        let rate = |design| {
            medians
                .get(&(durability, chunks, writers, design))
                .map(|m| m.rate)
        };
        let (Some(ours), Some(old), Some(ceiling)) = (
            rate(Design::Shotlist),
            rate(Design::Old),
            rate(Design::Ceiling),
        ) else {
            continue;
        };
        let verdict = |yes: bool| {
            if settings.smoke {
                "n/a (smoke)".to_string()
            } else {
                report::met(yes)
            }
        };
        table.row(vec![
            durability.label().to_string(),
            "shotlist >= 10x the old design".to_string(),
            report::ratio(ours, old),
            verdict(ours >= 10.0 * old),
        ]);
        table.row(vec![
            durability.label().to_string(),
            "shotlist >= 0.50x the ceiling (50 %)".to_string(),
            report::ratio(ours, ceiling),
            verdict(ours >= 0.5 * ceiling),
        ]);
    }
    table
}
