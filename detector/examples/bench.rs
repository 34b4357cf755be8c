//! The detector's costs, for `cargo xtask bench detector`: time per event observed, per window
//! scored, per model fit, and memory per agent identity. Each time is the median of several
//! rounds, and is also given as a ratio to SHA-256 of a 300-byte record measured in the same run
//! (the work the signed log does for every record), so the figure travels between machines.
//!
//! Prints one JSON object.
#![expect(clippy::print_stdout, reason = "a benchmark printing its result")]

use std::{hint::black_box, time::Instant};

use detector::{
    AgentSpec, Detector, Observation, Settings,
    features::FEATURES,
    incident::Tier,
    items::Normaliser,
    model::{FitOptions, Model},
    profile::Lifecycle,
};

const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of `f`, median of the rounds.
fn per_call(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for i in 0..calls {
                    f(i);
                }
                start.elapsed().as_nanos() as f64 / calls as f64
            })
            .collect(),
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A pseudo-random but reproducible window.
fn window(i: usize) -> Vec<f64> {
    (0..FEATURES)
        .map(|j| (((i * 31 + j * 17) % 13) as f64 / 4.0 + j as f64 / 3.0).ln_1p())
        .collect()
}

/// Settings under which a profile is stable at its first tick, or (`learning`) never.
fn settings(learning: bool) -> Settings {
    Settings {
        window_ms: 1000,
        lifecycle: Lifecycle {
            min_learning_ms: if learning { u64::MAX / 2 } else { 0 },
            quiet_ms: 0,
            min_windows: 0,
            ..Lifecycle::default()
        },
        ..Settings::default()
    }
}

fn spec(id: u32) -> AgentSpec {
    AgentSpec {
        id,
        name: format!("agent-{id}"),
        fingerprint: "v1".into(),
        enforce: true,
        tier: Tier::Low,
    }
}

/// A learned agent: `items` distinct file directories, exec edges and destinations, and
/// `windows` learning windows.
fn learned(d: &mut Detector, id: u32, items: usize, windows: usize) {
    for i in 0..items {
        let path = format!("/srv/project/dir{i}/file.rs");
        d.observe(
            id,
            0,
            Some(i as u64),
            Observation::Open {
                path: &path,
                write: false,
                ok: true,
            },
        );
        let exe = format!("/usr/bin/tool{}", i % 50);
        d.observe(
            id,
            0,
            None,
            Observation::Exec {
                exe: &exe,
                parent_exe: Some("/usr/bin/python3"),
            },
        );
        d.observe(
            id,
            0,
            None,
            Observation::Connect {
                exe: Some("/usr/bin/python3"),
                addr: std::net::IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]),
                port: 443,
                name: None,
                udp: false,
                ok: true,
            },
        );
    }
    windows_for(d, &[id], windows);
}

/// `windows` windows for `ids`, with some CPU each.
fn windows_for(d: &mut Detector, ids: &[u32], windows: usize) {
    for w in 0..windows as u64 {
        let usage: Vec<(u32, u64, bool)> = ids.iter().map(|&id| (id, 10 + w % 7, true)).collect();
        d.tick((w + 1) * 1000, &usage);
    }
}

fn main() {
    // Baseline: what the log does for every record.
    let record = vec![b'x'; 300];
    let sha_ns = per_call(200_000, |_| {
        use sha2::Digest as _;
        black_box(sha2::Sha256::digest(black_box(&record)));
    });

    // Per event: a stable, enforcing agent doing known things (the common case), and new ones.
    let mut d = Detector::new(settings(false), Normaliser::default(), None);
    d.configure(&[spec(1)], 0);
    learned(&mut d, 1, 200, 60);
    d.tick(100_000, &[(1, 10, true)]);
    let known_ns = per_call(200_000, |i| {
        let path = format!("/srv/project/dir{}/file.rs", i % 200);
        black_box(d.observe(
            1,
            100_000,
            Some(i as u64),
            Observation::Open {
                path: &path,
                write: false,
                ok: true,
            },
        ));
    });
    let novel_ns = per_call(20_000, |i| {
        let addr = std::net::IpAddr::from([192, 0, (i / 250 % 250) as u8, (i % 250) as u8]);
        black_box(d.observe(
            1,
            100_000,
            Some(i as u64),
            Observation::Connect {
                exe: Some("/usr/bin/python3"),
                addr,
                port: 8443,
                name: None,
                udp: false,
                ok: true,
            },
        ));
    });

    // Per window: scoring one window vector, and a whole tick for one agent.
    let history: Vec<Vec<f64>> = (0..1440).map(window).collect();
    let mut fit_ms = Vec::new();
    let mut model = None;
    for _ in 0..3 {
        let start = Instant::now();
        model = Some(Model::fit(&history, &FitOptions::default()).expect("fit"));
        fit_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let model = model.expect("fitted");
    let score_ns = per_call(200_000, |i| {
        black_box(model.score(black_box(&history[i % history.len()])));
    });

    // Memory per identity: 200 learning agents, each with 200 items in each of five categories
    // (directories, executables, exec edges, destinations, connectors) and a day of 60 s windows.
    let before = rss_kib();
    let mut many = Detector::new(settings(true), Normaliser::default(), None);
    let specs: Vec<AgentSpec> = (1..=200).map(spec).collect();
    many.configure(&specs, 0);
    for id in 1..=200 {
        learned(&mut many, id, 200, 0);
    }
    let ids: Vec<u32> = (1..=200).collect();
    windows_for(&mut many, &ids, 1440);
    let per_agent_kib = rss_kib().saturating_sub(before) as f64 / 200.0;
    let saved = serde_json::to_vec(&many.saved()).expect("json");
    let saved_kib_per_agent = saved.len() as f64 / 1024.0 / 200.0;

    println!(
        "{{\"sha256_300B_ns\":{sha_ns:.0},\"event_known_ns\":{known_ns:.0},\"event_known_ratio\":{:.2},\
         \"event_new_ns\":{novel_ns:.0},\"event_new_ratio\":{:.2},\"window_score_ns\":{score_ns:.0},\
         \"window_score_ratio\":{:.2},\"fit_1440_windows_ms\":{:.1},\"model_components\":{},\
         \"rss_kib_per_agent\":{per_agent_kib:.0},\"saved_kib_per_agent\":{saved_kib_per_agent:.0}}}",
        known_ns / sha_ns,
        novel_ns / sha_ns,
        score_ns / sha_ns,
        median(fit_ms),
        model.components(),
    );
}
