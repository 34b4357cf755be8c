//! Ring-buffer records: one [`EventHeader`] followed by a payload chosen by `kind`.
//!
//! Every record starts with the header, so user space reads the header, converts `kind` with
//! [`EventKind::try_from`], checks the record length against the payload type, and only then
//! reads the payload. Strings are fixed-size byte arrays with an explicit length; the kernel
//! truncates and sets a flag rather than failing.

use crate::identity::AgentRef;

/// Bytes kept of a path (file events, cgroup paths, the executable name).
pub const PATH_LEN: usize = 256;
/// Bytes kept of an exec's argument vector (NUL-separated, as in `/proc/PID/cmdline`).
pub const ARGV_LEN: usize = 512;
/// Bytes of a task's `comm`, as the kernel stores it (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Stable numeric ids of the record kinds.
///
/// These ids end up in signed log records, so they are part of what a signature means: never
/// reuse or renumber one. Each hook family has its own block of twenty.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A process image was replaced (`execve`, `execveat`), after the kernel committed to it.
    Exec = 1,
    /// A new process (not a thread) was created by `fork`, `vfork` or `clone`.
    Fork = 2,
    /// The last thread of a process exited.
    Exit = 3,
    /// `open`, `openat`, `openat2` or `creat` returned.
    FileOpen = 20,
    /// `unlink` or `unlinkat` returned.
    FileUnlink = 21,
    /// `rename`, `renameat` or `renameat2` returned.
    FileRename = 22,
    /// `connect` on an IPv4 or IPv6 socket returned.
    NetConnect = 40,
    /// A UDP datagram was sent with an explicit destination (`sendto`, `sendmsg`).
    NetUdpSend = 41,
    /// `listen` on an IPv4 or IPv6 socket returned.
    NetListen = 42,
    /// `accept` or `accept4` returned an IPv4 or IPv6 connection.
    NetAccept = 43,
    /// A cgroup was created in the cgroup v2 hierarchy (internal: drives selector resolution).
    CgroupMkdir = 80,
    /// A cgroup was removed from the cgroup v2 hierarchy (internal).
    CgroupRmdir = 81,
}

impl EventKind {
    /// Every kind, in id order.
    pub const ALL: [EventKind; 12] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::FileOpen,
        EventKind::FileUnlink,
        EventKind::FileRename,
        EventKind::NetConnect,
        EventKind::NetUdpSend,
        EventKind::NetListen,
        EventKind::NetAccept,
        EventKind::CgroupMkdir,
        EventKind::CgroupRmdir,
    ];
}

impl From<EventKind> for u32 {
    fn from(kind: EventKind) -> u32 {
        kind as u32
    }
}

/// A `kind` value that names no [`EventKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownKind(pub u32);

impl TryFrom<u32> for EventKind {
    type Error = UnknownKind;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == value {
                return Ok(Self::ALL[i]);
            }
            i += 1;
        }
        Err(UnknownKind(value))
    }
}

/// Header flag: the process is outside every agent (host-wide mode only).
pub const HDR_UNATTRIBUTED: u32 = 1 << 0;

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] id.
    pub kind: u32,
    /// `HDR_*` flags.
    pub flags: u32,
    /// When the hook ran, `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ktime_ns: u64,
    /// Process id (thread-group id) of the task the event is about.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Start time of the process, `CLOCK_BOOTTIME` nanoseconds: with `tgid` it names the process
    /// without the PID-reuse ambiguity.
    pub start_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Real uid of the task.
    pub uid: u32,
    /// Real gid of the task.
    pub gid: u32,
    /// The agent and selector the process is bound to (zero when unattributed).
    pub agent: AgentRef,
    /// How the binding came about: an `identity::HOW_*` value.
    pub how: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The task's `comm`.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 80);

/// A device and inode pair naming a file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeId {
    /// The kernel's `dev_t` of the file system (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Inode number.
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<InodeId>() == 16);

/// `ExecEvent::flags`: `filename` was cut at [`PATH_LEN`].
pub const EXEC_FILENAME_TRUNCATED: u32 = 1 << 0;
/// `ExecEvent::flags`: `argv` was cut at [`ARGV_LEN`].
pub const EXEC_ARGV_TRUNCATED: u32 = 1 << 1;
/// `ExecEvent::flags`: the executable's inode is bound by a selector but changed (its ctime
/// differs from the one recorded when its sha256 was checked), so the selector did not apply.
pub const EXEC_EXE_CHANGED: u32 = 1 << 2;
/// `ExecEvent::flags`: an interpreter ran a script; `script` names the script file.
pub const EXEC_SCRIPT: u32 = 1 << 3;

