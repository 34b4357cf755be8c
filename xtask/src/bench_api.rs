//! `cargo xtask bench api`: what the API delivers.
//!
//! - Live: the workload opens files at a steady 2,000/s and at 10,000/s; records per second
//!   reaching one subscriber and each of ten, and the latency from the syscall to the
//!   subscriber (the record's kernel timestamp to its arrival), median and p99.
//! - Replay: subscribers read the log the live runs wrote from sequence 0 (the catch-up path a
//!   resuming or lagging subscriber takes): records per second, one subscriber and ten.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{daemon::Daemon, util::cgroup2_root};

/// How long each measurement's workload runs.
const LOAD_SECONDS: u64 = 4;

/// Runs the workload's `open-rate` (0: unthrottled) in `cgroup`, opening `marker`.
fn load(root: &Path, cgroup: &Path, rate: u64, marker: &Path) -> anyhow::Result<()> {
    let bin = root.join("target/release/custos-workload");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} open-rate:{rate}:{LOAD_SECONDS}:{}",
            cgroup.join("cgroup.procs").display(),
            bin.display(),
            marker.display()
        ))
        .stdout(Stdio::null())
        .status()
        .context("running the workload")?;
    if !status.success() {
        bail!("the workload failed");
    }
    Ok(())
}

/// One measurement: `subscribers` streams while the workload runs at `rate`.
fn measure(
    root: &Path,
    daemon: &Daemon,
    cgroup: &Path,
    marker: &Path,
    subscribers: usize,
    rate: u64,
    replay: Option<u64>,
) -> anyhow::Result<String> {
    let mut bench = Command::new(root.join("target/release/examples/api_bench"));
    bench.arg(daemon.socket());
    if let Some(count) = replay {
        bench.args(["--from", "0", "--count", &count.to_string()]);
    }
    let bench = bench
        .args(["--subscribers", &subscribers.to_string()])
        .args(["--seconds", &(LOAD_SECONDS + 3).to_string()])
        .arg("--marker")
        .arg(marker)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting api_bench")?;
    if replay.is_none() {
        // Let every subscriber attach before the load starts.
        thread::sleep(Duration::from_secs(1));
        load(root, cgroup, rate, marker)?;
    }
    let out = bench.wait_with_output()?;
    if !out.status.success() {
        bail!("api_bench failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn field(json: &str, name: &str) -> String {
    json.split(&format!("\"{name}\":"))
        .nth(1)
        .map(|r| r.split([',', '}']).next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

pub fn run(root: &Path) -> anyhow::Result<String> {
    println!(
        "\n== api: records/s per subscriber, live and replayed from the log; syscall-to-subscriber latency =="
    );
    let daemon = Daemon::start(root, "api")?;
    let cgroup = cgroup2_root()?.join("custos-bench.slice/api.scope");
    fs::create_dir_all(&cgroup)?;
    let marker = root.join("target/bench/api/marker");
    fs::write(&marker, b"x")?;
    let mut results = Vec::new();
    println!(
        "| subscribers | load | records/s per subscriber (median) | latency p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|");
    let runs = [
        (1, 2000, None),
        (10, 2000, None),
        (1, 10_000, None),
        (10, 10_000, None),
        (1, 0, Some(50_000)),
        (10, 0, Some(50_000)),
    ];
    for (subscribers, rate, replay) in runs {
        let json = measure(root, &daemon, &cgroup, &marker, subscribers, rate, replay)?;
        let load = match replay {
            Some(n) => format!("replay of {n} records"),
            None => format!("live, {rate} opens/s"),
        };
        println!(
            "| {subscribers} | {load} | {} | {} | {} |",
            field(&json, "per_subscriber_per_second"),
            field(&json, "latency_p50_us"),
            field(&json, "latency_p99_us"),
        );
        results.push(format!(
            "{{\"subscribers\":{subscribers},\"rate\":{rate},\"replay\":{},\"result\":{json}}}",
            replay.unwrap_or(0)
        ));
    }
    let tally = daemon.stop()?;
    let (opens, lost) = (tally.opens, tally.lost_file);
    let _ = fs::remove_dir(&cgroup);
    println!("(agentd recorded {opens} opens; {lost} file records lost in the kernel)");
    Ok(format!(
        "{{\"runs\":[{}],\"opens\":{opens},\"lost\":{lost}}}",
        results.join(",")
    ))
}
