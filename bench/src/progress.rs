//! The progress bar on standard error while a benchmark runs: shown only on a terminal and
//! never with `--json`, so scripts and tests see clean output.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// How often a ticker refreshes the bar.
const TICK: Duration = Duration::from_millis(200);

/// Whether to show a bar: not with `--json`, and only when standard error is a terminal.
pub fn visible(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A bar of `len` steps, hidden unless `visible`.
pub fn bar(visible: bool, len: u64, what: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!("{what} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A bar for a run of `duration`, counting milliseconds, with `done` requests in its message.
pub fn timed(visible: bool, what: &str, duration: Duration, done: Arc<AtomicU64>) -> Ticker {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let bar = bar(visible, millis, &format!("{what} (ms)"));
    let shown = bar.clone();
    let start = Instant::now();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            shown.set_message(format!("{} requests", done.load(Ordering::Relaxed)));
            shown.set_position(elapsed.min(millis));
        }
    });
    Ticker { bar, task }
}

/// A bar of `len` steps that shows `done` as it grows.
pub fn counting(visible: bool, what: &str, len: u64, done: Arc<AtomicU64>) -> Ticker {
    let bar = bar(visible, len, what);
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            shown.set_position(done.load(Ordering::Relaxed).min(len));
        }
    });
    Ticker { bar, task }
}

/// A bar refreshed by a task of its own until [`Ticker::finish`].
#[derive(Debug)]
pub struct Ticker {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Ticker {
    /// Stops refreshing and clears the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
