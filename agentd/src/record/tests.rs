use sensor_common::{
    event::{ARGV_LEN, COMM_LEN, FileArgs, PATH_LEN},
    identity::AgentRef,
};
use serde_json::{Value, json};

use super::*;
use crate::{config::Config, identity::registry::Registry, json::canonicalize};

fn registry() -> Registry {
    Registry::new(
        &Config::parse(
            "[[agent]]\nname = \"a\"\nowner = \"o\"\nscopes = [\"s:1\"]\nselectors = [{ uid = 7 }]\n",
            "t.toml",
        )
        .unwrap(),
    )
}

fn header(kind: EventKind) -> EventHeader {
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"tool");
    EventHeader {
        kind: kind as u32,
        flags: 0,
        ktime_ns: 5_000_000_000,
        tgid: 100,
        tid: 101,
        start_ns: 4_000_000_000,
        cgroup_id: 9,
        uid: 7,
        gid: 8,
        agent: registry().selectors()[0].agent_ref(),
        how: HOW_DIRECT,
        _pad: 0,
        comm,
    }
}

fn path(s: &[u8]) -> ([u8; PATH_LEN], u32) {
    let mut buf = [0u8; PATH_LEN];
    buf[..s.len()].copy_from_slice(s);
    (buf, s.len() as u32)
}

/// Parses a record and checks its bytes are already canonical.
fn checked(record: &Record) -> Value {
    let bytes = record.obj.to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    let mut canonical = Vec::new();
    canonicalize(&value, &mut canonical).expect("integers only");
    assert_eq!(
        String::from_utf8(canonical).unwrap(),
        String::from_utf8(bytes).unwrap()
    );
    value
}

#[test]
fn every_record_kind_is_canonical() {
    let records = Records::new();
    let registry = registry();
    let procs = ProcessTable::default();

    let (filename, filename_len) = path(b"/usr/bin/\xfftool");
    let mut argv = [0u8; ARGV_LEN];
    argv[..12].copy_from_slice(b"tool\0-x\0\"q\"\0");
    let exec = ExecEvent {
        hdr: header(EventKind::Exec),
        ppid: 1,
        flags: EXEC_ARGV_TRUNCATED,
        parent_start_ns: 10,
        exe: InodeId {
            dev: 1,
            _pad: 0,
            ino: u64::MAX,
        },
        script: InodeId::default(),
        filename_len,
        argv_len: 12,
        filename,
        argv,
    };
    let record = records.exec(&registry, &procs, &exec, None);
    let value = checked(&record);
    assert_eq!(value["kind"], "process.exec");
    assert_eq!(record.kind, "process.exec");
    assert_eq!(value["agent"]["uid"], "spiffe://custos.local/agent/a");
    assert_eq!(
        value["agent"]["selector"],
        json!({ "id": registry.selectors()[0].id, "type": "uid", "value": "7" })
    );
    assert_eq!(value["process"]["argv"], json!(["tool", "-x", "\"q\""]));
    assert_eq!(value["process"]["file"]["path"], "/usr/bin/\u{fffd}tool");
    assert_eq!(
        value["process"]["file"]["path_hex"],
        hex::encode(b"/usr/bin/\xfftool")
    );
    assert_eq!(
        value["process"]["file"]["inode"]["ino"],
        u64::MAX.to_string()
    );
    assert_eq!(value["process"]["truncated"], json!(["argv"]));
    assert_eq!(value["actor"]["process"]["uid"], "100:4000000000");

    let fork = ForkEvent {
        hdr: header(EventKind::Fork),
        child_tgid: 200,
        _pad: 0,
        child_start_ns: 6,
    };
    assert_eq!(
        checked(&records.fork(&registry, &procs, &fork))["process"]["pid"],
        200
    );

    let exit = ExitEvent {
        hdr: header(EventKind::Exit),
        exit_code: 3 << 8,
        _pad: 0,
    };
    assert_eq!(
        checked(&records.exit(&registry, &procs, &exit))["exit_code"],
        3
    );
    let killed = ExitEvent {
        hdr: header(EventKind::Exit),
        exit_code: 9,
        _pad: 0,
    };
    let value = checked(&records.exit(&registry, &procs, &killed));
    assert_eq!(
        (value["process"]["signal"].as_u64(), value.get("exit_code")),
        (Some(9), None)
    );

    let (p1, l1) = path(b"a/b");
    let (p2, l2) = path(b"/c");
    let args = FileArgs {
        syscall: FileSyscall::Renameat2 as u32,
        mode: 0,
        flags: 1,
        dfd: 3,
        dfd2: AT_FDCWD,
        trunc: 0,
        path_len: l1,
        path2_len: l2,
        kind: EventKind::FileRename as u32,
        path: p1,
        path2: p2,
    };
    let rename = FileEvent {
        hdr: header(EventKind::FileRename),
        ret: -2,
        args,
    };
    let value = checked(&records.file(&registry, &procs, &rename));
    assert_eq!(
        value["file"],
        json!({ "path": "a/b", "name": "b", "dirfd": 3 })
    );
    assert_eq!(value["file_result"], json!({ "path": "/c", "name": "c" }));
    assert_eq!(
        (
            value["status_code"].as_str(),
            value["rename_flags"].as_u64()
        ),
        (Some("ENOENT"), Some(1))
    );

    let mut remote = SockAddr {
        family: AF_INET6,
        port: 443,
        ..Default::default()
    };
    remote.addr[15] = 1;
    let connect = NetEvent {
        hdr: header(EventKind::NetConnect),
        ret: -(libc::EINPROGRESS as i64),
        local: SockAddr::default(),
        remote,
        sock_type: 1,
        protocol: 6,
        arg: 0,
        verdict: 0,
        rule_id: 0,
        redirected: 0,
        policy_version: 0,
    };
    let no_versions = crate::egress::state::Versions::default();
    let value = checked(&records.net(&registry, &procs, &connect, &no_versions));
    assert_eq!(value["dst_endpoint"], json!({ "ip": "::1", "port": 443 }));
    assert_eq!(
        (value["in_progress"].as_bool(), value["status"].as_str()),
        (Some(true), Some("Success"))
    );
    assert!(value.get("egress").is_none(), "no policy, no decision");

    // A denied connect names the rule and the policy version in force.
    let (versions, change) = egress_versions(connect.hdr.agent.agent_id);
    let denied = NetEvent {
        ret: -(libc::EPERM as i64),
        verdict: sensor_common::egress::VERDICT_DENY,
        rule_id: sensor_common::egress::RULE_DEFAULT,
        policy_version: change
            .info
            .as_ref()
            .map(|i| u64::from_str_radix(&i.hash[..16], 16).unwrap())
            .unwrap(),
        ..connect
    };
    let value = checked(&records.net(&registry, &procs, &denied, &versions.read().unwrap()));
    assert_eq!(value["egress"]["verdict"], "deny");
    assert_eq!(value["egress"]["mode"], "enforce");
    assert_eq!(
        value["egress"]["rule"]["text"],
        "no rule matched (default deny)"
    );
    assert_eq!(value["egress"]["policy_sha256"], json!(change.new));
    assert_eq!(
        (value["action"].as_str(), value["disposition"].as_str()),
        (Some("Denied"), Some("Blocked"))
    );
    assert_eq!(value["severity_id"], 3);
    assert_eq!(value["status_code"], "EPERM");
    let allowed = NetEvent {
        ret: 0,
        verdict: sensor_common::egress::VERDICT_ALLOW,
        rule_id: 1,
        ..denied
    };
    let value = checked(&records.net(&registry, &procs, &allowed, &versions.read().unwrap()));
    assert_eq!(
        value["egress"]["rule"],
        json!({ "id": 1, "text": "tcp 10.0.0.0/8:443" })
    );
    let value = checked(&records.policy_change(&registry, &change, "start", None));
    assert_eq!(value["policy"]["rules"][0]["text"], "tcp 10.0.0.0/8:443");
    assert_eq!(value["activity_name"], "Create");
    let error = crate::config::ConfigError {
        file: "/etc/custos/policies/a.toml".into(),
        line: Some(3),
        column: Some(9),
        field: "egress[0].allow[0].cidr".into(),
        message: "bad".into(),
    };
    let value = checked(&records.policy_refused(&error, &[(7, "ab".into())]));
    assert_eq!(value["error"]["line"], 3);
    assert_eq!(value["policies_in_force"][0]["version"], "ab");

    let agent = registry.selectors()[0].agent_ref();
    let change = IdentityChange::ExeRefused {
        selector_id: agent.selector_id,
        agent_id: agent.agent_id,
        path: "/x".into(),
        reason: "gone".into(),
        actual_sha256: None,
    };
    assert_eq!(
        checked(&records.identity(&registry, &change))["binding"]["actual_sha256"],
        Value::Null
    );
    assert_eq!(
        checked(&records.loss("exec", 3, 7))["loss"],
        json!({ "what": "exec", "count": 3, "total": 7 })
    );
    let mut detail = Obj::new();
    detail.u64("n", 1);
    assert_eq!(
        checked(&records.lifecycle("agentd.stop", 4, "Stop", &detail))["detail"],
        json!({ "n": 1 })
    );
    checked(&records.decode_error("short", 3));
    assert_eq!(
        checked(&records.log_event("log.heartbeat", 1, &detail))["kind"],
        "log.heartbeat"
    );

    // An unattributed process has `"agent": null`.
    let mut unattributed = fork;
    unattributed.hdr.agent = AgentRef::default();
    assert_eq!(
        checked(&records.fork(&registry, &procs, &unattributed))["agent"],
        Value::Null
    );
}

