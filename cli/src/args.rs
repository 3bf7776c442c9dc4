//! What `shotlist` accepts on its command line, and the checks made on it
//! before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shotlist_shared::analyzer::local::LocalAnalyzer;
use shotlist_shared::analyzer::setup::{self, AnalyzerKind, AnalyzerSetup};
use shotlist_shared::export::Lang;
use shotlist_shared::plan::PlanParams;
use shotlist_shared::runner::RunOptions;
use shotlist_shared::sheet::FilmDetails;
use shotlist_shared::sweep::SweepOptions;
use shotlist_shared::worker::{self, WorkerConfig};
use uuid::Uuid;

/// The most chunks `--concurrency` may put in flight.
pub const MAX_CONCURRENCY: usize = 64;

/// Turns a long video into a shot list: every shot with its start and end
/// timecode, type, description and dialogue.
#[derive(Debug, Parser)]
#[command(name = "shotlist", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Analyze FILM and write its sheet.json, sheet.csv, sheet.xlsx and sheet.docx.
    Process(ProcessArgs),
    /// Run FILM through the cloud shape on this machine: submit, an
    /// SQS-compatible server (e.g. moto on 127.0.0.1), process-chunk at most
    /// --concurrency at once, finalize; then write the sheet like `process`.
    Cloud(CloudArgs),
    /// Apply the database migrations that are missing, then exit.
    Migrate(MigrateArgs),
    /// Rescue stuck chunks once: a chunk whose worker was lost goes back to
    /// pending (or fails after --max-attempts), and finished films without a
    /// sheet are finalized; with --sqs-endpoint the chunk and finalize
    /// messages are sent as the sweeper function does.
    Sweep(SweepArgs),
    /// Write a finished film's sheet as one file: json, csv, xlsx or docx,
    /// the last three in the trade's layout (--lang en|ru), read from the
    /// database or from the folder `process` wrote.
    Export(crate::export::ExportArgs),
    /// Serve the progress page and the sheets of a database's films on
    /// 127.0.0.1 until Ctrl-C; while it runs, `process` uses its database
    /// and prints each film's page.
    Serve(ServeArgs),
}

/// `shotlist serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// PostgreSQL whose films to serve; without it a private, temporary
    /// PostgreSQL is started and removed when serve stops.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// The port on 127.0.0.1 to listen on; 0 takes any free port.
    #[arg(long, value_name = "PORT", default_value_t = crate::serve::DEFAULT_PORT)]
    pub port: u16,
}

impl ServeArgs {
    /// The settings; an empty DATABASE_URL counts as unset, as for `process`.
    pub fn validate(self) -> crate::serve::ServeSettings {
        crate::serve::ServeSettings {
            database_url: self.database_url.filter(|url| !url.trim().is_empty()),
            port: self.port,
        }
    }
}

/// `shotlist cloud`.
#[derive(Debug, Args)]
pub struct CloudArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The SQS-compatible endpoint (scripts/moto start prints one).
    #[arg(
        long,
        env = "SHOTLIST_SQS_ENDPOINT",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub sqs_endpoint: String,
    /// Queue names start with this: <PREFIX>-chunks, <PREFIX>-finalize and
    /// their -dlq queues; they are created when missing.
    #[arg(long, default_value = "shotlist", value_name = "PREFIX")]
    pub queue_prefix: String,
}

/// A `cloud` request whose arguments passed every check.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    pub sqs_endpoint: String,
    pub queue_prefix: String,
}

impl CloudArgs {
    /// Checks the process arguments and the cloud ones.
    pub fn validate(self) -> Result<(ProcessSettings, CloudSettings), ArgError> {
        let cloud = CloudSettings::check(&self.sqs_endpoint, &self.queue_prefix)?;
        Ok((self.process.validate()?, cloud))
    }
}

impl CloudSettings {
    /// Checks `--sqs-endpoint` and `--queue-prefix`.
    fn check(sqs_endpoint: &str, queue_prefix: &str) -> Result<CloudSettings, ArgError> {
        let endpoint = sqs_endpoint.trim().to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ArgError(format!(
                "--sqs-endpoint must be an http(s) URL, got {endpoint:?}"
            )));
        }
        let prefix = queue_prefix.trim().to_string();
        let valid = !prefix.is_empty()
            && prefix.len() <= 60
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ArgError(format!(
                "--queue-prefix must be 1 to 60 letters, digits, '-' or '_', got {prefix:?}"
            )));
        }
        Ok(CloudSettings {
            sqs_endpoint: endpoint,
            queue_prefix: prefix,
        })
    }
}

