//! The tools Custos is compared with, set up and torn down by the benchmarks: auditd (Debian's
//! package, the kernel audit subsystem with its user-space daemon writing `audit.log`) and a
//! bpftrace script tracing the same events (generic eBPF tracing).
//!
//! Both are configured to record what agentd records for the benchmark's agent: auditd by a
//! login uid ([`WORKLOAD_AUID`], which the harness gives the workload, as agentd's selector gives
//! it an identity), bpftrace by the workload's cgroup.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util;

/// The login uid the harness gives every benchmark workload (`/proc/self/loginuid`), so audit
/// rules can select the workload and nothing else.
pub(crate) const WORKLOAD_AUID: u32 = 4242;

/// The audit key on the benchmark's rules, which marks their records in `audit.log`.
pub(crate) const AUDIT_KEY: &str = "custos-bench";

/// The system calls the comparison records: what agentd's process, file and network hooks see.
const AUDITED_SYSCALLS: &str = "execve,execveat,open,openat,openat2,creat,connect";

/// The kernel's audit status, from `auditctl -s`.
fn audit_status(field: &str) -> anyhow::Result<u64> {
    let out = util::output(Command::new("auditctl").arg("-s"))
        .context("auditctl -s failed (is auditd installed and is this root?)")?;
    out.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
        .with_context(|| format!("auditctl -s printed no {field}"))
}

