//! Maps shared with agentd. Their symbol names are the names in `sensor_common::names`; the
//! unprivileged ELF test in agentd fails if the two drift apart.
//!
//! Every map is pinned by name (agentd chooses the directory): the bindings, allowlists, loss
//! counters and the ring buffer outlive agentd, so enforcement goes on while it is down and a
//! restarted agentd picks up where the last one stopped.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    config::SensorConfig,
    egress::{AgentPolicy, EgressKey, EgressValue},
    event::{FileArgs, InodeId, SockAddr},
    identity::{AgentRef, Binding, ExeRule},
    loss::LOSS_SLOTS,
    names::{
        DEFAULT_RING_BYTES, MAX_BOUND_PROCESSES, MAX_DNS_SOCKETS, MAX_EGRESS_ENTRIES,
        MAX_PENDING_CALLS, MAX_SELECTOR_ENTRIES,
    },
};

use crate::hooks::net::NetPending;

/// Every record to agentd. agentd may resize it at load time (`sensor.ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(DEFAULT_RING_BYTES, 0);

/// Records the kernel could not deliver, per CPU, per `loss::LOSS_*` slot.
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::pinned(LOSS_SLOTS, 0);

/// Non-zero while agentd sleeps for longer than its short poll: records then wake it.
#[map]
pub static READER: Array<u32> = Array::pinned(1, 0);

/// The sensor's run-time settings (one entry).
#[map]
pub static CONFIG: Array<SensorConfig> = Array::pinned(1, 0);

/// tgid → the process's agent binding.
#[map]
pub static PROC_BINDINGS: HashMap<u32, Binding> = HashMap::pinned(MAX_BOUND_PROCESSES, 0);

/// cgroup id → agent, for cgroups that match an agent's cgroup selector.
#[map]
pub static CGROUP_AGENTS: HashMap<u64, AgentRef> = HashMap::pinned(MAX_SELECTOR_ENTRIES, 0);

/// cgroup id → creation time, until agentd has matched the new cgroup against the selectors.
#[map]
pub static CGROUP_PENDING: HashMap<u64, u64> = HashMap::pinned(MAX_SELECTOR_ENTRIES, 0);

/// Executable inode → agent, for files whose sha256 agentd checked.
#[map]
pub static EXE_AGENTS: HashMap<InodeId, ExeRule> = HashMap::pinned(MAX_SELECTOR_ENTRIES, 0);

/// uid → agent.
#[map]
pub static UID_AGENTS: HashMap<u32, AgentRef> = HashMap::pinned(MAX_SELECTOR_ENTRIES, 0);

/// gid → agent.
#[map]
pub static GID_AGENTS: HashMap<u32, AgentRef> = HashMap::pinned(MAX_SELECTOR_ENTRIES, 0);

/// pid_tgid → a file call's arguments, from entry to exit.
#[map]
pub static FILE_PENDING: HashMap<u64, FileArgs> = HashMap::pinned(MAX_PENDING_CALLS, 0);

/// pid_tgid → a network call's state, from entry (or the cgroup hook) to exit.
#[map]
pub static NET_PENDING: HashMap<u64, NetPending> = HashMap::pinned(MAX_PENDING_CALLS, 0);

/// Per-CPU scratch for building a `FileArgs` (552 bytes: too big for the 512-byte stack).
#[map]
pub static FILE_SCRATCH: PerCpuArray<FileArgs> = PerCpuArray::pinned(1, 0);

/// agent id → egress mode, quarantine, policy generation and version, resolver port.
#[map]
pub static AGENT_POLICY: HashMap<u32, AgentPolicy> = HashMap::pinned(MAX_SELECTOR_ENTRIES, 0);

/// (agent, generation, address prefix) → allowed port ranges. See `sensor_common::egress`.
#[map]
pub static EGRESS_RULES: LpmTrie<EgressKey, EgressValue> = LpmTrie::pinned(MAX_EGRESS_ENTRIES, 0);

/// Socket cookie → the DNS server a redirected query was meant for, so the reply can be made to
/// come from it. LRU: entries of closed sockets age out by themselves.
#[map]
pub static DNS_ORIGINAL: LruHashMap<u64, SockAddr> = LruHashMap::pinned(MAX_DNS_SOCKETS, 0);
