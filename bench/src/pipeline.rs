//! Question 2: what the pipeline adds to the analyses themselves.
//!
//! The local runner (`shotlist process`'s engine: probe, register, five
//! workers that claim, analyze and commit, then finalize) runs an 18-chunk
//! film with an analyzer that only sleeps for L. Ideally the film takes
//! `ceil(18 / 5) × L`; the ratio of the wall time to that is the overhead.
//! The fan-in latency is the time from the commit of the film's last chunk
//! (the worker's `complete_chunk` returned) to the stored sheet (`finalize`
//! returned).
//!
//! The same films then go through the cloud shape on this machine
//! ([`LocalCloud`]: submit, the chunk queue on a local SQS server, the
//! process-chunk handler at most 5 at once, the finalize queue, the finalize
//! handler). There the times come from the database's clock: from the
//! submit's transaction to the sheet's, and from the last chunk's commit to
//! the sheet's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use shotlist_shared::analyzer::{shots_from_cuts, AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::cloud::local::{LocalCloud, LocalCloudOptions};
use shotlist_shared::db::Db;
use shotlist_shared::localdb::TempCluster;
use shotlist_shared::model::ChunkAnalysis;
use shotlist_shared::runner::{self, RunEvent, RunOptions};
use uuid::Uuid;

use crate::report::{self, Table};
use crate::Settings;

/// Chunks analyzed at once, as in production.
const CONCURRENCY: usize = 5;

/// The analysis time the targets are stated for.
const TARGET_SLEEP: Duration = Duration::from_secs(2);

/// An analyzer that takes exactly `sleep` per chunk and finds no cut.
struct Sleeper {
    sleep: Duration,
}

#[async_trait::async_trait]
impl Analyzer for Sleeper {
    fn name(&self) -> &'static str {
        "sleep"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        tokio::time::sleep(self.sleep).await;
        Ok(ChunkAnalysis {
            shots: shots_from_cuts(request.len(), &[]),
        })
    }
}

/// What one film's run measured.
struct Run {
    chunks: u32,
    wall: Duration,
    fan_in: Duration,
}

pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Table>> {
    // 49 minutes make 18 chunks; the smoke film makes 3.
    let (seconds, sleeps, fan_in_films) = if settings.smoke {
        (400, vec![Duration::from_millis(50)], 2)
    } else {
        (2940, vec![TARGET_SLEEP, Duration::from_millis(500)], 20)
    };
    let endpoint = local_endpoint(settings)?;
    let film = blank_film(&settings.films, seconds)?;
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await?
        .context("starting a private PostgreSQL")?;
    let url = cluster.create_database("bench_pipeline").await?;
    let db = Db::connect(&url, 2 * CONCURRENCY).await?;
    db.migrate().await?;

    let mut table = Table::new(
        "Pipeline overhead, local runner: wall time against ceil(chunks / 5) × L",
        &OVERHEAD_HEADER,
    );
    let mut fan_ins = Vec::new();
    for &sleep in &sleeps {
        let mut runs = Vec::new();
        for _ in 0..settings.runs {
            runs.push(one_film(&db, &film, sleep).await?);
        }
        let walls: Vec<f64> = runs.iter().map(|r| r.wall.as_secs_f64()).collect();
        let fan_in: Vec<f64> = runs.iter().map(|r| r.fan_in.as_secs_f64()).collect();
        table.row(overhead_row(sleep, runs[0].chunks, &walls, &fan_in));
        fan_ins.extend(fan_in);
    }
    // More films, with a short analysis, only for the fan-in's spread.
    for _ in 0..fan_in_films {
        fan_ins.push(
            one_film(&db, &film, Duration::from_millis(20))
                .await?
                .fan_in
                .as_secs_f64(),
        );
    }
    let mut latency = Table::new(
        "Fan-in: last chunk's commit to the stored sheet",
        &["films", "p50", "p99", "max", "target p50 ≤ 100 ms"],
    );
    let p50 = report::median(&fan_ins);
    latency.row(vec![
        fan_ins.len().to_string(),
        report::millis(p50),
        report::millis(report::percentile(&fan_ins, 99.0)),
        report::millis(fan_ins.iter().copied().fold(0.0, f64::max)),
        report::met(p50 <= 0.1),
    ]);
    table.note(format!(
        "The local runner (`shotlist process`'s engine) with {CONCURRENCY} workers and an analyzer \
         that sleeps L per chunk, on a private PostgreSQL (fsync off); wall time from the call to \
         the returned sheet (probe, registration, every claim and commit, finalize); median of {} \
         films per row; fan-in of those films as defined under the next table.",
        settings.runs
    ));
    latency.note(format!(
        "From the runner's report that the last chunk is done (its `complete_chunk` returned and \
         one progress read followed, about a millisecond) until `finalize` (read the chunks' \
         shots, merge, `store_sheet`) returned; the films of the table above \
         plus {fan_in_films} films with L = 20 ms. With this few samples p99 is close to the max."
    ));
    let cloud = cloud_shape(settings, &db, &url, &film, &sleeps, fan_in_films, endpoint).await?;
    drop(db);
    drop(cluster);
    Ok(vec![table, latency, cloud])
}

