//! The processes agentd reports on, as user space knows them: enough to describe the actor of
//! every event (its executable, command line, parent) and to resolve pending bindings.
//!
//! Entries come from exec and fork records and from the start-up `/proc` scan, and leave with
//! the exit record. Only reported processes are kept, so the table is bounded by them.

use std::collections::HashMap;

use sensor_common::{event::InodeId, identity::Binding};

/// What agentd knows about one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Start time (`CLOCK_BOOTTIME` ns).
    pub start_ns: u64,
    /// Parent process id.
    pub ppid: u32,
    /// Parent start time (`CLOCK_BOOTTIME` ns), when known.
    pub parent_start_ns: u64,
    /// The executable's path as exec was given it (or `/proc/PID/exe` for processes found at
    /// start-up).
    pub exe: Option<String>,
    /// The executable's inode.
    pub exe_inode: Option<InodeId>,
    /// The command line.
    pub cmdline: Option<String>,
    /// Its binding.
    pub binding: Binding,
}

/// Live processes by pid.
#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcessInfo>,
}

impl ProcessTable {
    /// The process `pid`, if known.
    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)
    }

    /// Adds or replaces a process.
    pub fn insert(&mut self, info: ProcessInfo) {
        self.procs.insert(info.pid, info);
    }

    /// A fork: the child starts as a copy of its parent.
    pub fn fork(&mut self, parent: u32, child: u32, child_start_ns: u64, binding: Binding) {
        let mut info = self.procs.get(&parent).cloned().unwrap_or_default();
        info.parent_start_ns = info.start_ns;
        info.ppid = parent;
        info.pid = child;
        info.start_ns = child_start_ns;
        info.binding = binding;
        self.procs.insert(child, info);
    }

    /// An exit.
    pub fn remove(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.procs.remove(&pid)
    }

    /// Every process known.
    pub fn iter(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.procs.values()
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_copies_the_parent() {
        let mut table = ProcessTable::default();
        table.insert(ProcessInfo {
            pid: 10,
            start_ns: 5,
            exe: Some("/bin/sh".into()),
            ..Default::default()
        });
        table.fork(10, 11, 9, Binding::default());
        let child = table.get(11).unwrap();
        assert_eq!(
            (child.pid, child.ppid, child.start_ns, child.parent_start_ns),
            (11, 10, 9, 5)
        );
        assert_eq!(child.exe.as_deref(), Some("/bin/sh"));
        assert!(table.remove(11).is_some());
        assert_eq!(table.len(), 1);
    }
}
