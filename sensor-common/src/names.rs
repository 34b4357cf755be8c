//! Map and program names, and capacities, shared by both sides.
//!
//! Map names stay within 15 bytes (`BPF_OBJ_NAME_LEN` minus the NUL), so the name the kernel
//! shows is the name used here.

/// Ring buffer carrying every record to agentd.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU loss counters, indexed by `loss::LOSS_*`.
pub const LOSS: &str = "LOSS";
/// One-entry array: non-zero while agentd sleeps longer than its short poll, so the programs
/// wake it on every record (see `sensor-ebpf/src/emit.rs`).
pub const READER: &str = "READER";
/// One-entry array holding the [`crate::config::SensorConfig`].
pub const CONFIG: &str = "CONFIG";
/// tgid → [`crate::identity::Binding`].
pub const PROC_BINDINGS: &str = "PROC_BINDINGS";
/// cgroup id → [`crate::identity::AgentRef`].
pub const CGROUP_AGENTS: &str = "CGROUP_AGENTS";
/// cgroup id → creation time, for cgroups agentd has not matched yet.
pub const CGROUP_PENDING: &str = "CGROUP_PENDING";
/// [`crate::event::InodeId`] → [`crate::identity::ExeRule`].
pub const EXE_AGENTS: &str = "EXE_AGENTS";
/// uid → [`crate::identity::AgentRef`].
pub const UID_AGENTS: &str = "UID_AGENTS";
/// gid → [`crate::identity::AgentRef`].
pub const GID_AGENTS: &str = "GID_AGENTS";
/// pid_tgid → [`crate::event::FileArgs`] between a file call's entry and exit.
pub const FILE_PENDING: &str = "FILE_PENDING";
/// pid_tgid → pending network call state between entry (or the cgroup hook) and exit.
pub const NET_PENDING: &str = "NET_PENDING";
/// Per-CPU scratch space for building a [`crate::event::FileArgs`] off the 512-byte stack.
pub const FILE_SCRATCH: &str = "FILE_SCRATCH";
/// agent id → [`crate::egress::AgentPolicy`].
pub const AGENT_POLICY: &str = "AGENT_POLICY";
/// LPM trie of [`crate::egress::EgressKey`] → [`crate::egress::EgressValue`].
pub const EGRESS_RULES: &str = "EGRESS_RULES";
/// Socket cookie → original DNS server of a redirected query, to restore the reply's source.
pub const DNS_ORIGINAL: &str = "DNS_ORIGINAL";

/// Capacity of `EGRESS_RULES`: rule prefixes and DNS pins of all agents, two generations.
pub const MAX_EGRESS_ENTRIES: u32 = 65_536;
/// Capacity of `DNS_ORIGINAL`: redirected DNS sockets alive at once.
pub const MAX_DNS_SOCKETS: u32 = 16_384;

/// The global holding [`crate::offsets::KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Default ring buffer size in bytes (a power-of-two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// Capacity of `PROC_BINDINGS`: live agent processes at once.
pub const MAX_BOUND_PROCESSES: u32 = 65_536;
/// Capacity of the cgroup, executable, uid and gid selector maps.
pub const MAX_SELECTOR_ENTRIES: u32 = 16_384;
/// Capacity of the per-thread pending maps: calls in flight at once.
pub const MAX_PENDING_CALLS: u32 = 16_384;
/// Deepest cgroup level the exec hook searches for an agent's cgroup.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Programs, by hook family. Each is `(program name, what it attaches to)`.
pub mod programs {
    /// `tp_btf/sched_process_exec`.
    pub const PROC_EXEC: &str = "proc_exec";
    /// `tp_btf/sched_process_fork`.
    pub const PROC_FORK: &str = "proc_fork";
    /// `tp_btf/sched_process_exit`.
    pub const PROC_EXIT: &str = "proc_exit";
    /// `tracepoint/cgroup/cgroup_mkdir`.
    pub const CGROUP_MKDIR: &str = "cgroup_mkdir";
    /// `tracepoint/cgroup/cgroup_rmdir`.
    pub const CGROUP_RMDIR: &str = "cgroup_rmdir";
    /// `tracepoint/syscalls/sys_enter_open`.
    pub const FILE_ENTER_OPEN: &str = "file_enter_open";
    /// `tracepoint/syscalls/sys_enter_openat`.
    pub const FILE_ENTER_OPENAT: &str = "file_enter_openat";
    /// `tracepoint/syscalls/sys_enter_openat2`.
    pub const FILE_ENTER_OPENAT2: &str = "file_enter_openat2";
    /// `tracepoint/syscalls/sys_enter_creat`.
    pub const FILE_ENTER_CREAT: &str = "file_enter_creat";
    /// `tracepoint/syscalls/sys_enter_unlink`.
    pub const FILE_ENTER_UNLINK: &str = "file_enter_unlink";
    /// `tracepoint/syscalls/sys_enter_unlinkat`.
    pub const FILE_ENTER_UNLINKAT: &str = "file_enter_unlinkat";
    /// `tracepoint/syscalls/sys_enter_rename`.
    pub const FILE_ENTER_RENAME: &str = "file_enter_rename";
    /// `tracepoint/syscalls/sys_enter_renameat`.
    pub const FILE_ENTER_RENAMEAT: &str = "file_enter_renameat";
    /// `tracepoint/syscalls/sys_enter_renameat2`.
    pub const FILE_ENTER_RENAMEAT2: &str = "file_enter_renameat2";
    /// Attached to the `sys_exit_*` tracepoint of every file call above.
    pub const FILE_EXIT: &str = "file_exit";
    /// `cgroup/connect4`.
    pub const NET_CONNECT4: &str = "net_connect4";
    /// `cgroup/connect6`.
    pub const NET_CONNECT6: &str = "net_connect6";
    /// `cgroup/sendmsg4`.
    pub const NET_SENDMSG4: &str = "net_sendmsg4";
    /// `cgroup/sendmsg6`.
    pub const NET_SENDMSG6: &str = "net_sendmsg6";
    /// `tracepoint/syscalls/sys_exit_connect`.
    pub const NET_CONNECT_EXIT: &str = "net_connect_exit";
    /// `tracepoint/syscalls/sys_enter_listen`.
    pub const NET_LISTEN_ENTER: &str = "net_listen_enter";
    /// `tracepoint/syscalls/sys_exit_listen`.
    pub const NET_LISTEN_EXIT: &str = "net_listen_exit";
    /// `tracepoint/syscalls/sys_exit_accept` and `sys_exit_accept4`.
    pub const NET_ACCEPT_EXIT: &str = "net_accept_exit";
    /// `cgroup/recvmsg4`: restores the source of redirected DNS replies.
    pub const NET_RECVMSG4: &str = "net_recvmsg4";
    /// `cgroup/recvmsg6`.
    pub const NET_RECVMSG6: &str = "net_recvmsg6";
}
