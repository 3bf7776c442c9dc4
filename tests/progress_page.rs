//! The progress page in a real browser: Debian's chromium, headless, driven
//! through chromedriver (WebDriver) by fantoccini, against the page as
//! `shotlist serve` serves it while a film is analyzed in this process.
//!
//! The analyses wait at a gate, so the test sees the page while chunks are
//! held (running) or not yet claimed (waiting), then opens the gate and
//! watches every chunk turn done and the download links appear. Every wait
//! polls the page's DOM until a deadline; a page that never gets there fails
//! the test saying what it showed last.
//!
//! Screenshots go to `target/test-artifacts/` (`progress-page-running.png`
//! mid-run, `progress-page.png` at the end) for a person to look at.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use shotlist_shared::analyzer::LocalAnalyzer;
use shotlist_shared::page::PROGRESS_PAGE;
use shotlist_shared::plan::PlanParams;
use shotlist_shared::runner::{run_with, RunOptions};
use shotlist_shared::sheet::{FilmDetails, Sheet};
use shotlist_shared::time::Fps;
use shotlist_tests::cli_bin::shotlist_bin;
use shotlist_tests::fake_server::FakeServer;
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::gate::Gate;
use shotlist_tests::gated_analyzer::GatedAnalyzer;
use shotlist_tests::pg::fresh_db;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;
use uuid::Uuid;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str = "install chromium and chromium-driver (scripts/install-prereqs does)";

/// Five chunks of 4 s overlapping by 1 s over a 16 s film.
const PLAN: PlanParams = PlanParams {
    chunk_seconds: 4.0,
    overlap_seconds: 1.0,
};
const CHUNKS: usize = 5;
/// 16 s at 25 fps.
const FRAMES: i64 = 400;
const CUTS: [i64; 5] = [60, 140, 210, 290, 350];
/// Chunks analyzed at once: two are held running, three wait their turn.
const CONCURRENCY: usize = 2;

/// The longest the test waits for a server, a browser or the page to get
/// where it should be (the page polls every 2 s).
const LIMIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// A title with markup in it: the page must show it as text.
const TITLE: &str = "Night <b>Train</b> & \"Co\"";

