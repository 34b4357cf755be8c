//! agentd's DNS resolver: one per agent, on 127.0.0.1 and ::1 at the agent's port, over UDP
//! and TCP. The kernel redirects every DNS packet an agent with a policy sends (to port 53 at
//! any address) here, so the resolver sees each name before the agent can use it.
//!
//! A name no rule allows is answered REFUSED (monitor mode: forwarded, recorded as
//! `would_refuse`). An allowed name is forwarded to the upstream; the addresses of its answer
//! are pinned into the agent's allowlist *before* the reply leaves, so the agent's connect
//! never races the pin. Addresses the rule may not pin (private ones for a public name,
//! link-local and metadata always) are removed from the answer. Every query is a `dns.query`
//! record.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, ResponseCode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
};

use super::{
    addr::classify,
    dns::{self, Question},
    kernel::EgressKernel,
    state::{EgressState, PinOutcome, SharedVersions},
};
use crate::{
    clock::BootClock,
    config::egress::EgressMode,
    control::ControlTx,
    identity::registry::Registry,
    record::{DnsQuery, Records},
};

/// Queries one agent's resolver handles at once; more are answered SERVFAIL (and recorded).
const IN_FLIGHT: usize = 512;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest DNS message over UDP we accept or forward (EDNS maximum).
const UDP_MAX: usize = 65_535;

/// A resolver socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind agentd's DNS resolver for agent {agent} on {addr} ({transport})")]
pub struct BindError {
    /// Agent name.
    pub agent: String,
    /// The address.
    pub addr: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// One agent's bound sockets.
#[derive(Debug)]
pub struct Listener {
    agent: u32,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

/// Binds every agent's resolver (127.0.0.1 required; ::1 when the host has IPv6).
pub fn bind(ports: &BTreeMap<u32, u16>, registry: &Registry) -> Result<Vec<Listener>, BindError> {
    let mut listeners = Vec::with_capacity(ports.len());
    for (&agent, &port) in ports {
        let name = registry
            .agent(agent)
            .map_or_else(|| agent.to_string(), |a| a.name.clone());
        let mut listener = Listener {
            agent,
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let addr = SocketAddr::new(ip, port);
            let error = |transport, source| BindError {
                agent: name.clone(),
                addr,
                transport,
                source,
            };
            let udp = match std::net::UdpSocket::bind(addr) {
                Ok(socket) => socket,
                Err(err) if ip.is_ipv6() && err.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    tracing::warn!(%addr, "no IPv6 loopback: the resolver listens on 127.0.0.1 only");
                    continue;
                }
                Err(err) => return Err(error("udp", err)),
            };
            let tcp = std::net::TcpListener::bind(addr).map_err(|err| error("tcp", err))?;
            udp.set_nonblocking(true).map_err(|err| error("udp", err))?;
            tcp.set_nonblocking(true).map_err(|err| error("tcp", err))?;
            listener.udp.push(udp);
            listener.tcp.push(tcp);
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The upstream servers: the configured ones, else the `nameserver` lines of
/// `/etc/resolv.conf`.
pub fn upstreams(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // A scoped IPv6 address (`fe80::1%eth0`) keeps only the address.
        .filter_map(|addr| addr.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// What every resolver task shares.
pub struct Context<K> {
    /// The egress state (pins are written through it).
    pub state: Arc<Mutex<EgressState<K>>>,
    /// Policy versions, to describe decisions.
    pub versions: SharedVersions,
    /// Where allowed queries go, tried in order.
    pub upstream: Vec<SocketAddr>,
    /// How long each upstream gets.
    pub timeout: Duration,
    /// Records go to the log through here.
    pub control: ControlTx,
    /// The record builder.
    pub records: Records,
    /// Agent names for records.
    pub registry: Arc<Registry>,
}

/// Starts serving on `listeners`; the tasks run until the runtime stops.
pub fn spawn<K: EgressKernel + Send + 'static>(
    listeners: Vec<Listener>,
    context: Arc<Context<K>>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for listener in listeners {
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        for socket in listener.udp {
            let socket = Arc::new(UdpSocket::from_std(socket)?);
            tasks.push(tokio::spawn(serve_udp(
                socket,
                listener.agent,
                Arc::clone(&context),
                Arc::clone(&limit),
            )));
        }
        for tcp in listener.tcp {
            let tcp = TcpListener::from_std(tcp)?;
            tasks.push(tokio::spawn(serve_tcp(
                tcp,
                listener.agent,
                Arc::clone(&context),
                Arc::clone(&limit),
            )));
        }
    }
    Ok(tasks)
}

async fn serve_udp<K: EgressKernel + Send + 'static>(
    socket: Arc<UdpSocket>,
    agent: u32,
    context: Arc<Context<K>>,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::warn!(%err, "resolver: receive failed");
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let socket = Arc::clone(&socket);
        let context = Arc::clone(&context);
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            overloaded(&context, agent, client, "udp", &query, &socket).await;
            continue;
        };
        tokio::spawn(async move {
            if let Some(reply) = handle(&context, agent, &query, client, "udp").await {
                let _ = socket.send_to(&reply, client).await;
            }
            drop(permit);
        });
    }
}

async fn overloaded<K: EgressKernel + Send + 'static>(
    context: &Context<K>,
    agent: u32,
    client: SocketAddr,
    transport: &'static str,
    query: &[u8],
    socket: &UdpSocket,
) {
    let record = DnsQuery {
        agent,
        client,
        transport,
        question: None,
        decision: "overloaded",
        policy: None,
        rcode: dns::rcode_name(ResponseCode::ServFail),
        pins: &[],
        stripped: 0,
        upstream: None,
        error: Some(format!("more than {IN_FLIGHT} queries in flight")),
        duration_us: 0,
    };
    context
        .control
        .send(context.records.dns(&context.registry, &record));
    if let Some(id) = dns::raw_id(query) {
        let _ = socket
            .send_to(&dns::error_reply(id, None, ResponseCode::ServFail), client)
            .await;
    }
}

async fn serve_tcp<K: EgressKernel + Send + 'static>(
    listener: TcpListener,
    agent: u32,
    context: Arc<Context<K>>,
    limit: Arc<Semaphore>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "resolver: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let context = Arc::clone(&context);
        let limit = Arc::clone(&limit);
        tokio::spawn(async move {
            let _ = serve_connection(stream, client, agent, &context, &limit).await;
        });
    }
}

