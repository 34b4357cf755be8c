//! Egress enforcement end to end: real agentd, real agent processes in real cgroups, real
//! servers on loopback and in a network namespace, and dnsmasq as the upstream DNS server.
//! Every outcome is read from what the agent process itself saw (`ok` or the errno) *and* from
//! the signed records.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use custos_tests::{
    Agentd, Cgroup, Dirs, Running, Value, by_pid, dump,
    net::{Dnsmasq, NS_V4, NS_V6, Netns, Servers},
    unique, workload_path,
};

/// What the workload printed: (action, `ok ...` / `err ...`), in order.
type Outcomes = Vec<(String, String)>;

/// Runs the workload with `actions` (in `cgroup`, or outside every agent), and returns its pid
/// and the outcome of each network action.
fn run(cgroup: Option<&Cgroup>, actions: &[&str]) -> (u32, Outcomes) {
    let mut cmd = match cgroup {
        Some(cgroup) => cgroup.command(workload_path()),
        None => Command::new(workload_path()),
    };
    cmd.args(actions);
    let out = Running::spawn(cmd);
    let pid = out.child.id();
    let text = wait_output(out);
    (pid, outcomes(&text))
}

fn wait_output(mut running: Running) -> String {
    let mut text = String::new();
    loop {
        let line = running.line();
        if line.is_empty() {
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    running.wait();
    text
}

/// `ACTION ok|err DETAIL` lines → (action, `ok DETAIL` / `err DETAIL`).
fn outcomes(text: &str) -> Outcomes {
    text.lines()
        .filter_map(|line| {
            let (action, rest) = line.split_once(' ')?;
            Some((action.to_owned(), rest.to_owned()))
        })
        .collect()
}

/// Asserts each action's outcome starts with `expected` (`ok`, `err EPERM`, ...). An action
/// listed twice is matched against its occurrences in order.
fn expect(outcomes: &Outcomes, expected: &[(&str, &str)]) {
    let mut wrong = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (action, want) in expected {
        let nth = seen.entry(action).or_default();
        let got = outcomes
            .iter()
            .filter(|(a, _)| a == action)
            .nth(*nth)
            .map_or("(no output)", |(_, outcome)| outcome.as_str());
        *nth += 1;
        if !got.starts_with(want) {
            wrong.push(format!("{action}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nall outcomes: {outcomes:#?}",
        wrong.join("\n")
    );
}

/// `n` consecutive ports free for TCP and UDP on 127.0.0.1 and ::1.
fn free_block(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 60_000 {
            continue;
        }
        let free = (base..base + n).all(|p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok()
                && TcpListener::bind(("::1", p)).is_ok()
                && UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && UdpSocket::bind(("::1", p)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free block of {n} ports");
}

/// The net records of process `pid` toward `ip:port`.
fn net_records<'a>(
    records: &'a [Value],
    pid: u32,
    kind: &str,
    ip: &str,
    port: u16,
) -> Vec<&'a Value> {
    by_pid(records, pid)
        .into_iter()
        .filter(|r| {
            r["kind"] == kind && r["dst_endpoint"]["ip"] == ip && r["dst_endpoint"]["port"] == port
        })
        .collect()
}

/// The one record of `pid`'s call toward `ip:port`, waiting for it to be logged.
fn decision(agentd: &mut Agentd, pid: u32, kind: &str, ip: &str, port: u16) -> Value {
    agentd.wait_for(&format!("{kind} to {ip}:{port} by {pid}"), |r| {
        r["kind"] == kind
            && r["actor"]["process"]["pid"] == pid
            && r["dst_endpoint"]["ip"] == ip
            && r["dst_endpoint"]["port"] == port
    })
}

/// The `policy.change` record of agent `name`.
fn policy_record(records: &[Value], name: &str) -> Value {
    records
        .iter()
        .rev()
        .find(|r| r["kind"] == "policy.change" && r["agent"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no policy.change for {name}:\n{}", dump(records)))
}

#[test]
fn cidr_rules_decide_tcp_and_udp_over_ipv4_and_ipv6() {
    let p = free_block(4);
    let v4 = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = |port: u16| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let all: Vec<SocketAddr> = (p..p + 4).flat_map(|port| [v4(port), v6(port)]).collect();
    let _servers = Servers::start(&all, &all);
    let id = unique("egress-cidr");
    let alpha = Cgroup::create(&format!("{id}/alpha"));
    let mon = Cgroup::create(&format!("{id}/mon"));
    let config = format!(
        r#"
[[agent]]
name = "alpha"
selectors = [{{ cgroup = "{id}/alpha" }}]
[agent.egress]
mode = "enforce"
allow = [
  {{ cidr = "127.0.0.1", ports = "{p}", protocol = "tcp" }},
  {{ cidr = "::1", ports = "{}-{}", protocol = "tcp" }},
  {{ cidr = "127.0.0.0/8", ports = "{p}", protocol = "udp" }},
  {{ cidr = "::1", ports = "{}", protocol = "udp" }},
]

[[agent]]
name = "mon"
selectors = [{{ cgroup = "{id}/mon" }}]
[agent.egress]
mode = "monitor"
allow = [{{ cidr = "127.0.0.1", ports = "{p}", protocol = "tcp" }}]
"#,
        p + 1,
        p + 2,
        p + 3
    );
    let mut agentd = Agentd::start(&config);
    let tcp4 = |port| format!("tcp:127.0.0.1:{port}");
    let tcp6 = |port| format!("tcp:[::1]:{port}");
    let actions = [
        tcp4(p),
        tcp4(p + 1),
        tcp6(p),
        tcp6(p + 1),
        tcp6(p + 2),
        tcp6(p + 3),
        format!("udp:127.0.0.1:{p}"),
        format!("udp:127.0.0.1:{}", p + 1),
        format!("udpc:127.0.0.1:{}", p + 2),
        format!("udp:[::1]:{}", p + 3),
        format!("udpc:[::1]:{}", p + 3),
        format!("udp:[::1]:{p}"),
        // An IPv4 destination written as IPv4-mapped IPv6 is the same destination.
        format!("tcp:[::ffff:127.0.0.1]:{p}"),
        format!("tcp:[::ffff:127.0.0.1]:{}", p + 1),
    ];
    let refs: Vec<&str> = actions.iter().map(String::as_str).collect();
    let (pid, got) = run(Some(&alpha), &refs);
    let ok = "ok";
    let denied = "err EPERM";
    expect(
        &got,
        &[
            (&actions[0], ok),
            (&actions[1], denied),
            (&actions[2], denied),
            (&actions[3], ok),
            (&actions[4], ok),
            (&actions[5], denied),
            (&actions[6], ok),
            (&actions[7], denied),
            (&actions[8], denied),
            (&actions[9], ok),
            (&actions[10], ok),
            (&actions[11], denied),
            (&actions[12], ok),
            (&actions[13], denied),
        ],
    );

    // A process outside every agent on the same host is not affected.
    let (_, outsider) = run(None, &refs);
    assert_eq!(outsider.len(), refs.len());
    assert!(
        outsider
            .iter()
            .all(|(_, outcome)| outcome.starts_with("ok")),
        "outsider: {outsider:?}"
    );
    // Monitor mode reports, never blocks.
    let (mon_pid, mon_got) = run(Some(&mon), &[&tcp4(p + 1), &tcp4(p)]);
    expect(&mon_got, &[(&tcp4(p + 1), ok), (&tcp4(p), ok)]);

    // The records: every decision, with its rule and the policy version in force.
    let allowed = decision(&mut agentd, pid, "net.connect", "::1", p + 2);
    let blocked = decision(&mut agentd, pid, "net.connect", "127.0.0.1", p + 1);
    let would = decision(&mut agentd, mon_pid, "net.connect", "127.0.0.1", p + 1);
    let udp_blocked = decision(&mut agentd, pid, "net.udp_send", "127.0.0.1", p + 1);
    let records = agentd.stop();
    let policy = policy_record(&records, "alpha");
    let version = &policy["policy"]["new_version"].as_str().unwrap()[..16];
    assert_eq!(allowed["egress"]["verdict"], "allow");
    assert_eq!(allowed["egress"]["rule"]["id"], 2);
    assert_eq!(
        allowed["egress"]["rule"]["text"],
        format!("tcp ::1/128:{}-{}", p + 1, p + 2)
    );
    assert_eq!(allowed["egress"]["policy_version"], version);
    assert_eq!(
        allowed["egress"]["policy_sha256"],
        policy["policy"]["new_version"]
    );
    assert_eq!(blocked["egress"]["verdict"], "deny");
    assert_eq!(blocked["egress"]["rule"]["id"], 0);
    assert_eq!(blocked["status_code"], "EPERM");
    assert_eq!(
        (blocked["action"].as_str(), blocked["disposition"].as_str()),
        (Some("Denied"), Some("Blocked"))
    );
    assert_eq!(udp_blocked["egress"]["verdict"], "deny");
    assert_eq!(would["egress"]["verdict"], "would_deny");
    assert_eq!(would["egress"]["mode"], "monitor");
    assert_eq!(would["status"], "Success");
    // Three TCP connects to ::1 were decided (p denied, p+1 and p+2 allowed): one record each.
    assert_eq!(net_records(&records, pid, "net.connect", "::1", p).len(), 1);
    assert!(
        records
            .iter()
            .all(|r| r["actor"]["process"]["pid"].as_u64().is_none_or(|p| {
                // Nothing of the outsider is recorded (agents-only mode).
                by_pid(&records, p as u32)
                    .iter()
                    .all(|r| !r["agent"].is_null())
            }))
    );
}

/// The DNS names and addresses of the FQDN tests.
fn dnsmasq() -> Dnsmasq {
    Dnsmasq::start(&[
        ("api.test", &[NS_V4[0]], &[NS_V6], 300),
        ("short.test", &[NS_V4[1]], &[], 2),
        ("db.svc.test", &[NS_V4[2]], &[], 300),
        ("evil.test", &[NS_V4[3]], &[], 300),
        ("private.test", &["127.0.0.1"], &[], 300),
        ("meta.test", &["169.254.169.254"], &[], 300),
    ])
}

#[test]
fn fqdn_rules_pin_answers_per_agent_until_their_ttl() {
    let _netns = Netns::create();
    let dns = dnsmasq();
    let id = unique("egress-fqdn");
    let alpha = Cgroup::create(&format!("{id}/alpha"));
    let beta = Cgroup::create(&format!("{id}/beta"));
    let config = format!(
        r#"
[dns]
upstream = ["{}"]
grace_seconds = 0

[[agent]]
name = "alpha"
selectors = [{{ cgroup = "{id}/alpha" }}]
[agent.egress]
allow = [
  {{ host = "api.test", ports = "443", protocol = "tcp" }},
  {{ host = "short.test", ports = "9000" }},
  {{ host = "*.svc.test", ports = "8443" }},
  {{ host = "private.test", ports = "80" }},
  {{ host = "meta.test", ports = "80", allow_private = true }},
]

[[agent]]
name = "beta"
selectors = [{{ cgroup = "{id}/beta" }}]
[agent.egress]
allow = [{{ host = "other.test" }}]
"#,
        dns.addr
    );
    let mut agentd = Agentd::start(&config);
    let api = format!("tcp:{}:443", NS_V4[0]);
    let api6 = format!("tcp:[{NS_V6}]:443");
    let stray = "dns:203.0.113.5:53";
    let actions = [
        // The address of an allowed name, before the agent resolved it.
        api.clone(),
        "resolve:api.test".into(),
        api.clone(),
        api6.clone(),
        format!("tcp:{}:9000", NS_V4[0]),
        // Queries sent to any server on port 53 are answered by agentd's resolver, and the
        // reply comes back from the server the agent asked.
        format!("{stray}:db.svc.test"),
        format!("tcp:{}:8443", NS_V4[2]),
        format!("{stray}:evil.test"),
        format!("{stray}:evil.test:tcp"),
        "dns:[::1]:53:evil.test".into(),
        // The upstream itself, off port 53: an address like any other, not allowed.
        format!("dns:{}:evil.test", dns.addr),
        format!("{stray}:private.test"),
        format!("{stray}:meta.test"),
        "resolve:short.test".into(),
        format!("tcp:{}:9000", NS_V4[1]),
    ];
    let refs: Vec<&str> = actions.iter().map(String::as_str).collect();
    let (pid, got) = run(Some(&alpha), &refs);
    expect(
        &got,
        &[
            (&actions[0], "err EPERM"),
            (&actions[1], "ok"),
            (&actions[2], "ok hello 443"),
            (&actions[3], "ok hello 443"),
            (&actions[4], "err EPERM"),
            (&actions[5], "ok NOERROR 203.0.113.4 (from 203.0.113.5:53)"),
            (&actions[6], "ok hello 8443"),
            (&actions[7], "ok REFUSED  (from 203.0.113.5:53)"),
            (&actions[8], "ok REFUSED"),
            (&actions[9], "ok REFUSED  (from [::1]:53)"),
            (&actions[10], "err EPERM"),
            (&actions[11], "ok NOERROR  ("),
            (&actions[12], "ok NOERROR  ("),
            (&actions[13], "ok 203.0.113.3"),
            (&actions[14], "ok hello 9000"),
        ],
    );
    let resolved = &got.iter().find(|(a, _)| a == &actions[1]).unwrap().1;
    assert!(
        resolved.contains(NS_V4[0]) && resolved.contains(NS_V6),
        "A and AAAA: {resolved}"
    );

    // Another agent cannot use what alpha resolved, nor resolve it.
    let (beta_pid, beta_got) = run(Some(&beta), &[&api, "dns:203.0.113.5:53:api.test"]);
    expect(
        &beta_got,
        &[
            (&api, "err EPERM"),
            ("dns:203.0.113.5:53:api.test", "ok REFUSED"),
        ],
    );

    // short.test has a TTL of 2 s and no grace: its pin lapses, in the kernel, on time.
    thread::sleep(Duration::from_millis(3500));
    let short = format!("tcp:{}:9000", NS_V4[1]);
    let (late_pid, late) = run(Some(&alpha), &[&short, &api]);
    expect(&late, &[(&short, "err EPERM"), (&api, "ok hello 443")]);

    let lapsed = decision(&mut agentd, late_pid, "net.connect", NS_V4[1], 9000);
    let records = agentd.stop();
    assert_eq!(lapsed["egress"]["verdict"], "deny");
    let dns_records: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "dns.query")
        .collect();
    let query = |agent: &str, name: &str| -> Vec<&Value> {
        dns_records
            .iter()
            .copied()
            .filter(|r| r["agent"]["name"] == agent && r["query"]["hostname"] == name)
            .collect()
    };
    let api_query = query("alpha", "api.test");
    assert!(
        api_query.iter().any(|r| r["query"]["type"] == "A"
            && r["egress"]["decision"] == "allowed"
            && r["answers"][0]["rdata"] == NS_V4[0]
            && r["answers"][0]["pinned"] == true
            && r["egress"]["rules"][0]["text"] == "tcp api.test:443"),
        "{}",
        dump(&dns_records.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
    );
    for evil in query("alpha", "evil.test") {
        assert_eq!(evil["egress"]["decision"], "refused");
        assert_eq!(evil["rcode"], "REFUSED");
    }
    assert_eq!(
        query("alpha", "evil.test").len(),
        3,
        "UDP, TCP and IPv6 attempts each logged"
    );
    let private = query("alpha", "private.test");
    assert_eq!(private[0]["answers"][0]["class"], "private");
    assert_eq!(private[0]["answers"][0]["pinned"], false);
    assert_eq!(private[0]["egress"]["addresses_removed"], 1);
    let meta = query("alpha", "meta.test");
    assert_eq!(meta[0]["answers"][0]["class"], "link_local_or_special");
    assert_eq!(
        meta[0]["answers"][0]["pinned"], false,
        "allow_private never allows metadata addresses"
    );
    assert_eq!(
        query("beta", "api.test")[0]["egress"]["decision"],
        "refused"
    );

    let connect = net_records(&records, pid, "net.connect", NS_V4[0], 443);
    assert_eq!(
        connect.len(),
        2,
        "{}",
        dump(&connect.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
    );
    assert_eq!(connect[0]["egress"]["verdict"], "deny", "before resolving");
    assert_eq!(connect[1]["egress"]["verdict"], "allow");
    assert_eq!(connect[1]["egress"]["rule"]["text"], "tcp api.test:443");
    let redirected = by_pid(&records, pid)
        .into_iter()
        .find(|r| r["kind"] == "net.udp_send" && r["dst_endpoint"]["ip"] == "203.0.113.5")
        .expect("the redirected query's record");
    assert_eq!(redirected["egress"]["redirected_to_resolver"], true);
    assert_eq!(redirected["action"], "Modified");
    assert!(
        net_records(&records, beta_pid, "net.connect", NS_V4[0], 443)[0]["egress"]["verdict"]
            == "deny"
    );
}

/// A copy of the workload under another name, in a directory of its own.
fn renamed_workload(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(workload_path(), &path).unwrap();
    path
}

#[test]
fn bypass_attempts_fail_and_are_logged() {
    let _netns = Netns::create();
    let dir = tempfile::tempdir().unwrap();
    let curl = renamed_workload(dir.path(), "curl");
    let agent_bin = renamed_workload(dir.path(), "agent-bin");
    let sha = sha256_hex(&agent_bin);
    let id = unique("egress-bypass");
    let gamma = Cgroup::create(&format!("{id}/gamma"));
    let config = format!(
        r#"
[[agent]]
name = "gamma"
selectors = [{{ cgroup = "{id}/gamma" }}]
[agent.egress]
allow = [{{ cidr = "{ns}/32", ports = "443", protocol = "tcp" }}]

[[agent]]
name = "delta"
selectors = [{{ executable = "{exe}", sha256 = "{sha}" }}]
[agent.egress]
allow = [{{ cidr = "{ns}/32", ports = "443", protocol = "tcp" }}]
"#,
        ns = NS_V4[0],
        exe = agent_bin.display()
    );
    let mut agentd = Agentd::start(&config);
    let allowed = format!("tcp:{}:443", NS_V4[0]);
    let denied = format!("tcp:{}:9001", NS_V4[0]);
    let w = workload_path();
    let w = w.display();

    // A child and a grandchild, through a shell.
    let script = format!("{w} {denied} {allowed}; sh -c '{w} {denied} {allowed}'");
    let mut cmd = gamma.command("/bin/sh");
    cmd.args(["-c", &script]);
    let text = wait_output(Running::spawn(cmd));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{denied} err EPERM").as_str(),
            format!("{allowed} ok hello 443").as_str(),
            format!("{denied} err EPERM").as_str(),
            format!("{allowed} ok hello 443").as_str(),
        ],
        "child and grandchild"
    );

    // IPv6, and IPv4 dressed as IPv6, when only an IPv4 address is allowed.
    let v6 = format!("tcp:[{NS_V6}]:443");
    let mapped_denied = format!("tcp:[::ffff:{}]:9001", NS_V4[0]);
    let mapped_allowed = format!("tcp:[::ffff:{}]:443", NS_V4[0]);
    let (_, got) = run(Some(&gamma), &[&v6, &mapped_denied, &mapped_allowed]);
    expect(
        &got,
        &[
            (&v6, "err EPERM"),
            (&mapped_denied, "err EPERM"),
            (&mapped_allowed, "ok"),
        ],
    );

    // A re-exec under another name (in the cgroup, and for the executable-bound agent).
    let exec = format!("exec-rest:{}", curl.display());
    let (gamma_pid, got) = run(Some(&gamma), &[&exec, &denied]);
    expect(&got, &[(&denied, "err EPERM")]);
    let mut cmd = Command::new(&agent_bin);
    cmd.args([exec.as_str(), denied.as_str(), allowed.as_str()]);
    let text = wait_output(Running::spawn(cmd));
    let got = outcomes(&text);
    expect(&got, &[(&denied, "err EPERM"), (&allowed, "ok")]);

    let record = decision(&mut agentd, gamma_pid, "net.connect", NS_V4[0], 9001);
    assert_eq!(record["egress"]["verdict"], "deny");
    assert_eq!(record["actor"]["process"]["name"], "curl");
    let records = agentd.stop();
    let delta_denied: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "net.connect"
                && r["agent"]["name"] == "delta"
                && r["dst_endpoint"]["port"] == 9001
        })
        .collect();
    assert_eq!(delta_denied.len(), 1, "{}", dump(&records));
    assert_eq!(delta_denied[0]["egress"]["verdict"], "deny");
    assert_eq!(delta_denied[0]["actor"]["process"]["name"], "curl");
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn enforcement_survives_sigkill_and_a_restart_adopts_it() {
    let _netns = Netns::create();
    let dns = dnsmasq();
    let id = unique("egress-restart");
    let alpha = Cgroup::create(&format!("{id}/alpha"));
    let config = format!(
        r#"
[dns]
upstream = ["{}"]

[[agent]]
name = "alpha"
selectors = [{{ cgroup = "{id}/alpha" }}]
[agent.egress]
allow = [
  {{ cidr = "{}", ports = "443", protocol = "tcp" }},
  {{ host = "db.svc.test", ports = "8443", protocol = "tcp" }},
]
"#,
        dns.addr, NS_V4[0]
    );
    let dirs = Dirs::new();
    let agentd = Agentd::start_in(&dirs, &config, &[]);
    let allowed = format!("tcp:{}:443", NS_V4[0]);
    let denied = format!("tcp:{}:9001", NS_V4[0]);
    let pinned = format!("tcp:{}:8443", NS_V4[2]);
    let (_, got) = run(Some(&alpha), &["resolve:db.svc.test", &pinned, &denied]);
    expect(
        &got,
        &[
            ("resolve:db.svc.test", "ok"),
            (&pinned, "ok"),
            (&denied, "err EPERM"),
        ],
    );

    agentd.kill();
    // No agentd: the kernel still decides, for processes old and new; names do not resolve.
    let (_, got) = run(
        Some(&alpha),
        &[&denied, &allowed, &pinned, "dns:203.0.113.5:53:db.svc.test"],
    );
    expect(
        &got,
        &[
            (&denied, "err EPERM"),
            (&allowed, "ok"),
            (&pinned, "ok"),
            ("dns:203.0.113.5:53:db.svc.test", "err"),
        ],
    );

    // Processes keep trying the denied destination while agentd restarts: not one gets through.
    let w = workload_path();
    let script = format!("for i in $(seq 1 150); do {} {denied}; done", w.display());
    let mut cmd = alpha.command("/bin/sh");
    cmd.args(["-c", &script]);
    let hammer = Running::spawn(cmd);
    thread::sleep(Duration::from_millis(200));
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let text = wait_output(hammer);
    assert_eq!(text.lines().count(), 150);
    assert!(text.lines().all(|l| l.ends_with("err EPERM")), "{text}");

    let adopted = agentd.wait_for("policy.change", |r| r["kind"] == "policy.change");
    assert_eq!(adopted["policy"]["adopted_from_kernel"], true, "{adopted}");
    let (_, got) = run(
        Some(&alpha),
        &[&denied, &pinned, "dns:203.0.113.5:53:db.svc.test"],
    );
    expect(
        &got,
        &[
            (&denied, "err EPERM"),
            (&pinned, "ok"),
            ("dns:203.0.113.5:53:db.svc.test", "ok NOERROR"),
        ],
    );
    let records = agentd.stop();
    let recovery = records
        .iter()
        .find(|r| r["kind"] == "log.recovery")
        .expect("recovery record");
    assert_eq!(recovery["detail"]["previous_run"], "unclean");

    // After a clean stop enforcement goes on too, until the pins are removed.
    let (_, got) = run(Some(&alpha), &[&denied]);
    expect(&got, &[(&denied, "err EPERM")]);
    let out = Command::new(custos_tests::agentd_path())
        .arg("--config")
        .arg(dirs.path().join("agentd.toml"))
        .arg("--remove-pins")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, got) = run(Some(&alpha), &[&denied]);
    expect(&got, &[(&denied, "ok")]);
}

#[test]
fn policy_reloads_are_validated_atomic_and_recorded() {
    let _netns = Netns::create();
    let id = unique("egress-reload");
    let alpha = Cgroup::create(&format!("{id}/alpha"));
    let dirs = Dirs::new();
    let policies = dirs.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let good = format!(
        "[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{}\", ports = \"443\" }}]\n",
        NS_V4[0]
    );
    std::fs::write(policies.join("alpha.toml"), &good).unwrap();
    let config = format!(
        r#"
[policy]
dir = "{}"

[[agent]]
name = "alpha"
selectors = [{{ cgroup = "{id}/alpha" }}]

[[agent]]
name = "beta"
selectors = [{{ uid = 4242 }}]
"#,
        policies.display()
    );
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let start = agentd.wait_for("policy.change", |r| r["kind"] == "policy.change");
    let first_version = start["policy"]["new_version"].clone();
    let allowed = format!("tcp:{}:443", NS_V4[0]);
    let denied = format!("tcp:{}:9001", NS_V4[0]);
    let check = || {
        let (_, got) = run(Some(&alpha), &[&allowed, &denied]);
        expect(&got, &[(&allowed, "ok"), (&denied, "err EPERM")]);
    };
    check();

    let file = policies.join("alpha.toml");
    let extra = policies.join("zz-extra.toml");
    let ns = NS_V4[0];
    let cases: Vec<(&Path, String, &str, &str)> = vec![
        (
            &file,
            format!("[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{ns}/40\" }}]\n"),
            ":3:",
            "too long for IPv4",
        ),
        (
            &file,
            format!("[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{ns}/24\" }}]\n"),
            ":3:",
            "did you mean 203.0.113.0/24",
        ),
        (
            &file,
            "[[egress]]\nagent = \"nobody\"\n".into(),
            ":2:",
            "no agent named \"nobody\"",
        ),
        (
            &file,
            format!(
                "[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{ns}\", prots = \"443\" }}]\n"
            ),
            ":3:",
            "unknown field `prots`",
        ),
        (
            &file,
            format!(
                "[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{ns}\", ports = \"9001-9000\" }}]\n"
            ),
            ":3:",
            "runs backwards",
        ),
        (
            &file,
            "[[egress]]\nagent = \"alpha\"\nmode = \"block\"\n".into(),
            ":3:",
            "unknown mode",
        ),
        (&file, "[[egress]\nagent = \"alpha\"\n".into(), ":1:", ""),
        (
            &file,
            format!(
                "[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{ns}\", ports = \"1,2,3,4,5,6,7,8,9\" }}]\n"
            ),
            ":3:",
            "at most 8",
        ),
        (
            &extra,
            "[[egress]]\nagent = \"alpha\"\n".into(),
            ":2:",
            "already has an egress policy",
        ),
    ];
    for (path, text, location, message) in &cases {
        std::fs::write(path, text).unwrap();
        let before = agentd
            .records()
            .iter()
            .filter(|r| r["kind"] == "policy.refused")
            .count();
        agentd.signal(libc::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let refused = loop {
            let all: Vec<Value> = agentd
                .records()
                .into_iter()
                .filter(|r| r["kind"] == "policy.refused")
                .collect();
            if all.len() > before {
                break all[before].clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no policy.refused for {text:?}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let error = &refused["error"];
        let at = format!("{}:{}", error["file"].as_str().unwrap(), error["line"]);
        assert!(
            format!("{at}:").contains(&format!("{}{location}", path.display())),
            "location for {text:?}: {refused}"
        );
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "message for {text:?}: {refused}"
        );
        assert_eq!(refused["policies_in_force"][0]["version"], first_version);
        // The policy in force did not move.
        check();
        std::fs::write(&file, &good).unwrap();
        let _ = std::fs::remove_file(&extra);
    }

    // A valid change goes in, recorded with the old and new versions.
    std::fs::write(
        &file,
        format!(
            "[[egress]]\nagent = \"alpha\"\nallow = [{{ cidr = \"{ns}\", ports = \"443,9001\" }}]\n"
        ),
    )
    .unwrap();
    agentd.signal(libc::SIGHUP);
    let change = agentd.wait_for("the reload's policy.change", |r| {
        r["kind"] == "policy.change" && r["policy"]["reason"] == "reload"
    });
    assert_eq!(change["policy"]["old_version"], first_version);
    assert_ne!(change["policy"]["new_version"], first_version);
    assert_eq!(change["activity_name"], "Update");
    assert_eq!(change["policy"]["source"], file.display().to_string());
    let (_, got) = run(Some(&alpha), &[&denied]);
    expect(&got, &[(&denied, "ok")]);

    // An identity change needs a restart: refused, policies untouched.
    std::fs::write(
        dirs.path().join("agentd.toml"),
        std::fs::read_to_string(dirs.path().join("agentd.toml"))
            .unwrap()
            .replace("4242", "4243"),
    )
    .unwrap();
    agentd.signal(libc::SIGHUP);
    let refused = agentd.wait_for("identity change refused", |r| {
        r["kind"] == "policy.refused"
            && r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("restart agentd"))
    });
    assert_eq!(refused["error"]["field"], "agent");
    agentd.stop();
}

#[test]
fn new_cgroups_are_decided_before_agentd_resolves_them() {
    let p = free_block(1);
    let _servers = Servers::start(&[SocketAddr::from(([127, 0, 0, 1], p))], &[]);
    let id = unique("egress-pending");
    let alpha = Cgroup::create(&format!("{id}/alpha"));
    let config = format!(
        r#"
[[agent]]
name = "alpha"
selectors = [{{ cgroup = "{id}/alpha" }}]
[agent.egress]
allow = []
"#
    );
    let mut agentd = Agentd::start(&config);
    let target = format!("tcp:127.0.0.1:{p}");
    // agentd frozen: cgroups created now stay unresolved (pending) in the kernel.
    agentd.freeze();
    let child = Cgroup::create(&format!("{}/sub", alpha.rel));
    let other = Cgroup::create(&format!("{id}/other"));
    let (agent_pid, got) = run(Some(&child), &[&target]);
    let (_, outsider) = run(Some(&other), &[&target]);
    agentd.signal(libc::SIGCONT);
    // An agent stepping into a fresh child cgroup is still decided as itself; a process in a
    // fresh cgroup elsewhere is not touched.
    expect(&got, &[(&target, "err EPERM")]);
    expect(&outsider, &[(&target, "ok")]);
    let record = decision(&mut agentd, agent_pid, "net.connect", "127.0.0.1", p);
    assert_eq!(
        record["agent"]["name"], "alpha",
        "resolved once agentd caught up"
    );
    assert_eq!(record["egress"]["verdict"], "deny");
    assert_eq!(
        record["egress"]["rule"]["text"],
        "cgroup not resolved yet (deny until it is)"
    );
    agentd.stop();
}

/// A quarantine outlives a restart that starts from new maps (an upgrade that changes their
/// layout; here the maps' pins are removed or renamed between runs): agentd puts it back from
/// its state directory, or from the earlier run's maps when there is no file (an upgrade from
/// a release that kept none), and logs that it did. With neither it would be gone, which the
/// last run shows.
#[test]
fn quarantines_outlive_a_restart_with_new_maps() {
    let id = unique("egress-held");
    let held = Cgroup::create(&format!("{id}/held"));
    let config = format!(
        r#"
[[agent]]
name = "held"
selectors = [{{ cgroup = "{id}/held" }}]
"#
    );
    let dirs = Dirs::new();
    let socket = dirs.socket();
    let socket = socket.to_str().expect("utf-8").to_owned();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--socket", socket.as_str()];
        all.extend_from_slice(args);
        let (code, out) = custos_tests::agentctl(&all);
        assert_eq!(code, 0, "agentctl {args:?}: {out}");
        out
    };
    // A quarantined agent cannot reach DNS on loopback, the one loopback service it loses.
    let dns_refused = || {
        let (_, got) = run(Some(&held), &["udp:127.0.0.1:53"]);
        got.first()
            .is_some_and(|(_, outcome)| outcome.contains("EPERM"))
    };
    let drop_maps = || {
        for entry in std::fs::read_dir(dirs.pins()).expect("pins").flatten() {
            if entry.file_name().to_string_lossy().starts_with("maps-") {
                std::fs::remove_dir_all(entry.path()).expect("remove the pinned maps");
            }
        }
    };

    let agentd = Agentd::start_in(&dirs, &config, &[]);
    assert!(!dns_refused(), "refused before any quarantine");
    ctl(&["quarantine", "held", "--reason", "incident 7"]);
    assert!(dns_refused(), "the quarantine is not in force");
    agentd.stop();
    let saved = std::fs::read_to_string(dirs.state().join("quarantines.json")).expect("saved");
    assert!(saved.contains("incident 7"), "{saved}");

    // New maps: the quarantine comes back from the state directory, logged.
    drop_maps();
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let back = agentd.wait_for("the quarantine put back", |r| {
        r["kind"] == "containment.quarantine" && r["actor"]["user"]["name"] == "agentd"
    });
    let reason = back["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("incident 7") && reason.contains("put back after a restart"),
        "{back}"
    );
    assert!(dns_refused(), "the quarantine was lost with the maps");
    let agent: Value =
        serde_json::from_str(ctl(&["agents", "held", "--json"]).trim()).expect("agent json");
    assert_eq!(agent["containment"]["quarantined"], true, "{agent}");
    agentd.stop();

    // An upgrade from a release that saved no file: the earlier run's maps (another layout,
    // still pinned) hold the quarantine, and it is carried over from them.
    for entry in std::fs::read_dir(dirs.pins()).expect("pins").flatten() {
        if entry.file_name().to_string_lossy().starts_with("maps-") {
            std::fs::rename(entry.path(), dirs.pins().join("maps-00000000000000ff"))
                .expect("give the maps another layout's name");
        }
    }
    std::fs::remove_file(dirs.state().join("quarantines.json")).expect("remove the file");
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let carried = agentd.wait_for("the quarantine carried over", |r| {
        r["kind"] == "containment.quarantine" && r["actor"]["user"]["name"] == "agentd"
    });
    assert!(
        carried["reason"]
            .as_str()
            .is_some_and(|r| r.contains("earlier run's maps")),
        "{carried}"
    );
    assert!(dns_refused(), "the quarantine was lost in the upgrade");
    agentd.stop();
    assert!(
        !dirs.pins().join("maps-00000000000000ff").exists(),
        "the earlier maps were not retired"
    );

    // The same restart with neither the file nor earlier maps: nothing brings it back.
    drop_maps();
    std::fs::remove_file(dirs.state().join("quarantines.json")).expect("remove the file");
    let agentd = Agentd::start_in(&dirs, &config, &[]);
    assert!(!dns_refused(), "a quarantine came back from nowhere");
    agentd.stop();
}