fn auditctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("auditctl")
        .args(args)
        .output()
        .context("running auditctl")?;
    if !out.status.success() {
        bail!(
            "auditctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running auditd with the benchmark's rules, logging into a scratch directory.
pub(crate) struct Auditd {
    child: Child,
    dir: PathBuf,
    /// `auditctl -s` `enabled` before the benchmark, restored after.
    was_enabled: u64,
    backlog_limit: u64,
    /// `auditctl -s` `failure` before, restored after.
    failure: u64,
}

impl Auditd {
    /// Starts auditd in the foreground with a backlog of `backlog_limit` records and rules
    /// recording [`AUDITED_SYSCALLS`] of the workload's login uid.
    pub(crate) fn start(dir: &Path, backlog_limit: u64) -> anyhow::Result<Self> {
        let running = audit_status("pid")?;
        if running != 0 {
            bail!(
                "an audit daemon is already running (pid {running}): the benchmark owns the audit \
                 rules while it runs, so stop it first (`systemctl stop auditd` or kill it)"
            );
        }
        // Rules stay loaded after their daemon stops; the benchmark would delete them, and they
        // would also be measured in every variant.
        let rules = util::output(Command::new("auditctl").arg("-l")).unwrap_or_default();
        if rules.trim() != "No rules" {
            bail!(
                "audit rules are loaded (`auditctl -l`): the benchmark replaces them, so save \
                 them (`auditctl -l > rules.txt`) and delete them (`auditctl -D`) first"
            );
        }
        let was_enabled = audit_status("enabled")?;
        let backlog_before = audit_status("backlog_limit")?;
        let failure_before = audit_status("failure")?;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        // Debian's defaults, but with the log here and no rotation inside a run, so every record
        // of a run stays in one file for counting.
        fs::write(
            dir.join("auditd.conf"),
            format!(
                "log_file = {}\nlog_format = RAW\nflush = INCREMENTAL_ASYNC\nfreq = 50\n\
                 max_log_file = 100000\nmax_log_file_action = IGNORE\nspace_left = 1000\n\
                 space_left_action = IGNORE\nadmin_space_left = 500\nadmin_space_left_action = IGNORE\n\
                 disk_full_action = IGNORE\ndisk_error_action = IGNORE\n",
                dir.join("audit.log").display()
            ),
        )?;
        let child = Command::new("auditd")
            .args(["-n", "-c"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting auditd")?;
        let mut auditd = Self {
            child,
            dir: dir.to_owned(),
            was_enabled,
            backlog_limit: backlog_before,
            failure: failure_before,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while audit_status("pid")? != auditd.child.id() as u64 {
            if Instant::now() > deadline || auditd.child.try_wait()?.is_some() {
                bail!("auditd did not register with the kernel within 20 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        auditctl(&["-D"])?;
        auditctl(&["-b", &backlog_limit.to_string()])?;
        // On a full backlog, count the loss and carry on (1 = printk), rather than panic.
        auditctl(&["-f", "1"])?;
        auditctl(&[
            "-a",
            "always,exit",
            "-F",
            "arch=b64",
            "-S",
            AUDITED_SYSCALLS,
            "-F",
            &format!("auid={WORKLOAD_AUID}"),
            "-k",
            AUDIT_KEY,
        ])?;
        auditctl(&["-e", "1"])?;
        Ok(auditd)
    }

    /// The kernel's count of audit records lost since boot.
    pub(crate) fn lost() -> anyhow::Result<u64> {
        audit_status("lost")
    }

    /// auditd's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The audit log.
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Waits until auditd has written everything the kernel queued (the backlog is empty and the
    /// log has stopped growing), at most `limit`; says so when it had to give up, because what
    /// is still queued then counts as not recorded.
    pub(crate) fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut size = 0;
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
            let now = fs::metadata(self.log()).map_or(0, |m| m.len());
            if now == size && audit_status("backlog").unwrap_or(0) == 0 {
                return;
            }
            size = now;
        }
        println!("warning: auditd had not written everything after {limit:?}");
    }

    /// The log's syscall records of the benchmark's rules (one per audited call).
    fn syscall_lines(&self) -> anyhow::Result<Vec<String>> {
        let log = fs::read_to_string(self.log()).context("reading audit.log")?;
        let key = format!("key=\"{AUDIT_KEY}\"");
        Ok(log
            .lines()
            .filter(|l| l.starts_with("type=SYSCALL") && l.contains(&key))
            .map(str::to_owned)
            .collect())
    }

    /// How many calls the log recorded.
    pub(crate) fn recorded(&self) -> anyhow::Result<u64> {
        Ok(self.syscall_lines()?.len() as u64)
    }

    /// The successful execs the log recorded: (pid, executable).
    pub(crate) fn execs(&self) -> anyhow::Result<BTreeSet<(u32, String)>> {
        Ok(self
            .syscall_lines()?
            .iter()
            .filter_map(|l| exec_of(l))
            .collect())
    }
}

/// A field of an audit record line: quoted, or hex-encoded (how auditd writes a value with
/// spaces or control characters), or a plain word.
fn audit_field(line: &str, name: &str) -> Option<String> {
    let value = line.split(&format!(" {name}=")).nth(1)?;
    if let Some(quoted) = value.strip_prefix('"') {
        return Some(quoted.split('"').next()?.to_owned());
    }
    let word = value.split(' ').next()?;
    let hex =
        word.len() % 2 == 0 && !word.is_empty() && word.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && matches!(name, "exe" | "comm" | "name") {
        let bytes: Option<Vec<u8>> = (0..word.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&word[i..i + 2], 16).ok())
            .collect();
        return Some(String::from_utf8_lossy(&bytes?).into_owned());
    }
    Some(word.to_owned())
}

/// The (pid, executable) of a `SYSCALL` line of a successful `execve` or `execveat`.
fn exec_of(line: &str) -> Option<(u32, String)> {
    // x86_64: 59 execve, 322 execveat.
    let exec = matches!(audit_field(line, "syscall").as_deref(), Some("59" | "322"));
    if !exec || audit_field(line, "success").as_deref() != Some("yes") {
        return None;
    }
    Some((
        audit_field(line, "pid")?.parse().ok()?,
        audit_field(line, "exe")?,
    ))
}

/// Rules out, daemon stopped, the audit state as it was (even when a benchmark fails).
impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = auditctl(&["-D"]);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = auditctl(&["-b", &self.backlog_limit.to_string()]);
        let _ = auditctl(&["-f", &self.failure.to_string()]);
        let _ = auditctl(&["-e", &self.was_enabled.to_string()]);
    }
}

/// A bpftrace script printing one line per event of the workload's cgroup, as agentd reports
/// them: execs, opens, connects and exits, with pid and path.
pub(crate) struct Bpftrace {
    child: Child,
    out: PathBuf,
}

impl Bpftrace {
    pub(crate) fn start(dir: &Path, cgroup: &Path) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(dir);
        // bpftrace resolves `cgroupid()` when it compiles the script.
        fs::create_dir_all(cgroup)?;
        fs::create_dir_all(dir)?;
        let ready = dir.join("ready");
        let filter = format!("/cgroup == cgroupid(\"{}\")/", cgroup.display());
        let script = format!(
            // BEGIN fires once every probe is attached.
            "BEGIN {{ system(\"touch {}\"); }}\n\
             tracepoint:syscalls:sys_enter_execve, tracepoint:syscalls:sys_enter_execveat {filter}\n\
             {{ printf(\"exec %d %d %s\\n\", pid, uid, str(args->filename)); }}\n\
             tracepoint:syscalls:sys_enter_open, tracepoint:syscalls:sys_enter_openat, \
             tracepoint:syscalls:sys_enter_openat2 {filter}\n\
             {{ printf(\"open %d %s\\n\", pid, str(args->filename)); }}\n\
             tracepoint:syscalls:sys_enter_creat {filter}\n\
             {{ printf(\"open %d %s\\n\", pid, str(args->pathname)); }}\n\
             tracepoint:syscalls:sys_enter_connect {filter}\n\
             {{ printf(\"connect %d %d\\n\", pid, args->fd); }}\n\
             tracepoint:sched:sched_process_exit {filter}\n\
             {{ printf(\"exit %d\\n\", pid); }}\n",
            ready.display()
        );
        let script_path = dir.join("trace.bt");
        fs::write(&script_path, script)?;
        let out = dir.join("trace.out");
        let mut child = Command::new("bpftrace")
            // For system(), which is how the script says it is ready: events go to the file
            // fully buffered (bpftrace's default for a file, its fastest), so the file cannot.
            .arg("--unsafe")
            .arg("-o")
            .arg(&out)
            .arg(&script_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bpftrace did not attach within 60 s (run it by hand on {script_path:?})");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { child, out })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops bpftrace; returns the number of event lines it printed and the events it
    /// reported lost ("Lost N events" when its perf buffers overflowed).
    pub(crate) fn stop(mut self) -> anyhow::Result<(u64, u64)> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        Ok(count_trace(
            &fs::read_to_string(&self.out).unwrap_or_default(),
        ))
    }
}

/// The event lines of the script's output, and the events bpftrace reported lost.
fn count_trace(out: &str) -> (u64, u64) {
    let (mut events, mut lost) = (0, 0);
    for line in out.lines() {
        let mut words = line.split(' ');
        match words.next() {
            Some("exec" | "open" | "connect" | "exit") => events += 1,
            Some("Lost") => {
                lost += words
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    (events, lost)
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line auditd 3.0.9 wrote in a benchmark run.
    const EXECVE: &str = "type=SYSCALL msg=audit(1796024932.377:115587): arch=c000003e \
        syscall=59 success=yes exit=0 a0=5576d15f4d60 a1=5576d15f4f40 a2=7ffe7642fc40 a3=8 \
        items=2 ppid=5392 pid=5394 auid=4242 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 \
        fsgid=0 tty=(none) ses=82 comm=\"custos-workload\" \
        exe=\"/work/main/target/release/custos-workload\" key=\"custos-bench\"";

    #[test]
    fn execs_come_from_successful_execve_lines() {
        assert_eq!(
            exec_of(EXECVE),
            Some((5394, "/work/main/target/release/custos-workload".to_owned()))
        );
        // Not `ppid`, not `auid`: whole field names only.
        assert_eq!(audit_field(EXECVE, "pid").as_deref(), Some("5394"));
        assert_eq!(audit_field(EXECVE, "uid").as_deref(), Some("0"));
        assert_eq!(exec_of(&EXECVE.replace("success=yes", "success=no")), None);
        assert_eq!(exec_of(&EXECVE.replace("syscall=59", "syscall=257")), None);
        assert_eq!(
            exec_of(&EXECVE.replace("syscall=59", "syscall=322")).map(|e| e.0),
            Some(5394)
        );
    }

    #[test]
    fn hex_encoded_executables_are_decoded() {
        // auditd hex-encodes a value with a space: "/tmp/a b".
        let line = EXECVE.replace(
            "exe=\"/work/main/target/release/custos-workload\"",
            "exe=2F746D702F612062",
        );
        assert_eq!(exec_of(&line), Some((5394, "/tmp/a b".to_owned())));
    }

    #[test]
    fn trace_output_counts_events_and_losses() {
        let out = "Attaching 9 probes...\nexec 10 0 /bin/true\nopen 10 /etc/hostname\n\
                   Lost 17 events\nconnect 10 3\nexit 10\nLost 3 events\n";
        assert_eq!(count_trace(out), (4, 20));
    }
}
