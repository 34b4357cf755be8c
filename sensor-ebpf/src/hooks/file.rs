//! File system calls: open, openat, openat2, creat, unlink, unlinkat, rename, renameat,
//! renameat2.
//!
//! The entry hook of each call reads its arguments (user memory can only be trusted to still
//! hold the path at entry) into `FILE_PENDING`, keyed by thread; one shared exit hook, attached to
//! every call's `sys_exit_*` tracepoint, adds the result and emits the record.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    event::{
        AT_FDCWD, FILE_PATH_TRUNCATED, FILE_PATH2_TRUNCATED, FileArgs, FileEvent, FileSyscall,
        PATH_LEN,
    },
    loss::{LOSS_FILE, LOSS_PENDING},
};

use crate::{
    binding::{reported, subject},
    emit::{count_loss, fill_header, submit_flags},
    maps::{EVENTS, FILE_PENDING, FILE_SCRATCH},
};

/// Offset of syscall argument `n` in a `syscalls:sys_enter_*` record (after the 8-byte common
/// header and the 4-byte syscall number, padded to 8): stable across kernels.
const fn arg(n: usize) -> usize {
    16 + 8 * n
}
/// Offset of the return value in a `syscalls:sys_exit_*` record.
const RET: usize = 16;

/// `O_CREAT | O_WRONLY | O_TRUNC`: what `creat` means.
const CREAT_FLAGS: u64 = 0o100 | 0o1 | 0o1000;

macro_rules! enter_hooks {
    ($( $(#[$doc:meta])* $name:ident => $call:expr ),* $(,)?) => {$(
        $(#[$doc])*
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = try_enter(&ctx, $call);
            0
        }
    )*};
}

enter_hooks! {
    /// `sys_enter_open(const char *filename, int flags, umode_t mode)`.
    file_enter_open => FileSyscall::Open,
    /// `sys_enter_openat(int dfd, const char *filename, int flags, umode_t mode)`.
    file_enter_openat => FileSyscall::Openat,
    /// `sys_enter_openat2(int dfd, const char *filename, struct open_how *how, size_t usize)`.
    file_enter_openat2 => FileSyscall::Openat2,
    /// `sys_enter_creat(const char *pathname, umode_t mode)`.
    file_enter_creat => FileSyscall::Creat,
    /// `sys_enter_unlink(const char *pathname)`.
    file_enter_unlink => FileSyscall::Unlink,
    /// `sys_enter_unlinkat(int dfd, const char *pathname, int flag)`.
    file_enter_unlinkat => FileSyscall::Unlinkat,
    /// `sys_enter_rename(const char *oldname, const char *newname)`.
    file_enter_rename => FileSyscall::Rename,
    /// `sys_enter_renameat(int olddfd, const char *oldname, int newdfd, const char *newname)`.
    file_enter_renameat => FileSyscall::Renameat,
    /// `sys_enter_renameat2(int olddfd, const char *oldname, int newdfd, const char *newname,
    /// unsigned int flags)`.
    file_enter_renameat2 => FileSyscall::Renameat2,
}

/// Reads syscall argument `n`.
#[inline(always)]
fn sysarg(ctx: &TracePointContext, n: usize) -> Result<u64, i32> {
    // SAFETY: syscall entry records hold six 8-byte arguments from offset 16.
    unsafe { ctx.read_at::<u64>(arg(n)) }
}

/// The first two fields of `struct open_how` (`include/uapi/linux/openat2.h`).
#[repr(C)]
#[derive(Clone, Copy)]
struct OpenHow {
    flags: u64,
    mode: u64,
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext, call: FileSyscall) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !reported((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let args = FILE_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: a per-CPU array slot, valid for the whole program and used by nothing else on this
    // CPU while the program runs.
    let args: &mut FileArgs = unsafe { &mut *args };
    args.syscall = call as u32;
    args.mode = 0;
    args.flags = 0;
    args.dfd = AT_FDCWD;
    args.dfd2 = AT_FDCWD;
    args.trunc = 0;
    args.kind = call.kind() as u32;
    let (path, path2) = match call {
        FileSyscall::Open => {
            args.flags = sysarg(ctx, 1)?;
            args.mode = sysarg(ctx, 2)? as u32;
            (sysarg(ctx, 0)?, 0)
        }
        FileSyscall::Openat => {
            args.dfd = sysarg(ctx, 0)? as i32;
            args.flags = sysarg(ctx, 2)?;
            args.mode = sysarg(ctx, 3)? as u32;
            (sysarg(ctx, 1)?, 0)
        }
        FileSyscall::Openat2 => {
            args.dfd = sysarg(ctx, 0)? as i32;
            // SAFETY: a user pointer; the helper fails instead of faulting on a bad address.
            if let Ok(how) = unsafe { bpf_probe_read_user(sysarg(ctx, 2)? as *const OpenHow) } {
                args.flags = how.flags;
                args.mode = how.mode as u32;
            }
            (sysarg(ctx, 1)?, 0)
        }
        FileSyscall::Creat => {
            args.flags = CREAT_FLAGS;
            args.mode = sysarg(ctx, 1)? as u32;
            (sysarg(ctx, 0)?, 0)
        }
        FileSyscall::Unlink => (sysarg(ctx, 0)?, 0),
        FileSyscall::Unlinkat => {
            args.dfd = sysarg(ctx, 0)? as i32;
            args.flags = sysarg(ctx, 2)?;
            (sysarg(ctx, 1)?, 0)
        }
        FileSyscall::Rename => (sysarg(ctx, 0)?, sysarg(ctx, 1)?),
        FileSyscall::Renameat => {
            args.dfd = sysarg(ctx, 0)? as i32;
            args.dfd2 = sysarg(ctx, 2)? as i32;
            (sysarg(ctx, 1)?, sysarg(ctx, 3)?)
        }
        FileSyscall::Renameat2 => {
            args.dfd = sysarg(ctx, 0)? as i32;
            args.dfd2 = sysarg(ctx, 2)? as i32;
            args.flags = sysarg(ctx, 4)?;
            (sysarg(ctx, 1)?, sysarg(ctx, 3)?)
        }
    };
    args.path_len = read_path(path, &mut args.path);
    if args.path_len as usize >= PATH_LEN - 1 {
        args.trunc |= FILE_PATH_TRUNCATED;
    }
    args.path2_len = 0;
    if path2 != 0 {
        args.path2_len = read_path(path2, &mut args.path2);
        if args.path2_len as usize >= PATH_LEN - 1 {
            args.trunc |= FILE_PATH2_TRUNCATED;
        }
    }
    // By reference: a by-value `FileArgs` (552 bytes) would not fit the 512-byte BPF stack.
    #[expect(clippy::needless_borrows_for_generic_args, reason = "see above")]
    let inserted = FILE_PENDING.insert(pid_tgid, &*args, 0);
    if inserted.is_err() {
        count_loss(LOSS_PENDING);
    }
    Ok(())
}

/// Copies a user-space string into `buf`; returns its length (0 if unreadable).
#[inline(always)]
fn read_path(ptr: u64, buf: &mut [u8; PATH_LEN]) -> u32 {
    // SAFETY: the helper bounds the copy by `buf` and fails instead of faulting.
    match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, buf) } {
        Ok(bytes) => bytes.len() as u32,
        Err(_) => 0,
    }
}

