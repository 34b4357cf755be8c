//! A workload for the end-to-end tests: performs exactly the system calls it is told to, in
//! order, so a test knows which events agentd must report.
//!
//! Each argument is one action, `NAME` or `NAME:ARG[:ARG...]`:
//!
//! | action | system call(s) |
//! |---|---|
//! | `open:PATH` | `open(PATH, O_RDONLY)` |
//! | `openat:PATH` | `openat(AT_FDCWD, PATH, O_RDONLY)` |
//! | `openat2:PATH` | `openat2(AT_FDCWD, PATH, {O_RDONLY})` |
//! | `creat:PATH` | `creat(PATH, 0640)` |
//! | `unlink:PATH` | `unlink(PATH)` |
//! | `unlinkat:PATH` | `unlinkat(AT_FDCWD, PATH, 0)` |
//! | `rename:A:B`, `renameat:A:B`, `renameat2:A:B` | the matching call (`renameat2` with `RENAME_NOREPLACE`) |
//! | `connect:ADDR` | TCP `connect` to `ADDR` (`1.2.3.4:80` or `[::1]:80`) |
//! | `udp-connect:ADDR` | UDP socket, `connect`, `send` |
//! | `sendto:ADDR` | UDP socket, `sendto(ADDR)` |
//! | `listen-accept` | TCP listen on 127.0.0.1 (ephemeral), connect to itself, `accept` |
//! | `spawn:N:PATH[:ARG...]` | run `PATH ARG...` N times, one after another (fork + exec + wait each) |
//! | `open-rate:RATE:SECS:PATH` | `openat(PATH)` RATE times a second for SECS seconds (0 = flat out); prints the count |
//! | `tcp:ADDR` | TCP connect (2 s timeout), read one line; prints `tcp ADDR ok LINE` or `tcp ADDR err WHY` |
//! | `udp:ADDR` | UDP `sendto(ADDR)`, wait 1 s for the echo; prints `udp ADDR ok REPLY` or `... err WHY` |
//! | `udpc:ADDR` | the same over a connected UDP socket (`connect`, `send`, `recv`) |
//! | `resolve:NAME` | `getaddrinfo(NAME)` (glibc, `/etc/resolv.conf`); prints `resolve NAME ok IP,IP` or `... err WHY` |
//! | `dns:SERVER:NAME[:tcp]` | an A query for NAME sent straight to SERVER (`ip:port`, IPv6 in brackets) over UDP or TCP; prints `dns NAME ok RCODE IP,IP (from SOURCE)` or `... err WHY` |
//! | `connect-bench:tcp\|udp:ADDR:N` | N sockets, each `connect`ed to ADDR and closed; times the `connect` calls; prints `connect-bench ... ok median_ns=M p99_ns=P` |
//! | `dns-bench:SERVER:NAME:N` | N A queries for NAME to SERVER over UDP, one after another; times each answer; prints `dns-bench ... ok median_ns=M p99_ns=P` |
//! | `wait-line` | block until a line arrives on standard input |
//! | `pid` | print this process's pid and flush |
//! | `exec:PATH[:ARG...]` | replace this process with `PATH ARG...` |
//! | `exec-rest:PATH` | replace this process with `PATH`, passing it the remaining arguments (which may contain `:`) |
//! | `spawn-rest:N:PATH` | run `PATH` N times, one after another, passing each the remaining arguments (which may contain `:`); the last action |
//! | `exit:CODE` | exit with `CODE` |
//!
//! An action that fails prints why on standard error and the workload carries on: tests assert
//! on failed calls too.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test helper talking to its test"
)]

use std::{
    ffi::CString,
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    process::Command,
    time::Duration,
};

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in arguments")
}

fn check(what: &str, ret: i64) {
    if ret < 0 {
        eprintln!("workload: {what}: {}", std::io::Error::last_os_error());
    }
}

