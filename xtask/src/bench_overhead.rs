//! `cargo xtask bench overhead` and `bench execs`: what watching a workload costs it, with
//! agentd and with the tools users run today, and whether agentd and auditd saw the same execs.
//!
//! Overhead: the mixed workload (`workload::mixed`: short processes that each exec, open three
//! files and connect on loopback) runs bare, under agentd (an agent identity covering it),
//! under auditd (rules recording the same system calls of the workload) and under a bpftrace
//! script tracing the same events. Each round runs every variant once, in an order rotated
//! round by round, each tool started before and stopped after its run, so slow drifts of a
//! shared machine fall on every variant alike. Reported: the medians, over rounds, of the
//! workload's wall time and of the machine's CPU time (the workload, the tool's daemon and
//! the kernel's work for both, until one second after the workload ends, or later if auditd
//! is still writing its backlog), and their ratios to the bare run of the same round.
//!
//! Execs: agentd and auditd record one run of the workload together; the sets of (pid,
//! executable) they logged must be equal.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    thread,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{
    daemon::{Daemon, cpu_ticks},
    peers::{Auditd, Bpftrace},
    util::cgroup2_root,
    util::median,
    workload,
};

/// The agent identity covering the workload.
const AGENTS: &str =
    "[[agent]]\nname = \"bench\"\nselectors = [{ cgroup = \"custos-bench.slice/mixed.scope\" }]\n";

/// auditd's backlog: Debian's example rules ask for 8192.
const AUDIT_BACKLOG: u64 = 8192;

/// How long after the workload the CPU of the machine is still counted: the tools finish
/// writing what the workload caused.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Bare,
    Agentd,
    Auditd,
    Bpftrace,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Bare,
        Variant::Agentd,
        Variant::Auditd,
        Variant::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::Agentd => "agentd",
            Variant::Auditd => "auditd",
            Variant::Bpftrace => "bpftrace",
        }
    }
}

/// A tool watching the workload for one run.
enum Watcher {
    None,
    Agentd(Daemon),
    Auditd(Auditd),
    Bpftrace(Bpftrace),
}

