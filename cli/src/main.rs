//! `shotlist`: turns a film into a shot list on one machine.
//!
//! `shotlist process FILM` probes the film, cuts it into overlapping chunks,
//! analyzes them a few at a time and writes `sheet.json` and `sheet.csv`, and
//! the trade's `sheet.xlsx` and `sheet.docx` (`--lang`, film details). All
//! state lives in PostgreSQL: the server named by `--database-url` (or
//! `DATABASE_URL`), or else a private server started for the run and removed
//! afterwards, also on failure and on Ctrl-C. `shotlist migrate` only brings
//! a database's schema up to date. `shotlist cloud FILM --sqs-endpoint URL`
//! does what `process` does through the cloud shape: the Lambda functions'
//! handlers with a real SQS-compatible server between them. `shotlist sweep`
//! rescues the chunks of lost workers once, as the sweeper function does.
//! `shotlist export VIDEO_ID --format F` writes a finished film's sheet as one
//! file, from the database or from the folder `process` wrote.
//!
//! Results go to stdout; progress, logs (`RUST_LOG`, default `warn`) and
//! errors go to stderr. A failure is one line, `shotlist: error: <reason>`,
//! and a non-zero exit status.

/// `println!` that never panics: a closed stdout (a pipe whose reader left,
/// as `| head` does) loses the line, not the run or its saved work.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics, for the same reason as [`out!`].
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod export;
mod progress;
mod redact;
mod serve;
mod sweep;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shotlist_shared::analyzer::setup;
use shotlist_shared::db::{Db, DbError};
use shotlist_shared::export::{DeliveryFiles, ExportError, SheetFiles};
use shotlist_shared::localdb::{LocalDbError, TempCluster};
use shotlist_shared::probe;
use shotlist_shared::runner::{self, RunError};
use shotlist_shared::sheet::{FilmDetails, Sheet, SheetStatus};
use tokio::signal::unix::{signal, Signal, SignalKind};
use uuid::Uuid;

use crate::args::{
    Cli, CloudArgs, CloudSettings, Command, MigrateArgs, ProcessArgs, ProcessSettings, SweepArgs,
};
use crate::progress::{one_line, Progress};
use crate::serve::announce::Announcement;

/// Where sheets go without `--out`: `<this>/<video id>`.
const DEFAULT_OUT_ROOT: &str = "shotlist-out";

/// Connections beyond one per chunk in flight, for progress reads and
/// finalizing.
const SPARE_CONNECTIONS: usize = 2;

/// Exit status for bad arguments (as clap uses).
const EXIT_USAGE: u8 = 2;

