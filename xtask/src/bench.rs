//! `cargo xtask bench`: measurements, each taken in one run on this machine and reported with
//! the machine they came from. Results print as a table and are written as JSON to
//! `target/bench/results.json`.
//!
//! - `log`: the signed log alone: append + hash throughput on one core (300-byte records),
//!   commit-to-signed-checkpoint latency at 50,000 records/s, bytes stored per record.
//! - `sensor`: the real agentd under a file-open workload at rising rates: records written to
//!   the log per second, losses, agentd's CPU, and its memory idle and under load.
//! - `egress`: the time of `connect()` (TCP and UDP, loopback) for an enforced agent, an agent
//!   without a policy, a process outside every agent, and with no agentd at all; the time of a
//!   DNS answer through agentd's resolver against asking the upstream (dnsmasq) directly.
//!   Variants alternate round by round; each figure is the median of the rounds' medians.
//! - `api`: records per second delivered to one subscriber and to each of ten, and the
//!   latency from the syscall to the subscriber (median, p99), see `bench_api.rs`.
//! - `detector`: the detector's cost per event and per window, fitting time and memory per
//!   agent identity (`detector/examples/bench.rs`), also as ratios to SHA-256 of a 300-byte
//!   record (the signed log's work per record) measured in the same run.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// What to measure: `log`, `sensor`, `egress`, `api`, `detector`, or `all`.
    #[arg(default_value = "all")]
    what: String,
    /// Seconds per sensor load step.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// A line of the machine description.
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

pub fn run(options: Options) -> anyhow::Result<()> {
    setup::run()?;
    let root = util::workspace_root();
    util::run(util::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "agentd",
        "--bins",
        "--examples",
    ]))?;
    util::run(util::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "custos-tests",
        "--bins",
    ]))?;
    let mut results = Vec::new();
    if matches!(options.what.as_str(), "log" | "all") {
        results.push(("log".to_owned(), bench_log(&root)?));
    }
    if matches!(options.what.as_str(), "detector" | "all") {
        results.push(("detector".to_owned(), bench_detector(&root)?));
    }
    if matches!(options.what.as_str(), "sensor" | "all") {
        if !util::is_root() {
            bail!("the sensor benchmark loads eBPF programs: run it as root");
        }
        results.push(("sensor".to_owned(), bench_sensor(&root, options.seconds)?));
    }
    if matches!(options.what.as_str(), "api" | "all") {
        if !util::is_root() {
            bail!("the API benchmark loads eBPF programs: run it as root");
        }
        results.push(("api".to_owned(), crate::bench_api::run(&root)?));
    }
    if matches!(options.what.as_str(), "egress" | "all") {
        if !util::is_root() {
            bail!("the egress benchmark loads eBPF programs: run it as root");
        }
        results.push(("egress".to_owned(), crate::bench_egress::run(&root)?));
    }
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    let json = format!(
        "{{\"machine\":{:?},\"results\":{{{}}}}}\n",
        machine(),
        results
            .iter()
            .map(|(k, v)| format!("{k:?}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    fs::write(out.join("results.json"), &json)?;
    println!(
        "\nmachine: {}\nresults: {}",
        machine(),
        out.join("results.json").display()
    );
    Ok(())
}

fn bench_detector(root: &Path) -> anyhow::Result<String> {
    println!("\n== detector: cost per event and window, memory per agent identity ==");
    let out = util::output(util::cargo().current_dir(root).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "detector",
        "--example",
        "bench",
    ]))
    .context("running the detector benchmark")?;
    let json = out.trim().to_owned();
    let field = |name: &str| {
        json.split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .unwrap_or("?")
            .to_owned()
    };
    println!("| measure | value | ratio to SHA-256 of a 300-byte record |");
    println!("|---|---|---|");
    println!(
        "| SHA-256 of a 300-byte record (baseline) | {} ns | 1 |",
        field("sha256_300B_ns")
    );
    println!(
        "| event of a stable agent, known behaviour | {} ns | {} |",
        field("event_known_ns"),
        field("event_known_ratio")
    );
    println!(
        "| event of a stable agent, new destination (finding, incident) | {} ns | {} |",
        field("event_new_ns"),
        field("event_new_ratio")
    );
    println!(
        "| scoring one window | {} ns | {} |",
        field("window_score_ns"),
        field("window_score_ratio")
    );
    println!(
        "| fitting the model on 1,440 windows | {} ms ({} components) | |",
        field("fit_1440_windows_ms"),
        field("model_components")
    );
    println!(
        "| memory per agent (600 items, 1,440 windows) | {} KiB resident, {} KiB saved | |",
        field("rss_kib_per_agent"),
        field("saved_kib_per_agent")
    );
    Ok(json)
}

