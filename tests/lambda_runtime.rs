//! The compiled Lambda functions serve real invocations through the Lambda
//! Runtime API, as they will on AWS.
//!
//! Each test starts a fake Runtime API on 127.0.0.1
//! ([`shotlist_tests::runtime_api`]: `GET /runtime/invocation/next` as a
//! long poll, then `POST /runtime/invocation/{id}/response` or `/error`, and
//! `POST /runtime/init/error`), runs a function binary against it with the
//! environment Lambda gives (`AWS_LAMBDA_RUNTIME_API` and the rest) and the
//! function's own configuration, queues events and reads what the function
//! posts back. The database is a real PostgreSQL ([`shotlist_tests::pg`]);
//! nothing is reached beyond loopback.
//!
//! The binaries are those of `cargo build --workspace --bins`, which
//! `scripts/test` runs first; a missing binary fails the test saying so.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use shotlist_shared::cloud::auth::{now_epoch, sign, Claims};
use shotlist_shared::db::{Claim, Db, Outcome};
use shotlist_shared::plan::{self, PlanParams};
use shotlist_shared::sheet::SheetStatus;
use shotlist_shared::time::Fps;
use shotlist_tests::exact::exact_shots;
use shotlist_tests::fixtures;
use shotlist_tests::pg::fresh_db;
use shotlist_tests::runtime_api::{Posted, RuntimeApi};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a function may take to answer one invocation, or to fail.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The JWT secret the functions are configured with (at least 32 bytes).
const JWT_SECRET: &str = "lambda-runtime-test-jwt-secret-6b1f0c9e4a7d2853";

/// The finalize queue's URL. finalize never sends to it; only its name is
/// used, to record rejected messages under.
const FINALIZE_QUEUE_URL: &str = "http://127.0.0.1:9/000000000000/shotlist-finalize";

/// A password no real configuration has, to look for in the output.
const FAKE_DB_PASSWORD: &str = "Fake-DB-Passw0rd-4c1d9e77";

/// The film: 200 s at 25 fps, which the default plan cuts into two chunks
/// (0-180 s and 165-200 s), with cuts in the first chunk, in the overlap's
/// first half, and in the second chunk alone.
const FILM_FRAMES: i64 = 5_000;
const CUTS: [i64; 3] = [1_000, 4_200, 4_600];

// ---------------------------------------------------------------------------
// A function binary run against the fake Runtime API
// ---------------------------------------------------------------------------

/// The function binary `name`, as `cargo build --workspace --bins` leaves
/// it: in the folder above this test's own `deps/`, or under
/// `$CARGO_TARGET_DIR/debug`.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    // target/<profile>/deps/<this test> -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &profile_dir {
        candidates.push(dir.join(name));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        candidates.push(PathBuf::from(target).join("debug").join(name));
    }
    if let Some(target) = profile_dir.as_deref().and_then(Path::parent) {
        candidates.push(target.join("debug").join(name));
    }
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the Lambda function binary `{name}` is missing (looked for {}); \
                 build the functions first with `cargo build --workspace --bins`",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Collects a child's output line by line while it runs.
fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let task = tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    (text, task)
}

/// One function instance: the binary, running against its own Runtime API.
/// Dropping it kills the process.
struct Function {
    name: &'static str,
    api: RuntimeApi,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Function {
    /// Starts binary `name` with Lambda's environment and `config`, and
    /// nothing else from the test's environment.
    async fn start(name: &'static str, config: &[(&str, &str)]) -> Function {
        let api = RuntimeApi::start()
            .await
            .expect("the fake Runtime API on 127.0.0.1");
        let mut command = Command::new(binary(name));
        command
            .env_clear()
            .envs(api.lambda_env(name))
            .env("RUST_LOG", "info")
            .envs(config.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} function: {e}"));
        let (stdout, out_task) = collect(child.stdout.take().expect("piped stdout"));
        let (stderr, err_task) = collect(child.stderr.take().expect("piped stderr"));
        Function {
            name,
            api,
            child,
            stdout,
            stderr,
            readers: vec![out_task, err_task],
            exit: None,
        }
    }

    /// What the function printed so far, stdout then stderr.
    fn output(&self) -> String {
        let read = |s: &Arc<Mutex<String>>| s.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read(&self.stdout),
            read(&self.stderr)
        )
    }

