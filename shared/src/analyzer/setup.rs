//! Choosing and building the analyzer a run or a function uses, from its
//! name and the environment: `local`, `gemini` or `replicate`.
//!
//! Everything a model analyzer needs is checked here, before any work
//! starts: a missing or malformed key list is one line naming the variable,
//! and a chunk length that cannot fit one request is refused with the
//! numbers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::gemini::{Gemini, GeminiConfig};
use super::remote::{self, Budget, ModelAnalyzer, ModelSettings};
use super::replicate::{Replicate, ReplicateConfig};
use super::{Analyzer, LocalAnalyzer};
use crate::db::Db;

/// Which analyzer runs the chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnalyzerKind {
    /// ffmpeg on this machine: cuts and sound, no network, no keys.
    #[default]
    Local,
    /// Google's Gemini API directly.
    Gemini,
    /// google/gemini-3-pro on Replicate.
    Replicate,
}

impl AnalyzerKind {
    /// The name used on the command line and in `SHOTLIST_ANALYZER`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnalyzerKind::Local => "local",
            AnalyzerKind::Gemini => "gemini",
            AnalyzerKind::Replicate => "replicate",
        }
    }
}

impl std::fmt::Display for AnalyzerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnalyzerKind {
    type Err = String;

    fn from_str(name: &str) -> Result<AnalyzerKind, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(AnalyzerKind::Local),
            "gemini" => Ok(AnalyzerKind::Gemini),
            "replicate" => Ok(AnalyzerKind::Replicate),
            _ => Err(format!(
                "unknown analyzer {name:?}: choose local, gemini or replicate"
            )),
        }
    }
}

/// What a run asks of its analyzer besides the environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalyzerSetup {
    pub kind: AnalyzerKind,
    /// ffmpeg's scene-change threshold for the cuts.
    pub scene_threshold: f64,
    /// The chunk length the film is planned with, for the token budget.
    pub chunk_seconds: f64,
    /// The model analyzers' settings (output budget, chunk timeout).
    pub model: ModelSettings,
    /// ffmpeg's decoding threads per chunk for the cuts (see
    /// [`LocalAnalyzer::decoder_threads`]); `None` is ffmpeg's default.
    pub decoder_threads: Option<std::num::NonZeroUsize>,
}

impl Default for AnalyzerSetup {
    fn default() -> Self {
        AnalyzerSetup {
            kind: AnalyzerKind::Local,
            scene_threshold: LocalAnalyzer::default().scene_threshold,
            chunk_seconds: crate::plan::PlanParams::default().chunk_seconds,
            model: ModelSettings::default(),
            decoder_threads: None,
        }
    }
}

/// An analyzer ready to run, and what one chunk costs it in tokens (none
/// for the local analyzer).
pub struct Built {
    pub analyzer: Arc<dyn Analyzer>,
    pub budget: Option<Budget>,
}

/// Builds the analyzer `setup` names, reading its keys and endpoints
/// through `var` (the process environment in production). `db` keeps the
/// Gemini analyzer's uploads. Fails with one line naming what is wrong.
pub fn build(
    setup: &AnalyzerSetup,
    var: &dyn Fn(&str) -> Option<String>,
    db: &Db,
) -> Result<Built, String> {
    let cuts = LocalAnalyzer {
        scene_threshold: setup.scene_threshold,
        timeout: setup.model.chunk_timeout,
        decoder_threads: setup.decoder_threads,
        ..LocalAnalyzer::default()
    };
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let model: Arc<dyn remote::VideoModel> = match setup.kind {
        AnalyzerKind::Local => {
            return Ok(Built {
                analyzer: Arc::new(cuts),
                budget: None,
            })
        }
        AnalyzerKind::Gemini => {
            let config = GeminiConfig::from_vars(var)?;
            Arc::new(Gemini::new(config, Arc::new(db.clone()))?)
        }
        AnalyzerKind::Replicate => {
            let mut config = ReplicateConfig::from_env(var)?;
            config.ffmpeg = cuts.ffmpeg.clone();
            Arc::new(Replicate::new(config)?)
        }
    };
    let budget = remote::check_budget(setup.chunk_seconds, setup.model.max_output_tokens)?;
    Ok(Built {
        analyzer: Arc::new(ModelAnalyzer {
            cuts,
            model,
            settings: setup.model,
        }),
        budget: Some(budget),
    })
}