impl Watcher {
    fn start(root: &Path, variant: Variant, cgroup: &Path) -> anyhow::Result<Self> {
        let dir = root.join("target/bench/overhead");
        Ok(match variant {
            Variant::Bare => Watcher::None,
            Variant::Agentd => Watcher::Agentd(Daemon::start_with(root, "overhead", AGENTS)?),
            Variant::Auditd => Watcher::Auditd(Auditd::start(&dir.join("auditd"), AUDIT_BACKLOG)?),
            Variant::Bpftrace => Watcher::Bpftrace(Bpftrace::start(&dir.join("bpftrace"), cgroup)?),
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Watcher::None => None,
            Watcher::Agentd(d) => Some(d.pid()),
            Watcher::Auditd(a) => Some(a.pid()),
            Watcher::Bpftrace(b) => Some(b.pid()),
        }
    }

    /// Stops the tool; returns how many events it recorded and how many it reported lost.
    fn stop(self) -> anyhow::Result<(u64, u64)> {
        Ok(match self {
            Watcher::None => (0, 0),
            Watcher::Agentd(daemon) => {
                let tally = daemon.stop()?;
                (tally.records, tally.lost)
            }
            Watcher::Auditd(auditd) => (auditd.recorded()?, 0),
            Watcher::Bpftrace(bpftrace) => bpftrace.stop()?,
        })
    }
}

/// One variant's run in one round.
struct Sample {
    wall: f64,
    /// The machine's CPU seconds from the workload's start until [`SETTLE`] after its end.
    machine_cpu: f64,
    workload_cpu: f64,
    tool_cpu: f64,
    recorded: u64,
    lost: u64,
}

pub fn overhead(root: &Path, rounds: usize, children: u32) -> anyhow::Result<Value> {
    println!(
        "\n== overhead: {children} processes (exec, 3 opens, 1 loopback connect each), \
         bare / agentd / auditd / bpftrace, {rounds} rounds =="
    );
    let cgroup = cgroup2_root()?.join("custos-bench.slice/mixed.scope");
    let port = workload::listener()?;
    let args = workload::mixed(root, children, port);
    // Warm the page cache and the allocator before the first timed run.
    workload::run(root, &cgroup, &args)?;
    let mut samples: BTreeMap<Variant, Vec<Sample>> = BTreeMap::new();
    let auditd_lost_before = Auditd::lost().unwrap_or(0);
    for round in 0..rounds {
        let mut order = Variant::ALL;
        order.rotate_left(round % Variant::ALL.len());
        for variant in order {
            let watcher = Watcher::start(root, variant, &cgroup)
                .with_context(|| format!("starting {}", variant.name()))?;
            thread::sleep(Duration::from_secs(1));
            let tool0 = watcher.pid().map_or(0, cpu_ticks);
            let busy0 = workload::machine_busy();
            let (run, _) = workload::run(root, &cgroup, &args)?;
            // The tool's work on the workload counts until it is done: auditd may still be
            // writing its backlog after SETTLE.
            let settle = std::time::Instant::now();
            if let Watcher::Auditd(auditd) = &watcher {
                auditd.drain(Duration::from_secs(30));
            }
            thread::sleep(SETTLE.saturating_sub(settle.elapsed()));
            let machine_cpu = workload::machine_busy().saturating_sub(busy0).as_secs_f64();
            let tool_cpu = watcher.pid().map_or(0, cpu_ticks).saturating_sub(tool0) as f64 / 100.0;
            let (recorded, lost) = watcher.stop()?;
            samples.entry(variant).or_default().push(Sample {
                wall: run.wall.as_secs_f64(),
                machine_cpu,
                workload_cpu: run.cpu.as_secs_f64(),
                tool_cpu,
                recorded,
                lost,
            });
        }
        println!("round {} of {rounds} done", round + 1);
    }
    let auditd_lost = Auditd::lost()
        .unwrap_or(0)
        .saturating_sub(auditd_lost_before);
    let _ = fs::remove_dir(&cgroup);

    // Ratios are taken round by round against that round's bare run, then the median; the
    // spread over rounds shows how much of a difference is noise.
    let bare = &samples[&Variant::Bare];
    let ratios = |variant: Variant, pick: fn(&Sample) -> f64| -> Vec<f64> {
        samples[&variant]
            .iter()
            .zip(bare)
            .map(|(s, b)| pick(s) / pick(b))
            .collect()
    };
    let med = |values: Vec<f64>| median(values).unwrap_or(f64::NAN);
    let range = |values: &[f64]| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    println!(
        "| variant | wall s | wall ratio (range over rounds) | machine CPU s | CPU ratio (range) | workload CPU s | tool CPU s | records per run | lost |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut out = serde_json::Map::new();
    for variant in Variant::ALL {
        let runs = &samples[&variant];
        let recorded = median(runs.iter().map(|s| s.recorded).collect()).unwrap_or(0);
        let lost = if variant == Variant::Auditd {
            auditd_lost
        } else {
            runs.iter().map(|s| s.lost).sum()
        };
        let wall_ratios = ratios(variant, |s| s.wall);
        let cpu_ratios = ratios(variant, |s| s.machine_cpu);
        let (wall_lo, wall_hi) = range(&wall_ratios);
        let (cpu_lo, cpu_hi) = range(&cpu_ratios);
        let row = json!({
            "wall_s": med(runs.iter().map(|s| s.wall).collect()),
            "wall_ratio": med(wall_ratios.clone()),
            "wall_ratios": wall_ratios,
            "machine_cpu_s": med(runs.iter().map(|s| s.machine_cpu).collect()),
            "cpu_ratio": med(cpu_ratios.clone()),
            "cpu_ratios": cpu_ratios,
            "workload_cpu_s": med(runs.iter().map(|s| s.workload_cpu).collect()),
            "tool_cpu_s": med(runs.iter().map(|s| s.tool_cpu).collect()),
            "records_per_run": recorded,
            "lost": lost,
        });
        let f = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.3} | {:.3} ({wall_lo:.3}-{wall_hi:.3}) | {:.3} | {:.3} ({cpu_lo:.3}-{cpu_hi:.3}) | {:.3} | {:.2} | {} | {lost} |",
            variant.name(),
            f("wall_s"),
            f("wall_ratio"),
            f("machine_cpu_s"),
            f("cpu_ratio"),
            f("workload_cpu_s"),
            f("tool_cpu_s"),
            if variant == Variant::Bare {
                "-".to_owned()
            } else {
                recorded.to_string()
            },
        );
        out.insert(variant.name().to_owned(), row);
    }
    println!(
        "(records: agentd's log records, auditd's SYSCALL records, bpftrace's lines; \
         lost: agentd's sensor.loss counts, the kernel's audit lost counter, bpftrace's \
         \"Lost N events\")"
    );
    Ok(json!({
        "rounds": rounds,
        "children_per_run": children,
        "variants": out,
    }))
}