    /// Sends `event` as one invocation and returns what the function posted
    /// for it. Fails when the function exits or stays silent.
    async fn invoke(&mut self, event: Value) -> Posted {
        let mut recorded = self.api.watch();
        let id = self.api.queue(event);
        let name = self.name;
        let answered = tokio::time::timeout(TIMEOUT, async {
            tokio::select! {
                answer = recorded.wait_for(|r| r.answer(&id).is_some()) => {
                    Ok(answer.expect("the Runtime API lives").answer(&id).cloned())
                }
                status = self.child.wait() => Err(status),
            }
        })
        .await;
        match answered {
            Ok(Ok(Some(posted))) => posted,
            Ok(Ok(None)) => unreachable!("waited for this answer"),
            Ok(Err(status)) => {
                self.exit = status.as_ref().ok().copied();
                self.drain().await;
                panic!(
                    "the {name} function exited ({status:?}) before answering invocation {id}\n{}",
                    self.output()
                )
            }
            Err(_) => panic!(
                "the {name} function did not answer invocation {id} within {TIMEOUT:?}\n{}",
                self.output()
            ),
        }
    }

    /// Sends `event` and returns the response body, failing on an error.
    async fn respond(&mut self, event: Value) -> Value {
        match self.invoke(event).await {
            Posted::Response(value) => value,
            error => panic!(
                "the {} function posted an invocation error: {error:?}\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// Sends an API Gateway HTTP API event and returns the status code and
    /// the response, whose body must be JSON.
    async fn http(&mut self, event: Value) -> (u16, Value, Value) {
        let response = self.respond(event).await;
        let status = response["statusCode"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or_else(|| panic!("no statusCode in the response {response}"));
        assert_ne!(
            response["isBase64Encoded"],
            json!(true),
            "a JSON body is text: {response}"
        );
        let text = response["body"]
            .as_str()
            .unwrap_or_else(|| panic!("no text body in the response {response}"));
        let body: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("the response body is not JSON ({e}): {text}"));
        (status, body, response)
    }

    /// Waits until the process exits or reports an init error; then the
    /// process must end (it is killed after the timeout).
    async fn wait_for_failure(&mut self) {
        let mut recorded = self.api.watch();
        let child = &mut self.child;
        let ended = tokio::time::timeout(TIMEOUT, async {
            tokio::select! {
                status = child.wait() => Some(status.expect("wait for the function")),
                _ = recorded.wait_for(|r| !r.init_errors.is_empty()) => None,
            }
        })
        .await;
        if let Ok(status) = ended {
            self.exit = status;
        }
        assert!(
            ended.is_ok(),
            "the {} function neither exited nor reported an init error within {TIMEOUT:?}; \
             it polled /next {} times\n{}",
            self.name,
            self.api.polls(),
            self.output()
        );
        if self.exit.is_none() {
            // Lambda stops an instance whose init failed; the runtime should
            // end too, but give it a moment before killing it.
            if let Ok(status) =
                tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await
            {
                self.exit = Some(status.expect("wait for the function"));
            }
        }
        self.drain().await;
    }

    /// Waits for the output readers to reach the end of the pipes.
    async fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    /// Checks that the function is still serving: alive, polling for the
    /// next event after `invocations` answers, and that it posted no errors
    /// and made no request the Runtime API does not know.
    async fn assert_healthy(&mut self, invocations: usize) {
        let mut recorded = self.api.watch();
        let polled = tokio::time::timeout(
            Duration::from_secs(10),
            recorded.wait_for(|r| r.polls.len() > invocations),
        )
        .await;
        assert!(
            polled.is_ok(),
            "after {invocations} invocations the {} function did not poll /next again\n{}",
            self.name,
            self.output()
        );
        let recorded = self.api.watch();
        let recorded = recorded.borrow();
        assert_eq!(
            recorded.polls.len(),
            invocations + 1,
            "one poll per invocation and one waiting"
        );
        assert_eq!(recorded.posted.len(), invocations);
        assert!(
            recorded.init_errors.is_empty(),
            "{:?}",
            recorded.init_errors
        );
        assert!(recorded.unexpected.is_empty(), "{:?}", recorded.unexpected);
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the {} function is no longer running\n{}",
            self.name,
            self.output()
        );
    }
}

// ---------------------------------------------------------------------------
// Events, tokens and films
// ---------------------------------------------------------------------------

/// An SQS event as Lambda's event source mapping delivers it, one record
/// per `(messageId, body)`.
fn sqs_event(messages: &[(&str, String)]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|(id, body)| {
            json!({
                "messageId": id,
                "receiptHandle": format!("AQEB{id}receiptHandle"),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1796409901000",
                    "SenderId": "AROAEXAMPLEROLEID:shotlist-process-chunk",
                    "ApproximateFirstReceiveTimestamp": "1796409901412"
                },
                "messageAttributes": {},
                "md5OfBody": "34aeabeed6d7004f73ae8d2f84cf2c38",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:shotlist-finalize",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn epoch_millis(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis()
}

/// An API Gateway HTTP API (payload 2.0) event for `method path`, routed by
/// `route_key`, with `authorization` as the header's value when given.
fn http_event(method: &str, path: &str, route_key: &str, authorization: Option<&str>) -> Value {
    let mut headers = json!({
        "accept": "application/json",
        "host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
        "user-agent": "shotlist-tests",
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https"
    });
    if let Some(value) = authorization {
        headers["authorization"] = json!(value);
    }
    let id = path.trim_start_matches("/videos/").split('/').next();
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {route_key}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "pathParameters": { "id": id },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "shotlist-tests"
            },
            "requestId": Uuid::new_v4().simple().to_string(),
            "routeKey": format!("{method} {route_key}"),
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": epoch_millis(SystemTime::now())
        },
        "isBase64Encoded": false
    })
}

