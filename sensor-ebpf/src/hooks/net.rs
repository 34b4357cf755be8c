//! Network calls: connect (IPv4 and IPv6, TCP and UDP) with its result, UDP datagrams sent to an
//! explicit destination, listen and accept.
//!
//! `connect` is seen twice: the cgroup `connect4`/`connect6` hook (attached at the cgroup v2
//! root, so it covers every process) knows the destination and the socket's type and protocol;
//! the `sys_exit_connect` tracepoint knows the result. The first records the call in
//! `NET_PENDING`, the second emits it. `listen` and `accept` read the socket behind the file
//! descriptor through the task's file table (offsets from BTF).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};
use sensor_common::{
    event::{AF_INET, AF_INET6, EventKind, NetEvent, SockAddr},
    loss::{LOSS_NET, LOSS_PENDING},
};

use crate::{
    binding::{Subject, reported, subject},
    emit::{count_loss, fill_header},
    maps::{EVENTS, NET_PENDING},
    read::{ReadError, kptr, kread, off},
};

/// `NetPending::kind` for a `connect`.
const PENDING_CONNECT: u32 = 1;
/// `NetPending::kind` for a `listen`.
const PENDING_LISTEN: u32 = 2;

/// A network call between its entry (or cgroup hook) and its exit, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetPending {
    /// `PENDING_*`.
    kind: u32,
    /// The file descriptor (`listen`).
    fd: u32,
    /// The backlog (`listen`).
    arg: u32,
    /// Socket type (`connect`).
    sock_type: u32,
    /// Socket protocol (`connect`).
    protocol: u32,
    _pad: u32,
    /// Destination (`connect`).
    remote: SockAddr,
}

/// Offset of the return value in a `syscalls:sys_exit_*` record.
const RET: usize = 16;
/// Offset of syscall argument `n` in a `syscalls:sys_enter_*` record.
const fn arg(n: usize) -> usize {
    16 + 8 * n
}

/// The destination of a `connect` or `sendmsg` from the hook context.
#[inline(always)]
fn destination(ctx: &SockAddrContext, family: u16) -> SockAddr {
    let sa = ctx.sock_addr;
    let mut addr = [0u8; 16];
    // SAFETY: `sa` is the program's context; the kernel only allows the 4-byte field loads
    // below, which is what these accesses compile to.
    let port = unsafe {
        if family == AF_INET {
            addr[..4].copy_from_slice(&(*sa).user_ip4.to_ne_bytes());
        } else {
            let ip6 = (*sa).user_ip6;
            addr[..4].copy_from_slice(&ip6[0].to_ne_bytes());
            addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
            addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
            addr[12..].copy_from_slice(&ip6[3].to_ne_bytes());
        }
        // Network byte order in the low 16 bits.
        u16::from_be((*sa).user_port as u16)
    };
    SockAddr {
        family,
        port,
        _pad: 0,
        addr,
    }
}

/// The socket's type and protocol from the hook context.
#[inline(always)]
fn sock_kind(ctx: &SockAddrContext) -> (u32, u32) {
    // SAFETY: context field loads the kernel allows for these program types.
    unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) }
}

/// match-proto:v6.18:net/ipv4/af_inet.c: BPF_CGROUP_RUN_PROG_INET4_CONNECT_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(connect4)]
pub fn net_connect4(ctx: SockAddrContext) -> i32 {
    record_connect(&ctx, AF_INET);
    // Observation only: always allow.
    1
}

/// match-proto:v6.18:net/ipv6/af_inet6.c: BPF_CGROUP_RUN_PROG_INET6_CONNECT_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(connect6)]
pub fn net_connect6(ctx: SockAddrContext) -> i32 {
    record_connect(&ctx, AF_INET6);
    1
}

#[inline(always)]
fn record_connect(ctx: &SockAddrContext, family: u16) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !reported((pid_tgid >> 32) as u32) {
        return;
    }
    let (sock_type, protocol) = sock_kind(ctx);
    let pending = NetPending {
        kind: PENDING_CONNECT,
        fd: 0,
        arg: 0,
        sock_type,
        protocol,
        _pad: 0,
        remote: destination(ctx, family),
    };
    if NET_PENDING.insert(pid_tgid, pending, 0).is_err() {
        count_loss(LOSS_PENDING);
    }
}

/// match-proto:v6.18:net/ipv4/udp.c: BPF_CGROUP_RUN_PROG_UDP4_SENDMSG_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(sendmsg4)]
pub fn net_sendmsg4(ctx: SockAddrContext) -> i32 {
    emit_send(&ctx, AF_INET);
    1
}

/// match-proto:v6.18:net/ipv6/udp.c: BPF_CGROUP_RUN_PROG_UDP6_SENDMSG_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(sendmsg6)]
pub fn net_sendmsg6(ctx: SockAddrContext) -> i32 {
    emit_send(&ctx, AF_INET6);
    1
}

#[inline(always)]
fn emit_send(ctx: &SockAddrContext, family: u16) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(subject) = subject(tgid) else {
        return;
    };
    let (sock_type, protocol) = sock_kind(ctx);
    let remote = destination(ctx, family);
    emit(
        EventKind::NetUdpSend,
        &subject,
        0,
        SockAddr::default(),
        remote,
        sock_type,
        protocol,
        0,
    );
}

/// Reserves, fills and submits one network record.
#[expect(
    clippy::too_many_arguments,
    reason = "one flat record, filled field by field"
)]
#[inline(always)]
fn emit(
    kind: EventKind,
    subject: &Subject,
    ret: i64,
    local: SockAddr,
    remote: SockAddr,
    sock_type: u32,
    protocol: u32,
    arg: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<NetEvent>(0) else {
        count_loss(LOSS_NET);
        return;
    };
    // SAFETY: NetEvent is plain integers and bytes, valid for any bit pattern; every field is
    // written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, kind, subject);
    ev.ret = ret;
    ev.local = local;
    ev.remote = remote;
    ev.sock_type = sock_type;
    ev.protocol = protocol;
    ev.arg = arg;
    ev._pad = 0;
    entry.submit(0);
}

