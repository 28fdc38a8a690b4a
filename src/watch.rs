//! Watching mounted files (Secrets, ConfigMaps) for changes.
//!
//! Kubernetes updates a mounted Secret or ConfigMap by writing a new directory and swapping the
//! `..data` symlink; a watch on the file's inode misses that. Here the directories holding the
//! files are watched (inotify), which sees the swap at once, and the files are also re-checked
//! every `interval` in case an event is missed. The check itself reads the files by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Wait after a file-system event before checking, so a writer replacing several files is done.
const EVENT_SETTLE: Duration = Duration::from_millis(100);

/// Installs the watch, runs `check` once (for changes since the caller last read the files),
/// then runs it on every batch of events and every `interval`. The watch is in place when this
/// returns; it ends when the task is aborted.
pub fn spawn(
    paths: Vec<PathBuf>,
    interval: Duration,
    mut check: impl FnMut() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = watch_dirs(&paths, tx);
    check();
    tokio::spawn(async move {
        // Kept alive for as long as the loop runs; `None` leaves the periodic check alone.
        let _watcher = watcher;
        // `interval` panics on zero; the CLI refuses zero, this keeps library callers safe.
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = events.recv() => {
                    tokio::time::sleep(EVENT_SETTLE).await;
                    while events.try_recv().is_ok() {}
                }
            }
            check();
        }
    })
}

/// Watches the directories holding `paths`; `None` (logged) when the watch cannot be set up.
fn watch_dirs(
    paths: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already holds a wake-up; nothing is lost.
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; relying on the periodic re-read");
            return None;
        }
    };
    let mut dirs: Vec<&Path> = paths
        .iter()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on the periodic re-read");
        }
    }
    Some(watcher)
}