/// Serves length-prefixed queries on one TCP connection until the client closes it or idles.
async fn serve_connection<K: EgressKernel + Send + 'static>(
    mut stream: TcpStream,
    client: SocketAddr,
    agent: u32,
    context: &Context<K>,
    limit: &Semaphore,
) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0u8; len? as usize];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(std::io::Error::other)??;
        let Ok(_permit) = limit.try_acquire() else {
            return Ok(());
        };
        if let Some(reply) = handle(context, agent, &query, client, "tcp").await {
            stream.write_u16(reply.len() as u16).await?;
            stream.write_all(&reply).await?;
        }
    }
}

/// Handles one query; returns the reply (none for a message too broken to answer).
pub async fn handle<K: EgressKernel + Send + 'static>(
    context: &Context<K>,
    agent: u32,
    query: &[u8],
    client: SocketAddr,
    transport: &'static str,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let mut record = DnsQuery {
        agent,
        client,
        transport,
        question: None,
        decision: "malformed",
        policy: None,
        rcode: String::new(),
        pins: &[],
        stripped: 0,
        upstream: None,
        error: None,
        duration_us: 0,
    };
    let send = |record: &mut DnsQuery<'_>, rcode: String| {
        record.rcode = rcode;
        record.duration_us = started.elapsed().as_micros() as u64;
        context
            .control
            .send(context.records.dns(&context.registry, record));
    };
    let (message, question) = match dns::parse_query(query) {
        Ok(parsed) => parsed,
        Err(err) => {
            record.error = Some(err.to_string());
            send(&mut record, dns::rcode_name(ResponseCode::FormErr));
            return dns::raw_id(query).map(|id| dns::error_reply(id, None, ResponseCode::FormErr));
        }
    };
    record.question = Some(&question);
    let decision = lock(&context.state).name(agent, &question.name);
    let info = decision.as_ref().and_then(|d| {
        context
            .versions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent, d.version)
    });
    if let (Some(d), Some(info)) = (&decision, &info) {
        record.policy = Some((Arc::clone(info), d.rules.clone()));
    }
    let enforce = decision
        .as_ref()
        .is_some_and(|d| d.mode == EgressMode::Enforce);
    record.decision = match &decision {
        None => "no_policy",
        Some(d) if d.allowed() => "allowed",
        Some(_) if enforce => "refused",
        Some(_) => "would_refuse",
    };
    if record.decision == "refused" {
        send(&mut record, dns::rcode_name(ResponseCode::Refused));
        return Some(dns::error_reply(
            question.id,
            Some(&message),
            ResponseCode::Refused,
        ));
    }

    let (mut response, mut raw, upstream) =
        match forward(context, query, &question, transport).await {
            Ok(answered) => answered,
            Err(err) => {
                record.error = Some(err);
                send(&mut record, dns::rcode_name(ResponseCode::ServFail));
                return Some(dns::error_reply(
                    question.id,
                    Some(&message),
                    ResponseCode::ServFail,
                ));
            }
        };
    record.upstream = Some(upstream);
    let addresses: Vec<(IpAddr, u32)> = dns::answers(&response, &question.name)
        .into_iter()
        .map(|a| (a.ip, a.ttl))
        .collect();
    let pins: Vec<PinOutcome> = if record.decision == "allowed" {
        match lock(&context.state).pin(agent, &question.name, &addresses, BootClock::boot_now_ns())
        {
            Ok(pins) => pins,
            Err(err) => {
                // The addresses could not be allowed: an answer the agent could not use, and
                // in monitor mode a decision that would have gone wrong.
                record.error = Some(format!(
                    "{err}: {}",
                    std::error::Error::source(&err)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ));
                if enforce {
                    send(&mut record, dns::rcode_name(ResponseCode::ServFail));
                    return Some(dns::error_reply(
                        question.id,
                        Some(&message),
                        ResponseCode::ServFail,
                    ));
                }
                Vec::new()
            }
        }
    } else {
        addresses
            .iter()
            .map(|&(ip, _)| PinOutcome {
                ip,
                class: classify(ip),
                pinned: false,
                expires_ns: 0,
            })
            .collect()
    };
    record.pins = &pins;
    if enforce {
        let refused: HashSet<IpAddr> = pins.iter().filter(|p| !p.pinned).map(|p| p.ip).collect();
        if !refused.is_empty() {
            record.stripped = dns::strip(&mut response, |ip| !refused.contains(&ip));
            response.metadata.id = question.id;
            match response.to_vec() {
                Ok(bytes) => raw = bytes,
                Err(err) => {
                    record.error = Some(format!("cannot re-encode the filtered answer: {err}"));
                    send(&mut record, dns::rcode_name(ResponseCode::ServFail));
                    return Some(dns::error_reply(
                        question.id,
                        Some(&message),
                        ResponseCode::ServFail,
                    ));
                }
            }
        }
    }
    raw[..2].copy_from_slice(&question.id.to_be_bytes());
    send(
        &mut record,
        dns::rcode_name(response.metadata.response_code),
    );
    Some(raw)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random message id for the upstream query (so an off-path answer must guess it).
fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: the pointer and length describe `id`.
    let _ = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    u16::from_ne_bytes(id)
}

/// Sends the query to each upstream in turn (over the client's transport) until one answers.
/// Returns the parsed answer, its bytes, and who answered.
async fn forward<K>(
    context: &Context<K>,
    query: &[u8],
    question: &Question,
    transport: &str,
) -> Result<(Message, Vec<u8>, SocketAddr), String> {
    if context.upstream.is_empty() {
        return Err(
            "no upstream DNS server (set [dns] upstream or a nameserver in /etc/resolv.conf)"
                .into(),
        );
    }
    let id = random_id();
    let mut outgoing = query.to_vec();
    outgoing[..2].copy_from_slice(&id.to_be_bytes());
    let mut errors = Vec::new();
    for &upstream in &context.upstream {
        let attempt = async {
            if transport == "tcp" {
                exchange_tcp(upstream, &outgoing).await
            } else {
                exchange_udp(upstream, &outgoing, id).await
            }
        };
        match tokio::time::timeout(context.timeout, attempt).await {
            Ok(Ok(raw)) => match dns::parse_response(&raw, id, question) {
                Ok(message) => return Ok((message, raw, upstream)),
                Err(err) => errors.push(format!("{upstream}: {err}")),
            },
            Ok(Err(err)) => errors.push(format!("{upstream}: {err}")),
            Err(_) => errors.push(format!(
                "{upstream}: no answer within {} ms",
                context.timeout.as_millis()
            )),
        }
    }
    Err(errors.join("; "))
}

async fn exchange_udp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Anything else arriving on this port is not our answer; keep waiting.
        if dns::raw_id(&buf[..len]) == Some(id) {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.write_u16(query.len() as u16).await?;
    stream.write_all(query).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; len as usize];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

#[cfg(test)]
mod tests;
