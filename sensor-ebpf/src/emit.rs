//! Filling record headers and counting what could not be delivered.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
};
use sensor_common::event::EventHeader;

use crate::{
    binding::Subject,
    maps::{EVENTS, LOSS, READER},
};

/// The flags every record is submitted with: agentd is woken when it is asleep ([`READER`]
/// set) or the ring is an eighth full, and otherwise left to find the record at its next poll.
///
/// The kernel's default wakes the reader whenever it has caught up, which for a reader as quick
/// as agentd means on almost every record, and each wake-up is an interrupt raised on this CPU
/// (in a virtual machine, a trap to the hypervisor) charged to the traced process: measured
/// with `cargo xtask bench overhead`, about a tenth of a short process's time. While records
/// flow, agentd polls the ring every few milliseconds (`pipeline::WAKE`); once it has found the
/// ring empty for a while it sets [`READER`] and sleeps until a record wakes it, so an idle
/// agentd costs almost nothing and the first record after a lull is not delayed. A flag left
/// set by an agentd killed while asleep makes every record wake a reader that is not there
/// (the kernel's default cost) until the next agentd clears it at start.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if READER.get(0).is_some_and(|asleep| *asleep != 0) {
        return BPF_RB_FORCE_WAKEUP as u64;
    }
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if pending >= size / 8 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Fills `hdr` for an event of `kind` by the current task, reported under `subject`.
#[inline(always)]
pub fn fill_header(hdr: &mut EventHeader, kind: impl Into<u32>, subject: &Subject) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    hdr.kind = kind.into();
    hdr.flags = subject.flags;
    // SAFETY: plain helper calls without pointer arguments.
    hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    hdr.tgid = (pid_tgid >> 32) as u32;
    hdr.tid = pid_tgid as u32;
    hdr.start_ns = subject.binding.start_ns;
    // SAFETY: plain helper call without pointer arguments.
    hdr.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    hdr.uid = uid_gid as u32;
    hdr.gid = (uid_gid >> 32) as u32;
    hdr.agent = subject.binding.agent;
    hdr.how = subject.binding.how;
    hdr._pad = 0;
    hdr.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Counts one undelivered record in `slot` (a `loss::LOSS_*`) on this CPU.
///
/// The add is atomic: the counter is per CPU, but a program interrupted on this CPU by another
/// program that also counts a loss must not lose either count. agentd relies on exact counts.
#[inline(always)]
pub fn count_loss(slot: u32) {
    if let Some(counter) = LOSS.get_ptr_mut(slot) {
        // `core` offers no atomic read-modify-write on the BPF target, so the kernel's atomic add
        // instruction (BPF_ATOMIC | BPF_ADD) is written out.
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, is aligned for a
        // u64 and stays valid for the duration of the program; all updates to it are atomic.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({ptr} + 0) += {one}",
                ptr = in(reg) counter,
                one = in(reg) 1u64,
                options(nostack),
            );
        }
    }
}
