//! Building the records agentd writes: JSON objects shaped after OCSF (Process Activity 1007,
//! File System Activity 1001, Network Activity 4001), each carrying the agent identity and the
//! selector that matched, plus agentd's own records (lifecycle, loss, identity changes).
//!
//! `docs/events.md` describes every field. Records are written with [`crate::json::Obj`], so
//! their bytes are canonical (RFC 8785) as they are built: no intermediate tree, and the same
//! bytes are what the log hashes.

use std::net::{Ipv4Addr, Ipv6Addr};

use sensor_common::{
    event::{
        AF_INET, AF_INET6, AT_FDCWD, EXEC_ARGV_TRUNCATED, EXEC_EXE_CHANGED,
        EXEC_FILENAME_TRUNCATED, EXEC_SCRIPT, EventHeader, EventKind, ExecEvent, ExitEvent,
        FILE_PATH_TRUNCATED, FILE_PATH2_TRUNCATED, FileEvent, FileSyscall, ForkEvent, InodeId,
        NetEvent, SockAddr,
    },
    identity::{AgentRef, HOW_DIRECT, HOW_INHERITED, HOW_PENDING},
};

pub use egress::DnsQuery;

use crate::{
    clock::BootClock,
    egress::state::Versions,
    identity::{IdentityChange, registry::Registry},
    json::Obj,
    process::{ProcessInfo, ProcessTable},
    sensor::decode::{bytes_of, split_argv},
};

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// Writes `bytes` (kernel data: anything) under `key`; invalid UTF-8 is replaced, and the exact
/// bytes are kept in hex under `hex_key`, so nothing is lost.
fn text_field(obj: &mut Obj, key: &'static str, hex_key: &'static str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            obj.str(key, s);
        }
        Err(_) => {
            obj.str(key, &String::from_utf8_lossy(bytes));
            obj.str(hex_key, &hex::encode(bytes));
        }
    }
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn inode(obj: &mut Obj, key: &'static str, inode: &InodeId) {
    obj.obj(key, |o| {
        o.u64("dev", inode.dev as u64).u64_str("ino", inode.ino);
    });
}

/// The errno name for a negative return value (`-2` → `ENOENT`).
pub fn errno_name(ret: i64) -> String {
    match nix::errno::Errno::from_raw((-ret) as i32) {
        nix::errno::Errno::UnknownErrno => format!("errno {}", -ret),
        known => format!("{known:?}"),
    }
}

fn status(obj: &mut Obj, ret: i64, success: bool) {
    if success {
        obj.u64("status_id", 1).str("status", "Success");
    } else {
        obj.u64("status_id", 2)
            .str("status", "Failure")
            .str("status_code", &errno_name(ret))
            .str(
                "status_detail",
                nix::errno::Errno::from_raw((-ret) as i32).desc(),
            );
    }
}

/// The symbolic names of `open` flags.
pub fn open_flag_names(flags: u64) -> Vec<&'static str> {
    let flags = flags as i32;
    let mut names = vec![match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_SYNC, "O_SYNC"),
    ] {
        if flags & bit == bit {
            names.push(name);
        }
    }
    // O_TMPFILE includes O_DIRECTORY's bit.
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        names.retain(|n| *n != "O_DIRECTORY");
        names.push("O_TMPFILE");
    }
    names
}

/// The address of a socket address, as text.
pub fn ip_string(addr: &SockAddr) -> String {
    match addr.family {
        AF_INET => {
            Ipv4Addr::new(addr.addr[0], addr.addr[1], addr.addr[2], addr.addr[3]).to_string()
        }
        AF_INET6 => Ipv6Addr::from(addr.addr).to_string(),
        _ => String::new(),
    }
}

fn endpoint(obj: &mut Obj, key: &'static str, addr: &SockAddr) {
    obj.obj(key, |o| {
        o.str("ip", &ip_string(addr)).u64("port", addr.port as u64);
    });
}

fn protocol_name(protocol: u32) -> &'static str {
    match protocol as i32 {
        libc::IPPROTO_TCP => "tcp",
        libc::IPPROTO_UDP => "udp",
        libc::IPPROTO_ICMP => "icmp",
        libc::IPPROTO_ICMPV6 => "icmpv6",
        libc::IPPROTO_SCTP => "sctp",
        _ => "other",
    }
}

