//! Network fixtures for the egress tests: a network namespace reached through a veth pair (so
//! destinations have public-looking addresses, as a real API would), echo servers, and a real
//! DNS server (dnsmasq, from Debian's packages) holding test records.

use std::{
    io::{ErrorKind, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::unique;

/// The host's side of the test network.
pub const HOST_V4: &str = "203.0.113.1";
/// The namespace's IPv4 addresses (documentation range: public class, reachable only here).
pub const NS_V4: [&str; 4] = ["203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5"];
/// The namespace's IPv6 address.
pub const NS_V6: &str = "2001:db8:cafe::2";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Echo servers: each TCP connection gets `hello PORT\n`, each datagram `echo PORT`. Stopped
/// (and their sockets closed) on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Serves on `addrs` (TCP) and `udp` in the current network namespace.
    pub fn start(tcp: &[SocketAddr], udp: &[SocketAddr]) -> Self {
        Self::start_in(None, tcp, udp)
    }

    fn start_in(netns: Option<PathBuf>, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = (tcp.to_vec(), udp.to_vec());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        // One thread serves everything (after entering the namespace: setns applies to the
        // calling thread only).
        let thread = thread::spawn(move || {
            if let Some(path) = netns {
                let ns = std::fs::File::open(&path).expect("open the netns");
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let listeners: Vec<(u16, TcpListener)> = tcp
                .iter()
                .map(|a| {
                    let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("listen on {a}: {e}"));
                    l.set_nonblocking(true).unwrap();
                    (a.port(), l)
                })
                .collect();
            let sockets: Vec<(u16, UdpSocket)> = udp
                .iter()
                .map(|a| {
                    let s = UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                    s.set_nonblocking(true).unwrap();
                    (a.port(), s)
                })
                .collect();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for (port, listener) in &listeners {
                    if let Ok((mut stream, _)) = listener.accept() {
                        idle = false;
                        let _ = stream.set_nonblocking(false);
                        let _ = writeln!(stream, "hello {port}");
                    }
                }
                for (port, socket) in &sockets {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        idle = false;
                        let _ = socket.send_to(format!("echo {port}").as_bytes(), peer);
                    }
                }
                if idle {
                    thread::sleep(Duration::from_millis(2));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("servers ready");
        Self {
            stop,
            threads: vec![thread],
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A network namespace behind a veth pair: the host is 203.0.113.1 and 2001:db8:cafe::1, the
/// namespace holds [`NS_V4`] and [`NS_V6`], and serves TCP on 443, 8443, 9000 and 9001 and UDP
/// on 7000 and 7001 (dual stack).
pub struct Netns {
    name: String,
    host_if: String,
    servers: Option<Servers>,
}

/// TCP ports served in the namespace.
pub const NS_TCP: [u16; 4] = [443, 8443, 9000, 9001];
/// UDP ports served in the namespace.
pub const NS_UDP: [u16; 2] = [7000, 7001];

impl Netns {
    /// Creates it (removing a stale one a crashed run left).
    pub fn create() -> Self {
        let name = unique("custos");
        let suffix = &name[name.len().saturating_sub(8)..];
        let host_if = format!("cxh{}", suffix.replace('-', ""));
        let ns_if = format!("cxn{}", suffix.replace('-', ""));
        // A crashed run may have left the fixed host addresses on a stale veth.
        for stale in stale_links() {
            let _ = Command::new("ip").args(["link", "del", &stale]).status();
        }
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{HOST_V4}/24"), "dev", &host_if]);
        ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:cafe::1/64",
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        for addr in NS_V4 {
            inside(&["addr", "add", &format!("{addr}/24"), "dev", &ns_if]);
        }
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{NS_V6}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        let any = |port: u16| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        let servers = Servers::start_in(
            Some(PathBuf::from(format!("/run/netns/{name}"))),
            &NS_TCP.map(any),
            &NS_UDP.map(any),
        );
        let netns = Self {
            name,
            host_if,
            servers: Some(servers),
        };
        // Reachable from the host before any test relies on it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let target: SocketAddr = format!("{}:443", NS_V4[0]).parse().unwrap();
        while TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test namespace is not reachable"
            );
            thread::sleep(Duration::from_millis(50));
        }
        netns
    }
}

/// Veth links of earlier test runs (`cxh*`).
fn stale_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("cxh"))
        .collect()
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.servers.take();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// dnsmasq answering from its own records only, on 127.0.0.1 at a free port.
pub struct Dnsmasq {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts it with `records`: (name, IPv4 addresses, IPv6 addresses, TTL seconds).
    pub fn start(records: &[(&str, &[&str], &[&str], u32)]) -> Self {
        // A free port: bound and released (dnsmasq binds it a moment later).
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file",
        ])
        .arg(format!("--port={port}"));
        for (name, v4, v6, ttl) in records {
            // One record per address: --host-record takes one address of each family.
            for addr in v4.iter().chain(v6.iter()) {
                cmd.arg(format!("--host-record={name},{addr},{ttl}"));
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (Debian package dnsmasq-base; `cargo xtask setup` installs it)");
        let dns = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        dns.wait_ready(records.first().map_or("localhost", |r| r.0));
        dns
    }

    fn wait_ready(&self, name: &str) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let query = a_query(name);
        let mut buf = [0u8; 512];
        loop {
            let _ = socket.send_to(&query, self.addr);
            match socket.recv_from(&mut buf) {
                Ok(_) => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => panic!("querying dnsmasq: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer on {}",
                self.addr
            );
        }
    }
}

/// A minimal A query (id 1, recursion desired).
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
