//! cgroup creation and removal in the cgroup v2 hierarchy. A new cgroup is marked pending until
//! agentd has matched its path against the cgroup selectors, so a process that execs in it
//! before then is bound as pending (and reported) rather than silently missed.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, generated::bpf_ktime_get_boot_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    event::{CgroupEvent, EventKind, HDR_UNATTRIBUTED},
    identity::Binding,
    loss::LOSS_CGROUP,
};

use crate::{
    binding::{Subject, bound},
    emit::{count_loss, fill_header, submit_flags},
    maps::{CGROUP_PENDING, EVENTS},
};

// Offsets in the `cgroup:cgroup_mkdir` and `cgroup:cgroup_rmdir` records (both use the
// `cgroup` event class); agentd checks them against the tracepoint's format file at start-up.
const ROOT: usize = 8;
const LEVEL: usize = 12;
const ID: usize = 16;
const PATH: usize = 24;
/// Hierarchy id of cgroup v2 (the default hierarchy).
const V2_ROOT: i32 = 0;

/// match-proto:v6.18:include/trace/events/cgroup.h:
/// DEFINE_EVENT(cgroup, cgroup_mkdir, TP_PROTO(struct cgroup *cgrp, const char *path))
#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup(&ctx, EventKind::CgroupMkdir);
    0
}

/// match-proto:v6.18:include/trace/events/cgroup.h:
/// DEFINE_EVENT(cgroup, cgroup_rmdir, TP_PROTO(struct cgroup *cgrp, const char *path))
#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup(&ctx, EventKind::CgroupRmdir);
    0
}

fn try_cgroup(ctx: &TracePointContext, kind: EventKind) -> Result<(), i32> {
    // SAFETY: the offsets lie within the tracepoint record (checked against its format file).
    let (root, level, id, path_loc) = unsafe {
        (
            ctx.read_at::<i32>(ROOT)?,
            ctx.read_at::<i32>(LEVEL)?,
            ctx.read_at::<u64>(ID)?,
            ctx.read_at::<u32>(PATH)?,
        )
    };
    if root != V2_ROOT {
        return Ok(());
    }
    if kind == EventKind::CgroupMkdir {
        // SAFETY: plain helper call without pointer arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        if CGROUP_PENDING.insert(id, now, 0).is_err() {
            count_loss(LOSS_CGROUP);
        }
    } else {
        let _ = CGROUP_PENDING.remove(id);
    }

    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let subject = match bound(tgid) {
        Some(binding) => Subject { binding, flags: 0 },
        None => Subject {
            binding: Binding::default(),
            flags: HDR_UNATTRIBUTED,
        },
    };
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        count_loss(LOSS_CGROUP);
        return Ok(());
    };
    // SAFETY: CgroupEvent is plain integers and bytes, valid for any bit pattern; every scalar
    // field is written, and user space reads `path` only up to `path_len`.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, kind, &subject);
    ev.id = id;
    ev.root = root as u32;
    ev.level = level as u32;
    ev._pad = 0;
    // A `__data_loc` field: the low 16 bits are the string's offset from the record's start.
    let path = (ctx.as_ptr() as *const u8).wrapping_add((path_loc & 0xffff) as usize);
    // SAFETY: the helper bounds the copy by the destination and stops at a NUL; a bad source
    // address returns an error.
    ev.path_len = match unsafe { bpf_probe_read_kernel_str_bytes(path, &mut ev.path) } {
        Ok(bytes) => bytes.len() as u32,
        Err(_) => 0,
    };
    entry.submit(submit_flags());
    Ok(())
}
