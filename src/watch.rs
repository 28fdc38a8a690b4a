//! Watching mounted files (Secrets, ConfigMaps) for changes.
//!
//! Kubernetes updates a mounted Secret or ConfigMap by writing a new directory and swapping the
//! `..data` symlink; a watch on the file's inode misses that. Here the directories holding the
//! files are watched (inotify), which sees the swap at once, and the files are also re-checked
//! every `interval` in case an event is missed. The check itself reads the files by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The files a reloader follows and what they held when last read, so that a change is told
/// from a re-read of the same bytes (the periodic check, an event about another file in the
/// same directory) and a broken version is reported once, not on every check.
#[derive(Debug)]
pub struct Files {
    paths: Vec<PathBuf>,
    seen: Vec<Vec<u8>>,
}

impl Files {
    /// `loaded`: what each path held when the caller read it (in the same order).
    pub fn new(paths: Vec<PathBuf>, loaded: Vec<Vec<u8>>) -> Self {
        Files {
            paths,
            seen: loaded,
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Reads every file (a missing or unreadable one reads as empty); their contents when any
    /// differs from what was last seen (and from now on is what was seen), else `None`.
    pub fn changed(&mut self) -> Option<Vec<Vec<u8>>> {
        let now: Vec<Vec<u8>> = self
            .paths
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_default())
            .collect();
        if now == self.seen {
            return None;
        }
        self.seen.clone_from(&now);
        Some(now)
    }
}

/// Wait after a file-system event before checking, so a writer replacing several files is done.
const EVENT_SETTLE: Duration = Duration::from_millis(100);

/// Installs the watch, runs `check` once (for changes since the caller last read the files),
/// then runs it on every batch of events and every `interval`. The watch is in place when this
/// returns; it ends when `stop` is cancelled.
pub fn spawn(
    paths: Vec<PathBuf>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
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
                () = stop.cancelled() => return,
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
        if event.is_ok_and(|e| is_a_change(&e.kind)) {
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

/// Whether an event can mean new contents. Opening, reading and closing a file unwritten
/// cannot, and the check itself reads the files: answering those would re-read them every
/// [`EVENT_SETTLE`] forever.
fn is_a_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_told_once_and_a_re_read_of_the_same_bytes_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "x").unwrap();
        let mut files = Files::new(
            vec![a.clone(), b.clone()],
            vec![b"1".to_vec(), b"x".to_vec()],
        );
        assert_eq!(files.changed(), None, "nothing changed since it was loaded");
        std::fs::write(&b, "y").unwrap();
        assert_eq!(files.changed(), Some(vec![b"1".to_vec(), b"y".to_vec()]));
        assert_eq!(files.changed(), None, "told once");
        std::fs::remove_file(&a).unwrap();
        assert_eq!(
            files.changed(),
            Some(vec![Vec::new(), b"y".to_vec()]),
            "a missing file reads as empty"
        );
    }

    #[tokio::test]
    async fn reading_the_files_is_not_a_change_writing_them_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tls.crt");
        std::fs::write(&file, "1").unwrap();
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = checks.clone();
        let mut files = Files::new(vec![file.clone()], vec![b"1".to_vec()]);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = spawn(
            vec![file.clone()],
            Duration::from_secs(3600),
            stop.clone(),
            move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // As the reloaders do: every check reads the files.
                let _ = files.changed();
            },
        );
        let count = || checks.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(EVENT_SETTLE * 6).await;
        assert_eq!(count(), 1, "the check's own reads started more checks");
        std::fs::write(&file, "2").unwrap();
        for _ in 0..100 {
            if count() > 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after_write = count();
        assert!(after_write > 1, "a write was not seen");
        tokio::time::sleep(EVENT_SETTLE * 6).await;
        assert_eq!(
            count(),
            after_write,
            "checks went on after the write was read"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
