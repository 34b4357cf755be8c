//! The detector end to end: a scripted coding agent (tests/agents/coder.py) learns its baseline
//! on the real daemon, runs benignly without a single alert, then steals a credential and tries
//! to send it out. The theft is contained in the kernel (egress quarantined) within seconds, the
//! alert names the log records that caused it and reaches a webhook signed with the host's key,
//! a second step freezes the agent, and an operator's release restores it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use custos_tests::{
    Agentd, Cgroup, Dirs, Running, Value, agentctl, dump,
    net::{NS_V4, Netns},
    unique,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The webhook receiver (tests/python/webhook_receiver.py), stopped when dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Receiver {
    fn start(port: u16, key: &Path, out: PathBuf) -> Self {
        let mut child = Command::new("python3")
            .arg(repo().join("python/webhook_receiver.py"))
            .arg(port.to_string())
            .arg(key)
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 webhook receiver");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("receiver ready");
        assert_eq!(line.trim(), "ready");
        Self { child, out }
    }

    fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project directory and a home with an SSH key, for the coding agent.
fn workspace(dir: &Path) -> (PathBuf, PathBuf) {
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("src")).expect("mkdir");
    std::fs::create_dir_all(project.join("target")).expect("mkdir");
    std::fs::write(project.join("src/main.rs"), "fn main() {}\n").expect("write");
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).expect("mkdir");
    std::fs::write(
        home.join(".ssh/id_rsa"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    )
    .expect("write");
    (project, home)
}

fn time_ns(record: &Value) -> u64 {
    record["time_ns"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("time_ns")
}

/// Waits (up to `limit`) for a condition on the agent's cgroup.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn frozen(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l == "frozen 1")
}