/// An OCSF class.
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const PROCESS_ACTIVITY: Class = Class {
    uid: 1007,
    name: "Process Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const FILE_ACTIVITY: Class = Class {
    uid: 1001,
    name: "File System Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const ENTITY_MANAGEMENT: Class = Class {
    uid: 3004,
    name: "Entity Management",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
const APPLICATION_LIFECYCLE: Class = Class {
    uid: 6002,
    name: "Application Lifecycle",
    category_uid: 6,
    category_name: "Application Activity",
};
const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};

/// A record and its kind (the log counts records it could not write by kind).
pub struct Record {
    /// The `kind` member's value.
    pub kind: &'static str,
    /// The record.
    pub obj: Obj,
}

/// `"<pid>:<start_ns>"`: a process named without pid-reuse ambiguity.
pub fn process_uid(pid: u32, start_ns: u64) -> String {
    format!("{pid}:{start_ns}")
}

/// Builds records; holds what every record shares.
pub struct Records {
    clock: BootClock,
    metadata: Vec<u8>,
    device: Vec<u8>,
}

impl Default for Records {
    fn default() -> Self {
        Self::new()
    }
}

impl Records {
    /// A builder for this host.
    pub fn new() -> Self {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let mut metadata = Obj::new();
        metadata
            .obj("product", |p| {
                p.str("name", "Custos")
                    .str("vendor_name", "Custos")
                    .str("version", env!("CARGO_PKG_VERSION"));
            })
            .str("version", OCSF_VERSION);
        let mut device = Obj::new();
        device.str("hostname", &hostname);
        Self {
            clock: BootClock::new(),
            metadata: metadata.to_bytes(),
            device: device.to_bytes(),
        }
    }

    /// Re-reads the clock offset when due.
    pub fn refresh_clock(&mut self) {
        self.clock.refresh();
    }

