//! Named behaviour items: what an agent did, normalised so that the same behaviour gives the
//! same item (random file names, numbers and hashes collapse to `*`), sorted into categories.
//!
//! Items are the first layer of the detector (exact-set novelty): explainable ("new egress to
//! 203.0.113.9:4444 from /usr/bin/bash") and instant.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Depth (path components) a file's directory is cut to.
pub const DIR_DEPTH: usize = 4;

/// What kind of behaviour an item names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// An executable run (normalised path).
    Exe,
    /// A parent → child exec edge.
    ExecEdge,
    /// An executable the agent itself wrote and then ran (download and execute), by directory.
    WrittenExec,
    /// A directory read or written (`read:/dir` or `write:/dir`).
    FileDir,
    /// A sensitive resource (credentials, keys, other processes' memory or environment).
    Sensitive,
    /// An egress destination, `name:port` or `address:port`.
    Egress,
    /// An executable that opened an outbound connection (a shell doing so is a reverse shell).
    Connector,
    /// A port listened on.
    Listen,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 8] = [
        Category::Exe,
        Category::ExecEdge,
        Category::WrittenExec,
        Category::FileDir,
        Category::Sensitive,
        Category::Egress,
        Category::Connector,
        Category::Listen,
    ];

    /// The name used in records and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Exe => "exe",
            Category::ExecEdge => "exec_edge",
            Category::WrittenExec => "written_exec",
            Category::FileDir => "file_dir",
            Category::Sensitive => "sensitive",
            Category::Egress => "egress",
            Category::Connector => "connector",
            Category::Listen => "listen",
        }
    }
}

/// One item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    /// Its category.
    pub category: Category,
    /// Its normalised value.
    pub value: String,
}

impl Item {
    fn new(category: Category, value: impl Into<String>) -> Self {
        Self {
            category,
            value: value.into(),
        }
    }
}

/// Paths that always matter, whatever was learned: credentials, keys, other processes' secrets.
/// Each entry is matched as a substring of the absolute path (with `/proc/<pid>` normalised to
/// `/proc/*`), so `/.ssh/` covers every user's SSH directory.
pub const SENSITIVE: &[&str] = &[
    "/.ssh/",
    "/etc/ssh/ssh_host_",
    "/.aws/",
    "/.config/gcloud/",
    "/.azure/",
    "/.kube/config",
    "/var/run/secrets/kubernetes.io/",
    "/run/secrets/",
    "/.docker/config.json",
    "/.netrc",
    "/.git-credentials",
    "/.gnupg/",
    "/.pgpass",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/proc/*/environ",
    "/proc/*/mem",
    "/proc/kcore",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
];

/// A normaliser with the built-in sensitive list and any extra prefixes (the daemon's own key
/// and state directories).
#[derive(Debug, Clone, Default)]
pub struct Normaliser {
    extra_sensitive: Vec<String>,
}

impl Normaliser {
    /// A normaliser that also treats paths under `extra` as sensitive.
    pub fn new(extra: impl IntoIterator<Item = String>) -> Self {
        Self {
            extra_sensitive: extra.into_iter().filter(|p| !p.is_empty()).collect(),
        }
    }

    /// The sensitive pattern `path` matches, if any.
    pub fn sensitive(&self, path: &str) -> Option<String> {
        let normal = proc_pid(path);
        if let Some(hit) = SENSITIVE.iter().find(|s| normal.contains(*s)) {
            return Some((*hit).to_owned());
        }
        self.extra_sensitive
            .iter()
            .find(|prefix| normal.starts_with(prefix.as_str()))
            .cloned()
    }

    /// The items a file access gives: its directory, and its sensitive pattern if it has one.
    pub fn file(&self, path: &str, write: bool) -> Vec<Item> {
        let op = if write { "write" } else { "read" };
        let mut items = vec![Item::new(
            Category::FileDir,
            format!("{op}:{}", directory(path)),
        )];
        if let Some(pattern) = self.sensitive(path) {
            items.push(Item::new(Category::Sensitive, format!("{op}:{pattern}")));
        }
        items
    }
}

/// The items an exec gives.
pub fn exec(parent_exe: Option<&str>, exe: &str, self_written: bool) -> Vec<Item> {
    let exe_n = executable(exe);
    let mut items = vec![
        Item::new(Category::Exe, exe_n.clone()),
        Item::new(
            Category::ExecEdge,
            format!("{} -> {exe_n}", parent_exe.map_or("?".into(), executable)),
        ),
    ];
    if self_written {
        items.push(Item::new(Category::WrittenExec, directory(exe)));
    }
    items
}

/// The items an outbound connection gives: the destination, and who connected.
pub fn egress(exe: Option<&str>, addr: IpAddr, port: u16, name: Option<&str>) -> Vec<Item> {
    let dest = match name {
        Some(name) => format!("{}:{port}", name.trim_end_matches('.').to_ascii_lowercase()),
        None => match addr {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            v4 => format!("{v4}:{port}"),
        },
    };
    vec![
        Item::new(Category::Egress, dest),
        Item::new(Category::Connector, exe.map_or("?".into(), executable)),
    ]
}

/// The item a listening socket gives.
pub fn listen(port: u16) -> Item {
    Item::new(Category::Listen, port.to_string())
}

