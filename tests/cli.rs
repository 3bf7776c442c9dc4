//! The `shotlist` binary as a user runs it: a real film through the embedded
//! default database, and one-line errors with a non-zero exit for bad input.
//!
//! The first test to need the binary builds it ([`shotlist_bin`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shotlist_tests::cli_bin::{output_of as run, shotlist_command};

/// How long the interrupt test waits for a line before it gives up.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A `shotlist` command with the embedded default database (no
/// `DATABASE_URL` from the environment, and no `shotlist serve` a developer
/// left running to join) and quiet logs.
fn shotlist() -> Command {
    shotlist_command()
}

/// The real footage from the shared media folder beside the checkout.
fn city_film() -> PathBuf {
    shotlist_tests::film::city_footage()
}

/// Asserts a failed run: non-zero exit, nothing on stdout, and exactly one
/// stderr line, `shotlist: error: ...`, that contains `expected`.
fn assert_one_line_error(command: &mut Command, expected: &str) -> String {
    let (output, stdout, stderr) = run(command);
    assert!(!output.status.success(), "exit status {:?}", output.status);
    assert_eq!(stdout, "", "nothing on stdout on failure");
    let lines: Vec<&str> = stderr.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("shotlist: error: "),
        "the error line comes last: {stderr:?}"
    );
    assert!(last.contains(expected), "{last:?} should say {expected:?}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr:?}");
    assert!(
        !stderr.contains("RUST_BACKTRACE"),
        "no backtrace: {stderr:?}"
    );
    stderr
}

#[test]
fn real_film_through_the_embedded_database_gives_a_contiguous_sheet() {
    let out = tempfile::tempdir().expect("tempdir");
    let (output, stdout, stderr) = run(shotlist()
        .arg("process")
        .arg(city_film())
        .arg("--out")
        .arg(out.path()));
    assert!(output.status.success(), "shotlist failed: {stderr}");

    let json_path = out.path().join("sheet.json");
    let csv_path = out.path().join("sheet.csv");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "four paths (no details.json without details) and a summary: {stdout:?}"
    );
    assert_eq!(Path::new(lines[0]), json_path);
    assert_eq!(Path::new(lines[1]), csv_path);
    assert_eq!(Path::new(lines[2]), out.path().join("sheet.xlsx"));
    assert_eq!(Path::new(lines[3]), out.path().join("sheet.docx"));
    assert!(
        !out.path().join("details.json").exists(),
        "no details given"
    );

    let sheet: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("read sheet.json"))
            .expect("sheet.json is JSON");
    assert_eq!(sheet["fps"], "25/1");
    assert_eq!(sheet["durationFrames"], 190);
    assert_eq!(sheet["totalChunks"], 1);
    assert_eq!(sheet["completedChunks"], 1);
    assert_eq!(sheet["failedChunks"], 0);
    assert_eq!(sheet["status"], "complete");
    let shots = sheet["shots"].as_array().expect("shots");
    assert!(!shots.is_empty(), "at least one shot");
    assert_eq!(shots[0]["start"], "00:00:00:00");
    assert_eq!(shots[0]["startFrame"], 0);
    for (i, pair) in shots.windows(2).enumerate() {
        assert_eq!(
            pair[0]["endFrame"],
            pair[1]["startFrame"],
            "shot {} ends where the next starts",
            i + 1
        );
        assert_eq!(pair[0]["end"], pair[1]["start"]);
    }
    for (i, shot) in shots.iter().enumerate() {
        assert_eq!(shot["number"], i + 1, "numbered 1..N");
    }
    let last = shots.last().expect("a last shot");
    assert_eq!(last["endFrame"], 190);
    assert_eq!(last["end"], "00:00:07:15");

    let summary = format!("{} shots, 1/1 chunks completed, 0 failed", shots.len());
    assert_eq!(lines[4], summary);

    let mut reader = csv::Reader::from_path(&csv_path).expect("open sheet.csv");
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header,
        ["number", "start", "end", "type", "description", "dialogue"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), shots.len(), "one CSV row per shot");
    assert_eq!(&rows[0][1], "00:00:00:00");
    assert_eq!(&rows[rows.len() - 1][2], "00:00:07:15");
}