/// What the page shows, read in one script so that the parts agree.
const READ_PAGE: &str = r##"
const text = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
const downloads = document.getElementById("downloads");
return {
  title: text("title"),
  boldInTitle: document.querySelectorAll("#title *").length,
  states: Array.from(document.querySelectorAll("[data-chunk-index]"))
    .map((e) => [Number(e.dataset.chunkIndex), e.dataset.state]),
  counts: ["done", "running", "waiting", "failed"].map((s) => text("count-" + s)),
  eta: text("eta"),
  error: document.getElementById("error").hidden ? null : text("error"),
  downloadsShown: !!downloads && !downloads.hidden,
  links: Array.from(document.querySelectorAll("#downloads a[data-format]"))
    .map((a) => [a.dataset.format, a.href]),
  sheetStatus: document.getElementById("sheet-status").dataset.status || null,
  downloadError: document.getElementById("download-error").hidden
    ? null : text("download-error"),
  hash: location.hash,
  token: sessionStorage.getItem("shotlist.token"),
};
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_held_chunks_waiting_and_running_then_all_done_with_download_links() {
    let film = film().await;
    let (db, url) = fresh_db().await;
    let server = Serve::start(&url).await;
    let browser = Browser::start().await;

    let gate = Gate::closed();
    let analyzer = GatedAnalyzer::holding_all(Arc::new(LocalAnalyzer::default()), gate.clone());
    let video_id = Uuid::new_v4();
    let options = RunOptions {
        video_id: Some(video_id),
        concurrency: CONCURRENCY,
        plan: PLAN,
        details: FilmDetails {
            title: Some(TITLE.to_owned()),
            year: Some("1979".to_owned()),
            ..FilmDetails::default()
        },
        ..RunOptions::default()
    };
    // `shotlist process` prints the page's link before the film is
    // registered: a page opened that early says so and keeps looking.
    let page = format!("{}/videos/{video_id}/progress", server.origin());
    browser.goto(&page).await;
    browser
        .wait_until("the film not registered yet", |page| {
            page["error"]
                .as_str()
                .is_some_and(|error| error.contains("404") && error.contains("2 s"))
        })
        .await;
    let run = run_with(&db, &film.path, &options, analyzer.clone(), &|_| {});

    let watch = async {
        gate.wait_for_waiting(CONCURRENCY, LIMIT, "two chunks held")
            .await;

        let held = browser
            .wait_until("two chunks running and three waiting", |page| {
                states(page).iter().filter(|s| *s == "running").count() == CONCURRENCY
                    && states(page).iter().filter(|s| *s == "waiting").count()
                        == CHUNKS - CONCURRENCY
            })
            .await;
        assert_eq!(held["title"], TITLE, "the title is shown as text");
        assert_eq!(
            held["boldInTitle"], 0,
            "markup in the title must not become elements"
        );
        assert_eq!(held["counts"], json!(["0", "2", "3", "0"]));
        assert_eq!(held["eta"], "—", "no estimate before a chunk finishes");
        assert_eq!(
            held["downloadsShown"], false,
            "no downloads before the sheet"
        );
        assert_eq!(held["error"], Value::Null);
        browser.screenshot("progress-page-running.png").await;

        gate.open();
        let done = browser
            .wait_until("every chunk done and the downloads shown", |page| {
                states(page).iter().filter(|s| *s == "done").count() == CHUNKS
                    && page["downloadsShown"] == true
            })
            .await;
        let indices: Vec<i64> = done["states"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| pair[0].as_i64())
            .collect();
        assert_eq!(indices, [0, 1, 2, 3, 4], "one cell per chunk, in order");
        assert_eq!(done["counts"], json!(["5", "0", "0", "0"]));
        assert_eq!(done["eta"], "done");
        assert_eq!(done["sheetStatus"], "complete");
        browser.screenshot("progress-page.png").await;
        done
    };
    let (sheet, done) = tokio::join!(run, watch);
    let sheet = sheet.expect("the run ends with a sheet");

    let base = format!("{}/videos/{video_id}", server.origin());
    let shown = links(&done);
    assert_eq!(
        shown,
        [
            ("xlsx".to_owned(), format!("{base}/sheet.xlsx?lang=en")),
            ("docx".to_owned(), format!("{base}/sheet.docx?lang=en")),
            ("csv".to_owned(), format!("{base}/sheet.csv?lang=en")),
            ("json".to_owned(), format!("{base}/sheet.json")),
        ]
    );

    browser
        .click_css(r#"input[name="lang"][value="ru"] + span"#)
        .await;
    let russian = browser
        .wait_until("the links in Russian", |page| {
            links(page)
                .iter()
                .any(|(format, href)| format == "csv" && href.ends_with("lang=ru"))
        })
        .await;
    let csv_link = links(&russian)
        .into_iter()
        .find(|(format, _)| format == "csv")
        .map(|(_, href)| href)
        .expect("a csv link");
    assert_eq!(csv_link, format!("{base}/sheet.csv?lang=ru"));
    let csv = download(&csv_link, &format!("shotlist-{video_id}.ru.csv")).await;
    let csv = String::from_utf8(csv).expect("the csv is UTF-8");
    assert!(csv.contains("№ плана"), "the Russian trade headers: {csv}");
    for shot in &sheet.shots {
        assert!(
            csv.contains(&shot.start),
            "shot {} is in the csv: {csv}",
            shot.number
        );
    }

    let json_link = links(&russian)
        .into_iter()
        .find(|(format, _)| format == "json")
        .map(|(_, href)| href)
        .expect("a json link");
    let json = download(&json_link, &format!("shotlist-{video_id}.json")).await;
    let downloaded: Sheet = serde_json::from_slice(&json).expect("the json is a sheet");
    assert_eq!(
        downloaded, sheet,
        "the page's json link gives the stored sheet"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_film_shows_a_clear_error_and_the_token_in_the_fragment_leaves_the_address_bar()
{
    let (_db, url) = fresh_db().await;
    let server = Serve::start(&url).await;
    let browser = Browser::start().await;
    let unknown = Uuid::new_v4();

    let page = format!(
        "{}/videos/{unknown}/progress#token=not-a-real-token",
        server.origin()
    );
    browser.goto(&page).await;
    let shown = browser
        .wait_until("an error on the page", |page| page["error"].is_string())
        .await;
    let error = shown["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("no film with id {unknown}")) && error.contains("404"),
        "the error names the film and the status: {error}"
    );
    assert_eq!(shown["states"], json!([]), "no chunk is drawn");
    assert_eq!(shown["downloadsShown"], false);
    assert_eq!(
        shown["hash"], "",
        "the token is dropped from the address bar"
    );
    assert_eq!(
        shown["token"], "not-a-real-token",
        "the token is kept for the tab"
    );
    browser.screenshot("progress-page-unknown-film.png").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_path_prefix_the_fragment_token_is_kept_for_the_tab_sent_as_bearer_and_a_refused_one_explained(
) {
    let api = CloudApi::start();
    let browser = Browser::start().await;
    let film = Uuid::new_v4();
    let base = format!("{}/prod/videos/{film}", api.server.base_url());

    browser
        .goto(&format!("{base}/progress#token={GOOD_TOKEN}"))
        .await;
    let shown = browser
        .wait_until("the finished film with its downloads", |page| {
            page["downloadsShown"] == true
        })
        .await;
    assert_eq!(
        shown["hash"], "",
        "the token is dropped from the address bar"
    );
    assert_eq!(states(&shown), ["done"]);
    assert_eq!(
        links(&shown),
        [
            ("xlsx".to_owned(), format!("{base}/sheet.xlsx?lang=en")),
            ("docx".to_owned(), format!("{base}/sheet.docx?lang=en")),
            ("csv".to_owned(), format!("{base}/sheet.csv?lang=en")),
            ("json".to_owned(), format!("{base}/sheet.json")),
        ],
        "the links keep the prefix"
    );
    browser
        .click_css(r#"#downloads a[data-format="csv"]"#)
        .await;
    let give_up = Instant::now() + LIMIT;
    while !api
        .requests()
        .iter()
        .any(|(uri, auth)| uri.ends_with("/sheet.csv?lang=en") && auth == GOOD_BEARER)
    {
        assert!(
            Instant::now() < give_up,
            "the csv link never fetched the file with the token: {:?}",
            api.requests()
        );
        tokio::time::sleep(POLL).await;
    }
    let after = browser.read().await;
    assert_eq!(
        after["downloadError"],
        Value::Null,
        "the download went through"
    );
    let progress: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|(uri, _)| uri == &format!("/prod/videos/{film}"))
        .collect();
    assert!(
        !progress.is_empty() && progress.iter().all(|(_, auth)| auth == GOOD_BEARER),
        "every poll carries the token: {progress:?}"
    );

    let running = format!("{}/prod/videos/{MID_RUN}/progress", api.server.base_url());
    browser.goto(&running).await;
    let mid_run = browser
        .wait_until("the film half done", |page| states(page).len() == 4)
        .await;
    assert_eq!(states(&mid_run), ["done", "done", "running", "waiting"]);
    assert_eq!(
        mid_run["eta"], "about 2 min left",
        "2 chunks in 2 min by the database's clock leave 2 chunks: about 2 min"
    );
    assert_eq!(mid_run["error"], Value::Null, "the tab kept its token");

    let resumed = format!("{}/prod/videos/{RESUMED}/progress", api.server.base_url());
    browser.goto(&resumed).await;
    let resumed = browser
        .wait_until("the resumed film", |page| states(page).len() == 8)
        .await;
    assert_eq!(
        resumed["eta"], "about 6 min left",
        "a day idle is no pace: 2 min a chunk since the resumption, 3 chunks left"
    );

    let late = format!(
        "{}/prod/videos/{LATE_START}/progress",
        api.server.base_url()
    );
    browser.goto(&late).await;
    let late = browser
        .wait_until("the film resumed before any chunk finished", |page| {
            states(page).len() == 8
        })
        .await;
    assert_eq!(
        late["eta"], "about 3 min left",
        "the days before the first finish are no pace either: 1 min a chunk, 3 left"
    );
    assert!(
        api.requests()
            .iter()
            .any(|(uri, auth)| uri == &format!("/prod/videos/{MID_RUN}") && auth == GOOD_BEARER),
        "the stored token goes out without a fragment: {:?}",
        api.requests()
    );

    let other = Uuid::new_v4();
    let other_page = format!("{}/prod/videos/{other}/progress", api.server.base_url());
    browser.goto(&format!("{other_page}#token=expired")).await;
    let refused = browser
        .wait_until("the sign-in message", |page| page["error"].is_string())
        .await;
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "this page needs a sign-in token: open it as {other_page}#token=<JWT>"
        )),
        "{error}"
    );
    assert_eq!(
        refused["states"],
        json!([]),
        "nothing drawn without a token"
    );
    assert!(
        api.requests()
            .iter()
            .all(|(uri, _)| !uri.contains(GOOD_TOKEN) && !uri.contains("expired")),
        "a token never travels in an address: {:?}",
        api.requests()
    );
    browser.screenshot("progress-page-sign-in.png").await;
    browser.close().await;
}

async fn film() -> Film {
    tokio::task::spawn_blocking(|| {
        let fps = Fps::new(25, 1).expect("25 fps");
        make_film(&film_dir(), fps, &CUTS, FRAMES, false)
    })
    .await
    .expect("making the film panicked")
}

/// The chunk cells' states, in the page's order.
fn states(page: &Value) -> Vec<String> {
    page["states"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| pair[1].as_str().map(str::to_owned))
        .collect()
}

/// The download links as (format, absolute href).
fn links(page: &Value) -> Vec<(String, String)> {
    page["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
        .collect()
}

/// Fetches `href` as the page links it and checks it is an attachment
/// named `file_name`; returns the body.
async fn download(href: &str, file_name: &str) -> Vec<u8> {
    let response = reqwest::get(href)
        .await
        .unwrap_or_else(|e| panic!("GET {href}: {e}"));
    assert_eq!(response.status(), 200, "GET {href}");
    let disposition = response
        .headers()
        .get("content-disposition")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"{file_name}\""),
        "GET {href}"
    );
    response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("reading {href}: {e}"))
        .to_vec()
}

