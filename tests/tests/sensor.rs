//! The sensor end to end: real agentd, real processes in real cgroups, real sockets. Each test
//! asserts the exact records of the processes it started, with their identity and selector.

use std::{
    net::{TcpListener, UdpSocket},
    os::unix::fs::MetadataExt,
    path::Path,
};

use custos_tests::{
    Agentd, Cgroup, Running, Value, by_pid, dump, proc_start_ns, the, unique, workload_path,
};

/// Asserts that every record in `records` carries agent `name` bound by a selector of `kind`
/// with `value`.
fn assert_agent(records: &[&Value], spiffe: &str, kind: &str, value: &str, binding: &str) {
    assert!(!records.is_empty(), "no records");
    for record in records {
        let agent = &record["agent"];
        assert_eq!(agent["uid"], spiffe, "agent of {record}");
        assert_eq!(agent["selector"]["type"], kind, "selector of {record}");
        assert_eq!(agent["selector"]["value"], value, "selector of {record}");
        assert_eq!(agent["binding"], binding, "binding of {record}");
    }
}

fn kind<'a>(records: &[&'a Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .copied()
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// A closed local port: bound then released, so a connect to it is refused.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn systemd_unit_every_event_kind() {
    let unit = unique("custos-e2e");
    let cgroup = Cgroup::create(&format!("system.slice/{unit}.service"));
    let mut agentd = Agentd::start(
        r#"
[identity]
trust_domain = "e2e.test"

[[agent]]
name = "svc"
owner = "e2e@example.org"
scopes = ["files:rw", "net:out"]
trust_tier = "medium"
selectors = [{ cgroup = "system.slice/custos-e2e-*.service" }]
"#,
    );
    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6 = TcpListener::bind("[::1]:0").unwrap();
    let udp4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp6 = UdpSocket::bind("[::1]:0").unwrap();
    let (p4, p6) = (
        tcp4.local_addr().unwrap().port(),
        tcp6.local_addr().unwrap().port(),
    );
    let (u4, u6) = (
        udp4.local_addr().unwrap().port(),
        udp6.local_addr().unwrap().port(),
    );
    let refused = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let workload = workload_path();
    let actions = vec![
        "pid".to_owned(),
        "wait-line".to_owned(),
        "open:/etc/hostname".to_owned(),
        format!("openat:{}", p("missing")),
        "openat2:/etc/hostname".to_owned(),
        format!("creat:{}", p("a")),
        format!("rename:{}:{}", p("a"), p("b")),
        format!("renameat:{}:{}", p("b"), p("c")),
        format!("renameat2:{}:{}", p("c"), p("d")),
        format!("unlink:{}", p("d")),
        format!("creat:{}", p("e")),
        format!("unlinkat:{}", p("e")),
        format!("connect:127.0.0.1:{p4}"),
        format!("connect:[::1]:{p6}"),
        format!("connect:127.0.0.1:{refused}"),
        format!("udp-connect:127.0.0.1:{u4}"),
        format!("sendto:127.0.0.1:{u4}"),
        format!("sendto:[::1]:{u6}"),
        "listen-accept".to_owned(),
        "spawn:1:/bin/true".to_owned(),
        "exit:3".to_owned(),
    ];
    let mut cmd = cgroup.command(&workload);
    cmd.args(&actions);
    let mut running = Running::spawn(cmd);
    let pid: u32 = running.line().parse().unwrap();
    // While the workload waits, check the exec record against what /proc says of it.
    let exec = agentd.wait_for("the workload's exec", |r| {
        r["kind"] == "process.exec" && r["process"]["pid"] == pid
    });
    let start_ns: u64 = exec["process"]["start_ns"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        start_ns.abs_diff(proc_start_ns(pid)) <= 10_000_000,
        "start time {start_ns} vs /proc"
    );
    running.go();
    let listening = running.line();
    let accepted = running.line();
    assert_eq!(running.wait(), 3);
    agentd.wait_for("the workload's exit", |r| {
        r["kind"] == "process.exit" && r["process"]["pid"] == pid
    });
    let records = agentd.stop();
    let mine = by_pid(&records, pid);
    assert_agent(
        &mine,
        "spiffe://e2e.test/agent/svc",
        "cgroup",
        "system.slice/custos-e2e-*.service",
        "direct",
    );

    // process.exec: the image, its arguments, parent, cgroup and inode.
    assert_eq!(exec["agent"]["uid"], "spiffe://e2e.test/agent/svc");
    assert_eq!(exec["agent"]["owner"], "e2e@example.org");
    assert_eq!(exec["agent"]["trust_tier"], "medium");
    assert_eq!(
        exec["agent"]["scopes"],
        serde_json::json!(["files:rw", "net:out"])
    );
    assert_eq!(exec["agent"]["selector"]["type"], "cgroup");
    assert_eq!(exec["agent"]["binding"], "direct");
    assert_eq!(
        exec["process"]["file"]["path"],
        workload.display().to_string()
    );
    assert_eq!(
        exec["process"]["file"]["inode"]["ino"],
        std::fs::metadata(&workload).unwrap().ino().to_string()
    );
    assert_eq!(exec["process"]["parent_process"]["pid"], std::process::id());
    assert_eq!(exec["process"]["cgroup_id"], cgroup.id());
    // The arguments, cut at 512 bytes (these are longer) and flagged as cut.
    let argv: Vec<&str> = exec["process"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let full = std::iter::once(workload.display().to_string())
        .chain(actions.iter().cloned())
        .collect::<Vec<_>>()
        .join("\0");
    assert!(full.len() > 512);
    assert_eq!(argv.join("\0"), full[..argv.join("\0").len()]);
    assert!(argv.join("\0").len() >= 500, "{argv:?}");
    assert_eq!(exec["process"]["truncated"], serde_json::json!(["argv"]));

    // file.*: each call with its flags and result.
    let opens = kind(&mine, "file.open");
    let open = the(&opens, "open(/etc/hostname)", |r| {
        r["syscall"] == "open" && r["file"]["path"] == "/etc/hostname"
    });
    assert_eq!(open["status"], "Success");
    assert_eq!(open["open_flags"], serde_json::json!(["O_RDONLY"]));
    let missing = the(&opens, "openat(missing)", |r| {
        r["file"]["path"] == p("missing")
    });
    assert_eq!(
        (missing["syscall"].as_str(), missing["status_code"].as_str()),
        (Some("openat"), Some("ENOENT"))
    );
    the(&opens, "openat2", |r| {
        r["syscall"] == "openat2"
            && r["file"]["path"] == "/etc/hostname"
            && r["status"] == "Success"
    });
    let creat = the(&opens, "creat(a)", |r| {
        r["syscall"] == "creat" && r["file"]["path"] == p("a")
    });
    assert_eq!(
        creat["open_flags"],
        serde_json::json!(["O_WRONLY", "O_CREAT", "O_TRUNC"])
    );
    assert_eq!(creat["mode"], "0640");
    let renames = kind(&mine, "file.rename");
    for (call, from, to) in [
        ("rename", "a", "b"),
        ("renameat", "b", "c"),
        ("renameat2", "c", "d"),
    ] {
        let rename = the(&renames, call, |r| r["syscall"] == call);
        assert_eq!(
            (&rename["file"]["path"], &rename["file_result"]["path"]),
            (&p(from).into(), &p(to).into())
        );
        assert_eq!(rename["status"], "Success", "{rename}");
    }
    let unlinks = kind(&mine, "file.unlink");
    the(&unlinks, "unlink(d)", |r| {
        r["syscall"] == "unlink" && r["file"]["path"] == p("d") && r["status"] == "Success"
    });
    the(&unlinks, "unlinkat(e)", |r| {
        r["syscall"] == "unlinkat" && r["file"]["path"] == p("e") && r["status"] == "Success"
    });

    // net.*: TCP and UDP, IPv4 and IPv6, with results.
    let connects = kind(&mine, "net.connect");
    let to = |r: &Value, ip: &str, port: u16| {
        r["dst_endpoint"]["ip"] == ip && r["dst_endpoint"]["port"] == port
    };
    let c4 = the(&connects, "tcp connect v4", |r| to(r, "127.0.0.1", p4));
    assert_eq!(
        (
            c4["connection_info"]["protocol_name"].as_str(),
            c4["status"].as_str()
        ),
        (Some("tcp"), Some("Success"))
    );
    let c6 = the(&connects, "tcp connect v6", |r| to(r, "::1", p6));
    assert_eq!(c6["connection_info"]["protocol_ver"], "IPv6");
    let refused_record = the(&connects, "refused connect", |r| {
        to(r, "127.0.0.1", refused)
    });
    assert_eq!(
        (
            refused_record["status_code"].as_str(),
            refused_record["activity_name"].as_str()
        ),
        (Some("ECONNREFUSED"), Some("Refuse"))
    );
    let udp = the(&connects, "udp connect", |r| to(r, "127.0.0.1", u4));
    assert_eq!(udp["connection_info"]["protocol_name"], "udp");
    let sends = kind(&mine, "net.udp_send");
    the(&sends, "sendto v4", |r| {
        to(r, "127.0.0.1", u4) && r["connection_info"]["protocol_name"] == "udp"
    });
    the(&sends, "sendto v6", |r| to(r, "::1", u6));
    let listen_port: u16 = listening.rsplit(':').next().unwrap().parse().unwrap();
    let peer_port: u16 = accepted.rsplit(':').next().unwrap().parse().unwrap();
    let listen = the(&kind(&mine, "net.listen"), "listen", |_| true);
    assert_eq!(
        listen["src_endpoint"],
        serde_json::json!({ "ip": "127.0.0.1", "port": listen_port })
    );
    let accept = the(&kind(&mine, "net.accept"), "accept", |_| true);
    assert_eq!(
        accept["src_endpoint"],
        serde_json::json!({ "ip": "127.0.0.1", "port": listen_port })
    );
    assert_eq!(
        accept["dst_endpoint"],
        serde_json::json!({ "ip": "127.0.0.1", "port": peer_port })
    );
    assert_eq!(accept["connection_info"]["direction"], "Inbound");
    // The client side of that connection, from the workload's own thread.
    the(&connects, "self connect", |r| {
        to(r, "127.0.0.1", listen_port)
    });

    // process.fork and the child's exec and exit.
    let fork = the(&kind(&mine, "process.fork"), "fork", |_| true);
    let child = fork["process"]["pid"].as_u64().unwrap() as u32;
    let child_records = by_pid(&records, child);
    assert_agent(
        &child_records,
        "spiffe://e2e.test/agent/svc",
        "cgroup",
        "system.slice/custos-e2e-*.service",
        "direct",
    );
    let child_exec = the(&kind(&child_records, "process.exec"), "child exec", |_| {
        true
    });
    assert_eq!(child_exec["process"]["parent_process"]["pid"], pid);
    assert_eq!(child_exec["process"]["file"]["path"], "/bin/true");
    the(&kind(&child_records, "process.exit"), "child exit", |r| {
        r["exit_code"] == 0
    });

    // process.exit with the exit code.
    let exit = the(&kind(&mine, "process.exit"), "exit", |_| true);
    assert_eq!(exit["exit_code"], 3, "{}", dump(&records));
}

