//! The egress state agentd keeps beside the kernel maps: each agent's policy in force, the
//! generation of its allowlist entries, and the addresses DNS answers pinned.
//!
//! Changing a policy never leaves an agent half-configured: the new entries of every changed
//! agent are written under a fresh generation first (a failure removes them and leaves the old
//! policies in force), then each agent's [`AgentPolicy`] is switched with one map update, then
//! the old generation's entries are deleted.
//!
//! After a restart the kernel maps (pinned in bpffs) still hold the previous run's state, and it
//! stayed in force the whole time. [`EgressState::adopt`] reads it back: an agent whose policy is
//! unchanged keeps its generation and its pins, so nothing is rewritten at all.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use sensor_common::egress::{
    AgentPolicy, EgressValue, MODE_ENFORCE, MODE_MONITOR, MODE_NONE, PortRule,
};

use super::{
    addr::{AddrClass, classify},
    compile::{self, Entry},
    kernel::{EgressKernel, EntryKey},
};
use crate::{
    config::{
        Policies,
        egress::{EgressMode, EgressPolicy, Net, Target, ip_to_v6},
    },
    identity::maps::MapWriteError,
};

/// The 64-bit policy version the kernel stores and net records carry: the first eight bytes of
/// the policy's SHA-256 (never 0, which means "no policy").
pub fn version_id(hash: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(prefix).max(1)
}

/// What records say about a policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// SHA-256 of the policy, hex.
    pub hash: String,
    /// Monitor or enforce.
    pub mode: EgressMode,
    /// Rule id → the rule as text (`tcp api.example.com:443`).
    pub rules: BTreeMap<u32, String>,
    /// The file the policy was written in.
    pub source: String,
}

/// Every policy version seen in this run, by (agent, version id): a record decided under an
/// older version (still in the ring buffer after a change) is described correctly.
#[derive(Debug, Default)]
pub struct Versions {
    by_id: HashMap<(u32, u64), Arc<PolicyInfo>>,
}

impl Versions {
    /// The policy `version` of `agent`, if this run has seen it.
    pub fn get(&self, agent: u32, version: u64) -> Option<Arc<PolicyInfo>> {
        self.by_id.get(&(agent, version)).cloned()
    }
}

/// Shared between the egress state (writer) and the pipeline (reader).
pub type SharedVersions = Arc<RwLock<Versions>>;

/// Why a policy could not be applied. The policies in force are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A policy does not compile (validation should have caught it).
    #[error("the policy of agent {agent} does not compile: {reason}")]
    Compile {
        /// Agent id.
        agent: u32,
        /// Why.
        reason: String,
    },
    /// A kernel map refused a write (most likely: the allowlist map is full).
    #[error(transparent)]
    Map(#[from] MapWriteError),
}

/// A change of one agent's policy, for the change record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// Agent id.
    pub agent: u32,
    /// The version in force before (hex SHA-256 when this run knew it, else the 16-hex id).
    pub old: Option<String>,
    /// The version in force now.
    pub new: Option<String>,
    /// Whether the policy was carried over from the previous run's kernel state unchanged.
    pub adopted: bool,
    /// The new policy's description.
    pub info: Option<Arc<PolicyInfo>>,
}

/// What happened to one address of a DNS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinOutcome {
    /// The address.
    pub ip: IpAddr,
    /// Its class.
    pub class: AddrClass,
    /// Whether it is now allowed for the agent (pinned).
    pub pinned: bool,
    /// Boot-clock ns at which the pin lapses (when pinned).
    pub expires_ns: u64,
}

/// What a name is, for an agent's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameDecision {
    /// The agent's mode.
    pub mode: EgressMode,
    /// Ids of the host rules that match the name (empty: not allowed).
    pub rules: Vec<u32>,
    /// The policy version id.
    pub version: u64,
}