/// A free port on 127.0.0.1, for a server started right after.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// Returns once something accepts connections on `port` of 127.0.0.1.
async fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let give_up = Instant::now() + LIMIT;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before it listened on port {port}");
        }
        assert!(
            Instant::now() < give_up,
            "{what} did not listen on port {port} within {LIMIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `shotlist serve` on a port of its choosing, killed when dropped. Its
/// announcement file goes into a folder of the test's own, so no other
/// test's `shotlist process` finds this server and runs in its database.
struct Serve {
    origin: String,
    _child: Child,
    /// Kept open: serve may print more, and a closed pipe would fail it.
    _stdout: Lines<BufReader<ChildStdout>>,
    _announcements: tempfile::TempDir,
}

impl Serve {
    async fn start(database_url: &str) -> Serve {
        let bin = tokio::task::spawn_blocking(shotlist_bin)
            .await
            .expect("building shotlist panicked");
        let announcements = tempfile::tempdir().expect("a folder for the announcement");
        let mut child = Command::new(bin)
            .args(["serve", "--port", "0", "--database-url", database_url])
            .env(
                "SHOTLIST_SERVE_FILE",
                announcements.path().join("serve.json"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start shotlist serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("serve's stdout")).lines();
        let first = tokio::time::timeout(LIMIT, stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("shotlist serve said nothing within {LIMIT:?}"))
            .expect("read serve's stdout");
        let origin = first
            .as_deref()
            .and_then(|line| line.strip_prefix("serving "))
            .unwrap_or_else(|| panic!("shotlist serve began with {first:?}, not \"serving URL\""))
            .trim()
            .to_owned();
        assert!(
            origin.starts_with("http://127.0.0.1:"),
            "serve listens on loopback: {origin}"
        );
        Serve {
            origin,
            _child: child,
            _stdout: stdout,
            _announcements: announcements,
        }
    }

    fn origin(&self) -> String {
        self.origin.clone()
    }
}

const GOOD_TOKEN: &str = "good-token";
const GOOD_BEARER: &str = "Bearer good-token";
/// The film [`CloudApi`] shows half done.
const MID_RUN: &str = "00000000-0000-4000-8000-000000000002";

/// A film resumed a day after its first chunks: see [`resumed_document`].
const RESUMED: &str = "00000000-0000-4000-8000-000000000003";

/// A film registered days before its first chunk finished: see
/// [`late_start_document`].
const LATE_START: &str = "00000000-0000-4000-8000-000000000004";

/// A stand-in for the cloud API under a stage prefix (`/prod`): it serves
/// the page, answers a finished one-chunk film to [`GOOD_BEARER`] and 401
/// to anyone else, and records every request's path and `Authorization`.
struct CloudApi {
    server: FakeServer,
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl CloudApi {
    fn start() -> CloudApi {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/prod/videos/{id}/progress", get(cloud_page))
            .route("/prod/videos/{id}", get(cloud_progress))
            .route("/prod/videos/{id}/{file}", get(cloud_file))
            .layer(middleware::from_fn_with_state(requests.clone(), record))
            .with_state(());
        CloudApi {
            server: FakeServer::start(app),
            requests,
        }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Recorded = Arc<Mutex<Vec<(String, String)>>>;

async fn record(State(requests): State<Recorded>, request: Request, next: Next) -> Response {
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((request.uri().to_string(), auth));
    next.run(request).await
}

async fn cloud_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                shotlist_shared::page::CONTENT_SECURITY_POLICY,
            ),
        ],
        PROGRESS_PAGE,
    )
        .into_response()
}

fn signed_in(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(GOOD_BEARER)
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "error": "missing or invalid bearer token" })),
    )
        .into_response()
}

