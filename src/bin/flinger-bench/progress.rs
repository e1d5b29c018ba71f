//! A progress line for long phases (elapsed, requests, current rate),
//! redrawn once a second on stderr when stderr is a terminal and silent when
//! it is piped, so logs and CI output stay clean. It never touches stdout,
//! where the report goes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running progress line; drop or [`Progress::finish`] clears it.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    /// Set (under the stderr lock) when the line is cleared, so a redraw
    /// racing with the clear cannot leave a stale line behind.
    done: Arc<AtomicBool>,
}

impl Progress {
    /// Shows `label`, the seconds since now (of `planned`, when known), the
    /// value of `count` and its rate over the last second. `unit` names what
    /// is counted ("requests", "jobs").
    pub fn start(
        label: String,
        planned: Option<Duration>,
        count: Arc<AtomicU64>,
        unit: &'static str,
    ) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { task: None, done };
        }
        let t0 = Instant::now();
        let flag = done.clone();
        let task = tokio::spawn(async move {
            let (mut last_n, mut last_t) = (count.load(Ordering::Relaxed), Instant::now());
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (n, now) = (count.load(Ordering::Relaxed), Instant::now());
                let rate = n.saturating_sub(last_n) as f64
                    / now.duration_since(last_t).as_secs_f64().max(1e-3);
                (last_n, last_t) = (n, now);
                let of = planned.map_or(String::new(), |p| format!("/{:.0}", p.as_secs_f64()));
                let line = format!(
                    "  {label}: {:.0}{of} s, {n} {unit}, {rate:.0} {unit}/s",
                    t0.elapsed().as_secs_f64()
                );
                let mut err = std::io::stderr().lock();
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
        });
        Progress {
            task: Some(task),
            done,
        }
    }

    /// Clears the line (as dropping does), before the caller prints.
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            self.done.store(true, Ordering::Relaxed);
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
