//! Wire types shared by the Custos eBPF programs (`sensor-ebpf`) and the daemon (`agentd`).
//!
//! Everything the kernel writes and user space reads, or the other way round, is defined here
//! once. The rules that keep that safe:
//!
//! - Types are plain `#[repr(C)]`, `Copy` data with explicit padding fields and a compile-time
//!   size assertion, so both sides agree on every byte and the verifier never sees implicit
//!   padding it could refuse to copy.
//! - No `bool`, `Option` or Rust enum inside a wire struct: bytes written by the kernel that do not
//!   form a valid discriminant would be undefined behaviour once read as a Rust enum. Kinds travel
//!   as `u32` and are converted with `TryFrom` in user space.
//! - Event kind ids are stable: signed records outlive the code that wrote them, so an id is never
//!   reused or renumbered (see [`event::EventKind`]).
//! - Map and program names are `pub const` in [`names`]; the eBPF side declares its maps with
//!   these names and agentd looks them up with the same constants.
//!
//! # Layout
//!
//! - [`event`]: the ring-buffer records (a common [`event::EventHeader`] plus one payload per kind).
//! - [`identity`]: how a process is bound to an agent identity in the kernel.
//! - [`offsets`]: kernel struct field offsets, read from BTF by agentd and handed to the programs.
//! - [`config`]: run-time settings agentd writes into the `CONFIG` map.
//! - [`egress`]: egress policy maps (per-agent allowlists, DNS pins, quarantine).
//! - [`loss`]: the per-CPU loss counter slots.
//! - [`names`]: map and program names, capacities.
#![no_std]
#![deny(missing_docs)]

pub mod config;
pub mod egress;
pub mod event;
pub mod identity;
pub mod loss;
pub mod names;
pub mod offsets;
#[cfg(feature = "user")]
mod pod;
