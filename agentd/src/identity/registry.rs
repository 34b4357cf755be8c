//! The agents and selectors of the configuration, with the numeric ids the kernel maps use.
//!
//! Ids follow configuration order: agents from 1, selectors from 1 (0 means none). Within one
//! configuration they are stable; records carry the names too, so a reader never needs the ids.

use std::path::Path;

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

/// The configured identities.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    agents: Vec<AgentSpec>,
    selectors: Vec<Selector>,
}

impl Registry {
    /// Numbers the configuration's agents and selectors.
    pub fn new(config: &Config) -> Self {
        let mut selectors = Vec::new();
        for (a, agent) in config.agents.iter().enumerate() {
            for kind in &agent.selectors {
                selectors.push(Selector {
                    id: selectors.len() as u32 + 1,
                    agent_id: a as u32 + 1,
                    kind: kind.clone(),
                });
            }
        }
        Self {
            agents: config.agents.clone(),
            selectors,
        }
    }

    /// The agent with this id.
    pub fn agent(&self, id: u32) -> Option<&AgentSpec> {
        self.agents.get((id as usize).checked_sub(1)?)
    }

    /// The selector with this id.
    pub fn selector(&self, id: u32) -> Option<&Selector> {
        self.selectors.get((id as usize).checked_sub(1)?)
    }

    /// Every selector.
    pub fn selectors(&self) -> &[Selector] {
        &self.selectors
    }

    /// Every agent, with its id.
    pub fn agents(&self) -> impl Iterator<Item = (u32, &AgentSpec)> {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, agent)| (i as u32 + 1, agent))
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
    fn ids_follow_configuration_order() {
        let registry = registry();
        assert_eq!(registry.agent(1).unwrap().name, "a");
        assert_eq!(registry.agent(2).unwrap().name, "b");
        assert!(registry.agent(0).is_none());
        assert!(registry.agent(3).is_none());
        let ids: Vec<(u32, u32)> = registry
            .selectors()
            .iter()
            .map(|s| (s.id, s.agent_id))
            .collect();
        assert_eq!(ids, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
    }

    #[test]
    fn matching() {
        let registry = registry();
        assert_eq!(
            registry
                .match_cgroup("/system.slice/a-1.service")
                .unwrap()
                .id,
            1
        );
        assert_eq!(
            registry
                .match_cgroup("kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope")
                .unwrap()
                .id,
            4
        );
        assert!(registry.match_cgroup("system.slice/b.service").is_none());
        assert!(registry.match_cgroup("").is_none());
        assert_eq!(registry.match_uid(7).unwrap().agent_id, 1);
        assert!(registry.match_uid(8).is_none());
        assert_eq!(registry.match_gid(8).unwrap().agent_id, 2);
    }
}
