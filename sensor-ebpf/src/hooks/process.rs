//! Process lifecycle: exec binds the process to an agent and reports it; fork hands the binding
//! to the child before the child first runs; exit reports the end and drops the binding.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sensor_common::{
    config::MODE_HOST,
    event::{
        ARGV_LEN, EXEC_ARGV_TRUNCATED, EXEC_EXE_CHANGED, EXEC_FILENAME_TRUNCATED, EXEC_SCRIPT,
        EventKind, ExecEvent, ExitEvent, ForkEvent, HDR_UNATTRIBUTED, InodeId, PATH_LEN,
    },
    identity::{AGENT_PENDING, AgentRef, Binding, HOW_DIRECT, HOW_INHERITED, HOW_PENDING},
    loss::{LOSS_BINDING, LOSS_EXEC, LOSS_EXIT, LOSS_FORK},
};

use crate::{
    binding::{CgroupMatch, Subject, bound, config, match_cgroup, process_start, subject},
    emit::{count_loss, fill_header, submit_flags},
    maps::{EVENTS, EXE_AGENTS, FILE_PENDING, GID_AGENTS, NET_PENDING, PROC_BINDINGS, UID_AGENTS},
    read::{ReadError, kptr, kread, off},
};

/// match-proto:v6.18:include/trace/events/sched.h:
/// TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn proc_exec(ctx: BtfTracePointContext) -> i32 {
    let _ = try_proc_exec(&ctx);
    0
}

/// The bits of `inode.i_ctime_nsec` that hold nanoseconds.
const CTIME_NSEC_MASK: u32 = (1 << 30) - 1;

/// An inode and its ctime, read from a `struct file`.
struct FileIdentity {
    id: InodeId,
    ctime_sec: i64,
    ctime_nsec: u32,
}

#[inline(always)]
fn file_identity(file: *const u8) -> Result<FileIdentity, ReadError> {
    let inode = kptr(file, off!(file_inode))?;
    let sb = kptr(inode, off!(inode_sb))?;
    Ok(FileIdentity {
        id: InodeId {
            dev: kread(sb, off!(sb_dev))?,
            _pad: 0,
            ino: kread(inode, off!(inode_ino))?,
        },
        ctime_sec: kread(inode, off!(inode_ctime_sec))?,
        // Multigrain timestamps (Linux 6.13+) keep an "observed" flag in bit 31 of the
        // nanoseconds (I_CTIME_QUERIED); nanoseconds themselves never exceed 30 bits.
        ctime_nsec: kread::<u32>(inode, off!(inode_ctime_nsec))? & CTIME_NSEC_MASK,
    })
}

/// The agent an executable selector binds `file` to. A bound inode whose ctime moved since agentd
/// hashed it is no longer the file that was checked: no binding, and `EXEC_EXE_CHANGED`.
#[inline(always)]
fn match_exe(file: &FileIdentity, flags: &mut u32) -> Option<AgentRef> {
    // SAFETY: the value is copied out at once.
    let rule = unsafe { EXE_AGENTS.get(file.id) }?;
    if rule.ctime_sec == file.ctime_sec && rule.ctime_nsec == file.ctime_nsec {
        Some(rule.agent)
    } else {
        *flags |= EXEC_EXE_CHANGED;
        None
    }
}

