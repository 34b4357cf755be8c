//! `cargo xtask eval`: the detector against the real daemon, benign agents and attacks, with a
//! table of what it caught, how fast, and what it raised for nothing.
//!
//! Three agent-like workloads (tests/agents/agent.py: a coding agent, a data agent, a
//! scheduler) run as three agent identities in their own cgroups, enforcing, low trust tier.
//! They learn, become stable and enforcing, then run benignly for a while (every alert there is
//! a false alarm), then each attack kind is run `--runs` times, rotating over the agents. After
//! each attack the agent is released through the API, as an operator would.
//!
//! Time is compressed so the evaluation fits in minutes: 2 s windows instead of 60 s, minutes of
//! learning instead of days. False alarms are reported per agent-hour of wall-clock benign
//! activity *and* per thousand windows, the figure that carries over to real window lengths.
//! Destinations are loopback addresses (127.0.0.x) served by this harness; quarantine leaves
//! loopback open by design, so containment is timed from its record, not from a refused connect.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    daemon::Daemon,
    setup,
    util::cgroup2_root,
    util::{self, median},
};

#[derive(clap::Args)]
pub struct Options {
    /// Runs of each attack kind.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of benign activity after the baselines are enforcing.
    #[arg(long, default_value_t = 180)]
    benign_seconds: u64,
    /// Least seconds of learning.
    #[arg(long, default_value_t = 120)]
    learn_seconds: u64,
}

const ROLES: [&str; 3] = ["coder", "data", "scheduler"];
const WINDOW_SECONDS: u64 = 2;

/// Attack kinds, with what the issue calls them.
const ATTACKS: [(&str, &str); 8] = [
    ("credential", "credential file read"),
    ("exfil", "exfiltration to a new destination"),
    ("download_exec", "download and execute"),
    ("reverse_shell", "reverse shell"),
    ("cpu", "CPU abuse (mining-like)"),
    ("slow_exfil", "low-and-slow exfiltration, new destination"),
    (
        "slow_exfil_known",
        "low-and-slow exfiltration, known destination",
    ),
    ("mimicry", "mimicry: the routine plus one new step"),
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The harness's servers: the agents' APIs, the exfiltration sink, the download and the
/// reverse-shell operator. Returns their ports.
fn servers() -> anyhow::Result<[u16; 4]> {
    let mut ports = [0; 4];
    for (i, port) in ports.iter_mut().enumerate() {
        let listener = TcpListener::bind("0.0.0.0:0")?;
        *port = listener.local_addr()?.port();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
                    let mut buf = [0u8; 4096];
                    match i {
                        // API: one request line, one answer.
                        0 => {
                            let _ = stream.read(&mut buf);
                            let _ = stream.write_all(b"ok\n");
                        }
                        // Download: a script.
                        2 => {
                            let _ = stream.write_all(b"#!/bin/sh\n/bin/true\n");
                        }
                        // Reverse shell: the operator types two commands.
                        3 => {
                            let _ = stream.write_all(b"id\nuname -a\nexit\n");
                            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                        }
                        // Exfiltration sink: take everything.
                        _ => while matches!(stream.read(&mut buf), Ok(n) if n > 0) {},
                    }
                });
            }
        });
    }
    Ok(ports)
}