/// `sys_exit_*` of every file call above: adds the return value to the pending arguments and
/// emits the record.
#[tracepoint]
pub fn file_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = FILE_PENDING.get_ptr(pid_tgid) else {
        return Ok(());
    };
    let result = emit(ctx, pid_tgid, args);
    let _ = FILE_PENDING.remove(pid_tgid);
    result
}

#[inline(always)]
fn emit(ctx: &TracePointContext, pid_tgid: u64, args: *const FileArgs) -> Result<(), i32> {
    // SAFETY: syscall exit records hold the 8-byte return value at offset 16.
    let ret = unsafe { ctx.read_at::<i64>(RET)? };
    let Some(subject) = subject((pid_tgid >> 32) as u32) else {
        return Ok(());
    };
    // SAFETY: `args` comes from a successful map lookup and stays valid for this program.
    let (syscall, kind) = unsafe { ((*args).syscall, (*args).kind) };
    let Some(mut entry) = EVENTS.reserve::<FileEvent>(0) else {
        count_loss(LOSS_FILE);
        return Ok(());
    };
    // SAFETY: FileEvent is plain integers and bytes, valid for any bit pattern; the header and
    // `ret` are written here and `args` is copied whole just below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, kind, &subject);
    ev.ret = ret;
    // SAFETY: a byte view of `ev.args`, which is exactly `size_of::<FileArgs>()` bytes long.
    let dst = unsafe {
        core::slice::from_raw_parts_mut(
            core::ptr::addr_of_mut!(ev.args).cast::<u8>(),
            core::mem::size_of::<FileArgs>(),
        )
    };
    // One helper call copies the 552-byte struct; a Rust assignment would unroll into hundreds of
    // loads and stores.
    // SAFETY: `args` points into a map value of the same size.
    if unsafe { bpf_probe_read_kernel_buf(args.cast::<u8>(), dst) }.is_err() {
        ev.args.syscall = syscall;
        ev.args.path_len = 0;
        ev.args.path2_len = 0;
    }
    entry.submit(submit_flags());
    Ok(())
}