impl NameDecision {
    /// Whether some rule allows the name.
    pub fn allowed(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// An agent's egress cut by an operator or the detector (or carried over from an earlier run's
/// kernel state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// Why.
    pub reason: String,
    /// Who asked.
    pub by: String,
    /// When, epoch milliseconds (0: before this run).
    pub since_ms: u64,
}

impl Quarantine {
    /// A quarantine starting now.
    pub fn now(reason: impl Into<String>, by: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            by: by.into(),
            since_ms: std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }
}

/// Addresses learned through DNS for one agent, at one address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pin {
    /// Names whose answers held the address → boot-clock ns until which each allows it.
    names: BTreeMap<String, u64>,
    /// Ranges re-adopted from the kernel after a restart (the names behind them are not
    /// known; they still lapse at their own expiry).
    adopted: Vec<PortRule>,
}

impl Pin {
    fn prune(&mut self, now: u64) -> bool {
        let before = (self.names.len(), self.adopted.len());
        self.names.retain(|_, expires| *expires > now);
        self.adopted.retain(|r| r.expires_ns > now);
        before != (self.names.len(), self.adopted.len())
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.adopted.is_empty()
    }
}

/// One agent's policy in force.
#[derive(Debug, Clone)]
struct AgentState {
    policy: EgressPolicy,
    hash: [u8; 32],
    generation: u32,
    quarantined: u32,
    /// Entries for the CIDR rules.
    statics: BTreeMap<Net, Vec<PortRule>>,
    /// Pins by address (IPv6 space).
    pins: BTreeMap<[u8; 16], Pin>,
    /// Everything written under `generation`.
    written: BTreeMap<Net, EgressValue>,
}

impl AgentState {
    /// The policy as records and the API describe it.
    fn info(&self) -> PolicyInfo {
        PolicyInfo {
            hash: hex::encode(self.hash),
            mode: self.policy.mode,
            rules: self
                .policy
                .rules
                .iter()
                .map(|r| (r.id, r.describe()))
                .collect(),
            source: self.policy.source.clone(),
        }
    }
}

/// What an earlier run left in the kernel for one agent.
#[derive(Debug, Clone)]
struct Leftover {
    policy: AgentPolicy,
    entries: BTreeMap<Net, EgressValue>,
}

/// The egress state. Generic over the kernel seam for tests.
pub struct EgressState<K> {
    kernel: K,
    agents: BTreeMap<u32, AgentState>,
    /// The resolver port of every configured agent.
    ports: BTreeMap<u32, u16>,
    grace_ns: u64,
    pending_deny: Option<bool>,
    leftovers: BTreeMap<u32, Leftover>,
    versions: SharedVersions,
    /// Quarantined agents, with or without a policy.
    quarantines: BTreeMap<u32, Quarantine>,
    /// Where the quarantines are saved (see [`super::held`]).
    journal: Option<Journal>,
}

/// Where the quarantines are saved, and what saving needs.
#[derive(Debug, Clone)]
struct Journal {
    dir: std::path::PathBuf,
    /// Every configured agent's name.
    names: BTreeMap<u32, String>,
    /// Saved quarantines not in force (their agent is not configured, or putting them back
    /// failed): kept in the file for a later run or an operator.
    dormant: Vec<super::held::Held>,
}

impl<K: EgressKernel> EgressState<K> {
    /// State over `kernel`; `ports` gives each agent's resolver port, `grace` how long pins
    /// outlive their TTL.
    pub fn new(kernel: K, ports: BTreeMap<u32, u16>, grace: Duration) -> Self {
        Self {
            kernel,
            agents: BTreeMap::new(),
            ports,
            grace_ns: grace.as_nanos() as u64,
            pending_deny: None,
            leftovers: BTreeMap::new(),
            versions: SharedVersions::default(),
            quarantines: BTreeMap::new(),
            journal: None,
        }
    }

    /// From now on, saves the quarantines in `dir` whenever they change; `names` gives every
    /// configured agent's name.
    pub fn keep_quarantines_in(&mut self, dir: std::path::PathBuf, names: BTreeMap<u32, String>) {
        self.journal = Some(Journal {
            dir,
            names,
            dormant: Vec::new(),
        });
    }

