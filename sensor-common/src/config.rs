//! Run-time settings agentd writes into the one-entry `CONFIG` array map.

/// Report only processes bound to an agent; everything else is filtered out in the kernel.
pub const MODE_AGENTS: u32 = 0;
/// Report every process; those outside all agents carry `HDR_UNATTRIBUTED`.
pub const MODE_HOST: u32 = 1;

/// The sensor's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorConfig {
    /// `MODE_AGENTS` or `MODE_HOST`.
    pub mode: u32,
    /// agentd's own process id: its activity is never reported (it would feed back into itself).
    pub self_tgid: u32,
    /// Non-zero: deny the egress of processes in a new cgroup outside every agent's while agentd
    /// resolves it (`[sensor] pending_egress = "deny"`, and some enforced agent is selected by
    /// cgroup: the new cgroup may be its).
    pub pending_deny: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SensorConfig>() == 16);
