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
//! | `wait-line` | block until a line arrives on standard input |
//! | `pid` | print this process's pid and flush |
//! | `exec:PATH[:ARG...]` | replace this process with `PATH ARG...` |
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
    io::{BufRead, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    process::Command,
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

fn main() {
    for action in std::env::args().skip(1) {
        act(&action);
    }
    let _ = std::io::stdout().flush();
}
