//! `cargo xtask bench egress`: what egress enforcement costs, measured against baselines in the
//! same run on this machine (see the module list in `bench.rs`).

use std::{
    collections::BTreeMap,
    fs,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{daemon::Daemon, util::cgroup2_root, util::median};

/// Rounds per variant (variants alternate within a round).
const ROUNDS: usize = 7;
/// Calls per round.
const CALLS: usize = 2000;
/// DNS queries per round.
const QUERIES: usize = 500;

/// Runs the workload with `actions`, in `cgroup` (or outside every agent); returns each
/// action's median in ns.
fn workload(root: &Path, cgroup: Option<&Path>, actions: &[String]) -> anyhow::Result<Vec<u64>> {
    let bin = root.join("target/release/custos-workload");
    let enter = match cgroup {
        Some(dir) => format!("echo $$ > {} && ", dir.join("cgroup.procs").display()),
        None => String::new(),
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{enter}exec {} \"$@\"", bin.display()))
        .arg("sh")
        .args(actions)
        .stderr(Stdio::inherit())
        .output()
        .context("running the workload")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|line| {
            let median = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("median_ns="))
                .with_context(|| format!("workload: {line}"))?;
            Ok(median.parse()?)
        })
        .collect()
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn run(root: &Path) -> anyhow::Result<String> {
    println!(
        "\n== egress: connect() and DNS answer latency, {ROUNDS} alternating rounds of {CALLS} calls ({QUERIES} queries) =="
    );
    // A loopback server that accepts and drops every connection.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let dns_port = free_udp_port()?;
    let dnsmasq = Dnsmasq(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file",
                "--host-record=bench.test,203.0.113.50,300",
            ])
            .arg(format!("--port={dns_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (run `cargo xtask setup` as root)")?,
    );
    thread::sleep(Duration::from_millis(300));

    let slice = cgroup2_root()?.join("custos-bench.slice");
    let enforced = slice.join("egress-enforced.scope");
    let plain = slice.join("egress-plain.scope");
    for dir in [&enforced, &plain] {
        fs::create_dir_all(dir)?;
    }
    let connects = vec![
        format!("connect-bench:tcp:127.0.0.1:{port}:{CALLS}"),
        format!("connect-bench:udp:127.0.0.1:{port}:{CALLS}"),
    ];
    let mut samples: BTreeMap<&str, Vec<Vec<u64>>> = BTreeMap::new();
    let mut take = |variant: &'static str,
                    cgroup: Option<&PathBuf>,
                    actions: &[String]|
     -> anyhow::Result<()> {
        let medians = workload(root, cgroup.map(PathBuf::as_path), actions)?;
        if medians.len() != actions.len() {
            bail!(
                "{variant}: the workload reported {} of {} measurements",
                medians.len(),
                actions.len()
            );
        }
        samples.entry(variant).or_default().push(medians);
        Ok(())
    };

    // No agentd: no hooks at all.
    for _ in 0..ROUNDS {
        take("no agentd", None, &connects)?;
    }
    let agents = format!(
        "[dns]\nupstream = [\"127.0.0.1:{dns_port}\"]\nport_base = 15900\n\
         [[agent]]\nname = \"enforced\"\nselectors = [{{ cgroup = \"custos-bench.slice/egress-enforced.scope\" }}]\n\
         [agent.egress]\nallow = [{{ cidr = \"127.0.0.1\", ports = \"{port}\" }}, {{ host = \"bench.test\", ports = \"443\" }}]\n\
         [[agent]]\nname = \"plain\"\nselectors = [{{ cgroup = \"custos-bench.slice/egress-plain.scope\" }}]\n"
    );
    let daemon = Daemon::start_with(root, "egress", &agents)?;
    let dns_via_agentd = vec![format!("dns-bench:127.0.0.1:53:bench.test:{QUERIES}")];
    let dns_direct = vec![format!(
        "dns-bench:127.0.0.1:{dns_port}:bench.test:{QUERIES}"
    )];
    let measured = (|| -> anyhow::Result<()> {
        for _ in 0..ROUNDS {
            take("enforced agent", Some(&enforced), &connects)?;
            take("agent, no policy", Some(&plain), &connects)?;
            take("outside every agent", None, &connects)?;
            take("dns via agentd", Some(&enforced), &dns_via_agentd)?;
            take("dns direct", None, &dns_direct)?;
        }
        Ok(())
    })();
    daemon.stop()?;
    drop(dnsmasq);
    for dir in [&enforced, &plain] {
        let _ = fs::remove_dir(dir);
    }
    measured?;

    let figure = |variant: &str, index: usize| {
        median(samples[variant].iter().map(|m| m[index]).collect()).unwrap_or(0)
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    println!("| connect() median, µs | TCP | UDP |");
    println!("|---|---|---|");
    for variant in [
        "no agentd",
        "outside every agent",
        "agent, no policy",
        "enforced agent",
    ] {
        println!(
            "| {variant} | {:.2} | {:.2} |",
            us(figure(variant, 0)),
            us(figure(variant, 1))
        );
    }
    let added = |index: usize| {
        figure("enforced agent", index) as i64 - figure("agent, no policy", index) as i64
    };
    let ratio = |index: usize| {
        figure("enforced agent", index) as f64 / figure("agent, no policy", index) as f64
    };
    println!(
        "enforced vs no policy: TCP {:+.2} µs (x{:.3}), UDP {:+.2} µs (x{:.3}); goal: under 10 µs added",
        added(0) as f64 / 1000.0,
        ratio(0),
        added(1) as f64 / 1000.0,
        ratio(1)
    );
    let (via, direct) = (figure("dns via agentd", 0), figure("dns direct", 0));
    println!(
        "DNS answer median: via agentd {:.1} µs, direct {:.1} µs: {:+.1} µs (x{:.2}); goal: under 1 ms added",
        us(via),
        us(direct),
        (via as f64 - direct as f64) / 1000.0,
        via as f64 / direct as f64
    );
    Ok(format!(
        "{{\"connect_median_ns\":{{\"tcp\":{{\"no_agentd\":{},\"outside\":{},\"agent_no_policy\":{},\"enforced\":{}}},\
         \"udp\":{{\"no_agentd\":{},\"outside\":{},\"agent_no_policy\":{},\"enforced\":{}}}}},\
         \"enforced_added_ns\":{{\"tcp\":{},\"udp\":{}}},\"dns_median_ns\":{{\"via_agentd\":{via},\"direct\":{direct}}},\
         \"rounds\":{ROUNDS},\"calls_per_round\":{CALLS},\"queries_per_round\":{QUERIES}}}",
        figure("no agentd", 0),
        figure("outside every agent", 0),
        figure("agent, no policy", 0),
        figure("enforced agent", 0),
        figure("no agentd", 1),
        figure("outside every agent", 1),
        figure("agent, no policy", 1),
        figure("enforced agent", 1),
        added(0),
        added(1),
    ))
}