fn bearer(role: &str, sub: Option<Uuid>) -> String {
    let claims = Claims {
        sub: sub.map(|s| s.to_string()),
        role: role.into(),
        exp: now_epoch() + 600,
    };
    format!(
        "Bearer {}",
        sign(JWT_SECRET, &claims).expect("sign a test token")
    )
}

fn service_token() -> String {
    bearer("service_role", None)
}

fn user_token() -> String {
    bearer("authenticated", Some(Uuid::new_v4()))
}

fn fps() -> Fps {
    Fps::new(25, 1).expect("25/1 is a valid rate")
}

/// A described two-chunk film whose first `completed` chunks are completed
/// with the shots of [`CUTS`].
async fn film(db: &Db, completed: usize) -> Uuid {
    let id = fixtures::described_film(db, FILM_FRAMES, "25/1").await;
    let spans = plan::plan_frames(FILM_FRAMES, fps(), PlanParams::default()).expect("a plan");
    assert_eq!(spans.len(), 2, "the film is meant to have two chunks");
    for span in spans.into_iter().take(completed) {
        let Claim::Claimed(chunk) = db
            .claim_chunk(id, span.index, Duration::from_secs(600), 3)
            .await
            .expect("claim")
        else {
            panic!("chunk {} not claimed", span.index)
        };
        let report = db
            .complete_chunk(id, span.index, chunk.lease_token, &exact_shots(span, &CUTS))
            .await
            .expect("complete");
        assert_eq!(report.outcome, Outcome::Completed);
    }
    id
}

