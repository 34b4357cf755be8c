//! `cargo xtask bench sensor`: throughput and loss, kernel to signed log.
//!
//! One agent process opens a file at a fixed rate for a few seconds; a fresh agentd records it.
//! The rate doubles from 25,000/s until agentd loses events or the workload cannot offer more,
//! then two bisection steps narrow the highest rate recorded with zero loss. That rate, 2x and
//! 5x it are then offered again to agentd, and the same rates (and the 50,000/s goal) to auditd
//! recording the same opens, whose losses are the kernel's audit `lost` counter. Above
//! 100,000/s the rate is split over several workload processes (one offers about 120,000/s under
//! tracing on the reference machine). Memory: agentd's resident set idle (one second after
//! start), with the ring buffer's share (its pages are mapped twice and all resident), and
//! half-way through each step.

use std::{fs, io::BufRead as _, path::Path, thread, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{
    daemon::{Daemon, bpf_mapped_kb, cpu_ticks, status_kb},
    peers::{AUDIT_KEY, Auditd},
    util::cgroup2_root,
    workload,
};

/// The file every step opens.
const PATH: &str = "/etc/hostname";

/// The rate the issue sets as the zero-loss goal.
const GOAL_RATE: u64 = 50_000;

/// One step: a rate offered to one tool.
struct Step {
    rate: u64,
    offered: u64,
    recorded: u64,
    lost: u64,
    cpu_percent: f64,
    rss_idle_kb: u64,
    rss_load_kb: u64,
    /// Of the idle resident set, the ring buffer's pages (mapped twice).
    ring_kb: u64,
}

impl Step {
    /// Zero loss: nothing reported lost and nothing missing.
    fn lossless(&self) -> bool {
        self.lost == 0 && self.recorded >= self.offered
    }

    fn json(&self) -> Value {
        json!({
            "rate": self.rate, "offered": self.offered, "recorded": self.recorded,
            "lost": self.lost, "cpu_percent": self.cpu_percent,
            "rss_idle_kb": self.rss_idle_kb, "rss_load_kb": self.rss_load_kb,
            "ring_kb": self.ring_kb,
        })
    }
}

/// What one workload process offers at most: above it, the rate is split over several.
const WORKER_RATE: u64 = 100_000;

/// The workers offering `rate` opens/s together for `seconds`.
fn open_rate(rate: u64, seconds: u64) -> Vec<Vec<String>> {
    let workers = rate.div_ceil(WORKER_RATE).max(1);
    (0..workers)
        .map(|_| vec![format!("open-rate:{}:{seconds}:{PATH}", rate / workers)])
        .collect()
}

/// The opens the workers made, from their outputs.
fn offered(outs: &[String]) -> anyhow::Result<u64> {
    outs.iter()
        .map(|o| o.trim().parse::<u64>().context("the workload's count"))
        .sum()
}

/// Offers `rate` opens/s for `seconds` to a fresh agentd.
fn agentd_step(root: &Path, cgroup: &Path, rate: u64, seconds: u64) -> anyhow::Result<Step> {
    let daemon = Daemon::start(root, "sensor")?;
    thread::sleep(Duration::from_secs(1));
    let pid = daemon.pid();
    let rss_idle_kb = status_kb(pid, "VmRSS:");
    let ring_kb = bpf_mapped_kb(pid);
    let cpu0 = cpu_ticks(pid);
    let busy = thread::spawn(move || {
        thread::sleep(Duration::from_secs(seconds) / 2);
        status_kb(pid, "VmRSS:")
    });
    let (run, outs) = workload::run_many(root, cgroup, &open_rate(rate, seconds))?;
    let rss_load_kb = busy.join().unwrap_or(0);
    thread::sleep(Duration::from_secs(1));
    let cpu = cpu_ticks(pid).saturating_sub(cpu0) as f64 / 100.0;
    let tally = daemon.stop()?;
    Ok(Step {
        rate,
        offered: offered(&outs)?,
        // The workload's own start-up opens (its libraries) are recorded too.
        recorded: tally.opens,
        lost: tally.lost_file,
        cpu_percent: cpu / (run.wall.as_secs_f64() + 1.0) * 100.0,
        rss_idle_kb,
        rss_load_kb,
        ring_kb,
    })
}

/// Offers `rate` opens/s for `seconds` to a fresh auditd.
fn auditd_step(root: &Path, cgroup: &Path, rate: u64, seconds: u64) -> anyhow::Result<Step> {
    let auditd = Auditd::start(&root.join("target/bench/sensor-auditd"), 8192)?;
    thread::sleep(Duration::from_secs(1));
    let pid = auditd.pid();
    let rss_idle_kb = status_kb(pid, "VmRSS:");
    let lost0 = Auditd::lost()?;
    let cpu0 = cpu_ticks(pid);
    let start = std::time::Instant::now();
    let (_, outs) = workload::run_many(root, cgroup, &open_rate(rate, seconds))?;
    auditd.drain(Duration::from_secs(30));
    // auditd's CPU over the whole time it worked: the run and the drain after it.
    let busy_for = start.elapsed().as_secs_f64();
    let cpu = cpu_ticks(pid).saturating_sub(cpu0) as f64 / 100.0;
    let lost = Auditd::lost()?.saturating_sub(lost0);
    // Opens only (the rules record execs and connects too), read as a stream: the log of a
    // fast step is gigabytes.
    let log = fs::File::open(auditd.log()).context("opening audit.log")?;
    let key = format!("key=\"{AUDIT_KEY}\"");
    let mut recorded = 0;
    for line in std::io::BufReader::new(log).lines() {
        let line = line?;
        // x86_64: 2 open, 257 openat.
        if line.starts_with("type=SYSCALL")
            && line.contains(&key)
            && (line.contains(" syscall=257 ") || line.contains(" syscall=2 "))
        {
            recorded += 1;
        }
    }
    let rss_load_kb = status_kb(pid, "VmRSS:");
    drop(auditd);
    let _ = fs::remove_dir_all(root.join("target/bench/sensor-auditd"));
    Ok(Step {
        rate,
        offered: offered(&outs)?,
        recorded,
        lost,
        cpu_percent: cpu / busy_for * 100.0,
        rss_idle_kb,
        rss_load_kb,
        ring_kb: 0,
    })
}

fn print_header() {
    println!(
        "| tool | offered opens/s | achieved/s | recorded | lost | loss % | daemon CPU % of one core | RSS idle MiB (ring) | RSS under load MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
}

fn print(tool: &str, step: &Step, seconds: u64) {
    let loss = step.offered.saturating_sub(step.recorded).max(step.lost);
    println!(
        "| {tool} | {} | {} | {} | {} | {:.2} | {:.0} | {:.1} ({:.1}) | {:.1} |",
        step.rate,
        step.offered / seconds,
        step.recorded,
        step.lost,
        loss as f64 / step.offered.max(1) as f64 * 100.0,
        step.cpu_percent,
        step.rss_idle_kb as f64 / 1024.0,
        step.ring_kb as f64 / 1024.0,
        step.rss_load_kb as f64 / 1024.0,
    );
}

pub fn run(root: &Path, seconds: u64) -> anyhow::Result<Value> {
    println!(
        "\n== sensor: file opens by one agent process, kernel -> signed log ({seconds} s per step) =="
    );
    let cgroup = cgroup2_root()?.join("custos-bench.slice/load.scope");
    print_header();
    let mut steps: Vec<Step> = Vec::new();
    let mut take = |rate: u64| -> anyhow::Result<bool> {
        let step = agentd_step(root, &cgroup, rate, seconds)?;
        print("agentd", &step, seconds);
        let lossless = step.lossless();
        // The workload reaching under 90% of the rate is the machine's limit, not agentd's.
        let saturated = step.offered < rate * seconds * 9 / 10;
        steps.push(step);
        Ok(lossless && !saturated)
    };
    // Search: double while lossless, then bisect twice.
    let (mut good, mut bad) = (0, None);
    let mut rate = 25_000;
    while rate <= 1_600_000 {
        if take(rate)? {
            good = rate;
            rate *= 2;
        } else {
            bad = Some(rate);
            break;
        }
    }
    if let Some(mut bad) = bad {
        for _ in 0..2 {
            let middle = (good + bad) / 2 / 1000 * 1000;
            if middle <= good {
                break;
            }
            if take(middle)? {
                good = middle;
            } else {
                bad = middle;
            }
        }
    }
    let zero_loss_max = good;
    println!("highest rate recorded with zero loss: {zero_loss_max}/s");
    let mut compared = Vec::new();
    let mut rates = vec![GOAL_RATE];
    if zero_loss_max > 0 {
        rates.extend([zero_loss_max, 2 * zero_loss_max, 5 * zero_loss_max]);
    }
    rates.sort_unstable();
    rates.dedup();
    println!("\nthe same rates, agentd and auditd (backlog 8192, same opens recorded):");
    print_header();
    for rate in rates {
        let ours = agentd_step(root, &cgroup, rate, seconds)?;
        print("agentd", &ours, seconds);
        let theirs = auditd_step(root, &cgroup, rate, seconds)?;
        print("auditd", &theirs, seconds);
        compared.push(json!({"rate": rate, "agentd": ours.json(), "auditd": theirs.json()}));
    }
    let _ = fs::remove_dir(&cgroup);
    Ok(json!({
        "seconds_per_step": seconds,
        "zero_loss_max_per_second": zero_loss_max,
        "search": steps.iter().map(Step::json).collect::<Vec<_>>(),
        "compared": compared,
    }))
}
