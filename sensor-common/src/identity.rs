//! How a process is bound to an agent identity in the kernel.
//!
//! agentd turns each agent's selectors into map entries (cgroup id, executable inode, uid, gid →
//! [`AgentRef`]). The exec hook evaluates them in that order and stores the result per process in
//! `PROC_BINDINGS` ([`Binding`]); the fork hook copies the parent's binding to the child, so a
//! binding is in place before the child runs a single instruction and never waits on user space.

/// No agent.
pub const AGENT_NONE: u32 = 0;
/// The process runs in a cgroup created so recently that agentd has not yet matched it against
/// the cgroup selectors; agentd resolves such bindings as soon as it reads the cgroup's creation.
/// In a pending binding, [`AgentRef::selector_id`] holds the agent of the nearest bound cgroup
/// above the new one (0: none): egress is decided as that agent's until agentd resolves it.
pub const AGENT_PENDING: u32 = u32::MAX;

/// An agent identity and the selector that matched it. Ids are assigned by agentd from the
/// configuration: agents from 1, selectors from 1, 0 meaning none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentRef {
    /// Agent id (`AGENT_NONE`, `AGENT_PENDING` or an agent).
    pub agent_id: u32,
    /// Selector id within the configuration.
    pub selector_id: u32,
}
const _: () = assert!(core::mem::size_of::<AgentRef>() == 8);

/// The selector named the process directly (at exec, or when agentd scanned `/proc`).
pub const HOW_DIRECT: u32 = 1;
/// The process inherited its parent's binding.
pub const HOW_INHERITED: u32 = 2;
/// The binding waits on agentd's resolution of a new cgroup (`AGENT_PENDING`).
pub const HOW_PENDING: u32 = 3;

/// The binding of one process (`PROC_BINDINGS`, keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// The agent and the selector that matched.
    pub agent: AgentRef,
    /// `HOW_*`.
    pub how: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Start time of the process (`CLOCK_BOOTTIME` ns); a binding whose start time differs from
    /// the task's belongs to an earlier process with the same pid and is ignored.
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Binding>() == 24);

/// An executable bound by inode (`EXE_AGENTS` value, keyed by [`crate::event::InodeId`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeRule {
    /// The agent and selector.
    pub agent: AgentRef,
    /// The inode's ctime (seconds) when agentd checked the file's sha256. Any write, truncation,
    /// chmod or chown moves ctime, so a mismatch at exec means the file is no longer the one
    /// that was hashed, and the rule is not applied.
    pub ctime_sec: i64,
    /// Nanoseconds part of that ctime.
    pub ctime_nsec: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ExeRule>() == 24);
