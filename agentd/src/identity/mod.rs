//! Agent identity: turning the configuration's selectors into kernel map entries, keeping them
//! current as cgroups come and go and executables change, and binding the processes that were
//! already running when agentd started.
//!
//! The kernel does the binding at exec and fork (see `sensor_common::identity`); this module
//! decides what the maps say. Every change it makes is returned as an [`IdentityChange`] so the
//! pipeline can log it.

pub mod cgroups;
pub mod exe;
pub mod maps;
pub mod procscan;
pub mod registry;

use std::{collections::HashMap, path::PathBuf};

use sensor_common::{
    event::InodeId,
    identity::{AGENT_PENDING, AgentRef, Binding, ExeRule, HOW_DIRECT, HOW_INHERITED},
};

use self::{
    cgroups::CgroupIndex,
    maps::{IdentityMaps, MapWriteError},
    procscan::ProcSnapshot,
    registry::Registry,
};
use crate::config::SelectorKind;

/// A change to what the kernel maps say about identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityChange {
    /// A cgroup now belongs to an agent.
    CgroupBound {
        /// The selector.
        selector_id: u32,
        /// The agent.
        agent_id: u32,
        /// cgroup id.
        cgroup_id: u64,
        /// cgroup path.
        path: String,
    },
    /// A bound cgroup was removed.
    CgroupUnbound {
        /// The selector.
        selector_id: u32,
        /// The agent.
        agent_id: u32,
        /// cgroup id.
        cgroup_id: u64,
        /// cgroup path.
        path: String,
    },
    /// An executable's inode now belongs to an agent.
    ExeBound {
        /// The selector.
        selector_id: u32,
        /// The agent.
        agent_id: u32,
        /// The file.
        path: PathBuf,
        /// Its inode.
        inode: InodeId,
        /// Its SHA-256.
        sha256: [u8; 32],
    },
    /// An executable selector binds nothing: the file is missing, unreadable, or its hash
    /// differs from the configured one.
    ExeRefused {
        /// The selector.
        selector_id: u32,
        /// The agent.
        agent_id: u32,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
        /// The file's actual SHA-256, when it could be read.
        actual_sha256: Option<[u8; 32]>,
    },
}

/// A process's facts, as the exec hook would see them.
#[derive(Debug, Clone)]
pub struct ProcessFacts<'a> {
    /// cgroup v2 path.
    pub cgroup: &'a str,
    /// The executable's inode.
    pub exe: Option<InodeId>,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
}

/// The identity state agentd keeps next to the kernel maps.
pub struct Identity {
    registry: Registry,
    cgroup_root: PathBuf,
    cgroups: CgroupIndex,
    /// cgroup id → the selector that binds it (mirrors `CGROUP_AGENTS`).
    cgroup_bound: HashMap<u64, AgentRef>,
    /// Executable selector id → the inode it currently binds.
    exe_bound: HashMap<u32, InodeId>,
}

impl Identity {
    /// Identity state for `registry`, with cgroups under `cgroup_root`.
    pub fn new(registry: Registry, cgroup_root: PathBuf) -> Self {
        Self {
            registry,
            cgroup_root,
            cgroups: CgroupIndex::default(),
            cgroup_bound: HashMap::new(),
            exe_bound: HashMap::new(),
        }
    }

    /// The configured identities.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The path of cgroup `id`, if known.
    pub fn cgroup_path(&self, id: u64) -> Option<&str> {
        self.cgroups.path(id)
    }

    /// Fills the maps from scratch: every cgroup, executable, uid and gid selector. Cgroups
    /// created while this runs are marked pending by the kernel and reach [`Self::on_mkdir`].
    pub fn sync(
        &mut self,
        maps: &mut impl IdentityMaps,
    ) -> Result<Vec<IdentityChange>, MapWriteError> {
        let mut changes = Vec::new();
        self.cgroups = CgroupIndex::walk(&self.cgroup_root).unwrap_or_else(|err| {
            tracing::warn!(root = %self.cgroup_root.display(), %err, "cannot walk the cgroup tree");
            CgroupIndex::default()
        });
        let paths: Vec<(u64, String)> = self
            .cgroups
            .iter()
            .map(|(id, p)| (id, p.to_owned()))
            .collect();
        for (id, path) in paths {
            if let Some(change) = self.bind_cgroup(maps, id, &path)? {
                changes.push(change);
            }
        }
        for id in maps.pending_cgroups() {
            maps.clear_pending(id);
        }
        let exe_ids: Vec<u32> = self
            .registry
            .selectors()
            .iter()
            .filter(|s| matches!(s.kind, SelectorKind::Executable { .. }))
            .map(|s| s.id)
            .collect();
        for id in exe_ids {
            changes.push(self.check_exe(maps, id)?);
        }
        for selector in self.registry.selectors() {
            match selector.kind {
                SelectorKind::Uid(uid) => maps.set_uid(uid, selector.agent_ref())?,
                SelectorKind::Gid(gid) => maps.set_gid(gid, selector.agent_ref())?,
                _ => {}
            }
        }
        self.remove_stale(maps);
        Ok(changes)
    }