    /// Reconciles the quarantines with those saved by an earlier run, once at start.
    ///
    /// With adopted maps (`new_maps` false) the kernel is the truth: saved details (reason,
    /// operator) go to the quarantines it kept, and a saved one it does not hold was released
    /// just before a crash. With new maps, the saved quarantines and those in an earlier run's
    /// maps (`previous`, which also covers a run that saved none) are put back in the kernel.
    /// Saved quarantines of agents no longer configured, or that cannot be put back, stay in
    /// the file. Returns the quarantines put back.
    pub fn restore_quarantines(
        &mut self,
        new_maps: bool,
        previous: &[u32],
    ) -> Vec<(u32, Quarantine)> {
        let Some(journal) = self.journal.as_mut() else {
            return Vec::new();
        };
        let saved = match super::held::load(&journal.dir) {
            Ok(saved) => saved,
            Err(err) => {
                let aside = super::held::set_aside(&journal.dir);
                tracing::error!(%err, aside = %aside.display(), "the saved quarantines cannot be read: moved aside; only those in the kernel maps are in force");
                Vec::new()
            }
        };
        let names = journal.names.clone();
        let mut restored = Vec::new();
        let mut dormant = Vec::new();
        for held in saved {
            let Some((&agent, _)) = names.iter().find(|(_, name)| **name == held.agent) else {
                tracing::warn!(agent = %held.agent, "a saved quarantine names an agent not configured: kept in the file, not in force");
                dormant.push(held);
                continue;
            };
            let quarantine = Quarantine {
                reason: held.reason.clone(),
                by: held.by.clone(),
                since_ms: held.since_ms,
            };
            if let Some(kept) = self.quarantines.get_mut(&agent) {
                *kept = quarantine;
            } else if new_maps {
                match self.set_quarantine(agent, Some(quarantine.clone())) {
                    Ok(_) => restored.push((agent, quarantine)),
                    Err(err) => {
                        tracing::error!(agent = %held.agent, %err, "cannot put a saved quarantine back in the kernel: kept in the file");
                        dormant.push(held);
                    }
                }
            } else {
                tracing::info!(agent = %held.agent, "a saved quarantine the kernel no longer holds was released: dropped");
            }
        }
        if new_maps {
            for &agent in previous {
                if self.quarantines.contains_key(&agent) {
                    continue;
                }
                let quarantine = Quarantine {
                    reason: "quarantined in an earlier run's maps".into(),
                    by: "an earlier run".into(),
                    since_ms: 0,
                };
                match self.set_quarantine(agent, Some(quarantine.clone())) {
                    Ok(_) => restored.push((agent, quarantine)),
                    Err(err) => {
                        tracing::error!(agent, %err, "cannot carry a quarantine over to the new maps");
                    }
                }
            }
        }
        if let Some(journal) = self.journal.as_mut() {
            journal.dormant = dormant;
        }
        self.save_quarantines();
        restored
    }

    /// Writes the quarantines (and the dormant ones) to the journal, if there is one. A
    /// failure is logged: the kernel flag, which is what enforces, is already set.
    fn save_quarantines(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut held: Vec<super::held::Held> = Vec::new();
        for (agent, q) in &self.quarantines {
            let Some(name) = journal.names.get(agent) else {
                tracing::warn!(
                    agent,
                    "a quarantine of an agent not configured cannot be saved by name"
                );
                continue;
            };
            held.push(super::held::Held {
                agent: name.clone(),
                reason: q.reason.clone(),
                by: q.by.clone(),
                since_ms: q.since_ms,
            });
        }
        held.extend(journal.dormant.iter().cloned());
        if let Err(err) = super::held::save(&journal.dir, &held) {
            tracing::error!(dir = %journal.dir.display(), %err, "cannot save the quarantines: they hold until agentd's maps are rebuilt");
        }
    }