#[test]
fn a_run_whose_stdout_and_stderr_readers_left_still_writes_its_sheet() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = shotlist()
        .arg("process")
        .arg(city_film())
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shotlist");
    // As `shotlist process FILM 2>&1 | head -1` does once it has its line:
    // every later write to either pipe fails with EPIPE.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait for shotlist");
    assert!(status.success(), "a closed pipe is no failure: {status:?}");
    for file in ["sheet.json", "sheet.csv", "sheet.xlsx", "sheet.docx"] {
        assert!(out.path().join(file).is_file(), "{file} is written");
    }
}

#[test]
fn an_output_folder_whose_file_names_are_taken_by_a_link_or_a_fifo_is_refused_before_any_work() {
    let out = tempfile::tempdir().expect("tempdir");
    let elsewhere = out.path().join("elsewhere.json");
    std::fs::write(&elsewhere, "kept").expect("write");
    std::os::unix::fs::symlink(&elsewhere, out.path().join("sheet.json")).expect("symlink");
    let fifo = out.path().join("sheet.docx");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo");
    let mut command = shotlist();
    command
        .arg("process")
        .arg(city_film())
        .arg("--out")
        .arg(out.path());
    let stderr = assert_one_line_error(
        &mut command,
        "sheet.json is a symbolic link, sheet.docx is a FIFO",
    );
    assert!(!stderr.contains("chunk"), "no chunk was analyzed: {stderr}");
    assert_eq!(std::fs::read_to_string(&elsewhere).expect("read"), "kept");
}

#[test]
fn missing_film_is_a_one_line_error() {
    let stderr = assert_one_line_error(
        shotlist().args(["process", "/no/such/film.mp4"]),
        "/no/such/film.mp4 does not exist",
    );
    assert_eq!(stderr.lines().count(), 1, "only the error line: {stderr:?}");
}

#[test]
fn empty_film_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let film = dir.path().join("empty.mp4");
    std::fs::write(&film, b"").expect("write");
    assert_one_line_error(shotlist().arg("process").arg(&film), "is empty");
}

#[test]
fn text_file_named_mp4_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let film = dir.path().join("notes.mp4");
    std::fs::write(&film, "These are meeting notes, not a video.\n").expect("write");
    let out = dir.path().join("out");
    assert_one_line_error(
        shotlist().arg("process").arg(&film).arg("--out").arg(&out),
        "notes.mp4",
    );
    assert!(!out.exists(), "no sheet is written for a bad film");
}

#[test]
fn overlap_as_long_as_the_chunk_is_refused_naming_both_flags() {
    assert_one_line_error(
        shotlist().arg("process").arg(city_film()).args([
            "--chunk-seconds",
            "180",
            "--overlap-seconds",
            "180",
        ]),
        "--overlap-seconds (180) must be smaller than --chunk-seconds (180)",
    );
}

#[test]
fn zero_concurrency_is_refused_naming_the_flag() {
    assert_one_line_error(
        shotlist()
            .arg("process")
            .arg(city_film())
            .args(["--concurrency", "0"]),
        "--concurrency must be between 1 and 64, got 0",
    );
}

#[test]
fn an_output_folder_that_cannot_be_made_fails_before_any_work() {
    let started = std::time::Instant::now();
    let stderr = assert_one_line_error(
        shotlist()
            .arg("process")
            .arg(city_film())
            .args(["--out", "/proc/shotlist-cannot-write-here"]),
        "could not create the output folder /proc/shotlist-cannot-write-here",
    );
    assert!(!stderr.contains("PostgreSQL"), "{stderr}");
    eprintln!("failed after {:?}", started.elapsed());
}

#[test]
fn unparsable_flag_value_is_a_one_line_error() {
    assert_one_line_error(
        shotlist()
            .arg("process")
            .arg(city_film())
            .args(["--chunk-seconds", "three"]),
        "--chunk-seconds",
    );
}

#[test]
fn unreachable_database_is_an_error_without_the_password() {
    let url = "postgresql://u:secretpw@127.0.0.1:1/x";
    let stderr = assert_one_line_error(
        shotlist()
            .arg("process")
            .arg(city_film())
            .args(["--database-url", url]),
        "127.0.0.1",
    );
    assert!(!stderr.contains("secretpw"), "password leaked: {stderr:?}");

    // The same through the environment, with logs at their most verbose.
    let (output, stdout, stderr) = run(shotlist()
        .arg("process")
        .arg(city_film())
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "trace"));
    assert!(!output.status.success());
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("shotlist: error: "),
        "{stderr:?}"
    );
    assert!(
        !stdout.contains("secretpw") && !stderr.contains("secretpw"),
        "password leaked: {stderr:?}"
    );
}

