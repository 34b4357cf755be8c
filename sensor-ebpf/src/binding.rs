//! Which agent the current process belongs to, and whether its events are reported.

use aya_ebpf::helpers::{
    bpf_get_current_task,
    generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
};
use sensor_common::{
    config::{MODE_HOST, SensorConfig},
    event::HDR_UNATTRIBUTED,
    identity::{AgentRef, Binding},
    names::MAX_CGROUP_DEPTH,
};

use crate::{
    maps::{CGROUP_AGENTS, CGROUP_PENDING, CONFIG, PROC_BINDINGS},
    read::{kptr, kread, off},
};

/// The sensor's settings (defaults until agentd writes them).
#[inline(always)]
pub fn config() -> SensorConfig {
    match CONFIG.get(0) {
        Some(cfg) => *cfg,
        None => SensorConfig::default(),
    }
}

/// A process whose events are reported, with the binding they carry.
#[derive(Clone, Copy)]
pub struct Subject {
    /// The binding (all zero but `start_ns` when unattributed).
    pub binding: Binding,
    /// `HDR_*` flags for the header.
    pub flags: u32,
}

/// The current process's binding, if it has one.
#[inline(always)]
pub fn bound(tgid: u32) -> Option<Binding> {
    // SAFETY: the value is copied out at once; a concurrent update can at worst give a binding
    // that is being replaced, which is the same race the kernel would have with any reader.
    unsafe { PROC_BINDINGS.get(tgid) }.copied()
}

/// Decides whether the current process's events are reported, and under which binding.
///
/// Bound processes always are; in host-wide mode every other process is too, unattributed.
/// agentd itself never is: its own log writes would otherwise feed back into the log.
#[inline(always)]
pub fn subject(tgid: u32) -> Option<Subject> {
    let cfg = config();
    if tgid == cfg.self_tgid {
        return None;
    }
    if let Some(binding) = bound(tgid) {
        return Some(Subject { binding, flags: 0 });
    }
    if cfg.mode != MODE_HOST {
        return None;
    }
    // SAFETY: plain helper call without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    Some(Subject {
        binding: Binding {
            start_ns: process_start(task),
            ..Binding::default()
        },
        flags: HDR_UNATTRIBUTED,
    })
}

/// Whether the current process's events are reported at all (the cheap form of [`subject`], for
/// entry hooks that only decide whether to start recording a call).
#[inline(always)]
pub fn reported(tgid: u32) -> bool {
    let cfg = config();
    tgid != cfg.self_tgid && (cfg.mode == MODE_HOST || PROC_BINDINGS.get_ptr(tgid).is_some())
}

/// Start time of `task`'s process (its thread-group leader), `CLOCK_BOOTTIME` ns; 0 if unreadable.
#[inline(always)]
pub fn process_start(task: *const u8) -> u64 {
    match kptr(task, off!(task_group_leader)) {
        Ok(leader) => kread(leader, off!(task_start_boottime)).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Result of matching the current cgroup against the cgroup selectors.
pub enum CgroupMatch {
    /// The current cgroup or its nearest matching ancestor names an agent.
    Agent(AgentRef),
    /// No match yet, but the cgroup (or an ancestor) is so new that agentd has not resolved it.
    /// Carries the agent of the nearest bound ancestor above the new cgroup (0: none): the
    /// process may belong to a more specific agent, or still to that one.
    Pending(u32),
    /// No match.
    None,
}

/// Matches the current task's cgroup, then its ancestors from the nearest up, against
/// `CGROUP_AGENTS`: a selector on a pod slice covers the container scopes created under it later.
#[inline(always)]
pub fn match_cgroup() -> CgroupMatch {
    // SAFETY: plain helper calls without pointer arguments.
    let current = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once.
    if let Some(agent) = unsafe { CGROUP_AGENTS.get(current) } {
        return CgroupMatch::Agent(*agent);
    }
    // Walk from the root down so the last hit is the nearest matching ancestor; the walk reaches
    // the task's own cgroup at its own level, and levels below it return 0. A cgroup nearer than
    // the match that agentd has not resolved yet may belong to a more specific agent, so it makes
    // the answer `Pending` rather than the ancestor's agent.
    let mut found = None;
    let mut pending = false;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH as i32 {
        // SAFETY: plain helper call without pointer arguments.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 {
            break;
        }
        // SAFETY: the value is copied out at once.
        if let Some(agent) = unsafe { CGROUP_AGENTS.get(ancestor) } {
            found = Some(*agent);
            pending = false;
        } else if CGROUP_PENDING.get_ptr(ancestor).is_some() {
            pending = true;
        }
        level += 1;
    }
    if pending {
        return CgroupMatch::Pending(found.map_or(0, |a| a.agent_id));
    }
    match found {
        Some(agent) => CgroupMatch::Agent(agent),
        None => CgroupMatch::None,
    }
}
