//! Subscribers for `cargo xtask bench api`: opens N streams on agentd's socket, counts the
//! records each receives for a while, and measures the latency from the syscall (the record's
//! `time_ns`, the kernel's timestamp of the event) to its arrival here.
//!
//! `api_bench SOCKET --subscribers N --seconds S --marker PATH [--from SEQ --count N]` prints
//! one JSON line: records per second delivered to each subscriber (median over subscribers,
//! first record to last), and the latency median and p99 in µs over the records for PATH
//! (opened by the benchmark's workload). With `--from`, each subscriber replays the log from
//! SEQ and stops after `--count` records: delivery from the log files, at full speed.
#![expect(clippy::print_stdout, reason = "prints its results")]

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use agentd::api::{
    client::{Target, connect},
    proto::{self, stream_events_response::Item},
};

fn arg(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = PathBuf::from(&args[1]);
    let subscribers: usize = arg(&args, "--subscribers").parse().expect("count");
    let seconds: f64 = arg(&args, "--seconds").parse().expect("seconds");
    let marker = arg(&args, "--marker");
    let from: Option<u64> = args
        .iter()
        .any(|a| a == "--from")
        .then(|| arg(&args, "--from").parse().expect("from"));
    let count: u64 = if from.is_some() {
        arg(&args, "--count").parse().expect("count")
    } else {
        u64::MAX
    };
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let socket = socket.clone();
        let marker = marker.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&Target::Unix(socket)).await.expect("connect");
            let mut stream = client
                .stream_events(proto::StreamEventsRequest {
                    from_sequence: from,
                    filter: None,
                })
                .await
                .expect("stream")
                .into_inner();
            let mut latencies = Vec::new();
            let (mut records, mut first, mut last) = (0u64, None::<Instant>, None::<Instant>);
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let needle = format!("\"path\":\"{marker}\"");
            while let Ok(Ok(Some(message))) =
                tokio::time::timeout_at(deadline.into(), stream.message()).await
            {
                let Some(Item::Event(event)) = message.item else {
                    continue;
                };
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64;
                first.get_or_insert_with(Instant::now);
                last = Some(Instant::now());
                records += 1;
                // Cheap test first; parse only the marker's records.
                let text = String::from_utf8_lossy(&event.record);
                if from.is_none() && text.contains(&needle) {
                    let value: serde_json::Value =
                        serde_json::from_slice(&event.record).unwrap_or_default();
                    if let Some(at) = value["time_ns"]
                        .as_str()
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        latencies.push(now.saturating_sub(at) / 1000);
                    }
                }
                if records >= count {
                    break;
                }
            }
            let elapsed = match (first, last) {
                (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
                _ => 0.0,
            };
            (records, elapsed, latencies)
        }));
    }
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    let mut total = 0;
    for task in tasks {
        let (records, elapsed, mut lat) = task.await.expect("subscriber");
        total += records;
        rates.push(if elapsed > 0.0 {
            (records as f64 / elapsed) as u64
        } else {
            0
        });
        latencies.append(&mut lat);
    }
    rates.sort_unstable();
    latencies.sort_unstable();
    println!(
        "{{\"subscribers\":{subscribers},\"records_total\":{total},\"per_subscriber_per_second\":{},\"latency_p50_us\":{},\"latency_p99_us\":{},\"latency_samples\":{}}}",
        percentile(&rates, 0.5),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );
}