/// The `SHOTLIST_CHUNK_TIMEOUT` form of a chunk timeout: whole seconds,
/// 10 to 900 (Lambda's longest invocation).
pub fn parse_chunk_timeout(variable: &str, text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(s) if (10..=900).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "{variable} must be a whole number of seconds from 10 to 900, got {text:?}"
        )),
    }
}

/// Checks, without building anything, that [`build`] will find what
/// `setup` needs in the environment; returns what one chunk costs in
/// tokens. For a command line to fail before it starts any work.
pub fn check(
    setup: &AnalyzerSetup,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Budget>, String> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if setup.kind == AnalyzerKind::Local {
        return Ok(None);
    }
    let budget = remote::check_budget(setup.chunk_seconds, setup.model.max_output_tokens)?;
    match setup.kind {
        AnalyzerKind::Local => {}
        AnalyzerKind::Gemini => drop(GeminiConfig::from_vars(var)?),
        AnalyzerKind::Replicate => drop(Replicate::new(ReplicateConfig::from_env(var)?)?),
    }
    Ok(Some(budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn setup(kind: AnalyzerKind) -> AnalyzerSetup {
        AnalyzerSetup {
            kind,
            ..AnalyzerSetup::default()
        }
    }

    #[test]
    fn analyzer_names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!("Gemini".parse::<AnalyzerKind>(), Ok(AnalyzerKind::Gemini));
        assert_eq!(
            " replicate ".parse::<AnalyzerKind>(),
            Ok(AnalyzerKind::Replicate)
        );
        let err = "openai".parse::<AnalyzerKind>().unwrap_err();
        assert_eq!(
            err,
            "unknown analyzer \"openai\": choose local, gemini or replicate"
        );
    }

    #[test]
    fn a_missing_key_list_is_one_line_naming_the_variable() {
        let none = vars(&[]);
        let err = check(&setup(AnalyzerKind::Gemini), &none).unwrap_err();
        assert!(err.starts_with("GEMINI_API_KEYS is not set"), "{err}");
        assert!(!err.contains('\n'));
        let blank = vars(&[("REPLICATE_API_TOKENS", "  ")]);
        let err = check(&setup(AnalyzerKind::Replicate), &blank).unwrap_err();
        assert!(err.starts_with("REPLICATE_API_TOKENS is not set"), "{err}");
        assert_eq!(check(&setup(AnalyzerKind::Local), &none), Ok(None));
    }

    #[test]
    fn a_bad_key_list_or_model_is_refused_without_showing_a_key() {
        let stray = vars(&[("GEMINI_API_KEYS", "AIzaSECRET1,,AIzaSECRET2")]);
        let err = check(&setup(AnalyzerKind::Gemini), &stray).unwrap_err();
        assert!(
            err.contains("GEMINI_API_KEYS") && !err.contains("SECRET"),
            "{err}"
        );
        let model = vars(&[
            ("REPLICATE_API_TOKENS", "r8_x"),
            ("REPLICATE_MODEL", "gemini"),
        ]);
        let err = check(&setup(AnalyzerKind::Replicate), &model).unwrap_err();
        assert!(err.contains("gemini"), "{err}");
    }

    #[test]
    fn a_chunk_too_long_for_one_request_is_refused_before_work() {
        let keys = vars(&[("GEMINI_API_KEYS", "k1")]);
        let long = AnalyzerSetup {
            chunk_seconds: 3600.0,
            ..setup(AnalyzerKind::Gemini)
        };
        let err = check(&long, &keys).unwrap_err();
        assert!(err.contains("3600") && err.contains("2700"), "{err}");
        let budget = check(&setup(AnalyzerKind::Gemini), &keys).unwrap().unwrap();
        assert_eq!(budget.chunk_input_tokens, 54_000 + remote::PROMPT_TOKENS);
    }
}
