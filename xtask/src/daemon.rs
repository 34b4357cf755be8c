//! A real agentd for benchmarks and the evaluation, with its files, pins and state in a scratch
//! directory, and what the harness reads about processes from `/proc`.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// agentd's CPU time (user + system) in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

/// A status field of /proc/PID/status, in kB.
pub(crate) fn status_kb(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Resident kB of `pid`'s mappings of BPF maps (agentd's ring buffer), from
/// `/proc/PID/smaps`.
pub(crate) fn bpf_mapped_kb(pid: u32) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_bpf = false;
    let mut total = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Rss:") if in_bpf => {
                total += words
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            // A mapping's header: "start-end perms offset dev inode [name]".
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                in_bpf = line.contains("anon_inode:bpf-map");
            }
            _ => {}
        }
    }
    total
}

/// A running agentd for a benchmark, in a scratch directory.
pub(crate) struct Daemon {
    child: Child,
    dir: PathBuf,
    pins: PathBuf,
}

/// A benchmark that fails half-way must not leave agentd running, nor its programs attached
/// (they would trace the next measurement): agentd is stopped if it runs, and its pins go.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.pins);
    }
}

impl Daemon {
    pub(crate) fn start(root: &Path, name: &str) -> anyhow::Result<Self> {
        Self::start_with(
            root,
            name,
            "[[agent]]\nname = \"bench\"\nselectors = [{ cgroup = \"custos-bench.slice/*.scope\" }]\n",
        )
    }

    /// Starts agentd with `agents` (TOML: `[dns]` and `[[agent]]` tables) and its files, pins and
    /// state private to the benchmark.
    pub(crate) fn start_with(root: &Path, name: &str, agents: &str) -> anyhow::Result<Self> {
        Self::start_full(root, name, agents, false)
    }

    /// Like [`Daemon::start_with`]; with `export`, records are also written to
    /// [`Daemon::events`].
    pub(crate) fn start_full(
        root: &Path,
        name: &str,
        agents: &str,
        export: bool,
    ) -> anyhow::Result<Self> {
        let dir = root.join("target/bench").join(name);
        let pins = PathBuf::from(format!("/sys/fs/bpf/custos-bench-{name}"));
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&pins);
        fs::create_dir_all(&dir)?;
        let config = dir.join("agentd.toml");
        fs::write(
            &config,
            format!(
                "[output]\nevents = \"{2}\"\n[log]\ndir = \"{0}/log\"\nkey = \"{0}/keys/log.key\"\n\
                 [sensor]\npin_dir = \"{1}\"\nstate_dir = \"{0}/state\"\n\
                 [api]\nsocket = \"{0}/agentd.sock\"\n{agents}",
                dir.display(),
                pins.display(),
                if export {
                    dir.join("events.jsonl").display().to_string()
                } else {
                    String::new()
                }
            ),
        )?;
        let mut child = Command::new(root.join("target/release/agentd"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting agentd")?;
        let stderr = child.stderr.take().context("agentd stderr")?;
        // From here on, a failure drops the Daemon, which stops agentd and removes its pins.
        let daemon = Self { child, dir, pins };
        // Read on a thread, which keeps draining its messages so it never blocks on a full pipe.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agentd ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            bail!("agentd did not start within a minute");
        }
        Ok(daemon)
    }

    /// The records' JSON-lines export (with `export`).
    pub(crate) fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// The API socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("agentd.sock")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops agentd and counts what its log holds.
    pub(crate) fn stop(mut self) -> anyhow::Result<Tally> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        // agentd leaves its programs attached (fail closed); the benchmark takes them away.
        let _ = fs::remove_dir_all(&self.pins);
        if !self.child.try_wait()?.is_some_and(|s| s.success()) {
            bail!("agentd did not stop cleanly");
        }
        let mut tally = Tally::default();
        for entry in fs::read_dir(self.dir.join("log"))?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "seg") {
                tally.add(&String::from_utf8_lossy(&fs::read(entry.path())?));
            }
        }
        Ok(tally)
    }
}

/// Counts of a benchmark daemon's log, by a scan of its segments' JSON.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Records of any kind.
    pub records: u64,
    /// `file.open` records.
    pub opens: u64,
    /// `process.exec` records.
    pub execs: u64,
    /// Events the kernel side could not deliver, of any kind (from `sensor.loss` records).
    pub lost: u64,
    /// Of which file events.
    pub lost_file: u64,
}

impl Tally {
    fn add(&mut self, segment: &str) {
        self.records += segment.matches("\"kind\":\"").count() as u64;
        self.opens += segment.matches("\"kind\":\"file.open\"").count() as u64;
        self.execs += segment.matches("\"kind\":\"process.exec\"").count() as u64;
        for part in segment.split("\"loss\":{\"count\":").skip(1) {
            let count: u64 = part.split(',').next().unwrap_or("0").parse().unwrap_or(0);
            self.lost += count;
            if part.contains("\"what\":\"file\"") {
                self.lost_file += count;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_kinds_and_losses() {
        let segment = concat!(
            r#"{"kind":"process.exec","seq":1}"#,
            r#"{"kind":"file.open","seq":2}{"kind":"file.open","seq":3}"#,
            r#"{"kind":"sensor.loss","loss":{"count":5,"total":5,"what":"file"}}"#,
            r#"{"kind":"sensor.loss","loss":{"count":2,"total":2,"what":"exec"}}"#,
        );
        let mut tally = Tally::default();
        tally.add(segment);
        assert_eq!(
            (
                tally.records,
                tally.opens,
                tally.execs,
                tally.lost,
                tally.lost_file
            ),
            (5, 2, 1, 7, 5)
        );
    }
}
