//! What `/proc` says about the processes already running when agentd starts: enough to bind
//! them the way the exec hook would have, parents before children.

use std::path::Path;

use super::{cgroups, exe};

/// One running process.
#[derive(Debug, Clone)]
pub struct ProcSnapshot {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Start time, `CLOCK_BOOTTIME` ns (from clock ticks, so at tick resolution).
    pub start_ns: u64,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// cgroup v2 path.
    pub cgroup: String,
    /// The executable's stamp (none for kernel threads).
    pub exe: Option<exe::FileStamp>,
    /// `comm`.
    pub comm: String,
    /// The executable's path, as `/proc/PID/exe` names it.
    pub exe_path: Option<String>,
    /// The command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Parses `/proc/PID/stat`: `(ppid, starttime in ticks, comm)`. The comm may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u32, u64, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    // After the comm: state(3) ppid(4) ... starttime(22), so index 0 is field 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start, comm))
}

/// The real uid and gid from `/proc/PID/status`.
fn parse_ids(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Reads one process; `None` if it vanished meanwhile or is a kernel thread.
pub fn snapshot(pid: u32, ticks: u64) -> Option<ProcSnapshot> {
    let dir = Path::new("/proc").join(pid.to_string());
    let (ppid, start_ticks, comm) = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let (uid, gid) = parse_ids(&std::fs::read_to_string(dir.join("status")).ok()?)?;
    let exe_link = dir.join("exe");
    // Kernel threads have no executable and run no agent code.
    let exe = Some(exe::stamp(&exe_link).ok()?);
    let exe_path = std::fs::read_link(&exe_link)
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let cmdline = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    Some(ProcSnapshot {
        pid,
        ppid,
        start_ns: start_ticks.saturating_mul(1_000_000_000 / ticks),
        uid,
        gid,
        cgroup: cgroups::of_process(pid).unwrap_or_default(),
        exe,
        comm,
        exe_path,
        cmdline,
    })
}

/// Every user-space process, parents before children.
pub fn scan() -> Vec<ProcSnapshot> {
    let ticks = clock_ticks();
    let mut procs: Vec<ProcSnapshot> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| snapshot(pid, ticks))
        .collect();
    // A parent started before its children, so start time orders the tree; pid breaks ties.
    procs.sort_by_key(|p| (p.start_ns, p.pid));
    procs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_comm() {
        let stat =
            "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let (ppid, start, comm) = parse_stat(stat).unwrap();
        assert_eq!((ppid, start, comm.as_str()), (77, 987654, "a) b (c)"));
    }

    #[test]
    fn ids_from_status() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_ids(status), Some((1000, 100)));
    }

    #[test]
    fn scan_finds_this_process() {
        let me = std::process::id();
        let all = scan();
        let this = all
            .iter()
            .find(|p| p.pid == me)
            .expect("this test process is listed");
        assert_eq!(this.ppid, std::os::unix::process::parent_id());
        assert!(this.exe.is_some());
    }
}