/// `shotlist process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// The video file to analyze.
    #[arg(value_name = "FILM")]
    pub film: PathBuf,
    /// Folder for the sheet's files [default: ./shotlist-out/<video id>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// PostgreSQL to keep the state in; without it a private, temporary
    /// PostgreSQL is started and removed afterwards.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Chunks analyzed at once (1 to 64).
    #[arg(
        long,
        value_name = "N",
        default_value_t = RunOptions::default().concurrency,
        allow_negative_numbers = true
    )]
    pub concurrency: usize,
    /// Length of one chunk in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = PlanParams::default().chunk_seconds,
        allow_negative_numbers = true
    )]
    pub chunk_seconds: f64,
    /// Seconds each chunk shares with the next; smaller than --chunk-seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = PlanParams::default().overlap_seconds,
        allow_negative_numbers = true
    )]
    pub overlap_seconds: f64,
    /// The film's id; an id of an earlier run resumes it [default: a new one].
    #[arg(long, value_name = "UUID")]
    pub video_id: Option<Uuid>,
    /// ffmpeg's scene-change score above which a frame starts a new shot
    /// (more than 0, at most 1).
    #[arg(
        long,
        value_name = "SCORE",
        default_value_t = RunOptions::default().scene_threshold,
        allow_negative_numbers = true
    )]
    pub scene_threshold: f64,
    /// Who describes the shots: local (ffmpeg only, no network), gemini
    /// (Google's Gemini API, keys in GEMINI_API_KEYS) or replicate
    /// (google/gemini-3-pro on Replicate, tokens in REPLICATE_API_TOKENS).
    #[arg(
        long,
        env = "SHOTLIST_ANALYZER",
        value_name = "local|gemini|replicate",
        default_value = "local",
        value_parser = analyzer_kind
    )]
    pub analyzer: AnalyzerKind,
    /// The most one chunk's analysis may take, retries included (10 to 900).
    // Text, checked in `validate`: clap's own number parsing would answer
    // "-5" or "1.5" with "invalid digit found in string".
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "300",
        allow_negative_numbers = true
    )]
    pub chunk_timeout: String,
    /// How long the chunk of a worker that died waits before another worker
    /// may take it (3 to 3600); a live worker renews its lease every third
    /// of this, however long its analysis takes.
    // Text, checked in `validate`, as --chunk-timeout.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = WorkerConfig::default().lease.as_secs().to_string(),
        allow_negative_numbers = true
    )]
    pub lease_seconds: String,
    #[command(flatten)]
    pub details: DetailsArgs,
    /// The language of sheet.xlsx's and sheet.docx's headers and shot
    /// types: en or ru.
    #[arg(long, value_name = "en|ru", default_value = "en")]
    pub lang: String,
}

/// The film details a delivery sheet shows above its table, as flags of
/// `process`, `cloud` and `export`.
#[derive(Debug, Clone, Default, Args)]
pub struct DetailsArgs {
    /// The film's title, for the details above the table of sheet.xlsx and
    /// sheet.docx.
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// The year of production, as it should be written ("1979").
    #[arg(long, value_name = "TEXT")]
    pub year: Option<String>,
    /// The film's director.
    #[arg(long, value_name = "TEXT")]
    pub director: Option<String>,
    /// The production company or studio.
    #[arg(long, value_name = "TEXT")]
    pub studio: Option<String>,
    /// The country of production.
    #[arg(long, value_name = "TEXT")]
    pub country: Option<String>,
}

impl DetailsArgs {
    /// The details, trimmed; a value that is too long or not one line is
    /// refused naming its flag.
    pub fn checked(self) -> Result<FilmDetails, ArgError> {
        FilmDetails {
            title: self.title,
            year: self.year,
            director: self.director,
            studio: self.studio,
            country: self.country,
        }
        .checked()
        .map_err(|(field, message)| ArgError(format!("--{field}: {message}")))
    }
}

/// Reads `--lang`.
pub fn parse_lang(code: &str) -> Result<Lang, ArgError> {
    code.parse::<Lang>()
        .map_err(|reason| ArgError(format!("--lang: {reason}")))
}

/// Reads `--analyzer`, whose value may come from `SHOTLIST_ANALYZER`: the
/// error names both, since clap names only the flag.
fn analyzer_kind(name: &str) -> Result<AnalyzerKind, String> {
    name.parse::<AnalyzerKind>()
        .map_err(|e| format!("{e} (from --analyzer or SHOTLIST_ANALYZER)"))
}

/// `shotlist migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL to migrate.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
}