/// Closes a file descriptor a successful call returned.
fn close(fd: i64) {
    if fd >= 0 {
        // SAFETY: closing a descriptor this process just opened and owns.
        // SAFETY: pointers to live CStrings or a local struct, valid during the call.
        unsafe { libc::close(fd as i32) };
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn act(action: &str) {
    let parts: Vec<&str> = action.split(':').collect();
    let arg = |i: usize| {
        parts
            .get(i)
            .copied()
            .unwrap_or_else(|| panic!("action {action}: missing argument {i}"))
    };
    match parts[0] {
        "open" => {
            let ret =
                // SAFETY: pointers to live CStrings or a local struct, valid during the call.
                unsafe { libc::syscall(libc::SYS_open, cstr(arg(1)).as_ptr(), libc::O_RDONLY) };
            check(action, ret);
            close(ret);
        }
        "openat" => {
            // SAFETY: pointers to live CStrings or a local struct, valid during the call.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    cstr(arg(1)).as_ptr(),
                    libc::O_RDONLY,
                )
            };
            check(action, ret);
            close(ret);
        }
        "openat2" => {
            let how = OpenHow {
                flags: libc::O_RDONLY as u64,
                mode: 0,
                resolve: 0,
            };
            // SAFETY: pointers to live CStrings or a local struct, valid during the call.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    cstr(arg(1)).as_ptr(),
                    &how as *const OpenHow,
                    size_of::<OpenHow>(),
                )
            };
            check(action, ret);
            close(ret);
        }
        "creat" => {
            // SAFETY: pointers to live CStrings or a local struct, valid during the call.
            let ret = unsafe { libc::syscall(libc::SYS_creat, cstr(arg(1)).as_ptr(), 0o640) };
            check(action, ret);
            close(ret);
        }
        // SAFETY: pointers to live CStrings or a local struct, valid during the call.
        "unlink" => check(action, unsafe {
            libc::syscall(libc::SYS_unlink, cstr(arg(1)).as_ptr())
        }),
        // SAFETY: pointers to live CStrings or a local struct, valid during the call.
        "unlinkat" => check(action, unsafe {
            libc::syscall(libc::SYS_unlinkat, libc::AT_FDCWD, cstr(arg(1)).as_ptr(), 0)
        }),
        // SAFETY: pointers to live CStrings or a local struct, valid during the call.
        "rename" => check(action, unsafe {
            libc::syscall(
                libc::SYS_rename,
                cstr(arg(1)).as_ptr(),
                cstr(arg(2)).as_ptr(),
            )
        }),
        // SAFETY: pointers to live CStrings or a local struct, valid during the call.
        "renameat" => check(action, unsafe {
            libc::syscall(
                libc::SYS_renameat,
                libc::AT_FDCWD,
                cstr(arg(1)).as_ptr(),
                libc::AT_FDCWD,
                cstr(arg(2)).as_ptr(),
            )
        }),
        // SAFETY: pointers to live CStrings or a local struct, valid during the call.
        "renameat2" => check(action, unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                cstr(arg(1)).as_ptr(),
                libc::AT_FDCWD,
                cstr(arg(2)).as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        }),
        "connect" => {
            let addr: SocketAddr = parts[1..].join(":").parse().expect("socket address");
            if let Err(err) = TcpStream::connect(addr) {
                eprintln!("workload: {action}: {err}");
            }
        }
        "udp-connect" => {
            let addr: SocketAddr = parts[1..].join(":").parse().expect("socket address");
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local).expect("udp bind");
            socket.connect(addr).expect("udp connect");
            let _ = socket.send(b"custos");
        }
        "sendto" => {
            let addr: SocketAddr = parts[1..].join(":").parse().expect("socket address");
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local).expect("udp bind");
            if let Err(err) = socket.send_to(b"custos", addr) {
                eprintln!("workload: {action}: {err}");
            }
        }
        "tcp" => report(action, tcp(&parts[1..].join(":"))),
        "udp" => report(action, udp(&parts[1..].join(":"), false)),
        "udpc" => report(action, udp(&parts[1..].join(":"), true)),
        "resolve" => report(action, resolve(arg(1))),
        "dns" => {
            let tcp = parts.last() == Some(&"tcp");
            let end = if tcp { parts.len() - 1 } else { parts.len() };
            let name = parts[end - 1];
            let server = parts[1..end - 1].join(":");
            report(action, dns(&server, name, tcp));
        }
        "connect-bench" => {
            let n: usize = parts[parts.len() - 1].parse().expect("count");
            let addr = parts[2..parts.len() - 1].join(":");
            report(action, connect_bench(arg(1) == "tcp", &addr, n));
        }
        "dns-bench" => {
            let n: usize = parts[parts.len() - 1].parse().expect("count");
            let name = parts[parts.len() - 2];
            let server = parts[1..parts.len() - 2].join(":");
            report(action, dns_bench(&server, name, n));
        }
        "listen-accept" => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
            let addr = listener.local_addr().expect("local address");
            println!("listening {addr}");
            let client = std::thread::spawn(move || TcpStream::connect(addr));
            let (_stream, peer) = listener.accept().expect("accept");
            println!("accepted {peer}");
            let _ = client.join();
        }
        "spawn" => {
            let n: u32 = arg(1).parse().expect("count");
            for _ in 0..n {
                match Command::new(arg(2)).args(&parts[3..]).status() {
                    Ok(_) => {}
                    Err(err) => eprintln!("workload: {action}: {err}"),
                }
            }
        }
        "open-rate" => {
            let rate: u64 = arg(1).parse().expect("rate");
            let secs: f64 = arg(2).parse().expect("seconds");
            let path = cstr(arg(3));
            let start = std::time::Instant::now();
            let mut done: u64 = 0;
            while start.elapsed().as_secs_f64() < secs {
                // Batches of 64 calls, then sleep until the schedule catches up.
                for _ in 0..64 {
                    // SAFETY: a live NUL-terminated path.
                    let fd = unsafe {
                        libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            libc::O_RDONLY,
                        )
                    };
                    close(fd);
                }
                done += 64;
                if rate > 0 {
                    let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            println!("{done}");
        }
        "wait-line" => {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
        "pid" => {
            println!("{}", std::process::id());
            let _ = std::io::stdout().flush();
        }
        "exec" => {
            let err = Command::new(arg(1)).args(&parts[2..]).exec();
            eprintln!("workload: {action}: {err}");
        }
        "exit" => std::process::exit(arg(1).parse().expect("exit code")),
        other => panic!("unknown action {other}"),
    }
}

