//! `ModelAnalyzer` against a scripted model: a refused answer is asked again
//! once with twice the budget and the same deadline; a blocked answer keeps
//! the measured cuts; a retry that cannot be made fails the attempt (it is
//! counted) and says why the first answer was refused; an empty shot list is
//! no answer. The cuts are measured in a short real film.

use std::sync::Arc;
use std::time::Duration;

use shotlist_shared::analyzer::remote::{Finish, MAX_OUTPUT_TOKENS};
use shotlist_shared::analyzer::{cuts_of, AnalyzeError, Analyzer};
use shotlist_shared::model::ChunkAnalysis;
use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
use shotlist_tests::fixtures::chunk_state;
use shotlist_tests::pg::fresh_db;
use shotlist_tests::scripted_model::{
    complete, cut_off, model_analyzer, registered_film, short_film, whole_film_request,
    ScriptedModel, Step, SHORT_FILM_CUTS,
};
use tokio::time::Instant;

/// An answer that describes the first shot.
const GOOD: &str = r#"{"shots":[{"shot":1,"type":"wide","description":"a field"}]}"#;

/// The start of an answer that never ends (a model looping to its budget).
const ENDLESS: &str = r#"{"shots":[{"shot":1,"description":"and then and then"#;

const NO_SHOTS: &str = r#"{"shots":[]}"#;

const MINUTES: Duration = Duration::from_secs(300);

/// Measures the cuts of the short film as one chunk due by `deadline` and
/// asks `model` to describe them.
async fn analyze_short_film(
    model: &Arc<ScriptedModel>,
    deadline: Option<Instant>,
) -> Result<ChunkAnalysis, AnalyzeError> {
    let film = short_film().await;
    let request = whole_film_request(&film, deadline).await;
    model_analyzer(model.clone(), MINUTES)
        .analyze(&request)
        .await
}

#[tokio::test]
async fn the_retry_doubles_the_budget_and_keeps_the_requests_sooner_deadline() {
    let soon = Instant::now() + Duration::from_secs(30);
    let model = ScriptedModel::new(vec![cut_off(r#"{"shots":[{"shot":1,"#), complete(GOOD)]);
    let analysis = analyze_short_film(&model, Some(soon))
        .await
        .expect("the second answer is good");
    assert_eq!(analysis.shots[0].description, "a field");
    let asked = model.asked();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|a| a.deadline == soon), "{asked:?}");
    assert_eq!(asked[1].max_output_tokens, asked[0].max_output_tokens * 2);
    assert!(asked[1].max_output_tokens <= MAX_OUTPUT_TOKENS);
}

#[tokio::test]
async fn a_blocked_answer_keeps_the_measured_shots_and_says_why_each_is_undescribed() {
    let blocked = Finish::Blocked("PROHIBITED_CONTENT".into());
    let model = ScriptedModel::new(vec![Step::Reply(String::new(), blocked)]);
    let analysis = analyze_short_film(&model, None)
        .await
        .expect("the measured shots are kept");
    assert_eq!(cuts_of(&analysis), SHORT_FILM_CUTS);
    for shot in &analysis.shots {
        assert!(
            shot.description.starts_with(
                "[not described: the provider blocked the answer (PROHIBITED_CONTENT)]"
            ),
            "{:?}",
            shot.description
        );
    }
    assert_eq!(
        model.asked().len(),
        1,
        "a blocked answer is not asked again"
    );
}

#[tokio::test]
async fn a_failed_retry_names_the_refused_answer_and_what_then_failed() {
    let model = ScriptedModel::new(vec![
        cut_off(ENDLESS),
        Step::Fail("asking the model: the deadline passed".into(), true),
    ]);
    let error = analyze_short_film(&model, None).await.unwrap_err();
    let said = error.to_string();
    assert!(
        said.contains(
            "no usable answer: the answer was cut off (MAX_TOKENS) (output budget 16384 tokens); \
             then asking again failed: "
        ) && said.ends_with("asking the model: the deadline passed"),
        "{said}"
    );
    assert!(error.is_retryable(), "{error:?}");
}

#[tokio::test]
async fn a_throttled_retry_fails_the_attempt_instead_of_waiting_for_free() {
    let model = ScriptedModel::new(vec![
        cut_off(ENDLESS),
        Step::Throttled(Duration::from_secs(30)),
    ]);
    let error = analyze_short_film(&model, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            AnalyzeError::Provider {
                retryable: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.retry_after(), None, "the attempt must be counted");
    let said = error.to_string();
    assert!(
        said.contains("cut off (MAX_TOKENS)") && said.contains("rate-limited"),
        "{said}"
    );
}

/// Each round pays for a full cut-off answer, then meets a 429: the rounds
/// are counted as attempts, so the chunk fails after `max_attempts` instead
/// of being given back for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_answer_then_a_429_spends_attempts_until_the_chunk_fails() {
    let (db, _) = fresh_db().await;
    let film = short_film().await;
    let video_id = registered_film(&db, &film).await;
    let round = [cut_off(ENDLESS), Step::Throttled(Duration::from_millis(10))];
    let model = ScriptedModel::new(round.iter().cycle().take(6).cloned().collect());
    let analyzer = model_analyzer(model.clone(), MINUTES);
    let config = WorkerConfig::default();
    assert_eq!(config.max_attempts, 3);
    for attempt in 1..=2 {
        let done = process_chunk(&db, &analyzer, video_id, 0, &config)
            .await
            .expect("the database answers");
        assert!(
            matches!(
                done,
                Done::Retry {
                    retry_after: None,
                    ..
                }
            ),
            "{done:?}"
        );
        let state = chunk_state(&db, video_id, 0).await;
        assert_eq!(
            (state.status.as_str(), state.attempts),
            ("pending", attempt)
        );
    }
    let done = process_chunk(&db, &analyzer, video_id, 0, &config)
        .await
        .expect("the database answers");
    assert!(matches!(done, Done::Failed { .. }), "{done:?}");
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("failed", 3));
    assert!(state.error.contains("cut off"), "{state:?}");
    assert_eq!(model.asked().len(), 6);
}

#[tokio::test]
async fn an_empty_shot_list_for_measured_shots_is_refused_and_asked_again() {
    let model = ScriptedModel::new(vec![complete(NO_SHOTS), complete(GOOD)]);
    let analysis = analyze_short_film(&model, None)
        .await
        .expect("the second answer is good");
    assert_eq!(analysis.shots[0].description, "a field");
    assert_eq!(cuts_of(&analysis), SHORT_FILM_CUTS);
    let asked = model.asked();
    assert_eq!(asked[1].max_output_tokens, asked[0].max_output_tokens * 2);
}

#[tokio::test]
async fn two_empty_shot_lists_fail_the_attempt_saying_no_shot_was_described() {
    let model = ScriptedModel::always(complete(NO_SHOTS));
    let error = analyze_short_film(&model, None).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    let said = error.to_string();
    assert_eq!(
        said.matches("no shot described, of the 3 measured").count(),
        2,
        "{said}"
    );
    assert_eq!(model.asked().len(), 2);
}

#[test]
fn a_sub_second_throttle_reads_in_tenths_of_a_second() {
    let error = AnalyzeError::Throttled {
        chunk_index: 3,
        analyzer: "gemini",
        wait: Duration::from_millis(400),
    };
    let said = error.to_string();
    assert!(said.ends_with("rate-limited for at least 0.4 s"), "{said}");
}