/// The functions' configuration for database `url`.
fn function_config(url: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("DATABASE_URL", url),
        ("SUPABASE_JWT_SECRET", JWT_SECRET),
        ("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL),
    ]
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn finalize_serves_queue_batches_and_http_requests_through_the_runtime_api() {
    let (db, url) = fresh_db().await;
    let film_a = film(&db, 2).await;
    let film_b = film(&db, 2).await;
    assert_eq!(db.get_sheet(film_a).await.expect("get_sheet"), None);

    let mut function = Function::start("finalize", &function_config(&url)).await;

    // 1. A finalize-queue batch: the sheet is built and stored, and the
    //    partial batch response lists nothing to retry.
    let message_id = Uuid::new_v4().to_string();
    let batch = sqs_event(&[(&message_id, json!({ "videoId": film_a }).to_string())]);
    let answer = function.respond(batch).await;
    assert_eq!(answer, json!({ "batchItemFailures": [] }));
    let stored = db
        .get_sheet(film_a)
        .await
        .expect("get_sheet")
        .unwrap_or_else(|| panic!("the SQS invocation stored no sheet\n{}", function.output()));
    assert_eq!(stored.video_id, film_a);
    assert_eq!(stored.status, SheetStatus::Complete);
    assert_eq!((stored.total_chunks, stored.completed_chunks), (2, 2));
    let starts: Vec<i64> = stored.shots.iter().map(|s| s.start_frame).collect();
    assert_eq!(starts, [0, CUTS[0], CUTS[1], CUTS[2]]);
    assert_eq!(stored.shots.last().map(|s| s.end_frame), Some(FILM_FRAMES));

    // 2. `POST /videos/{id}/finalize` with the service role: 200 and the
    //    stored sheet.
    let path = format!("/videos/{film_a}/finalize");
    let service = service_token();
    let (status, body, response) = function
        .http(http_event(
            "POST",
            &path,
            "/videos/{id}/finalize",
            Some(&service),
        ))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        body["sheet"],
        serde_json::to_value(&stored).expect("a sheet is JSON"),
        "the HTTP answer is the stored sheet"
    );
    assert_eq!(db.get_sheet(film_a).await.expect("get_sheet"), Some(stored));

    // 3. The same request with a user's token, for a finished film not yet
    //    finalized: 403, and the film still has no sheet.
    let path = format!("/videos/{film_b}/finalize");
    let user = user_token();
    let (status, body, response) = function
        .http(http_event(
            "POST",
            &path,
            "/videos/{id}/finalize",
            Some(&user),
        ))
        .await;
    assert_eq!(status, 403, "{response}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("service role")),
        "{body}"
    );
    assert_eq!(db.get_sheet(film_b).await.expect("get_sheet"), None);

    // 4. A message for a film nobody registered is recorded as rejected and
    //    acknowledged: retrying it could never succeed.
    let unknown = Uuid::new_v4();
    let rejected_id = Uuid::new_v4().to_string();
    let batch = sqs_event(&[(&rejected_id, json!({ "videoId": unknown }).to_string())]);
    let answer = function.respond(batch).await;
    assert_eq!(answer, json!({ "batchItemFailures": [] }));
    let rejected = db
        .rejected_messages("shotlist-finalize")
        .await
        .expect("rejected_messages");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].message_id, rejected_id);

    function.assert_healthy(4).await;
}