pub fn execs(root: &Path, children: u32) -> anyhow::Result<Value> {
    println!("\n== execs: agentd and auditd record the same workload; (pid, executable) sets ==");
    let cgroup = cgroup2_root()?.join("custos-bench.slice/mixed.scope");
    let port = workload::listener()?;
    let daemon = Daemon::start_full(root, "execs", AGENTS, true)?;
    let auditd = Auditd::start(&root.join("target/bench/execs/auditd"), AUDIT_BACKLOG)?;
    let lost0 = Auditd::lost()?;
    workload::run(root, &cgroup, &workload::mixed(root, children, port))?;
    auditd.drain(Duration::from_secs(10));
    thread::sleep(Duration::from_secs(2));
    let audit_lost = Auditd::lost()?.saturating_sub(lost0);
    let by_auditd = auditd.execs()?;
    drop(auditd);
    let events = daemon.events();
    let tally = daemon.stop()?;
    let _ = fs::remove_dir(&cgroup);

    let mut by_agentd = BTreeSet::new();
    for line in fs::read_to_string(&events)?.lines() {
        let record: Value = serde_json::from_str(line).context("a line of agentd's export")?;
        if record["kind"] != "process.exec" || record["agent"]["name"] != "bench" {
            continue;
        }
        let process = &record["process"];
        let (Some(pid), Some(path)) = (process["pid"].as_u64(), process["file"]["path"].as_str())
        else {
            continue;
        };
        // agentd logs the path as given to execve, auditd the resolved one.
        let path = fs::canonicalize(path).map_or(path.to_owned(), |p| p.display().to_string());
        by_agentd.insert((pid as u32, path));
    }
    let only_agentd: Vec<_> = by_agentd.difference(&by_auditd).collect();
    let only_auditd: Vec<_> = by_auditd.difference(&by_agentd).collect();
    let both = by_agentd.intersection(&by_auditd).count();
    println!("| recorded by | execs |");
    println!("|---|---|");
    println!("| agentd | {} |", by_agentd.len());
    println!("| auditd | {} |", by_auditd.len());
    println!("| both | {both} |");
    println!("| agentd only | {} |", only_agentd.len());
    println!("| auditd only | {} |", only_auditd.len());
    for (who, list) in [("agentd only", &only_agentd), ("auditd only", &only_auditd)] {
        for (pid, exe) in list.iter().take(5) {
            println!("  {who}: pid {pid} {exe}");
        }
    }
    let equal = only_agentd.is_empty() && only_auditd.is_empty();
    println!(
        "{} (agentd lost {}, auditd lost {audit_lost})",
        if equal {
            "the sets are equal"
        } else {
            "THE SETS DIFFER"
        },
        tally.lost
    );
    Ok(json!({
        "children": children,
        "agentd": by_agentd.len(),
        "auditd": by_auditd.len(),
        "both": both,
        "agentd_only": only_agentd.len(),
        "auditd_only": only_auditd.len(),
        "equal": equal,
        "agentd_lost": tally.lost,
        "auditd_lost": audit_lost,
    }))
}
