//! Running ffmpeg over a chunk's source, as the local analyzer does to
//! measure the chunk and the Replicate one to cut it into a clip: the input
//! to give ffmpeg, the process itself, and what its failure means.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use super::{AnalyzeError, ChunkRequest};
use crate::probe::stderr_tail;

/// How many trailing lines of ffmpeg's diagnostics an error quotes.
const STDERR_LINES: usize = 6;
/// Diagnostics that mean the source itself cannot be read: no retry helps.
const UNREADABLE_MARKERS: [&str; 5] = [
    "No such file or directory",
    "Invalid data found when processing input",
    "moov atom not found",
    "matches no streams",
    "Permission denied",
];

/// An ffmpeg command that runs in `dir` with no input on stdin and no
/// output on stdout, and is killed when dropped.
pub(super) fn command(program: &Path, dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` (ffmpeg, working on `request`'s chunk) to its end, killing
/// it after `limit`. Errors unless it exits successfully: a missing program
/// and an unreadable source are permanent, any other failure may pass.
pub(super) async fn run(
    mut command: tokio::process::Command,
    request: &ChunkRequest,
    limit: Duration,
) -> Result<(), AnalyzeError> {
    let chunk_index = request.chunk_index;
    match tokio::time::timeout(limit, command.output()).await {
        Err(_) => Err(AnalyzeError::TimedOut {
            chunk_index,
            seconds: limit.as_secs_f64(),
        }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(AnalyzeError::ToolMissing {
            chunk_index,
            tool: "ffmpeg",
        }),
        Ok(Err(source)) => Err(AnalyzeError::Io {
            chunk_index,
            context: "starting ffmpeg".into(),
            source,
        }),
        Ok(Ok(output)) if !output.status.success() => Err(failure(request, &output)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// The ffmpeg input for the request's source: a URL as it is, a local path
/// made absolute (ffmpeg runs in a temporary folder) after checking it exists.
pub(super) async fn source_input(request: &ChunkRequest) -> Result<OsString, AnalyzeError> {
    if request.source.contains("://") {
        return Ok(OsString::from(&request.source));
    }
    let chunk_index = request.chunk_index;
    let path = std::path::absolute(&request.source).map_err(|source| AnalyzeError::Io {
        chunk_index,
        context: "resolving the source path".into(),
        source,
    })?;
    let shown = path.display().to_string();
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => {
            // `file:` keeps a name with a colon from being read as a protocol.
            let mut input = OsString::from("file:");
            input.push(path.as_os_str());
            Ok(input)
        }
        Ok(_) => Err(AnalyzeError::SourceUnreadable {
            chunk_index,
            path: shown,
            detail: "not a regular file".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AnalyzeError::SourceMissing {
            chunk_index,
            path: shown,
        }),
        Err(source) => Err(AnalyzeError::Io {
            chunk_index,
            context: format!("reading {shown}"),
            source,
        }),
    }
}

/// Classifies a failed ffmpeg run: an unreadable source is permanent, any
/// other failure may pass.
fn failure(request: &ChunkRequest, output: &Output) -> AnalyzeError {
    let stderr = stderr_tail(&output.stderr, STDERR_LINES);
    let chunk_index = request.chunk_index;
    if output.status.code().is_some() && UNREADABLE_MARKERS.iter().any(|m| stderr.contains(m)) {
        return AnalyzeError::SourceUnreadable {
            chunk_index,
            path: request.source.clone(),
            detail: stderr,
        };
    }
    AnalyzeError::ToolFailed {
        chunk_index,
        tool: "ffmpeg",
        status: output.status.to_string(),
        stderr,
    }
}
