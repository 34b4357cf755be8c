//! Harness for the privileged end-to-end tests: start the real agentd, put real processes in
//! real cgroups, read the records agentd writes.
//!
//! These tests need root and a built agentd; `cargo xtask test` provides both (see
//! `tests/README.md`). Helpers panic with context instead of returning errors, so a failing test
//! shows where it failed.

use std::{
    ffi::CString,
    io::{BufRead, BufReader, Write},
    os::unix::{ffi::OsStrExt, fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub mod net;

pub use serde_json::Value;

/// The agentd binary under test: `$CUSTOS_AGENTD`, else the release build in this workspace.
pub fn agentd_path() -> PathBuf {
    match std::env::var_os("CUSTOS_AGENTD") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/release/agentd"
        )),
    }
}

/// agentctl, next to agentd.
pub fn agentctl_path() -> PathBuf {
    agentd_path().with_file_name("agentctl")
}

/// Runs agentctl; returns (exit code, standard output + standard error).
pub fn agentctl(args: &[&str]) -> (i32, String) {
    let out = Command::new(agentctl_path())
        .args(args)
        .output()
        .expect("run agentctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The independent Python verifier (`tests/python/verify_log.py`); returns (exit code, output).
pub fn python_verify(log: &Path, key: &Path, proof: Option<&Path>) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/verify_log.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(log).arg("--key").arg(key);
    if let Some(proof) = proof {
        cmd.arg("--proof").arg(proof);
    }
    let out = cmd.output().expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The workload helper (`src/bin/workload.rs`), built next to the test binaries.
pub fn workload_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps; binaries one level up.
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join("custos-workload");
    assert!(
        path.exists(),
        "{} missing: build with `cargo xtask test`",
        path.display()
    );
    path
}

/// A name no other test run uses: prefix, pid, counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cgroup v2 mount point, from mountinfo.
pub fn cgroup_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup v2 mount")
}

/// A cgroup made for a test, removed (with its processes killed) when dropped.
pub struct Cgroup {
    path: PathBuf,
    created: Vec<PathBuf>,
    /// Path relative to the cgroup v2 root.
    pub rel: String,
}

impl Cgroup {
    /// Creates `rel` (and missing parents) under the cgroup v2 root.
    pub fn create(rel: &str) -> Self {
        let root = cgroup_root();
        let mut created = Vec::new();
        let mut path = root.clone();
        for part in rel.split('/') {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
                created.push(path.clone());
            }
        }
        Self {
            path,
            created,
            rel: rel.to_owned(),
        }
    }

    /// The cgroup's id (its directory's inode number).
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.path).expect("cgroup dir").ino()
    }

    /// A command whose process moves itself into this cgroup between fork and exec.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs =
            CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls async-signal-safe functions (open, write, close) on
        // memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A private directory for agentd's files: configuration, log, key, export, state; a private
/// bpffs directory for its pins; a private range of resolver ports. It outlives the agentd
/// processes started in it, so a test can stop and restart agentd on the same log and pins.
/// Dropping it removes the pins, which detaches the programs agentd left attached.
pub struct Dirs {
    dir: tempfile::TempDir,
    pins: PathBuf,
    port_base: u16,
}

/// Ports below the kernel's ephemeral range, distinct for each [`Dirs`] of a test process and,
/// with the pid in the mix, across test processes.
fn next_port_base() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 30;
    16_000 + (std::process::id() % 50) as u16 * 300 + slot as u16 * 10
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

impl Dirs {
    /// A fresh directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            pins: Path::new("/sys/fs/bpf/custos-tests").join(unique("pins")),
            port_base: next_port_base(),
        }
    }

    /// Where agentd pins its maps and links.
    pub fn pins(&self) -> &Path {
        &self.pins
    }

    /// agentd's state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The first resolver port (the configuration's first agent's).
    pub fn port_base(&self) -> u16 {
        self.port_base
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The log directory agentd is pointed at (unless the configuration names another).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The signing key.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("keys/log.key")
    }

    /// The public key file.
    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("keys/log.key.pub")
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("api/agentd.sock")
    }

    /// The JSON-lines export.
    pub fn events(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }
}