#[test]
fn help_does_not_show_the_database_url_from_the_environment() {
    let (output, stdout, _) = run(shotlist()
        .args(["process", "--help"])
        .env("DATABASE_URL", "postgresql://u:secretpw@127.0.0.1:1/x"));
    assert!(output.status.success());
    assert!(stdout.contains("--database-url"), "{stdout}");
    assert!(
        !stdout.contains("secretpw"),
        "password shown in --help: {stdout}"
    );
}

#[test]
fn export_from_an_unreachable_database_never_shows_the_password() {
    let url = "postgresql://u:secretpw@127.0.0.1:1/x";
    let id = "5b0c2f5e-7a49-4c1e-9d0a-4a1f1c7d2e10";
    let stderr = assert_one_line_error(
        shotlist().args(["export", id, "--format", "xlsx", "--database-url", url]),
        "127.0.0.1",
    );
    assert!(!stderr.contains("secretpw"), "password leaked: {stderr:?}");

    let (output, stdout, stderr) = run(shotlist()
        .args(["export", id, "--format", "xlsx"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "trace"));
    assert!(!output.status.success());
    assert!(
        !stdout.contains("secretpw") && !stderr.contains("secretpw"),
        "password leaked: {stderr:?}"
    );
    let (output, stdout, _) = run(shotlist()
        .args(["export", "--help"])
        .env("DATABASE_URL", url));
    assert!(output.status.success());
    assert!(
        stdout.contains("--database-url") && !stdout.contains("secretpw"),
        "{stdout}"
    );
}

/// Starts `command` (a `shotlist process`) with the embedded database's
/// debug lines on, and a thread that sends each line of its stderr.
fn spawn_with_stderr_lines(
    mut command: Command,
) -> (
    std::process::Child,
    mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let mut child = command
        .env("RUST_LOG", "shotlist_shared::localdb=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shotlist");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines, reader)
}

/// A run ended by Ctrl-C: exit status 130 and `interrupted` as the last
/// line of `stderr`.
fn assert_interrupted(status: std::process::ExitStatus, stderr: &[String]) {
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after Ctrl-C; stderr: {stderr:?}"
    );
    assert_eq!(
        stderr.last().map(String::as_str),
        Some("shotlist: error: interrupted")
    );
}

/// Sends SIGINT to `child`, as Ctrl-C in a terminal does.
fn interrupt(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "SIGINT sent");
}

#[test]
fn ctrl_c_during_start_up_removes_the_embedded_database() {
    let mut command = shotlist();
    command.arg("process").arg(city_film());
    let (mut child, lines, reader) = spawn_with_stderr_lines(command);
    let next_line = || {
        lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("shotlist said something")
    };
    while !next_line().contains("starting the embedded PostgreSQL") {}
    interrupt(&child);

    let status = child.wait().expect("shotlist ends");
    let rest: Vec<String> = lines.iter().collect();
    reader.join().expect("reader thread");
    assert_interrupted(status, &rest);
    let dir = rest
        .iter()
        .find_map(|line| line.split("dir=").nth(1))
        .map(|dir| PathBuf::from(dir.trim()))
        .expect("the cluster's folder was logged");
    assert!(!dir.exists(), "{} was removed", dir.display());
}

/// The film is probed while the database starts; a Ctrl-C that came once
/// the database was up waited for the probe, which may take up to its
/// timeout (here an ffprobe that never answers).
#[test]
fn ctrl_c_while_the_film_is_still_probed_stops_at_once() {
    let bin = tempfile::tempdir().expect("tempdir");
    let pid_file = bin.path().join("ffprobe.pid");
    let ffprobe = bin.path().join("ffprobe");
    std::fs::write(
        &ffprobe,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 600\n",
            pid_file.display()
        ),
    )
    .expect("write the silent ffprobe");
    std::fs::set_permissions(
        &ffprobe,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make the silent ffprobe executable");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.path().to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let mut command = shotlist();
    command
        .arg("process")
        .arg(city_film())
        .env("PATH", std::env::join_paths(paths).expect("PATH"));
    let (mut child, lines, reader) = spawn_with_stderr_lines(command);
    let dir = loop {
        let line = lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("shotlist said something");
        if line.contains("private postgres started") {
            let dir = line.split("dir=").nth(1).expect("the folder is logged");
            break PathBuf::from(dir.trim());
        }
    };
    interrupt(&child);

    // Far less than the 600 s the silent ffprobe would hold a probe.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for shotlist") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The silent ffprobe outlives a killed shotlist; it is still
            // sleeping, so its pid is still its own.
            if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rest: Vec<String> = lines.iter().collect();
    reader.join().expect("reader thread");
    let status = status.expect("Ctrl-C must not wait for the probe to end");
    assert_interrupted(status, &rest);
    assert!(!dir.exists(), "{} was removed", dir.display());
}