/// One running agent workload.
struct Agent {
    role: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(
        root: &Path,
        work: &Path,
        role: &'static str,
        cgroup: &Path,
        ports: &[u16; 4],
    ) -> anyhow::Result<Self> {
        let dir = work.join(role);
        let _ = fs::remove_dir_all(&dir);
        for sub in ["src", "data", "out", "home/.ssh"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for i in 0..6 {
            fs::write(dir.join(format!("src/mod{i}.rs")), "pub fn f() {}\n")?;
        }
        for i in 0..20 {
            fs::write(
                dir.join(format!("data/part{i:02}.csv")),
                "a,b\n1,2\n".repeat(50),
            )?;
        }
        fs::write(
            dir.join("home/.ssh/id_rsa"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        )?;
        fs::create_dir_all(cgroup)?;
        // An earlier run stopped half-way may have left it frozen.
        let _ = fs::write(cgroup.join("cgroup.freeze"), "0");
        // The shell moves itself into the agent's cgroup, then becomes the agent.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec python3 {} {role} {} {} {}",
            cgroup.display(),
            root.join("tests/agents/agent.py").display(),
            dir.display(),
            ROLES.iter().position(|r| *r == role).unwrap_or(0) + 7,
            ports.map(|p| p.to_string()).join(":"),
        );
        let mut child = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("HOME", dir.join("home"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting an agent")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let agent = Self {
            role,
            child,
            stdin,
            lines,
        };
        if agent.lines.recv_timeout(Duration::from_secs(30)).as_deref() != Ok("started") {
            bail!("agent {role} did not start");
        }
        Ok(agent)
    }

    fn send(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for a line starting with `prefix`.
    fn expect(&self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The detector's records in agentd's export, read as they are appended (the export holds
/// every event; only `detector.*` records are parsed and kept).
struct Detections {
    file: fs::File,
    partial: String,
    records: Vec<Value>,
}

impl Detections {
    fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            file: fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            partial: String::new(),
            records: Vec::new(),
        })
    }

    /// Reads what was appended since the last call; returns every detector record so far.
    fn poll(&mut self) -> &[Value] {
        let mut bytes = Vec::new();
        if self.file.read_to_end(&mut bytes).is_ok() {
            self.partial.push_str(&String::from_utf8_lossy(&bytes));
            let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
            let text: String = self.partial.drain(..complete).collect();
            self.records.extend(
                text.lines()
                    .filter(|l| l.contains("\"kind\":\"detector."))
                    .filter_map(|l| serde_json::from_str(l).ok()),
            );
        }
        &self.records
    }
}

fn agent_of(record: &Value) -> &str {
    record["agent"]["name"].as_str().unwrap_or("")
}

fn time_of(record: &Value) -> u64 {
    record["time"].as_u64().unwrap_or(0)
}

/// One attack run's outcome.
struct Outcome {
    kind: &'static str,
    detected_ms: Option<u64>,
    contained_ms: Option<u64>,
    severity: String,
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.1}", ms as f64 / 1000.0))
}

pub fn run(options: Options) -> anyhow::Result<()> {
    setup::run()?;
    if !util::is_root() {
        bail!("the evaluation loads eBPF programs and creates cgroups: run it as root");
    }
    let root = util::workspace_root();
    util::run(util::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "agentd",
        "--bins",
    ]))?;
    let work = root.join("target/eval");
    fs::create_dir_all(&work)?;
    let cgroups = cgroup2_root()?.join("custos-eval.slice");
    let agents_toml: String = ROLES
        .iter()
        .map(|role| {
            format!(
                "[[agent]]\nname = \"{role}\"\ntrust_tier = \"low\"\ndetection = \"enforce\"\n\
                 selectors = [{{ cgroup = \"custos-eval.slice/{role}.scope\" }}]\n"
            )
        })
        .collect();
    let config = format!(
        "[detector]\nwindow_seconds = {WINDOW_SECONDS}\nmin_learning_seconds = {}\n\
         quiet_seconds = 30\nmin_windows = 40\nincident_gap_seconds = 20\n\
         max_actions_per_hour = 10000\n{agents_toml}",
        options.learn_seconds
    );
    let ports = servers()?;
    let daemon = Daemon::start_full(&root, "eval", &config, true)?;
    let mut detections = Detections::open(&daemon.events())?;
    let mut agents = Vec::new();
    for role in ROLES {
        agents.push(Agent::start(
            &root,
            &work,
            role,
            &cgroups.join(format!("{role}.scope")),
            &ports,
        )?);
    }

    // Learning.
    println!(
        "== learning (at least {} s, then 30 s without anything new) ==",
        options.learn_seconds
    );
    let learn_start = Instant::now();
    let limit = Duration::from_secs(options.learn_seconds + 600);
    loop {
        let recs = detections.poll();
        let enforcing: Vec<&str> = ROLES
            .iter()
            .copied()
            .filter(|role| {
                recs.iter().any(|r| {
                    r["kind"] == "detector.profile"
                        && agent_of(r) == *role
                        && r["profile"]["stage"] == "enforcing"
                })
            })
            .collect();
        if enforcing.len() == ROLES.len() {
            break;
        }
        if learn_start.elapsed() > limit {
            bail!("baselines did not settle within {limit:?}: enforcing {enforcing:?}");
        }
        thread::sleep(Duration::from_secs(1));
    }
    let learned_in = learn_start.elapsed().as_secs();
    for r in detections
        .poll()
        .iter()
        .filter(|r| r["kind"] == "detector.profile" && r["profile"]["stage"] == "stable")
    {
        println!(
            "  {}: stable after {learned_in} s at most; {} windows, model {}",
            agent_of(r),
            r["profile"]["windows"],
            r["profile"]["model"]
        );
    }

