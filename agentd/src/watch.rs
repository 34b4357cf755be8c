//! Watching executable selectors' files: any change to a bound file (written, replaced, renamed,
//! chmod-ed) triggers a fresh hash check once the file has been quiet for a moment.
//!
//! The kernel does not depend on this watch to stay safe: the exec hook refuses a bound inode
//! whose ctime moved. The watch is what rebinds (or refuses, with a record) the new file.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// How long a file must be quiet before it is hashed again.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Watches the directories of the executable selectors.
pub struct ExeWatcher {
    inotify: Option<Inotify>,
    /// Watch → (file name, selector id) pairs in that directory.
    watches: HashMap<WatchDescriptor, Vec<(OsString, u32)>>,
    /// Selector id → when its file last changed.
    dirty: HashMap<u32, Instant>,
}

impl ExeWatcher {
    /// Watches `paths` (selector id, file path).
    pub fn new<'a>(paths: impl IntoIterator<Item = (u32, &'a Path)>) -> Self {
        let mut watcher = Self {
            inotify: None,
            watches: HashMap::new(),
            dirty: HashMap::new(),
        };
        let paths: Vec<(u32, &Path)> = paths.into_iter().collect();
        if paths.is_empty() {
            return watcher;
        }
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(inotify) => inotify,
            Err(err) => {
                tracing::warn!(%err, "cannot watch executable selectors; changes are caught at exec only");
                return watcher;
            }
        };
        let mask = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO;
        for (selector, path) in paths {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            match inotify.add_watch(dir, mask) {
                Ok(wd) => watcher
                    .watches
                    .entry(wd)
                    .or_default()
                    .push((name.to_owned(), selector)),
                Err(err) => tracing::warn!(dir = %dir.display(), %err, "cannot watch directory"),
            }
        }
        watcher.inotify = Some(inotify);
        watcher
    }

    /// The descriptor to poll, if anything is watched.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Reads pending notifications and marks the affected selectors dirty.
    pub fn read(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                let Some(entries) = self.watches.get(&event.wd) else {
                    continue;
                };
                for (name, selector) in entries {
                    if event.name.as_deref() == Some(name.as_os_str()) {
                        self.dirty.insert(*selector, Instant::now());
                    }
                }
            }
        }
    }

    /// Selectors whose file changed and has been quiet for [`SETTLE`]; they are no longer dirty.
    pub fn settled(&mut self) -> Vec<u32> {
        let now = Instant::now();
        let ready: Vec<u32> = self
            .dirty
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= SETTLE)
            .map(|(id, _)| *id)
            .collect();
        for id in &ready {
            self.dirty.remove(id);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_marks_the_selector_dirty_then_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"1").unwrap();
        let mut watcher = ExeWatcher::new([(7, path.as_path())]);
        std::fs::write(dir.path().join("unrelated"), b"x").unwrap();
        watcher.read();
        assert!(watcher.dirty.is_empty());
        std::fs::write(&path, b"2").unwrap();
        watcher.read();
        assert!(watcher.dirty.contains_key(&7));
        assert!(watcher.settled().is_empty());
        std::thread::sleep(SETTLE + Duration::from_millis(20));
        assert_eq!(watcher.settled(), vec![7]);
        assert!(watcher.settled().is_empty());
    }
}