    /// The version table records read.
    pub fn versions(&self) -> SharedVersions {
        Arc::clone(&self.versions)
    }

    /// The kernel seam (tests inspect it).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Reads what an earlier run left in the maps. The next [`Self::apply`] keeps the parts that
    /// still match the configuration and removes the rest. Returns how many agents' policies
    /// were found.
    pub fn adopt(&mut self) -> usize {
        let policies = self.kernel.policies();
        let mut entries: BTreeMap<u32, Vec<(EntryKey, EgressValue)>> = BTreeMap::new();
        for (key, value) in self.kernel.entries() {
            entries.entry(key.agent).or_default().push((key, value));
        }
        for (agent, policy) in &policies {
            if policy.quarantined != 0 {
                self.quarantines.insert(
                    *agent,
                    Quarantine {
                        reason: "quarantined before this run (see the log)".into(),
                        by: "an earlier run".into(),
                        since_ms: 0,
                    },
                );
            }
            if policy.mode == MODE_NONE {
                // A quarantine of an agent without a policy: nothing else to adopt.
                continue;
            }
            let mut current = BTreeMap::new();
            for (key, value) in entries.remove(agent).unwrap_or_default() {
                if key.generation == policy.generation {
                    current.insert(key.net, value);
                } else {
                    // An earlier run died between writing a generation and deleting the old one.
                    self.kernel.remove_entry(key);
                }
            }
            self.leftovers.insert(
                *agent,
                Leftover {
                    policy: *policy,
                    entries: current,
                },
            );
        }
        // Entries of agents without a policy decide nothing: remove them.
        for (key, _) in entries.into_values().flatten() {
            self.kernel.remove_entry(key);
        }
        policies.len()
    }

    /// The kernel entry of a quarantined agent without a policy.
    fn quarantine_only() -> AgentPolicy {
        AgentPolicy {
            mode: MODE_NONE,
            quarantined: 1,
            generation: 0,
            resolver_port: 0,
            version: 0,
        }
    }

    /// Removes `agent`'s policy from the kernel, keeping its quarantine if it has one.
    fn drop_policy(&mut self, agent: u32) {
        if self.quarantines.contains_key(&agent) {
            if let Err(err) = self.kernel.set_policy(agent, Self::quarantine_only()) {
                tracing::error!(agent, %err, "cannot keep a quarantine in the kernel");
            }
        } else {
            self.kernel.remove_policy(agent);
        }
    }

    /// Quarantines `agent` (`Some`) or lifts its quarantine (`None`). Returns whether anything
    /// changed. The quarantine holds whatever the agent's policy, and across reloads and
    /// restarts (the flag is in the pinned map) until an operator lifts it.
    pub fn set_quarantine(
        &mut self,
        agent: u32,
        quarantine: Option<Quarantine>,
    ) -> Result<bool, MapWriteError> {
        let on = quarantine.is_some();
        if self.quarantines.contains_key(&agent) == on {
            return Ok(false);
        }
        if let Some(state) = self.agents.get(&agent) {
            let mut policy = self.kernel_policy(agent, state);
            policy.quarantined = on as u32;
            self.kernel.set_policy(agent, policy)?;
            if let Some(state) = self.agents.get_mut(&agent) {
                state.quarantined = on as u32;
            }
        } else if on {
            self.kernel.set_policy(agent, Self::quarantine_only())?;
        } else {
            self.kernel.remove_policy(agent);
        }
        match quarantine {
            Some(q) => self.quarantines.insert(agent, q),
            None => self.quarantines.remove(&agent),
        };
        self.save_quarantines();
        Ok(true)
    }

    /// `agent`'s quarantine, if it is quarantined.
    pub fn quarantine_of(&self, agent: u32) -> Option<&Quarantine> {
        self.quarantines.get(&agent)
    }