fn bench_log(root: &Path) -> anyhow::Result<String> {
    println!(
        "\n== log: append + hash on one core, 300-byte records; commit-to-checkpoint at 50,000/s =="
    );
    let out = Command::new(root.join("target/release/examples/log_bench"))
        .args([
            "--records",
            "1000000",
            "--size",
            "300",
            "--rate",
            "50000",
            "--seconds",
            "5",
        ])
        .arg("--dir")
        .arg(root.join("target"))
        .output()
        .context("running log_bench")?;
    if !out.status.success() {
        bail!("log_bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let field = |name: &str| {
        json.split(&format!("\"{name}\":"))
            .nth(1)
            .map(|r| r.split([',', '}']).next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    println!("| measure | value | goal |");
    println!("|---|---|---|");
    println!(
        "| append + hash, records/s (one core, SHA-NI {}) | {} | >= 300,000 |",
        field("sha_ni"),
        field("append_per_second")
    );
    println!(
        "| commit to signed checkpoint, p50 / p99 / max ms | {} / {} / {} | p99 <= 1000 |",
        field("p50"),
        field("p99"),
        field("max")
    );
    println!(
        "| bytes stored per record (segment + index + tiles) | {} | |",
        field("stored_bytes_per_record")
    );
    Ok(json)
}

/// agentd's CPU time (user + system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
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
fn status_kb(pid: u32, field: &str) -> u64 {
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

pub(crate) fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup v2 mount")
}

/// A running agentd for a benchmark, in a scratch directory.
pub(crate) struct Daemon {
    child: Child,
    dir: PathBuf,
    pins: PathBuf,
}

/// A benchmark that fails half-way must not leave agentd running (its pins are removed too).
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
            let _ = fs::remove_dir_all(&self.pins);
        }
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
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("agentd ready") => break,
                Some(Ok(_)) => {}
                _ => bail!("agentd did not start"),
            }
            if Instant::now() > deadline {
                bail!("agentd did not start within a minute");
            }
        }
        // Keep draining its messages so it never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        Ok(Self { child, dir, pins })
    }

    /// The records' JSON-lines export (with `export`).
    pub(crate) fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// The API socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("agentd.sock")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops agentd; returns (file.open records, lost file records) from its log.
    pub(crate) fn stop(mut self) -> anyhow::Result<(u64, u64)> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        // agentd leaves its programs attached (fail closed); the benchmark takes them away.
        let _ = fs::remove_dir_all(&self.pins);
        let (mut opens, mut lost) = (0, 0);
        for entry in fs::read_dir(self.dir.join("log"))?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "seg") {
                let bytes = fs::read(entry.path())?;
                let text = String::from_utf8_lossy(&bytes);
                opens += text.matches("\"kind\":\"file.open\"").count() as u64;
                for part in text.split("\"loss\":{\"count\":").skip(1) {
                    let count: u64 = part.split(',').next().unwrap_or("0").parse().unwrap_or(0);
                    if part.contains("\"what\":\"file\"") {
                        lost += count;
                    }
                }
            }
        }
        Ok((opens, lost))
    }
}

fn bench_sensor(root: &Path, seconds: u64) -> anyhow::Result<String> {
    println!(
        "\n== sensor: file opens by one agent process, kernel -> signed log ({seconds} s per step) =="
    );
    let cgroup = cgroup2_root()?.join("custos-bench.slice/load.scope");
    fs::create_dir_all(&cgroup)?;
    let workload = root.join("target/release/custos-workload");
    println!(
        "| offered opens/s | recorded/s | lost | agentd CPU % of one core | RSS idle MiB | RSS under load MiB |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut zero_loss_max = 0u64;
    for rate in [10_000u64, 25_000, 50_000, 100_000, 200_000] {
        let daemon = Daemon::start(root, "sensor")?;
        thread::sleep(Duration::from_secs(1));
        let rss_idle = status_kb(daemon.pid(), "VmRSS:");
        let cpu0 = cpu_ticks(daemon.pid());
        let start = Instant::now();
        let procs = cgroup.join("cgroup.procs");
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec env -u LD_LIBRARY_PATH {} open-rate:{rate}:{seconds}:/etc/hostname",
                procs.display(),
                workload.display()
            ))
            .stdout(Stdio::piped())
            .spawn()?;
        thread::sleep(Duration::from_secs(seconds) / 2);
        let rss_load = status_kb(daemon.pid(), "VmRSS:");
        let out = load.wait_with_output()?;
        let offered: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        thread::sleep(Duration::from_secs(1));
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(daemon.pid()) - cpu0) as f64 / 100.0 / elapsed * 100.0;
        let (recorded, lost) = daemon.stop()?;
        let per_second = recorded as f64 / seconds as f64;
        if lost == 0 {
            zero_loss_max = zero_loss_max.max(rate);
        }
        println!(
            "| {rate} | {per_second:.0} | {lost} | {cpu:.0} | {:.1} | {:.1} |",
            rss_idle as f64 / 1024.0,
            rss_load as f64 / 1024.0
        );
        rows.push(format!(
            "{{\"offered_per_second\":{rate},\"offered\":{offered},\"recorded\":{recorded},\"lost\":{lost},\"cpu_percent\":{cpu:.1},\"rss_idle_kb\":{rss_idle},\"rss_load_kb\":{rss_load}}}"
        ));
    }
    println!("highest offered rate with zero loss: {zero_loss_max}/s");
    Ok(format!(
        "{{\"zero_loss_max_per_second\":{zero_loss_max},\"steps\":[{}]}}",
        rows.join(",")
    ))
}
