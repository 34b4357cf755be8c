//! `cargo xtask bench`: measurements, each taken in one run on this machine and reported with
//! the machine they came from. Results print as a table and are written as JSON to
//! `target/bench/results.json`.
//!
//! - `log`: the signed log alone: append + hash throughput on one core (300-byte records),
//!   commit-to-signed-checkpoint latency at 50,000 records/s, bytes stored per record.
//! - `overhead`: a mixed workload (processes that exec, open files and connect) bare, under
//!   agentd, under auditd and under bpftrace: wall time and CPU, ratios to bare
//!   (`bench_overhead.rs`).
//! - `execs`: agentd and auditd record the same workload at once; their exec sets must agree.
//! - `sensor`: the real agentd under a file-open workload at rising rates: the highest rate it
//!   records with zero loss, its losses at 2x and 5x that rate, auditd's at the same rates,
//!   agentd's CPU and its memory idle and under load (`bench_sensor.rs`).
//! - `egress`: the time of `connect()` (TCP and UDP, loopback) for an enforced agent, an agent
//!   without a policy, a process outside every agent, and with no agentd at all; the time of a
//!   DNS answer through agentd's resolver against asking the upstream (dnsmasq) directly.
//!   Variants alternate round by round; each figure is the median of the rounds' medians.
//! - `api`: records per second delivered to one subscriber and to each of ten, and the
//!   latency from the syscall to the subscriber (median, p99), see `bench_api.rs`.
//! - `detector`: the detector's cost per event and per window, fitting time and memory per
//!   agent identity (`detector/examples/bench.rs`), also as ratios to SHA-256 of a 300-byte
//!   record (the signed log's work per record) measured in the same run.
//!
//! auditd and bpftrace come from Debian's packages, installed by [`setup::bench_tools`] (not by
//! the test set-up: the tests do not need them). A summary compares the run with the goals.

use std::{fs, path::Path, process::Command, thread};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// What to measure: `log`, `detector`, `overhead`, `execs`, `sensor`, `api`, `egress`, or
    /// `all`.
    #[arg(default_value = "all")]
    what: String,
    /// Seconds per sensor load step.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the overhead comparison (each runs every variant once).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Processes per run of the mixed workload (overhead, execs).
    #[arg(long, default_value_t = 1000)]
    children: u32,
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
    const ALL: &[&str] = &[
        "log", "detector", "overhead", "execs", "sensor", "api", "egress",
    ];
    let what: Vec<&str> = match options.what.as_str() {
        "all" => ALL.to_vec(),
        one if ALL.contains(&one) => vec![one],
        other => bail!(
            "unknown benchmark {other:?}: one of {}, or all",
            ALL.join(", ")
        ),
    };
    let privileged = what.iter().any(|w| !matches!(*w, "log" | "detector"));
    if privileged && !util::is_root() {
        bail!(
            "the {} benchmarks load eBPF programs and audit rules: run them as root",
            what.join(", ")
        );
    }
    setup::run()?;
    if what
        .iter()
        .any(|w| matches!(*w, "overhead" | "execs" | "sensor"))
    {
        setup::bench_tools()?;
    }
    let root = util::workspace_root();
    // agentd and its examples (log_bench, api_bench); the tests' workload binary.
    util::run(util::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "agentd",
        "-p",
        "custos-tests",
        "--bins",
        "--examples",
    ]))?;
    let mut results = serde_json::Map::new();
    for name in what {
        let result = match name {
            "log" => parse(&bench_log(&root)?)?,
            "detector" => parse(&bench_detector(&root)?)?,
            "overhead" => crate::bench_overhead::overhead(&root, options.rounds, options.children)?,
            "execs" => crate::bench_overhead::execs(&root, options.children)?,
            "sensor" => crate::bench_sensor::run(&root, options.seconds)?,
            "api" => parse(&crate::bench_api::run(&root)?)?,
            "egress" => parse(&crate::bench_egress::run(&root)?)?,
            _ => unreachable!("checked above"),
        };
        results.insert(name.to_owned(), result);
    }
    summary(&results);
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    let json = json!({
        "machine": machine(),
        "date_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "commit": util::output(Command::new("git").current_dir(&root).args(["rev-parse", "--short", "HEAD"])),
        "results": results,
    });
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!(
        "\nmachine: {}\nresults: {}",
        machine(),
        out.join("results.json").display()
    );
    Ok(())
}

fn parse(json: &str) -> anyhow::Result<Value> {
    serde_json::from_str(json).with_context(|| format!("a benchmark printed bad JSON: {json}"))
}