    /// Removes what the maps hold beyond the current configuration: maps re-adopted from an
    /// earlier run may carry its selectors. Done after the new entries are written, so a
    /// selector present in both runs is never missing for a moment.
    fn remove_stale(&self, maps: &mut impl IdentityMaps) {
        let keys = maps.selector_keys();
        for id in keys
            .cgroups
            .into_iter()
            .filter(|id| !self.cgroup_bound.contains_key(id))
        {
            maps.clear_cgroup(id);
        }
        for inode in keys
            .exes
            .into_iter()
            .filter(|i| !self.exe_bound.values().any(|b| b == i))
        {
            maps.clear_exe(inode);
        }
        let configured = |want: fn(&SelectorKind) -> Option<u32>| -> Vec<u32> {
            self.registry
                .selectors()
                .iter()
                .filter_map(|s| want(&s.kind))
                .collect()
        };
        let uids = configured(|k| {
            if let SelectorKind::Uid(u) = k {
                Some(*u)
            } else {
                None
            }
        });
        let gids = configured(|k| {
            if let SelectorKind::Gid(g) = k {
                Some(*g)
            } else {
                None
            }
        });
        for uid in keys.uids.into_iter().filter(|u| !uids.contains(u)) {
            maps.clear_uid(uid);
        }
        for gid in keys.gids.into_iter().filter(|g| !gids.contains(g)) {
            maps.clear_gid(gid);
        }
    }

    fn bind_cgroup(
        &mut self,
        maps: &mut impl IdentityMaps,
        id: u64,
        path: &str,
    ) -> Result<Option<IdentityChange>, MapWriteError> {
        let Some(selector) = self.registry.match_cgroup(path) else {
            return Ok(None);
        };
        let agent = selector.agent_ref();
        maps.set_cgroup(id, agent)?;
        self.cgroup_bound.insert(id, agent);
        Ok(Some(IdentityChange::CgroupBound {
            selector_id: agent.selector_id,
            agent_id: agent.agent_id,
            cgroup_id: id,
            path: path.to_owned(),
        }))
    }

    /// A cgroup was created: bind it if a selector matches, and clear its pending mark.
    pub fn on_mkdir(
        &mut self,
        maps: &mut impl IdentityMaps,
        id: u64,
        path: &str,
    ) -> Result<Option<IdentityChange>, MapWriteError> {
        self.cgroups.insert(id, path.to_owned());
        let change = self.bind_cgroup(maps, id, path.trim_start_matches('/'));
        // Cleared even when binding failed: the process that waits on it is then reported under
        // the pending binding and resolved here in user space, never left pending forever.
        maps.clear_pending(id);
        change
    }

    /// A cgroup was removed.
    pub fn on_rmdir(&mut self, maps: &mut impl IdentityMaps, id: u64) -> Option<IdentityChange> {
        let path = self.cgroups.remove(id).unwrap_or_default();
        maps.clear_pending(id);
        let agent = self.cgroup_bound.remove(&id)?;
        maps.clear_cgroup(id);
        Some(IdentityChange::CgroupUnbound {
            selector_id: agent.selector_id,
            agent_id: agent.agent_id,
            cgroup_id: id,
            path,
        })
    }

