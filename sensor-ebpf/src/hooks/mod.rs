//! The hooks, one module per family. Every hook has the same shape: a thin exported program
//! that returns the verdict, and a `try_` function that does the work and returns a `Result`.
//! Hooks that return a verdict (the cgroup socket hooks) map an error to "allow" on purpose:
//! the observation hooks must never change what a process can do.

pub mod cgroup;
pub mod file;
pub mod net;
pub mod process;