/// The goals of the benchmark issue, against what this run measured.
fn summary(results: &serde_json::Map<String, Value>) {
    let mut rows: Vec<(String, String, String, Option<bool>)> = Vec::new();
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    if let Some(o) = results.get("overhead") {
        let v = &o["variants"];
        let ours = f(&v["agentd"]["wall_ratio"]);
        let audit = f(&v["auditd"]["wall_ratio"]);
        rows.push((
            "overhead, mixed workload: wall time ratio to bare".into(),
            format!(
                "agentd {ours:.3}, auditd {audit:.3}, bpftrace {:.3}",
                f(&v["bpftrace"]["wall_ratio"])
            ),
            "agentd < 1.05 and < auditd".into(),
            Some(ours < 1.05 && ours < audit),
        ));
        let ours = f(&v["agentd"]["cpu_ratio"]);
        let audit = f(&v["auditd"]["cpu_ratio"]);
        rows.push((
            "overhead, mixed workload: machine CPU ratio to bare".into(),
            format!(
                "agentd {ours:.3}, auditd {audit:.3}, bpftrace {:.3}",
                f(&v["bpftrace"]["cpu_ratio"])
            ),
            "agentd < 1.05 and < auditd".into(),
            Some(ours < 1.05 && ours < audit),
        ));
    }
    if let Some(e) = results.get("execs") {
        rows.push((
            "execs recorded: agentd vs auditd".into(),
            format!(
                "{} vs {}, {} only in agentd, {} only in auditd",
                e["agentd"], e["auditd"], e["agentd_only"], e["auditd_only"]
            ),
            "equal sets".into(),
            Some(e["equal"] == true),
        ));
    }
    if let Some(s) = results.get("sensor") {
        let max = s["zero_loss_max_per_second"].as_u64().unwrap_or(0);
        rows.push((
            "highest rate recorded with zero loss, opens/s".into(),
            max.to_string(),
            ">= 50,000".into(),
            Some(max >= 50_000),
        ));
        let at = |rate: u64| {
            s["compared"]
                .as_array()
                .and_then(|c| c.iter().find(|r| r["rate"] == rate))
        };
        if let Some(goal) = at(50_000) {
            let lost = |t: &Value| {
                let missing = t["offered"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(t["recorded"].as_u64().unwrap_or(0));
                missing.max(t["lost"].as_u64().unwrap_or(0))
            };
            rows.push((
                "loss at 50,000 opens/s: agentd / auditd".into(),
                format!("{} / {}", lost(&goal["agentd"]), lost(&goal["auditd"])),
                "agentd 0".into(),
                Some(lost(&goal["agentd"]) == 0),
            ));
            let idle = goal["agentd"]["rss_idle_kb"].as_u64().unwrap_or(0) as f64 / 1024.0;
            let ring = goal["agentd"]["ring_kb"].as_u64().unwrap_or(0) as f64 / 1024.0;
            rows.push((
                "agentd RSS idle (of which the ring buffer) / under 50,000 opens/s, MiB".into(),
                format!(
                    "{idle:.1} ({ring:.1}) / {:.1}",
                    goal["agentd"]["rss_load_kb"].as_u64().unwrap_or(0) as f64 / 1024.0
                ),
                "idle < 30".into(),
                Some(idle < 30.0),
            ));
        }
    }
    if let Some(e) = results.get("egress") {
        rows.push((
            "connect() added by enforcement (TCP / UDP), µs".into(),
            format!(
                "{:.2} / {:.2}",
                f(&e["enforced_added_ns"]["tcp"]) / 1000.0,
                f(&e["enforced_added_ns"]["udp"]) / 1000.0
            ),
            "< 10".into(),
            None,
        ));
        rows.push((
            "DNS answer added by agentd's resolver, µs".into(),
            format!(
                "{:.1}",
                (f(&e["dns_median_ns"]["via_agentd"]) - f(&e["dns_median_ns"]["direct"])) / 1000.0
            ),
            "< 1000".into(),
            None,
        ));
    }
    if let Some(live) = results
        .get("api")
        .and_then(|a| a["runs"].as_array())
        .and_then(|r| r.first())
    {
        rows.push((
            "syscall to subscriber latency, p50 / p99 µs (2,000 opens/s, 1 subscriber)".into(),
            format!(
                "{} / {}",
                live["result"]["latency_p50_us"], live["result"]["latency_p99_us"]
            ),
            "".into(),
            None,
        ));
    }
    if rows.is_empty() {
        return;
    }
    println!("\n== summary ==");
    println!("| measure | this run | goal | met |");
    println!("|---|---|---|---|");
    for (measure, value, goal, met) in rows {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!("| {measure} | {value} | {goal} | {met} |");
    }
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