async fn cloud_progress(Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !signed_in(&headers) {
        return refused();
    }
    if id == MID_RUN {
        return axum::Json(mid_run_document()).into_response();
    }
    if id == RESUMED {
        return axum::Json(resumed_document()).into_response();
    }
    if id == LATE_START {
        return axum::Json(late_start_document()).into_response();
    }
    axum::Json(json!({
        "videoId": id,
        "totalChunks": 1,
        "completedChunks": 1,
        "failedChunks": 0,
        "finished": true,
        "createdAt": "2026-01-01T10:00:00.000Z",
        "now": "2026-01-01T10:02:00.000Z",
        "details": {},
        "chunks": [{
            "index": 0, "status": "completed", "startTimecode": "00:00:00:00",
            "endTimecode": "00:00:04:00", "attempts": 1, "error": null,
            "updatedAt": "2026-01-01T10:01:00.000Z"
        }],
        "sheet": { "status": "complete", "shots": [], "gaps": [] }
    }))
    .into_response()
}

/// Two of four chunks done two minutes (on the database's clock) after the
/// film was submitted, in a year the browser's clock is not in: an estimate
/// taken from the browser's clock would be far off.
fn mid_run_document() -> Value {
    let chunk = |index: u32, status: &str| {
        json!({
            "index": index, "status": status,
            "startTimecode": format!("00:00:{:02}:00", index * 3),
            "endTimecode": format!("00:00:{:02}:00", index * 3 + 4),
            "attempts": u32::from(status != "pending"), "error": null,
            "updatedAt": "2025-01-01T10:01:00.000Z"
        })
    };
    json!({
        "videoId": MID_RUN,
        "totalChunks": 4,
        "completedChunks": 2,
        "failedChunks": 0,
        "finished": false,
        "createdAt": "2025-01-01T10:00:00.000Z",
        "now": "2025-01-01T10:02:00.000Z",
        "details": { "title": "Half done" },
        "chunks": [
            chunk(0, "completed"), chunk(1, "completed"),
            chunk(2, "processing"), chunk(3, "pending")
        ],
        "sheet": null
    })
}

