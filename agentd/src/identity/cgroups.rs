//! The cgroup v2 tree as agentd knows it: id ↔ path, from a walk at start-up and from the
//! kernel's mkdir/rmdir records afterwards. A cgroup's id is the inode number of its directory in
//! the cgroup v2 file system, which is what `bpf_get_current_cgroup_id` returns.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// id ↔ path (relative to the cgroup v2 root, no leading `/`; the root itself is "").
#[derive(Debug, Default)]
pub struct CgroupIndex {
    by_id: HashMap<u64, String>,
    by_path: HashMap<String, u64>,
}

/// Deepest level the walk descends to (far beyond any real layout; bounds a hostile tree).
const MAX_DEPTH: usize = 64;

impl CgroupIndex {
    /// Walks the tree under `root`.
    pub fn walk(root: &Path) -> io::Result<Self> {
        let mut index = Self::default();
        let root_meta = std::fs::metadata(root)?;
        index.insert(root_meta.ino(), String::new());
        let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_owned(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            if depth >= MAX_DEPTH {
                continue;
            }
            // A cgroup removed while the walk runs is not an error.
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                if !meta.is_dir() {
                    continue;
                }
                let path = entry.path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                index.insert(meta.ino(), rel);
                stack.push((path, depth + 1));
            }
        }
        Ok(index)
    }

    /// Records a cgroup.
    pub fn insert(&mut self, id: u64, path: String) {
        let path = path.trim_start_matches('/').to_owned();
        if let Some(old) = self.by_id.insert(id, path.clone()) {
            self.by_path.remove(&old);
        }
        self.by_path.insert(path, id);
    }

    /// Forgets a cgroup.
    pub fn remove(&mut self, id: u64) -> Option<String> {
        let path = self.by_id.remove(&id)?;
        self.by_path.remove(&path);
        Some(path)
    }

    /// The path of cgroup `id`.
    pub fn path(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// Every cgroup.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.by_id.iter().map(|(id, path)| (*id, path.as_str()))
    }

    /// Number of cgroups known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no cgroup is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// `path` and its ancestors, nearest first: `a/b/c`, `a/b`, `a`.
pub fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_start_matches('/');
    std::iter::successors((!path.is_empty()).then_some(path), |p| {
        p.rsplit_once('/').map(|(parent, _)| parent)
    })
}

/// The cgroup v2 path of process `pid`, from `/proc/PID/cgroup` (the `0::` line).
pub fn of_process(pid: u32) -> io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    parse_proc_cgroup(&text).ok_or_else(|| io::Error::other("no cgroup v2 entry"))
}

fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_start_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_nearest_first() {
        let all: Vec<&str> = self_and_ancestors("/a/b/c").collect();
        assert_eq!(all, vec!["a/b/c", "a/b", "a"]);
        assert_eq!(self_and_ancestors("").count(), 0);
    }

    #[test]
    fn index_tracks_renames_and_removals() {
        let mut index = CgroupIndex::default();
        index.insert(5, "/system.slice/x.service".into());
        assert_eq!(index.path(5), Some("system.slice/x.service"));
        index.insert(5, "system.slice/y.service".into());
        assert_eq!(index.path(5), Some("system.slice/y.service"));
        assert_eq!(index.remove(5).as_deref(), Some("system.slice/y.service"));
        assert!(index.is_empty());
    }

    #[test]
    fn proc_cgroup_lines() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/a.service\n";
        assert_eq!(
            parse_proc_cgroup(text).as_deref(),
            Some("system.slice/a.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n").as_deref(), Some(""));
        assert_eq!(parse_proc_cgroup("1:cpu:/\n"), None);
    }

    #[test]
    fn walks_a_directory_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("a/cgroup.procs"), "").unwrap();
        let index = CgroupIndex::walk(dir.path()).unwrap();
        let mut paths: Vec<&str> = index.iter().map(|(_, p)| p).collect();
        paths.sort();
        assert_eq!(paths, vec!["", "a", "a/b", "c"]);
    }
}
