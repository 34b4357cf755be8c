//! The API end to end: the real daemon, real clients (Rust over tonic, and an independent
//! Python grpcio client generated from the .proto), real workloads, real TLS certificates.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agentd::{
    api::{
        client::{Client, EventStream, Target, connect},
        proto::{self, stream_events_response::Item},
    },
    log::{
        merkle::{Hash, leaf_hash, root_of},
        note::{Checkpoint, NoteVerifier, SignedNote},
    },
};
use custos_tests::{
    Agentd, Cgroup, Dirs, Running, Value, agentctl_path, dump,
    net::{NS_V4, Netns},
    unique, workload_path,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(dirs: &Dirs) -> Client {
    connect(&Target::Unix(dirs.socket()))
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {err}", dirs.socket().display()))
}

fn request(from: Option<u64>) -> proto::StreamEventsRequest {
    proto::StreamEventsRequest {
        from_sequence: from,
        filter: None,
    }
}

fn agent_config(id: &str) -> String {
    format!(
        r#"
[[agent]]
name = "coder"
selectors = [{{ cgroup = "{id}/coder" }}]
"#
    )
}

/// Received records and checkpoints, checked as they come.
#[derive(Default)]
struct Received {
    hashes: Vec<Hash>,
    checkpoints: Vec<Checkpoint>,
}

impl Received {
    /// Takes one stream item: records must continue the sequence exactly; checkpoints must be
    /// signed by `key` and match the root of what was received.
    fn take(&mut self, item: Item, key: &NoteVerifier) {
        match item {
            Item::Event(event) => {
                assert_eq!(
                    event.sequence,
                    self.hashes.len() as u64,
                    "a gap or a duplicate in the stream"
                );
                self.hashes.push(leaf_hash(&event.record));
            }
            Item::Checkpoint(c) => {
                let note = SignedNote::parse(&c.note).expect("checkpoint note");
                note.verified_by(std::slice::from_ref(key))
                    .expect("checkpoint signed by the log key");
                let body = Checkpoint::parse_body(&note.body).expect("checkpoint body");
                assert_eq!((body.size, body.root.to_vec()), (c.tree_size, c.root_hash));
                assert!(
                    body.size <= self.hashes.len() as u64,
                    "checkpoint {} sent before its records ({} received)",
                    body.size,
                    self.hashes.len()
                );
                assert_eq!(
                    root_of(&self.hashes[..body.size as usize]),
                    body.root,
                    "the records received do not hash to checkpoint {}",
                    body.size
                );
                self.checkpoints.push(body);
            }
            Item::Lag(_) => {}
        }
    }
}

/// The next item of `stream`, within `secs` seconds (else the test fails with `stalled`).
async fn next_item(stream: &mut EventStream, secs: u64, stalled: &str) -> Item {
    tokio::time::timeout(Duration::from_secs(secs), stream.message())
        .await
        .expect(stalled)
        .expect("message")
        .expect("open stream")
        .item
        .expect("item")
}

fn public_key(dirs: &Dirs) -> NoteVerifier {
    NoteVerifier::parse(&std::fs::read_to_string(dirs.public_key()).expect("public key"))
        .expect("parse public key")
}

async fn committed(client: &mut Client) -> u64 {
    client
        .status(proto::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .log_size
}

/// Stream, disconnect mid-stream, resume from the last sequence + 1: the whole sequence is
/// gap-free and duplicate-free and verifies against every checkpoint received. A workload
/// keeps adding records throughout, so the resumed stream crosses from the files to live.
#[test]
fn resumed_stream_is_gap_free_and_verifies() {
    let dirs = Dirs::new();
    let id = unique("api-resume");
    let cgroup = Cgroup::create(&format!("{id}/coder"));
    let agentd = Agentd::start_in(&dirs, &agent_config(&id), &[]);
    let key = public_key(&dirs);
    let mut load = cgroup.command(workload_path());
    load.arg("open-rate:2000:4:/etc/hostname");
    let load = Running::spawn(load);
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let waiter = std::thread::spawn(move || {
        load.wait();
        flag.store(true, Ordering::SeqCst);
    });

    let mut received = Received::default();
    runtime().block_on(async {
        // First connection: 500 records, then hang up mid-stream.
        let mut c = client(&dirs).await;
        let mut stream = c
            .stream_events(request(Some(0)))
            .await
            .expect("stream")
            .into_inner();
        while received.hashes.len() < 500 {
            let item = next_item(&mut stream, 30, "the first stream stalled").await;
            received.take(item, &key);
        }
        drop(stream);
        drop(c);
        let first_phase_checkpoints = received.checkpoints.len();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Second connection: resume, and read until a checkpoint covers everything the workload
        // produced.
        let mut c = client(&dirs).await;
        let from = received.hashes.len() as u64;
        let mut stream = c
            .stream_events(request(Some(from)))
            .await
            .expect("stream")
            .into_inner();
        let mut target = u64::MAX;
        loop {
            let item = next_item(&mut stream, 30, "the stream stalled").await;
            received.take(item, &key);
            if target == u64::MAX && done.load(Ordering::SeqCst) {
                target = committed(&mut c).await;
            }
            if received
                .checkpoints
                .last()
                .is_some_and(|c| c.size >= target)
            {
                break;
            }
        }
        assert!(
            received.checkpoints.len() > first_phase_checkpoints,
            "no checkpoint after the resume"
        );
    });
    waiter.join().expect("load");
    let records = agentd.stop();
    let opens = records
        .iter()
        .filter(|r| r["kind"] == "file.open" && r["agent"]["name"] == "coder")
        .count();
    assert!(opens > 2000, "the workload's opens are recorded ({opens})");
    assert!(
        received.hashes.len() > 2000,
        "received {} records",
        received.hashes.len()
    );
    assert!(
        !records.iter().any(|r| r["kind"] == "sensor.loss"),
        "no loss at this rate: {}",
        dump(&records)
    );
}

/// The independent Python client streams, verifies checkpoints and checks an inclusion proof.
#[test]
fn python_grpcio_client_streams_and_proves() {
    let dirs = Dirs::new();
    let id = unique("api-python");
    let cgroup = Cgroup::create(&format!("{id}/coder"));
    let agentd = Agentd::start_in(&dirs, &agent_config(&id), &[]);
    let mut load = cgroup.command(workload_path());
    load.arg("open-rate:1000:1:/etc/hostname");
    Running::spawn(load).wait();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/api_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dirs.socket())
        .arg("--key")
        .arg(dirs.public_key())
        .args(["--min", "500", "--prove", "123"])
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python client failed:\n{text}");
    assert!(text.starts_with("ok: "), "{text}");
    agentd.stop();
}

/// 100 subscribers read while a workload runs, and one subscriber never reads: the others
/// receive everything, gap-free, through the final checkpoint while it is still stalled, the
/// sensor loses nothing, and the stalled one, when it reads at last, is told it lagged and still
/// gets every record, gap-free, from the log files.
///
/// Whether a live subscriber keeps inside the live window is a matter of machine capacity (a
/// hundred streams on two cores shared with agentd, the workload and the clients): one that
/// falls out is told it lagged and served from the log files like the stalled one, and must
/// still get every record in order. `cargo xtask bench api` measures the capacity.
#[test]
fn hundred_subscribers_and_a_stalled_one() {
    let dirs = Dirs::new();
    let id = unique("api-fanout");
    let cgroup = Cgroup::create(&format!("{id}/coder"));
    // A small live window, so the stalled subscriber overflows it with a modest workload.
    let config = format!("[api]\nsubscriber_window = 16\n{}", agent_config(&id));
    let agentd = Agentd::start_in(&dirs, &config, &[]);
    let key = public_key(&dirs);
    let rt = runtime();
    let (start, stalled_stream) = rt.block_on(async {
        let mut c = client(&dirs).await;
        let start = committed(&mut c).await;
        // The stalled subscriber has a connection of its own (HTTP/2 flow control is per
        // connection as well as per stream).
        let mut stalled = client(&dirs).await;
        let stream = stalled
            .stream_events(request(Some(start)))
            .await
            .expect("stalled stream")
            .into_inner();
        (start, (stalled, stream))
    });

    // 100 live subscribers, ten per connection.
    let mut readers = Vec::new();
    let stop_at = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    for conn in 0..10 {
        let c = rt.block_on(client(&dirs));
        for _ in 0..10 {
            let mut c = c.clone();
            let key = key.clone();
            let stop_at = Arc::clone(&stop_at);
            readers.push(rt.spawn(async move {
                let mut stream = c
                    .stream_events(request(Some(start)))
                    .await
                    .expect("stream")
                    .into_inner();
                let mut next = start;
                let mut hashes = 0u64;
                let mut lags = 0u64;
                loop {
                    let item = next_item(&mut stream, 60, "a live subscriber stalled").await;
                    match item {
                        Item::Event(e) => {
                            assert_eq!(e.sequence, next, "gap or duplicate");
                            next += 1;
                            hashes += 1;
                        }
                        Item::Checkpoint(cp) => {
                            let note = SignedNote::parse(&cp.note).expect("note");
                            note.verified_by(std::slice::from_ref(&key))
                                .expect("signed");
                            if cp.tree_size >= stop_at.load(Ordering::SeqCst) {
                                return (conn, hashes, cp.tree_size, lags);
                            }
                        }
                        Item::Lag(_) => lags += 1,
                    }
                }
            }));
        }
    }
    // Every subscriber is attached before the workload starts.
    rt.block_on(async {
        let mut c = client(&dirs).await;
        for _ in 0..200 {
            let n = c
                .status(proto::StatusRequest {})
                .await
                .expect("status")
                .into_inner()
                .subscribers
                .len();
            if n >= 101 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not every subscriber attached");
    });

    let mut load = cgroup.command(workload_path());
    // Bursts of 64 opens: many separate commits, far more than the live window.
    // 8,000 records: several megabytes, more than the stalled stream's transport buffers hold.
    load.arg("open-rate:2000:4:/etc/hostname");
    Running::spawn(load).wait();
    let (end, behind) = rt.block_on(async {
        let mut c = client(&dirs).await;
        let status = c
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let behind = status
            .subscribers
            .iter()
            .map(|s| s.behind)
            .max()
            .unwrap_or(0);
        (status.log_size, behind)
    });
    assert!(behind > 0, "the stalled subscriber shows as behind");
    stop_at.store(end, Ordering::SeqCst);
    let mut lagged_live = 0;
    for reader in readers {
        let (_, received, last, lags) = rt.block_on(reader).expect("reader");
        lagged_live += usize::from(lags > 0);
        assert!(
            last >= end,
            "a live subscriber got checkpoint {last} of {end}"
        );
        assert!(
            received >= end - start,
            "a live subscriber received {received} of {}",
            end - start
        );
    }

    eprintln!("live subscribers that fell out of the live window: {lagged_live} of 100");

    // Now the stalled one reads: told it lagged, then everything, in order.
    let (lagged, count) = rt.block_on(async {
        let (_conn, mut stream) = stalled_stream;
        let mut next = start;
        let mut lagged = false;
        loop {
            let item = next_item(&mut stream, 60, "the stalled subscriber never caught up").await;
            match item {
                Item::Event(e) => {
                    assert_eq!(e.sequence, next, "gap or duplicate after the lag");
                    next += 1;
                }
                Item::Lag(lag) => {
                    assert!(lag.behind > 0);
                    lagged = true;
                }
                Item::Checkpoint(cp) if cp.tree_size >= end => return (lagged, next - start),
                Item::Checkpoint(_) => {}
            }
        }
    });
    assert!(lagged, "the stalled subscriber was told it lagged");
    assert!(count >= end - start);
    let records = agentd.stop();
    let lost: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "sensor.loss")
        .collect();
    assert!(lost.is_empty(), "the sensor lost records: {lost:?}");
}

/// Runs agentctl with `args` as `uid`/`gid` (no supplementary groups).
fn agentctl_as(uid: u32, gid: u32, args: &[&str]) -> (i32, String) {
    let out = Command::new(agentctl_path())
        .args(args)
        .uid(uid)
        // std drops the supplementary groups when root sets a uid.
        .gid(gid)
        .output()
        .expect("agentctl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The Unix socket: root:GROUP 0660. A member of the socket group reads but cannot quarantine
/// (refused and logged); anyone else cannot connect at all.
#[test]
fn socket_access_by_group() {
    let dirs = Dirs::new();
    // The socket lives under the test's directory: others must be able to reach it.
    std::fs::set_permissions(dirs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = unique("api-socket");
    let _cgroup = Cgroup::create(&format!("{id}/coder"));
    let config = format!("[api]\nsocket_group = \"nogroup\"\n{}", agent_config(&id));
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let socket = dirs.socket();
    let socket = socket.to_str().unwrap();
    let meta = std::fs::metadata(socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let (code, out) = agentctl_as(65534, 65534, &["--socket", socket, "status"]);
    assert_eq!(code, 0, "a socket-group member reads: {out}");
    let (code, out) = agentctl_as(
        65534,
        65534,
        &[
            "--socket",
            socket,
            "quarantine",
            "coder",
            "--reason",
            "test",
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("permission denied"), "{out}");
    let denied = agentd.wait_for("api.denied record", |r| r["kind"] == "api.denied");
    assert_eq!(denied["actor"]["user"]["name"], "uid:65534(nobody)");
    assert_eq!(denied["api"]["operation"], "Quarantine");

    let (code, out) = agentctl_as(65534, 12345, &["--socket", socket, "status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("permission denied on"), "not a member: {out}");
    agentd.stop();
}

/// Writes a CA, a server certificate for 127.0.0.1, and client certificates, with openssl.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let pki = Self {
            dir: dir.join("pki"),
        };
        std::fs::create_dir_all(&pki.dir).unwrap();
        pki.ca("ca");
        pki.ca("rogue-ca");
        pki.leaf(
            "server",
            "ca",
            "/CN=agentd",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        );
        pki.leaf(
            "auditor",
            "ca",
            "/CN=auditor",
            "subjectAltName=URI:spiffe://test/auditor",
        );
        pki.leaf(
            "secops",
            "ca",
            "/CN=secops",
            "subjectAltName=DNS:secops.test",
        );
        pki.leaf(
            "intruder",
            "rogue-ca",
            "/CN=secops",
            "subjectAltName=DNS:secops.test",
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, subject: &str, ext: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        std::fs::write(self.dir.join(format!("{name}.ext")), format!("{ext}\n")).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
        std::fs::set_permissions(
            self.dir.join(format!("{name}.key")),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }

    /// agentctl's TLS arguments for client `name`.
    fn args(&self, endpoint: &str, name: &str) -> Vec<String> {
        vec![
            "--endpoint".into(),
            endpoint.into(),
            "--ca".into(),
            self.path("ca.pem").display().to_string(),
            "--cert".into(),
            self.path(&format!("{name}.pem")).display().to_string(),
            "--key".into(),
            self.path(&format!("{name}.key")).display().to_string(),
        ]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ctl(args: &[String], rest: &[&str]) -> (i32, String) {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(rest);
    custos_tests::agentctl(&all)
}

/// TCP is mutual TLS only: a reader certificate reads but cannot quarantine; a certificate from
/// another CA, or none, cannot connect (and the attempt is logged); an operator certificate
/// quarantines the agent, which cuts its egress in the kernel, and releases it.
#[test]
fn tls_roles_and_containment() {
    let _netns = Netns::create();
    let dirs = Dirs::new();
    let pki = Pki::new(dirs.path());
    let id = unique("api-tls");
    let cgroup = Cgroup::create(&format!("{id}/coder"));
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let config = format!(
        r#"
[api.tcp]
listen = "{endpoint}"
cert = "{server}"
key = "{server_key}"
client_ca = "{ca}"
client = [
  {{ identity = "spiffe://test/auditor", role = "reader" }},
  {{ identity = "secops.test", role = "operator" }},
]
{agents}"#,
        server = pki.path("server.pem").display(),
        server_key = pki.path("server.key").display(),
        ca = pki.path("ca.pem").display(),
        agents = agent_config(&id),
    );
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    let reader = pki.args(&endpoint, "auditor");
    let operator = pki.args(&endpoint, "secops");
    let intruder = pki.args(&endpoint, "intruder");

    let (code, out) = ctl(&reader, &["status"]);
    assert_eq!(code, 0, "reader status: {out}");
    let (code, out) = ctl(
        &reader,
        &[
            "tail",
            "--from",
            "0",
            "--count",
            "1",
            "--json",
            "--kind",
            "agentd.start",
        ],
    );
    assert_eq!(code, 0, "reader tail: {out}");
    assert!(out.contains("\"kind\":\"agentd.start\""), "{out}");
    let (code, out) = ctl(&reader, &["quarantine", "coder", "--reason", "not allowed"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("permission denied"), "{out}");
    agentd.wait_for("reader refused", |r| {
        r["kind"] == "api.denied" && r["actor"]["user"]["name"] == "spiffe://test/auditor"
    });

    let (code, out) = ctl(&intruder, &["status"]);
    assert_eq!(code, 2, "a certificate from another CA: {out}");
    agentd.wait_for("intruder refused", |r| {
        r["kind"] == "api.denied"
            && r["status_detail"]
                .as_str()
                .is_some_and(|d| d.contains("TLS handshake refused"))
    });
    // No certificate at all: the handshake fails.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &endpoint, "-CAfile"])
        .arg(pki.path("ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("agentd.start"), "{text}");
    agentd.wait_for("the certificate-less client refused", |r| {
        r["kind"] == "api.denied"
            && r["status_detail"]
                .as_str()
                .is_some_and(|d| d.contains("peer sent no certificates"))
    });

    // Containment through the operator certificate, enforced in the kernel.
    let target = format!("tcp:{}:443", NS_V4[0]);
    let connect = || {
        let mut cmd = cgroup.command(workload_path());
        cmd.arg(&target);
        let mut run = Running::spawn(cmd);
        let line = run.line();
        run.wait();
        line
    };
    assert!(connect().contains(" ok"), "before the quarantine");
    let (code, out) = ctl(
        &operator,
        &["quarantine", "coder", "--reason", "incident 42"],
    );
    assert_eq!(code, 0, "operator quarantine: {out}");
    let line = connect();
    assert!(line.contains("EPERM"), "quarantined: {line}");
    let (code, out) = ctl(&operator, &["agents", "coder", "--json"]);
    assert_eq!(code, 0, "{out}");
    let agent: Value = serde_json::from_str(out.trim()).expect("agent json");
    assert_eq!(agent["containment"]["quarantined"], true);
    assert_eq!(agent["containment"]["by"], "secops.test");
    let (code, out) = ctl(&operator, &["release", "coder", "--reason", "resolved"]);
    assert_eq!(code, 0, "operator release: {out}");
    assert!(connect().contains(" ok"), "after the release");

    let records = agentd.stop();
    let quarantine = records
        .iter()
        .find(|r| r["kind"] == "containment.quarantine")
        .expect("quarantine record");
    assert_eq!(quarantine["actor"]["user"]["name"], "secops.test");
    assert_eq!(quarantine["reason"], "incident 42");
    assert_eq!(quarantine["agent"]["name"], "coder");
    let denied = records
        .iter()
        .find(|r| r["kind"] == "net.connect" && r["egress"]["verdict"] == "deny")
        .unwrap_or_else(|| panic!("the refused connect is recorded: {}", dump(&records)));
    assert_eq!(denied["egress"]["rule"]["text"], "egress quarantined");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "containment.release" && r["reason"] == "resolved")
    );
}