#[tokio::test]
async fn status_answers_progress_through_the_runtime_api() {
    let (db, url) = fresh_db().await;
    let video = film(&db, 1).await;
    let mut function = Function::start("status", &function_config(&url)).await;
    let path = format!("/videos/{video}");

    // The service role sees the progress.
    let service = service_token();
    let (status, body, response) = function
        .http(http_event("GET", &path, "/videos/{id}", Some(&service)))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(body["videoId"], json!(video.to_string()));
    assert_eq!(body["totalChunks"], json!(2));
    assert_eq!(body["completedChunks"], json!(1));
    assert_eq!(body["finished"], json!(false));
    assert_eq!(body["sheet"], Value::Null);
    assert_eq!(
        response["headers"]["content-type"],
        json!("application/json"),
        "{response}"
    );

    // No Authorization header: 401, with a Bearer challenge.
    let (status, body, response) = function
        .http(http_event("GET", &path, "/videos/{id}", None))
        .await;
    assert_eq!(status, 401, "{response}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Authorization")),
        "{body}"
    );
    assert_eq!(
        response["headers"]["www-authenticate"],
        json!("Bearer"),
        "{response}"
    );

    // A user who does not own the film: 403.
    let user = user_token();
    let (status, _, response) = function
        .http(http_event("GET", &path, "/videos/{id}", Some(&user)))
        .await;
    assert_eq!(status, 403, "{response}");

    // status serves only `GET /videos/{id}`.
    let finalize = format!("{path}/finalize");
    let (status, _, response) = function
        .http(http_event(
            "POST",
            &finalize,
            "/videos/{id}/finalize",
            Some(&service),
        ))
        .await;
    assert_eq!(status, 404, "{response}");

    function.assert_healthy(4).await;
}

/// `url` with a password that must never be printed: its own when it has
/// one, else [`FAKE_DB_PASSWORD`] (the test servers trust local
/// connections, so an extra password changes nothing).
fn with_password(url: &str) -> (String, String) {
    let config = tokio_postgres::Config::from_str(url).expect("a valid test database URL");
    if let Some(password) = config.get_password() {
        return (
            url.to_string(),
            String::from_utf8_lossy(password).into_owned(),
        );
    }
    let url = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}password={FAKE_DB_PASSWORD}")
    } else {
        format!("{url} password={FAKE_DB_PASSWORD}")
    };
    (url, FAKE_DB_PASSWORD.to_string())
}

/// Runs function `name` with `config`, which it must refuse: it reports an
/// init error or exits non-zero without taking an invocation. Returns all
/// it said (init errors, stdout, stderr).
async fn refused(name: &'static str, config: &[(&str, &str)]) -> String {
    let mut function = Function::start(name, config).await;
    function.wait_for_failure().await;
    let init_errors = function.api.init_errors();
    let text = format!("{}\n{}", init_errors.join("\n"), function.output());
    match function.exit {
        Some(status) => assert!(
            !status.success(),
            "the {name} function exited successfully with a bad configuration\n{text}"
        ),
        None => assert!(!init_errors.is_empty(), "{text}"),
    }
    assert_eq!(
        function.api.polls(),
        0,
        "the {name} function asked for an invocation with a bad configuration\n{text}"
    );
    text
}

