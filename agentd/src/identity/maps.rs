//! The seam between identity resolution and the kernel: every write agentd makes to the identity
//! maps goes through [`IdentityMaps`], so the resolution logic is unit-tested against
//! [`FakeMaps`] and runs against the real [`KernelMaps`].

use std::collections::HashMap;

use sensor_common::{
    event::InodeId,
    identity::{AgentRef, Binding, ExeRule},
};

use crate::sensor::KernelMaps;

/// A kernel map refused a write.
#[derive(Debug, thiserror::Error)]
#[error("cannot update kernel map {map}")]
pub struct MapWriteError {
    /// The map.
    pub map: &'static str,
    /// The cause.
    #[source]
    pub source: aya::maps::MapError,
}

/// Writes to the identity maps.
pub trait IdentityMaps {
    /// Binds a cgroup (and its descendants) to an agent.
    fn set_cgroup(&mut self, id: u64, agent: AgentRef) -> Result<(), MapWriteError>;
    /// Unbinds a cgroup.
    fn clear_cgroup(&mut self, id: u64);
    /// Marks a new cgroup as resolved.
    fn clear_pending(&mut self, id: u64);
    /// Every cgroup still marked pending.
    fn pending_cgroups(&self) -> Vec<u64>;
    /// Binds an executable inode.
    fn set_exe(&mut self, inode: InodeId, rule: ExeRule) -> Result<(), MapWriteError>;
    /// Unbinds an executable inode.
    fn clear_exe(&mut self, inode: InodeId);
    /// Binds a uid.
    fn set_uid(&mut self, uid: u32, agent: AgentRef) -> Result<(), MapWriteError>;
    /// Binds a gid.
    fn set_gid(&mut self, gid: u32, agent: AgentRef) -> Result<(), MapWriteError>;
    /// Sets a process's binding.
    fn set_binding(&mut self, tgid: u32, binding: Binding) -> Result<(), MapWriteError>;
    /// Drops a process's binding.
    fn clear_binding(&mut self, tgid: u32);
    /// A process's binding, if it has one.
    fn binding(&self, tgid: u32) -> Option<Binding>;
    /// Every key of the selector maps (re-adopted maps may hold an earlier configuration's).
    fn selector_keys(&self) -> SelectorKeys;
    /// Unbinds a uid.
    fn clear_uid(&mut self, uid: u32);
    /// Unbinds a gid.
    fn clear_gid(&mut self, gid: u32);
}

/// The keys of the selector maps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SelectorKeys {
    /// Bound cgroups.
    pub cgroups: Vec<u64>,
    /// Bound executables.
    pub exes: Vec<InodeId>,
    /// Bound uids.
    pub uids: Vec<u32>,
    /// Bound gids.
    pub gids: Vec<u32>,
}

macro_rules! write {
    ($map:expr, $name:expr, $key:expr, $value:expr) => {
        $map.insert($key, $value, 0)
            .map_err(|source| MapWriteError { map: $name, source })
    };
}

impl IdentityMaps for KernelMaps {
    fn set_cgroup(&mut self, id: u64, agent: AgentRef) -> Result<(), MapWriteError> {
        write!(
            self.cgroup_agents,
            sensor_common::names::CGROUP_AGENTS,
            id, agent
        )
    }

    fn clear_cgroup(&mut self, id: u64) {
        let _ = self.cgroup_agents.remove(&id);
    }

    fn clear_pending(&mut self, id: u64) {
        let _ = self.cgroup_pending.remove(&id);
    }

    fn pending_cgroups(&self) -> Vec<u64> {
        self.cgroup_pending.keys().filter_map(Result::ok).collect()
    }

    fn set_exe(&mut self, inode: InodeId, rule: ExeRule) -> Result<(), MapWriteError> {
        write!(
            self.exe_agents,
            sensor_common::names::EXE_AGENTS,
            inode, rule
        )
    }

    fn clear_exe(&mut self, inode: InodeId) {
        let _ = self.exe_agents.remove(&inode);
    }

    fn set_uid(&mut self, uid: u32, agent: AgentRef) -> Result<(), MapWriteError> {
        write!(
            self.uid_agents,
            sensor_common::names::UID_AGENTS,
            uid, agent
        )
    }