/// The films of [`run`] through the cloud shape on this machine.
async fn cloud_shape(
    settings: &Settings,
    db: &Db,
    url: &str,
    film: &Path,
    sleeps: &[Duration],
    fan_in_films: usize,
    endpoint: &str,
) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "Pipeline overhead, cloud shape (submit, SQS, process-chunk ×5, SQS, finalize)",
        &OVERHEAD_HEADER,
    );
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to the benchmark's database")?;
    tokio::spawn(connection);
    let root = film.parent().context("the film has no folder")?;
    let key = film
        .file_name()
        .and_then(|n| n.to_str())
        .context("the film's name is not UTF-8")?;
    // The longest analysis only, then short ones for the fan-in's spread.
    let rows = sleeps
        .iter()
        .take(1)
        .map(|&sleep| (sleep, settings.runs))
        .chain([(Duration::from_millis(20), fan_in_films)]);
    for (sleep, films) in rows {
        let options = LocalCloudOptions {
            sqs_endpoint: endpoint.to_string(),
            // Fresh queues: nothing left over from an earlier run.
            queue_prefix: format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8]),
            ..LocalCloudOptions::default()
        };
        let cloud = LocalCloud::new(db.clone(), Arc::new(Sleeper { sleep }), root, options)
            .await
            .context("setting up the cloud shape")?;
        let (mut walls, mut fan_ins, mut chunks) = (Vec::new(), Vec::new(), 0);
        for _ in 0..films {
            let report = cloud
                .run(key, None, &|_| {})
                .await
                .context("running a film through the cloud shape")?;
            ensure!(
                report.sheet.failed_chunks == 0 && report.sheet.shots.len() == 1,
                "the cloud shape's sheet has {} failed chunks and {} shots",
                report.sheet.failed_chunks,
                report.sheet.shots.len()
            );
            chunks = report.sheet.total_chunks;
            let (wall, fan_in) = database_times(&client, report.video_id).await?;
            walls.push(wall);
            fan_ins.push(fan_in);
        }
        table.row(overhead_row(sleep, chunks, &walls, &fan_ins));
    }
    table.note(format!(
        "The Lambda handlers on this machine with a local SQS server ({endpoint}): a film is \
         submitted through the API handler, each chunk message is received by a poller standing \
         in for Lambda's SQS trigger (at most 5 at once), the commit that finishes the film sends \
         the finalize message, and the finalize handler stores the sheet. Times from the \
         database's clock: wall time is the submit's commit (`videos.created_at`) to the sheet's \
         (`sheets.created_at`), the probe before it excluded; fan-in is the last chunk's commit \
         (`chunks.updated_at`) to `sheets.created_at`. A row with a short L shows the fixed costs. AWS adds its \
         own trigger latency, which no local run can measure."
    ));
    Ok(table)
}

/// The SQS server for the cloud shape's rows, checked before anything runs:
/// given, and on this machine.
fn local_endpoint(settings: &Settings) -> anyhow::Result<&str> {
    let Some(endpoint) = settings
        .sqs_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    else {
        anyhow::bail!(
            "the cloud shape's rows need an SQS-compatible server: pass --sqs-endpoint \
             (scripts/bench starts moto on 127.0.0.1 and passes it)"
        );
    };
    ensure!(
        is_loopback(endpoint),
        "--sqs-endpoint {endpoint} is not on this machine: the benchmark only talks to a \
         local SQS server (e.g. http://127.0.0.1:PORT, which scripts/bench starts)"
    );
    Ok(endpoint)
}

/// Whether `endpoint` is an http URL of this machine (127.0.0.0/8,
/// `localhost` or `[::1]`).
fn is_loopback(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    // `user@host` names host, not user: refuse any user part outright.
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// From the film's submit to its sheet, and from its last chunk's commit to
/// its sheet, in seconds by the database's clock.
async fn database_times(
    client: &tokio_postgres::Client,
    video_id: Uuid,
) -> anyhow::Result<(f64, f64)> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM s.created_at - v.created_at)::float8, \
                    extract(epoch FROM s.created_at - max(c.updated_at))::float8 \
             FROM shotlist.sheets s \
             JOIN shotlist.videos v USING (video_id) \
             JOIN shotlist.chunks c USING (video_id) \
             WHERE s.video_id = $1 \
             GROUP BY s.created_at, v.created_at",
            &[&video_id],
        )
        .await
        .with_context(|| format!("reading the times of film {video_id}"))?;
    Ok((row.get(0), row.get(1)))
}

