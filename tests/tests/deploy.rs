//! Deployment files against the real tools.
//!
//! - `deploy/systemd/agentd.service` passes `systemd-analyze verify` without one diagnostic,
//!   and the same check fails on a broken copy (so it can fail).
//! - The real agentd does its job inside the unit's privileges: started through `setpriv` with
//!   exactly the unit's capability bounding set and no-new-privileges, it binds an
//!   agent, enforces its allowlist in the kernel, serves the API (a quarantine and a release) and
//!   keeps its key private. Without any one of CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN it
//!   refuses to start, with a reason, so the bounding set really binds and holds nothing spare
//!   for starting.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use custos_tests::{
    Agentd, Cgroup, Dirs, Running, agentctl, agentd_path, net::Servers, unique, with_private_paths,
    workload_path,
};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/agentd.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read the unit")
}

/// `systemd-analyze verify` of `unit` (with `ExecStart=` pointing at the agentd under test,
/// because verify checks that the program exists): everything it printed.
fn verify(unit: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agentd.service");
    let unit = unit.replace(
        "/usr/local/bin/agentd",
        agentd_path().to_str().expect("utf-8"),
    );
    std::fs::write(&path, unit).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze (package systemd)");
    let mut printed = String::from_utf8_lossy(&out.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        printed.push_str(&format!("\nexit status {}", out.status));
    }
    printed.trim().to_owned()
}

#[test]
fn systemd_unit_verifies_without_a_diagnostic() {
    let unit = unit_text();
    let printed = verify(&unit);
    assert!(printed.is_empty(), "systemd-analyze verify:\n{printed}");

    // systemd only warns (and exits 0) on a bad line, which is why any output fails the check:
    // each of these broken copies must be caught. (It ignores unknown capability names
    // silently; `setpriv` in the tests below refuses them.)
    for (what, from, to) in [
        (
            "a misspelt key",
            "CapabilityBoundingSet=",
            "CapabilityBoundingSett=",
        ),
        (
            "a bad value",
            "ProtectSystem=strict",
            "ProtectSystem=stricter",
        ),
        ("an unknown system call group", "@clock ", "@clocks "),
        ("an unknown address family", "AF_NETLINK", "AF_NETLNK"),
        (
            "a relative ExecStart",
            "ExecStart=/usr/local/bin/agentd",
            "ExecStart=agentd",
        ),
    ] {
        assert!(unit.contains(from), "{what}: the unit has no {from:?}");
        let printed = verify(&unit.replacen(from, to, 1));
        assert!(!printed.is_empty(), "{what} went unnoticed");
    }
}

/// The value of the unit's `key=` line.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .trim()
        .to_owned()
}

/// `setpriv` arguments giving a process the unit's privileges, minus `without`.
fn unit_privileges(without: &[&str]) -> Vec<String> {
    let unit = unit_text();
    let caps: Vec<String> = unit_value(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .filter(|c| !without.contains(c))
        .map(|c| {
            format!(
                "+{}",
                c.strip_prefix("CAP_").expect("CAP_ names").to_lowercase()
            )
        })
        .collect();
    assert!(caps.len() >= 5, "the bounding set looks wrong: {caps:?}");
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    vec![
        "setpriv".to_owned(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--inh-caps=-all".to_owned(),
        "--no-new-privs".to_owned(),
    ]
}

/// The capability mask (as in `/proc/PID/status`) of the unit's bounding set.
fn unit_capability_mask() -> u64 {
    // include/uapi/linux/capability.h
    let number = |name: &str| match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_FOWNER" => 3,
        "CAP_KILL" => 5,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to the test's table"),
    };
    unit_value(&unit_text(), "CapabilityBoundingSet")
        .split_whitespace()
        .fold(0, |mask, cap| mask | 1u64 << number(cap))
}

/// A field of `/proc/PID/status`.
fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field}"))
        .trim()
        .to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The workload's `tcp:ADDR` outcomes, in order.