#[tokio::test]
async fn a_missing_jwt_secret_is_an_init_error_naming_the_variable() {
    let (_db, url) = fresh_db().await;
    let (url, password) = with_password(&url);
    let text = refused(
        "status",
        &[
            ("DATABASE_URL", url.as_str()),
            ("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL),
        ],
    )
    .await;
    assert!(text.contains("SUPABASE_JWT_SECRET"), "{text}");
    assert!(
        !text.contains(&password),
        "the database password leaked:\n{text}"
    );
}

#[tokio::test]
async fn a_short_jwt_secret_is_refused_without_showing_it() {
    let (_db, url) = fresh_db().await;
    let (url, password) = with_password(&url);
    let short_secret = "short-jwt-Secret-9f2b";
    let text = refused(
        "status",
        &[
            ("DATABASE_URL", url.as_str()),
            ("SUPABASE_JWT_SECRET", short_secret),
        ],
    )
    .await;
    assert!(text.contains("SUPABASE_JWT_SECRET"), "{text}");
    assert!(
        !text.contains(short_secret),
        "the JWT secret leaked:\n{text}"
    );
    assert!(
        !text.contains(&password),
        "the database password leaked:\n{text}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_refused_without_showing_its_password() {
    // A server of our own on loopback that hangs up on every connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a listener on 127.0.0.1");
    let port = listener.local_addr().expect("its address").port();
    let hang_up = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let url = format!("postgresql://shotlist:{FAKE_DB_PASSWORD}@127.0.0.1:{port}/shotlist");
    let text = refused(
        "finalize",
        &[
            ("DATABASE_URL", url.as_str()),
            ("SUPABASE_JWT_SECRET", JWT_SECRET),
            ("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL),
        ],
    )
    .await;
    hang_up.abort();
    assert!(text.contains("DATABASE_URL"), "{text}");
    assert!(
        !text.contains(FAKE_DB_PASSWORD),
        "the database password leaked:\n{text}"
    );
    assert!(!text.contains(JWT_SECRET), "the JWT secret leaked:\n{text}");
}

#[tokio::test]
async fn a_malformed_database_url_is_refused_without_showing_its_password() {
    let url = format!("postgresql://shotlist:{FAKE_DB_PASSWORD}@127.0.0.1:notaport/shotlist");
    let text = refused(
        "status",
        &[
            ("DATABASE_URL", url.as_str()),
            ("SUPABASE_JWT_SECRET", JWT_SECRET),
        ],
    )
    .await;
    assert!(text.contains("DATABASE_URL"), "{text}");
    assert!(
        !text.contains(FAKE_DB_PASSWORD),
        "the database password leaked:\n{text}"
    );
}

#[tokio::test]
async fn process_chunk_refuses_an_ai_analyzer_without_keys_or_with_a_bad_list() {
    let (_db, url) = fresh_db().await;
    let missing = refused(
        "process-chunk",
        &[
            ("DATABASE_URL", url.as_str()),
            ("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL),
            ("SHOTLIST_ANALYZER", "replicate"),
        ],
    )
    .await;
    assert!(
        missing.contains("REPLICATE_API_TOKENS is not set"),
        "{missing}"
    );
    let secret = "AIzaSyLeakCanary0123456789";
    let stray = format!("{secret},,{secret}2");
    let bad = refused(
        "process-chunk",
        &[
            ("DATABASE_URL", url.as_str()),
            ("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL),
            ("SHOTLIST_ANALYZER", "gemini"),
            ("GEMINI_API_KEYS", stray.as_str()),
        ],
    )
    .await;
    assert!(bad.contains("GEMINI_API_KEYS: key 2"), "{bad}");
    assert!(!bad.contains(secret), "a key leaked:\n{bad}");
}

#[tokio::test]
async fn status_sends_sheet_files_base64_encoded_and_the_progress_page_as_text_through_the_runtime_api(
) {
    let (db, url) = fresh_db().await;
    let video = film(&db, 2).await;
    db.finalize(video).await.expect("finalize");
    let mut function = Function::start("status", &function_config(&url)).await;
    let service = service_token();

    let xlsx = format!("/videos/{video}/sheet.xlsx");
    let mut event = http_event("GET", &xlsx, "/videos/{id}/{file}", Some(&service));
    event["rawQueryString"] = json!("lang=ru");
    let response = function.respond(event).await;
    assert_eq!(response["statusCode"], json!(200), "{response}");
    assert_eq!(response["isBase64Encoded"], json!(true), "{response}");
    // "PK\x03\x04", a zip file's first bytes, in base64.
    let body = response["body"].as_str().unwrap_or_default();
    assert!(body.starts_with("UEsDB"), "{response}");
    assert_eq!(
        response["headers"]["content-disposition"],
        json!(format!("attachment; filename=\"shotlist-{video}.ru.xlsx\"")),
        "{response}"
    );

    // The page needs no token and is sent as it is.
    let page = format!("/videos/{video}/progress");
    let response = function
        .respond(http_event("GET", &page, "/videos/{id}/progress", None))
        .await;
    assert_eq!(response["statusCode"], json!(200), "{response}");
    assert_ne!(response["isBase64Encoded"], json!(true), "{response}");
    assert_eq!(
        response["body"].as_str(),
        Some(shotlist_shared::page::PROGRESS_PAGE),
        "the page, byte for byte"
    );
    assert_eq!(
        response["headers"]["content-type"],
        json!("text/html; charset=utf-8"),
        "{response}"
    );

    function.assert_healthy(2).await;
}
