//! The HTTP API (submit, status, downloads, the progress page, finalize,
//! force-finalize) fed API Gateway HTTP API v2 events through lambda_http,
//! against a real PostgreSQL and a real generated film: authorization, bad
//! bodies, idempotent submission, film details, the sheet's files, and
//! force-finalize of a stuck film.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::cloud::api::{Api, Endpoint, SourceRoot};
use shotlist_shared::cloud::auth::Verifier;
use shotlist_shared::db::{Claim, Db, DbError, Outcome};
use shotlist_shared::export::{self, Format, Lang};
use shotlist_shared::model::{Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::ProbeOptions;
use shotlist_shared::time::Fps;
use shotlist_tests::cloud::{
    bearer, http_event, http_request, read_response, service_token, user_token, RecordingQueue,
    JWT_SECRET,
};
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::pg::{connect, fresh_db};
use uuid::Uuid;

/// 200 s at 25 fps: two chunks.
fn film() -> Film {
    let fps = Fps::new(25, 1).unwrap();
    let dir = film_dir();
    std::fs::create_dir_all(&dir).unwrap();
    make_film(&dir, fps, &[1_000, 3_000], 5_000, false)
}

struct Setup {
    db: Db,
    api: Api,
    queue: Arc<RecordingQueue>,
    /// The film's bucket key under the API's source root.
    key: String,
}

async fn setup() -> Setup {
    let film = tokio::task::spawn_blocking(film).await.unwrap();
    let (db, _url) = fresh_db().await;
    let queue = RecordingQueue::new();
    let api = Api {
        db: db.clone(),
        verifier: Verifier::new(JWT_SECRET).unwrap(),
        chunk_queue: queue.clone(),
        source_root: Some(SourceRoot::Folder(film.path.parent().unwrap().into())),
        plan: PlanParams::default(),
        probe: ProbeOptions::default(),
        allow_private_sources: false,
    };
    let key = film
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    Setup {
        db,
        api,
        queue,
        key,
    }
}

impl Setup {
    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let request = http_request(method, path, auth, body);
        read_response(self.api.handle(&Endpoint::ALL, request).await)
    }

    async fn submit_as(&self, auth: &str, body: Value) -> (u16, Value) {
        self.call("POST", "/videos", Some(auth), Some(&body.to_string()))
            .await
    }

    /// A film submitted by `owner`.
    async fn submitted(&self, owner: Uuid) -> Uuid {
        let (status, body) = self
            .submit_as(&user_token(owner), json!({ "source": self.key }))
            .await;
        assert_eq!(status, 202, "{body}");
        body["videoId"].as_str().unwrap().parse().unwrap()
    }

    /// What a caller could observe of a film: progress, sheet, queue.
    async fn snapshot(&self, video_id: Uuid) -> (Value, Option<Value>, usize) {
        let mut progress = self.db.chunk_progress(video_id).await.unwrap();
        // The database's clock, the one thing that changes by itself.
        progress.as_object_mut().unwrap().remove("now");
        let sheet = self
            .db
            .get_sheet(video_id)
            .await
            .unwrap()
            .map(|s| serde_json::to_value(s).unwrap());
        (progress, sheet, self.queue.sent().len())
    }
}

