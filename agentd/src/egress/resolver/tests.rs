//! The resolver's decisions against an in-process upstream and the fake kernel. The real
//! thing (dnsmasq upstream, real maps, real agent processes) is tested in tests/tests/egress.rs.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
};

use hickory_proto::{
    op::{MessageType, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};

use super::*;
use crate::{
    config::{
        Policies,
        egress::{EgressPolicy, EgressRule, HostPattern, Protocol, Target, ip_to_v6},
    },
    control::{self, ControlRx},
    egress::kernel::FakeKernel,
};

/// The embedded configuration's demonstration agent.
fn agent_id() -> u32 {
    crate::config::Config::embedded_default().agents[0].id
}

/// An upstream answering `api.test` with a public and a private address and everything else
/// with NXDOMAIN; counts the queries it saw.
async fn upstream(count: Arc<AtomicUsize>) -> SocketAddr {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let query = Message::from_vec(&buf[..len]).unwrap();
            let mut reply = query.clone();
            reply.metadata.message_type = MessageType::Response;
            let name = query.queries[0].name().clone();
            if dns::normalize(&name.to_ascii()) == "api.test" {
                for ip in [[203, 0, 113, 7], [10, 0, 0, 1]] {
                    reply.add_answer(Record::from_rdata(
                        name.clone(),
                        30,
                        RData::A(rdata::A(Ipv4Addr::from(ip))),
                    ));
                }
            } else {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
            socket
                .send_to(&reply.to_vec().unwrap(), peer)
                .await
                .unwrap();
        }
    });
    addr
}

fn context(mode: EgressMode, upstream: Vec<SocketAddr>) -> (Context<FakeKernel>, ControlRx) {
    let mut state = EgressState::new(
        FakeKernel::default(),
        BTreeMap::from([(agent_id(), 15300)]),
        Duration::from_secs(5),
    );
    let policy = EgressPolicy {
        mode,
        rules: vec![EgressRule {
            id: 1,
            target: Target::Host(HostPattern::Exact("api.test".into())),
            ports: vec![(443, 443)],
            protocol: Protocol::Tcp,
            allow_private: false,
        }],
        source: "t.toml".into(),
    };
    state
        .apply(
            &Policies {
                by_agent: BTreeMap::from([(agent_id(), policy)]),
                pending_deny: false,
            },
            0,
        )
        .unwrap();
    let versions = state.versions();
    let (control, rx) = control::channel().unwrap();
    let registry = crate::config::Config::embedded_default();
    (
        Context {
            state: Arc::new(Mutex::new(state)),
            versions,
            upstream,
            timeout: Duration::from_millis(300),
            control,
            records: Records::new(),
            registry: Arc::new(Registry::new(&registry)),
        },
        rx,
    )
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn last_record(rx: &ControlRx) -> serde_json::Value {
    let record = rx.take(100).pop().expect("a dns.query record");
    assert_eq!(record.kind, "dns.query");
    serde_json::from_slice(&record.obj.to_bytes()).unwrap()
}

fn pinned(context: &Context<FakeKernel>, ip: &str) -> bool {
    lock(&context.state)
        .kernel()
        .lookup(agent_id(), ip_to_v6(ip.parse().unwrap()))
        .is_some()
}

#[tokio::test]
async fn allowed_names_are_pinned_before_the_reply_and_filtered() {
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(Arc::clone(&seen)).await;
    let (context, rx) = context(EgressMode::Enforce, vec![up]);
    let reply = handle(
        &context,
        agent_id(),
        &query("API.test.", RecordType::A),
        client(),
        "udp",
    )
    .await
    .unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, 0x4242, "the client's id is restored");
    let ips: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(
        ips,
        vec!["203.0.113.7"],
        "the private address is removed from a public name's answer"
    );
    assert!(pinned(&context, "203.0.113.7"));
    assert!(!pinned(&context, "10.0.0.1"));
    let record = last_record(&rx);
    assert_eq!(record["egress"]["decision"], "allowed");
    assert_eq!(record["egress"]["addresses_removed"], 1);
    assert_eq!(record["egress"]["rules"][0]["text"], "tcp api.test:443");
    assert_eq!(record["query"]["hostname"], "api.test");
    assert_eq!(record["answers"][0]["pinned"], true);
    assert_eq!(record["answers"][1]["class"], "private");
    assert_eq!(record["rcode"], "NOERROR");
    assert_eq!(record["agent"]["binding"], "resolver");
}

#[tokio::test]
async fn unlisted_names_are_refused_without_asking_upstream() {
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(Arc::clone(&seen)).await;
    let (context, rx) = context(EgressMode::Enforce, vec![up]);
    for qtype in [RecordType::A, RecordType::TXT] {
        let reply = handle(
            &context,
            agent_id(),
            &query("exfil.evil.test.", qtype),
            client(),
            "tcp",
        )
        .await
        .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        let record = last_record(&rx);
        assert_eq!(record["egress"]["decision"], "refused");
        assert_eq!(record["disposition"], "Blocked");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn monitor_mode_forwards_and_reports() {
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(Arc::clone(&seen)).await;
    let (context, rx) = context(EgressMode::Monitor, vec![up]);
    let reply = handle(
        &context,
        agent_id(),
        &query("other.test.", RecordType::A),
        client(),
        "udp",
    )
    .await
    .unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(last_record(&rx)["egress"]["decision"], "would_refuse");
    // Monitor mode never changes an answer.
    let reply = handle(
        &context,
        agent_id(),
        &query("api.test.", RecordType::A),
        client(),
        "udp",
    )
    .await
    .unwrap();
    assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 2);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_are_answered_and_recorded() {
    // Nothing listens on the upstream port.
    let dead = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let (context, rx) = context(EgressMode::Enforce, vec![dead]);
    let reply = handle(
        &context,
        agent_id(),
        &query("api.test.", RecordType::A),
        client(),
        "udp",
    )
    .await
    .unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
    let record = last_record(&rx);
    assert!(
        record["egress"]["error"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()),
        "{record}"
    );
    // Garbage with an id gets FORMERR; garbage without one gets nothing.
    let reply = handle(&context, agent_id(), &[0x12, 0x34, 0xff], client(), "udp")
        .await
        .unwrap();
    assert_eq!(dns::raw_id(&reply), Some(0x1234));
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    assert_eq!(last_record(&rx)["egress"]["decision"], "malformed");
    assert!(
        handle(&context, agent_id(), &[1], client(), "udp")
            .await
            .is_none()
    );
}

#[test]
fn resolv_conf() {
    let text = "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch example.com\nnameserver   ::1\n";
    let got: Vec<String> = parse_resolv_conf(text)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, vec!["10.0.0.2:53", "[fe80::1]:53", "[::1]:53"]);
}
