//! Showing a run's progress on stderr: a progress bar on a terminal, plain
//! lines otherwise (logs, CI, pipes).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use shotlist_shared::runner::RunEvent;

/// How often the bar redraws on its own, so elapsed time and ETA move.
const TICK: Duration = Duration::from_millis(200);

const SPINNER_TEMPLATE: &str = "{spinner} {msg} [{elapsed_precise}]";
const BAR_TEMPLATE: &str =
    "{spinner} chunks {pos}/{len} [{bar:30}] elapsed {elapsed_precise}, ETA {eta} {msg}";

/// Reports run events on stderr.
#[derive(Debug)]
pub struct Progress {
    /// `None` when stderr is not a terminal: plain lines then.
    bar: Option<ProgressBar>,
    total: AtomicU32,
    /// The most chunks reported finished so far: a count that does not
    /// grow (a chunk another run finished, reports out of order) is not
    /// shown again.
    shown: AtomicU32,
}

impl Progress {
    /// A reporter that draws a bar when `interactive`, else prints lines.
    pub fn new(interactive: bool) -> Progress {
        let bar = interactive.then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template(SPINNER_TEMPLATE) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(TICK);
            bar
        });
        Progress {
            bar,
            total: AtomicU32::new(0),
            shown: AtomicU32::new(0),
        }
    }

    /// Says what is happening before the chunks start.
    pub fn stage(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(text.to_string()),
            None => note!("{text}"),
        }
    }

    /// Shows one event of the run.
    pub fn on_event(&self, event: RunEvent) {
        match event {
            RunEvent::Registered {
                video_id,
                total_chunks,
            } => self.registered(video_id, total_chunks),
            RunEvent::Resumed {
                completed,
                failed,
                total,
            } => self.resumed(completed, failed, total),
            RunEvent::ChunkDone {
                completed,
                failed,
                total,
                ..
            } => self.chunk_done(completed, failed, total),
            RunEvent::ChunkHeld {
                index,
                until_utc,
                remaining,
            } => {
                let total = self.total.load(Ordering::Relaxed);
                self.line(&format!(
                    "chunk {}/{total} is held by another run until {until_utc} UTC (in {} s); \
                     waiting for it (a live run renews its lease, a dead run's runs out)",
                    index + 1,
                    remaining.as_secs_f64().ceil()
                ));
            }
            RunEvent::ChunkRetry { index, error } => {
                let total = self.total.load(Ordering::Relaxed);
                self.line(&format!(
                    "chunk {} of {total} will be tried again: {}",
                    index + 1,
                    one_line(&error)
                ));
            }
            RunEvent::Finalized => self.stage("sheet assembled"),
        }
    }

    /// Removes the bar, if any, before the final output.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn registered(&self, video_id: uuid::Uuid, total: u32) {
        self.total.store(total, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => {
                if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_length(u64::from(total));
                bar.set_position(0);
                bar.set_message("");
                bar.reset_eta();
                bar.println(format!("video {video_id}: {}", chunks(total)));
            }
            None => note!("video {video_id}: {}", chunks(total)),
        }
    }

    fn resumed(&self, completed: u32, failed: u32, total: u32) {
        let done = completed + failed;
        self.shown.fetch_max(done, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(u64::from(done));
            // The ETA would count the finished chunks as this run's speed.
            bar.reset_eta();
        }
        let failed = if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        };
        self.line(&format!(
            "resuming: {done} of {total} chunks already done{failed}"
        ));
    }

    fn chunk_done(&self, completed: u32, failed: u32, total: u32) {
        let done = completed + failed;
        if !self.advances(done) {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(u64::from(total));
                bar.set_position(u64::from(done));
                if failed > 0 {
                    bar.set_message(format!("({failed} failed)"));
                }
            }
            None if failed > 0 => note!("chunk {done}/{total} done ({failed} failed)"),
            None => note!("chunk {done}/{total} done"),
        }
    }

    /// Records `done` finished chunks; true when that is more than shown
    /// so far.
    fn advances(&self, done: u32) -> bool {
        self.shown.fetch_max(done, Ordering::Relaxed) < done
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => note!("{text}"),
        }
    }
}

/// `text` with its line breaks folded into spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "1 chunk", "18 chunks".
fn chunks(total: u32) -> String {
    if total == 1 {
        "1 chunk".to_string()
    } else {
        format!("{total} chunks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_line_breaks() {
        assert_eq!(one_line("a\n  b\r\nc "), "a b c");
    }

    #[test]
    fn registration_records_the_total() {
        let progress = Progress::new(false);
        progress.on_event(RunEvent::Registered {
            video_id: uuid::Uuid::nil(),
            total_chunks: 18,
        });
        assert_eq!(progress.total.load(Ordering::Relaxed), 18);
    }

    #[test]
    fn a_count_of_finished_chunks_is_shown_once() {
        let progress = Progress::new(false);
        progress.on_event(RunEvent::Resumed {
            completed: 3,
            failed: 1,
            total: 20,
        });
        assert!(!progress.advances(4), "the resumed count is shown already");
        assert!(!progress.advances(3), "a late report");
        assert!(progress.advances(5));
        assert!(!progress.advances(5), "the same count again");
        assert!(progress.advances(6));
    }
}