#[tokio::test]
async fn submit_registers_the_film_and_queues_every_chunk_once() {
    let s = setup().await;
    let owner = Uuid::new_v4();
    let (status, body) = s
        .submit_as(
            &user_token(owner),
            json!({ "source": s.key, "durationSeconds": 200.0 }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["totalChunks"], 2);
    assert_eq!(body["created"], true);
    assert_eq!(body["queued"], true);
    assert_eq!(body["ownerId"], owner.to_string());
    let id = body["videoId"].as_str().unwrap().to_string();
    let sent = s.queue.sent();
    let chunks: Vec<(String, u64)> = sent
        .iter()
        .map(|m| {
            (
                m["videoId"].as_str().unwrap().to_string(),
                m["chunkIndex"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(chunks, vec![(id.clone(), 0), (id.clone(), 1)]);

    // The same film again: known, nothing queued.
    let (status, again) = s
        .submit_as(
            &user_token(owner),
            json!({ "source": s.key, "videoId": id }),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(again["totalChunks"], 2);
    assert_eq!(s.queue.sent().len(), 2);

    // Its owner sees its progress.
    let (status, progress) = s
        .call(
            "GET",
            &format!("/videos/{id}"),
            Some(&user_token(owner)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{progress}");
    assert_eq!(progress["totalChunks"], 2);
    assert_eq!(progress["completedChunks"], 0);
    assert_eq!(progress["sheet"], Value::Null);
}

#[tokio::test]
async fn concurrent_submissions_of_one_id_queue_its_chunks_once() {
    let s = setup().await;
    let id = Uuid::new_v4();
    let body = json!({ "source": s.key, "videoId": id });
    let token = service_token();
    let calls = (0..5).map(|_| s.submit_as(&token, body.clone()));
    let answers = futures::future::join_all(calls).await;
    // Exactly one call creates the film. A call that comes while the
    // creator is still queueing the chunks is answered 202 with
    // "queued": false (accepted, not yet queued); every other one 200.
    let created = answers.iter().filter(|(_, a)| a["created"] == true).count();
    assert_eq!(created, 1, "{answers:?}");
    for (status, answer) in &answers {
        let expected = if answer["created"] == true || answer["queued"] == false {
            202
        } else {
            200
        };
        assert_eq!(*status, expected, "{answers:?}");
    }
    assert_eq!(s.queue.sent().len(), 2, "each chunk queued once");
}

#[tokio::test]
async fn a_submission_whose_queueing_failed_is_queued_by_the_next_one() {
    let s = setup().await;
    let id = Uuid::new_v4();
    let body = json!({ "source": s.key, "videoId": id });
    s.queue.fail(true);
    let (status, answer) = s.submit_as(&service_token(), body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains(&id.to_string()));
    s.queue.fail(false);
    let (status, answer) = s.submit_as(&service_token(), body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.queue.sent().len(), 2, "queued on the second submission");
    let (status, _) = s.submit_as(&service_token(), body).await;
    assert_eq!(status, 200);
    assert_eq!(s.queue.sent().len(), 2, "and not again");
}

#[tokio::test]
async fn bad_tokens_and_wrong_callers_are_refused_and_change_nothing() {
    let s = setup().await;
    let owner = Uuid::new_v4();
    let id = s.submitted(owner).await;
    let before = s.snapshot(id).await;
    let other_secret = {
        let claims = shotlist_shared::cloud::auth::Claims {
            sub: None,
            role: "service_role".into(),
            exp: shotlist_shared::cloud::auth::now_epoch() + 600,
        };
        let token = shotlist_shared::cloud::auth::sign(
            "not-the-project-secret-but-long-enough-000",
            &claims,
        )
        .unwrap();
        format!("Bearer {token}")
    };
    let status_path = format!("/videos/{id}");
    let force_path = format!("/videos/{id}/force-finalize");
    let finalize_path = format!("/videos/{id}/finalize");
    let submit = json!({ "source": s.key, "videoId": id }).to_string();
    // (case, method, path, Authorization, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<String>,
        Option<&'a str>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("no header", "GET", &status_path, None, None, 401),
        (
            "not bearer",
            "GET",
            &status_path,
            Some("Basic dXNlcjpwYXNz".into()),
            None,
            401,
        ),
        (
            "malformed token",
            "GET",
            &status_path,
            Some("Bearer abc.def".into()),
            None,
            401,
        ),
        (
            "wrong signature",
            "POST",
            &force_path,
            Some(other_secret),
            None,
            401,
        ),
        (
            "expired",
            "POST",
            &force_path,
            Some(bearer(None, "service_role", -3600)),
            None,
            401,
        ),
        (
            "another user's film",
            "GET",
            &status_path,
            Some(user_token(Uuid::new_v4())),
            None,
            403,
        ),
        (
            "another user resubmits",
            "POST",
            "/videos",
            Some(user_token(Uuid::new_v4())),
            Some(&submit),
            403,
        ),
        (
            "owner force-finalizes",
            "POST",
            &force_path,
            Some(user_token(owner)),
            None,
            403,
        ),
        (
            "owner finalizes",
            "POST",
            &finalize_path,
            Some(user_token(owner)),
            None,
            403,
        ),
        (
            "anon key submits",
            "POST",
            "/videos",
            Some(bearer(None, "anon", 600)),
            Some(&submit),
            403,
        ),
    ];
    for (case, method, path, auth, body, expected) in cases {
        let (status, answer) = s.call(method, path, auth.as_deref(), body).await;
        assert_eq!(status, expected, "{case}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{case}: {answer}"
        );
        assert_eq!(s.snapshot(id).await, before, "{case} changed something");
    }
    // No token value ever comes back in an answer.
    let (_, answer) = s
        .call("GET", &status_path, Some("Bearer abc.def"), None)
        .await;
    assert!(!answer.to_string().contains("abc.def"), "{answer}");
}

#[tokio::test]
async fn bad_bodies_are_refused_naming_the_field_and_register_nothing() {
    let s = setup().await;
    let id = Uuid::new_v4();
    let token = service_token();
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (json!({}), Some("source"), "missing"),
        (json!({ "source": 42 }), Some("source"), "string"),
        (json!({ "source": "  " }), Some("source"), "empty"),
        (
            json!({ "source": "../../etc/passwd" }),
            Some("source"),
            "plain bucket key",
        ),
        (
            json!({ "source": "/etc/passwd" }),
            Some("source"),
            "plain bucket key",
        ),
        (
            json!({ "source": "s3://bucket/film.mp4" }),
            Some("source"),
            "scheme",
        ),
        (
            json!({ "source": "missing-film.mp4" }),
            Some("source"),
            "missing-film.mp4",
        ),
        (
            json!({ "source": s.key, "durationSeconds": -5 }),
            Some("durationSeconds"),
            "positive",
        ),
        (
            json!({ "source": s.key, "durationSeconds": "long" }),
            Some("durationSeconds"),
            "positive",
        ),
        (
            json!({ "source": s.key, "durationSeconds": 3600 }),
            Some("durationSeconds"),
            "lasts 200",
        ),
        (
            json!({ "source": s.key, "videoId": "film-1" }),
            Some("videoId"),
            "not a UUID",
        ),
        (
            json!({ "source": s.key, "ownerId": 7 }),
            Some("ownerId"),
            "UUID",
        ),
        (json!({ "source": s.key, "colour": "red" }), None, "colour"),
    ];
    for (mut body, field, says) in cases {
        if body.get("videoId").is_none() {
            body["videoId"] = json!(id);
        }
        let (status, answer) = s.submit_as(&token, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), field, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{body}: {error}");
    }
    for raw in ["not json", "[1, 2]", ""] {
        let (status, answer) = s.call("POST", "/videos", Some(&token), Some(raw)).await;
        assert_eq!(status, 400, "{raw:?}: {answer}");
    }
    assert!(matches!(
        s.db.video_owner(id).await,
        Err(DbError::NotFound(_))
    ));
    assert!(s.queue.sent().is_empty());
    let (status, answer) = s
        .call("GET", "/videos/not-a-uuid", Some(&token), None)
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("id")),
        "{answer}"
    );
    let (status, _) = s
        .call(
            "GET",
            &format!("/videos/{}", Uuid::new_v4()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.call("GET", "/films", Some(&token), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn nothing_that_changes_a_film_answers_get() {
    let s = setup().await;
    let id = s.submitted(Uuid::new_v4()).await;
    let before = s.snapshot(id).await;
    let token = service_token();
    for path in [
        format!("/videos/{id}/finalize"),
        format!("/videos/{id}/force-finalize"),
    ] {
        let (status, answer) = s.call("GET", &path, Some(&token), None).await;
        assert_eq!(status, 405, "{path}: {answer}");
    }
    let (status, _) = s.call("GET", "/videos", Some(&token), None).await;
    assert_eq!(status, 405);
    let (status, _) = s
        .call("POST", &format!("/videos/{id}"), Some(&token), Some("{}"))
        .await;
    assert_eq!(status, 405);
    assert_eq!(s.snapshot(id).await, before);
}

/// Claims chunk `index` and commits `shots` (absolute frames) for it.
async fn complete(db: &Db, id: Uuid, index: u32, shots: &[Shot]) {
    let Claim::Claimed(c) = db
        .claim_chunk(id, index, Duration::from_secs(60), 3)
        .await
        .unwrap()
    else {
        panic!("chunk {index} claimable")
    };
    let report = db
        .complete_chunk(id, index, c.lease_token, shots)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
}

fn shot(start_frame: i64, end_frame: i64, description: &str) -> Shot {
    Shot {
        start_frame,
        end_frame,
        shot_type: ShotType::Medium,
        description: description.into(),
        dialogue: vec![],
    }
}

#[tokio::test]
async fn finalize_answers_409_until_the_film_is_finished_then_the_same_sheet() {
    let s = setup().await;
    let owner = Uuid::new_v4();
    let id = s.submitted(owner).await;
    let token = service_token();
    let path = format!("/videos/{id}/finalize");
    let (status, answer) = s.call("POST", &path, Some(&token), None).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("not finished"));
    let (status, _) = s
        .call(
            "POST",
            &format!("/videos/{}/finalize", Uuid::new_v4()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);

    complete(
        &s.db,
        id,
        0,
        &[shot(0, 1_000, "a"), shot(1_000, 4_500, "b")],
    )
    .await;
    complete(&s.db, id, 1, &[shot(4_125, 5_000, "c")]).await;
    let (status, first) = s.call("POST", &path, Some(&token), None).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = s.call("POST", &path, Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(first, second, "finalizing again returns the same sheet");
    assert_eq!(first["sheet"]["status"], "complete");
    assert_eq!(
        first["sheet"]["source"], s.key,
        "the key, not the server's folder"
    );
    let (_, progress) = s
        .call(
            "GET",
            &format!("/videos/{id}"),
            Some(&user_token(owner)),
            None,
        )
        .await;
    assert_eq!(progress["sheet"], first["sheet"]);
    assert_eq!(progress["finished"], true);
}

#[tokio::test]
async fn force_finalize_ends_a_stuck_film_with_what_exists_and_lists_the_gap() {
    let s = setup().await;
    let id = s.submitted(Uuid::new_v4()).await;
    complete(
        &s.db,
        id,
        0,
        &[shot(0, 1_000, "kept 1"), shot(1_000, 4_500, "kept 2")],
    )
    .await;
    // Chunk 1's worker died holding it.
    let Claim::Claimed(dead) =
        s.db.claim_chunk(id, 1, Duration::from_secs(600), 3)
            .await
            .unwrap()
    else {
        panic!("claimable")
    };
    let token = service_token();
    let path = format!("/videos/{id}/force-finalize");
    let (status, answer) = s.call("POST", &path, Some(&token), Some("{}")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["forcedChunks"], json!([1]));
    let sheet = &answer["sheet"];
    assert_eq!(sheet["status"], "partial");
    let descriptions: Vec<&str> = sheet["shots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions, vec!["kept 1", "kept 2"], "{sheet}");
    let gaps = sheet["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{sheet}");
    assert_eq!(gaps[0]["chunks"], json!([1]));
    assert_eq!(gaps[0]["endFrame"], 5_000);
    assert!(gaps[0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("force-finalized"));

    // The dead worker comes back and commits: nothing is written.
    let late =
        s.db.complete_chunk(id, 1, dead.lease_token, &[shot(4_200, 5_000, "late")])
            .await
            .unwrap();
    assert_eq!(late.outcome, Outcome::AlreadyFailed);
    // Forcing again changes nothing.
    let (status, again) = s.call("POST", &path, Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(again["forcedChunks"], json!([]));
    assert_eq!(&again["sheet"], sheet);
}

#[tokio::test]
async fn force_finalize_with_retry_queues_the_unfinished_chunks_again() {
    let s = setup().await;
    let id = s.submitted(Uuid::new_v4()).await;
    complete(&s.db, id, 0, &[shot(0, 4_500, "done")]).await;
    let queued_before = s.queue.sent().len();
    let token = service_token();
    let path = format!("/videos/{id}/force-finalize");
    let (status, answer) = s
        .call("POST", &path, Some(&token), Some(r#"{"retry": true}"#))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["requeuedChunks"], json!([1]));
    let sent = s.queue.sent();
    assert_eq!(sent.len(), queued_before + 1);
    assert_eq!(sent.last().unwrap()["chunkIndex"], 1);
    assert_eq!(s.db.get_sheet(id).await.unwrap(), None, "nothing finalized");
    let (status, answer) = s
        .call("POST", &path, Some(&token), Some(r#"{"retry": "yes"}"#))
        .await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("retry")));
}

// Film details, downloads and the progress page.

impl Setup {
    /// The raw answer to a request whose query string is `query`.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        query: &str,
        auth: Option<&str>,
    ) -> lambda_http::Response<lambda_http::Body> {
        let mut event = http_event(method, path, auth, None);
        event["rawQueryString"] = json!(query);
        let request = lambda_http::request::from_str(&event.to_string()).expect("a valid event");
        self.api.handle(&Endpoint::ALL, request).await
    }
}

/// A response's header, or "" when it has none.
fn header<'a>(response: &'a lambda_http::Response<lambda_http::Body>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("a text header"))
        .unwrap_or("")
}

fn body_bytes(response: &lambda_http::Response<lambda_http::Body>) -> Vec<u8> {
    match response.body() {
        lambda_http::Body::Text(t) => t.as_bytes().to_vec(),
        lambda_http::Body::Binary(b) => b.clone(),
        lambda_http::Body::Empty => Vec::new(),
        _ => panic!("an unexpected body"),
    }
}

fn body_json(response: &lambda_http::Response<lambda_http::Body>) -> Value {
    serde_json::from_slice(&body_bytes(response)).expect("a JSON body")
}

/// Whether `text` is a UTC time as chunk_progress writes them:
/// `2026-12-04T12:00:00.000Z`.
fn is_utc_rfc3339(text: &str) -> bool {
    let shape = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect::<String>();
    shape == "9999-99-99T99:99:99.999Z"
}

#[tokio::test]
async fn film_details_given_at_submit_show_in_the_progress_document_and_a_resubmission_replaces_them(
) {
    let s = setup().await;
    let owner = Uuid::new_v4();
    let token = user_token(owner);
    let details = json!({
        "title": "  Сталкер  ",
        "year": "1979",
        "director": "Андрей Тарковский",
        "studio": "Мосфильм",
        "country": "СССР",
    });
    let (status, answer) = s
        .submit_as(&token, json!({ "source": s.key, "details": details }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["videoId"].as_str().unwrap().to_string();
    let path = format!("/videos/{id}");
    let (status, progress) = s.call("GET", &path, Some(&token), None).await;
    assert_eq!(status, 200, "{progress}");
    assert_eq!(
        progress["details"],
        json!({
            "title": "Сталкер",
            "year": "1979",
            "director": "Андрей Тарковский",
            "studio": "Мосфильм",
            "country": "СССР",
        }),
        "stored trimmed"
    );
    // The rest of the contract of the progress document.
    for key in ["createdAt", "now"] {
        let time = progress[key].as_str().unwrap_or_default();
        assert!(is_utc_rfc3339(time), "{key}: {progress}");
    }
    assert!(progress["createdAt"].as_str() <= progress["now"].as_str());
    let chunks = progress["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 2);
    for chunk in chunks {
        for key in [
            "index",
            "status",
            "startTimecode",
            "endTimecode",
            "attempts",
            "error",
        ] {
            assert!(chunk.get(key).is_some(), "{key}: {chunk}");
        }
        let updated = chunk["updatedAt"].as_str().unwrap_or_default();
        assert!(is_utc_rfc3339(updated), "{chunk}");
    }

    // Submitting again without details keeps them; with details replaces
    // them whole.
    let (status, _) = s
        .submit_as(&token, json!({ "source": s.key, "videoId": id }))
        .await;
    assert_eq!(status, 200);
    let stored = s.db.video_details(id.parse().unwrap()).await.unwrap();
    assert_eq!(stored.title.as_deref(), Some("Сталкер"));
    let (status, _) = s
        .submit_as(
            &token,
            json!({ "source": s.key, "videoId": id, "details": { "title": "Зеркало" } }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, progress) = s.call("GET", &path, Some(&token), None).await;
    assert_eq!(progress["details"], json!({ "title": "Зеркало" }));
    assert_eq!(s.queue.sent().len(), 2, "resubmissions queue nothing");
}

#[tokio::test]
async fn bad_film_details_are_refused_naming_the_field_and_register_nothing() {
    let s = setup().await;
    let id = Uuid::new_v4();
    let token = service_token();
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!("Сталкер"), "details", "must be an object"),
        (json!(["Сталкер"]), "details", "must be an object"),
        (json!({ "titel": "Сталкер" }), "details", "titel"),
        (json!({ "year": 1979 }), "details.year", "must be a string"),
        (
            json!({ "studio": ["Мосфильм"] }),
            "details.studio",
            "string",
        ),
        (
            json!({ "title": "Сталкер\nDROP TABLE shotlist.videos" }),
            "details.title",
            "line break",
        ),
        (
            json!({ "director": "Я".repeat(301) }),
            "details.director",
            "300",
        ),
        (
            json!({ "country": "\u{1b}[31mСССР" }),
            "details.country",
            "control",
        ),
    ];
    for (details, field, says) in cases {
        let body = json!({ "source": s.key, "videoId": id, "details": details });
        let (status, answer) = s.submit_as(&token, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), Some(field), "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{body}: {error}");
    }
    assert!(matches!(
        s.db.video_owner(id).await,
        Err(DbError::NotFound(_))
    ));
    assert!(s.queue.sent().is_empty());
    // null is "no details".
    let (status, answer) = s
        .submit_as(
            &token,
            json!({ "source": s.key, "videoId": id, "details": null }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert!(s.db.video_details(id).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_progress_page_is_served_without_a_token_with_a_strict_policy_and_loads_nothing_from_elsewhere(
) {
    let s = setup().await;
    let id = s.submitted(Uuid::new_v4()).await;
    // Any well-formed id gets the same page: it holds no film's data.
    for film in [id, Uuid::new_v4()] {
        let page = s
            .raw("GET", &format!("/videos/{film}/progress"), "", None)
            .await;
        assert_eq!(page.status(), 200);
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&page, "cache-control"), "no-store");
        assert_eq!(header(&page, "x-content-type-options"), "nosniff");
        assert_eq!(header(&page, "referrer-policy"), "no-referrer");
        let csp = header(&page, "content-security-policy");
        for directive in [
            "default-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} in {csp}");
        }
        assert!(!csp.contains("http"), "no other origin in {csp}");
        let html = String::from_utf8(body_bytes(&page)).unwrap();
        assert_eq!(html, shotlist_shared::page::PROGRESS_PAGE);
    }
    let html = shotlist_shared::page::PROGRESS_PAGE.to_ascii_lowercase();
    let compact: String = html.chars().filter(|c| !c.is_whitespace()).collect();
    for attribute in ["src=", "href=", "url("] {
        for quote in ["", "\"", "'"] {
            for scheme in ["http:", "https:", "//"] {
                let external = format!("{attribute}{quote}{scheme}");
                assert!(!compact.contains(&external), "the page has {external}");
            }
        }
    }
    assert!(
        !compact.contains("@import"),
        "the page imports a stylesheet"
    );

    // A malformed id is not a page; nor is another method.
    for path in [
        "/videos/not-a-uuid/progress",
        "/videos/1%27%20OR%201%3D1/progress",
    ] {
        let answer = s.raw("GET", path, "", None).await;
        assert_eq!(answer.status(), 404, "{path}");
    }
    let answer = s
        .raw("POST", &format!("/videos/{id}/progress"), "", None)
        .await;
    assert_eq!(answer.status(), 405);
}

#[tokio::test]
async fn downloads_answer_409_until_the_sheet_exists_then_every_format_with_its_type_and_name() {
    let s = setup().await;
    let owner = Uuid::new_v4();
    let token = user_token(owner);
    let (status, answer) = s
        .submit_as(
            &token,
            json!({ "source": s.key, "details": { "title": "Сталкер", "year": "1979" } }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id: Uuid = answer["videoId"].as_str().unwrap().parse().unwrap();
    let csv_path = format!("/videos/{id}/sheet.csv");

    let not_yet = |done: u32| format!("video {id} has no sheet yet: {done} of 2 chunks done");
    let answer = s.raw("GET", &csv_path, "lang=ru", Some(&token)).await;
    assert_eq!(answer.status(), 409);
    assert_eq!(body_json(&answer)["error"], not_yet(0));
    let spoken = Shot {
        start_frame: 1_000,
        end_frame: 4_500,
        shot_type: ShotType::CloseUp,
        description: "Сталкер идёт по рельсам\nТитр: «Зона»".into(),
        dialogue: vec![shotlist_shared::model::DialogueLine {
            speaker: "Писатель".into(),
            line: "Куда мы идём?".into(),
            offscreen: false,
            start_frame: None,
        }],
    };
    complete(&s.db, id, 0, &[shot(0, 1_000, "a"), spoken]).await;
    let answer = s.raw("GET", &csv_path, "", Some(&token)).await;
    assert_eq!(answer.status(), 409);
    assert_eq!(body_json(&answer)["error"], not_yet(1));
    complete(&s.db, id, 1, &[shot(4_125, 5_000, "c")]).await;
    // Finished, but finalize has not run yet: still no sheet.
    let answer = s.raw("GET", &csv_path, "", Some(&token)).await;
    assert_eq!(answer.status(), 409);
    assert_eq!(body_json(&answer)["error"], not_yet(2));
    let (status, finalized) = s
        .call(
            "POST",
            &format!("/videos/{id}/finalize"),
            Some(&service_token()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{finalized}");
    let sheet: shotlist_shared::sheet::Sheet =
        serde_json::from_value(finalized["sheet"].clone()).unwrap();
    let details = s.db.video_details(id).await.unwrap();
    assert_eq!(details.title.as_deref(), Some("Сталкер"));

    for (ext, query, lang, name) in [
        ("json", "", "en", format!("shotlist-{id}.json")),
        ("json", "lang=ru", "ru", format!("shotlist-{id}.json")),
        ("csv", "", "en", format!("shotlist-{id}.en.csv")),
        ("csv", "lang=ru", "ru", format!("shotlist-{id}.ru.csv")),
        ("xlsx", "lang=en", "en", format!("shotlist-{id}.en.xlsx")),
        (
            "xlsx",
            "x=1&lang=ru",
            "ru",
            format!("shotlist-{id}.ru.xlsx"),
        ),
        ("docx", "", "en", format!("shotlist-{id}.en.docx")),
        ("docx", "lang=ru", "ru", format!("shotlist-{id}.ru.docx")),
    ] {
        let format: Format = ext.parse().unwrap();
        let path = format!("/videos/{id}/sheet.{ext}");
        let case = format!("{path}?{query}");
        let answer = s.raw("GET", &path, query, Some(&token)).await;
        let bytes = body_bytes(&answer);
        assert_eq!(
            answer.status(),
            200,
            "{case}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(
            header(&answer, "content-type"),
            format.content_type(),
            "{case}"
        );
        assert_eq!(
            header(&answer, "content-disposition"),
            format!("attachment; filename=\"{name}\""),
            "{case}"
        );
        assert!(
            matches!(answer.body(), lambda_http::Body::Binary(_)),
            "{case}: binary, so that API Gateway gets it base64-encoded"
        );
        let lang: Lang = lang.parse().unwrap();
        match format {
            Format::Json => {
                let served: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(served, finalized["sheet"], "{case}");
            }
            Format::Csv => {
                let expected = export::render(&sheet, &details, format, lang).unwrap();
                assert_eq!(bytes, expected, "{case}");
                let text = String::from_utf8(bytes).unwrap();
                let headers = export::trade_headers(lang);
                assert!(
                    text.starts_with(&format!("\u{FEFF}{}", headers[0])),
                    "{case}: a byte-order mark, then the headers: {text}"
                );
                assert_eq!(text.matches('\u{FEFF}').count(), 1, "{case}: one mark");
                assert!(
                    text.contains("Сталкер идёт по рельсам\nТитр: «Зона»"),
                    "{text}"
                );
                assert!(text.contains("ПИСАТЕЛЬ\nКуда мы идём?"), "{text}");
                let close_up = export::shot_type_label(ShotType::CloseUp, lang);
                assert!(text.contains(close_up), "{case}: {close_up} in {text}");
            }
            Format::Xlsx | Format::Docx => {
                assert!(bytes.starts_with(b"PK\x03\x04"), "{case}: a zip file");
            }
        }
    }
}

#[tokio::test]
async fn downloads_are_refused_to_other_users_and_for_unknown_formats_languages_and_films() {
    let s = setup().await;
    let owner = Uuid::new_v4();
    let id = s.submitted(owner).await;
    complete(&s.db, id, 0, &[shot(0, 4_500, "a")]).await;
    complete(&s.db, id, 1, &[shot(4_500, 5_000, "b")]).await;
    s.db.finalize(id).await.unwrap();
    let mine = user_token(owner);
    let answer = s
        .raw("GET", &format!("/videos/{id}/sheet.csv"), "", Some(&mine))
        .await;
    assert_eq!(answer.status(), 200, "the owner may");
    let answer = s
        .raw(
            "GET",
            &format!("/videos/{id}/sheet.docx"),
            "",
            Some(&service_token()),
        )
        .await;
    assert_eq!(answer.status(), 200, "the service role may");

    let unknown = Uuid::new_v4();
    let unknown_text = unknown.to_string();
    let someone = user_token(Uuid::new_v4());
    // (case, path, query, Authorization, status, field, the error says)
    type Case<'a> = (
        &'a str,
        String,
        &'a str,
        Option<&'a str>,
        u16,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no token",
            format!("/videos/{id}/sheet.csv"),
            "",
            None,
            401,
            None,
            "",
        ),
        (
            "another user",
            format!("/videos/{id}/sheet.xlsx"),
            "",
            Some(&someone),
            403,
            None,
            "another user",
        ),
        (
            "unknown format",
            format!("/videos/{id}/sheet.pdf"),
            "",
            Some(&mine),
            400,
            Some("format"),
            "\"pdf\"",
        ),
        (
            "no format",
            format!("/videos/{id}/sheet."),
            "",
            Some(&mine),
            400,
            Some("format"),
            "unknown format",
        ),
        (
            "not a sheet",
            format!("/videos/{id}/notes.csv"),
            "",
            Some(&mine),
            404,
            None,
            "no route",
        ),
        (
            "unknown lang",
            format!("/videos/{id}/sheet.csv"),
            "lang=de",
            Some(&mine),
            400,
            Some("lang"),
            "\"de\"",
        ),
        (
            "empty lang",
            format!("/videos/{id}/sheet.docx"),
            "lang=",
            Some(&mine),
            400,
            Some("lang"),
            "lang",
        ),
        (
            "unknown film",
            format!("/videos/{unknown}/sheet.csv"),
            "",
            Some(&mine),
            404,
            None,
            &unknown_text,
        ),
        (
            "bad id",
            "/videos/x/sheet.csv".to_string(),
            "",
            Some(&mine),
            400,
            Some("id"),
            "not a UUID",
        ),
    ];
    for (case, path, query, auth, status, field, says) in cases {
        let answer = s.raw("GET", &path, query, auth).await;
        assert_eq!(answer.status(), status, "{case}");
        let body = body_json(&answer);
        assert_eq!(body["field"].as_str(), field, "{case}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty() && error.contains(says), "{case}: {body}");
    }
    let answer = s
        .raw("POST", &format!("/videos/{id}/sheet.csv"), "", Some(&mine))
        .await;
    assert_eq!(answer.status(), 405, "downloads are GET only");
}

// The SQL side of the details.

#[tokio::test]
async fn set_video_details_twice_and_concurrently_ends_with_one_callers_details_whole() {
    let s = setup().await;
    let id = s.submitted(Uuid::new_v4()).await;
    let details = |n: usize| shotlist_shared::sheet::FilmDetails {
        title: Some(format!("Фильм {n}")),
        year: Some(format!("{}", 1960 + n)),
        director: n.is_multiple_of(2).then(|| format!("Режиссёр {n}")),
        ..Default::default()
    };
    s.db.set_video_details(id, &details(1)).await.unwrap();
    s.db.set_video_details(id, &details(2)).await.unwrap();
    assert_eq!(s.db.video_details(id).await.unwrap(), details(2));

    let writers = (0..20).map(|n| {
        let db = s.db.clone();
        let written = details(n);
        async move { db.set_video_details(id, &written).await }
    });
    for result in futures::future::join_all(writers).await {
        result.expect("no writer fails");
    }
    let stored = s.db.video_details(id).await.unwrap();
    assert!(
        (0..20).any(|n| stored == details(n)),
        "one writer's details, not a mix: {stored:?}"
    );
    let progress = s.db.chunk_progress(id).await.unwrap();
    assert_eq!(progress["details"], serde_json::to_value(&stored).unwrap());
    // Clearing them.
    s.db.set_video_details(id, &Default::default())
        .await
        .unwrap();
    assert!(s.db.video_details(id).await.unwrap().is_empty());
}

#[tokio::test]
async fn set_video_details_refuses_an_unknown_film_and_details_no_sheet_could_show() {
    let (db, url) = fresh_db().await;
    let unknown = Uuid::new_v4();
    let given = shotlist_shared::sheet::FilmDetails {
        title: Some("Сталкер".into()),
        ..Default::default()
    };
    assert!(matches!(
        db.set_video_details(unknown, &given).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        db.video_details(unknown).await,
        Err(DbError::NotFound(_))
    ));

    // Past the Rust checks, straight to the function.
    let id = Uuid::new_v4();
    db.register_video(id, 200.0, PlanParams::default())
        .await
        .unwrap();
    let client = connect(&url).await;
    client.batch_execute("SET ROLE service_role").await.unwrap();
    for (bad, says) in [
        ("'[]'", "must be a JSON object"),
        ("'null'", "must be a JSON object"),
        ("NULL", "must be a JSON object"),
        (r#"'{"colour": "red"}'"#, "unknown film detail colour"),
        (r#"'{"year": 1979}'"#, "must be a string"),
        (r#"'{"title": "a\nb"}'"#, "one line"),
        (r#"'{"title": "a\u0085b"}'"#, "one line"),
    ] {
        let sql = format!("SELECT public.set_video_details($1, {bad}::jsonb)");
        let error = client
            .query_typed(&sql, &[(&id, tokio_postgres::types::Type::UUID)])
            .await
            .expect_err(bad);
        let db_error = error.as_db_error().expect("a database error");
        assert_eq!(db_error.code().code(), "22023", "{bad}");
        assert!(
            db_error.message().contains(says),
            "{bad}: {}",
            db_error.message()
        );
    }
    assert!(
        db.video_details(id).await.unwrap().is_empty(),
        "nothing stored"
    );
    // 300 characters are 300, however many bytes they take.
    let longest = json!({ "title": "Я".repeat(300) });
    client
        .query_typed(
            "SELECT 1 FROM public.set_video_details($1, $2)",
            &[
                (&id, tokio_postgres::types::Type::UUID),
                (&longest, tokio_postgres::types::Type::JSONB),
            ],
        )
        .await
        .expect("300 Cyrillic characters are taken");
    // The table refuses a non-object even from its owner.
    client.batch_execute("RESET ROLE").await.unwrap();
    let error = client
        .query_typed(
            "UPDATE shotlist.videos SET details = '[]' WHERE video_id = $1",
            &[(&id, tokio_postgres::types::Type::UUID)],
        )
        .await
        .expect_err("a CHECK");
    assert_eq!(error.code().map(|c| c.code()), Some("23514"));
}

#[tokio::test]
async fn migration_0008_applies_again_over_stored_details_and_keeps_them() {
    let (db, url) = fresh_db().await;
    let s_id = Uuid::new_v4();
    db.register_video(s_id, 200.0, PlanParams::default())
        .await
        .unwrap();
    let given = shotlist_shared::sheet::FilmDetails {
        title: Some("Солярис".into()),
        country: Some("СССР".into()),
        ..Default::default()
    };
    db.set_video_details(s_id, &given).await.unwrap();
    let client = connect(&url).await;
    let (_, sql) = shotlist_shared::db::MIGRATIONS
        .iter()
        .find(|(name, _)| *name == "0008_film_details")
        .expect("0008 is registered");
    for round in 0..2 {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("applying 0008 again, round {round}: {e}"));
    }
    assert_eq!(db.video_details(s_id).await.unwrap(), given);
    assert!(db.migrate().await.unwrap().is_empty());
    let constraints: i64 = client
        .query_typed_one(
            "SELECT count(*) FROM pg_catalog.pg_constraint \
             WHERE conrelid = 'shotlist.videos'::regclass AND conname = 'videos_details_check'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(constraints, 1, "one CHECK, however often applied");
}