    // Benign.
    println!(
        "== benign activity ({} s, three agents) ==",
        options.benign_seconds
    );
    let benign_from = now_ms();
    thread::sleep(Duration::from_secs(options.benign_seconds));
    let benign_to = now_ms();

    // Attacks.
    println!(
        "== attacks: {} kinds x {} runs ==",
        ATTACKS.len(),
        options.runs
    );
    let socket = daemon.socket();
    let mut outcomes = Vec::new();
    // (agent, from, to): when an agent was under attack (its alerts belong to the attack).
    let mut attacked: Vec<(&str, u64, u64)> = Vec::new();
    let attack_from = now_ms();
    for run in 0..options.runs {
        for (k, (kind, _)) in ATTACKS.iter().enumerate() {
            let agent = &mut agents[(run + k) % ROLES.len()];
            let role = agent.role;
            let sent = now_ms();
            agent.send(kind)?;
            // Detected: an alert for this agent after the command was sent.
            let deadline = Instant::now() + Duration::from_secs(45);
            let mut alert = None;
            let mut done: Option<u64> = None;
            while Instant::now() < deadline {
                if done.is_none()
                    && let Ok(line) = agent.lines.try_recv()
                    && let Some(start) = line.strip_prefix(&format!("done {kind} "))
                {
                    done = start.trim().parse().ok();
                }
                alert = detections
                    .poll()
                    .iter()
                    .find(|r| {
                        r["kind"] == "detector.alert" && agent_of(r) == role && time_of(r) >= sent
                    })
                    .cloned();
                if alert.is_some() {
                    break;
                }
                if done.is_some_and(|_| Instant::now() + Duration::from_secs(30) > deadline) {
                    // The attack finished 15 s ago without an alert: a miss.
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            // Containment follows an alert at once when it does. The attack may still be
            // running (cpu lasts 20 s) and may be contained again after a release, or be frozen
            // before it can say it is done: release, as an operator would, until it is done.
            thread::sleep(Duration::from_secs(3));
            let mut code_ok = true;
            let finish = Instant::now() + Duration::from_secs(90);
            loop {
                code_ok &= release(&root, &socket, role).0;
                if done.is_none()
                    && let Some(line) =
                        agent.expect(&format!("done {kind} "), Duration::from_secs(3))
                {
                    done = line.rsplit(' ').next().and_then(|s| s.parse().ok());
                }
                if done.is_some() || Instant::now() > finish {
                    break;
                }
            }
            // Once more: what the attack's last steps caused.
            thread::sleep(Duration::from_secs(2));
            code_ok &= release(&root, &socket, role).0;
            let start = done.unwrap_or(sent);
            let action = detections.poll().iter().find(|r| {
                r["kind"] == "detector.action"
                    && agent_of(r) == role
                    && time_of(r) >= sent
                    && r["containment"]["done"] == true
            });
            let outcome = Outcome {
                kind,
                detected_ms: alert.as_ref().map(|a| time_of(a).saturating_sub(start)),
                contained_ms: action.map(|a| time_of(a).saturating_sub(start)),
                severity: alert
                    .as_ref()
                    .and_then(|a| a["incident"]["severity"].as_str())
                    .unwrap_or("-")
                    .to_owned(),
            };
            println!(
                "  run {run} {kind:<16} on {role:<9}: detected {} s ({}), contained {} s{}",
                seconds(outcome.detected_ms),
                outcome.severity,
                seconds(outcome.contained_ms),
                if code_ok { "" } else { " (release failed)" }
            );
            outcomes.push(outcome);
            // Alive and answering again, then a pause for its windows to settle.
            agent.send("ping")?;
            if agent.expect("pong", Duration::from_secs(30)).is_none() {
                bail!("agent {role} does not answer after its release");
            }
            thread::sleep(Duration::from_secs(4));
            attacked.push((role, sent, now_ms()));
        }
    }
    let attack_to = now_ms();
    drop(agents);
    let recs = detections.poll().to_vec();
    drop(daemon);

    // False alarms: alerts outside every attack interval of their agent, during the benign
    // and attack phases (when the other agents ran benignly).
    let under_attack = |agent: &str, t: u64| {
        attacked
            .iter()
            .any(|(a, from, to)| *a == agent && t >= *from && t <= *to)
    };
    let false_alarms: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            let t = time_of(r);
            r["kind"] == "detector.alert"
                && r["incident"]["previous_severity"].is_null()
                && ((benign_from..=benign_to).contains(&t)
                    || ((attack_from..=attack_to).contains(&t) && !under_attack(agent_of(r), t)))
        })
        .collect();
    let false_actions = recs
        .iter()
        .filter(|r| {
            let t = time_of(r);
            r["kind"] == "detector.action"
                && r["containment"]["done"] == true
                && ((benign_from..=benign_to).contains(&t)
                    || ((attack_from..=attack_to).contains(&t) && !under_attack(agent_of(r), t)))
        })
        .count();
    let attacked_ms: u64 = attacked.iter().map(|(_, from, to)| to - from).sum();
    let benign_ms = (benign_to - benign_from) * ROLES.len() as u64
        + ((attack_to - attack_from) * ROLES.len() as u64).saturating_sub(attacked_ms);
    let agent_hours = benign_ms as f64 / 3_600_000.0;
    let windows = benign_ms / (WINDOW_SECONDS * 1000);