    /// `agent`'s policy in force, described.
    pub fn policy_of(&self, agent: u32) -> Option<PolicyInfo> {
        self.agents.get(&agent).map(AgentState::info)
    }

    /// Puts `policies` in force. On error nothing changed.
    pub fn apply(
        &mut self,
        policies: &Policies,
        now_ns: u64,
    ) -> Result<Vec<PolicyChange>, ApplyError> {
        // Phase 1: every new or changed policy is written under its next generation.
        let mut staged: Vec<(u32, AgentState, bool)> = Vec::new();
        for (&agent, policy) in &policies.by_agent {
            let hash = policy.version();
            if let Some(current) = self.agents.get(&agent)
                && current.hash == hash
            {
                continue;
            }
            match self.stage(agent, policy, hash, now_ns) {
                Ok(state) => staged.push(state),
                Err(err) => {
                    for (agent, state, adopted) in staged {
                        if !adopted {
                            for net in state.written.keys() {
                                self.kernel.remove_entry(EntryKey {
                                    agent,
                                    generation: state.generation,
                                    net: *net,
                                });
                            }
                        }
                    }
                    return Err(err);
                }
            }
        }
        let mut changes = Vec::new();
        // Phase 2: switch each agent to its new generation; phase 3: delete the old one.
        for (agent, state, adopted) in staged {
            let old = self
                .agents
                .get(&agent)
                .map(|s| hex::encode(s.hash))
                .or_else(|| {
                    self.leftovers
                        .get(&agent)
                        .map(|l| format!("{:016x}", l.policy.version))
                });
            let kernel_policy = self.kernel_policy(agent, &state);
            if let Err(err) = self.kernel.set_policy(agent, kernel_policy) {
                if !adopted {
                    for net in state.written.keys() {
                        self.kernel.remove_entry(EntryKey {
                            agent,
                            generation: state.generation,
                            net: *net,
                        });
                    }
                }
                return Err(err.into());
            }
            if let Some(previous) = self.agents.get(&agent) {
                for net in previous.written.keys() {
                    self.kernel.remove_entry(EntryKey {
                        agent,
                        generation: previous.generation,
                        net: *net,
                    });
                }
            } else if let Some(leftover) = self.leftovers.remove(&agent)
                && !adopted
                && leftover.policy.generation != state.generation
            {
                for net in leftover.entries.keys() {
                    self.kernel.remove_entry(EntryKey {
                        agent,
                        generation: leftover.policy.generation,
                        net: *net,
                    });
                }
            }
            let info = Arc::new(state.info());
            self.versions
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .by_id
                .insert((agent, version_id(&state.hash)), Arc::clone(&info));
            changes.push(PolicyChange {
                agent,
                old,
                new: Some(hex::encode(state.hash)),
                adopted,
                info: Some(info),
            });
            self.agents.insert(agent, state);
        }
        // Agents whose policy is gone: stop deciding, then delete their entries.
        let removed: Vec<u32> = self
            .agents
            .keys()
            .filter(|a| !policies.by_agent.contains_key(a))
            .copied()
            .collect();
        for agent in removed {
            let Some(state) = self.agents.remove(&agent) else {
                continue;
            };
            self.drop_policy(agent);
            for net in state.written.keys() {
                self.kernel.remove_entry(EntryKey {
                    agent,
                    generation: state.generation,
                    net: *net,
                });
            }
            changes.push(PolicyChange {
                agent,
                old: Some(hex::encode(state.hash)),
                new: None,
                adopted: false,
                info: None,
            });
        }
        for (agent, leftover) in std::mem::take(&mut self.leftovers) {
            self.drop_policy(agent);
            for net in leftover.entries.keys() {
                self.kernel.remove_entry(EntryKey {
                    agent,
                    generation: leftover.policy.generation,
                    net: *net,
                });
            }
            changes.push(PolicyChange {
                agent,
                old: Some(format!("{:016x}", leftover.policy.version)),
                new: None,
                adopted: false,
                info: None,
            });
        }
        if self.pending_deny != Some(policies.pending_deny) {
            self.kernel.set_pending_deny(policies.pending_deny)?;
            self.pending_deny = Some(policies.pending_deny);
        }
        Ok(changes)
    }

