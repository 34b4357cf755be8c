//! Maps shared with agentd. Their symbol names are the names in `sensor_common::names`; the
//! unprivileged ELF test in agentd fails if the two drift apart.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    config::SensorConfig,
    event::{FileArgs, InodeId},
    identity::{AgentRef, Binding, ExeRule},
    loss::LOSS_SLOTS,
    names::{DEFAULT_RING_BYTES, MAX_BOUND_PROCESSES, MAX_PENDING_CALLS, MAX_SELECTOR_ENTRIES},
};

use crate::hooks::net::NetPending;

/// Every record to agentd. agentd may resize it at load time (`sensor.ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Records the kernel could not deliver, per CPU, per `loss::LOSS_*` slot.
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// The sensor's run-time settings (one entry).
#[map]
pub static CONFIG: Array<SensorConfig> = Array::with_max_entries(1, 0);

/// tgid → the process's agent binding.
#[map]
pub static PROC_BINDINGS: HashMap<u32, Binding> = HashMap::with_max_entries(MAX_BOUND_PROCESSES, 0);

/// cgroup id → agent, for cgroups that match an agent's cgroup selector.
#[map]
pub static CGROUP_AGENTS: HashMap<u64, AgentRef> =
    HashMap::with_max_entries(MAX_SELECTOR_ENTRIES, 0);

/// cgroup id → creation time, until agentd has matched the new cgroup against the selectors.
#[map]
pub static CGROUP_PENDING: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SELECTOR_ENTRIES, 0);

/// Executable inode → agent, for files whose sha256 agentd checked.
#[map]
pub static EXE_AGENTS: HashMap<InodeId, ExeRule> =
    HashMap::with_max_entries(MAX_SELECTOR_ENTRIES, 0);

/// uid → agent.
#[map]
pub static UID_AGENTS: HashMap<u32, AgentRef> = HashMap::with_max_entries(MAX_SELECTOR_ENTRIES, 0);

/// gid → agent.
#[map]
pub static GID_AGENTS: HashMap<u32, AgentRef> = HashMap::with_max_entries(MAX_SELECTOR_ENTRIES, 0);

/// pid_tgid → a file call's arguments, from entry to exit.
#[map]
pub static FILE_PENDING: HashMap<u64, FileArgs> = HashMap::with_max_entries(MAX_PENDING_CALLS, 0);

/// pid_tgid → a network call's state, from entry (or the cgroup hook) to exit.
#[map]
pub static NET_PENDING: HashMap<u64, NetPending> = HashMap::with_max_entries(MAX_PENDING_CALLS, 0);

/// Per-CPU scratch for building a `FileArgs` (552 bytes: too big for the 512-byte stack).
#[map]
pub static FILE_SCRATCH: PerCpuArray<FileArgs> = PerCpuArray::with_max_entries(1, 0);
