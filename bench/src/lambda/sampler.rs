//! A process tree's memory, read from `/proc`: one process's high-water
//! mark, and the resident size of a process and its descendants sampled on
//! a thread of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};

/// How often the process tree's memory is sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// `VmHWM` of process `pid`, in bytes.
pub(super) fn high_water_mark(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:")
        .map(|kib| kib * 1024)
        .with_context(|| format!("/proc/{pid}/status has no VmHWM"))
}

/// A `kB` field of `/proc/PID/status`; `None` when the process is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The largest resident size seen of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TreePeak {
    pub(super) bytes: u64,
    /// The most descendants alive at once.
    pub(super) descendants: usize,
    samples: usize,
}

/// Samples the resident memory of a process and its descendants on a
/// thread of its own, so that the samples keep their pace whatever the
/// async runtime is doing.
pub(super) struct TreeSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<TreePeak>,
}

impl TreeSampler {
    pub(super) fn start(root: u32) -> TreeSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = TreePeak::default();
            while !flag.load(Ordering::Relaxed) {
                let (bytes, descendants) = tree_rss(root);
                peak.bytes = peak.bytes.max(bytes);
                peak.descendants = peak.descendants.max(descendants);
                peak.samples += 1;
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak
        });
        TreeSampler { stop, thread }
    }

    /// Stops sampling and answers the peak; an error when not one sample
    /// saw the process.
    pub(super) fn finish(self) -> anyhow::Result<TreePeak> {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
        ensure!(
            peak.samples > 0 && peak.bytes > 0,
            "the memory sampler never saw the function's process ({} samples)",
            peak.samples
        );
        Ok(peak)
    }
}

/// The summed `VmRSS` of `root` and its descendants, and how many
/// descendants there are. Processes that end while being read count as
/// nothing.
fn tree_rss(root: u32) -> (u64, usize) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(parent) = parent_pid(pid) {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&pid) = tree.get(next) {
        tree.extend(children.get(&pid).into_iter().flatten());
        next += 1;
    }
    let bytes = tree
        .iter()
        .filter_map(|&pid| status_kib(pid, "VmRSS:"))
        .sum::<u64>()
        * 1024;
    (bytes, tree.len() - 1)
}

/// The parent of `pid`, from `/proc/PID/stat`: the field after the
/// command's closing parenthesis and the state (the command may hold
/// spaces and parentheses itself).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_parent_other_than_itself() {
        let pid = std::process::id();
        let parent = parent_pid(pid).expect("this process has a parent");
        assert_ne!(parent, pid);
    }

    #[test]
    fn this_process_tree_has_a_resident_size() {
        let (bytes, _) = tree_rss(std::process::id());
        assert!(bytes > 0);
        assert!(high_water_mark(std::process::id()).expect("VmHWM") >= bytes / 2);
    }
}