/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Usage(#[from] args::ArgError),
    #[error("could not start the embedded PostgreSQL: {0}")]
    LocalDb(#[from] LocalDbError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Cloud(#[from] shotlist_shared::cloud::local::LocalCloudError),
    #[error(transparent)]
    Sweep(#[from] sweep::SweepFailed),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    ExportSheet(#[from] export::ExportFailed),
    #[error("could not write the sheet: {0}")]
    Export(#[from] ExportError),
    #[error("could not create the output folder {}: {source}", path.display())]
    OutDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error(
        "shotlist serve at {0} stopped, and with it the database this run was using; \
         run the film again"
    )]
    ServeGone(String),
    #[error("could not set up the analyzer: {0}")]
    Analyzer(String),
    #[error("no chunk could be analyzed: {0}")]
    NothingAnalyzed(String),
    #[error("the embedded PostgreSQL start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("could not {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(EXIT_USAGE),
            CliError::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
            _ => ExitCode::FAILURE,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    init_tracing();
    let mut secrets = match &cli.command {
        Command::Process(ProcessArgs {
            database_url: Some(url),
            ..
        })
        | Command::Cloud(CloudArgs {
            process:
                ProcessArgs {
                    database_url: Some(url),
                    ..
                },
            ..
        })
        | Command::Migrate(MigrateArgs { database_url: url })
        | Command::Sweep(SweepArgs {
            database_url: url, ..
        })
        | Command::Export(export::ExportArgs {
            database_url: Some(url),
            ..
        })
        | Command::Serve(args::ServeArgs {
            database_url: Some(url),
            ..
        }) => redact::secrets(url),
        Command::Process(_) | Command::Cloud(_) | Command::Export(_) | Command::Serve(_) => {
            Vec::new()
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Io {
            what: "start the async runtime",
            source,
        })
        .and_then(|runtime| {
            runtime.block_on(async {
                // A running `shotlist serve` whose database a run joins, so
                // that its page shows the run; that database may have a
                // password too.
                let serving = match &cli.command {
                    Command::Process(_) | Command::Cloud(_) => serve::announce::find_live().await,
                    _ => None,
                };
                if let Some(found) = &serving {
                    secrets.extend(redact::secrets(&found.database_url));
                }
                run(cli.command, serving).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            note!("shotlist: error: {}", describe(&error, &secrets));
            error.exit_code()
        }
    }
}

/// Prints clap's help and version as clap does; any other parse error as
/// one line in shotlist's error format.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can only fail on a closed stdout; nothing to add then.
            let _ = error.print();
            ExitCode::from(error.exit_code().clamp(0, 255) as u8)
        }
        _ => {
            // clap's first paragraph is the reason; usage and tips follow.
            let text = error.to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let reason = one_line(first.strip_prefix("error: ").unwrap_or(first));
            note!("shotlist: error: {reason} (see shotlist --help)");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Logs to stderr at the level `RUST_LOG` sets, `warn` by default so a
/// progress bar stays readable.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only when a subscriber is already set, which is then used.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The error and its causes on one line, without any password.
fn describe(error: &CliError, secrets: &[String]) -> String {
    let text = shotlist_shared::error_chain(error);
    redact::redact(&one_line(&text), secrets)
}

async fn run(command: Command, serving: Option<Announcement>) -> Result<(), CliError> {
    match command {
        Command::Process(args) => process(args.validate()?, None, serving).await,
        Command::Cloud(args) => {
            let (settings, cloud) = args.validate()?;
            process(settings, Some(cloud), serving).await
        }
        Command::Migrate(args) => migrate(&args.database_url).await,
        Command::Sweep(args) => Ok(sweep::run(args.validate()?).await?),
        Command::Export(args) => Ok(export::run(args.validate()?).await?),
        Command::Serve(args) => serve::run(args.validate()).await,
    }
}

async fn migrate(url: &str) -> Result<(), CliError> {
    let db = Db::connect(url, 1).await?;
    let applied = db.migrate().await?;
    if applied.is_empty() {
        out!("{}: up to date", db.target());
    }
    for name in applied {
        out!("{}: applied {name}", db.target());
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the start of a run so
/// that neither kills the process before the private database is removed.
struct Interrupt {
    int: Signal,
    term: Signal,
}

impl Interrupt {
    fn listen() -> Result<Interrupt, CliError> {
        let listen = |kind| {
            signal(kind).map_err(|source| CliError::Io {
                what: "listen for Ctrl-C",
                source,
            })
        };
        Ok(Interrupt {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    /// Runs `work` unless a signal comes first.
    async fn guard<T, E>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, CliError>
    where
        CliError: From<E>,
    {
        tokio::select! {
            result = work => result.map_err(CliError::from),
            () = self.recv() => Err(CliError::Interrupted),
        }
    }
}

async fn process(
    mut settings: ProcessSettings,
    cloud: Option<CloudSettings>,
    serving: Option<Announcement>,
) -> Result<(), CliError> {
    let mut interrupt = Interrupt::listen()?;
    // The film's id is fixed here, so that the output folder is known, and
    // known to be writable, before any work that a late failure would waste.
    let video_id = *settings.options.video_id.get_or_insert_with(Uuid::new_v4);
    // A serve's private database goes when serve stops: a run in it watches
    // serve, so that it ends at once, saying why, rather than retrying a
    // database that is gone.
    let watched = serving
        .clone()
        .filter(|found| found.private_database && settings.database_url.is_none());
    let page = serving.and_then(|found| serve::join(found, &mut settings.database_url));
    let out = settings
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT_ROOT).join(video_id.to_string()));
    let made_out = !out.exists();
    std::fs::create_dir_all(&out).map_err(|source| CliError::OutDir {
        path: out.clone(),
        source,
    })?;
    check_out_files(&out)?;
    if let Some(base) = &page {
        note!("progress: {base}/videos/{video_id}/progress");
    }
    let result = match &watched {
        Some(found) => tokio::select! {
            result = analyze(&settings, cloud.as_ref(), &mut interrupt) => result,
            () = serve::announce::until_gone(found) => Err(CliError::ServeGone(found.url.clone())),
        },
        None => analyze(&settings, cloud.as_ref(), &mut interrupt).await,
    };
    let (sheet, details) = match result {
        Ok(done) => done,
        Err(error) => {
            if made_out {
                // Only removes the folder while it is still empty.
                let _ = std::fs::remove_dir(&out);
            }
            return Err(error);
        }
    };
    let files = shotlist_shared::export::write_sheet(&out, &sheet)?;
    let delivery = shotlist_shared::export::write_delivery(&out, &sheet, &details, settings.lang)?;
    report(&sheet, &files, &delivery);
    if sheet.completed_chunks == 0 && sheet.total_chunks > 0 {
        // A sheet of gaps only is written (it says why each chunk failed),
        // but the run did not do its job.
        let reason = sheet
            .gaps
            .first()
            .and_then(|gap| gap.reasons.first())
            .cloned()
            .unwrap_or_default();
        return Err(CliError::NothingAnalyzed(reason));
    }
    Ok(())
}

/// Refuses, before any work, an output folder where the run could not write
/// its files: one of their names is taken by a link, a FIFO, a folder or
/// the like (which the atomic writes will not replace). Every such name is
/// said at once; found only after the analysis, the analysis would be lost
/// with a private database.
fn check_out_files(out: &std::path::Path) -> Result<(), CliError> {
    use shotlist_shared::export::{
        not_a_regular_file, CSV_FILE, DETAILS_FILE, DOCX_FILE, JSON_FILE, XLSX_FILE,
    };
    let blocked: Vec<String> = [JSON_FILE, CSV_FILE, XLSX_FILE, DOCX_FILE, DETAILS_FILE]
        .into_iter()
        .filter_map(|name| match not_a_regular_file(&out.join(name)) {
            Ok(None) => None,
            Ok(Some(kind)) => Some(format!("{name} is {kind}")),
            Err(error) => Some(format!("{name} cannot be read ({error})")),
        })
        .collect();
    if blocked.is_empty() {
        return Ok(());
    }
    Err(args::ArgError(format!(
        "--out {}: {}; the run writes regular files there",
        out.display(),
        blocked.join(", ")
    ))
    .into())
}

/// Runs the job against the database the settings name, or against a
/// private one started for it and removed afterwards: the sheet, and the
/// film's details as stored at the end.
async fn analyze(
    settings: &ProcessSettings,
    cloud: Option<&CloudSettings>,
    interrupt: &mut Interrupt,
) -> Result<(Sheet, FilmDetails), CliError> {
    let progress = Progress::new(std::io::stderr().is_terminal());
    let (db, cluster, media) = match &settings.database_url {
        Some(url) => (connect(url, settings, interrupt).await?, None, None),
        None => {
            progress.stage("starting the embedded PostgreSQL");
            // The local run probes the film while the database starts: each
            // takes a noticeable part of a second.
            let probing = cloud
                .is_none()
                .then(|| Probing::spawn(settings.film.clone()));
            // An early return drops `probing`, which aborts the probe.
            let cluster = start_cluster(interrupt).await?;
            let media = match probing {
                Some(probing) => match probing.finish(interrupt).await {
                    Ok(media) => Some(media),
                    Err(error) => {
                        stop_cluster(cluster).await;
                        return Err(error);
                    }
                },
                None => None,
            };
            match connect(&cluster.url(), settings, interrupt).await {
                Ok(db) => (db, Some(cluster), media),
                Err(error) => {
                    stop_cluster(cluster).await;
                    return Err(error);
                }
            }
        }
    };
    let result = match setup::build(&settings.analyzer, &|name| std::env::var(name).ok(), &db) {
        Err(reason) => Err(CliError::Analyzer(reason)),
        Ok(built) => {
            if let Some(budget) = built.budget {
                progress.stage(&format!(
                    "{}: about {} tokens per chunk at most ({} of them input)",
                    settings.analyzer.kind, budget.chunk_tokens, budget.chunk_input_tokens
                ));
            }
            match (cloud, media) {
                (None, Some(media)) => {
                    interrupt
                        .guard(runner::run_probed(
                            &db,
                            &settings.film,
                            &media,
                            &settings.options,
                            built.analyzer,
                            &|event| progress.on_event(event),
                        ))
                        .await
                }
                (None, None) => {
                    progress.stage("probing the film");
                    interrupt
                        .guard(runner::run_with(
                            &db,
                            &settings.film,
                            &settings.options,
                            built.analyzer,
                            &|event| progress.on_event(event),
                        ))
                        .await
                }
                (Some(cloud), _) => {
                    progress.stage("probing the film");
                    interrupt
                        .guard(through_the_cloud(
                            &db,
                            settings,
                            cloud,
                            built.analyzer,
                            &progress,
                        ))
                        .await
                }
            }
        }
    };
    let result = match result {
        Ok(sheet) => {
            let details = stored_details(&db, sheet.video_id, &settings.options.details).await;
            Ok((sheet, details))
        }
        Err(error) => Err(error),
    };
    progress.finish();
    drop(db);
    if let Some(cluster) = cluster {
        stop_cluster(cluster).await;
    }
    result
}

/// The film's details as stored: this run's, or an earlier run's when this
/// one gave none (a resumed run keeps them). A failed read costs only the
/// earlier details, not the finished sheet: this run's are used then.
async fn stored_details(db: &Db, video_id: Uuid, given: &FilmDetails) -> FilmDetails {
    match db.video_details(video_id).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%video_id, %error, "could not read the film's stored details");
            given.clone()
        }
    }
}

/// The film through the local cloud shape: queues on the SQS endpoint, the
/// functions' handlers, the local analyzer.
async fn through_the_cloud(
    db: &Db,
    settings: &ProcessSettings,
    cloud: &CloudSettings,
    analyzer: std::sync::Arc<dyn shotlist_shared::analyzer::Analyzer>,
    progress: &Progress,
) -> Result<Sheet, CliError> {
    use shotlist_shared::cloud::local::{LocalCloud, LocalCloudOptions};
    use shotlist_shared::runner::RunEvent;

    let film = settings
        .film
        .canonicalize()
        .map_err(|source| CliError::Io {
            what: "resolve the film's path",
            source,
        })?;
    let (Some(root), Some(key)) = (film.parent(), film.file_name()) else {
        return Err(CliError::Io {
            what: "resolve the film's folder",
            source: std::io::Error::other(format!("{} has no folder", film.display())),
        });
    };
    let options = LocalCloudOptions {
        sqs_endpoint: cloud.sqs_endpoint.clone(),
        queue_prefix: cloud.queue_prefix.clone(),
        maximum_concurrency: settings.options.concurrency,
        plan: settings.options.plan,
        worker: settings.options.worker,
        details: settings.options.details.clone(),
        ..LocalCloudOptions::default()
    };
    let local = LocalCloud::new(db.clone(), analyzer, root, options).await?;
    let last_done = std::sync::atomic::AtomicU32::new(u32::MAX);
    let on_progress = |value: &serde_json::Value| {
        let count = |key: &str| value[key].as_u64().unwrap_or(0) as u32;
        let done = count("completedChunks") + count("failedChunks");
        let video_id = value["videoId"].as_str().and_then(|s| s.parse().ok());
        match (video_id, value.get("created")) {
            (Some(video_id), Some(_)) => progress.on_event(RunEvent::Registered {
                video_id,
                total_chunks: count("totalChunks"),
            }),
            // Only when a chunk ended since the last report.
            _ if done == 0
                || last_done.swap(done, std::sync::atomic::Ordering::Relaxed) == done => {}
            _ => progress.on_event(RunEvent::ChunkDone {
                index: 0,
                completed: count("completedChunks"),
                failed: count("failedChunks"),
                total: count("totalChunks"),
            }),
        }
    };
    let report = local
        .run(
            &key.to_string_lossy(),
            settings.options.video_id,
            &on_progress,
        )
        .await?;
    progress.on_event(RunEvent::Finalized);
    tracing::info!(
        chunk_messages = report.chunk_stats.messages_received(),
        max_in_flight = report.chunk_stats.max_in_flight(),
        finalize_messages = report.finalize_stats.messages_received(),
        "local cloud run done"
    );
    Ok(report.sheet)
}

/// Connects to the database and applies missing migrations.
async fn connect(
    url: &str,
    settings: &ProcessSettings,
    interrupt: &mut Interrupt,
) -> Result<Db, CliError> {
    let connections = settings.options.concurrency + SPARE_CONNECTIONS;
    let db = interrupt.guard(Db::connect(url, connections)).await?;
    let applied = interrupt.guard(db.migrate()).await?;
    tracing::debug!(?applied, "migrations applied");
    Ok(db)
}

/// The film's probe, run in a task of its own while the private PostgreSQL
/// starts. Dropping it aborts the probe (and kills its ffprobe), so that an
/// early return leaves nothing running behind the run.
struct Probing(tokio::task::JoinHandle<Result<probe::MediaInfo, probe::ProbeError>>);

impl Probing {
    fn spawn(film: PathBuf) -> Probing {
        Probing(tokio::spawn(async move { probe::probe(&film).await }))
    }

    /// The probe's result, unless a signal comes first: a film that never
    /// gives ffprobe any data (a FIFO) must not hold off Ctrl-C until the
    /// probe times out.
    async fn finish(mut self, interrupt: &mut Interrupt) -> Result<probe::MediaInfo, CliError> {
        let probed = interrupt.guard(&mut self.0).await?;
        probed.map_err(|error| CliError::Run(error.into()))
    }
}

impl Drop for Probing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the private PostgreSQL off the async threads. A signal during the
/// start waits for it to finish, then removes it.
async fn start_cluster(interrupt: &mut Interrupt) -> Result<TempCluster, CliError> {
    let mut start = tokio::task::spawn_blocking(TempCluster::start);
    tokio::select! {
        started = &mut start => Ok(started??),
        () = interrupt.recv() => {
            if let Ok(Ok(cluster)) = start.await {
                stop_cluster(cluster).await;
            }
            Err(CliError::Interrupted)
        }
    }
}

/// Stops the private PostgreSQL and removes its folder (a bounded, blocking
/// wait, so off the async threads).
async fn stop_cluster(cluster: TempCluster) {
    if let Err(error) = tokio::task::spawn_blocking(move || drop(cluster)).await {
        tracing::warn!(%error, "stopping the embedded PostgreSQL failed");
    }
}

/// Prints where the sheet is and a one-line summary on stdout.
fn report(sheet: &Sheet, files: &SheetFiles, delivery: &DeliveryFiles) {
    out!("{}", files.json.display());
    out!("{}", files.csv.display());
    out!("{}", delivery.xlsx.display());
    out!("{}", delivery.docx.display());
    if let Some(details) = &delivery.details {
        out!("{}", details.display());
    }
    let shots = match sheet.shots.len() {
        1 => "1 shot".to_string(),
        n => format!("{n} shots"),
    };
    out!(
        "{shots}, {}/{} chunks completed, {} failed",
        sheet.completed_chunks,
        sheet.total_chunks,
        sheet.failed_chunks
    );
    if sheet.status == SheetStatus::Partial {
        note!(
            "shotlist: warning: the sheet is partial: {} part(s) of the film were not analyzed \
             (see \"gaps\" in sheet.json)",
            sheet.gaps.len()
        );
    }
}