/// Three of eight chunks finished on the first day, then the film was
/// resumed the next morning: two chunks finished 2 min apart, one runs and
/// two wait.
fn resumed_document() -> Value {
    let chunk = |index: u32, status: &str, updated: &str| {
        json!({
            "index": index, "status": status,
            "startTimecode": "00:00:00:00", "endTimecode": "00:00:04:00",
            "attempts": 1, "error": null, "updatedAt": updated
        })
    };
    json!({
        "videoId": RESUMED,
        "totalChunks": 8,
        "completedChunks": 5,
        "failedChunks": 0,
        "finished": false,
        "createdAt": "2025-01-01T10:00:00.000Z",
        "now": "2025-01-02T09:03:00.000Z",
        "details": {},
        "chunks": [
            chunk(0, "completed", "2025-01-01T10:01:00.000Z"),
            chunk(1, "completed", "2025-01-01T10:02:00.000Z"),
            chunk(2, "completed", "2025-01-01T10:03:00.000Z"),
            chunk(3, "completed", "2025-01-02T09:00:00.000Z"),
            chunk(4, "completed", "2025-01-02T09:02:00.000Z"),
            chunk(5, "processing", "2025-01-02T09:02:00.000Z"),
            chunk(6, "pending", "2025-01-01T10:00:00.000Z"),
            chunk(7, "pending", "2025-01-01T10:00:00.000Z")
        ],
        "sheet": null
    })
}

