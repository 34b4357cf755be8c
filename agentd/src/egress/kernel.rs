//! The seam between egress state and the kernel: every write agentd makes to the egress maps
//! goes through [`EgressKernel`], so [`super::state`] is unit-tested against [`FakeKernel`] and
//! runs against the real maps ([`EgressMaps`]).

use std::collections::BTreeMap;

use aya::maps::lpm_trie::Key;
use sensor_common::{
    egress::{AgentPolicy, EgressKey, EgressValue, KEY_FIXED_BITS},
    names,
};

use crate::{config::egress::Net, identity::maps::MapWriteError, sensor::EgressMaps};

/// An entry of the allowlist trie: (agent, generation, network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    /// Agent id.
    pub agent: u32,
    /// Policy generation.
    pub generation: u32,
    /// The network.
    pub net: Net,
}

impl EntryKey {
    fn kernel(&self) -> Key<EgressKey> {
        Key::new(
            KEY_FIXED_BITS + self.net.prefix as u32,
            EgressKey {
                agent_id: self.agent,
                generation: self.generation,
                addr: self.net.addr,
            },
        )
    }

    fn from_kernel(key: &Key<EgressKey>) -> Option<Self> {
        let data = key.data();
        let prefix = key.prefix_len().checked_sub(KEY_FIXED_BITS)?;
        (prefix <= 128).then_some(Self {
            agent: data.agent_id,
            generation: data.generation,
            net: Net {
                addr: data.addr,
                prefix: prefix as u8,
            },
        })
    }
}

/// Writes to (and reads of) the egress maps.
pub trait EgressKernel {
    /// Every agent's policy settings.
    fn policies(&self) -> Vec<(u32, AgentPolicy)>;
    /// Sets an agent's policy settings (one atomic map update).
    fn set_policy(&mut self, agent: u32, policy: AgentPolicy) -> Result<(), MapWriteError>;
    /// Removes an agent's policy settings: its connections are no longer decided.
    fn remove_policy(&mut self, agent: u32);
    /// Every allowlist entry.
    fn entries(&self) -> Vec<(EntryKey, EgressValue)>;
    /// Writes an allowlist entry.
    fn set_entry(&mut self, key: EntryKey, value: &EgressValue) -> Result<(), MapWriteError>;
    /// Removes an allowlist entry.
    fn remove_entry(&mut self, key: EntryKey);
    /// Sets whether processes in unresolved cgroups are denied egress.
    fn set_pending_deny(&mut self, on: bool) -> Result<(), MapWriteError>;
}

impl EgressKernel for EgressMaps {
    fn policies(&self) -> Vec<(u32, AgentPolicy)> {
        self.policy.iter().filter_map(Result::ok).collect()
    }

    fn set_policy(&mut self, agent: u32, policy: AgentPolicy) -> Result<(), MapWriteError> {
        self.policy
            .insert(agent, policy, 0)
            .map_err(|source| MapWriteError {
                map: names::AGENT_POLICY,
                source,
            })
    }

    fn remove_policy(&mut self, agent: u32) {
        let _ = self.policy.remove(&agent);
    }

    fn entries(&self) -> Vec<(EntryKey, EgressValue)> {
        self.rules
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, value)| Some((EntryKey::from_kernel(&key)?, value)))
            .collect()
    }

    fn set_entry(&mut self, key: EntryKey, value: &EgressValue) -> Result<(), MapWriteError> {
        self.rules
            .insert(&key.kernel(), value, 0)
            .map_err(|source| MapWriteError {
                map: names::EGRESS_RULES,
                source,
            })
    }

    fn remove_entry(&mut self, key: EntryKey) {
        let _ = self.rules.remove(&key.kernel());
    }

    fn set_pending_deny(&mut self, on: bool) -> Result<(), MapWriteError> {
        let error = |source| MapWriteError {
            map: names::CONFIG,
            source,
        };
        let mut config = self.config.get(&0, 0).map_err(error)?;
        config.pending_deny = on as u32;
        self.config.set(0, config, 0).map_err(error)
    }
}

/// In-memory maps for unit tests of the state logic, with an optional capacity to exercise
/// a full map.
#[derive(Debug, Default, Clone)]
pub struct FakeKernel {
    /// Policy settings.
    pub policies: BTreeMap<u32, AgentPolicy>,
    /// Allowlist entries.
    pub entries: BTreeMap<EntryKey, EgressValue>,
    /// `pending_deny`.
    pub pending_deny: bool,
    /// Refuse new entries beyond this many (0: no limit).
    pub capacity: usize,
}

impl FakeKernel {
    /// Longest-prefix lookup, as the kernel does it: the agent's current generation, then the
    /// most specific network containing `addr`.
    pub fn lookup(&self, agent: u32, addr: [u8; 16]) -> Option<(Net, EgressValue)> {
        let generation = self.policies.get(&agent)?.generation;
        self.entries
            .iter()
            .filter(|(k, _)| {
                k.agent == agent && k.generation == generation && k.net.contains(&addr)
            })
            .max_by_key(|(k, _)| k.net.prefix)
            .map(|(k, v)| (k.net, *v))
    }
}

impl EgressKernel for FakeKernel {
    fn policies(&self) -> Vec<(u32, AgentPolicy)> {
        self.policies.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn set_policy(&mut self, agent: u32, policy: AgentPolicy) -> Result<(), MapWriteError> {
        self.policies.insert(agent, policy);
        Ok(())
    }

    fn remove_policy(&mut self, agent: u32) {
        self.policies.remove(&agent);
    }

    fn entries(&self) -> Vec<(EntryKey, EgressValue)> {
        self.entries.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn set_entry(&mut self, key: EntryKey, value: &EgressValue) -> Result<(), MapWriteError> {
        if self.capacity != 0
            && self.entries.len() >= self.capacity
            && !self.entries.contains_key(&key)
        {
            return Err(MapWriteError {
                map: names::EGRESS_RULES,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
                }),
            });
        }
        self.entries.insert(key, *value);
        Ok(())
    }

    fn remove_entry(&mut self, key: EntryKey) {
        self.entries.remove(&key);
    }

    fn set_pending_deny(&mut self, on: bool) -> Result<(), MapWriteError> {
        self.pending_deny = on;
        Ok(())
    }
}