#[test]
fn kubernetes_pod_cgroups_before_and_after_start() {
    let pod = unique("pod");
    let before = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{pod}a.slice/cri-containerd-{}.scope",
        "a".repeat(64)
    ));
    let mut agentd = Agentd::start(
        r#"
[[agent]]
name = "pod-agent"
owner = "k8s@example.org"
selectors = [{ cgroup = "kubepods.slice/**/cri-containerd-*.scope" }]
"#,
    );
    // A container created while agentd runs: its cgroup is new when its first process execs.
    let after = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{pod}b.slice/cri-containerd-{}.scope",
        "b".repeat(64)
    ));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut pids = Vec::new();
    for cgroup in [&before, &after] {
        let mut cmd = cgroup.command(workload_path());
        cmd.args([
            "pid",
            "open:/etc/hostname",
            &format!("connect:127.0.0.1:{port}"),
            "exit:0",
        ]);
        let mut running = Running::spawn(cmd);
        pids.push(running.line().parse::<u32>().unwrap());
        assert_eq!(running.wait(), 0);
    }
    for pid in &pids {
        agentd.wait_for("exit", |r| {
            r["kind"] == "process.exit" && r["process"]["pid"] == *pid
        });
    }
    let records = agentd.stop();
    the(
        &records.iter().collect::<Vec<_>>(),
        "bind of the new cgroup",
        |r| r["kind"] == "identity.bind" && r["binding"]["cgroup_id"] == after.id(),
    );
    for (pid, cgroup) in pids.iter().zip([&before, &after]) {
        let mine = by_pid(&records, *pid);
        assert_agent(
            &mine,
            "spiffe://custos.local/agent/pod-agent",
            "cgroup",
            "kubepods.slice/**/cri-containerd-*.scope",
            "direct",
        );
        for record in &mine {
            assert_eq!(record["actor"]["process"]["cgroup_id"], cgroup.id());
        }
        for expected in ["process.exec", "file.open", "net.connect", "process.exit"] {
            assert!(
                !kind(&mine, expected).is_empty(),
                "no {expected} for {pid} in {}",
                cgroup.rel
            );
        }
        the(&kind(&mine, "net.connect"), "connect", |r| {
            r["dst_endpoint"]["port"] == port
        });
        the(&kind(&mine, "file.open"), "open", |r| {
            r["file"]["path"] == "/etc/hostname"
        });
    }
}