/// `shotlist sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The PostgreSQL to sweep.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
    /// An SQS-compatible endpoint whose queues <PREFIX>-chunks and
    /// <PREFIX>-finalize get the messages; without it only the database is
    /// fixed, and finished films are finalized here.
    #[arg(long, value_name = "URL")]
    pub sqs_endpoint: Option<String>,
    /// The queues' names start with this (with --sqs-endpoint).
    #[arg(
        long,
        default_value = "shotlist",
        value_name = "PREFIX",
        requires = "sqs_endpoint"
    )]
    pub queue_prefix: String,
    /// Attempts after which a chunk whose worker was lost fails for good
    /// (1 to 100); the workers' own limit.
    #[arg(long, value_name = "N", default_value_t = SweepOptions::default().max_attempts)]
    pub max_attempts: u32,
    /// Seconds a pending chunk, or a finished film without a sheet, waits
    /// before its message is sent again (0 to 31536000).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = SweepOptions::default().stale.as_secs_f64(),
        allow_negative_numbers = true
    )]
    pub stale_seconds: f64,
}

/// A `sweep` request whose arguments passed every check.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub database_url: String,
    /// Where to send the messages; `None`: the database only.
    pub queues: Option<CloudSettings>,
    pub options: SweepOptions,
}

impl SweepArgs {
    /// Checks every argument; the first one that is wrong is named.
    pub fn validate(self) -> Result<SweepSettings, ArgError> {
        if self.database_url.trim().is_empty() {
            return Err(ArgError(
                "--database-url (or DATABASE_URL) must name the PostgreSQL to sweep".into(),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ArgError(format!(
                "--max-attempts must be 1 to 100, got {}",
                self.max_attempts
            )));
        }
        // The database's own bound, checked here so that it is named.
        let stale = self.stale_seconds;
        if !(stale.is_finite() && (0.0..=31_536_000.0).contains(&stale)) {
            return Err(ArgError(format!(
                "--stale-seconds must be 0 to 31536000, got {stale}"
            )));
        }
        let queues = match &self.sqs_endpoint {
            Some(endpoint) => Some(CloudSettings::check(endpoint, &self.queue_prefix)?),
            None => None,
        };
        Ok(SweepSettings {
            database_url: self.database_url,
            queues,
            options: SweepOptions {
                max_attempts: self.max_attempts,
                stale: std::time::Duration::from_secs_f64(self.stale_seconds),
                ..SweepOptions::default()
            },
        })
    }
}

/// A `process` request whose arguments passed every check.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub film: PathBuf,
    pub out: Option<PathBuf>,
    /// `None` means the embedded default database.
    pub database_url: Option<String>,
    pub options: RunOptions,
    pub analyzer: AnalyzerSetup,
    /// The language of sheet.xlsx and sheet.docx.
    pub lang: Lang,
}

/// An argument that failed its check, with a message naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

impl ProcessArgs {
    /// Checks every argument; the first one that is wrong is named in the
    /// error. Reads only the film's and the output folder's metadata.
    pub fn validate(self) -> Result<ProcessSettings, ArgError> {
        check_concurrency(self.concurrency)?;
        check_seconds("--chunk-seconds", self.chunk_seconds)?;
        check_seconds("--overlap-seconds", self.overlap_seconds)?;
        if self.overlap_seconds >= self.chunk_seconds {
            return Err(ArgError(format!(
                "--overlap-seconds ({}) must be smaller than --chunk-seconds ({})",
                self.overlap_seconds, self.chunk_seconds
            )));
        }
        check_threshold(self.scene_threshold)?;
        let chunk_timeout =
            setup::parse_chunk_timeout("--chunk-timeout", &self.chunk_timeout).map_err(ArgError)?;
        let lease =
            worker::parse_lease("--lease-seconds", &self.lease_seconds).map_err(ArgError)?;
        let mut analyzer = AnalyzerSetup {
            kind: self.analyzer,
            scene_threshold: self.scene_threshold,
            chunk_seconds: self.chunk_seconds,
            // The chunks analyzed at once share the cores.
            decoder_threads: Some(LocalAnalyzer::threads_sharing_cores(self.concurrency)),
            ..AnalyzerSetup::default()
        };
        analyzer.model.chunk_timeout = chunk_timeout;
        setup::check(&analyzer, &|name| std::env::var(name).ok()).map_err(ArgError)?;
        let details = self.details.checked()?;
        let lang = parse_lang(&self.lang)?;
        check_film(&self.film)?;
        if let Some(out) = &self.out {
            check_out(out)?;
        }
        let options = RunOptions {
            video_id: self.video_id,
            concurrency: self.concurrency,
            plan: PlanParams {
                chunk_seconds: self.chunk_seconds,
                overlap_seconds: self.overlap_seconds,
            },
            scene_threshold: self.scene_threshold,
            worker: WorkerConfig {
                chunk_timeout,
                lease,
                ..WorkerConfig::default()
            },
            details,
        };
        Ok(ProcessSettings {
            film: self.film,
            out: self.out,
            // An empty DATABASE_URL counts as unset.
            database_url: self.database_url.filter(|url| !url.trim().is_empty()),
            options,
            analyzer,
            lang,
        })
    }
}

