//! Network calls: connect (IPv4 and IPv6, TCP and UDP) with its result, UDP datagrams sent to an
//! explicit destination, listen and accept; and the egress decision for agents with a policy.
//!
//! `connect` is seen twice: the cgroup `connect4`/`connect6` hook (attached at the cgroup v2
//! root, so it covers every process) knows the destination and the socket's type and protocol,
//! and decides; the `sys_exit_connect` tracepoint knows the result. The first records the call
//! in `NET_PENDING`, the second emits it. `sendmsg4`/`sendmsg6` decide and report UDP datagrams;
//! `recvmsg4`/`recvmsg6` make the replies of redirected DNS queries come from the server the
//! agent asked. `listen` and `accept` read the socket behind the file descriptor through the
//! task's file table (offsets from BTF).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, generated::bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};
use sensor_common::{
    egress::VERDICT_NONE,
    event::{AF_INET, AF_INET6, EventKind, NetEvent, SockAddr},
    loss::{LOSS_NET, LOSS_PENDING},
};

use crate::{
    binding::{Subject, bound, reported, subject},
    egress::{Decision, decide},
    emit::{count_loss, fill_header, submit_flags},
    maps::{AGENT_POLICY, DNS_ORIGINAL, EVENTS, NET_PENDING},
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
    /// The egress verdict (`connect`).
    verdict: u32,
    /// The rule that decided.
    rule_id: u32,
    /// Non-zero when redirected to the resolver.
    redirected: u32,
    /// The policy version that decided.
    version: u64,
    /// Destination as the process asked for it (`connect`).
    remote: SockAddr,
}

/// Offset of the return value in a `syscalls:sys_exit_*` record.
const RET: usize = 16;
/// Offset of syscall argument `n` in a `syscalls:sys_enter_*` record.
const fn arg(n: usize) -> usize {
    16 + 8 * n
}

/// The destination of a `connect` or `sendmsg` (or the source of a received datagram) from the
/// hook context.
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

/// Rewrites the context's address to `to` (connect, sendmsg: the destination; recvmsg: the
/// source the process sees).
#[inline(always)]
fn rewrite(ctx: &SockAddrContext, to: &SockAddr) {
    let sa = ctx.sock_addr;
    let word =
        |i: usize| u32::from_ne_bytes([to.addr[i], to.addr[i + 1], to.addr[i + 2], to.addr[i + 3]]);
    // SAFETY: 4-byte stores to context fields these program types may write.
    unsafe {
        if to.family == AF_INET {
            (*sa).user_ip4 = word(0);
        } else {
            (*sa).user_ip6[0] = word(0);
            (*sa).user_ip6[1] = word(4);
            (*sa).user_ip6[2] = word(8);
            (*sa).user_ip6[3] = word(12);
        }
        (*sa).user_port = (to.port.to_be()) as u32;
    }
}

/// agentd's resolver on `port`, in the socket's family (127.0.0.1 or ::1).
#[inline(always)]
fn resolver(family: u16, port: u16) -> SockAddr {
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    } else {
        addr[15] = 1;
    }
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

/// Decides a connect or a datagram; applies a DNS redirection. Returns the decision and the
/// destination as the process asked for it.
#[inline(always)]
fn decide_and_redirect(
    ctx: &SockAddrContext,
    family: u16,
    tgid: u32,
) -> (Decision, SockAddr, u32, u32) {
    let (sock_type, protocol) = sock_kind(ctx);
    let dst = destination(ctx, family);
    let decision = decide(tgid, &dst, protocol as u8);
    if decision.resolver_port != 0 {
        rewrite(ctx, &resolver(family, decision.resolver_port));
        // SAFETY: the context pointer is the program's own.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = DNS_ORIGINAL.insert(cookie, dst, 0);
    }
    (decision, dst, sock_type, protocol)
}

/// match-proto:v6.18:net/ipv4/af_inet.c: BPF_CGROUP_RUN_PROG_INET4_CONNECT_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(connect4)]
pub fn net_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, AF_INET)
}

/// match-proto:v6.18:net/ipv6/af_inet6.c: BPF_CGROUP_RUN_PROG_INET6_CONNECT_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(connect6)]
pub fn net_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, AF_INET6)
}

/// Decides, records the call for the exit hook, and returns the verdict (1 allow, 0 deny:
/// `connect` then fails with `EPERM`).
#[inline(always)]
fn connect(ctx: &SockAddrContext, family: u16) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (decision, remote, sock_type, protocol) = decide_and_redirect(ctx, family, tgid);
    if reported(tgid) {
        let pending = NetPending {
            kind: PENDING_CONNECT,
            fd: 0,
            arg: 0,
            sock_type,
            protocol,
            verdict: decision.verdict,
            rule_id: decision.rule_id,
            redirected: (decision.resolver_port != 0) as u32,
            version: decision.version,
            remote,
        };
        if NET_PENDING.insert(pid_tgid, pending, 0).is_err() {
            count_loss(LOSS_PENDING);
        }
    }
    if decision.blocks() { 0 } else { 1 }
}