    println!(
        "\n| attack | runs | detected | rate | median TTD s | worst TTD s | contained | median TTC s | worst TTC s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    let mut by_kind: BTreeMap<usize, Vec<&Outcome>> = BTreeMap::new();
    for o in &outcomes {
        let index = ATTACKS.iter().position(|(k, _)| *k == o.kind).unwrap_or(0);
        by_kind.entry(index).or_default().push(o);
    }
    for (index, runs) in &by_kind {
        let (_, name) = ATTACKS[*index];
        let ttd: Vec<u64> = runs.iter().filter_map(|o| o.detected_ms).collect();
        let ttc: Vec<u64> = runs.iter().filter_map(|o| o.contained_ms).collect();
        let worst_d = ttd.iter().max().copied();
        let worst_c = ttc.iter().max().copied();
        let rate = ttd.len() as f64 / runs.len() as f64 * 100.0;
        println!(
            "| {name} | {} | {} | {rate:.0}% | {} | {} | {} | {} | {} |",
            runs.len(),
            ttd.len(),
            seconds(median(ttd.clone())),
            seconds(worst_d),
            ttc.len(),
            seconds(median(ttc.clone())),
            seconds(worst_c),
        );
        json_rows.push(serde_json::json!({
            "attack": name, "runs": runs.len(), "detected": ttd.len(),
            "median_ttd_ms": median(ttd.clone()), "worst_ttd_ms": worst_d,
            "contained": ttc.len(), "median_ttc_ms": median(ttc.clone()), "worst_ttc_ms": worst_c,
        }));
    }
    let all_ttd: Vec<u64> = outcomes.iter().filter_map(|o| o.detected_ms).collect();
    println!(
        "\nall attacks: {} of {} detected, median time to detect {} s",
        all_ttd.len(),
        outcomes.len(),
        seconds(median(all_ttd.clone()))
    );
    println!(
        "benign: {:.2} agent-hours of wall-clock activity ({windows} windows of {WINDOW_SECONDS} s): \
         {} false alarms ({:.2} per agent-hour, {:.2} per 1000 windows), {false_actions} false containment actions",
        agent_hours,
        false_alarms.len(),
        false_alarms.len() as f64 / agent_hours.max(1e-9),
        false_alarms.len() as f64 * 1000.0 / windows.max(1) as f64
    );
    for fa in &false_alarms {
        println!(
            "  false alarm on {}: {}",
            agent_of(fa),
            fa["finding_info"]["title"]
        );
    }
    let out = serde_json::json!({
        "window_seconds": WINDOW_SECONDS,
        "learned_in_seconds": learned_in,
        "attacks": json_rows,
        "benign": {
            "agent_hours": agent_hours,
            "windows": windows,
            "false_alarms": false_alarms.len(),
            "false_actions": false_actions,
            "titles": false_alarms.iter().map(|f| f["finding_info"]["title"].clone()).collect::<Vec<_>>(),
        },
    });
    fs::write(
        work.join("results.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    println!("results: {}", work.join("results.json").display());
    for role in ROLES {
        let cgroup = cgroups.join(format!("{role}.scope"));
        let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        let _ = fs::remove_dir(&cgroup);
    }
    Ok(())
}

/// Releases `agent` through the API, as an operator.
fn release(root: &Path, socket: &Path, agent: &str) -> (bool, String) {
    let out = Command::new(root.join("target/release/agentctl"))
        .arg("--socket")
        .arg(socket)
        .args(["release", agent, "--reason", "eval: attack run over"])
        .output();
    match out {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(err) => (false, err.to_string()),
    }
}
