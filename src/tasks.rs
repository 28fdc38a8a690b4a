//! Background tasks, supervised (the runtime's beside the webhook, the cluster side's once
//! the API server answers): every task has a name, stops on the one shutdown token it is
//! given, and is joined at shutdown; one that ends before the token is cancelled (it panicked,
//! or returned) is reported at once: an error line naming it and why, the
//! `clusterscope_background_task_stops_total{task}` metric, and a `/readyz` line held not
//! ready (what it did is no longer done).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::status::{Hold, StatusLine};

/// Supervised tasks, and the token that stops them all.
pub struct Tasks {
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    /// The `/readyz` line a task that stopped early holds.
    line: Arc<StatusLine>,
    running: Vec<Named>,
}

struct Named {
    name: &'static str,
    /// How long it may take to stop once told.
    grace: Duration,
    /// Resolves when the task has ended (and was reported, if it ended early).
    done: JoinHandle<()>,
}

impl Tasks {
    /// Tasks that stop on `stop`; one that ends before holds `line` not ready.
    pub fn new(stop: CancellationToken, metrics: Arc<Metrics>, line: Arc<StatusLine>) -> Self {
        Tasks {
            stop,
            metrics,
            line,
            running: Vec::new(),
        }
    }

    /// The one shutdown token: every task stops when it is cancelled.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Supervises a task already running as `name` (one of [`crate::metrics::BACKGROUND_TASKS`],
    /// whose stop series exist from the start).
    pub fn watch(&mut self, name: &'static str, grace: Duration, task: JoinHandle<()>) {
        debug_assert!(
            crate::metrics::BACKGROUND_TASKS.contains(&name),
            "{name} is not in metrics::BACKGROUND_TASKS"
        );
        let (stop, metrics, line) = (self.stop.clone(), self.metrics.clone(), self.line.clone());
        let done = tokio::spawn(async move {
            let ended = task.await;
            if stop.is_cancelled() {
                return;
            }
            report(name, ended, &metrics, &line);
        });
        self.running.push(Named { name, grace, done });
    }

    /// Tells every task to stop and waits for each within its grace.
    pub async fn stop(self) {
        self.stop.cancel();
        self.join().await;
    }

    /// Waits for every task to end (each within its grace once the token is cancelled).
    pub async fn join(self) {
        self.stop.cancelled().await;
        for task in self.running {
            if tokio::time::timeout(task.grace, task.done).await.is_err() {
                tracing::warn!(task = task.name, grace = ?task.grace, "a background task did not stop in time");
            }
        }
    }
}

/// A task ended before shutdown: said once, counted, and `/readyz` held for good.
fn report(
    name: &'static str,
    ended: Result<(), tokio::task::JoinError>,
    metrics: &Metrics,
    line: &Arc<StatusLine>,
) {
    let why = match ended {
        Ok(()) => "it returned".to_owned(),
        Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(e.into_panic())),
        Err(_) => "it was cancelled".to_owned(),
    };
    tracing::error!(task = name, %why, "a background task stopped before shutdown; what it did is no longer done (restart the pod)");
    metrics.runtime.task_stopped(name);
    let hold: Hold = line.hold(format!("background task {name} stopped: {why}"));
    // Held until the process ends: nothing restarts it.
    std::mem::forget(hold);
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_early_is_reported_one_stopped_at_shutdown_is_not() {
        let metrics = Arc::new(Metrics::new());
        let line = Arc::new(StatusLine::default());
        let mut tasks = Tasks::new(CancellationToken::new(), metrics.clone(), line.clone());
        let stop = tasks.token();
        let steady = tokio::spawn(async move { stop.cancelled().await });
        tasks.watch("cluster", Duration::from_secs(1), steady);
        let broken = tokio::spawn(async { panic!("the watch channel closed") });
        tasks.watch("history", Duration::from_secs(1), broken);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while line.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "never reported");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            line.get().contains(
                "not ready: background task history stopped: it panicked: the watch channel closed"
            ),
            "{}",
            line.get()
        );
        tasks.stop().await;
        let text = metrics.encode();
        assert!(
            text.contains(r#"clusterscope_background_task_stops_total{task="history"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"clusterscope_background_task_stops_total{task="cluster"} 0"#),
            "a task stopped at shutdown is not counted: {text}"
        );
    }
}