    fn kernel_policy(&self, agent: u32, state: &AgentState) -> AgentPolicy {
        AgentPolicy {
            mode: match state.policy.mode {
                EgressMode::Monitor => MODE_MONITOR,
                EgressMode::Enforce => MODE_ENFORCE,
            },
            quarantined: state.quarantined,
            generation: state.generation,
            resolver_port: self.ports.get(&agent).copied().unwrap_or(0) as u32,
            version: version_id(&state.hash),
        }
    }

    /// Writes `policy` for `agent` under a new generation (or, when the kernel already holds
    /// exactly this policy from an earlier run, adopts that generation). Returns the state and
    /// whether it was adopted.
    fn stage(
        &mut self,
        agent: u32,
        policy: &EgressPolicy,
        hash: [u8; 32],
        now_ns: u64,
    ) -> Result<(u32, AgentState, bool), ApplyError> {
        let statics: BTreeMap<Net, Vec<PortRule>> = compile::static_entries(policy)
            .map_err(|reason| ApplyError::Compile { agent, reason })?
            .into_iter()
            .map(|e| (e.net, e.ranges))
            .collect();
        let current = self.agents.get(&agent);
        let leftover = self.leftovers.get(&agent);
        let mut state = AgentState {
            policy: policy.clone(),
            hash,
            generation: 0,
            quarantined: self.quarantines.contains_key(&agent) as u32,
            statics,
            pins: BTreeMap::new(),
            written: BTreeMap::new(),
        };
        if current.is_none()
            && let Some(leftover) = leftover
            && leftover.policy.version == version_id(&hash)
        {
            // The kernel holds this very policy: keep its generation, reconcile in place (the
            // values can only differ if the compiler changed) and re-adopt the pins.
            state.generation = leftover.policy.generation;
            let leftover = leftover.clone();
            for (net, value) in &leftover.entries {
                let live: Vec<PortRule> = value.rules
                    [..(value.count as usize).min(value.rules.len())]
                    .iter()
                    .filter(|r| r.expires_ns != 0 && r.expires_ns > now_ns)
                    .copied()
                    .collect();
                if net.prefix == 128 && !live.is_empty() {
                    state.pins.insert(
                        net.addr,
                        Pin {
                            names: BTreeMap::new(),
                            adopted: live,
                        },
                    );
                }
            }
            let desired = desired_entries(&state, now_ns);
            for (net, value) in &desired {
                if leftover.entries.get(net) != Some(value) {
                    self.kernel.set_entry(
                        EntryKey {
                            agent,
                            generation: state.generation,
                            net: *net,
                        },
                        value,
                    )?;
                }
            }
            for net in leftover.entries.keys().filter(|n| !desired.contains_key(n)) {
                self.kernel.remove_entry(EntryKey {
                    agent,
                    generation: state.generation,
                    net: *net,
                });
            }
            state.written = desired;
            return Ok((agent, state, true));
        }
        state.generation = current
            .map(|s| s.generation)
            .or(leftover.map(|l| l.policy.generation))
            .unwrap_or(0)
            .wrapping_add(1)
            .max(1);
        // Pins carry over to the new policy for the names it still allows.
        if let Some(current) = current {
            for (addr, pin) in &current.pins {
                let mut pin = pin.clone();
                pin.names
                    .retain(|name, _| host_rules(policy, name).next().is_some());
                pin.adopted.clear();
                pin.prune(now_ns);
                if !pin.is_empty() {
                    state.pins.insert(*addr, pin);
                }
            }
        }
        let desired = desired_entries(&state, now_ns);
        for (net, value) in &desired {
            if let Err(err) = self.kernel.set_entry(
                EntryKey {
                    agent,
                    generation: state.generation,
                    net: *net,
                },
                value,
            ) {
                for written in state.written.keys() {
                    self.kernel.remove_entry(EntryKey {
                        agent,
                        generation: state.generation,
                        net: *written,
                    });
                }
                return Err(err.into());
            }
            state.written.insert(*net, *value);
        }
        Ok((agent, state, false))
    }