/// Prints the outcome of a network action as one line, for the test to parse.
fn report(action: &str, result: Result<String, String>) {
    match result {
        Ok(detail) => println!("{action} ok {detail}"),
        Err(why) => println!("{action} err {why}"),
    }
    let _ = std::io::stdout().flush();
}

/// An error as the test matches it: the errno name when there is one (`EPERM`), else the text.
fn why(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code)
            .to_string()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned(),
        None if err.kind() == std::io::ErrorKind::WouldBlock
            || err.kind() == std::io::ErrorKind::TimedOut =>
        {
            "timeout".to_owned()
        }
        None => err.to_string(),
    }
}

fn tcp(addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| why(&e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| why(&e))?;
    let mut line = String::new();
    std::io::BufReader::new(&mut stream)
        .read_line(&mut line)
        .map_err(|e| why(&e))?;
    Ok(line.trim().to_owned())
}

fn udp(addr: &str, connected: bool) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
    let local = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(local).map_err(|e| why(&e))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| why(&e))?;
    if connected {
        socket.connect(addr).map_err(|e| why(&e))?;
        socket.send(b"custos").map_err(|e| why(&e))?;
    } else {
        socket.send_to(b"custos", addr).map_err(|e| why(&e))?;
    }
    let mut buf = [0u8; 512];
    let len = socket.recv(&mut buf).map_err(|e| why(&e))?;
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn resolve(name: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<String> = (name, 0)
        .to_socket_addrs()
        .map_err(|e| e.to_string().replace(' ', "_"))?
        .map(|a| a.ip().to_string())
        .collect();
    Ok(addrs.join(","))
}