fn check_concurrency(concurrency: usize) -> Result<(), ArgError> {
    if (1..=MAX_CONCURRENCY).contains(&concurrency) {
        Ok(())
    } else {
        Err(ArgError(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
        )))
    }
}

fn check_seconds(flag: &str, seconds: f64) -> Result<(), ArgError> {
    if seconds.is_finite() && seconds > 0.0 {
        Ok(())
    } else {
        Err(ArgError(format!(
            "{flag} must be a positive number of seconds, got {seconds}"
        )))
    }
}

fn check_threshold(threshold: f64) -> Result<(), ArgError> {
    if threshold > 0.0 && threshold <= 1.0 {
        Ok(())
    } else {
        Err(ArgError(format!(
            "--scene-threshold must be more than 0 and at most 1, got {threshold}"
        )))
    }
}

fn check_film(film: &std::path::Path) -> Result<(), ArgError> {
    let shown = film.display();
    let metadata = match std::fs::metadata(film) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArgError(format!("FILM {shown} does not exist")));
        }
        Err(e) => return Err(ArgError(format!("cannot read FILM {shown}: {e}"))),
    };
    if metadata.is_dir() {
        return Err(ArgError(format!(
            "FILM {shown} is a folder, not a video file"
        )));
    }
    // A pipe or a device has no length to read a film from; opening a pipe
    // would even wait for a writer.
    if !metadata.is_file() {
        return Err(ArgError(format!("FILM {shown} is not a regular file")));
    }
    if metadata.len() == 0 {
        return Err(ArgError(format!("FILM {shown} is empty (0 bytes)")));
    }
    std::fs::File::open(film)
        .map(drop)
        .map_err(|e| ArgError(format!("cannot read FILM {shown}: {e}")))
}