/// The columns of both overhead tables.
const OVERHEAD_HEADER: [&str; 8] = [
    "L (analysis)",
    "chunks",
    "ideal",
    "wall (median)",
    "wall / ideal",
    "fan-in p50",
    "fan-in p99",
    "target ≤ 1.05x, p50 ≤ 100 ms",
];

/// One row of an overhead table: films of `chunks` chunks analyzed in
/// `sleep` each, their wall times and fan-in latencies in seconds. The
/// issue's targets are judged for the L it names (2 s): a shorter L shows
/// the fixed costs magnified.
fn overhead_row(sleep: Duration, chunks: u32, walls: &[f64], fan_ins: &[f64]) -> Vec<String> {
    let ideal = sleep.as_secs_f64() * f64::from(chunks.div_ceil(CONCURRENCY as u32));
    let (wall, p50) = (report::median(walls), report::median(fan_ins));
    vec![
        report::seconds(sleep.as_secs_f64()),
        chunks.to_string(),
        report::seconds(ideal),
        report::seconds(wall),
        report::ratio(wall, ideal),
        report::millis(p50),
        report::millis(report::percentile(fan_ins, 99.0)),
        if sleep >= TARGET_SLEEP {
            report::met(wall / ideal <= 1.05 && p50 <= 0.1)
        } else {
            "- (L < 2 s)".to_string()
        },
    ]
}

/// Runs one new film through the local runner with a [`Sleeper`].
async fn one_film(db: &Db, film: &Path, sleep: Duration) -> anyhow::Result<Run> {
    let events: Mutex<Vec<(Instant, RunEvent)>> = Mutex::new(Vec::new());
    let on_event = |event: RunEvent| {
        if let Ok(mut events) = events.lock() {
            events.push((Instant::now(), event));
        }
    };
    let options = RunOptions {
        concurrency: CONCURRENCY,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let sheet = runner::run_with(db, film, &options, Arc::new(Sleeper { sleep }), &on_event)
        .await
        .context("running a film through the local runner")?;
    let wall = started.elapsed();
    let events = events.into_inner().unwrap_or_default();
    let last_commit = events.iter().find_map(|(at, event)| match event {
        RunEvent::ChunkDone {
            completed,
            failed,
            total,
            ..
        } if completed + failed == *total => Some((*at, *total, *failed)),
        _ => None,
    });
    let finalized = events
        .iter()
        .find_map(|(at, event)| matches!(event, RunEvent::Finalized).then_some(*at));
    let (Some((last_commit, chunks, failed)), Some(finalized)) = (last_commit, finalized) else {
        anyhow::bail!("the run ended without reporting its last chunk and its sheet: {events:?}");
    };
    ensure!(failed == 0, "{failed} of {chunks} chunks failed");
    ensure!(
        sheet.shots.len() == 1,
        "a film without cuts came back with {} shots",
        sheet.shots.len()
    );
    Ok(Run {
        chunks,
        wall,
        fan_in: finalized.saturating_duration_since(last_commit),
    })
}

/// A black, silent film of `seconds` at 25 fps and 64×64: the runner only
/// probes it (the sleeping analyzer reads nothing), so it is made in a few
/// seconds and kept in `dir`.
fn blank_film(dir: &Path, seconds: u32) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("blank-{seconds}s.mp4"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(format!("blank-{seconds}s.{}.tmp.mp4", std::process::id()));
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("color=c=black:s=64x64:r=25:d={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&temp)
        .output()
        .context("running ffmpeg (is it installed?)")?;
    ensure!(
        output.status.success(),
        "ffmpeg could not make the blank film: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    std::fs::rename(&temp, &path).with_context(|| format!("renaming {}", temp.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_an_sqs_server_on_this_machine_is_used() {
        for local in [
            "http://127.0.0.1:5000",
            "http://127.8.9.1",
            "http://localhost:1/",
            "http://[::1]:9",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for other in [
            "",
            "https://127.0.0.1:5000",
            "http://10.0.0.1:5000",
            "http://169.254.169.254",
            "http://sqs.us-east-1.amazonaws.com",
            "http://127.0.0.1.example.com",
            "http://localhost:5000@10.1.2.3/",
        ] {
            assert!(!is_loopback(other), "{other}");
        }
    }
}
