//! The HTTP API (submit, status, finalize, force-finalize) fed API Gateway
//! HTTP API v2 events through lambda_http, against a real PostgreSQL and a
//! real generated film: authorization, bad bodies, idempotent submission,
//! and force-finalize of a stuck film.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::cloud::api::{Api, Endpoint, SourceRoot};
use shotlist_shared::cloud::auth::Verifier;
use shotlist_shared::db::{Claim, Db, DbError, Outcome};
use shotlist_shared::model::{Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::ProbeOptions;
use shotlist_shared::time::Fps;
use shotlist_tests::cloud::{
    bearer, http_request, read_response, service_token, user_token, RecordingQueue, JWT_SECRET,
};
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::pg::fresh_db;
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
        let progress = self.db.chunk_progress(video_id).await.unwrap();
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