    /// Wall-clock nanoseconds for a boot-clock stamp.
    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        self.clock.wall_ns(boot_ns)
    }

    fn base(
        &self,
        kind: &str,
        class: &Class,
        activity_id: u32,
        activity: &str,
        time_ns: u64,
    ) -> Obj {
        let mut obj = Obj::new();
        obj.str("kind", kind)
            .u64("time", time_ns / 1_000_000)
            .u64_str("time_ns", time_ns)
            .u64("class_uid", class.uid as u64)
            .str("class_name", class.name)
            .u64("category_uid", class.category_uid as u64)
            .str("category_name", class.category_name)
            .u64("activity_id", activity_id as u64)
            .str("activity_name", activity)
            .u64("type_uid", class.uid as u64 * 100 + activity_id as u64)
            .raw("metadata", &self.metadata)
            .raw("device", &self.device);
        obj
    }

    fn severity(obj: &mut Obj, id: u64) {
        let name = match id {
            1 => "Informational",
            2 => "Low",
            3 => "Medium",
            4 => "High",
            5 => "Critical",
            _ => "Unknown",
        };
        obj.u64("severity_id", id).str("severity", name);
    }

    /// The `agent` member: identity, the selector that matched, how the binding came about.
    fn agent(obj: &mut Obj, registry: &Registry, agent: AgentRef, how: u32) {
        let binding = match how {
            HOW_DIRECT => "direct",
            HOW_INHERITED => "inherited",
            HOW_PENDING => "pending",
            _ => "none",
        };
        Self::agent_as(obj, registry, agent, binding);
    }

    /// The `agent` member with `binding` saying how the record was attributed.
    fn agent_as(obj: &mut Obj, registry: &Registry, agent: AgentRef, binding: &str) {
        let Some(spec) = registry.agent(agent.agent_id) else {
            obj.null("agent");
            return;
        };
        obj.obj("agent", |a| {
            a.str("uid", &spec.spiffe_id)
                .str("name", &spec.name)
                .str("owner", &spec.owner)
                .str("trust_tier", spec.trust_tier.as_str())
                .strs("scopes", spec.scopes.iter().map(String::as_str))
                .str("binding", binding);
            match registry.selector(agent.selector_id) {
                Some(s) => a.obj("selector", |o| {
                    o.u64("id", s.id as u64)
                        .str("type", s.kind.type_name())
                        .str("value", &s.kind.value());
                }),
                None => a.null("selector"),
            };
        });
    }

    /// The `actor.process` member for the task in `hdr`, enriched from the process table.
    fn actor(&self, obj: &mut Obj, hdr: &EventHeader, info: Option<&ProcessInfo>) {
        obj.obj("actor", |actor| {
            actor.obj("process", |p| {
                p.u64("pid", hdr.tgid as u64)
                    .u64("tid", hdr.tid as u64)
                    .str("uid", &process_uid(hdr.tgid, hdr.start_ns))
                    .u64_str("start_ns", hdr.start_ns)
                    .u64("created_time", self.wall_ns(hdr.start_ns) / 1_000_000)
                    .str("name", &lossy(bytes_of(&hdr.comm, hdr.comm.len() as u32)))
                    .obj("user", |u| {
                        u.u64("uid", hdr.uid as u64).u64("gid", hdr.gid as u64);
                    })
                    .u64("cgroup_id", hdr.cgroup_id);
                if let Some(info) = info {
                    if let Some(exe) = &info.exe {
                        p.obj("file", |f| {
                            f.str("path", exe).str("name", basename(exe));
                        });
                    }
                    if let Some(cmdline) = &info.cmdline {
                        p.str("cmd_line", cmdline);
                    }
                    if info.ppid != 0 {
                        p.obj("parent_process", |pp| {
                            pp.u64("pid", info.ppid as u64)
                                .str("uid", &process_uid(info.ppid, info.parent_start_ns));
                        });
                    }
                }
            });
        });
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the OCSF classification of one record"
    )]
    fn activity(
        &self,
        registry: &Registry,
        procs: &ProcessTable,
        hdr: &EventHeader,
        kind: &'static str,
        class: &Class,
        activity_id: u32,
        activity: &str,
        severity: u64,
    ) -> Obj {
        let mut obj = self.base(
            kind,
            class,
            activity_id,
            activity,
            self.wall_ns(hdr.ktime_ns),
        );
        Self::severity(&mut obj, severity);
        Self::agent(&mut obj, registry, hdr.agent, hdr.how);
        self.actor(&mut obj, hdr, procs.get(hdr.tgid));
        obj
    }

    /// `process.exec`. `previous` is what the table knew of the process before the exec.
    pub fn exec(
        &self,
        registry: &Registry,
        procs: &ProcessTable,
        ev: &ExecEvent,
        previous: Option<&ProcessInfo>,
    ) -> Record {
        let hdr = &ev.hdr;
        let mut obj = self.base(
            "process.exec",
            &PROCESS_ACTIVITY,
            1,
            "Launch",
            self.wall_ns(hdr.ktime_ns),
        );
        Self::severity(&mut obj, 1);
        Self::agent(&mut obj, registry, hdr.agent, hdr.how);
        // The actor is the process as it was before the exec, when agentd knew it.
        let mut before = *hdr;
        if let Some(previous) = previous {
            before.start_ns = previous.start_ns;
        }
        self.actor(&mut obj, &before, previous.or_else(|| procs.get(hdr.tgid)));

        let filename = bytes_of(&ev.filename, ev.filename_len);
        let argv = split_argv(&ev.argv, ev.argv_len);
        obj.obj("process", |p| {
            p.u64("pid", hdr.tgid as u64)
                .str("uid", &process_uid(hdr.tgid, hdr.start_ns))
                .u64_str("start_ns", hdr.start_ns)
                .u64("created_time", self.wall_ns(hdr.start_ns) / 1_000_000)
                .str("name", &lossy(bytes_of(&hdr.comm, hdr.comm.len() as u32)))
                .obj("user", |u| {
                    u.u64("uid", hdr.uid as u64).u64("gid", hdr.gid as u64);
                })
                .u64("cgroup_id", hdr.cgroup_id)
                .obj("file", |f| {
                    text_field(f, "path", "path_hex", filename);
                    f.str("name", basename(&lossy(filename)));
                    inode(f, "inode", &ev.exe);
                })
                .obj("parent_process", |pp| {
                    pp.u64("pid", ev.ppid as u64)
                        .str("uid", &process_uid(ev.ppid, ev.parent_start_ns));
                });
            let args: Vec<std::borrow::Cow<'_, str>> = argv.iter().map(|a| lossy(a)).collect();
            p.strs("argv", args.iter().map(|a| a.as_ref()));
            p.str("cmd_line", &args.join(" "));
            if ev.flags & EXEC_SCRIPT != 0 {
                p.obj("script", |s| inode(s, "inode", &ev.script));
            }
            let mut truncated = Vec::new();
            if ev.flags & EXEC_FILENAME_TRUNCATED != 0 {
                truncated.push("file.path");
            }
            if ev.flags & EXEC_ARGV_TRUNCATED != 0 {
                truncated.push("argv");
            }
            if !truncated.is_empty() {
                p.strs("truncated", truncated);
            }
            if ev.flags & EXEC_EXE_CHANGED != 0 {
                // The inode is bound by an executable selector but changed since it was hashed.
                p.bool("exe_changed", true);
            }
        });
        Record {
            kind: "process.exec",
            obj,
        }
    }

    /// `process.fork`.
    pub fn fork(&self, registry: &Registry, procs: &ProcessTable, ev: &ForkEvent) -> Record {
        let mut obj = self.activity(
            registry,
            procs,
            &ev.hdr,
            "process.fork",
            &PROCESS_ACTIVITY,
            1,
            "Launch",
            1,
        );
        obj.obj("process", |p| {
            p.u64("pid", ev.child_tgid as u64)
                .str("uid", &process_uid(ev.child_tgid, ev.child_start_ns))
                .u64_str("start_ns", ev.child_start_ns)
                .u64("created_time", self.wall_ns(ev.child_start_ns) / 1_000_000)
                .obj("parent_process", |pp| {
                    pp.u64("pid", ev.hdr.tgid as u64)
                        .str("uid", &process_uid(ev.hdr.tgid, ev.hdr.start_ns));
                });
        });
        Record {
            kind: "process.fork",
            obj,
        }
    }

    /// `process.exit`.
    pub fn exit(&self, registry: &Registry, procs: &ProcessTable, ev: &ExitEvent) -> Record {
        let mut obj = self.activity(
            registry,
            procs,
            &ev.hdr,
            "process.exit",
            &PROCESS_ACTIVITY,
            2,
            "Terminate",
            1,
        );
        let status = ev.exit_code;
        if status & 0x7f == 0 {
            obj.u64("exit_code", ((status >> 8) & 0xff) as u64);
        }
        obj.obj("process", |p| {
            p.u64("pid", ev.hdr.tgid as u64)
                .str("uid", &process_uid(ev.hdr.tgid, ev.hdr.start_ns));
            if status & 0x7f != 0 {
                p.u64("signal", (status & 0x7f) as u64);
                if status & 0x80 != 0 {
                    p.bool("core_dumped", true);
                }
            }
        });
        Record {
            kind: "process.exit",
            obj,
        }
    }

    /// `file.open`, `file.unlink`, `file.rename`.
    pub fn file(&self, registry: &Registry, procs: &ProcessTable, ev: &FileEvent) -> Record {
        let args = &ev.args;
        let (kind, activity_id, activity) = match EventKind::try_from(ev.hdr.kind) {
            Ok(EventKind::FileUnlink) => ("file.unlink", 4, "Delete"),
            Ok(EventKind::FileRename) => ("file.rename", 5, "Rename"),
            _ => ("file.open", 14, "Open"),
        };
        let mut obj = self.activity(
            registry,
            procs,
            &ev.hdr,
            kind,
            &FILE_ACTIVITY,
            activity_id,
            activity,
            1,
        );
        let syscall = FileSyscall::try_from(args.syscall).ok();
        obj.str(
            "syscall",
            match syscall {
                Some(FileSyscall::Open) => "open",
                Some(FileSyscall::Openat) => "openat",
                Some(FileSyscall::Openat2) => "openat2",
                Some(FileSyscall::Creat) => "creat",
                Some(FileSyscall::Unlink) => "unlink",
                Some(FileSyscall::Unlinkat) => "unlinkat",
                Some(FileSyscall::Rename) => "rename",
                Some(FileSyscall::Renameat) => "renameat",
                Some(FileSyscall::Renameat2) => "renameat2",
                None => "unknown",
            },
        );
        let file = |f: &mut Obj, bytes: &[u8], dfd: i32, truncated: bool| {
            text_field(f, "path", "path_hex", bytes);
            let path = lossy(bytes);
            f.str("name", basename(&path));
            if !path.starts_with('/') && dfd != AT_FDCWD {
                f.i64("dirfd", dfd as i64);
            }
            if truncated {
                f.bool("truncated", true);
            }
        };
        obj.obj("file", |f| {
            file(
                f,
                bytes_of(&args.path, args.path_len),
                args.dfd,
                args.trunc & FILE_PATH_TRUNCATED != 0,
            )
        });
        match syscall.map(FileSyscall::kind) {
            Some(EventKind::FileRename) => {
                obj.obj("file_result", |f| {
                    file(
                        f,
                        bytes_of(&args.path2, args.path2_len),
                        args.dfd2,
                        args.trunc & FILE_PATH2_TRUNCATED != 0,
                    )
                });
                if args.flags != 0 {
                    obj.u64("rename_flags", args.flags);
                }
            }
            Some(EventKind::FileOpen) => {
                obj.strs("open_flags", open_flag_names(args.flags));
                if args.flags & libc::O_CREAT as u64 != 0 {
                    obj.str("mode", &format!("{:04o}", args.mode & 0o7777));
                }
                if ev.ret >= 0 {
                    obj.i64("fd", ev.ret);
                }
            }
            _ => {
                if args.flags & libc::AT_REMOVEDIR as u64 != 0 {
                    obj.bool("directory", true);
                }
            }
        }
        status(&mut obj, ev.ret, ev.ret >= 0);
        Record { kind, obj }
    }

    /// `net.connect`, `net.udp_send`, `net.listen`, `net.accept`.
    pub fn net(
        &self,
        registry: &Registry,
        procs: &ProcessTable,
        ev: &NetEvent,
        versions: &Versions,
    ) -> Record {
        let kind = EventKind::try_from(ev.hdr.kind).unwrap_or(EventKind::NetConnect);
        let refused = ev.ret == -(libc::ECONNREFUSED as i64);
        let in_progress = ev.ret == -(libc::EINPROGRESS as i64);
        let (name, activity_id, activity, inbound) = match kind {
            EventKind::NetUdpSend => ("net.udp_send", 6, "Traffic", false),
            EventKind::NetListen => ("net.listen", 7, "Listen", true),
            EventKind::NetAccept => ("net.accept", 1, "Open", true),
            _ if ev.ret == 0 || in_progress => ("net.connect", 1, "Open", false),
            _ if refused => ("net.connect", 5, "Refuse", false),
            _ => ("net.connect", 4, "Fail", false),
        };
        let mut obj = self.activity(
            registry,
            procs,
            &ev.hdr,
            name,
            &NETWORK_ACTIVITY,
            activity_id,
            activity,
            egress::severity(ev),
        );
        let family = if ev.remote.family != 0 {
            ev.remote.family
        } else {
            ev.local.family
        };
        obj.obj("connection_info", |c| {
            c.u64("protocol_num", ev.protocol as u64)
                .str("protocol_name", protocol_name(ev.protocol))
                .str(
                    "protocol_ver",
                    if family == AF_INET6 { "IPv6" } else { "IPv4" },
                )
                .str("direction", if inbound { "Inbound" } else { "Outbound" })
                .u64("direction_id", if inbound { 1 } else { 2 });
        });
        if ev.remote.family != 0 {
            endpoint(&mut obj, "dst_endpoint", &ev.remote);
        }
        if ev.local.family != 0 {
            endpoint(&mut obj, "src_endpoint", &ev.local);
        }
        match kind {
            EventKind::NetListen => {
                obj.u64("backlog", ev.arg as u64);
            }
            EventKind::NetAccept => {
                obj.i64("fd", ev.ret);
            }
            EventKind::NetConnect if in_progress => {
                obj.bool("in_progress", true);
            }
            _ => {}
        }
        status(&mut obj, ev.ret, ev.ret >= 0 || in_progress);
        egress::decision(&mut obj, ev, versions);
        Record { kind: name, obj }
    }

    /// `identity.*`: a change to what the kernel maps say.
    pub fn identity(&self, registry: &Registry, change: &IdentityChange) -> Record {
        let (kind, activity_id, activity, agent_id, selector_id) = match change {
            IdentityChange::CgroupBound {
                selector_id,
                agent_id,
                ..
            }
            | IdentityChange::ExeBound {
                selector_id,
                agent_id,
                ..
            } => ("identity.bind", 1, "Create", *agent_id, *selector_id),
            IdentityChange::CgroupUnbound {
                selector_id,
                agent_id,
                ..
            } => ("identity.unbind", 4, "Delete", *agent_id, *selector_id),
            IdentityChange::ExeRefused {
                selector_id,
                agent_id,
                ..
            } => ("identity.refuse", 4, "Delete", *agent_id, *selector_id),
        };
        let mut obj = self.base(
            kind,
            &ENTITY_MANAGEMENT,
            activity_id,
            activity,
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, if kind == "identity.refuse" { 3 } else { 1 });
        Self::agent(
            &mut obj,
            registry,
            AgentRef {
                agent_id,
                selector_id,
            },
            HOW_DIRECT,
        );
        obj.obj("binding", |b| match change {
            IdentityChange::CgroupBound {
                cgroup_id, path, ..
            }
            | IdentityChange::CgroupUnbound {
                cgroup_id, path, ..
            } => {
                b.str("target", "cgroup")
                    .u64("cgroup_id", *cgroup_id)
                    .str("path", path);
            }
            IdentityChange::ExeBound {
                path,
                inode: id,
                sha256,
                ..
            } => {
                b.str("target", "executable")
                    .str("path", &path.display().to_string())
                    .str("sha256", &hex::encode(sha256));
                inode(b, "inode", id);
            }
            IdentityChange::ExeRefused {
                path,
                reason,
                actual_sha256,
                ..
            } => {
                b.str("target", "executable")
                    .str("path", &path.display().to_string())
                    .str("reason", reason);
                match actual_sha256 {
                    Some(sha) => b.str("actual_sha256", &hex::encode(sha)),
                    None => b.null("actual_sha256"),
                };
            }
        });
        Record { kind, obj }
    }

    /// `sensor.loss`: records the kernel could not deliver since the last report.
    pub fn loss(&self, what: &str, count: u64, total: u64) -> Record {
        let mut obj = self.base(
            "sensor.loss",
            &BASE_EVENT,
            0,
            "Unknown",
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 4);
        obj.obj("loss", |l| {
            l.str("what", what).u64("count", count).u64("total", total);
        });
        Record {
            kind: "sensor.loss",
            obj,
        }
    }

    /// `agentd.start` / `agentd.stop`: `detail` is built by the caller.
    pub fn lifecycle(
        &self,
        kind: &'static str,
        activity_id: u32,
        activity: &str,
        detail: &Obj,
    ) -> Record {
        let mut obj = self.base(
            kind,
            &APPLICATION_LIFECYCLE,
            activity_id,
            activity,
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 1);
        obj.obj("app", |a| {
            a.str("name", "agentd")
                .str("version", env!("CARGO_PKG_VERSION"));
        })
        .obj_value("detail", detail);
        Record { kind, obj }
    }

    /// `log.*`: the log's own records (recovery, outage, heartbeat, key rotation, pruning).
    pub fn log_event(&self, kind: &'static str, severity: u64, detail: &Obj) -> Record {
        let mut obj = self.base(kind, &BASE_EVENT, 0, "Unknown", BootClock::wall_now_ns());
        Self::severity(&mut obj, severity);
        obj.obj_value("detail", detail);
        Record { kind, obj }
    }

    /// `sensor.error`: a record from the kernel that could not be decoded.
    pub fn decode_error(&self, error: &str, len: usize) -> Record {
        let mut obj = self.base(
            "sensor.error",
            &BASE_EVENT,
            0,
            "Unknown",
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 4);
        obj.obj("error", |e| {
            e.str("message", error).u64("record_bytes", len as u64);
        });
        Record {
            kind: "sensor.error",
            obj,
        }
    }
}

pub mod api;
pub mod detector;
mod egress;
#[cfg(test)]
mod tests;