    fn set_gid(&mut self, gid: u32, agent: AgentRef) -> Result<(), MapWriteError> {
        write!(
            self.gid_agents,
            sensor_common::names::GID_AGENTS,
            gid, agent
        )
    }

    fn set_binding(&mut self, tgid: u32, binding: Binding) -> Result<(), MapWriteError> {
        write!(
            self.bindings,
            sensor_common::names::PROC_BINDINGS,
            tgid, binding
        )
    }

    fn clear_binding(&mut self, tgid: u32) {
        let _ = self.bindings.remove(&tgid);
    }

    fn binding(&self, tgid: u32) -> Option<Binding> {
        self.bindings.get(&tgid, 0).ok()
    }

    fn selector_keys(&self) -> SelectorKeys {
        SelectorKeys {
            cgroups: self.cgroup_agents.keys().filter_map(Result::ok).collect(),
            exes: self.exe_agents.keys().filter_map(Result::ok).collect(),
            uids: self.uid_agents.keys().filter_map(Result::ok).collect(),
            gids: self.gid_agents.keys().filter_map(Result::ok).collect(),
        }
    }

    fn clear_uid(&mut self, uid: u32) {
        let _ = self.uid_agents.remove(&uid);
    }

    fn clear_gid(&mut self, gid: u32) {
        let _ = self.gid_agents.remove(&gid);
    }
}

/// In-memory maps for unit tests.
#[derive(Debug, Default)]
pub struct FakeMaps {
    /// cgroup id → agent.
    pub cgroups: HashMap<u64, AgentRef>,
    /// Pending cgroups.
    pub pending: Vec<u64>,
    /// Executables.
    pub exes: HashMap<InodeId, ExeRule>,
    /// uids.
    pub uids: HashMap<u32, AgentRef>,
    /// gids.
    pub gids: HashMap<u32, AgentRef>,
    /// Process bindings.
    pub bindings: HashMap<u32, Binding>,
}

impl IdentityMaps for FakeMaps {
    fn set_cgroup(&mut self, id: u64, agent: AgentRef) -> Result<(), MapWriteError> {
        self.cgroups.insert(id, agent);
        Ok(())
    }

    fn clear_cgroup(&mut self, id: u64) {
        self.cgroups.remove(&id);
    }

    fn clear_pending(&mut self, id: u64) {
        self.pending.retain(|&p| p != id);
    }

    fn pending_cgroups(&self) -> Vec<u64> {
        self.pending.clone()
    }

    fn set_exe(&mut self, inode: InodeId, rule: ExeRule) -> Result<(), MapWriteError> {
        self.exes.insert(inode, rule);
        Ok(())
    }

    fn clear_exe(&mut self, inode: InodeId) {
        self.exes.remove(&inode);
    }

    fn set_uid(&mut self, uid: u32, agent: AgentRef) -> Result<(), MapWriteError> {
        self.uids.insert(uid, agent);
        Ok(())
    }

    fn set_gid(&mut self, gid: u32, agent: AgentRef) -> Result<(), MapWriteError> {
        self.gids.insert(gid, agent);
        Ok(())
    }

    fn set_binding(&mut self, tgid: u32, binding: Binding) -> Result<(), MapWriteError> {
        self.bindings.insert(tgid, binding);
        Ok(())
    }

    fn clear_binding(&mut self, tgid: u32) {
        self.bindings.remove(&tgid);
    }

    fn binding(&self, tgid: u32) -> Option<Binding> {
        self.bindings.get(&tgid).copied()
    }

    fn selector_keys(&self) -> SelectorKeys {
        SelectorKeys {
            cgroups: self.cgroups.keys().copied().collect(),
            exes: self.exes.keys().copied().collect(),
            uids: self.uids.keys().copied().collect(),
            gids: self.gids.keys().copied().collect(),
        }
    }

    fn clear_uid(&mut self, uid: u32) {
        self.uids.remove(&uid);
    }

    fn clear_gid(&mut self, gid: u32) {
        self.gids.remove(&gid);
    }
}