#[test]
fn a_model_analyzer_without_its_keys_fails_before_any_work_naming_the_variable() {
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("never-made");
    for (analyzer, variable) in [
        ("gemini", "GEMINI_API_KEYS"),
        ("replicate", "REPLICATE_API_TOKENS"),
    ] {
        let mut command = shotlist();
        command
            .env_remove(variable)
            .args(["process", "--analyzer", analyzer])
            .arg(city_film())
            .arg("--out")
            .arg(&target);
        let (output, _, _) = run(&mut command);
        assert_eq!(output.status.code(), Some(2), "{analyzer}: a usage error");
        assert_one_line_error(&mut command, &format!("{variable} is not set"));
        assert!(!target.exists(), "{analyzer}: no output folder was made");
    }
    let mut unknown = shotlist();
    unknown
        .args(["process", "--analyzer", "openai"])
        .arg(city_film());
    assert_one_line_error(&mut unknown, "openai");
}

#[test]
fn real_film_through_the_gemini_analyzer_takes_the_models_words_and_keeps_the_cuts() {
    use shotlist_tests::fake_gemini::{keys, FakeGemini};
    let keys = keys(1);
    let fake = FakeGemini::start(keys.clone());
    let local = tempfile::tempdir().expect("tempdir");
    let (output, _, stderr) = run(shotlist()
        .arg("process")
        .arg(city_film())
        .arg("--out")
        .arg(local.path()));
    assert!(output.status.success(), "local run failed: {stderr}");
    let model = tempfile::tempdir().expect("tempdir");
    let (output, _, stderr) = run(shotlist()
        .args(["process", "--analyzer", "gemini"])
        .arg(city_film())
        .arg("--out")
        .arg(model.path())
        .env("GEMINI_API_KEYS", &keys[0])
        .env("GEMINI_BASE_URL", fake.base_url())
        .env("RUST_LOG", "trace"));
    assert!(output.status.success(), "gemini run failed: {stderr}");
    assert!(!stderr.contains(&keys[0]), "the key was logged");
    let read = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("sheet.json")).expect("sheet.json"))
            .expect("JSON")
    };
    let (local, model) = (read(local.path()), read(model.path()));
    let frames = |sheet: &serde_json::Value| -> Vec<(i64, i64)> {
        sheet["shots"]
            .as_array()
            .expect("shots")
            .iter()
            .map(|s| {
                (
                    s["startFrame"].as_i64().unwrap(),
                    s["endFrame"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(frames(&model), frames(&local), "the model moved a cut");
    for shot in model["shots"].as_array().expect("shots") {
        let description = shot["description"].as_str().unwrap_or_default();
        assert!(description.starts_with("fake model: shot"), "{shot}");
        assert_eq!(shot["type"], "medium");
    }
    assert_eq!(fake.counters().generate_total(), 1);
}

/// The variables a model analyzer reads, none of which a test may inherit.
const ANALYZER_VARIABLES: [&str; 7] = [
    "GEMINI_API_KEYS",
    "GEMINI_BASE_URL",
    "GEMINI_MODEL",
    "REPLICATE_API_TOKENS",
    "REPLICATE_BASE_URL",
    "REPLICATE_MODEL",
    "SHOTLIST_ANALYZER",
];

/// `shotlist process` of the city film into `out` with `analyzer` (none:
/// the default) and only `vars` of the analyzer variables, logging the
/// embedded database's start.
fn process_with(analyzer: Option<&str>, vars: &[(&str, &str)], out: &Path) -> Command {
    let mut command = shotlist();
    for name in ANALYZER_VARIABLES {
        command.env_remove(name);
    }
    command
        .env("RUST_LOG", "shotlist_shared::localdb=debug")
        .arg("process");
    if let Some(analyzer) = analyzer {
        command.args(["--analyzer", analyzer]);
    }
    command.arg(city_film()).arg("--out").arg(out);
    command.envs(vars.iter().copied());
    command
}

/// A configuration mistake found before any work: exit 2, one stderr line
/// that says `expected`, no database started, no output folder.
fn assert_refused_before_work(command: &mut Command, out: &Path, expected: &str) -> String {
    let (output, _, _) = run(command);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = assert_one_line_error(command, expected);
    assert_eq!(stderr.lines().count(), 1, "nothing was started: {stderr:?}");
    assert!(!out.exists(), "no output folder was made");
    stderr
}

#[test]
fn a_gemini_analyzer_with_a_bad_base_url_or_model_fails_before_any_work() {
    for (name, value) in [
        ("GEMINI_BASE_URL", "ftp://127.0.0.1/"),
        ("GEMINI_BASE_URL", "http://127.0.0.1:9/?alt=json"),
        ("GEMINI_MODEL", "gemini 2.5 pro"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let vars = [("GEMINI_API_KEYS", "AIzaCLIsecret"), (name, value)];
        let mut command = process_with(Some("gemini"), &vars, &out);
        let stderr = assert_refused_before_work(&mut command, &out, name);
        assert!(!stderr.contains("AIzaCLIsecret"), "{stderr:?}");
    }
}

#[test]
fn a_model_analyzer_base_url_with_a_password_is_refused_without_showing_it() {
    for (analyzer, keys, variable) in [
        ("gemini", "GEMINI_API_KEYS", "GEMINI_BASE_URL"),
        ("replicate", "REPLICATE_API_TOKENS", "REPLICATE_BASE_URL"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let vars = [
            (keys, "sk_CLIsecret"),
            (variable, "https://deploy:hunter2@127.0.0.1/"),
        ];
        let mut command = process_with(Some(analyzer), &vars, &out);
        let stderr = assert_refused_before_work(&mut command, &out, variable);
        assert!(
            !stderr.contains("hunter2"),
            "the password is shown: {stderr:?}"
        );
        assert!(
            !stderr.contains("CLIsecret"),
            "the key is shown: {stderr:?}"
        );
    }
}

#[test]
fn a_model_analyzer_key_list_mistake_is_one_line_without_the_key() {
    for (analyzer, name, value) in [
        (
            "gemini",
            "GEMINI_API_KEYS",
            "AIzaCLIsecret1,,AIzaCLIsecret2",
        ),
        ("gemini", "GEMINI_API_KEYS", "AIzaCLI secret1"),
        ("replicate", "REPLICATE_API_TOKENS", " , "),
        ("replicate", "REPLICATE_API_TOKENS", "r8_CLIsecret\u{7}x"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let mut command = process_with(Some(analyzer), &[(name, value)], &out);
        let stderr = assert_refused_before_work(&mut command, &out, name);
        assert!(!stderr.contains("CLI"), "a key is shown: {stderr:?}");
    }
}

#[test]
fn a_bad_shotlist_analyzer_variable_is_refused_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut command = process_with(None, &[("SHOTLIST_ANALYZER", "gemnii")], &out);
    assert_refused_before_work(&mut command, &out, "SHOTLIST_ANALYZER");
}

#[test]
fn a_run_whose_every_chunk_failed_writes_the_gaps_and_exits_non_zero() {
    // Nothing listens on a port we bound and closed: every call is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = tempfile::tempdir().expect("tempdir");
    let mut command = shotlist();
    command
        .args(["process", "--analyzer", "gemini", "--chunk-timeout", "10"])
        .arg(city_film())
        .arg("--out")
        .arg(out.path())
        .env("GEMINI_API_KEYS", "k-never-shown-0123")
        .env("GEMINI_BASE_URL", format!("http://127.0.0.1:{port}"));
    let (output, stdout, stderr) = run(&mut command);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("0/1 chunks completed, 1 failed"),
        "{stdout}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("shotlist: error: no chunk could be analyzed: chunk 0: gemini:"),
        "{stderr}"
    );
    assert!(last.contains("connect"), "{last}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("k-never-shown-0123"),
        "the key leaked: {stderr}"
    );
    let sheet: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("sheet.json")).expect("sheet.json"))
            .expect("JSON");
    assert_eq!(sheet["status"], "partial");
    assert_eq!(sheet["failedChunks"], 1);
    assert_eq!(sheet["gaps"][0]["endFrame"], 190);
}
