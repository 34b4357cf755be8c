//! The narrow wrappers around kernel memory reads. Every read goes through
//! `bpf_probe_read_kernel`, which validates the address and fails instead of faulting.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use sensor_common::offsets::{KernelOffsets, MISSING};

/// Kernel field offsets, filled in from BTF by agentd at load time (see
/// `sensor_common::offsets`). `MISSING` everywhere in the object file.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::UNSET;

/// The offset of one field, read from `OFFSETS`.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: reading a field of an immutable static. The read is volatile so the compiler
        // cannot fold in the object file's `MISSING` value: agentd rewrites it at load time.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::read::OFFSETS.$field)) }
    };
}
pub(crate) use off;

/// A failed read: a missing offset or an address the kernel refused.
#[derive(Clone, Copy)]
pub struct ReadError;

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub fn kread<T>(base: *const u8, offset: u32) -> Result<T, ReadError> {
    if offset == MISSING || base.is_null() {
        return Err(ReadError);
    }
    let src = base.wrapping_add(offset as usize).cast::<T>();
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path; an invalid
    // address returns an error rather than faulting.
    unsafe { bpf_probe_read_kernel(src) }.map_err(|_| ReadError)
}

/// Reads a kernel pointer at `base + offset`.
#[inline(always)]
pub fn kptr(base: *const u8, offset: u32) -> Result<*const u8, ReadError> {
    let ptr: *const u8 = kread(base, offset)?;
    if ptr.is_null() {
        Err(ReadError)
    } else {
        Ok(ptr)
    }
}