fn check_out(out: &std::path::Path) -> Result<(), ArgError> {
    match std::fs::metadata(out) {
        Ok(metadata) if !metadata.is_dir() => Err(ArgError(format!(
            "--out {} is a file, not a folder",
            out.display()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that makes one argument wrong.
    type Change = fn(&mut ProcessArgs);

    /// What --chunk-timeout and --lease-seconds say of any bad value.
    const WHOLE_SECONDS: &str = "must be a whole number of seconds from";

    fn args(film: PathBuf) -> ProcessArgs {
        ProcessArgs {
            film,
            out: None,
            database_url: None,
            concurrency: 5,
            chunk_seconds: 180.0,
            overlap_seconds: 15.0,
            video_id: None,
            scene_threshold: 0.3,
            analyzer: AnalyzerKind::Local,
            chunk_timeout: "300".into(),
            lease_seconds: "60".into(),
            details: DetailsArgs::default(),
            lang: "en".into(),
        }
    }

    fn film() -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, b"not empty").expect("write");
        file
    }

    #[test]
    fn good_arguments_become_run_options() {
        let film = film();
        let mut given = args(film.path().to_path_buf());
        given.database_url = Some("  ".to_string());
        let settings = given.validate().expect("valid");
        assert_eq!(settings.options.concurrency, 5);
        assert_eq!(settings.options.plan.overlap_seconds, 15.0);
        assert_eq!(settings.analyzer.kind, AnalyzerKind::Local);
        assert_eq!(settings.options.worker.lease.as_secs(), 60);
        assert_eq!(
            settings.database_url, None,
            "a blank url means the embedded default"
        );
    }

    #[test]
    fn each_bad_argument_is_named() {
        let film = film();
        let path = film.path().to_path_buf();
        let cases: [(Change, &str); 19] = [
            (|a| a.concurrency = 0, "--concurrency"),
            (|a| a.concurrency = 65, "--concurrency"),
            (|a| a.chunk_seconds = f64::NAN, "--chunk-seconds"),
            (|a| a.overlap_seconds = -1.0, "--overlap-seconds"),
            (|a| a.overlap_seconds = 180.0, "--overlap-seconds (180)"),
            (|a| a.scene_threshold = 0.0, "--scene-threshold"),
            (|a| a.chunk_timeout = "5".into(), "--chunk-timeout"),
            (|a| a.chunk_timeout = "-5".into(), WHOLE_SECONDS),
            (|a| a.chunk_timeout = "1.5".into(), WHOLE_SECONDS),
            (|a| a.lease_seconds = "2".into(), "--lease-seconds"),
            (|a| a.lease_seconds = "3601".into(), "--lease-seconds"),
            (|a| a.lease_seconds = "-1".into(), WHOLE_SECONDS),
            (|a| a.lease_seconds = "1.5".into(), WHOLE_SECONDS),
            (|a| a.lease_seconds = "abc".into(), WHOLE_SECONDS),
            (|a| a.lease_seconds = "".into(), WHOLE_SECONDS),
            (
                |a| a.lease_seconds = "99999999999999999999".into(),
                WHOLE_SECONDS,
            ),
            (
                |a| {
                    a.analyzer = AnalyzerKind::Gemini;
                    a.chunk_seconds = 3000.0;
                },
                "more video than one request",
            ),
            (|a| a.film = "/no/such/film.mp4".into(), "does not exist"),
            (|a| a.film = std::env::temp_dir(), "is a folder"),
        ];
        for (change, expected) in cases {
            let mut given = args(path.clone());
            change(&mut given);
            let error = given.validate().expect_err("invalid").to_string();
            assert!(
                error.contains(expected),
                "{error:?} should name {expected:?}"
            );
            assert!(!error.contains('\n'), "{error:?} is one line");
        }
    }

    #[test]
    fn any_bad_lease_or_chunk_timeout_on_the_command_line_gets_the_same_clear_message() {
        for (flag, value) in [
            ("--lease-seconds", "-1"),
            ("--lease-seconds", "1.5"),
            ("--lease-seconds", "abc"),
            ("--lease-seconds", "2"),
            ("--chunk-timeout", "-5"),
            ("--chunk-timeout", "7e2"),
        ] {
            let cli = Cli::try_parse_from(["shotlist", "process", "film.mp4", flag, value])
                .unwrap_or_else(|e| panic!("{flag} {value}: clap refused it: {e}"));
            let Command::Process(given) = cli.command else {
                panic!("{flag} {value}: not a process command");
            };
            let error = given.validate().expect_err("invalid").to_string();
            assert!(
                error.starts_with(&format!("{flag} {WHOLE_SECONDS}"))
                    && error.ends_with(&format!("got {value:?}")),
                "{flag} {value}: {error:?}"
            );
        }
    }

    #[test]
    fn details_and_lang_flags_become_run_options_or_are_refused_naming_the_flag() {
        let film = film();
        let cli = Cli::try_parse_from([
            "shotlist",
            "process",
            &film.path().to_string_lossy(),
            "--title",
            "  Сталкер ",
            "--country",
            "СССР",
            "--lang",
            "RU",
        ])
        .expect("parsed");
        let Command::Process(given) = cli.command else {
            panic!("not a process command");
        };
        let settings = given.validate().expect("valid");
        assert_eq!(settings.lang, Lang::Ru);
        assert_eq!(settings.options.details.title.as_deref(), Some("Сталкер"));
        assert_eq!(settings.options.details.country.as_deref(), Some("СССР"));
        assert_eq!(settings.options.details.year, None);

        let cases: [(Change, &str); 4] = [
            (|a| a.details.title = Some("two\nlines".into()), "--title"),
            (|a| a.details.director = Some("x".repeat(301)), "--director"),
            (|a| a.details.studio = Some("tab\there".into()), "--studio"),
            (|a| a.lang = "de".into(), "--lang"),
        ];
        for (change, flag) in cases {
            let mut given = args(film.path().to_path_buf());
            change(&mut given);
            let error = given.validate().expect_err("invalid").to_string();
            assert!(error.starts_with(flag), "{error:?} should name {flag}");
            assert!(!error.contains('\n'), "{error:?} is one line");
        }
    }

    #[test]
    fn empty_film_is_refused() {
        let empty = tempfile::NamedTempFile::new().expect("temp file");
        let error = args(empty.path().to_path_buf())
            .validate()
            .expect_err("empty");
        assert!(error.0.contains("is empty"), "{error}");
    }

    #[test]
    fn out_that_is_a_file_is_refused() {
        let film = film();
        let mut given = args(film.path().to_path_buf());
        given.out = Some(film.path().to_path_buf());
        let error = given.validate().expect_err("file as out");
        assert!(error.0.starts_with("--out"), "{error}");
    }
}