fn dns(server: &str, name: &str, over_tcp: bool) -> Result<String, String> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    let server: SocketAddr = server.parse().map_err(|e| format!("bad server: {e}"))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii(name).map_err(|e| e.to_string())?,
        RecordType::A,
    ));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let (reply, source) = if over_tcp {
        let mut stream =
            TcpStream::connect_timeout(&server, Duration::from_secs(2)).map_err(|e| why(&e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| why(&e))?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).map_err(|e| why(&e))?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).map_err(|e| why(&e))?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).map_err(|e| why(&e))?;
        (reply, server)
    } else {
        let local = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(local).map_err(|e| why(&e))?;
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| why(&e))?;
        socket.send_to(&bytes, server).map_err(|e| why(&e))?;
        let mut buf = vec![0u8; 4096];
        let (len, source) = socket.recv_from(&mut buf).map_err(|e| why(&e))?;
        buf.truncate(len);
        (buf, source)
    };
    let reply = Message::from_vec(&reply).map_err(|e| e.to_string())?;
    let ips: Vec<String> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    let code = u16::from(reply.metadata.response_code);
    let rcode = match code {
        0 => "NOERROR".to_owned(),
        2 => "SERVFAIL".to_owned(),
        3 => "NXDOMAIN".to_owned(),
        5 => "REFUSED".to_owned(),
        other => format!("RCODE{other}"),
    };
    Ok(format!("{rcode} {} (from {source})", ips.join(",")))
}

/// `median_ns=M p99_ns=P` of the samples.
fn summary(mut samples: Vec<u64>) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "median_ns={} p99_ns={} n={}",
        at(0.5),
        at(0.99),
        samples.len()
    )
}

/// Times `connect` alone: socket creation and close stay outside the measurement.
fn connect_bench(tcp: bool, addr: &str, n: usize) -> Result<String, String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let addr: SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
    let (storage, len) = sockaddr(&addr);
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: plain socket creation; the descriptor is owned at once.
        let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(why(&std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let start = std::time::Instant::now();
        // SAFETY: `storage` holds a valid socket address of `len` bytes.
        let ret = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
        samples.push(start.elapsed().as_nanos() as u64);
        if ret != 0 {
            return Err(why(&std::io::Error::last_os_error()));
        }
    }
    Ok(summary(samples))
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn dns_bench(server: &str, name: &str, n: usize) -> Result<String, String> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let server: SocketAddr = server.parse().map_err(|e| format!("bad server: {e}"))?;
    let local = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(local).map_err(|e| why(&e))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| why(&e))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii(name).map_err(|e| e.to_string())?,
        RecordType::A,
    ));
    let mut buf = vec![0u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        query.metadata.id = i as u16;
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let start = std::time::Instant::now();
        socket.send_to(&bytes, server).map_err(|e| why(&e))?;
        loop {
            let len = socket.recv(&mut buf).map_err(|e| why(&e))?;
            if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == i as u16 {
                break;
            }
        }
        samples.push(start.elapsed().as_nanos() as u64);
    }
    Ok(summary(samples))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (i, action) in args.iter().enumerate() {
        if let Some(path) = action.strip_prefix("exec-rest:") {
            let err = Command::new(path).args(&args[i + 1..]).exec();
            eprintln!("workload: {action}: {err}");
            std::process::exit(127);
        }
        if let Some(rest) = action.strip_prefix("spawn-rest:") {
            let (n, path) = rest.split_once(':').expect("spawn-rest:N:PATH");
            let n: u32 = n.parse().expect("count");
            for _ in 0..n {
                if let Err(err) = Command::new(path).args(&args[i + 1..]).status() {
                    eprintln!("workload: {action}: {err}");
                }
            }
            break;
        }
        act(action);
    }
    let _ = std::io::stdout().flush();
}
