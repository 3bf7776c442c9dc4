//! shotlist's benchmarks: one table per question, medians of several runs,
//! ratios against the baselines measured in the same run.
//!
//! 1. coordination: chunk-status updates per second, shotlist's SQL
//!    functions against the design it replaces, an unprotected
//!    read-modify-write and a single-row `UPDATE`;
//! 2. pipeline: wall time of a film against the ideal, and the fan-in
//!    latency from the last chunk's commit to the stored sheet;
//! 3. analysis: `shotlist process` on a 49-minute film against one bare
//!    ffmpeg pass and PySceneDetect, with the cuts each one found;
//! 4. lambda: the function binaries' size, start time and peak memory.
//!
//! `scripts/bench` builds everything in release mode and runs this; see
//! BENCHMARKS.md. `--smoke` runs every question on tiny inputs in seconds:
//! CI runs it so the benchmarks keep working, without judging the numbers.

mod analysis;
mod coordination;
mod lambda;
mod pipeline;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use report::Table;

/// Runs shotlist's benchmarks and prints one table per question.
#[derive(Debug, Parser)]
#[command(name = "shotlist-bench", version)]
struct Args {
    /// Tiny inputs and one run of each: checks that every benchmark still
    /// works, in seconds. The numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Runs of each measurement; the tables show their median [default:
    /// 5, or 1 with --smoke].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,
    /// Only these questions (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<Question>,
    /// PySceneDetect's `scenedetect` program, which the analysis benchmark
    /// needs, also with --smoke (scripts/bench installs it).
    #[arg(long, env = "SHOTLIST_BENCH_SCENEDETECT")]
    scenedetect: Option<PathBuf>,
    /// Where generated films are kept between runs [default: bench-films in
    /// Cargo's target folder].
    #[arg(long)]
    films: Option<PathBuf>,
    /// An SQS-compatible server for the cloud shape's pipeline rows, e.g.
    /// moto on 127.0.0.1 (scripts/bench starts one).
    #[arg(long, env = "SHOTLIST_SQS_ENDPOINT")]
    sqs_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Question {
    Coordination,
    Pipeline,
    Analysis,
    Lambda,
}

/// What every benchmark is given.
#[derive(Debug, Clone)]
pub struct Settings {
    pub smoke: bool,
    /// Runs of each measurement.
    pub runs: usize,
    /// The folder of this program, where the release (or, for a smoke
    /// run, debug) binaries of the workspace are.
    pub bin_dir: PathBuf,
    /// Where generated films are kept.
    pub films: PathBuf,
    pub scenedetect: Option<PathBuf>,
    /// The SQS-compatible server the cloud shape's rows use.
    pub sqs_endpoint: Option<String>,
}

impl Settings {
    /// The workspace binary `name`, beside this program.
    pub fn binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build the workspace's binaries first \
             (cargo build --release --workspace --bins; scripts/bench does)",
            path.display()
        );
        Ok(path)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Warnings of the code under measurement (RUST_LOG for more) on stderr,
    // apart from the tables on stdout.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shotlist-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program's own path")?;
    let bin_dir = exe
        .parent()
        .context("this program's path has no folder")?
        .to_path_buf();
    let films = match args.films {
        Some(dir) => dir,
        None => target_dir(&bin_dir).join("bench-films"),
    };
    // Checked before any work: a bad folder would otherwise show only once
    // the first question that makes a film is reached.
    std::fs::create_dir_all(&films)
        .with_context(|| format!("--films {}: cannot create the folder", films.display()))?;
    let settings = Settings {
        smoke: args.smoke,
        runs: args.runs.unwrap_or(if args.smoke { 1 } else { 5 }) as usize,
        bin_dir,
        films,
        scenedetect: args.scenedetect,
        sqs_endpoint: args.sqs_endpoint,
    };
    let wanted = |q: Question| args.only.is_empty() || args.only.contains(&q);

    println!("{}", machine_summary(&settings));
    let started = Instant::now();
    let questions = [
        Question::Coordination,
        Question::Pipeline,
        Question::Analysis,
        Question::Lambda,
    ];
    for question in questions.into_iter().filter(|&q| wanted(q)) {
        let section = Instant::now();
        eprintln!("shotlist-bench: {question:?} ...");
        let tables: Vec<Table> = match question {
            Question::Coordination => coordination::run(&settings).await,
            Question::Pipeline => pipeline::run(&settings).await,
            Question::Analysis => analysis::run(&settings).await,
            Question::Lambda => lambda::run(&settings).await,
        }
        .with_context(|| format!("the {question:?} benchmark"))?;
        for table in tables {
            println!("{}", table.render());
        }
        eprintln!(
            "shotlist-bench: {question:?} took {:.1} s",
            section.elapsed().as_secs_f64()
        );
    }
    println!(
        "All benchmarks took {:.0} s{}.",
        started.elapsed().as_secs_f64(),
        if settings.smoke {
            " (smoke mode: tiny inputs, one run; the numbers mean nothing)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Cargo's target folder: the parent of `release/` or `debug/`.
fn target_dir(bin_dir: &std::path::Path) -> PathBuf {
    bin_dir.parent().unwrap_or(bin_dir).to_path_buf()
}

/// The machine and tools the numbers were measured on.
fn machine_summary(settings: &Settings) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("unknown".to_string(), |kb| {
            format!("{:.0} GiB", kb / 1024.0 / 1024.0)
        });
    let ffmpeg = first_line("ffmpeg", &["-version"]);
    let postgres = postgres_version();
    format!(
        "# shotlist benchmarks{}\n\n- machine: {cpu}, {cores} cores, {memory} memory\n\
         - {ffmpeg}\n- {postgres}\n- runs per measurement: {} (tables show medians)\n",
        if settings.smoke { " (smoke)" } else { "" },
        settings.runs
    )
}

fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// `postgres --version` of the newest server Debian's packages installed
/// (the one the private clusters run).
fn postgres_version() -> String {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(Result::ok)
                .filter_map(|d| {
                    let major: u32 = d.file_name().to_str()?.split('.').next()?.parse().ok()?;
                    let postgres = d.path().join("bin/postgres");
                    postgres.is_file().then_some((major, postgres))
                })
                .max()
                .map(|(_, postgres)| postgres)
        });
    match newest {
        Some(postgres) => first_line(&postgres.to_string_lossy(), &["--version"]),
        None => "postgres: not found under /usr/lib/postgresql".to_string(),
    }
}