/// A running agentd writing into a [`Dirs`].
pub struct Agentd {
    child: Option<Child>,
    events: PathBuf,
    /// Where this run's records start in the export (earlier runs may have written before).
    offset: u64,
    _dirs: Option<Dirs>,
}

/// How long agentd may take to start or stop.
const AGENTD_TIMEOUT: Duration = Duration::from_secs(60);

/// The configuration file agentd gets: `config`, plus a `[log]` section in `dirs` unless the
/// configuration has its own.
fn write_config(dirs: &Dirs, config: &str) -> PathBuf {
    let path = dirs.path().join("agentd.toml");
    let text = with_private_paths(dirs, config);
    std::fs::write(&path, text).expect("write config");
    path
}

/// `config` with `[log]` in `dirs` (unless it has its own), and pins, state and resolver
/// ports private to `dirs` (added to its `[sensor]` and `[dns]` tables, or as new tables).
pub fn with_private_paths(dirs: &Dirs, config: &str) -> String {
    let mut text = config.to_owned();
    let mut add = |table: &str, lines: String| {
        if let Some(at) = text.find(&format!("[{table}]\n")) {
            let at = at + table.len() + 3;
            text.insert_str(at, &lines);
        } else {
            text = format!("[{table}]\n{lines}\n{text}");
        }
    };
    if !config.contains("pin_dir") {
        add(
            "sensor",
            format!(
                "pin_dir = \"{}\"\nstate_dir = \"{}\"\n",
                dirs.pins().display(),
                dirs.state().display()
            ),
        );
    }
    if !config.contains("socket =") {
        add("api", format!("socket = \"{}\"\n", dirs.socket().display()));
    }
    if !config.contains("port_base") {
        add("dns", format!("port_base = {}\n", dirs.port_base()));
    }
    if !text.contains("[log]") {
        text = format!(
            "[log]\ndir = \"{}\"\nkey = \"{}\"\n\n{text}",
            dirs.log().display(),
            dirs.key().display()
        );
    }
    text
}

impl Agentd {
    /// Starts agentd with configuration `config` (TOML) in a directory of its own and waits until
    /// it reports ready.
    pub fn start(config: &str) -> Self {
        let dirs = Dirs::new();
        let mut agentd = Self::start_in(&dirs, config, &[]);
        agentd._dirs = Some(dirs);
        agentd
    }

    /// Like [`Agentd::start`], with extra command-line arguments.
    pub fn start_with(config: &str, args: &[&str]) -> Self {
        let dirs = Dirs::new();
        let mut agentd = Self::start_in(&dirs, config, args);
        agentd._dirs = Some(dirs);
        agentd
    }

    /// Starts agentd in `dirs` (which may hold an earlier run's log) and waits for its start
    /// record.
    pub fn start_in(dirs: &Dirs, config: &str, args: &[&str]) -> Self {
        Self::start_via(dirs, config, &[], args)
    }