#[test]
fn learns_stays_quiet_then_contains_a_credential_theft() {
    let _netns = Netns::create();
    let dirs = Dirs::new();
    let id = unique("detector");
    let cgroup = Cgroup::create(&format!("{id}/coder"));
    let (project, home) = workspace(dirs.path());
    let hook_port = free_port();
    let config = format!(
        r#"
[detector]
window_seconds = 1
min_learning_seconds = 25
quiet_seconds = 5
min_windows = 24

[detector.webhook]
url = "http://127.0.0.1:{hook_port}/custos/alerts"
attempts = 3

[[agent]]
name = "coder"
trust_tier = "low"
detection = "enforce"
selectors = [{{ cgroup = "{id}/coder" }}]
"#
    );
    // The key exists once agentd has started once; the receiver pins it. Start agentd, read
    // the key, then start the receiver before anything can alert.
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let receiver = Receiver::start(
        hook_port,
        &dirs.public_key(),
        dirs.path().join("webhook.jsonl"),
    );
    agentd.wait_for("a learning profile", |r| {
        r["kind"] == "detector.profile" && r["profile"]["stage"] == "learning"
    });

    let api = format!("{}:443", NS_V4[0]);
    let exfil = format!("{}:8443", NS_V4[1]);
    let mut cmd = cgroup.command("python3");
    cmd.arg(repo().join("agents/coder.py"))
        .arg(&project)
        .arg(&api)
        .arg(&exfil)
        .arg("0.1")
        .env("HOME", &home);
    let mut coder = Running::spawn(cmd);
    assert_eq!(coder.line(), "started");

    // Learning, then stable, then enforcing (configured, no shadow period).
    let stable = agentd.wait_for("the baseline to become stable", |r| {
        r["kind"] == "detector.profile" && r["profile"]["stage"] == "stable"
    });
    assert!(
        stable["profile"]["model"]["components"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "a window model was fitted: {stable}"
    );
    let enforcing = agentd.wait_for("enforcement", |r| {
        r["kind"] == "detector.profile" && r["profile"]["stage"] == "enforcing"
    });

    // A benign run of the same agent raises nothing.
    std::thread::sleep(Duration::from_secs(10));
    coder.send("probe");
    assert_eq!(coder.line(), "probe ok");
    let quiet: Vec<Value> = agentd
        .records()
        .into_iter()
        .filter(|r| {
            r["kind"]
                .as_str()
                .is_some_and(|k| k == "detector.alert" || k == "detector.action")
        })
        .collect();
    assert!(
        quiet.is_empty(),
        "benign activity raised alerts: {}",
        dump(&quiet)
    );
    assert!(time_ns(&enforcing) > 0);

    // The theft: read the SSH key, a second later send it out.
    coder.send("steal");
    let exfil_result = coder.line();
    assert_eq!(
        exfil_result, "exfil EPERM",
        "the exfiltration is cut in the kernel"
    );
    let read = agentd.wait_for("the credential read", |r| {
        r["kind"] == "file.open"
            && r["file"]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/.ssh/id_rsa"))
    });
    let alert = agentd.wait_for("a high alert", |r| {
        r["kind"] == "detector.alert" && r["incident"]["severity"] == "high"
    });
    let action = agentd.wait_for("the quarantine", |r| {
        r["kind"] == "detector.action" && r["containment"]["action"] == "quarantine"
    });
    assert_eq!(action["containment"]["done"], true, "{action}");
    assert_eq!(action["containment"]["mode"], "act");
    let took = time_ns(&action).saturating_sub(time_ns(&read));
    assert!(
        took < 5_000_000_000,
        "contained {} ms after the read",
        took / 1_000_000
    );
    eprintln!(
        "contained {} ms after the credential read",
        took / 1_000_000
    );
    // The alert cites the read by its sequence number, and says what it found.
    let evidence: Vec<u64> = alert["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(
        evidence.contains(&read["seq"].as_u64().expect("seq")),
        "evidence {evidence:?} names the read {}",
        read["seq"]
    );
    assert!(
        alert["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["signal"] == "new_sensitive" && f["item"] == "read:/.ssh/"),
        "{alert}"
    );
    // The refused exfiltration is itself on record, denied by the quarantine.
    agentd.wait_for("the refused exfiltration", |r| {
        r["kind"] == "net.connect"
            && r["dst_endpoint"]["port"] == 8443
            && r["egress"]["rule"]["text"] == "egress quarantined"
    });

    // The agent keeps going (reads /etc/shadow): the next step, freeze (the low tier's limit).
    // (Its answer may be frozen in it: it is read after the release.)
    coder.send("shadow");
    let freeze = agentd.wait_for("the freeze", |r| {
        r["kind"] == "detector.action" && r["containment"]["action"] == "freeze"
    });
    assert_eq!(freeze["containment"]["done"], true, "{freeze}");
    let cgroup_dir = custos_tests::cgroup_root().join(&cgroup.rel);
    wait_until("the cgroup to freeze", Duration::from_secs(5), || {
        frozen(&cgroup_dir)
    });

    // Only an operator's release (with a reason) ends it: thawed, egress back.
    let socket = dirs.socket();
    let (code, out) = agentctl(&[
        "--socket",
        socket.to_str().expect("utf-8"),
        "release",
        "coder",
        "--reason",
        "key rotated, agent reviewed",
    ]);
    assert_eq!(code, 0, "release: {out}");
    wait_until("the cgroup to thaw", Duration::from_secs(5), || {
        !frozen(&cgroup_dir)
    });
    assert_eq!(coder.line(), "shadow done");
    coder.send("probe");
    assert_eq!(coder.line(), "probe ok", "egress restored");
    let closed = agentd.wait_for("the incident closed", |r| {
        r["kind"] == "detector.closed" && r["incident"]["reason"] == "released by an operator"
    });
    assert_eq!(closed["incident"]["id"], alert["incident"]["id"]);
    let release = agentd.wait_for("the release record", |r| r["kind"] == "containment.release");
    assert_eq!(release["reason"], "key rotated, agent reviewed");
    assert_eq!(release["containment"]["cgroups_thawed"], 1, "{release}");

    // The webhook got the alerts, each signed with the host's key.
    wait_until("webhook deliveries", Duration::from_secs(10), || {
        receiver
            .deliveries()
            .iter()
            .any(|d| d["body"]["incident"]["severity"] == "high")
    });
    for delivery in receiver.deliveries() {
        assert_eq!(delivery["verified"], true, "{delivery}");
        assert_eq!(delivery["key_matches"], true, "{delivery}");
        assert_eq!(delivery["body"]["kind"], "detector.alert");
    }
    let high = receiver
        .deliveries()
        .into_iter()
        .find(|d| d["body"]["incident"]["severity"] == "high")
        .expect("high alert delivered");
    assert_eq!(
        high["body"]["seq"], alert["seq"],
        "the delivered alert is the logged one"
    );

    // The API streams them: `agentctl alerts` is a filtered, resumable stream of the log.
    let (code, out) = agentctl(&[
        "--socket",
        socket.to_str().expect("utf-8"),
        "alerts",
        "--from",
        "0",
        "--count",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "alerts: {out}");
    let streamed: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("record").cloned())
        .collect();
    assert_eq!(streamed.len(), 3, "{out}");
    assert!(
        streamed.iter().all(|r| r["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("detector."))),
        "{out}"
    );
    assert_eq!(streamed[0]["seq"], alert["seq"], "{out}");

    drop(coder);
    let records = agentd.stop();
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "detector.webhook_failed"),
        "{}",
        dump(&records)
    );
    // Baselines were saved, mode 0600.
    let saved = dirs.state().join("detector/baselines.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&saved)
            .expect("baselines saved")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// Baselines survive a restart: the profile comes back enforcing, with no new learning; a
/// changed agent (here, its scopes) starts a new profile.
#[test]
fn baselines_persist_and_a_new_version_learns_again() {
    let dirs = Dirs::new();
    let id = unique("detector-persist");
    let _cgroup = Cgroup::create(&format!("{id}/coder"));
    let agent = |scopes: &str| {
        format!(
            r#"
[detector]
window_seconds = 1
min_learning_seconds = 2
quiet_seconds = 1
min_windows = 0

[[agent]]
name = "coder"
scopes = [{scopes}]
detection = "enforce"
selectors = [{{ cgroup = "{id}/coder" }}]
"#
        )
    };
    let mut agentd = Agentd::start_in(&dirs, &agent(r#""code:write""#), &[]);
    let enforcing = agentd.wait_for("enforcing", |r| {
        r["kind"] == "detector.profile" && r["profile"]["stage"] == "enforcing"
    });
    let fingerprint = enforcing["profile"]["fingerprint"].clone();
    let _ = agentd.stop();

    // Same configuration: nothing to relearn, no profile record at all.
    let agentd = Agentd::start_in(&dirs, &agent(r#""code:write""#), &[]);
    std::thread::sleep(Duration::from_secs(2));
    let records = agentd.stop();
    assert!(
        !records.iter().any(|r| r["kind"] == "detector.profile"),
        "{}",
        dump(&records)
    );

    // A changed agent: a new profile, learning, naming the old fingerprint.
    let mut agentd = Agentd::start_in(&dirs, &agent(r#""code:write", "deploy:prod""#), &[]);
    let learning = agentd.wait_for("a new profile", |r| {
        r["kind"] == "detector.profile" && r["profile"]["stage"] == "learning"
    });
    assert_ne!(learning["profile"]["fingerprint"], fingerprint);
    assert_eq!(learning["profile"]["from"], "enforcing");
    assert!(
        learning["profile"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("new version")),
        "{learning}"
    );
    let _ = agentd.stop();

    // A corrupted file is refused with a record, kept aside, and learning starts over.
    let saved = dirs.state().join("detector/baselines.json");
    std::fs::write(&saved, b"{ not json").expect("corrupt");
    let mut agentd = Agentd::start_in(&dirs, &agent(r#""code:write""#), &[]);
    let refused = agentd.wait_for("the refusal", |r| r["kind"] == "detector.baselines_refused");
    assert!(refused["detail"]["moved_to"].is_string(), "{refused}");

    // An operator accepts new behaviour by sending the baseline back to learning.
    agentd.wait_for("enforcing again", |r| {
        r["kind"] == "detector.profile"
            && r["profile"]["stage"] == "enforcing"
            && r["seq"].as_u64() > refused["seq"].as_u64()
    });
    let socket = dirs.socket();
    let (code, out) = agentctl(&[
        "--socket",
        socket.to_str().expect("utf-8"),
        "relearn",
        "coder",
        "--reason",
        "new tool approved in CHG-12",
    ]);
    assert_eq!(code, 0, "relearn: {out}");
    let asked = agentd.wait_for("the request", |r| r["kind"] == "detector.relearn");
    assert_eq!(asked["reason"], "new tool approved in CHG-12");
    assert_eq!(asked["actor"]["user"]["name"], "uid:0(root)");
    let relearning = agentd.wait_for("learning again", |r| {
        r["kind"] == "detector.profile"
            && r["profile"]["stage"] == "learning"
            && r["profile"]["from"] == "enforcing"
    });
    assert_eq!(
        relearning["profile"]["reason"],
        "relearning on an operator's request"
    );
    let _ = agentd.stop();
}