fn connect(cgroup: &Cgroup, ports: &[u16]) -> (u32, Vec<String>) {
    let mut cmd = cgroup.command(workload_path());
    cmd.args(ports.iter().map(|p| format!("tcp:127.0.0.1:{p}")));
    let mut running = Running::spawn(cmd);
    let pid = running.child.id();
    let mut lines = Vec::new();
    loop {
        let line = running.line();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    running.wait();
    (pid, lines)
}

#[test]
fn agentd_works_within_the_units_privileges() {
    let (allowed, other) = (free_port(), free_port());
    let addrs = [allowed, other].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let _servers = Servers::start(&addrs, &[]);
    let id = unique("deploy");
    let cgroup = Cgroup::create(&format!("{id}/svc"));
    let config = format!(
        r#"
[[agent]]
name = "svc"
selectors = [{{ cgroup = "{id}/svc" }}]
[agent.egress]
mode = "enforce"
allow = [{{ cidr = "127.0.0.1", ports = "{allowed}", protocol = "tcp" }}]
"#
    );
    let dirs = Dirs::new();
    let mut agentd = Agentd::start_via(&dirs, &config, &unit_privileges(&[]), &[]);
    // Exactly the unit's capabilities, and no way to gain more.
    let mask = format!("{:016x}", unit_capability_mask());
    assert_eq!(status_field(agentd.pid(), "CapBnd"), mask);
    assert_eq!(status_field(agentd.pid(), "CapEff"), mask);
    assert_eq!(status_field(agentd.pid(), "NoNewPrivs"), "1");

    // Identity and enforcement, in the kernel.
    let (pid, outcomes) = connect(&cgroup, &[allowed, other]);
    assert!(outcomes[0].contains(" ok"), "{outcomes:?}");
    assert!(outcomes[1].contains("err EPERM"), "{outcomes:?}");
    let exec = agentd.wait_for("the workload's exec", |r| {
        r["kind"] == "process.exec" && r["process"]["pid"] == pid
    });
    assert_eq!(exec["agent"]["name"], "svc");
    let denied = agentd.wait_for("the denial", |r| {
        r["kind"] == "net.connect"
            && r["actor"]["process"]["pid"] == pid
            && r["dst_endpoint"]["port"] == other
    });
    assert_eq!(denied["egress"]["verdict"], "deny", "{denied}");

    // The API: an operator quarantines the agent and releases it (the kernel flag is set and
    // cleared; what a quarantine refuses is the egress suite's subject).
    let socket = dirs.socket();
    let socket = socket.to_str().expect("utf-8");
    let (code, out) = agentctl(&[
        "--socket",
        socket,
        "quarantine",
        "svc",
        "--reason",
        "deploy test",
    ]);
    assert_eq!(code, 0, "quarantine: {out}");
    agentd.wait_for("the quarantine", |r| {
        r["kind"] == "containment.quarantine" && r["reason"] == "deploy test"
    });
    let (code, out) = agentctl(&["--socket", socket, "release", "svc", "--reason", "done"]);
    assert_eq!(code, 0, "release: {out}");
    agentd.wait_for("the release", |r| {
        r["kind"] == "containment.release" && r["reason"] == "done"
    });

    // The key stays private.
    let mode = std::fs::metadata(dirs.key())
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    agentd.stop();
}

#[test]
fn without_each_start_capability_agentd_refuses_and_says_why() {
    let dirs = Dirs::new();
    let config = dirs.path().join("agentd.toml");
    std::fs::write(&config, with_private_paths(&dirs, "")).expect("config");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        let privileges = unit_privileges(&[cap]);
        let out = Command::new(&privileges[0])
            .args(&privileges[1..])
            .arg(agentd_path())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .expect("run agentd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "agentd started without {cap}:\n{stderr}"
        );
        assert!(
            stderr.contains("error:") && stderr.contains("hint: agentd needs root with CAP_BPF"),
            "without {cap}, no reason given:\n{stderr}"
        );
    }
}

/// Under `Type=notify`, systemd waits for READY=1: agentd sends it once it is ready (its start
/// record written, the API serving), and STOPPING=1 when told to stop.
#[test]
fn agentd_tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    assert_eq!(unit_value(&unit_text(), "Type"), "notify");
    let dirs = Dirs::new();
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let socket_path = notify_dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    let config = dirs.path().join("agentd.toml");
    std::fs::write(&config, with_private_paths(&dirs, "")).expect("config");
    let mut child = Command::new(agentd_path())
        .arg("--config")
        .arg(&config)
        .arg("--events")
        .arg(dirs.events())
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agentd");
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within a minute");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the start record is already in the export.
    let events = std::fs::read_to_string(dirs.events()).expect("events");
    assert!(
        events.contains("\"kind\":\"agentd.start\""),
        "not ready yet"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().expect("wait").success());
}
