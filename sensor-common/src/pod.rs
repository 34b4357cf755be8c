//! `aya::Pod` for the wire types, in one audited place.
//!
//! SAFETY (for every impl below): each type is `#[repr(C)]`, `Copy`, made only of integers and
//! arrays of integers, and has no implicit padding (the explicit `_pad` fields and the size
//! assertions next to each definition guarantee it), so every bit pattern is a valid value and
//! the bytes can be copied to and from the kernel as-is.

use crate::{
    config::SensorConfig,
    egress::{AgentPolicy, EgressKey, EgressValue},
    event::{FileArgs, InodeId},
    identity::{AgentRef, Binding, ExeRule},
    offsets::KernelOffsets,
};

// SAFETY: see the module documentation.
unsafe impl aya::Pod for AgentRef {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for Binding {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for ExeRule {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for InodeId {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for SensorConfig {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for KernelOffsets {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for FileArgs {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for AgentPolicy {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for EgressKey {}
// SAFETY: see the module documentation.
unsafe impl aya::Pod for EgressValue {}
