//! The benchmarks' workload: `custos-workload` started as the benchmark's agent, inside its
//! cgroup (agentd's selector and bpftrace's filter) and with the login uid auditd's rules select.

use std::{
    ffi::CString,
    fs,
    net::TcpListener,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _, process::ExitStatusExt as _},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::peers::WORKLOAD_AUID;

/// What one run of the workload took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub wall: Duration,
    /// User + system time of the workload and every process it waited for.
    pub cpu: Duration,
}

/// Writes `value` to `path`; for `pre_exec`, so only async-signal-safe calls.
fn write_raw(path: &CString, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: `path` is NUL-terminated; open/write/close are async-signal-safe.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, value.as_ptr().cast(), value.len());
        libc::close(fd);
        if written < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `custos-workload ARGS` in `cgroup` with the workload login uid, and waits for it.
/// Returns its times and standard output.
pub(crate) fn run(root: &Path, cgroup: &Path, args: &[String]) -> anyhow::Result<(Run, String)> {
    let (run, mut outs) = run_many(root, cgroup, &[args.to_vec()])?;
    Ok((run, outs.pop().unwrap_or_default()))
}

/// Runs one `custos-workload` per element of `workers`, all at once, as [`run`] does; returns
/// the time until the last one ended, their CPU time together, and their outputs.
pub(crate) fn run_many(
    root: &Path,
    cgroup: &Path,
    workers: &[Vec<String>],
) -> anyhow::Result<(Run, Vec<String>)> {
    fs::create_dir_all(cgroup)?;
    let start = Instant::now();
    let mut running = Vec::new();
    for args in workers {
        match spawn(root, cgroup, args) {
            Ok(worker) => running.push(worker),
            Err(err) => {
                kill_all(&mut running);
                return Err(err);
            }
        }
    }
    let mut cpu = Duration::ZERO;
    let mut outs = Vec::new();
    while !running.is_empty() {
        let (mut child, reader) = running.remove(0);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `child` is our unreaped child; `status` and `usage` are valid for writes.
        let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        if waited < 0 {
            let err = std::io::Error::last_os_error();
            let _ = child.kill();
            kill_all(&mut running);
            bail!("waiting for the workload: {err}");
        }
        let status = ExitStatus::from_raw(status);
        if !status.success() {
            kill_all(&mut running);
            bail!("the workload failed: {status}");
        }
        let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        cpu += time(usage.ru_utime) + time(usage.ru_stime);
        outs.push(reader.join().unwrap_or_default());
    }
    Ok((
        Run {
            wall: start.elapsed(),
            cpu,
        },
        outs,
    ))
}

/// Stops and reaps the workers still running, so none outlives a failed measurement.
fn kill_all(running: &mut Vec<(std::process::Child, thread::JoinHandle<String>)>) {
    for (mut child, _) in running.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts one workload process in `cgroup` with the workload login uid, and a thread reading
/// its standard output.
fn spawn(
    root: &Path,
    cgroup: &Path,
    args: &[String],
) -> anyhow::Result<(std::process::Child, thread::JoinHandle<String>)> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let loginuid = CString::new("/proc/self/loginuid")?;
    let auid = WORKLOAD_AUID.to_string();
    let mut command = Command::new(root.join("target/release/custos-workload"));
    command
        .args(args)
        // cargo's library path is no part of the workload.
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: the closure only calls async-signal-safe functions on data prepared before fork.
    unsafe {
        command.pre_exec(move || {
            write_raw(&loginuid, auid.as_bytes())?;
            write_raw(&procs, b"0")
        });
    }
    let mut child = command.spawn().context("starting custos-workload")?;
    let mut stdout = child.stdout.take().context("workload stdout")?;
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    Ok((child, reader))
}

/// A loopback TCP server that accepts and closes connections, for the workload's connects.
pub(crate) fn listener() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the loopback listener")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    Ok(port)
}

/// The mixed workload: `children` short processes, each exec'd, opening three files and
/// connecting once to `port` on loopback.
pub(crate) fn mixed(root: &Path, children: u32, port: u16) -> Vec<String> {
    vec![
        format!(
            "spawn-rest:{children}:{}",
            root.join("target/release/custos-workload").display()
        ),
        "open:/etc/hostname".to_owned(),
        "open:/etc/passwd".to_owned(),
        "openat:/etc/services".to_owned(),
        format!("connect:127.0.0.1:{port}"),
    ]
}

/// Busy time of the whole machine (all CPUs, everything but idle, I/O wait and steal), from
/// `/proc/stat`.
pub(crate) fn machine_busy() -> Duration {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: not idle, iowait, nor steal (time the
        // hypervisor gave other guests).
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}