/// match-proto:v6.18:net/ipv4/udp.c: BPF_CGROUP_RUN_PROG_UDP4_SENDMSG_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(sendmsg4)]
pub fn net_sendmsg4(ctx: SockAddrContext) -> i32 {
    send(&ctx, AF_INET)
}

/// match-proto:v6.18:net/ipv6/udp.c: BPF_CGROUP_RUN_PROG_UDP6_SENDMSG_LOCK(sk, uaddr, ...)
#[cgroup_sock_addr(sendmsg6)]
pub fn net_sendmsg6(ctx: SockAddrContext) -> i32 {
    send(&ctx, AF_INET6)
}

/// Decides and reports a datagram sent to an explicit destination; returns the verdict.
#[inline(always)]
fn send(ctx: &SockAddrContext, family: u16) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (decision, remote, sock_type, protocol) = decide_and_redirect(ctx, family, tgid);
    if let Some(subject) = subject(tgid) {
        emit(
            EventKind::NetUdpSend,
            &subject,
            if decision.blocks() {
                -(libc_eperm() as i64)
            } else {
                0
            },
            SockAddr::default(),
            remote,
            (sock_type, protocol, 0),
            &decision,
        );
    }
    if decision.blocks() { 0 } else { 1 }
}

/// `EPERM`: what a refused call returns.
const fn libc_eperm() -> i32 {
    1
}

/// match-proto:v6.18:net/ipv4/udp.c: BPF_CGROUP_RUN_PROG_UDP4_RECVMSG_LOCK(sk, sin)
#[cgroup_sock_addr(recvmsg4)]
pub fn net_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, AF_INET);
    1
}

/// match-proto:v6.18:net/ipv6/udp.c: BPF_CGROUP_RUN_PROG_UDP6_RECVMSG_LOCK(sk, sin6)
#[cgroup_sock_addr(recvmsg6)]
pub fn net_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, AF_INET6);
    1
}

/// A reply from agentd's resolver to a redirected query is shown as coming from the server the
/// process asked, as a stub resolver expects. Only datagrams from the agent's own resolver are
/// rewritten: anything else the socket receives keeps its true source.
#[inline(always)]
fn restore_source(ctx: &SockAddrContext, family: u16) {
    // SAFETY: the context pointer is the program's own.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(original) = (unsafe { DNS_ORIGINAL.get(cookie) }).copied() else {
        return;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let port = resolver_port(tgid);
    if port == 0 || original.family != family {
        return;
    }
    let source = destination(ctx, family);
    let from_resolver = resolver(family, port);
    if source.port == from_resolver.port && source.addr == from_resolver.addr {
        rewrite(ctx, &original);
    }
}

/// The resolver port of the agent `tgid` is bound to (0: none).
#[inline(always)]
fn resolver_port(tgid: u32) -> u16 {
    let Some(binding) = bound(tgid) else {
        return 0;
    };
    // SAFETY: the value is copied out at once.
    match unsafe { AGENT_POLICY.get(binding.agent.agent_id) } {
        Some(policy) => policy.resolver_port as u16,
        None => 0,
    }
}

/// Reserves, fills and submits one network record.
#[inline(always)]
fn emit(
    kind: EventKind,
    subject: &Subject,
    ret: i64,
    local: SockAddr,
    remote: SockAddr,
    (sock_type, protocol, arg): (u32, u32, u32),
    decision: &Decision,
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
    ev.verdict = decision.verdict;
    ev.rule_id = decision.rule_id;
    ev.redirected = (decision.resolver_port != 0) as u32;
    ev.policy_version = decision.version;
    entry.submit(submit_flags());
}

/// No decision (listen, accept).
const UNDECIDED: Decision = Decision {
    verdict: VERDICT_NONE,
    rule_id: 0,
    version: 0,
    resolver_port: 0,
};

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
        let decision = Decision {
            verdict: pending.verdict,
            rule_id: pending.rule_id,
            version: pending.version,
            resolver_port: pending.redirected as u16,
        };
        emit(
            EventKind::NetConnect,
            &subject,
            ret,
            SockAddr::default(),
            pending.remote,
            (pending.sock_type, pending.protocol, 0),
            &decision,
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
        verdict: 0,
        rule_id: 0,
        redirected: 0,
        version: 0,
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
            (sock.sock_type, sock.protocol, pending.arg),
            &UNDECIDED,
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
            (sock.sock_type, sock.protocol, 0),
            &UNDECIDED,
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