    /// Like [`Agentd::start_in`], with agentd run by `launcher` (a program and its arguments,
    /// which then execs agentd: `setpriv ...` to run it with a service's privileges).
    pub fn start_via(dirs: &Dirs, config: &str, launcher: &[String], args: &[&str]) -> Self {
        let config_path = write_config(dirs, config);
        let events = dirs.events();
        // Records of this run start after whatever the export already holds.
        let before = std::fs::metadata(&events).map_or(0, |m| m.len());
        let mut command = match launcher.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(agentd_path());
                command
            }
            None => Command::new(agentd_path()),
        };
        let child = command
            .arg("--config")
            .arg(&config_path)
            .arg("--events")
            .arg(&events)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", agentd_path().display()));
        let mut agentd = Self {
            child: Some(child),
            events,
            offset: before,
            _dirs: None,
        };
        agentd.wait_for("agentd.start record", |r| r["kind"] == "agentd.start");
        agentd
    }

    /// agentd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Every record this run wrote so far (a partial last line is skipped).
    pub fn records(&self) -> Vec<Value> {
        let bytes = std::fs::read(&self.events).unwrap_or_default();
        let text = String::from_utf8_lossy(bytes.get(self.offset as usize..).unwrap_or_default());
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until a record matches `pred`, and returns it.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + AGENTD_TIMEOUT;
        loop {
            if let Some(found) = self.records().into_iter().find(|r| pred(r)) {
                return found;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("agentd exited ({status}) while waiting for {what}");
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; records so far:\n{}",
                    dump(&self.records())
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to agentd.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Stops agentd with SIGSTOP and waits until every one of its threads is stopped: a
    /// thread running on another core can otherwise still handle an event or two after the
    /// signal was sent.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.pid();
        let deadline = Instant::now() + AGENTD_TIMEOUT;
        loop {
            let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|task| {
                        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                            stat.rfind(')')
                                .and_then(|i| stat.get(i + 2..i + 3))
                                .is_some_and(|state| state == "T" || state == "t")
                        })
                    })
                })
                .unwrap_or(false);
            if stopped {
                return;
            }
            assert!(Instant::now() < deadline, "agentd did not stop on SIGSTOP");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills agentd with SIGKILL and waits for it.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops agentd with SIGINT, checks it exits cleanly, and returns every record.
    pub fn stop(mut self) -> Vec<Value> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + AGENTD_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agentd did not stop within {AGENTD_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "agentd exited with {status}");
        // For debugging a test: CUSTOS_KEEP_EVENTS=DIR keeps a copy of every run's records.
        if let Some(dir) = std::env::var_os("CUSTOS_KEEP_EVENTS") {
            let copy = Path::new(&dir).join(format!("{}.jsonl", unique("events")));
            let _ = std::fs::copy(&self.events, copy);
        }
        let records = self.records();
        assert_eq!(
            records.last().map(|r| r["kind"].clone()),
            Some("agentd.stop".into()),
            "last record"
        );
        records
    }
}

impl Drop for Agentd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Records as text, for failure messages (long dumps are cut).
pub fn dump(records: &[Value]) -> String {
    let mut out: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    if out.len() > 60 {
        let tail = out.split_off(out.len() - 40);
        out.truncate(20);
        out.push("...".into());
        out.extend(tail);
    }
    out.join("\n")
}

/// The pid a record is about: the actor's (or, for agentd's own records, none).
pub fn actor_pid(record: &Value) -> Option<u64> {
    record["actor"]["process"]["pid"].as_u64()
}

/// Records whose actor is `pid`.
pub fn by_pid(records: &[Value], pid: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| actor_pid(r) == Some(pid as u64))
        .collect()
}

/// The one record matching `pred`, or a panic listing the candidates.
pub fn the<'a>(records: &[&'a Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&&Value> = records.iter().filter(|r| pred(r)).collect();
    match found.as_slice() {
        [one] => one,
        [] => panic!(
            "no record for {what}; records:\n{}",
            dump(&records.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
        ),
        many => panic!(
            "{} records for {what}:\n{}",
            many.len(),
            dump(&many.iter().map(|r| (**r).clone()).collect::<Vec<_>>())
        ),
    }
}

/// A workload running in the background, talking over stdin/stdout.
pub struct Running {
    /// The process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    /// Spawns `cmd` with piped stdin/stdout.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Reads one line of the workload's output.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read workload output");
        line.trim().to_owned()
    }

    /// Releases a `wait-line` action.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write to workload");
        stdin.flush().expect("flush");
    }

    /// Writes `line` (and a newline) to the workload's standard input.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to workload");
        stdin.flush().expect("flush");
    }

    /// Waits for the workload to exit; returns its exit code.
    pub fn wait(mut self) -> i32 {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait workload");
        status.code().unwrap_or(-1)
    }
}

/// The start time of process `pid` in `CLOCK_BOOTTIME` nanoseconds (tick resolution), from
/// `/proc/PID/stat`.
pub fn proc_start_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let ticks: u64 = after
        .split(' ')
        .nth(19)
        .expect("starttime")
        .parse()
        .expect("number");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * (1_000_000_000 / hz)
}
