//! Stream filters: which records a subscriber wants, by agent, kind, OCSF class and decision.
//!
//! A record is parsed only when a filter needs more than its kind, and only the members the
//! filter looks at are kept.

use serde::Deserialize;

use super::proto;

/// A validated filter. Every non-empty list must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    agents: Vec<String>,
    kinds: Vec<String>,
    class_uids: Vec<u32>,
    decisions: Vec<String>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    class_uid: Option<u32>,
    #[serde(default)]
    agent: Option<AgentMeta>,
    #[serde(default)]
    egress: Option<EgressMeta>,
}

#[derive(Deserialize)]
struct AgentMeta {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct EgressMeta {
    #[serde(default)]
    verdict: Option<String>,
    #[serde(default)]
    decision: Option<String>,
}

/// Longest list a filter may carry (each list), and longest entry.
const MAX_ENTRIES: usize = 64;
const MAX_ENTRY_LEN: usize = 256;

impl Filter {
    /// Validates a filter from the wire.
    pub fn new(wire: Option<proto::EventFilter>) -> Result<Self, String> {
        let wire = wire.unwrap_or_default();
        for (name, list) in [
            ("agents", &wire.agents),
            ("kinds", &wire.kinds),
            ("decisions", &wire.decisions),
        ] {
            if list.len() > MAX_ENTRIES {
                return Err(format!("filter.{name}: more than {MAX_ENTRIES} entries"));
            }
            if let Some(bad) = list
                .iter()
                .find(|e| e.is_empty() || e.len() > MAX_ENTRY_LEN)
            {
                return Err(format!(
                    "filter.{name}: {bad:?} is empty or longer than {MAX_ENTRY_LEN} bytes"
                ));
            }
        }
        if wire.class_uids.len() > MAX_ENTRIES {
            return Err(format!(
                "filter.class_uids: more than {MAX_ENTRIES} entries"
            ));
        }
        Ok(Self {
            agents: wire.agents,
            kinds: wire.kinds,
            class_uids: wire.class_uids,
            decisions: wire.decisions,
        })
    }

    /// Whether the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.kinds.is_empty()
            && self.class_uids.is_empty()
            && self.decisions.is_empty()
    }

    /// Whether the record `leaf` of kind `kind` passes.
    pub fn matches(&self, leaf: &[u8], kind: &str) -> bool {
        if !self.kinds.is_empty()
            && !self.kinds.iter().any(|k| {
                if k.ends_with('.') {
                    kind.starts_with(k.as_str())
                } else {
                    kind == k
                }
            })
        {
            return false;
        }
        if self.agents.is_empty() && self.class_uids.is_empty() && self.decisions.is_empty() {
            return true;
        }
        let Ok(meta) = serde_json::from_slice::<Meta>(leaf) else {
            return false;
        };
        if !self.class_uids.is_empty()
            && !meta.class_uid.is_some_and(|c| self.class_uids.contains(&c))
        {
            return false;
        }
        if !self.agents.is_empty()
            && !meta.agent.as_ref().is_some_and(|a| {
                self.agents
                    .iter()
                    .any(|wanted| *wanted == a.name || *wanted == a.uid)
            })
        {
            return false;
        }
        if !self.decisions.is_empty() {
            let decision = meta
                .egress
                .as_ref()
                .and_then(|e| e.verdict.as_deref().or(e.decision.as_deref()));
            if !decision.is_some_and(|d| self.decisions.iter().any(|w| w == d)) {
                return false;
            }
        }
        true
    }
}

/// The `kind` of a record read back from the files.
pub fn kind_of(leaf: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Kind {
        kind: String,
    }
    serde_json::from_slice::<Kind>(leaf)
        .map(|k| k.kind)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &[u8] = br#"{"agent":{"name":"coder","uid":"spiffe://t/agent/coder"},"class_uid":4001,"egress":{"verdict":"deny"},"kind":"net.connect"}"#;
    const DNS: &[u8] = br#"{"agent":{"name":"coder","uid":"spiffe://t/agent/coder"},"class_uid":4003,"egress":{"decision":"refused"},"kind":"dns.query"}"#;
    const HOST: &[u8] = br#"{"agent":null,"class_uid":1007,"kind":"process.exec"}"#;

    fn filter(agents: &[&str], kinds: &[&str], classes: &[u32], decisions: &[&str]) -> Filter {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Filter::new(Some(proto::EventFilter {
            agents: s(agents),
            kinds: s(kinds),
            class_uids: classes.to_vec(),
            decisions: s(decisions),
        }))
        .expect("valid")
    }

    #[test]
    fn every_list_must_match() {
        assert!(filter(&[], &[], &[], &[]).matches(HOST, "process.exec"));
        assert!(filter(&["coder"], &[], &[], &[]).matches(NET, "net.connect"));
        assert!(filter(&["spiffe://t/agent/coder"], &[], &[], &[]).matches(NET, "net.connect"));
        assert!(!filter(&["coder"], &[], &[], &[]).matches(HOST, "process.exec"));
        assert!(filter(&[], &["net."], &[], &[]).matches(NET, "net.connect"));
        assert!(!filter(&[], &["net."], &[], &[]).matches(DNS, "dns.query"));
        assert!(!filter(&[], &["net"], &[], &[]).matches(NET, "net.connect"));
        assert!(filter(&[], &[], &[4003], &["refused"]).matches(DNS, "dns.query"));
        assert!(!filter(&[], &[], &[4001], &["refused"]).matches(DNS, "dns.query"));
        assert!(filter(&["coder"], &[], &[], &["deny", "refused"]).matches(NET, "net.connect"));
        assert!(!filter(&[], &[], &[], &["allow"]).matches(NET, "net.connect"));
        assert!(!filter(&[], &[], &[], &["allow"]).matches(b"not json", "x"));
    }

    #[test]
    fn refuses_oversized_filters() {
        let many = vec!["a".to_owned(); MAX_ENTRIES + 1];
        assert!(
            Filter::new(Some(proto::EventFilter {
                agents: many,
                ..Default::default()
            }))
            .is_err()
        );
        assert!(
            Filter::new(Some(proto::EventFilter {
                kinds: vec![String::new()],
                ..Default::default()
            }))
            .is_err()
        );
        assert_eq!(kind_of(NET), "net.connect");
    }
}
