//! `shotlist serve` as a user runs it: the real binary on 127.0.0.1, a real
//! PostgreSQL (a test database, or serve's own embedded one), real films;
//! and `shotlist process` finding it through its announcement file.
//!
//! Every serve here announces itself in a folder of its own test
//! (`SHOTLIST_SERVE_FILE`), so no test sees another's serve, nor a serve a
//! developer left running.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::db::DbError;
use shotlist_shared::export::{trade_headers, Lang};
use shotlist_shared::page::PROGRESS_PAGE;
use shotlist_shared::plan::PlanParams;
use shotlist_shared::runner::{run_local, RunOptions};
use shotlist_shared::sheet::FilmDetails;
use shotlist_tests::cli_bin::shotlist_bin;
use shotlist_tests::film::city_footage;
use shotlist_tests::pg::fresh_db;
use uuid::Uuid;

/// How long a test waits for serve to say it is serving.
const START_LIMIT: Duration = Duration::from_secs(60);

/// How long a dropped serve may take to stop and remove its database.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The policy the page is served with (the status function sends the same).
const CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A `shotlist serve --port 0` announcing itself in a folder of its own;
/// stopped with Ctrl-C when dropped unless it was interrupted.
struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`, as it printed it.
    url: String,
    port: u16,
    /// Its announcement file.
    file: PathBuf,
    /// Its stderr so far (with the embedded database's debug lines).
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    _folder: tempfile::TempDir,
}

impl Serve {
    /// Starts serve on `database_url`, or on its embedded database.
    fn start(database_url: Option<&str>) -> Serve {
        let folder = tempfile::tempdir().expect("tempdir");
        // A folder serve has to make: it must make it private.
        let file = folder.path().join("announce").join("serve.json");
        let mut command = Command::new(shotlist_bin());
        command
            .args(["serve", "--port", "0"])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "shotlist_shared::localdb=debug")
            .env("SHOTLIST_SERVE_FILE", &file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        let mut child = command.spawn().expect("start shotlist serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let (first_tx, first) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            // Kept reading to the end, so serve never writes to a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = first_tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                collected.lock().expect("stderr lines").push(line);
            }
        });
        let mut serve = Serve {
            child,
            url: String::new(),
            port: 0,
            file,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
            _folder: folder,
        };
        let line = first.recv_timeout(START_LIMIT).unwrap_or_else(|_| {
            panic!(
                "shotlist serve printed no line within {START_LIMIT:?}; stderr: {:?}",
                serve.stderr_lines()
            )
        });
        let url = line
            .strip_prefix("serving ")
            .unwrap_or_else(|| panic!("serve's first line is {line:?}, not \"serving URL\""));
        serve.port = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("serve announced {url:?}, not http://127.0.0.1:PORT"));
        assert_ne!(serve.port, 0, "the real port, not the 0 asked for");
        serve.url = url.to_string();
        serve
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lines").clone()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for serve to end.
    fn interrupt(mut self) -> (ExitStatus, Vec<String>) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGINT sent");
        let status = self.child.wait().expect("serve ends");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        (status, self.stderr_lines())
    }
}

impl Drop for Serve {
    /// Ctrl-C first, so that serve removes its private database (a killed
    /// serve leaves its PostgreSQL running); a kill only if it does not end.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + STOP_LIMIT;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts a JSON error answer with `status` whose message contains `says`.
async fn assert_error(response: reqwest::Response, status: u16, says: &str) {
    let url = response.url().clone();
    assert_eq!(response.status().as_u16(), status, "{url}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{url}"
    );
    let body: Value = response.json().await.expect("a JSON error");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "{url}: {error:?} should say {says:?}");
}

/// The records of a CSV file, the header row first.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|record| {
            let record = record.expect("a CSV record");
            record.iter().map(str::to_string).collect()
        })
        .collect()
}

/// `shotlist process` of the real footage into `out`, finding serves
/// through `announcement`; its exit status, stdout and stderr.
fn process(announcement: &Path, out: &Path, extra: &[&str]) -> (ExitStatus, String, String) {
    let output = Command::new(shotlist_bin())
        .arg("process")
        .arg(city_footage())
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("SHOTLIST_SERVE_FILE", announcement)
        .stdin(Stdio::null())
        .output()
        .expect("run shotlist process");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `videoId` of the sheet.json `process` wrote in `out`.
fn video_id_in(out: &Path) -> Uuid {
    let sheet: Value = serde_json::from_slice(
        &std::fs::read(out.join("sheet.json")).expect("process wrote sheet.json"),
    )
    .expect("sheet.json is JSON");
    sheet["videoId"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("sheet.json names its film")
}

/// One request written by hand, so its `Host` header is whatever the test
/// says (or missing); the answer's status code.
fn status_for_host(port: u16, host: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = match host {
        Some(host) => format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        None => "GET /health HTTP/1.0\r\n\r\n".to_string(),
    };
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn serve_prints_its_url_answers_health_and_serves_the_page_with_its_security_headers() {
    let (_db, url) = fresh_db().await;
    let serve = Serve::start(Some(&url));

    let health = serve.get("/health").await;
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.expect("JSON"),
        json!({ "ok": true })
    );

    // With a trailing slash too, as the status function serves it.
    for slash in ["", "/"] {
        let page = serve
            .get(&format!("/videos/{}/progress{slash}", Uuid::new_v4()))
            .await;
        assert_eq!(page.status(), 200, "{slash:?}");
        let headers = page.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["content-security-policy"], CSP);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(page.text().await.expect("page"), PROGRESS_PAGE);
    }

    let index = serve.get("/").await;
    assert_eq!(index.status(), 200);
    let text = index.text().await.expect("index");
    assert!(text.contains("/videos/&lt;video id&gt;/progress"), "{text}");

    let announced: Value =
        serde_json::from_slice(&std::fs::read(&serve.file).expect("serve announced itself"))
            .expect("the announcement is JSON");
    assert_eq!(announced["url"], serve.url.as_str());
    assert_eq!(announced["databaseUrl"], url.as_str());
    assert_eq!(announced["pid"], serve.child.id());
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
    };
    assert_eq!(mode(&serve.file) & 0o777, 0o600, "it names a database");
    assert_eq!(mode(serve.file.parent().expect("folder")) & 0o777, 0o700);
}

#[tokio::test]
async fn a_finished_films_sheet_downloads_in_every_format_and_language_under_its_file_name() {
    let (db, url) = fresh_db().await;
    let options = RunOptions {
        details: FilmDetails {
            title: Some("Сталкер".into()),
            country: Some("СССР".into()),
            ..FilmDetails::default()
        },
        ..RunOptions::default()
    };
    let sheet = run_local(&db, &city_footage(), &options, &|_| {})
        .await
        .expect("the footage is analyzed");
    let id = sheet.video_id;
    let serve = Serve::start(Some(&url));

    let progress: Value = serve
        .get(&format!("/videos/{id}"))
        .await
        .json()
        .await
        .expect("the progress document");
    assert_eq!(progress["finished"], true);
    assert_eq!(progress["details"]["title"], "Сталкер");
    let stored = db.get_sheet(id).await.expect("read").expect("stored");
    let stored = serde_json::to_value(&stored).expect("sheet as JSON");
    assert_eq!(progress["sheet"], stored);

    let json_file = serve.get(&format!("/videos/{id}/sheet.json?lang=ru")).await;
    assert_eq!(json_file.status(), 200);
    assert_eq!(json_file.headers()["content-type"], "application/json");
    assert_eq!(
        json_file.headers()["content-disposition"],
        format!("attachment; filename=\"shotlist-{id}.json\"").as_str()
    );
    assert_eq!(
        json_file.json::<Value>().await.expect("JSON"),
        stored,
        "the JSON download is the stored sheet"
    );

    let csv = serve.get(&format!("/videos/{id}/sheet.csv?lang=ru")).await;
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.headers()["content-disposition"],
        format!("attachment; filename=\"shotlist-{id}.ru.csv\"").as_str()
    );
    // Read as bytes: reqwest's text() would drop the byte-order mark
    // unseen. The mark is there once, for Excel on Windows.
    let bytes = csv.bytes().await.expect("CSV");
    let table = bytes
        .strip_prefix(shotlist_shared::export::UTF8_BOM)
        .expect("the trade CSV starts with a UTF-8 byte-order mark");
    let text = std::str::from_utf8(table).expect("UTF-8");
    assert!(!text.contains('\u{FEFF}'), "one mark, at the start");
    let rows = csv_rows(text);
    assert_eq!(rows[0], trade_headers(Lang::Ru));
    assert_eq!(rows.len(), 1 + sheet.shots.len(), "a row per shot");
    let english = serve.get(&format!("/videos/{id}/sheet.csv")).await;
    let rows = csv_rows(&english.text().await.expect("CSV"));
    assert_eq!(rows[0], trade_headers(Lang::En), "English by default");
    // Percent-encoded as a browser may send it, and read as the status
    // function reads it.
    let encoded = serve
        .get(&format!("/videos/{id}/sheet.csv?lang=%72%75"))
        .await;
    assert_eq!(encoded.status(), 200);
    let rows = csv_rows(&encoded.text().await.expect("CSV"));
    assert_eq!(rows[0], trade_headers(Lang::Ru), "lang=%72%75 is ru");

    for (extension, lang) in [
        ("xlsx", "en"),
        ("xlsx", "ru"),
        ("docx", "en"),
        ("docx", "ru"),
    ] {
        let file = serve
            .get(&format!("/videos/{id}/sheet.{extension}?lang={lang}"))
            .await;
        assert_eq!(file.status(), 200, "{extension} {lang}");
        assert_eq!(
            file.headers()["content-disposition"],
            format!("attachment; filename=\"shotlist-{id}.{lang}.{extension}\"").as_str()
        );
        assert!(
            file.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("application/vnd.openxmlformats-officedocument")),
            "{extension}"
        );
        let bytes = file.bytes().await.expect("file");
        assert!(bytes.starts_with(b"PK"), "{extension} {lang} is a zip");
    }
}

#[tokio::test]
async fn before_its_sheet_a_film_is_409_an_unknown_one_404_and_bad_ids_formats_and_languages_400() {
    let (db, url) = fresh_db().await;
    let running = Uuid::new_v4();
    db.register_video(running, 7.6, PlanParams::default())
        .await
        .expect("register a film");
    let serve = Serve::start(Some(&url));

    let progress = serve.get(&format!("/videos/{running}")).await;
    assert_eq!(progress.status(), 200);
    let progress: Value = progress.json().await.expect("JSON");
    assert_eq!(progress["sheet"], Value::Null, "no sheet yet");
    assert_eq!(progress["finished"], false);

    for extension in ["json", "csv", "xlsx", "docx"] {
        let early = serve
            .get(&format!("/videos/{running}/sheet.{extension}"))
            .await;
        assert_error(early, 409, &running.to_string()).await;
    }
    let unknown = Uuid::new_v4();
    for path in [
        format!("/videos/{unknown}"),
        format!("/videos/{unknown}/sheet.csv"),
    ] {
        assert_error(serve.get(&path).await, 404, &unknown.to_string()).await;
    }
    let cases = [
        ("/videos/not-a-film".to_string(), "\"not-a-film\""),
        ("/videos/12345/progress".to_string(), "\"12345\""),
        ("/videos/x'%3B--/sheet.csv".to_string(), "is not a UUID"),
        (format!("/videos/{running}/sheet.pdf"), "\"pdf\""),
        (
            format!("/videos/{running}/sheet.csv?lang=de"),
            "unknown lang \"de\"; expected en or ru",
        ),
        (
            format!("/videos/{running}/sheet.xlsx?lang="),
            "unknown lang \"\"",
        ),
    ];
    for (path, says) in cases {
        assert_error(serve.get(&path).await, 400, says).await;
    }
    for path in [format!("/videos/{running}/notes.txt"), "/films".into()] {
        assert_error(serve.get(&path).await, 404, "no route").await;
    }
    let posted = reqwest::Client::new()
        .post(format!("{}/videos/{running}", serve.url))
        .send()
        .await
        .expect("POST");
    assert_error(posted, 405, "GET only").await;
    assert_eq!(
        serve.get("/health").await.status(),
        200,
        "still serving after all that"
    );
}

#[tokio::test]
async fn a_request_naming_another_host_is_refused_before_any_route() {
    let (_db, url) = fresh_db().await;
    let serve = Serve::start(Some(&url));
    let port = serve.port;
    let rebinding = format!("attacker.example:{port}");
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1));
    for host in [Some(rebinding.as_str()), Some(other_port.as_str()), None] {
        assert_eq!(status_for_host(port, host), 421, "Host {host:?}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        assert_eq!(status_for_host(port, Some(&host)), 200, "Host {host}");
    }
}

#[tokio::test]
async fn process_without_a_database_url_joins_the_running_serve_and_prints_the_page_link() {
    let serve = Serve::start(None);
    let out = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = process(&serve.file, out.path(), &[]);
    assert!(status.success(), "process failed: {stderr}");
    assert!(
        stderr.contains(&format!(
            "using the database of shotlist serve at {}",
            serve.url
        )),
        "{stderr}"
    );
    let id = video_id_in(out.path());
    let link = format!("progress: {}/videos/{id}/progress", serve.url);
    assert!(stderr.lines().any(|line| line == link), "{stderr}");

    // The sheet is in serve's database: serve hands it out.
    let download = serve.get(&format!("/videos/{id}/sheet.json")).await;
    assert_eq!(download.status(), 200);
    let written: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("sheet.json")).expect("read"))
            .expect("JSON");
    assert_eq!(download.json::<Value>().await.expect("JSON"), written);

    // Given serve's database by URL, the run is shown too; given another
    // database, nothing is said and serve never sees the run.
    let announced: Value =
        serde_json::from_slice(&std::fs::read(&serve.file).expect("announcement")).expect("JSON");
    let serves_database = announced["databaseUrl"].as_str().expect("databaseUrl");
    let same = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = process(
        &serve.file,
        same.path(),
        &["--database-url", serves_database],
    );
    assert!(status.success(), "process failed: {stderr}");
    let id = video_id_in(same.path());
    let link = format!("progress: {}/videos/{id}/progress", serve.url);
    assert!(stderr.lines().any(|line| line == link), "{stderr}");
    assert!(!stderr.contains("using the database"), "{stderr}");

    let (_db, other_database) = fresh_db().await;
    let other = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = process(
        &serve.file,
        other.path(),
        &["--database-url", &other_database],
    );
    assert!(status.success(), "process failed: {stderr}");
    assert!(!stderr.contains("progress:"), "{stderr}");
    assert!(!stderr.contains("shotlist serve"), "{stderr}");
    let id = video_id_in(other.path());
    assert_eq!(serve.get(&format!("/videos/{id}")).await.status(), 404);
}

#[test]
fn ctrl_c_stops_serve_with_130_and_removes_its_announcement_and_its_embedded_database() {
    let serve = Serve::start(None);
    let file = serve.file.clone();
    assert!(file.is_file(), "announced while serving");
    let cluster = serve
        .stderr_lines()
        .iter()
        .find_map(|line| line.split("dir=").nth(1).map(|d| PathBuf::from(d.trim())))
        .expect("the embedded database's folder was logged");
    assert!(
        cluster.is_dir(),
        "{} exists while serving",
        cluster.display()
    );

    let (status, stderr) = serve.interrupt();
    assert_eq!(status.code(), Some(130), "stderr: {stderr:?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some("shotlist: error: interrupted")
    );
    assert!(!file.exists(), "the announcement is removed");
    assert!(!cluster.exists(), "{} is removed", cluster.display());
}

#[test]
fn a_stale_announcement_is_ignored_and_removed_once_its_serve_is_gone() {
    let folder = tempfile::tempdir().expect("tempdir");
    let file = folder.path().join("serve.json");
    let closed_port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut exited = Command::new("true").spawn().expect("run true");
    exited.wait().expect("true ends");
    let announce = |pid: u32| {
        // A database no run could use: a run that took it would fail.
        let text = json!({
            "url": format!("http://127.0.0.1:{closed_port}"),
            "databaseUrl": "host=/nonexistent/socket port=1 user=nobody",
            "pid": pid,
        });
        std::fs::write(&file, text.to_string()).expect("write the announcement");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };

    // Its process is still there (this one) but nothing answers: ignored,
    // and kept, since the serve may only be slow.
    announce(std::process::id());
    let out = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = process(&file, out.path(), &[]);
    assert!(status.success(), "process failed: {stderr}");
    assert!(!stderr.contains("shotlist serve"), "{stderr}");
    assert!(!stderr.contains("progress:"), "{stderr}");
    assert!(file.exists(), "kept while its process lives");

    // Its process is gone: ignored and removed.
    announce(exited.id());
    let out = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = process(&file, out.path(), &[]);
    assert!(status.success(), "process failed: {stderr}");
    assert!(!stderr.contains("progress:"), "{stderr}");
    assert!(!file.exists(), "a dead serve's announcement is removed");
}

#[tokio::test]
async fn a_killed_serves_announcement_is_not_joined_though_something_answers_health_on_its_port() {
    let (db, url) = fresh_db().await;
    let mut serve = Serve::start(Some(&url));
    let (port, file) = (serve.port, serve.file.clone());
    // kill -9: serve removes nothing.
    serve.child.kill().expect("SIGKILL serve");
    serve.child.wait().expect("serve ends");
    assert!(file.exists(), "a killed serve leaves its announcement");

    // What another user could start on the freed port; here it runs as
    // this user, so only the announcing process being gone gives it away.
    let impostor = HealthImpostor::start(port);
    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .expect("GET /health of the impostor");
    assert_eq!(health.text().await.expect("body"), r#"{"ok":true}"#);
    assert_eq!(impostor.requests(), 1);

    let out = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = process(&file, out.path(), &[]);
    assert!(status.success(), "process failed: {stderr}");
    assert!(!stderr.contains("shotlist serve"), "{stderr}");
    assert!(!stderr.contains("progress:"), "{stderr}");
    let id = video_id_in(out.path());
    assert!(
        matches!(db.chunk_progress(id).await, Err(DbError::NotFound(_))),
        "the run kept out of the killed serve's database"
    );
    assert!(!file.exists(), "the dead serve's announcement is removed");
    assert_eq!(impostor.requests(), 1, "process asked the impostor nothing");
}

/// A server on 127.0.0.1:`port` answering every request as a serve answers
/// `GET /health`, counting them; stopped when dropped.
struct HealthImpostor {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthImpostor {
    fn start(port: u16) -> HealthImpostor {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("listen on the killed serve's port {port}: {e}"));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut request = BufReader::new(&stream);
                let mut line = String::new();
                // Up to the blank line that ends the request's headers.
                while request.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"ok":true}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        HealthImpostor {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HealthImpostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn an_announcement_others_could_write_is_ignored_even_while_its_serve_answers() {
    let (_db, url) = fresh_db().await;
    let serve = Serve::start(Some(&url));
    let folder = serve.file.parent().expect("folder").to_path_buf();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    for (what, file_mode, folder_mode) in [
        ("a world-writable file", 0o666, 0o700),
        ("a group-writable file", 0o620, 0o700),
        ("a world-writable folder", 0o600, 0o777),
    ] {
        chmod(&serve.file, file_mode);
        chmod(&folder, folder_mode);
        let out = tempfile::tempdir().expect("tempdir");
        let (status, _, stderr) = process(&serve.file, out.path(), &[]);
        assert!(status.success(), "{what}: process failed: {stderr}");
        assert!(!stderr.contains("shotlist serve"), "{what}: {stderr}");
        assert!(!stderr.contains("progress:"), "{what}: {stderr}");
        let id = video_id_in(out.path());
        assert_eq!(
            serve.get(&format!("/videos/{id}")).await.status(),
            404,
            "{what}: the run used a database of its own"
        );
    }
    chmod(&folder, 0o700);
}

#[test]
fn a_second_serve_on_the_same_announcement_is_refused_and_the_first_stays_found() {
    let first = Serve::start(None);
    let second = Command::new(shotlist_bin())
        .args(["serve", "--port", "0"])
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("SHOTLIST_SERVE_FILE", &first.file)
        .stdin(Stdio::null())
        .output()
        .expect("run a second shotlist serve");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shotlist serve is already running at {}",
            first.url
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("starting the embedded PostgreSQL"),
        "refused before a database is started: {stderr}"
    );
    let announced: Value =
        serde_json::from_slice(&std::fs::read(&first.file).expect("still announced"))
            .expect("JSON");
    assert_eq!(announced["url"], first.url.as_str());
}

#[test]
fn a_run_in_serves_private_database_ends_at_once_saying_why_when_serve_stops() {
    let fps = shotlist_shared::time::Fps::new(25, 1).expect("fps");
    let cuts: Vec<i64> = (1..40).map(|n| n * 75).collect();
    let film = shotlist_tests::film::make_film(
        &shotlist_tests::film::film_dir(),
        fps,
        &cuts,
        3_000,
        false,
    );
    let serve = Serve::start(None);
    let out = tempfile::tempdir().expect("tempdir");
    // 2 minutes in chunks of 3 s, one at a time: long enough to stop serve
    // in the middle.
    let mut run = Command::new(shotlist_bin())
        .arg("process")
        .arg(&film.path)
        .arg("--out")
        .arg(out.path())
        .args(["--chunk-seconds", "3", "--overlap-seconds", "1"])
        .args(["--concurrency", "1"])
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("SHOTLIST_SERVE_FILE", &serve.file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shotlist process");
    let (lines_tx, lines) = mpsc::channel();
    let stderr = run.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|line: &String| line.starts_with("chunk 1/"))
    {
        match lines.recv_timeout(START_LIMIT) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no chunk finished within {START_LIMIT:?}: {seen:?}"),
        }
    }

    let (status, _) = serve.interrupt();
    assert_eq!(status.code(), Some(130));
    // Not the database's own retries, which take minutes: serve is watched.
    let deadline = std::time::Instant::now() + START_LIMIT;
    let ended = loop {
        if let Some(status) = run.try_wait().expect("poll process") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            panic!("process still runs {START_LIMIT:?} after serve stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().expect("stderr reader");
    seen.extend(lines.try_iter());
    assert_eq!(ended.code(), Some(1), "{seen:?}");
    let last = seen.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "shotlist: error: shotlist serve at {} stopped",
            serve_url(&seen)
        )),
        "{seen:?}"
    );
    assert!(
        !out.path().join("sheet.json").exists(),
        "no sheet from a lost database"
    );
}

/// The serve URL a run said it joined.
fn serve_url(stderr: &[String]) -> String {
    stderr
        .iter()
        .find_map(|line| line.strip_prefix("using the database of shotlist serve at "))
        .unwrap_or_else(|| panic!("the run did not join serve: {stderr:?}"))
        .to_string()
}

#[test]
fn a_serve_starting_while_another_holds_the_lock_stops_before_taking_a_port() {
    let folder = tempfile::tempdir().expect("tempdir");
    let file = folder.path().join("serve.json");
    let lock = folder.path().join("serve.json.lock");
    // What a serve holds from its start until it exits, held here by
    // util-linux's flock(1) in place of a serve still starting.
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("run flock");
    let deadline = std::time::Instant::now() + START_LIMIT;
    while !lock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "flock made no lock file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let second = Command::new(shotlist_bin())
        .args(["serve", "--port", "0"])
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("SHOTLIST_SERVE_FILE", &file)
        .stdin(Stdio::null())
        .output()
        .expect("run shotlist serve");
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another shotlist serve is starting"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("starting the embedded PostgreSQL"),
        "{stderr}"
    );
    assert!(!file.exists(), "no announcement");
}
