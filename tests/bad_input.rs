//! The bad-input table: wrong input at every door of shotlist, one row per
//! case.
//!
//! Each test below is a table of the input one door takes: the `shotlist`
//! command line, the SQL functions called directly, SQS message bodies, HTTP
//! bodies and headers, films, and provider answers. Every row says what
//! must come back (the error naming the flag, argument, field or file), and
//! the loop over the rows checks the same promises for each: the error names
//! the problem, nothing already saved changes (a film with a completed chunk
//! keeps it, compared before and after), nothing panics, and a client's
//! mistake is a 4xx, never a 500. A table reports every row that failed,
//! by name, rather than stopping at the first.
//!
//! Each table has one PostgreSQL database of its own; the films are small
//! and generated with ffmpeg (cached in `target/test-films`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lambda_http::http;
use serde_json::{json, Value};
use shotlist_shared::analyzer::gemini::{Gemini, GeminiConfig, DEFAULT_MODEL};
use shotlist_shared::analyzer::keys::KeyPool;
use shotlist_shared::analyzer::remote::{HttpTimeouts, ModelAnalyzer, ModelSettings, VideoModel};
use shotlist_shared::analyzer::replicate::{
    PollBackoff, Replicate, ReplicateConfig, CREATES_PER_MINUTE, KEYS_VARIABLE,
};
use shotlist_shared::analyzer::LocalAnalyzer;
use shotlist_shared::cloud::api::{Api, Endpoint, SourceRoot};
use shotlist_shared::cloud::auth::{self, Claims, Verifier};
use shotlist_shared::cloud::chunk::ChunkHandler;
use shotlist_shared::cloud::finalize::FinalizeHandler;
use shotlist_shared::db::{Claim, Db};
use shotlist_shared::model::{Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::ProbeOptions;
use shotlist_shared::time::{parse_timecode, timecode, Fps};
use shotlist_shared::worker::{self, Done, WorkerConfig};
use shotlist_tests::cli_bin::shotlist_bin;
use shotlist_tests::cloud::{
    read_response, service_token, sqs_event, sqs_record, user_token, RecordingQueue,
    ScriptedAnalyzer, JWT_SECRET,
};
use shotlist_tests::fake_replicate::{self, FakeReplicate, Outcome, Script};
use shotlist_tests::fake_server::FakeServer;
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::fixtures;
use shotlist_tests::pg::{connect, fresh_db};
use shotlist_tests::scripted_model::{short_film, SHORT_FILM_CUTS};
use tokio_postgres::types::Type;
use uuid::Uuid;

/// The rows of one table that went wrong, each with its name and why.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    /// Records `case` as failed, saying `why`, unless `ok`.
    fn check(&mut self, case: &str, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            let why: String = why().chars().take(800).collect();
            self.0.push(format!("{case}: {why}"));
        }
    }

    /// Fails the test with every failed row, if any.
    fn assert_none(self, table: &str, rows: usize) {
        assert!(
            self.0.is_empty(),
            "{} of {rows} {table} rows failed:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// Everything a caller could see of `video_id` (but the database's clock,
/// the `now` of its progress), and how many films and provider uploads
/// there are: what a refused input must leave as it was.
async fn saved_state(client: &tokio_postgres::Client, video_id: Uuid) -> Value {
    let sql = "SELECT jsonb_build_object(
                   'results', public.chunk_results($1),
                   'progress', public.chunk_progress($1) - 'now',
                   'sheet', public.get_sheet($1),
                   'films', (SELECT count(*) FROM shotlist.videos),
                   'files', (SELECT count(*) FROM shotlist.provider_files))";
    client
        .query_typed_one(sql, &[(&video_id, Type::UUID)])
        .await
        .expect("reading the saved state")
        .get(0)
}

/// A film of 500 s at 25 fps registered with the default plan (three
/// chunks), whose chunk 0 is completed with two shots and whose chunk 1 is
/// held by a live worker: its id, and the lease token of chunk 1.
async fn film_with_saved_work(db: &Db) -> (Uuid, Uuid) {
    let id = fixtures::described_film(db, 12_500, "25/1").await;
    let first = claimed(db, id, 0).await;
    let shots = [
        shot(0, 1_000, "a saved shot"),
        shot(1_000, first.1, "another"),
    ];
    let report = db
        .complete_chunk(id, 0, first.0, &shots)
        .await
        .expect("chunk 0 completed");
    assert_eq!(report.outcome, shotlist_shared::db::Outcome::Completed);
    let (token, _) = claimed(db, id, 1).await;
    (id, token)
}

/// Claims chunk `index`: its lease token and end frame.
async fn claimed(db: &Db, id: Uuid, index: u32) -> (Uuid, i64) {
    match db
        .claim_chunk(id, index, Duration::from_secs(600), 3)
        .await
        .expect("claim")
    {
        Claim::Claimed(chunk) => (chunk.lease_token, chunk.end_frame),
        other => panic!("chunk {index} not claimable: {other:?}"),
    }
}

fn shot(start_frame: i64, end_frame: i64, description: &str) -> Shot {
    Shot {
        start_frame,
        end_frame,
        shot_type: ShotType::Wide,
        description: description.into(),
        dialogue: vec![],
    }
}

// The command line.

/// What one run of `shotlist` did.
struct CliRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CliRun {
    /// The last line of stderr, where the one-line error goes.
    fn error_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }

    /// What is wrong with a run that should have failed with exit `code`
    /// and one error line containing `says`, or `None`.
    fn refusal_problem(&self, code: i32, says: &str) -> Option<String> {
        let line = self.error_line();
        if self.code == Some(101) || self.stderr.contains("panicked") {
            Some(format!("panicked: {}", self.stderr))
        } else if self.code != Some(code) {
            Some(format!("exit {:?}, not {code}: {}", self.code, self.stderr))
        } else if !self.stdout.is_empty() {
            Some(format!("printed a result: {}", self.stdout))
        } else if !line.starts_with("shotlist: error: ") || !line.contains(says) {
            Some(format!("the error line does not say {says:?}: {line:?}"))
        } else {
            None
        }
    }
}

