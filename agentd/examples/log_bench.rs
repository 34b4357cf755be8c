//! Benchmark of the signed log (run by `cargo xtask bench`): append + hash throughput on one
//! core, time from a record's commit to the signed checkpoint covering it under a steady load,
//! and bytes stored per record. Prints one JSON object.
//!
//! `log_bench [--records N] [--size BYTES] [--rate PER_SECOND] [--seconds S] [--dir DIR]`
#![expect(clippy::print_stdout, reason = "a benchmark prints its result")]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use agentd::{
    json::Obj,
    log::{
        note::NoteSigner,
        store::{Log, LogOptions},
    },
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A record of about `size` canonical bytes.
fn record(i: u64, size: usize) -> Obj {
    let mut obj = Obj::new();
    obj.str("kind", "file.open")
        .u64("i", i)
        .u64("time", 1_795_000_000_000 + i);
    let base = obj.to_bytes().len() + 24;
    obj.str("pad", &"p".repeat(size.saturating_sub(base)));
    obj
}

fn open(dir: &std::path::Path, interval: Duration) -> Log {
    let signer = NoteSigner::new("bench/custos/log", [9; 32]).expect("signer");
    let opts = LogOptions {
        dir: dir.to_owned(),
        origin: "bench/custos/log".into(),
        segment_bytes: 64 << 20,
        checkpoint_interval: interval,
        retention_age: None,
        retention_bytes: None,
    };
    Log::open(opts, signer).expect("open the log").0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let records = arg("--records", 1_000_000);
    let size = arg("--size", 300) as usize;
    let rate = arg("--rate", 50_000);
    let seconds = arg("--seconds", 5);
    let root = std::env::args()
        .skip_while(|a| a != "--dir")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&root).expect("temporary directory");
    let sha_ni = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains(" sha_ni");

    // 1. Throughput: build, stage and commit in batches of 1,024, signing once a second as the
    // daemon does, flat out on one core.
    let through = dir.path().join("throughput");
    let mut log = open(&through, Duration::from_secs(1));
    let start = Instant::now();
    let mut i = 0;
    while i < records {
        for _ in 0..1024.min(records - i) {
            log.stage(&mut record(i, size), "file.open")
                .expect("no outage");
            i += 1;
        }
        log.commit().expect("commit");
        if log.checkpoint_due() {
            log.checkpoint().expect("checkpoint");
        }
    }
    log.checkpoint().expect("checkpoint");
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = dir_bytes(&through);
    let leaf_bytes = record(0, size).to_bytes().len() + 8;
    drop(log);

    // 2. Latency from commit to the covering checkpoint at a steady rate, with the daemon's
    // 250 ms tick and one-second checkpoint interval.
    let steady = dir.path().join("latency");
    let mut log = open(&steady, Duration::from_secs(1));
    let mut pending: Vec<Instant> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut last_tick = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let batch_start = Instant::now();
        while sent < due {
            log.stage(&mut record(sent, size), "file.open")
                .expect("no outage");
            sent += 1;
        }
        log.commit().expect("commit");
        pending.extend(std::iter::repeat_n(batch_start, log.committed().count()));
        if last_tick.elapsed() >= Duration::from_millis(250) {
            last_tick = Instant::now();
            if log.checkpoint_due() {
                log.checkpoint().expect("checkpoint");
                let now = Instant::now();
                latencies.extend(
                    pending
                        .drain(..)
                        .map(|t| now.duration_since(t).as_secs_f64() * 1000.0),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{{\"records\":{records},\"record_bytes\":{leaf_bytes},\"sha_ni\":{sha_ni},\"append_per_second\":{:.0},\"stored_bytes_per_record\":{:.1},\"latency_rate\":{rate},\"commit_to_checkpoint_ms\":{{\"p50\":{:.1},\"p99\":{:.1},\"max\":{:.1}}}}}",
        records as f64 / elapsed,
        bytes as f64 / records as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
    );
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