    /// How `agent`'s policy treats `name` (lower case, no trailing dot); `None` when the agent
    /// has no policy.
    pub fn name(&self, agent: u32, name: &str) -> Option<NameDecision> {
        let state = self.agents.get(&agent)?;
        Some(NameDecision {
            mode: state.policy.mode,
            rules: host_rules(&state.policy, name).map(|r| r.id).collect(),
            version: version_id(&state.hash),
        })
    }

    /// Pins the addresses of an answer for `name` (each with its TTL in seconds) into
    /// `agent`'s allowlist, until TTL + grace. Addresses whose class the matching rules do not
    /// allow are not pinned.
    pub fn pin(
        &mut self,
        agent: u32,
        name: &str,
        answers: &[(IpAddr, u32)],
        now_ns: u64,
    ) -> Result<Vec<PinOutcome>, MapWriteError> {
        let grace_ns = self.grace_ns;
        let Some(state) = self.agents.get_mut(&agent) else {
            return Ok(Vec::new());
        };
        let mut outcomes = Vec::with_capacity(answers.len());
        for &(ip, ttl) in answers {
            let class = classify(ip);
            let addr = ip_to_v6(ip);
            let allowed =
                host_rules(&state.policy, name).any(|r| class_allowed(class, r.allow_private));
            if !allowed {
                outcomes.push(PinOutcome {
                    ip,
                    class,
                    pinned: false,
                    expires_ns: 0,
                });
                continue;
            }
            let expires_ns = now_ns
                .saturating_add(ttl as u64 * 1_000_000_000)
                .saturating_add(grace_ns);
            let pin = state.pins.entry(addr).or_default();
            let slot = pin.names.entry(name.to_owned()).or_insert(0);
            *slot = (*slot).max(expires_ns);
            let entry = pin_entry(&state.policy, addr, pin, now_ns);
            let value = entry.value();
            if state.written.get(&entry.net) != Some(&value) {
                self.kernel.set_entry(
                    EntryKey {
                        agent,
                        generation: state.generation,
                        net: entry.net,
                    },
                    &value,
                )?;
                state.written.insert(entry.net, value);
            }
            outcomes.push(PinOutcome {
                ip,
                class,
                pinned: true,
                expires_ns,
            });
        }
        Ok(outcomes)
    }