#[test]
fn flags_and_errnos() {
    assert_eq!(open_flag_names(0), vec!["O_RDONLY"]);
    assert_eq!(
        open_flag_names((libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64),
        vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]
    );
    assert_eq!(
        open_flag_names((libc::O_RDWR | libc::O_TMPFILE) as u64),
        vec!["O_RDWR", "O_TMPFILE"]
    );
    assert_eq!(errno_name(-2), "ENOENT");
    assert_eq!(errno_name(-111), "ECONNREFUSED");
}

/// A versions table holding one enforced policy (`tcp 10.0.0.0/8:443`) for `agent`.
fn egress_versions(
    agent: u32,
) -> (
    crate::egress::state::SharedVersions,
    crate::egress::state::PolicyChange,
) {
    use crate::{
        config::{
            Policies,
            egress::{EgressMode, EgressPolicy, EgressRule, Protocol, Target, parse_cidr},
        },
        egress::{kernel::FakeKernel, state::EgressState},
    };
    let policy = EgressPolicy {
        mode: EgressMode::Enforce,
        rules: vec![EgressRule {
            id: 1,
            target: Target::Cidr(parse_cidr("10.0.0.0/8").unwrap()),
            ports: vec![(443, 443)],
            protocol: Protocol::Tcp,
            allow_private: false,
        }],
        source: "t.toml".into(),
    };
    let mut state = EgressState::new(
        FakeKernel::default(),
        Default::default(),
        std::time::Duration::ZERO,
    );
    let changes = state
        .apply(
            &Policies {
                by_agent: [(agent, policy)].into_iter().collect(),
                pending_deny: false,
            },
            0,
        )
        .unwrap();
    (state.versions(), changes.into_iter().next().unwrap())
}