fn try_proc_exec(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let cfg = config();
    if tgid == cfg.self_tgid {
        return Ok(());
    }
    let uid_gid = bpf_get_current_uid_gid();
    let (uid, gid) = (uid_gid as u32, (uid_gid >> 32) as u32);
    let exe = file_identity(kptr(bprm, off!(bprm_file))?)?;
    let script = match kptr(bprm, off!(bprm_executable)) {
        Ok(file) => file_identity(file).ok(),
        Err(_) => None,
    };
    // After exec the task is its thread group's leader, so its own start time names the process.
    let start_ns: u64 = kread(task, off!(task_start_boottime)).unwrap_or(0);

    // Selectors in precedence order: cgroup, executable (a script before its interpreter), uid,
    // gid, then the binding inherited from the parent at fork.
    let mut exec_flags = 0;
    let resolved = match match_cgroup() {
        CgroupMatch::Agent(agent) => Some((agent, HOW_DIRECT)),
        CgroupMatch::Pending(covering) => Some((
            AgentRef {
                agent_id: AGENT_PENDING,
                selector_id: covering,
            },
            HOW_PENDING,
        )),
        CgroupMatch::None => None,
    };
    let resolved = match resolved {
        Some(found) => Some(found),
        None => {
            let by_script = match &script {
                Some(script) => match_exe(script, &mut exec_flags),
                None => None,
            };
            match by_script.or_else(|| match_exe(&exe, &mut exec_flags)) {
                Some(agent) => Some((agent, HOW_DIRECT)),
                // SAFETY: the values are copied out at once.
                None => match unsafe { UID_AGENTS.get(uid).or_else(|| GID_AGENTS.get(gid)) } {
                    Some(agent) => Some((*agent, HOW_DIRECT)),
                    None => bound(tgid).map(|previous| {
                        let how = if previous.how == HOW_PENDING {
                            HOW_PENDING
                        } else {
                            HOW_INHERITED
                        };
                        (previous.agent, how)
                    }),
                },
            }
        }
    };
    if script.is_some() {
        exec_flags |= EXEC_SCRIPT;
    }

    let subject = match resolved {
        Some((agent, how)) => {
            let binding = Binding {
                agent,
                how,
                _pad: 0,
                start_ns,
            };
            if PROC_BINDINGS.insert(tgid, binding, 0).is_err() {
                count_loss(LOSS_BINDING);
            }
            Subject { binding, flags: 0 }
        }
        None if cfg.mode == MODE_HOST => Subject {
            binding: Binding {
                start_ns,
                ..Binding::default()
            },
            flags: HDR_UNATTRIBUTED,
        },
        None => return Ok(()),
    };

    // Everything fallible that does not write into the record is done before the reservation:
    // once reserved, the record must be submitted on every path (the verifier checks it).
    let filename: *const u8 = kread(bprm, off!(bprm_filename)).unwrap_or(core::ptr::null());
    let parent = kptr(task, off!(task_real_parent)).ok();
    let (ppid, parent_start_ns) = match parent {
        Some(parent) => (
            kread::<u32>(parent, off!(task_tgid)).unwrap_or(0),
            process_start(parent),
        ),
        None => (0, 0),
    };
    let (arg_start, arg_end) = match kptr(task, off!(task_mm)) {
        Ok(mm) => (
            kread::<u64>(mm, off!(mm_arg_start)).unwrap_or(0),
            kread::<u64>(mm, off!(mm_arg_end)).unwrap_or(0),
        ),
        Err(_) => (0, 0),
    };

    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_loss(LOSS_EXEC);
        return Ok(());
    };
    // SAFETY: ExecEvent is plain integers and byte arrays, valid for any bit pattern; every
    // scalar field is written below, and user space reads the arrays only up to their lengths.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Exec, &subject);
    ev.ppid = ppid;
    ev.parent_start_ns = parent_start_ns;
    ev.exe = exe.id;
    ev.script = match &script {
        Some(script) => script.id,
        None => InodeId::default(),
    };

    ev.filename_len = 0;
    if !filename.is_null() {
        // SAFETY: the helper bounds the copy by the destination's length and stops at a NUL;
        // a bad source address returns an error.
        if let Ok(name) = unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut ev.filename) } {
            ev.filename_len = name.len() as u32;
            if name.len() >= PATH_LEN - 1 {
                exec_flags |= EXEC_FILENAME_TRUNCATED;
            }
        }
    }

    ev.argv_len = 0;
    let mut len = arg_end.wrapping_sub(arg_start) as usize;
    if len > ARGV_LEN {
        len = ARGV_LEN;
        exec_flags |= EXEC_ARGV_TRUNCATED;
    }
    if arg_start != 0 && len > 0 {
        // SAFETY: the destination slice is within the record (len <= ARGV_LEN); a bad source
        // address returns an error.
        if unsafe { bpf_probe_read_user_buf(arg_start as *const u8, &mut ev.argv[..len]) }.is_ok() {
            ev.argv_len = len as u32;
        }
    }
    ev.flags = exec_flags;
    entry.submit(submit_flags());
    Ok(())
}

/// match-proto:v6.18:include/trace/events/sched.h:
/// TP_PROTO(struct task_struct *parent, struct task_struct *child)
///
/// Runs in the parent, after `copy_process` and before `wake_up_new_task`: the child's binding
/// is in place before the child runs.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn proc_fork(ctx: BtfTracePointContext) -> i32 {
    let _ = try_proc_fork(&ctx);
    0
}

fn try_proc_fork(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let child: *const u8 = ctx.arg(1);
    let child_pid: u32 = kread(child, off!(task_pid))?;
    let child_tgid: u32 = kread(child, off!(task_tgid))?;
    if child_pid != child_tgid {
        // A new thread: it shares its process's binding, keyed by tgid.
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let child_start_ns: u64 = kread(child, off!(task_start_boottime)).unwrap_or(0);
    match bound(tgid) {
        Some(parent) => {
            let how = if parent.how == HOW_PENDING {
                HOW_PENDING
            } else {
                HOW_INHERITED
            };
            let binding = Binding {
                agent: parent.agent,
                how,
                _pad: 0,
                start_ns: child_start_ns,
            };
            if PROC_BINDINGS.insert(child_tgid, binding, 0).is_err() {
                count_loss(LOSS_BINDING);
            }
        }
        // Exit drops every binding, but a stale one under a reused pid must never attach a new,
        // unrelated process to an agent.
        None => {
            let _ = PROC_BINDINGS.remove(child_tgid);
        }
    }
    let Some(subject) = subject(tgid) else {
        return Ok(());
    };
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count_loss(LOSS_FORK);
        return Ok(());
    };
    // SAFETY: ForkEvent is plain integers, valid for any bit pattern; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Fork, &subject);
    ev.child_tgid = child_tgid;
    ev._pad = 0;
    ev.child_start_ns = child_start_ns;
    entry.submit(submit_flags());
    Ok(())
}

/// match-proto:v6.18:include/trace/events/sched.h:
/// TP_PROTO(struct task_struct *p, bool group_dead)
///
/// Fires for every exiting thread; `group_dead` marks the last one, when the process is gone.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn proc_exit(ctx: BtfTracePointContext) -> i32 {
    let _ = try_proc_exit(&ctx);
    0
}

fn try_proc_exit(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let task: *const u8 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(subject) = subject(tgid) else {
        return Ok(());
    };
    // A thread killed inside a call never reaches the call's exit hook.
    let _ = FILE_PENDING.remove(pid_tgid);
    let _ = NET_PENDING.remove(pid_tgid);
    if group_dead & 0xff == 0 {
        return Ok(());
    }
    let exit_code: u32 = kread(task, off!(task_exit_code)).unwrap_or(0);
    if subject.flags & HDR_UNATTRIBUTED == 0 {
        let _ = PROC_BINDINGS.remove(tgid);
    }
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_loss(LOSS_EXIT);
        return Ok(());
    };
    // SAFETY: ExitEvent is plain integers, valid for any bit pattern; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Exit, &subject);
    ev.exit_code = exit_code;
    ev._pad = 0;
    entry.submit(submit_flags());
    Ok(())
}
