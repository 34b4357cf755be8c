//! Slots of the per-CPU `LOSS` counter array. Each counts events the kernel could not deliver;
//! agentd sums the CPUs and turns every increase into an explicit loss record.

/// Ring buffer full: an exec record was dropped.
pub const LOSS_EXEC: u32 = 0;
/// Ring buffer full: a fork record was dropped.
pub const LOSS_FORK: u32 = 1;
/// Ring buffer full: an exit record was dropped.
pub const LOSS_EXIT: u32 = 2;
/// Ring buffer full: a file record was dropped.
pub const LOSS_FILE: u32 = 3;
/// Ring buffer full: a network record was dropped.
pub const LOSS_NET: u32 = 4;
/// Ring buffer full: a cgroup record was dropped (a new cgroup may go unresolved).
pub const LOSS_CGROUP: u32 = 5;
/// `PROC_BINDINGS` full: a process could not be bound (its events will be missing).
pub const LOSS_BINDING: u32 = 6;
/// A per-thread pending map was full: a file or network call went unrecorded.
pub const LOSS_PENDING: u32 = 7;
/// Number of slots.
pub const LOSS_SLOTS: u32 = 8;