/// A copy of the workload binary at a path of its own, with its sha256.
fn agent_binary(dir: &Path) -> (std::path::PathBuf, String) {
    use sha2::Digest as _;
    let path = dir.join("agent-tool");
    std::fs::copy(workload_path(), &path).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    (path, digest)
}

#[test]
fn executable_selector_binds_at_the_first_connect_and_grandchildren_inherit() {
    let dir = tempfile::tempdir().unwrap();
    let (tool, sha) = agent_binary(dir.path());
    let config = format!(
        "[[agent]]\nname = \"tool\"\nselectors = [{{ executable = \"{}\", sha256 = \"{sha}\" }}]\n",
        tool.display()
    );
    let mut agentd = Agentd::start(&config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Outside every agent cgroup: only the executable names the agent. The first thing it does
    // after exec is connect; then it runs a shell that runs cat (a grandchild).
    let mut cmd = std::process::Command::new(&tool);
    cmd.args([
        &format!("connect:127.0.0.1:{port}"),
        "spawn:1:/bin/sh:-c:/bin/cat /etc/hostname >/dev/null; exit 0",
        "pid",
        "exit:0",
    ]);
    let mut running = Running::spawn(cmd);
    let pid: u32 = running.line().parse().unwrap();
    assert_eq!(running.wait(), 0);
    agentd.wait_for("exit", |r| {
        r["kind"] == "process.exit" && r["process"]["pid"] == pid
    });
    let records = agentd.stop();
    the(
        &records.iter().collect::<Vec<_>>(),
        "executable bound",
        |r| {
            r["kind"] == "identity.bind"
                && r["binding"]["target"] == "executable"
                && r["binding"]["sha256"] == sha
        },
    );
    let mine = by_pid(&records, pid);
    let value = tool.display().to_string();
    assert_agent(
        &mine,
        "spiffe://custos.local/agent/tool",
        "executable",
        &value,
        "direct",
    );
    let first_net = mine
        .iter()
        .find(|r| r["kind"].as_str().unwrap().starts_with("net."))
        .expect("a network record");
    assert_eq!(first_net["kind"], "net.connect");
    assert_eq!(first_net["dst_endpoint"]["port"], port);

    // The shell (child) and cat (grandchild) inherit the agent.
    let shell = the(&kind(&mine, "process.fork"), "fork of the shell", |_| true)["process"]["pid"]
        .as_u64()
        .unwrap() as u32;
    let shell_records = by_pid(&records, shell);
    assert_agent(
        &shell_records,
        "spiffe://custos.local/agent/tool",
        "executable",
        &value,
        "inherited",
    );
    let cat = the(&kind(&shell_records, "process.fork"), "fork of cat", |_| {
        true
    })["process"]["pid"]
        .as_u64()
        .unwrap() as u32;
    let cat_records = by_pid(&records, cat);
    assert_agent(
        &cat_records,
        "spiffe://custos.local/agent/tool",
        "executable",
        &value,
        "inherited",
    );
    let cat_exec = the(&kind(&cat_records, "process.exec"), "exec of cat", |_| true);
    assert_eq!(cat_exec["process"]["file"]["path"], "/bin/cat");
    assert_eq!(cat_exec["process"]["parent_process"]["pid"], shell);
    the(
        &kind(&cat_records, "file.open"),
        "cat opens /etc/hostname",
        |r| r["file"]["path"] == "/etc/hostname",
    );
}

#[test]
fn processes_outside_every_agent_produce_nothing() {
    let unit = unique("custos-e2e");
    let cgroup = Cgroup::create(&format!("system.slice/{unit}.service"));
    let mut agentd = Agentd::start(
        "[[agent]]\nname = \"svc\"\nselectors = [{ cgroup = \"system.slice/custos-e2e-*.service\" }]\n",
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let actions = [
        "pid",
        "open:/etc/hostname",
        "spawn:2:/bin/true",
        "sendto:127.0.0.1:9",
    ];
    let mut outsider = std::process::Command::new(workload_path());
    outsider
        .args(actions)
        .arg(format!("connect:127.0.0.1:{port}"));
    let mut running = Running::spawn(outsider);
    let outsider_pid: u32 = running.line().parse().unwrap();
    assert_eq!(running.wait(), 0);
    // Then an agent process: once its exit is recorded, everything before it has been read.
    let mut marker = cgroup.command(workload_path());
    marker.args(["pid", "exit:0"]);
    let mut running = Running::spawn(marker);
    let marker_pid: u32 = running.line().parse().unwrap();
    assert_eq!(running.wait(), 0);
    agentd.wait_for("the marker's exit", |r| {
        r["kind"] == "process.exit" && r["process"]["pid"] == marker_pid
    });
    let records = agentd.stop();
    let leaked: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["actor"]["process"]["pid"] == outsider_pid
                || r["process"]["pid"] == outsider_pid
                || r["process"]["parent_process"]["pid"] == outsider_pid
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "records for a non-agent process:\n{leaked:#?}"
    );
    assert!(!by_pid(&records, marker_pid).is_empty());
}
