//! A video model that follows a script, for tests of `ModelAnalyzer` and of
//! the worker behind it, and the short real film whose cuts the analyzer
//! measures before it asks the model.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shotlist_shared::analyzer::remote::{
    Finish, ModelAnalyzer, ModelReply, ModelSettings, Question, VideoModel,
};
use shotlist_shared::analyzer::{AnalyzeError, ChunkRequest, LocalAnalyzer};
use shotlist_shared::db::Db;
use shotlist_shared::time::Fps;
use tokio::time::Instant;
use uuid::Uuid;

use crate::film::{film_dir, make_film, Film};

/// The cuts of [`short_film`].
pub const SHORT_FILM_CUTS: [i64; 2] = [60, 130];

/// What the scripted model does when it is asked once.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answers with this text, ended as given.
    Reply(String, Finish),
    /// Every API key rests for this long.
    Throttled(Duration),
    /// A provider failure with this message, retryable or not.
    Fail(String, bool),
}

/// A complete answer with `text`.
pub fn complete(text: &str) -> Step {
    Step::Reply(text.to_string(), Finish::Complete)
}

/// An answer with `text` that the provider cut off at its token budget.
pub fn cut_off(text: &str) -> Step {
    Step::Reply(text.to_string(), Finish::CutOff("MAX_TOKENS".into()))
}

/// What the analyzer asked for in one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub deadline: Instant,
    pub max_output_tokens: u32,
}

/// A model that takes its steps in order and records every question.
pub struct ScriptedModel {
    steps: Mutex<VecDeque<Step>>,
    /// Taken on every ask once the steps have run out; without it, asking
    /// more than the script says panics.
    then: Option<Step>,
    asked: Mutex<Vec<Asked>>,
}

impl ScriptedModel {
    /// A model that takes `steps`, one per ask, and no more.
    pub fn new(steps: Vec<Step>) -> Arc<ScriptedModel> {
        Arc::new(ScriptedModel {
            steps: Mutex::new(steps.into()),
            then: None,
            asked: Mutex::default(),
        })
    }

    /// A model that takes `step` on every ask.
    pub fn always(step: Step) -> Arc<ScriptedModel> {
        Arc::new(ScriptedModel {
            steps: Mutex::default(),
            then: Some(step),
            asked: Mutex::default(),
        })
    }

    /// Every question asked so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

#[async_trait]
impl VideoModel for ScriptedModel {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn ask(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError> {
        self.asked.lock().unwrap().push(Asked {
            deadline: question.deadline,
            max_output_tokens: question.max_output_tokens,
        });
        let step = self.steps.lock().unwrap().pop_front();
        match step.or_else(|| self.then.clone()) {
            Some(Step::Reply(text, finish)) => Ok(ModelReply { text, finish }),
            Some(Step::Throttled(wait)) => Err(AnalyzeError::Throttled {
                chunk_index: request.chunk_index,
                analyzer: "scripted",
                wait,
            }),
            Some(Step::Fail(message, retryable)) => Err(AnalyzeError::Provider {
                chunk_index: request.chunk_index,
                analyzer: "scripted",
                message,
                retryable,
            }),
            None => panic!("the model was asked more often than its script says"),
        }
    }
}

/// A model analyzer that measures cuts locally and asks `model`, taking at
/// most `chunk_timeout` per chunk.
pub fn model_analyzer(model: Arc<ScriptedModel>, chunk_timeout: Duration) -> ModelAnalyzer {
    ModelAnalyzer {
        cuts: LocalAnalyzer::default(),
        model,
        settings: ModelSettings {
            chunk_timeout,
            ..ModelSettings::default()
        },
    }
}

/// A 10-second film (250 frames at 25 fps, no sound) with three shots, cut
/// at [`SHORT_FILM_CUTS`]: one chunk.
pub async fn short_film() -> Film {
    tokio::task::spawn_blocking(|| {
        make_film(
            &film_dir(),
            Fps::new(25, 1).unwrap(),
            &SHORT_FILM_CUTS,
            250,
            false,
        )
    })
    .await
    .expect("making the film panicked")
}

/// Registers `film` under a new id, its source the real file.
///
/// # Panics
/// When the film cannot be probed or the database refuses.
pub async fn registered_film(db: &Db, film: &Film) -> Uuid {
    let media = shotlist_shared::probe::probe(&film.path)
        .await
        .expect("probe");
    let id = Uuid::new_v4();
    db.register_film(id, &film.path.to_string_lossy(), &media, Default::default())
        .await
        .expect("film registered");
    id
}

/// A request for the whole of `film` as chunk 0, due by `deadline`.
///
/// # Panics
/// When the film cannot be probed.
pub async fn whole_film_request(film: &Film, deadline: Option<Instant>) -> ChunkRequest {
    let media = shotlist_shared::probe::probe(&film.path)
        .await
        .expect("probe");
    ChunkRequest {
        video_id: Uuid::new_v4(),
        chunk_index: 0,
        source: film.path.to_string_lossy().into_owned(),
        end_frame: media.duration_frames,
        media,
        start_frame: 0,
        deadline,
    }
}
