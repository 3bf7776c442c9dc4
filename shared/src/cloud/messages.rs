//! The bodies of the messages on the chunk and finalize queues.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One chunk to analyze: the body of a chunk-queue message. Other fields
/// are ignored, so that a newer sender's hints do not make an older worker
/// reject the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkMessage {
    pub video_id: Uuid,
    pub chunk_index: u32,
}

/// A finished film to finalize: the body of a finalize-queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalizeMessage {
    pub video_id: Uuid,
}

impl ChunkMessage {
    pub fn to_body(&self) -> String {
        serde_json::json!({"videoId": self.video_id, "chunkIndex": self.chunk_index}).to_string()
    }

    /// Reads a chunk-queue body. The error names the field that is wrong:
    /// it is recorded with the rejected message for an operator to read.
    pub fn from_body(body: &str) -> Result<ChunkMessage, String> {
        let fields = object(body)?;
        video_id(&fields)?;
        match fields.get("chunkIndex") {
            None => return Err("chunkIndex is missing".into()),
            Some(n) if n.as_u64().is_some_and(|n| u32::try_from(n).is_ok()) => {}
            Some(other) => {
                return Err(format!(
                    "chunkIndex must be a whole number from 0 to {}, got {}",
                    u32::MAX,
                    shown(other)
                ))
            }
        }
        whole(body)
    }
}

impl FinalizeMessage {
    pub fn to_body(&self) -> String {
        serde_json::json!({"videoId": self.video_id}).to_string()
    }

    /// Reads a finalize-queue body; the error names the field that is wrong.
    pub fn from_body(body: &str) -> Result<FinalizeMessage, String> {
        video_id(&object(body)?)?;
        whole(body)
    }
}

type Fields = serde_json::Map<String, serde_json::Value>;

/// The body's fields. A JSON array is refused although serde would read it
/// field by field: a list of ids is not a message for its first id.
fn object(body: &str) -> Result<Fields, String> {
    match serde_json::from_str(body) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(format!(
            "the body is not a JSON object but {}",
            shown(&other)
        )),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

fn video_id(fields: &Fields) -> Result<(), String> {
    match fields.get("videoId") {
        None => Err("videoId is missing".into()),
        Some(serde_json::Value::String(id)) if Uuid::parse_str(id).is_ok() => Ok(()),
        Some(other) => Err(format!("videoId must be a UUID, got {}", shown(other))),
    }
}

/// The message itself, once its fields are known to be right; what is left
/// to refuse is a field given twice.
fn whole<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, String> {
    serde_json::from_str(body).map_err(|e| e.to_string())
}

/// A value as the error quotes it: its JSON, cut to 80 characters.
fn shown(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_naming_the_field_that_is_wrong() {
        let id = "6f1f9d9e-8b7e-4f57-9d57-1a8d6f4d2c11";
        let good = format!(r#"{{"videoId": "{id}", "chunkIndex": 7, "hint": 1}}"#);
        let message = ChunkMessage::from_body(&good).unwrap();
        assert_eq!(
            (message.video_id.to_string(), message.chunk_index),
            (id.into(), 7)
        );
        assert_eq!(
            FinalizeMessage::from_body(&good).unwrap().video_id,
            message.video_id
        );
        for (body, says) in [
            (String::new(), "not JSON"),
            (format!(r#"["{id}", 7]"#), "not a JSON object"),
            (r#"{"chunkIndex": 7}"#.into(), "videoId is missing"),
            (
                r#"{"videoId": 7, "chunkIndex": 7}"#.into(),
                "videoId must be a UUID, got 7",
            ),
            (format!(r#"{{"videoId": "{id}"}}"#), "chunkIndex is missing"),
            (
                format!(r#"{{"videoId": "{id}", "chunkIndex": -1}}"#),
                "chunkIndex must be",
            ),
            (
                format!(r#"{{"videoId": "{id}", "chunkIndex": 4294967296}}"#),
                "4294967296",
            ),
            (
                format!(r#"{{"videoId": "{id}", "chunkIndex": "7"}}"#),
                r#"got "7""#,
            ),
            (
                format!(r#"{{"videoId": "{id}", "videoId": "{id}", "chunkIndex": 7}}"#),
                "duplicate field `videoId`",
            ),
        ] {
            let error = ChunkMessage::from_body(&body).unwrap_err();
            assert!(error.contains(says), "{body}: {error}");
        }
        let long = format!(r#"{{"videoId": "{}"}}"#, "x".repeat(500));
        assert!(FinalizeMessage::from_body(&long).unwrap_err().len() < 150);
    }
}