/// [`EventKind::Exec`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// Common header; `tgid`/`start_ns` name the process after the exec.
    pub hdr: EventHeader,
    /// Parent process id.
    pub ppid: u32,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// Start time of the parent process (`CLOCK_BOOTTIME` ns).
    pub parent_start_ns: u64,
    /// The file the kernel runs (for a script, its interpreter).
    pub exe: InodeId,
    /// The script, when an interpreter runs one (`EXEC_SCRIPT`).
    pub script: InodeId,
    /// Valid bytes in `filename`.
    pub filename_len: u32,
    /// Valid bytes in `argv`.
    pub argv_len: u32,
    /// The path handed to `execve`, as the caller gave it.
    pub filename: [u8; PATH_LEN],
    /// Arguments, NUL-separated.
    pub argv: [u8; ARGV_LEN],
}
const _: () =
    assert!(core::mem::size_of::<ExecEvent>() == 80 + 8 + 8 + 32 + 8 + PATH_LEN + ARGV_LEN);

/// [`EventKind::Fork`]: the header names the parent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkEvent {
    /// Common header (the parent).
    pub hdr: EventHeader,
    /// The new process.
    pub child_tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Start time of the new process (`CLOCK_BOOTTIME` ns).
    pub child_start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 96);

/// [`EventKind::Exit`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitEvent {
    /// Common header (the exiting process).
    pub hdr: EventHeader,
    /// Wait status as `waitpid` reports it: `(code << 8)` for a normal exit, the signal number in
    /// the low seven bits (plus `0x80` for a core dump) for a kill.
    pub exit_code: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 88);

/// The file system call an [`EventKind::FileOpen`], `FileUnlink` or `FileRename` record comes from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSyscall {
    /// `open(path, flags, mode)`.
    Open = 1,
    /// `openat(dfd, path, flags, mode)`.
    Openat = 2,
    /// `openat2(dfd, path, how, size)`.
    Openat2 = 3,
    /// `creat(path, mode)`.
    Creat = 4,
    /// `unlink(path)`.
    Unlink = 5,
    /// `unlinkat(dfd, path, flags)`.
    Unlinkat = 6,
    /// `rename(old, new)`.
    Rename = 7,
    /// `renameat(olddfd, old, newdfd, new)`.
    Renameat = 8,
    /// `renameat2(olddfd, old, newdfd, new, flags)`.
    Renameat2 = 9,
}

impl FileSyscall {
    /// Every variant, in id order.
    pub const ALL: [FileSyscall; 9] = [
        FileSyscall::Open,
        FileSyscall::Openat,
        FileSyscall::Openat2,
        FileSyscall::Creat,
        FileSyscall::Unlink,
        FileSyscall::Unlinkat,
        FileSyscall::Rename,
        FileSyscall::Renameat,
        FileSyscall::Renameat2,
    ];

    /// The record kind this call produces.
    pub const fn kind(self) -> EventKind {
        match self {
            FileSyscall::Open | FileSyscall::Openat | FileSyscall::Openat2 | FileSyscall::Creat => {
                EventKind::FileOpen
            }
            FileSyscall::Unlink | FileSyscall::Unlinkat => EventKind::FileUnlink,
            FileSyscall::Rename | FileSyscall::Renameat | FileSyscall::Renameat2 => {
                EventKind::FileRename
            }
        }
    }
}

impl TryFrom<u32> for FileSyscall {
    type Error = UnknownKind;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1..=9 => Ok(Self::ALL[value as usize - 1]),
            other => Err(UnknownKind(other)),
        }
    }
}

/// `FileArgs::trunc`: `path` was cut at [`PATH_LEN`].
pub const FILE_PATH_TRUNCATED: u32 = 1 << 0;
/// `FileArgs::trunc`: `path2` was cut at [`PATH_LEN`].
pub const FILE_PATH2_TRUNCATED: u32 = 1 << 1;
/// The `dfd` value meaning "relative to the current directory" (`AT_FDCWD`).
pub const AT_FDCWD: i32 = -100;