/// `/proc/1234/environ` → `/proc/*/environ` (also `self` and `thread-self`).
fn proc_pid(path: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = path.strip_prefix("/proc/") else {
        return path.into();
    };
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if first.bytes().all(|b| b.is_ascii_digit()) || first == "self" || first == "thread-self" {
        format!("/proc/*/{tail}").into()
    } else {
        path.into()
    }
}

/// A path component that is random by nature (numbers, hashes, uuids, temp names) is `*`.
fn collapse(component: &str) -> &str {
    let digits = component.bytes().filter(u8::is_ascii_digit).count();
    let hex = component
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'-');
    let temp = component.starts_with("tmp") && component.len() > 6;
    if (!component.is_empty() && digits == component.len())
        || (hex && component.len() >= 8 && digits > 0)
        || temp
        || digits * 3 > component.len() && digits >= 3
    {
        "*"
    } else {
        component
    }
}

/// An executable path with random components collapsed. Files in temporary directories have
/// throwaway names, so only the directory is kept there.
pub fn executable(path: &str) -> String {
    if is_temporary(path) {
        return format!("{}/*", directory(path));
    }
    normal_path(path, usize::MAX)
}

/// A file's directory, cut at [`DIR_DEPTH`] components, random components collapsed. Relative
/// paths (the working directory is not known) keep their first component under `./`.
pub fn directory(path: &str) -> String {
    let normal = proc_pid(path);
    let parent = match normal.rfind('/') {
        Some(0) => "/",
        Some(i) => &normal[..i],
        None => ".",
    };
    if parent.starts_with('/') {
        normal_path(parent, DIR_DEPTH)
    } else {
        let first = parent.split('/').next().unwrap_or(".");
        format!("./{}", collapse(first))
    }
}

fn normal_path(path: &str, depth: usize) -> String {
    let mut out = String::with_capacity(path.len());
    for component in path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .take(depth)
    {
        out.push('/');
        out.push_str(collapse(component));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn is_temporary(path: &str) -> bool {
    ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/"]
        .iter()
        .any(|t| path.starts_with(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_cut_and_random_parts_collapse() {
        assert_eq!(
            directory("/home/dev/proj/src/a/b/c.rs"),
            "/home/dev/proj/src"
        );
        assert_eq!(directory("/etc/passwd"), "/etc");
        assert_eq!(directory("/x"), "/");
        assert_eq!(directory("/proc/4242/status"), "/proc/*");
        assert_eq!(
            directory("/var/cache/build-1234/deadbeef0042/x.o"),
            "/var/cache/*/*"
        );
        assert_eq!(
            directory("/usr/lib/python3.11/json/x.py"),
            "/usr/lib/python3.11/json"
        );
        assert_eq!(directory("/data/2026/11/30/x.csv"), "/data/*/*/*");
        assert_eq!(directory("notes/today.txt"), "./notes");
        assert_eq!(directory("today.txt"), "./.");
    }

    #[test]
    fn executables_in_temporary_directories_lose_their_names() {
        assert_eq!(executable("/usr/bin/python3.11"), "/usr/bin/python3.11");
        assert_eq!(executable("/tmp/xmrig-6.2"), "/tmp/*");
        assert_eq!(executable("/tmp/tmpa8f3kq/payload"), "/tmp/*/*");
        assert_eq!(executable("/dev/shm/x"), "/dev/shm/*");
    }

    #[test]
    fn sensitive_paths_always_match() {
        let n = Normaliser::new(["/var/lib/custos/".to_owned()]);
        for (path, pattern) in [
            ("/root/.ssh/id_ed25519", "/.ssh/"),
            ("/home/a/.aws/credentials", "/.aws/"),
            ("/proc/1/environ", "/proc/*/environ"),
            ("/proc/self/environ", "/proc/*/environ"),
            ("/etc/shadow", "/etc/shadow"),
            ("/var/lib/custos/keys/log.key", "/var/lib/custos/"),
        ] {
            assert_eq!(n.sensitive(path).as_deref(), Some(pattern), "{path}");
        }
        for path in ["/etc/passwd", "/proc/1/status", "/home/a/ssh/notes"] {
            assert_eq!(n.sensitive(path), None, "{path}");
        }
        let items = n.file("/root/.ssh/id_rsa", false);
        assert_eq!(items[1].value, "read:/.ssh/");
        assert_eq!(items[0].value, "read:/root/.ssh");
    }

    #[test]
    fn exec_and_egress_items() {
        let items = exec(Some("/usr/bin/python3"), "/tmp/dl123", true);
        assert_eq!(items[0].value, "/tmp/*");
        assert_eq!(items[1].value, "/usr/bin/python3 -> /tmp/*");
        assert_eq!(items[2], Item::new(Category::WrittenExec, "/tmp"));
        let items = egress(
            Some("/usr/bin/bash"),
            "203.0.113.9".parse().unwrap(),
            4444,
            None,
        );
        assert_eq!(items[0].value, "203.0.113.9:4444");
        assert_eq!(items[1].value, "/usr/bin/bash");
        let named = egress(None, "::1".parse().unwrap(), 443, Some("API.Example.com."));
        assert_eq!(named[0].value, "api.example.com:443");
        assert_eq!(named[1].value, "?");
    }
}