/// Runs `shotlist args` with only the variables of `env` set among those it
/// reads.
async fn shotlist(args: &[String], env: &[(&str, String)]) -> CliRun {
    let mut command = tokio::process::Command::new(shotlist_bin());
    command.env(
        "SHOTLIST_SERVE_FILE",
        shotlist_tests::cli_bin::NO_SERVE_FILE,
    );
    for name in [
        "DATABASE_URL",
        "RUST_LOG",
        "SHOTLIST_ANALYZER",
        "SHOTLIST_SQS_ENDPOINT",
        "GEMINI_API_KEYS",
        "GEMINI_BASE_URL",
        "GEMINI_MODEL",
        "REPLICATE_API_TOKENS",
        "REPLICATE_BASE_URL",
        "REPLICATE_MODEL",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k, v))).args(args);
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run shotlist");
    CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One wrong command line: `args` (with `{film}`, `{dir}`, `{db}` and
/// `{id}` standing for a good film, a scratch folder, a test database and a
/// UUID), the
/// variables set, the exit status, what the error line must say and what it
/// must not.
struct CliCase {
    name: &'static str,
    args: &'static str,
    env: &'static [(&'static str, &'static str)],
    exit: i32,
    says: &'static str,
    hides: Option<&'static str>,
}

const fn cli(name: &'static str, args: &'static str, says: &'static str) -> CliCase {
    CliCase {
        name,
        args,
        env: &[],
        exit: 2,
        says,
        hides: None,
    }
}

const CLI_CASES: &[CliCase] = &[
    cli(
        "a video id that is not a UUID",
        "process {film} --video-id film-1",
        "--video-id",
    ),
    cli(
        "a video id one digit short",
        "process {film} --video-id 123e4567-e89b-12d3-a456-42661417400",
        "--video-id",
    ),
    cli(
        "a video id given twice",
        "process {film} --video-id {id} --video-id {id}",
        "--video-id",
    ),
    cli(
        "a negative concurrency",
        "process {film} --concurrency -1",
        "--concurrency",
    ),
    cli(
        "a concurrency past 64",
        "process {film} --concurrency 65",
        "--concurrency",
    ),
    cli(
        "a concurrency past every integer",
        "process {film} --concurrency 18446744073709551616",
        "--concurrency",
    ),
    cli(
        "a negative chunk length",
        "process {film} --chunk-seconds -180",
        "--chunk-seconds",
    ),
    cli(
        "an infinite chunk length",
        "process {film} --chunk-seconds inf",
        "--chunk-seconds",
    ),
    cli(
        "an overlap that is not a number",
        "process {film} --overlap-seconds NaN",
        "--overlap-seconds",
    ),
    cli(
        "a scene threshold that is not a number",
        "process {film} --scene-threshold NaN",
        "--scene-threshold",
    ),
    cli(
        "a scene threshold above 1",
        "process {film} --scene-threshold 1.5",
        "--scene-threshold",
    ),
    cli(
        "a negative chunk timeout",
        "process {film} --chunk-timeout -5",
        "--chunk-timeout",
    ),
    cli(
        "a chunk timeout past 900 s",
        "process {film} --chunk-timeout 901",
        "--chunk-timeout",
    ),
    cli("a misspelt flag", "process {film} --chunks 3", "--chunks"),
    cli("no film", "process", "<FILM>"),
    cli("an unknown subcommand", "analyse {film}", "analyse"),
    cli(
        "a film that is a dangling link",
        "process {dir}/dangling.mp4",
        "dangling.mp4",
    ),
    cli(
        "a film that is a named pipe",
        "process {dir}/pipe.mp4",
        "pipe.mp4 is not a regular file",
    ),
    cli(
        "an output folder that is a file",
        "process {film} --out {film}",
        "--out",
    ),
    cli("migrate without a database", "migrate", "--database-url"),
    cli(
        "a queue server that is not http",
        "cloud {film} --sqs-endpoint ftp://127.0.0.1/q",
        "--sqs-endpoint",
    ),
    cli(
        "a queue prefix with a slash",
        "cloud {film} --sqs-endpoint http://127.0.0.1:9 --queue-prefix shot/list",
        "--queue-prefix",
    ),
    CliCase {
        env: &[
            ("REPLICATE_API_TOKENS", "r8_BADINPUTtoken"),
            ("REPLICATE_MODEL", "gemini-3-pro"),
        ],
        hides: Some("r8_BADINPUTtoken"),
        ..cli(
            "a Replicate model without its owner",
            "process {film} --analyzer replicate",
            "REPLICATE_MODEL",
        )
    },
    CliCase {
        env: &[
            ("REPLICATE_API_TOKENS", "r8_BADINPUTtoken"),
            ("REPLICATE_BASE_URL", "ftp://127.0.0.1"),
        ],
        hides: Some("r8_BADINPUTtoken"),
        ..cli(
            "a Replicate base URL that is not http",
            "process {film} --analyzer replicate",
            "REPLICATE_BASE_URL",
        )
    },
    CliCase {
        env: &[(
            "DATABASE_URL",
            "postgresql://shotlist:BadInputPw@127.0.0.1:port/db",
        )],
        exit: 1,
        hides: Some("BadInputPw"),
        ..cli(
            "a database URL with a bad port",
            "process {film}",
            "invalid database url",
        )
    },
    CliCase {
        exit: 1,
        ..cli(
            "chunks so short the film needs more than 10000",
            "process {film} --database-url {db} --chunk-seconds 0.001 --overlap-seconds 0.0005",
            "--chunk-seconds",
        )
    },
];

/// Splits `args` on spaces and fills in `{film}`, `{dir}`, `{db}` and
/// `{id}` (a new UUID).
fn command_line(args: &str, film: &Path, dir: &Path, db: &str) -> Vec<String> {
    let id = Uuid::new_v4().to_string();
    args.split(' ')
        .map(|word| {
            word.replace("{film}", &film.to_string_lossy())
                .replace("{dir}", &dir.to_string_lossy())
                .replace("{db}", db)
                .replace("{id}", &id)
        })
        .collect()
}

#[tokio::test]
async fn command_lines_that_are_wrong_are_refused_in_one_line_naming_the_flag_before_any_work() {
    let film = short_film().await;
    let (_db, url) = fresh_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(dir.path().join("gone.mp4"), dir.path().join("dangling.mp4"))
        .expect("a dangling link");
    let pipe = std::ffi::CString::new(dir.path().join("pipe.mp4").to_string_lossy().as_bytes())
        .expect("a path without NUL");
    // SAFETY: `pipe` is a valid NUL-terminated path that lives for the call.
    assert_eq!(unsafe { libc::mkfifo(pipe.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut failures = Failures::default();
    for (n, case) in CLI_CASES.iter().enumerate() {
        let out = dir.path().join(format!("out-{n}"));
        let mut args = command_line(case.args, &film.path, dir.path(), &url);
        if matches!(args.first().map(String::as_str), Some("process" | "cloud"))
            && !case.args.contains("--out")
        {
            args.extend(["--out".to_string(), out.to_string_lossy().into_owned()]);
        }
        let env: Vec<(&str, String)> = case.env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let run = shotlist(&args, &env).await;
        let problem = run.refusal_problem(case.exit, case.says);
        failures.check(case.name, problem.is_none(), || problem.unwrap_or_default());
        if let Some(secret) = case.hides {
            failures.check(case.name, !run.stderr.contains(secret), || {
                format!("shows {secret:?}: {}", run.stderr)
            });
        }
        failures.check(case.name, !out.exists(), || {
            format!("left the output folder {}", out.display())
        });
    }
    failures.assert_none("command line", CLI_CASES.len());
}

// The SQL functions, called directly as Supabase's RPC would.

/// What a direct call must come to.
enum Expect {
    /// Refused with this SQLSTATE, the message naming this.
    Error(&'static str, &'static str),
    /// Answered (a refusal in the answer, such as `lease_lost`) with this
    /// in the answer's text, having changed nothing.
    Answer(&'static str),
}

/// One call: `$1` is a film with a completed chunk 0 and a chunk 1 held by
/// a live worker whose lease token is `$2`; `$3` is `shots`, text.
struct SqlCase {
    name: &'static str,
    sql: &'static str,
    shots: &'static str,
    expect: Expect,
}

const fn refused(name: &'static str, sql: &'static str, says: &'static str) -> SqlCase {
    SqlCase {
        name,
        sql,
        shots: "[]",
        expect: Expect::Error("22023", says),
    }
}

const fn unknown(name: &'static str, sql: &'static str, says: &'static str) -> SqlCase {
    SqlCase {
        expect: Expect::Error("P0002", says),
        ..refused(name, sql, "")
    }
}

const fn answered(name: &'static str, sql: &'static str, says: &'static str) -> SqlCase {
    SqlCase {
        expect: Expect::Answer(says),
        ..refused(name, sql, "")
    }
}

/// Chunk 1 (frames 4125 to 9000) committed by its holder with `shots`.
const fn commit(name: &'static str, shots: &'static str, says: &'static str) -> SqlCase {
    SqlCase {
        shots,
        ..refused(
            name,
            "SELECT public.complete_chunk($1, 1, $2, $3::jsonb)",
            says,
        )
    }
}

const SQL_CASES: &[SqlCase] = &[
    refused(
        "register without an id",
        "SELECT public.register_video(NULL, 100)",
        "p_video_id",
    ),
    refused(
        "register a NaN duration",
        "SELECT public.register_video(gen_random_uuid(), 'NaN')",
        "p_duration_seconds",
    ),
    refused(
        "register a negative duration",
        "SELECT public.register_video(gen_random_uuid(), -5)",
        "p_duration_seconds",
    ),
    refused(
        "register a duration of 1e300 s",
        "SELECT public.register_video(gen_random_uuid(), 1e300)",
        "limit of 10000",
    ),
    refused(
        "register infinite chunks",
        "SELECT public.register_video(gen_random_uuid(), 100, 'Infinity')",
        "p_chunk_seconds",
    ),
    refused(
        "register an overlap as long as the chunk",
        "SELECT public.register_video(gen_random_uuid(), 100, 10, 10)",
        "p_overlap_seconds",
    ),
    refused(
        "register a known film with another length",
        "SELECT public.register_video($1, 10)",
        "already registered",
    ),
    refused(
        "describe a rate of 0/1",
        "SELECT public.describe_video($1, 's', 0, 1, 10)",
        "p_fps_num/p_fps_den",
    ),
    refused(
        "describe a rate of 25/0",
        "SELECT public.describe_video($1, 's', 25, 0, 10)",
        "p_fps_num/p_fps_den",
    ),
    refused(
        "describe 2000 frames a second",
        "SELECT public.describe_video($1, 's', 2000, 1, 10)",
        "1 to 1000 frames per second",
    ),
    refused(
        "describe no frames",
        "SELECT public.describe_video($1, 's', 25, 1, 0)",
        "p_duration_frames",
    ),
    refused(
        "describe media that is an array",
        "SELECT public.describe_video($1, 's', 25, 1, 100, '[]')",
        "p_media",
    ),
    refused(
        "describe media that is NULL",
        "SELECT public.describe_video($1, 's', 25, 1, 100, NULL)",
        "p_media",
    ),
    refused(
        "describe a known film with other facts",
        "SELECT public.describe_video($1, 's', 30, 1, 99)",
        "already described",
    ),
    unknown(
        "describe an unknown film",
        "SELECT public.describe_video(gen_random_uuid(), 's', 25, 1, 10)",
        "unknown video",
    ),
    refused(
        "claim with a negative lease",
        "SELECT public.claim_chunk($1, 2, -1)",
        "p_lease_seconds",
    ),
    refused(
        "claim with a NaN lease",
        "SELECT public.claim_chunk($1, 2, 'NaN')",
        "p_lease_seconds",
    ),
    refused(
        "claim with a lease of 1e300 s",
        "SELECT public.claim_chunk($1, 2, 1e300)",
        "p_lease_seconds",
    ),
    refused(
        "claim with no attempts allowed",
        "SELECT public.claim_chunk($1, 2, 60, 0)",
        "p_max_attempts",
    ),
    unknown(
        "claim chunk 99 of a 3-chunk film",
        "SELECT public.claim_chunk($1, 99)",
        "no chunk 99",
    ),
    unknown(
        "claim chunk -1",
        "SELECT public.claim_chunk($1, -1)",
        "no chunk -1",
    ),
    unknown(
        "claim a chunk of an unknown film",
        "SELECT public.claim_chunk(gen_random_uuid(), 0)",
        "unknown video",
    ),
    SqlCase {
        expect: Expect::Error("22P02", "film-1"),
        ..refused(
            "claim with an id that is not a UUID",
            "SELECT public.claim_chunk('film-1', 0)",
            "",
        )
    },
    SqlCase {
        expect: Expect::Error("42883", "claim_chunk(uuid, bigint)"),
        ..refused(
            "claim a chunk index past 2^31",
            "SELECT public.claim_chunk($1, 3000000000)",
            "",
        )
    },
    commit(
        "commit a shot that is a number",
        "[42]",
        "p_shots[0] is not an object",
    ),
    commit(
        "commit frames as text",
        r#"[{"startFrame": "4125", "endFrame": 5000}]"#,
        "numeric startFrame",
    ),
    commit(
        "commit a fractional frame",
        r#"[{"startFrame": 4125.5, "endFrame": 5000}]"#,
        "fractional",
    ),
    commit(
        "commit a frame of 1e30",
        r#"[{"startFrame": 4125, "endFrame": 1e30}]"#,
        "inside the chunk",
    ),
    commit(
        "commit an unknown shot type",
        r#"[{"startFrame": 4125, "endFrame": 5000, "type": "panorama"}]"#,
        "unknown type",
    ),
    commit(
        "commit dialogue that is text",
        r#"[{"startFrame": 4125, "endFrame": 5000, "dialogue": "hi"}]"#,
        "dialogue that is not an array",
    ),
    commit(
        "commit a dialogue line that is a number",
        r#"[{"startFrame": 4125, "endFrame": 5000, "dialogue": [42]}]"#,
        "p_shots[0] has a dialogue line",
    ),
    commit(
        "commit a dialogue line without its line",
        r#"[{"startFrame": 4125, "endFrame": 5000, "dialogue": [{"speaker": "A"}]}]"#,
        "\"line\": text",
    ),
    commit(
        "commit a speaker that is a number",
        r#"[{"startFrame":4125,"endFrame":5000,"dialogue":[{"speaker":7,"line":"hi"}]}]"#,
        "\"speaker\": text",
    ),
    commit(
        "commit a dialogue line at half a frame",
        r#"[{"startFrame":4125,"endFrame":5000,"dialogue":[{"line":"hi","startFrame":4200.5}]}]"#,
        "whose startFrame is not a whole frame",
    ),
    commit(
        "commit a description that is a number",
        r#"[{"startFrame": 4125, "endFrame": 5000, "description": 7}]"#,
        "description that is not a string",
    ),
    commit(
        "commit shots that are an object",
        r#"{"shots": []}"#,
        "p_shots must be a JSON array",
    ),
    SqlCase {
        expect: Expect::Error("22P02", "json"),
        ..commit("commit shots that are not JSON", "shots", "")
    },
    answered(
        "commit without a lease token",
        "SELECT public.complete_chunk($1, 1, NULL, '[]')",
        "lease_lost",
    ),
    answered(
        "commit with a stranger's token",
        "SELECT public.complete_chunk($1, 1, gen_random_uuid(), '[]')",
        "lease_lost",
    ),
    answered(
        "commit a completed chunk again",
        "SELECT public.complete_chunk($1, 0, gen_random_uuid(), '[]')",
        "already_completed",
    ),
    answered(
        "fail a completed chunk",
        "SELECT public.fail_chunk($1, 0, gen_random_uuid(), 'x', false)",
        "already_completed",
    ),
    answered(
        "fail with every argument NULL",
        "SELECT public.fail_chunk($1, 1, NULL, NULL, NULL, NULL)",
        "lease_lost",
    ),
    refused(
        "release with a negative limit",
        "SELECT public.release_chunk($1, 1, $2, 'busy', -1)",
        "p_max_releases",
    ),
    refused(
        "move to an unknown status",
        "SELECT public.update_chunk_status($1, 2, 'done')",
        "unknown status",
    ),
    refused(
        "move to a NULL status",
        "SELECT public.update_chunk_status($1, 2, NULL)",
        "unknown status",
    ),
    answered(
        "move a completed chunk back to pending",
        "SELECT public.update_chunk_status($1, 0, 'pending')",
        "completedChunks",
    ),
    SqlCase {
        expect: Expect::Error("55000", "held by a worker"),
        ..refused(
            "complete a held chunk without its shots",
            "SELECT public.update_chunk_status($1, 1, 'completed')",
            "",
        )
    },
    refused(
        "force-finalize with a blank reason",
        "SELECT public.force_finalize($1, '  ')",
        "p_reason",
    ),
    unknown(
        "force-finalize an unknown film",
        "SELECT public.force_finalize(gen_random_uuid())",
        "unknown video",
    ),
    refused(
        "store a sheet that is an array",
        "SELECT public.store_sheet($1, '[]')",
        "p_sheet",
    ),
    SqlCase {
        expect: Expect::Error("55000", "not finished"),
        ..refused(
            "store the sheet of a running film",
            "SELECT public.store_sheet($1, '{}')",
            "",
        )
    },
    refused(
        "reject a message of no queue",
        "SELECT public.record_rejected_message('', 'm1', 'b', 'e')",
        "p_queue",
    ),
    refused(
        "reject a message with a 300-character id",
        "SELECT public.record_rejected_message('q', repeat('m', 300), 'b', 'e')",
        "p_message_id",
    ),
    refused(
        "submit without a source",
        "SELECT public.submit_video($1, NULL, 500, 180, 15, NULL, 25, 1, 12500, '{}')",
        "p_source",
    ),
    refused(
        "submit a known film as another owner",
        "SELECT public.submit_video($1, gen_random_uuid(), 500, 180, 15, 's', 25, 1, 12500, '{}')",
        "another owner",
    ),
    refused(
        "claim an upload for no time",
        "SELECT public.claim_provider_file($1, 'gemini', '1', 0, '{1}')",
        "p_claim_seconds",
    ),
    refused(
        "claim an upload for no accounts",
        "SELECT public.claim_provider_file($1, 'gemini', '1', 60, NULL)",
        "p_accounts",
    ),
    refused(
        "claim an upload of no provider",
        "SELECT public.claim_provider_file($1, '', '1', 60, '{1}')",
        "p_provider",
    ),
    unknown(
        "progress of an unknown film",
        "SELECT public.chunk_progress(gen_random_uuid())",
        "unknown video",
    ),
    unknown(
        "mark an unknown film enqueued",
        "SELECT public.mark_enqueued(gen_random_uuid())",
        "unknown video",
    ),
];

#[tokio::test]
async fn sql_functions_refuse_bad_arguments_naming_them_and_keep_what_is_saved() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (id, token) = film_with_saved_work(&db).await;
    let before = saved_state(&client, id).await;
    let mut failures = Failures::default();
    for case in SQL_CASES {
        // Each call runs in a transaction of its own, rolled back after the
        // state is read, so that a call wrongly accepted shows as a change
        // without spoiling the rows after it.
        client.batch_execute("BEGIN").await.expect("begin");
        let params = [
            (&id as _, Type::UUID),
            (&token as _, Type::UUID),
            (&case.shots as _, Type::TEXT),
        ];
        let result = client.query_typed(case.sql, &params).await;
        if result.is_err() {
            client.batch_execute("ROLLBACK").await.expect("rollback");
        }
        let now = saved_state(&client, id).await;
        if result.is_ok() {
            client.batch_execute("ROLLBACK").await.expect("rollback");
        }
        match (&case.expect, result) {
            (Expect::Error(code, says), Err(e)) => {
                let (got, message) = e
                    .as_db_error()
                    .map(|e| (e.code().code().to_string(), e.message().to_string()))
                    .unwrap_or_else(|| (String::new(), e.to_string()));
                failures.check(case.name, got == *code && message.contains(says), || {
                    format!("expected {code} saying {says:?}, got {got}: {message}")
                });
            }
            (Expect::Error(code, _), Ok(rows)) => {
                let answer: Option<Value> = rows.first().and_then(|r| r.try_get(0).ok());
                failures.check(case.name, false, || {
                    format!("accepted (expected {code}): {answer:?}")
                });
            }
            (Expect::Answer(says), Ok(rows)) => {
                let answer: Value = rows[0].get(0);
                failures.check(case.name, answer.to_string().contains(says), || {
                    format!("the answer does not say {says:?}: {answer}")
                });
            }
            (Expect::Answer(_), Err(e)) => {
                failures.check(case.name, false, || format!("refused: {e:?}"));
            }
        }
        failures.check(case.name, now == before, || {
            format!("changed what was saved:\n{before}\n{now}")
        });
    }
    // What was saved is still whole: the film's results are read back (a
    // row the merge cannot read would stop the film's sheet for good), and
    // chunk 1's worker still holds it and can commit.
    let results = db.chunk_results(id).await;
    failures.check("every call", results.is_ok(), || {
        format!("the film's results cannot be read: {results:?}")
    });
    let report = db
        .complete_chunk(id, 1, token, &[shot(4_125, 5_000, "late but held")])
        .await;
    failures.check("every call", report.is_ok(), || {
        format!("the holder of chunk 1 cannot commit: {report:?}")
    });
    failures.assert_none("SQL", SQL_CASES.len());
}

// SQS message bodies, through the process-chunk and finalize handlers.

const CHUNK_QUEUE: &str = "shotlist-chunks";
const FINALIZE_QUEUE: &str = "shotlist-finalize";

/// Which handler a message goes to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Queue {
    Chunk,
    Finalize,
}

/// One body (`{film}` stands for the film with saved work) and what its
/// recorded rejection must say.
struct SqsCase {
    name: &'static str,
    queue: Queue,
    body: &'static str,
    says: &'static str,
}

const fn message(
    name: &'static str,
    queue: Queue,
    body: &'static str,
    says: &'static str,
) -> SqsCase {
    SqsCase {
        name,
        queue,
        body,
        says,
    }
}

/// A body of 256 KiB, SQS's largest, that is not JSON.
const HUGE: &str = "{huge}";

const SQS_CASES: &[SqsCase] = &[
    message("an empty body", Queue::Chunk, "", "the body is not JSON"),
    message(
        "the JSON null",
        Queue::Chunk,
        "null",
        "not a JSON object but null",
    ),
    message(
        "a chunk message inside an array",
        Queue::Chunk,
        r#"[{"videoId": "{film}", "chunkIndex": 1}]"#,
        "not a JSON object",
    ),
    message(
        "a chunk index as text",
        Queue::Chunk,
        r#"{"videoId": "{film}", "chunkIndex": "1"}"#,
        r#"chunkIndex must be a whole number from 0 to 4294967295, got "1""#,
    ),
    message(
        "a fractional chunk index",
        Queue::Chunk,
        r#"{"videoId": "{film}", "chunkIndex": 1.5}"#,
        "chunkIndex must be a whole number from 0 to 4294967295, got 1.5",
    ),
    message(
        "a chunk index past 2^32",
        Queue::Chunk,
        r#"{"videoId": "{film}", "chunkIndex": 4294967296}"#,
        "got 4294967296",
    ),
    message(
        "the largest chunk index",
        Queue::Chunk,
        r#"{"videoId": "{film}", "chunkIndex": 4294967295}"#,
        "chunk index 4294967295 is out of range",
    ),
    message(
        "a chunk index of 2^31",
        Queue::Chunk,
        r#"{"videoId": "{film}", "chunkIndex": 2147483648}"#,
        "chunk index 2147483648 is out of range",
    ),
    message(
        "a video id that is a number",
        Queue::Chunk,
        r#"{"videoId": 42, "chunkIndex": 1}"#,
        "videoId must be a UUID, got 42",
    ),
    message(
        "an empty video id",
        Queue::Chunk,
        r#"{"videoId": "", "chunkIndex": 1}"#,
        r#"videoId must be a UUID, got """#,
    ),
    message(
        "a video id given twice",
        Queue::Chunk,
        r#"{"videoId": "{film}", "videoId": "{film}", "chunkIndex": 1}"#,
        "duplicate field `videoId`",
    ),
    message(
        "256 KiB of junk",
        Queue::Chunk,
        HUGE,
        "the body is not JSON",
    ),
    message(
        "an empty finalize body",
        Queue::Finalize,
        "",
        "not a finalize message",
    ),
    message(
        "a finalize message without its id",
        Queue::Finalize,
        r#"{"videoId": null}"#,
        "videoId must be a UUID, got null",
    ),
    message(
        "a finalize message that is a list of ids",
        Queue::Finalize,
        r#"["{film}"]"#,
        "not a JSON object",
    ),
    message(
        "a chunk message sent to the finalize queue",
        Queue::Finalize,
        r#"{"videoId": "{film}", "chunkIndex": 1}"#,
        "not finished",
    ),
    message(
        "256 KiB of junk to finalize",
        Queue::Finalize,
        HUGE,
        "not a finalize message",
    ),
];

#[tokio::test]
async fn sqs_bodies_that_are_not_messages_are_recorded_once_and_keep_what_is_saved() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (id, _token) = film_with_saved_work(&db).await;
    let analyzer = ScriptedAnalyzer::new();
    let chunks = ChunkHandler {
        db: db.clone(),
        analyzer: analyzer.clone(),
        finalize_queue: RecordingQueue::new(),
        worker: WorkerConfig::default(),
        max_receives: 5,
        queue_name: CHUNK_QUEUE.into(),
        redelivery: None,
    };
    let finalize = FinalizeHandler {
        db: db.clone(),
        queue_name: FINALIZE_QUEUE.into(),
    };
    let before = saved_state(&client, id).await;
    let huge = "x".repeat(256 * 1024);
    let mut failures = Failures::default();
    for (n, case) in SQS_CASES.iter().enumerate() {
        let message_id = format!("bad-{n}");
        let body = match case.body {
            HUGE => huge.clone(),
            body => body.replace("{film}", &id.to_string()),
        };
        let event = sqs_event(vec![sqs_record(&message_id, &body, 1)]);
        let response = match case.queue {
            Queue::Chunk => chunks.handle(event, None).await,
            Queue::Finalize => finalize.handle(event).await,
        };
        failures.check(case.name, response.batch_item_failures.is_empty(), || {
            "left for retry: it would come back until the dead-letter queue".into()
        });
        let queue = match case.queue {
            Queue::Chunk => CHUNK_QUEUE,
            Queue::Finalize => FINALIZE_QUEUE,
        };
        let rejected = db
            .rejected_messages(queue)
            .await
            .expect("rejected messages");
        match rejected.iter().find(|r| r.message_id == message_id) {
            Some(row) => {
                failures.check(case.name, row.error.contains(case.says), || {
                    format!(
                        "the recorded error does not say {:?}: {}",
                        case.says, row.error
                    )
                });
                failures.check(case.name, row.body.chars().count() <= 4096, || {
                    format!("kept a body of {} characters", row.body.chars().count())
                });
            }
            None => failures.check(case.name, false, || "not recorded as rejected".into()),
        }
        let now = saved_state(&client, id).await;
        failures.check(case.name, now == before, || {
            format!("changed what was saved:\n{before}\n{now}")
        });
    }
    failures.check("every body", analyzer.all_runs().is_empty(), || {
        format!("the analyzer ran: {:?}", analyzer.all_runs())
    });
    failures.assert_none("SQS", SQS_CASES.len());
}

// HTTP requests to submit, status, finalize and force-finalize.

/// One request: `{film}` in the path stands for the film with saved work.
struct HttpCase {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    /// The `Authorization` header's bytes; `None` sends none.
    auth: Option<Vec<u8>>,
    body: Vec<u8>,
    status: u16,
    field: Option<&'static str>,
    says: &'static str,
}

/// A request to submit `body` as the service role, refused with 400 naming
/// `field`.
fn submit(name: &'static str, body: Value, field: &'static str, says: &'static str) -> HttpCase {
    HttpCase {
        name,
        method: "POST",
        path: "/videos",
        auth: Some(service_token().into_bytes()),
        body: body.to_string().into_bytes(),
        status: 400,
        field: Some(field),
        says,
    }
}

/// A request as the service role.
fn call(name: &'static str, method: &'static str, path: &'static str, body: &[u8]) -> HttpCase {
    HttpCase {
        name,
        method,
        path,
        auth: Some(service_token().into_bytes()),
        body: body.to_vec(),
        status: 400,
        field: None,
        says: "",
    }
}

/// A request to read the film's progress with `auth`, refused with 401.
fn unauthorized(name: &'static str, auth: Vec<u8>, says: &'static str) -> HttpCase {
    HttpCase {
        name,
        method: "GET",
        path: "/videos/{film}",
        auth: Some(auth),
        body: Vec::new(),
        status: 401,
        field: None,
        says,
    }
}

/// `text` in unpadded base64url, as JWTs encode their parts.
fn base64url(text: &str) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(DIGITS[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `Bearer <token>` for a service-role token that claims to need no
/// signature (`alg: none`).
fn unsigned_service_token() -> Vec<u8> {
    let exp = auth::now_epoch() + 600;
    let header = base64url(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = base64url(&format!(r#"{{"role":"service_role","exp":{exp}}}"#));
    format!("Bearer {header}.{claims}.").into_bytes()
}

/// `Bearer <token>` for a signed-in user whose id is not a UUID.
fn user_without_uuid() -> Vec<u8> {
    let claims = Claims {
        sub: Some("user-1".into()),
        role: "authenticated".into(),
        exp: auth::now_epoch() + 600,
    };
    let token = auth::sign(JWT_SECRET, &claims).expect("signed");
    format!("Bearer {token}").into_bytes()
}

fn http_cases(owner: Uuid) -> Vec<HttpCase> {
    let service = service_token();
    let id = Uuid::new_v4();
    vec![
        unauthorized(
            "an Authorization header that is not text",
            b"Bearer \xff\xfe".to_vec(),
            "Authorization",
        ),
        unauthorized(
            "a Bearer without a token",
            b"Bearer ".to_vec(),
            "Authorization",
        ),
        unauthorized(
            "a token of four parts",
            b"Bearer a.b.c.d".to_vec(),
            "invalid token",
        ),
        unauthorized(
            "a token that needs no signature",
            unsigned_service_token(),
            "invalid token",
        ),
        unauthorized(
            "a user token whose id is not a UUID",
            user_without_uuid(),
            "sub",
        ),
        unauthorized(
            "a token given twice",
            format!("{service}, {service}").into_bytes(),
            "invalid token",
        ),
        HttpCase {
            body: b"{\"source\": \"\xff\xfe\"}".to_vec(),
            says: "not valid JSON",
            ..call("a body that is not UTF-8", "POST", "/videos", b"")
        },
        HttpCase {
            body: "[".repeat(20_000).into_bytes(),
            says: "not valid JSON",
            ..call("a body nested 20000 deep", "POST", "/videos", b"")
        },
        HttpCase {
            body: json!({ "source": "x".repeat(1 << 20), "videoId": id })
                .to_string()
                .into_bytes(),
            status: 413,
            says: "bytes",
            ..call("a body of a megabyte", "POST", "/videos", b"")
        },
        submit(
            "a source with a NUL",
            json!({ "source": "film\u{0}.mp4", "videoId": id }),
            "source",
            "control characters",
        ),
        submit(
            "a file URL",
            json!({ "source": "file:///etc/passwd", "videoId": id }),
            "source",
            "scheme",
        ),
        submit(
            "a key with a backslash",
            json!({ "source": "films\\..\\x.mp4", "videoId": id }),
            "source",
            "plain bucket key",
        ),
        submit(
            "a URL on this machine",
            json!({ "source": "http://127.0.0.1:9/film.mp4", "videoId": id }),
            "source",
            "not a public address",
        ),
        submit(
            "a key that is not a film",
            json!({ "source": "notes.mp4", "videoId": id }),
            "source",
            "notes.mp4: not a readable media file",
        ),
        submit(
            "a duration of zero",
            json!({ "source": "notes.mp4", "durationSeconds": 0, "videoId": id }),
            "durationSeconds",
            "positive",
        ),
        submit(
            "a duration that is true",
            json!({ "source": "notes.mp4", "durationSeconds": true, "videoId": id }),
            "durationSeconds",
            "positive",
        ),
        HttpCase {
            body: format!(
                r#"{{"source": "notes.mp4", "durationSeconds": 1e400, "videoId": "{id}"}}"#
            )
            .into_bytes(),
            says: "number out of range",
            ..call("a duration past every number", "POST", "/videos", b"")
        },
        submit(
            "an empty video id",
            json!({ "source": "notes.mp4", "videoId": "" }),
            "videoId",
            "not a UUID",
        ),
        submit(
            "an owner id that is not a UUID",
            json!({ "source": "notes.mp4", "videoId": id, "ownerId": "me" }),
            "ownerId",
            "not a UUID",
        ),
        HttpCase {
            auth: Some(user_token(owner).into_bytes()),
            body: json!({ "source": "notes.mp4", "videoId": id, "ownerId": Uuid::new_v4() })
                .to_string()
                .into_bytes(),
            status: 403,
            says: "ownerId",
            ..call("a user naming another owner", "POST", "/videos", b"")
        },
        HttpCase {
            field: Some("id"),
            says: "not a UUID",
            ..call("a video id of a NUL", "GET", "/videos/%00", b"")
        },
        HttpCase {
            field: Some("id"),
            says: "not a UUID",
            ..call(
                "finalize an id that is not a UUID",
                "POST",
                "/videos/film-1/finalize",
                b"",
            )
        },
        HttpCase {
            says: r#"unknown field "now""#,
            ..call(
                "force-finalize with an unknown field",
                "POST",
                "/videos/{film}/force-finalize",
                br#"{"retry": true, "now": 1}"#,
            )
        },
        HttpCase {
            says: "must be a JSON object",
            ..call(
                "force-finalize with a body of text",
                "POST",
                "/videos/{film}/force-finalize",
                br#""retry""#,
            )
        },
        HttpCase {
            field: Some("retry"),
            says: "retry must be true or false",
            ..call(
                "force-finalize with retry 1",
                "POST",
                "/videos/{film}/force-finalize",
                br#"{"retry": 1}"#,
            )
        },
        HttpCase {
            status: 404,
            says: "unknown video",
            ..call(
                "force-finalize an unknown film",
                "POST",
                "/videos/00000000-0000-4000-8000-000000000000/force-finalize",
                b"",
            )
        },
        HttpCase {
            status: 405,
            says: "POST only",
            ..call("PUT a film", "PUT", "/videos", b"{}")
        },
        HttpCase {
            status: 405,
            says: "GET only",
            ..call("DELETE a film", "DELETE", "/videos/{film}", b"")
        },
        HttpCase {
            status: 404,
            says: "no route",
            ..call(
                "a path past finalize",
                "POST",
                "/videos/{film}/finalize/now",
                b"",
            )
        },
    ]
}

/// The request API Gateway would hand the function.
fn raw_request(
    method: &str,
    path: &str,
    auth: Option<&[u8]>,
    body: Vec<u8>,
) -> lambda_http::Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("https://api.example.test{path}"))
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        let value = http::HeaderValue::from_bytes(auth).expect("a header value");
        builder = builder.header("authorization", value);
    }
    builder
        .body(lambda_http::Body::Binary(body))
        .expect("a request")
}

#[tokio::test]
async fn http_requests_with_bad_bodies_or_headers_get_a_4xx_naming_the_problem_and_change_nothing()
{
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (id, _token) = film_with_saved_work(&db).await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        root.path().join("notes.mp4"),
        "notes, not a film\n".repeat(40),
    )
    .unwrap();
    let queue = RecordingQueue::new();
    let api = Api {
        db: db.clone(),
        verifier: Verifier::new(JWT_SECRET).expect("a verifier"),
        chunk_queue: queue.clone(),
        source_root: Some(SourceRoot::Folder(root.path().into())),
        plan: PlanParams::default(),
        probe: ProbeOptions::default(),
        allow_private_sources: false,
    };
    let before = saved_state(&client, id).await;
    let cases = http_cases(Uuid::new_v4());
    let mut failures = Failures::default();
    for case in &cases {
        let path = case.path.replace("{film}", &id.to_string());
        let request = raw_request(case.method, &path, case.auth.as_deref(), case.body.clone());
        let (status, answer) = read_response(api.handle(&Endpoint::ALL, request).await);
        let error = answer["error"].as_str().unwrap_or_default();
        failures.check(case.name, status == case.status, || {
            format!("answered {status}, not {}: {answer}", case.status)
        });
        failures.check(
            case.name,
            error.contains(case.says) && !error.is_empty(),
            || format!("the error does not say {:?}: {answer}", case.says),
        );
        failures.check(case.name, answer["field"].as_str() == case.field, || {
            format!("the field is not {:?}: {answer}", case.field)
        });
        failures.check(
            case.name,
            !error.contains(&*root.path().to_string_lossy()),
            || format!("shows the server's folder: {error}"),
        );
        let now = saved_state(&client, id).await;
        failures.check(case.name, now == before, || {
            format!("changed what was saved:\n{before}\n{now}")
        });
    }
    failures.check("every request", queue.sent().is_empty(), || {
        format!("queued {:?}", queue.sent())
    });
    failures.assert_none("HTTP", cases.len());
}

// Films.

/// Runs ffmpeg with `args`, writing `out`.
fn ffmpeg(args: &[&str], out: &Path) {
    let output = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error"])
        .args(args)
        .arg(out)
        .output()
        .expect("running ffmpeg");
    assert!(
        output.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A film whose frames come at two rates: 30 frames at 30 fps, then 30 at
/// 10 fps (a cut at 1 s and one at 2.5 s), as a phone records a dim scene.
fn variable_rate_film(dir: &Path) -> PathBuf {
    let out = dir.join("variable-rate.mp4");
    let colours =
        ["white", "black", "0xf0e060"].map(|c| format!("color=c={c}:s=128x72:r=30,format=yuv420p"));
    let graph = "[0]trim=end_frame=30,setpts=PTS-STARTPTS[a];\
                 [1]trim=end_frame=15,setpts=PTS-STARTPTS[b];\
                 [2]trim=end_frame=15,setpts=PTS-STARTPTS[c];\
                 [a][b][c]concat=n=3:v=1:a=0,\
                 setpts='if(lt(N,30),N,30+(N-30)*3)/(30*TB)'[v]";
    let mut args: Vec<&str> = Vec::new();
    for colour in &colours {
        args.extend(["-f", "lavfi", "-i", colour]);
    }
    args.extend(["-filter_complex", graph, "-map", "[v]", "-fps_mode", "vfr"]);
    args.extend(["-c:v", "libx264", "-preset", "ultrafast"]);
    ffmpeg(&args, &out);
    out
}

/// A copy of the MP4 `film` whose headers (`mvhd`, `tkhd`, `mdhd`) declare
/// a duration of about 50 days while its frames last as long as before.
fn huge_declared_duration(film: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(film).expect("reading the film");
    // Where the (version 0) duration field sits after each box's type.
    for (tag, offset) in [(b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)] {
        let mut from = 0;
        while let Some(at) = find(&bytes[from..], tag).map(|i| from + i) {
            if bytes[at + 4] == 0 {
                bytes[at + offset..at + offset + 4].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
            }
            from = at + 4;
        }
    }
    let out = dir.join("declares-50-days.mp4");
    std::fs::write(&out, bytes).expect("writing the film");
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A 29.97 fps film of 1900 frames (63.4 s) cut at frames 900 and 1800, the
/// first frame of minute 1, whose timecode track says it starts at
/// `01:00:00;00` drop-frame.
fn drop_frame_film(dir: &Path) -> PathBuf {
    let ntsc = Fps::new(30_000, 1_001).expect("29.97");
    let film = make_film(&film_dir(), ntsc, &[900, 1_800], 1_900, false);
    let out = dir.join("ntsc-drop-frame.mov");
    let film = film.path.to_string_lossy().into_owned();
    ffmpeg(
        &["-i", &film, "-c", "copy", "-timecode", "01:00:00;00"],
        &out,
    );
    out
}

/// One film that cannot be analyzed, tried under the id of a film with
/// saved work: what makes it, the exit status, and what the error says.
struct FilmCase {
    name: &'static str,
    make: fn(&Path, &Path) -> PathBuf,
    exit: i32,
    says: &'static str,
}

const FILM_CASES: &[FilmCase] = &[
    FilmCase {
        name: "an empty file",
        make: |_, dir| write(dir.join("zero.mp4"), Vec::new()),
        exit: 2,
        says: "zero.mp4 is empty",
    },
    FilmCase {
        name: "64 KiB of zero bytes",
        make: |_, dir| write(dir.join("zeros.mp4"), vec![0; 64 * 1024]),
        exit: 1,
        says: "zeros.mp4: not a readable media file",
    },
    FilmCase {
        name: "an MP4 whose first 4 KiB are overwritten",
        make: |film, dir| {
            let mut bytes = std::fs::read(film).expect("reading the film");
            bytes[..4096]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i * 7) as u8);
            write(dir.join("headless.mp4"), bytes)
        },
        exit: 1,
        says: "headless.mp4: not a readable media file",
    },
    FilmCase {
        name: "an MP4 cut off before its index",
        make: |film, dir| {
            let bytes = std::fs::read(film).expect("reading the film");
            write(dir.join("cut-off.mp4"), bytes[..bytes.len() / 2].to_vec())
        },
        exit: 1,
        says: "cut-off.mp4: truncated",
    },
    FilmCase {
        name: "an MP4 whose index is garbled",
        make: |film, dir| {
            let mut bytes = std::fs::read(film).expect("reading the film");
            let index = find(&bytes, b"moov").expect("an MP4 index");
            bytes[index + 100..index + 400].fill(0xab);
            write(dir.join("garbled-index.mp4"), bytes)
        },
        exit: 1,
        says: "garbled-index.mp4",
    },
    FilmCase {
        name: "sound without a picture",
        make: |_, dir| {
            let out = dir.join("tone.m4a");
            ffmpeg(&["-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac"], &out);
            out
        },
        exit: 1,
        says: "tone.m4a has no video stream",
    },
    FilmCase {
        name: "a variable frame rate",
        make: |_, dir| variable_rate_film(dir),
        exit: 1,
        says: "variable-rate.mp4: variable frame rate",
    },
    FilmCase {
        name: "a transport stream cut in half, under the id of the whole film",
        make: |film, dir| {
            let whole = dir.join("whole.ts");
            let film = film.to_string_lossy().into_owned();
            ffmpeg(&["-i", &film, "-c", "copy", "-f", "mpegts"], &whole);
            let bytes = std::fs::read(&whole).expect("reading the stream");
            write(
                dir.join("half.ts"),
                bytes[..bytes.len() / 2 / 188 * 188].to_vec(),
            )
        },
        exit: 1,
        says: "already registered",
    },
];

fn write(path: PathBuf, bytes: Vec<u8>) -> PathBuf {
    std::fs::write(&path, bytes).expect("writing the film");
    path
}

/// The plan the films with saved work are registered with: 4 s chunks, so
/// that a 10 s film has three.
const SHORT_PLAN: PlanParams = PlanParams {
    chunk_seconds: 4.0,
    overlap_seconds: 1.0,
};

/// `film` registered with [`SHORT_PLAN`], its chunk 0 completed with the
/// film's first shot.
async fn resumable_film(db: &Db, film: &Film) -> Uuid {
    let media = shotlist_shared::probe::probe(&film.path)
        .await
        .expect("probe");
    let id = Uuid::new_v4();
    db.register_film(id, &film.path.to_string_lossy(), &media, SHORT_PLAN)
        .await
        .expect("registered");
    let (token, end) = claimed(db, id, 0).await;
    let shots = [shot(0, 60, "the first shot"), shot(60, end, "the second")];
    db.complete_chunk(id, 0, token, &shots)
        .await
        .expect("chunk 0 saved");
    id
}

#[tokio::test]
async fn broken_films_are_refused_naming_the_file_and_a_resumed_film_keeps_its_chunk() {
    let film = short_film().await;
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = resumable_film(&db, &film).await;
    let before = saved_state(&client, id).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Failures::default();
    for (n, case) in FILM_CASES.iter().enumerate() {
        let path = (case.make)(&film.path, dir.path());
        let out = dir.path().join(format!("out-{n}"));
        let args: Vec<String> = [
            "process",
            &path.to_string_lossy(),
            "--database-url",
            &url,
            "--video-id",
            &id.to_string(),
            "--chunk-seconds",
            "4",
            "--overlap-seconds",
            "1",
            "--out",
            &out.to_string_lossy(),
        ]
        .map(String::from)
        .into();
        let run = shotlist(&args, &[]).await;
        let problem = run.refusal_problem(case.exit, case.says);
        failures.check(case.name, problem.is_none(), || problem.unwrap_or_default());
        failures.check(case.name, !out.exists(), || "left its output folder".into());
        let now = saved_state(&client, id).await;
        failures.check(case.name, now == before, || {
            format!("changed what was saved:\n{before}\n{now}")
        });
    }
    failures.assert_none("unreadable film", FILM_CASES.len());
}

/// What the sheet of a film with odd timing must say.
struct Timing {
    name: &'static str,
    fps: &'static str,
    duration_frames: i64,
    /// Every shot's first frame and its label.
    starts: Vec<(i64, &'static str)>,
    /// The last shot's end label.
    end: &'static str,
}

#[tokio::test]
async fn films_with_odd_timing_get_their_exact_frames_and_non_drop_timecodes() {
    let film = short_film().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ntsc = {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || drop_frame_film(&dir))
            .await
            .expect("making the 29.97 film")
    };
    let huge = huge_declared_duration(&film.path, dir.path());
    let (_db, url) = fresh_db().await;
    let cases = [
        (
            huge,
            Timing {
                name: "headers that declare 50 days",
                fps: "25/1",
                duration_frames: 250,
                starts: vec![
                    (0, "00:00:00:00"),
                    (SHORT_FILM_CUTS[0], "00:00:02:10"),
                    (SHORT_FILM_CUTS[1], "00:00:05:05"),
                ],
                end: "00:00:10:00",
            },
        ),
        (
            ntsc,
            Timing {
                name: "29.97 fps with a drop-frame timecode track from 01:00:00;00",
                fps: "30000/1001",
                duration_frames: 1_900,
                starts: vec![
                    (0, "00:00:00:00"),
                    (900, "00:00:30:00"),
                    (1_800, "00:01:00:00"),
                ],
                end: "00:01:03:10",
            },
        ),
    ];
    let mut failures = Failures::default();
    for (n, (path, expected)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("sheet-{n}"));
        let args: Vec<String> = [
            "process",
            &path.to_string_lossy(),
            "--database-url",
            &url,
            "--out",
            &out.to_string_lossy(),
        ]
        .map(String::from)
        .into();
        let run = shotlist(&args, &[]).await;
        if run.code != Some(0) {
            failures.check(expected.name, false, || {
                format!("exit {:?}: {}", run.code, run.stderr)
            });
            continue;
        }
        let sheet: Value = std::fs::read(out.join("sheet.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let shots = sheet["shots"].as_array().cloned().unwrap_or_default();
        let starts: Vec<(i64, String)> = shots
            .iter()
            .map(|s| {
                let frame = s["startFrame"].as_i64().unwrap_or(-1);
                (frame, s["start"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        let expected_starts: Vec<(i64, String)> = expected
            .starts
            .iter()
            .map(|(f, label)| (*f, label.to_string()))
            .collect();
        failures.check(expected.name, sheet["fps"] == expected.fps, || {
            format!("fps {}, not {}", sheet["fps"], expected.fps)
        });
        failures.check(
            expected.name,
            sheet["durationFrames"] == expected.duration_frames,
            || {
                format!(
                    "{} frames, not {}",
                    sheet["durationFrames"], expected.duration_frames
                )
            },
        );
        failures.check(expected.name, starts == expected_starts, || {
            format!("shots start at {starts:?}, not {expected_starts:?}")
        });
        let last_end = shots.last().map(|s| s["end"].clone()).unwrap_or_default();
        failures.check(expected.name, last_end == expected.end, || {
            format!("the last shot ends at {last_end}, not {}", expected.end)
        });
        let fps: Fps = expected.fps.parse().expect("a rate");
        for s in &shots {
            for (label, frame) in [("start", "startFrame"), ("end", "endFrame")] {
                let (label, frame) = (s[label].as_str().unwrap_or_default(), s[frame].as_i64());
                failures.check(
                    expected.name,
                    parse_timecode(label, fps).ok() == frame,
                    || format!("{label} does not read back as frame {frame:?}"),
                );
                failures.check(
                    expected.name,
                    frame.map(|f| timecode(f, fps)).as_deref() == Some(label),
                    || format!("{label} is not frame {frame:?}'s label"),
                );
            }
        }
    }
    failures.assert_none("odd timing", cases.len());
}

// Provider answers.

/// What a junk Gemini says at one step; every other step answers well.
#[derive(Debug, Clone, PartialEq)]
enum GeminiJunk {
    /// Starting the upload: 200 without an upload URL.
    NoUploadUrl,
    /// Starting the upload: an upload URL that is not http(s).
    UploadUrl(&'static str),
    /// Finishing the upload: this status and body.
    Uploaded(u16, String),
    /// `generateContent`: this status and body.
    Answer(u16, String),
}

#[derive(Clone)]
struct JunkGemini {
    junk: GeminiJunk,
    base_url: Arc<Mutex<String>>,
}

impl JunkGemini {
    fn base_url(&self) -> String {
        self.base_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The well-formed file every good step names.
    fn file(&self) -> Value {
        json!({
            "name": "files/junk1",
            "uri": format!("{}/v1beta/files/junk1", self.base_url()),
            "mimeType": "video/mp4",
            "state": "ACTIVE",
            "expirationTime": "2099-01-01T00:00:00Z",
        })
    }
}

/// A Gemini that answers one step with `junk`.
fn junk_gemini(junk: GeminiJunk) -> FakeServer {
    let state = JunkGemini {
        junk,
        base_url: Arc::default(),
    };
    let router = Router::new()
        .route("/upload/v1beta/files", post(junk_upload))
        .route("/v1beta/files/{id}", get(junk_file))
        .route("/v1beta/models/{call}", post(junk_generate))
        .with_state(state.clone());
    let server = FakeServer::start(router);
    *state.base_url.lock().unwrap_or_else(|e| e.into_inner()) = server.base_url().to_string();
    server
}

fn raw(status: u16, body: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("a status");
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn junk_upload(
    State(gemini): State<JunkGemini>,
    Query(query): Query<HashMap<String, String>>,
    _body: Bytes,
) -> Response {
    match (query.contains_key("upload_id"), &gemini.junk) {
        (false, GeminiJunk::NoUploadUrl) => raw(200, "{}"),
        (false, junk) => {
            let url = match junk {
                GeminiJunk::UploadUrl(url) => url.to_string(),
                _ => format!("{}/upload/v1beta/files?upload_id=1", gemini.base_url()),
            };
            (StatusCode::OK, [("x-goog-upload-url", url)], "").into_response()
        }
        (true, GeminiJunk::Uploaded(status, body)) => raw(*status, body),
        (true, _) => axum::Json(json!({ "file": gemini.file() })).into_response(),
    }
}

async fn junk_file(State(gemini): State<JunkGemini>) -> Response {
    axum::Json(gemini.file()).into_response()
}

async fn junk_generate(State(gemini): State<JunkGemini>, _body: Bytes) -> Response {
    match &gemini.junk {
        GeminiJunk::Answer(status, body) => raw(*status, body),
        _ => raw(200, &answer_with_text(r#"{"shots": []}"#)),
    }
}

/// A complete `generateContent` answer whose text is `text`.
fn answer_with_text(text: &str) -> String {
    let part = json!({ "text": text });
    json!({ "candidates": [{ "content": { "parts": [part] }, "finishReason": "STOP" }] })
        .to_string()
}

/// Who answers a case: a junk Gemini, or the fake Replicate with one
/// prediction's output.
#[derive(Debug, Clone)]
enum Provider {
    Gemini(GeminiJunk),
    Replicate(Value),
}

struct ProviderCase {
    name: &'static str,
    provider: Provider,
    says: &'static str,
}

fn provider_cases() -> Vec<ProviderCase> {
    use GeminiJunk::*;
    let gemini = |name, junk, says| ProviderCase {
        name,
        provider: Provider::Gemini(junk),
        says,
    };
    let replicate = |name, output, says| ProviderCase {
        name,
        provider: Provider::Replicate(output),
        says,
    };
    let web_page = || "<html>Bad Gateway</html>".to_string();
    vec![
        gemini(
            "an upload without an upload URL",
            NoUploadUrl,
            "without an upload URL",
        ),
        gemini(
            "an upload URL that is a file",
            UploadUrl("file:///etc/passwd"),
            "not http(s)",
        ),
        gemini(
            "an upload answered with a web page",
            Uploaded(200, web_page()),
            "not a file",
        ),
        gemini(
            "an uploaded file named outside files/",
            Uploaded(200, json!({ "file": { "name": "../../etc" } }).to_string()),
            "named the file",
        ),
        gemini(
            "an answer that is a web page",
            Answer(200, web_page()),
            "not a generateContent response",
        ),
        gemini(
            "an answer without a candidate",
            Answer(200, "{}".into()),
            "without a candidate",
        ),
        gemini(
            "an answer whose candidates are text",
            Answer(200, json!({ "candidates": "none" }).to_string()),
            "not a generateContent response",
        ),
        gemini(
            "a refusal that is not Google's JSON",
            Answer(400, "Bad Request".into()),
            "400",
        ),
        gemini(
            "an answer of shots that are numbers",
            Answer(200, answer_with_text(r#"{"shots": [1, 2]}"#)),
            "shots[0] is not an object",
        ),
        replicate(
            "an output that is a number",
            json!(42),
            "neither text nor a list of texts",
        ),
        replicate(
            "an output that is an object",
            json!({ "shots": [] }),
            "neither text nor a list of texts",
        ),
        replicate(
            "an output of numbers",
            json!([1, 2]),
            "neither text nor a list of texts",
        ),
        replicate("an output of nothing", Value::Null, "the answer was empty"),
    ]
}

/// The model `provider` stands for, asking the server it runs (kept alive
/// by the returned guard).
fn provider_model(provider: &Provider, db: &Db) -> (Arc<dyn VideoModel>, Box<dyn std::any::Any>) {
    let timeouts = HttpTimeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(10),
    };
    match provider {
        Provider::Gemini(junk) => {
            let server = junk_gemini(junk.clone());
            let pool = KeyPool::new("gemini", vec!["AIzaBADINPUTkey".to_string().into()], None);
            let config = GeminiConfig {
                base_url: server.base_url().to_string(),
                model: DEFAULT_MODEL.to_string(),
                keys: Arc::new(pool),
                timeouts,
                processing_wait: Duration::from_secs(5),
                poll_interval: Duration::from_millis(50),
                upload_wait: Duration::from_secs(3),
            };
            let gemini = Gemini::new(config, Arc::new(db.clone())).expect("a Gemini");
            (Arc::new(gemini), Box::new(server))
        }
        Provider::Replicate(output) => {
            let keys = fake_replicate::keys(1);
            let fake = FakeReplicate::start(keys.clone());
            // An answer that cannot be read is asked for once more.
            for _ in 0..2 {
                fake.script(Script::at_once(Outcome::Output(output.clone())));
            }
            let pool = KeyPool::from_list(
                "replicate",
                KEYS_VARIABLE,
                &keys.join(","),
                std::num::NonZeroU32::new(CREATES_PER_MINUTE),
            )
            .expect("a key pool");
            let mut config = ReplicateConfig::new(Arc::new(pool));
            config.base_url = fake.base_url().to_string();
            config.timeouts = timeouts;
            config.prefer_wait = Duration::from_secs(5);
            config.poll = PollBackoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
            };
            let replicate = Replicate::new(config).expect("a Replicate");
            (Arc::new(replicate), Box::new(fake))
        }
    }
}

#[tokio::test]
async fn junk_provider_answers_fail_the_attempt_naming_the_problem_and_keep_saved_chunks() {
    let film = short_film().await;
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let config = WorkerConfig {
        chunk_timeout: Duration::from_secs(20),
        ..WorkerConfig::default()
    };
    let cases = provider_cases();
    let mut failures = Failures::default();
    for case in &cases {
        let id = resumable_film(&db, &film).await;
        let saved = db.chunk_results(id).await.expect("results").chunks[0].clone();
        let (model, _server) = provider_model(&case.provider, &db);
        let analyzer = ModelAnalyzer {
            cuts: LocalAnalyzer::default(),
            model,
            settings: ModelSettings {
                chunk_timeout: config.chunk_timeout,
                ..ModelSettings::default()
            },
        };
        let done = worker::process_chunk(&db, &analyzer, id, 1, &config).await;
        let error = match &done {
            Ok(Done::Retry { error, .. } | Done::Failed { error, .. }) => error.clone(),
            other => {
                failures.check(case.name, false, || {
                    format!("not a failed attempt: {other:?}")
                });
                continue;
            }
        };
        failures.check(case.name, error.contains(case.says), || {
            format!("the error does not say {:?}: {error}", case.says)
        });
        let results = db.chunk_results(id).await.expect("results");
        let chunk = &results.chunks[1];
        failures.check(
            case.name,
            chunk.error.as_deref() == Some(error.as_str()),
            || format!("chunk 1 records {:?}", chunk.error),
        );
        failures.check(
            case.name,
            chunk.shots.is_empty() && chunk.status != "completed",
            || format!("chunk 1 was saved: {chunk:?}"),
        );
        let kept = &results.chunks[0];
        failures.check(
            case.name,
            kept.shots == saved.shots && kept.status == "completed",
            || format!("chunk 0 changed: {kept:?}"),
        );
        let secret = saved_state(&client, id).await.to_string();
        failures.check(
            case.name,
            !secret.contains("AIzaBADINPUTkey") && !secret.contains("r8_FAKE"),
            || "a key was stored".into(),
        );
    }
    failures.assert_none("provider answer", cases.len());
}