/// `sys_exit_connect`: emits the connect recorded by the cgroup hook, with its result.
#[tracepoint]
pub fn net_connect_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(pending) = (unsafe { NET_PENDING.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = NET_PENDING.remove(pid_tgid);
    if pending.kind != PENDING_CONNECT {
        return 0;
    }
    // SAFETY: syscall exit records hold the 8-byte return value at offset 16.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 0;
    };
    if let Some(subject) = subject((pid_tgid >> 32) as u32) {
        emit(
            EventKind::NetConnect,
            &subject,
            ret,
            SockAddr::default(),
            pending.remote,
            pending.sock_type,
            pending.protocol,
            0,
        );
    }
    0
}

/// `sys_enter_listen(int fd, int backlog)`: remembers the descriptor for the exit hook.
#[tracepoint]
pub fn net_listen_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !reported((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: syscall entry records hold six 8-byte arguments from offset 16.
    let (Ok(fd), Ok(backlog)) =
        (unsafe { (ctx.read_at::<u64>(arg(0)), ctx.read_at::<u64>(arg(1))) })
    else {
        return 0;
    };
    let pending = NetPending {
        kind: PENDING_LISTEN,
        fd: fd as u32,
        arg: backlog as u32,
        sock_type: 0,
        protocol: 0,
        _pad: 0,
        remote: SockAddr::default(),
    };
    if NET_PENDING.insert(pid_tgid, pending, 0).is_err() {
        count_loss(LOSS_PENDING);
    }
    0
}

/// `sys_exit_listen`: emits a successful listen with the socket's local address.
#[tracepoint]
pub fn net_listen_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(pending) = (unsafe { NET_PENDING.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = NET_PENDING.remove(pid_tgid);
    // SAFETY: syscall exit records hold the 8-byte return value at offset 16.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 0;
    };
    // A failed listen may name a descriptor that is not a socket: only a successful one is
    // certain to have a `struct socket` behind it.
    if pending.kind != PENDING_LISTEN || ret != 0 {
        return 0;
    }
    let Some(subject) = subject((pid_tgid >> 32) as u32) else {
        return 0;
    };
    if let Ok(sock) = socket_of(pending.fd) {
        emit(
            EventKind::NetListen,
            &subject,
            ret,
            sock.local,
            SockAddr::default(),
            sock.sock_type,
            sock.protocol,
            pending.arg,
        );
    }
    0
}

/// `sys_exit_accept` and `sys_exit_accept4`: emits an accepted IPv4 or IPv6 connection.
#[tracepoint]
pub fn net_accept_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: syscall exit records hold the 8-byte return value at offset 16.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 0;
    };
    // Failed accepts (EAGAIN on every poll of a non-blocking server) are not connections.
    if ret < 0 {
        return 0;
    }
    let Some(subject) = subject((pid_tgid >> 32) as u32) else {
        return 0;
    };
    if let Ok(sock) = socket_of(ret as u32) {
        emit(
            EventKind::NetAccept,
            &subject,
            ret,
            sock.local,
            sock.remote,
            sock.sock_type,
            sock.protocol,
            0,
        );
    }
    0
}

/// What the socket behind a descriptor says about itself.
struct SocketInfo {
    local: SockAddr,
    remote: SockAddr,
    sock_type: u32,
    protocol: u32,
}

/// Reads the IPv4 or IPv6 socket behind `fd` in the current task's file table:
/// `task->files->fdt->fd[fd]->private_data` is the `struct socket`, its `sk` the `struct sock`.
#[inline(always)]
fn socket_of(fd: u32) -> Result<SocketInfo, ReadError> {
    // SAFETY: plain helper call without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = kptr(task, off!(task_files))?;
    let fdt = kptr(files, off!(files_fdt))?;
    let max_fds: u32 = kread(fdt, off!(fdt_max_fds))?;
    if fd >= max_fds {
        return Err(ReadError);
    }
    let fds = kptr(fdt, off!(fdt_fd))?;
    let file = kptr(fds, fd.wrapping_mul(8))?;
    let socket = kptr(file, off!(file_private_data))?;
    let sk = kptr(socket, off!(socket_sk))?;
    let family: u16 = kread(sk, off!(skc_family))?;
    let mut local = SockAddr {
        family,
        ..SockAddr::default()
    };
    let mut remote = SockAddr {
        family,
        ..SockAddr::default()
    };
    if family == AF_INET {
        let laddr: [u8; 4] = kread(sk, off!(skc_rcv_saddr))?;
        let raddr: [u8; 4] = kread(sk, off!(skc_daddr))?;
        local.addr[..4].copy_from_slice(&laddr);
        remote.addr[..4].copy_from_slice(&raddr);
    } else if family == AF_INET6 {
        local.addr = kread(sk, off!(skc_v6_rcv_saddr))?;
        remote.addr = kread(sk, off!(skc_v6_daddr))?;
    } else {
        return Err(ReadError);
    }
    local.port = kread(sk, off!(skc_num))?;
    remote.port = u16::from_be(kread(sk, off!(skc_dport))?);
    Ok(SocketInfo {
        local,
        remote,
        sock_type: kread::<u16>(sk, off!(sk_type)).unwrap_or(0) as u32,
        protocol: kread::<u16>(sk, off!(sk_protocol)).unwrap_or(0) as u32,
    })
}