    /// (Re)checks executable selector `selector_id`: hashes the file and binds its inode if the
    /// hash matches, otherwise unbinds whatever inode it bound before.
    pub fn check_exe(
        &mut self,
        maps: &mut impl IdentityMaps,
        selector_id: u32,
    ) -> Result<IdentityChange, MapWriteError> {
        let Some(selector) = self.registry.selector(selector_id) else {
            unreachable!("check_exe is called with the ids of executable selectors");
        };
        let SelectorKind::Executable {
            path,
            sha256: expected,
        } = &selector.kind
        else {
            unreachable!("check_exe is called with the ids of executable selectors");
        };
        let agent = selector.agent_ref();
        let path = path.clone();
        let expected = *expected;
        // Unbind first: a changed file must never stay bound while it is being checked.
        if let Some(old) = self.exe_bound.remove(&selector_id) {
            maps.clear_exe(old);
        }
        let refused = |reason: String, actual_sha256| IdentityChange::ExeRefused {
            selector_id,
            agent_id: agent.agent_id,
            path: path.clone(),
            reason,
            actual_sha256,
        };
        let (digest, stamp) = match exe::hash(&path) {
            Ok(found) => found,
            Err(err) => return Ok(refused(format!("cannot hash the file: {err}"), None)),
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Ok(refused(
                format!(
                    "sha256 is {}, the configuration expects {}",
                    hex::encode(digest),
                    hex::encode(expected)
                ),
                Some(digest),
            ));
        }
        maps.set_exe(
            stamp.inode,
            ExeRule {
                agent,
                ctime_sec: stamp.ctime_sec,
                ctime_nsec: stamp.ctime_nsec,
                _pad: 0,
            },
        )?;
        self.exe_bound.insert(selector_id, stamp.inode);
        Ok(IdentityChange::ExeBound {
            selector_id,
            agent_id: agent.agent_id,
            path,
            inode: stamp.inode,
            sha256: digest,
        })
    }

    /// The executable selector that binds `inode`, if any.
    fn exe_selector(&self, inode: InodeId) -> Option<AgentRef> {
        let (id, _) = self.exe_bound.iter().find(|(_, bound)| **bound == inode)?;
        self.registry.selector(*id).map(|s| s.agent_ref())
    }

    /// The binding the exec hook would give a process with these facts, whose parent's binding
    /// is `parent`: cgroup (nearest matching ancestor), executable, uid, gid, then inheritance.
    pub fn resolve(
        &self,
        facts: &ProcessFacts<'_>,
        parent: Option<&Binding>,
    ) -> Option<(AgentRef, u32)> {
        let by_cgroup = cgroups::self_and_ancestors(facts.cgroup)
            .find_map(|path| self.registry.match_cgroup(path))
            .map(|s| s.agent_ref());
        let direct = by_cgroup
            .or_else(|| facts.exe.and_then(|inode| self.exe_selector(inode)))
            .or_else(|| self.registry.match_uid(facts.uid).map(|s| s.agent_ref()))
            .or_else(|| self.registry.match_gid(facts.gid).map(|s| s.agent_ref()));
        match direct {
            Some(agent) => Some((agent, HOW_DIRECT)),
            None => parent
                .filter(|b| b.agent.agent_id != 0 && b.agent.agent_id != AGENT_PENDING)
                .map(|b| (b.agent, HOW_INHERITED)),
        }
    }

    /// Binds the processes that were running before the hooks were attached (`procs` in
    /// parent-before-child order). A process the kernel bound meanwhile (it forked or exec'd
    /// after the hooks were attached) keeps the kernel's binding. Returns every binding, by pid.
    pub fn bind_running(
        &self,
        maps: &mut impl IdentityMaps,
        procs: &[ProcSnapshot],
    ) -> Result<HashMap<u32, Binding>, MapWriteError> {
        let tick_ns = 1_000_000_000 / procscan::clock_ticks();
        let mut bound: HashMap<u32, Binding> = HashMap::new();
        for proc in procs {
            let facts = ProcessFacts {
                cgroup: &proc.cgroup,
                exe: proc.exe.map(|s| s.inode),
                uid: proc.uid,
                gid: proc.gid,
            };
            // /proc gives start times in clock ticks: a binding within a tick of this process's
            // start is this process's; anything else belongs to an earlier holder of the pid.
            if let Some(existing) = maps.binding(proc.pid)
                && existing.start_ns.abs_diff(proc.start_ns) <= tick_ns
                && (existing.agent.agent_id == AGENT_PENDING
                    || self.registry.agent(existing.agent.agent_id).is_some())
            {
                bound.insert(proc.pid, existing);
                continue;
            }
            let parent = bound.get(&proc.ppid).copied();
            if let Some((agent, how)) = self.resolve(&facts, parent.as_ref()) {
                let binding = Binding {
                    agent,
                    how,
                    _pad: 0,
                    start_ns: proc.start_ns,
                };
                maps.set_binding(proc.pid, binding)?;
                bound.insert(proc.pid, binding);
            } else if maps.binding(proc.pid).is_some() {
                // An earlier run's binding to an agent that is no longer configured, or of an
                // earlier holder of the pid.
                maps.clear_binding(proc.pid);
            }
        }
        Ok(bound)
    }
}

#[cfg(test)]
mod tests;