/// A file system call's arguments, captured when the call enters (user memory is read then) and
/// held per thread until it returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileArgs {
    /// A [`FileSyscall`] id.
    pub syscall: u32,
    /// `mode` for calls that create, else 0.
    pub mode: u32,
    /// `open` flags (`O_*`, for `creat` the implied `O_CREAT|O_WRONLY|O_TRUNC`), `unlinkat`
    /// flags (`AT_REMOVEDIR`) or `renameat2` flags (`RENAME_*`).
    pub flags: u64,
    /// Directory fd `path` is relative to (`AT_FDCWD` for the current directory).
    pub dfd: i32,
    /// Directory fd `path2` is relative to.
    pub dfd2: i32,
    /// `FILE_*_TRUNCATED` flags.
    pub trunc: u32,
    /// Valid bytes in `path`.
    pub path_len: u32,
    /// Valid bytes in `path2`.
    pub path2_len: u32,
    /// The [`EventKind`] the call produces (fixed at entry, where the call is known at compile
    /// time, so the exit hook needs no lookup).
    pub kind: u32,
    /// The path (for a rename, the old path).
    pub path: [u8; PATH_LEN],
    /// For a rename, the new path.
    pub path2: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<FileArgs>() == 40 + 2 * PATH_LEN);

/// [`EventKind::FileOpen`], [`EventKind::FileUnlink`] and [`EventKind::FileRename`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// The call's return value: a file descriptor or 0 on success, `-errno` on failure.
    pub ret: i64,
    /// The call's arguments.
    pub args: FileArgs,
}
const _: () = assert!(core::mem::size_of::<FileEvent>() == 88 + 40 + 2 * PATH_LEN);

/// An IPv4 or IPv6 socket address. IPv4 addresses use the first four bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    /// `AF_INET` (2) or `AF_INET6` (10); 0 when unknown.
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u32,
    /// Address bytes in network order.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SockAddr>() == 24);

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// [`EventKind::NetConnect`], [`EventKind::NetUdpSend`], [`EventKind::NetListen`] and
/// [`EventKind::NetAccept`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// The call's return value (`connect`, `listen`: 0 or `-errno`; `accept`: the new fd or
    /// `-errno`). Always 0 for `NetUdpSend`, which is reported before the datagram leaves.
    pub ret: i64,
    /// Local address (listen, accept), zero otherwise.
    pub local: SockAddr,
    /// Remote address (connect, UDP send, accept), zero otherwise.
    pub remote: SockAddr,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), ...; 0 when unknown.
    pub sock_type: u32,
    /// `IPPROTO_TCP` (6), `IPPROTO_UDP` (17), ...; 0 when unknown.
    pub protocol: u32,
    /// `listen` backlog, or the listening fd for `accept`.
    pub arg: u32,
    /// An `egress::VERDICT_*` (connect and UDP send of agents with a policy).
    pub verdict: u32,
    /// The rule that decided (`egress::RULE_*` or a rule id of the agent's policy).
    pub rule_id: u32,
    /// Non-zero when the destination was rewritten to agentd's DNS resolver.
    pub redirected: u32,
    /// The policy version that decided (see `egress::AgentPolicy::version`).
    pub policy_version: u64,
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 80 + 8 + 48 + 24 + 8);

/// [`EventKind::CgroupMkdir`] and [`EventKind::CgroupRmdir`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    /// Common header (the task that made or removed the cgroup).
    pub hdr: EventHeader,
    /// Id of the cgroup made or removed (its inode number in the cgroup v2 file system).
    pub id: u64,
    /// Hierarchy id; the cgroup v2 hierarchy is 0.
    pub root: u32,
    /// Depth below the root (the root is level 0).
    pub level: u32,
    /// Valid bytes in `path`.
    pub path_len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Path from the hierarchy root, starting with `/`.
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<CgroupEvent>() == 80 + 24 + PATH_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::try_from(kind as u32), Ok(kind));
        }
        assert_eq!(EventKind::try_from(0), Err(UnknownKind(0)));
        assert_eq!(EventKind::try_from(4), Err(UnknownKind(4)));
    }

    #[test]
    fn file_syscalls_round_trip() {
        for call in FileSyscall::ALL {
            assert_eq!(FileSyscall::try_from(call as u32), Ok(call));
        }
        assert!(FileSyscall::try_from(0).is_err());
        assert!(FileSyscall::try_from(10).is_err());
    }
}
