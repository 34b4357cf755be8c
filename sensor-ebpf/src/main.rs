//! The Custos eBPF programs, one module per hook family (see `hooks`).
//!
//! Built for `bpfel-unknown-none` by `agentd/build.rs` (aya-build) and embedded in agentd.
#![no_std]
#![no_main]
// Inline assembly for the atomic add in `emit::count_loss` (see there).
#![feature(asm_experimental_arch)]

mod binding;
mod egress;
mod emit;
mod hooks;
mod maps;
mod read;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic makes the verifier refuse the program (this loop never terminates), so a
    // panic path that survives optimisation shows up as a load error, never at run time.
    loop {}
}

// GPL-compatible licence: bpf_probe_read_*, bpf_get_current_task and bpf_send_signal are GPL-only
// helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