/// Registered three days ago, stopped before any chunk finished, resumed
/// this morning: five chunks finished a minute apart, three wait.
fn late_start_document() -> Value {
    let chunk = |index: u32, status: &str, updated: &str| {
        json!({
            "index": index, "status": status,
            "startTimecode": "00:00:00:00", "endTimecode": "00:00:04:00",
            "attempts": 1, "error": null, "updatedAt": updated
        })
    };
    let done = |index: u32| {
        chunk(
            index,
            "completed",
            &format!("2025-01-04T09:0{index}:00.000Z"),
        )
    };
    json!({
        "videoId": LATE_START,
        "totalChunks": 8,
        "completedChunks": 5,
        "failedChunks": 0,
        "finished": false,
        "createdAt": "2025-01-01T10:00:00.000Z",
        "now": "2025-01-04T09:04:30.000Z",
        "details": {},
        "chunks": [
            done(0), done(1), done(2), done(3), done(4),
            chunk(5, "pending", "2025-01-01T10:00:00.000Z"),
            chunk(6, "pending", "2025-01-01T10:00:00.000Z"),
            chunk(7, "pending", "2025-01-01T10:00:00.000Z")
        ],
        "sheet": null
    })
}

async fn cloud_file(headers: HeaderMap) -> Response {
    if !signed_in(&headers) {
        return refused();
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"sheet.csv\"",
            ),
        ],
        "number,start\n",
    )
        .into_response()
}

/// Headless chromium behind a chromedriver of its own; the driver (and with
/// it the browser) is killed when this is dropped.
struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                FsPath::new(program).is_file(),
                "{program} is missing: {INSTALL_HINT}"
            );
        }
        let profile = tempfile::tempdir().expect("a profile folder for chromium");
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
        wait_for_port(port, "chromedriver", &mut driver).await;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1200,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let capabilities = capabilities.as_object().cloned().unwrap_or_default();
        let client = ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("open a chromium session through chromedriver: {e}"));
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    async fn read(&self) -> Value {
        self.client
            .execute(READ_PAGE, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("read the page: {e}"))
    }

    /// Reads the page until `done` holds for it; returns what it showed then.
    async fn wait_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let give_up = Instant::now() + LIMIT;
        loop {
            let page = self.read().await;
            if done(&page) {
                return page;
            }
            assert!(
                Instant::now() < give_up,
                "the page did not show {what} within {LIMIT:?}; it showed {page:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn click_css(&self, selector: &str) {
        self.client
            .find(fantoccini::Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("find {selector}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
    }

    /// Saves what the browser shows as `target/test-artifacts/<name>`.
    async fn screenshot(&self, name: &str) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        let dir = artifact_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("screenshot: {}", path.display());
    }

    async fn close(self) {
        self.client
            .close()
            .await
            .unwrap_or_else(|e| panic!("close the browser session: {e}"));
    }
}

/// `test-artifacts` in Cargo's target folder.
fn artifact_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| FsPath::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-artifacts")
}