    /// Removes pins whose time is up (the kernel already ignores them: this frees their
    /// entries). Returns the addresses whose last pin lapsed, by agent.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(u32, IpAddr)> {
        let mut lapsed = Vec::new();
        for (&agent, state) in &mut self.agents {
            let mut gone = Vec::new();
            for (addr, pin) in &mut state.pins {
                if !pin.prune(now_ns) {
                    continue;
                }
                let net = Net {
                    addr: *addr,
                    prefix: 128,
                };
                let key = EntryKey {
                    agent,
                    generation: state.generation,
                    net,
                };
                if pin.is_empty() {
                    gone.push(*addr);
                    match state.statics.get(&net) {
                        Some(ranges) => {
                            let value = entry_value(net, ranges);
                            if self.kernel.set_entry(key, &value).is_ok() {
                                state.written.insert(net, value);
                            }
                        }
                        None => {
                            self.kernel.remove_entry(key);
                            state.written.remove(&net);
                        }
                    }
                } else {
                    let value = pin_entry(&state.policy, *addr, pin, now_ns).value();
                    if self.kernel.set_entry(key, &value).is_ok() {
                        state.written.insert(net, value);
                    }
                }
            }
            for addr in gone {
                state.pins.remove(&addr);
                lapsed.push((
                    agent,
                    IpAddr::from(std::net::Ipv6Addr::from(addr)).to_canonical(),
                ));
            }
        }
        lapsed
    }

    /// Before a clean stop: agents in monitor mode stop having their DNS redirected, since no
    /// resolver will answer until agentd is back and monitor mode must never get in an agent's
    /// way. Enforced agents keep it (no resolver, no new names: fail closed).
    pub fn release_monitored(&mut self) {
        let monitored: Vec<u32> = self
            .agents
            .iter()
            .filter(|(_, s)| s.policy.mode == EgressMode::Monitor)
            .map(|(a, _)| *a)
            .collect();
        for agent in monitored {
            let mut policy = self.kernel_policy(agent, &self.agents[&agent]);
            policy.resolver_port = 0;
            if let Err(err) = self.kernel.set_policy(agent, policy) {
                tracing::warn!(agent, %err, "cannot release a monitored agent's DNS");
            }
        }
    }

    /// The policies in force: (agent, SHA-256 hex).
    pub fn in_force(&self) -> Vec<(u32, String)> {
        self.agents
            .iter()
            .map(|(agent, state)| (*agent, hex::encode(state.hash)))
            .collect()
    }

    /// Number of pinned addresses of `agent`.
    pub fn pin_count(&self, agent: u32) -> usize {
        self.agents.get(&agent).map_or(0, |s| s.pins.len())
    }
}

/// The host rules of `policy` matching `name`.
fn host_rules<'a>(
    policy: &'a EgressPolicy,
    name: &'a str,
) -> impl Iterator<Item = &'a crate::config::egress::EgressRule> {
    policy
        .rules
        .iter()
        .filter(move |r| matches!(&r.target, Target::Host(p) if p.matches(name)))
}

fn class_allowed(class: AddrClass, allow_private: bool) -> bool {
    match class {
        AddrClass::Public => true,
        AddrClass::Private => allow_private,
        AddrClass::Forbidden => false,
    }
}

/// Every entry `state` needs: its CIDR rules, and its pins (a pin at a rule's own /128 replaces
/// that rule's entry, carrying its ranges).
fn desired_entries(state: &AgentState, now_ns: u64) -> BTreeMap<Net, EgressValue> {
    let mut desired: BTreeMap<Net, EgressValue> = state
        .statics
        .iter()
        .map(|(net, ranges)| (*net, entry_value(*net, ranges)))
        .collect();
    for (addr, pin) in &state.pins {
        let entry = pin_entry(&state.policy, *addr, pin, now_ns);
        desired.insert(entry.net, entry.value());
    }
    desired
}

fn entry_value(net: Net, ranges: &[PortRule]) -> EgressValue {
    Entry {
        net,
        ranges: ranges.to_vec(),
    }
    .value()
}

/// The entry for a pinned address: its live names' rules plus the CIDR rules covering it.
fn pin_entry(policy: &EgressPolicy, addr: [u8; 16], pin: &Pin, now_ns: u64) -> Entry {
    let class = classify(IpAddr::from(std::net::Ipv6Addr::from(addr)));
    let mut ranges: Vec<PortRule> = Vec::new();
    let mut add = |range: PortRule| match ranges.iter_mut().find(|r| {
        PortRule {
            expires_ns: range.expires_ns,
            ..**r
        } == range
    }) {
        Some(existing) => existing.expires_ns = existing.expires_ns.max(range.expires_ns),
        None => ranges.push(range),
    };
    for (name, &expires) in &pin.names {
        if expires <= now_ns {
            continue;
        }
        for rule in host_rules(policy, name).filter(|r| class_allowed(class, r.allow_private)) {
            for range in compile::ranges(rule, expires) {
                add(range);
            }
        }
    }
    for range in pin.adopted.iter().filter(|r| r.expires_ns > now_ns) {
        add(*range);
    }
    compile::pin_entry(policy, addr, &ranges)
}

#[cfg(test)]
mod tests;
