//! The agents and selectors of the configuration, with the numeric ids the kernel maps use.
//!
//! Ids are derived from names (see [`stable_id`]), not from configuration order: the kernel's
//! maps outlive agentd (they are pinned), so a binding made by one run must mean the same agent
//! to the next, even if the configuration was reordered or extended in between. Records carry
//! the names too, so a reader never needs the ids.

use std::{collections::HashMap, path::Path};

use sensor_common::identity::AgentRef;

use crate::config::{AgentSpec, Config, SelectorKind};

/// One selector and the agent it belongs to.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Selector id.
    pub id: u32,
    /// Agent id.
    pub agent_id: u32,
    /// The selector.
    pub kind: SelectorKind,
}

impl Selector {
    /// The kernel map value for this selector.
    pub fn agent_ref(&self) -> AgentRef {
        AgentRef {
            agent_id: self.agent_id,
            selector_id: self.id,
        }
    }
}

/// A 32-bit id derived from `name`: the first four bytes of its SHA-256, kept clear of the
/// reserved values 0 (none) and `u32::MAX` (pending).
pub fn stable_id(name: &str) -> u32 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    match id {
        0 | u32::MAX => 0x5a5a_5a5a,
        id => id,
    }
}

/// The id of selector `kind` of the agent with SPIFFE id `spiffe_id`.
pub fn selector_id(spiffe_id: &str, kind: &SelectorKind) -> u32 {
    stable_id(&format!(
        "{spiffe_id}\n{}\n{}",
        kind.type_name(),
        kind.value()
    ))
}

/// The configured identities.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    agents: Vec<AgentSpec>,
    selectors: Vec<Selector>,
    agent_index: HashMap<u32, usize>,
    selector_index: HashMap<u32, usize>,
}

impl Registry {
    /// Numbers the configuration's agents and selectors.
    pub fn new(config: &Config) -> Self {
        let mut selectors = Vec::new();
        for agent in &config.agents {
            for kind in &agent.selectors {
                selectors.push(Selector {
                    id: selector_id(&agent.spiffe_id, kind),
                    agent_id: agent.id,
                    kind: kind.clone(),
                });
            }
        }
        // Configuration validation refuses colliding ids, so these maps are one-to-one.
        let agent_index = config
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id, i))
            .collect();
        let selector_index = selectors
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        Self {
            agents: config.agents.clone(),
            selectors,
            agent_index,
            selector_index,
        }
    }

    /// The agent with this id.
    pub fn agent(&self, id: u32) -> Option<&AgentSpec> {
        self.agents.get(*self.agent_index.get(&id)?)
    }

    /// The selector with this id.
    pub fn selector(&self, id: u32) -> Option<&Selector> {
        self.selectors.get(*self.selector_index.get(&id)?)
    }

    /// Every selector.
    pub fn selectors(&self) -> &[Selector] {
        &self.selectors
    }

    /// Every agent, with its id.
    pub fn agents(&self) -> impl Iterator<Item = (u32, &AgentSpec)> {
        self.agents.iter().map(|agent| (agent.id, agent))
    }

    /// The first cgroup selector (in configuration order) matching `path`, a cgroup path relative
    /// to the cgroup v2 root without a leading `/`.
    pub fn match_cgroup(&self, path: &str) -> Option<&Selector> {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return None;
        }
        self.selectors.iter().find(|s| match &s.kind {
            SelectorKind::Cgroup { matcher, .. } => matcher.is_match(Path::new(path)),
            _ => false,
        })
    }

    /// The uid selector for `uid`.
    pub fn match_uid(&self, uid: u32) -> Option<&Selector> {
        self.selectors
            .iter()
            .find(|s| matches!(s.kind, SelectorKind::Uid(u) if u == uid))
    }

    /// The gid selector for `gid`.
    pub fn match_gid(&self, gid: u32) -> Option<&Selector> {
        self.selectors
            .iter()
            .find(|s| matches!(s.kind, SelectorKind::Gid(g) if g == gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let config = Config::parse(
            r#"
[[agent]]
name = "a"
selectors = [{ cgroup = "system.slice/a-*.service" }, { uid = 7 }]
[[agent]]
name = "b"
selectors = [{ gid = 8 }, { cgroup = "kubepods.slice/**/cri-containerd-*.scope" }]
"#,
            "t.toml",
        )
        .unwrap();
        Registry::new(&config)
    }

    #[test]
    fn ids_come_from_names_not_order() {
        let registry = registry();
        let a = stable_id("spiffe://custos.local/agent/a");
        let b = stable_id("spiffe://custos.local/agent/b");
        assert_eq!(registry.agent(a).unwrap().name, "a");
        assert_eq!(registry.agent(b).unwrap().name, "b");
        assert!(registry.agent(0).is_none());
        // Reordering the configuration keeps every id.
        let swapped = Registry::new(
            &Config::parse(
                "[[agent]]\nname = \"b\"\nselectors = [{ cgroup = \"kubepods.slice/**/cri-containerd-*.scope\" }, { gid = 8 }]\n\
                 [[agent]]\nname = \"a\"\nselectors = [{ uid = 7 }, { cgroup = \"system.slice/a-*.service\" }]\n",
                "t.toml",
            )
            .unwrap(),
        );
        let mut ids: Vec<(u32, u32)> = registry
            .selectors()
            .iter()
            .map(|s| (s.id, s.agent_id))
            .collect();
        let mut swapped_ids: Vec<(u32, u32)> = swapped
            .selectors()
            .iter()
            .map(|s| (s.id, s.agent_id))
            .collect();
        ids.sort();
        swapped_ids.sort();
        assert_eq!(ids, swapped_ids);
        assert_ne!(stable_id("x"), 0);
    }

    #[test]
    fn matching() {
        let registry = registry();
        let (a, b) = (
            stable_id("spiffe://custos.local/agent/a"),
            stable_id("spiffe://custos.local/agent/b"),
        );
        assert_eq!(
            registry
                .match_cgroup("/system.slice/a-1.service")
                .unwrap()
                .agent_id,
            a
        );
        let kube = registry
            .match_cgroup("kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope")
            .unwrap();
        assert_eq!((kube.agent_id, kube.kind.type_name()), (b, "cgroup"));
        assert!(registry.match_cgroup("system.slice/b.service").is_none());
        assert!(registry.match_cgroup("").is_none());
        assert_eq!(registry.match_uid(7).unwrap().agent_id, a);
        assert!(registry.match_uid(8).is_none());
        assert_eq!(registry.match_gid(8).unwrap().agent_id, b);
    }
}
