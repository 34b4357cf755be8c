//! Records of egress enforcement: the decision part of network records, DNS queries answered
//! by agentd's resolver, and policy changes (SOC 2 CC6.6 and CC8.1 evidence).

use std::{net::SocketAddr, sync::Arc};

use sensor_common::{
    egress::{
        RULE_DEFAULT, RULE_DNS, RULE_PENDING, RULE_QUARANTINE, RULE_RESOLVER, VERDICT_ALLOW,
        VERDICT_DENY, VERDICT_NONE, VERDICT_WOULD_DENY,
    },
    event::NetEvent,
    identity::AgentRef,
};

use super::{BASE_EVENT, Class, ENTITY_MANAGEMENT, Record, Records};
use crate::{
    clock::BootClock,
    config::ConfigError,
    egress::{
        dns::Question,
        state::{PinOutcome, PolicyChange, PolicyInfo, Versions},
    },
    identity::registry::Registry,
    json::Obj,
};

const DNS_ACTIVITY: Class = Class {
    uid: 4003,
    name: "DNS Activity",
    category_uid: 4,
    category_name: "Network Activity",
};

/// What a reserved rule id means.
fn special_rule(id: u32) -> Option<&'static str> {
    match id {
        RULE_DNS => Some("DNS (port 53) redirected to agentd's resolver"),
        RULE_RESOLVER => Some("agentd's resolver"),
        RULE_QUARANTINE => Some("egress quarantined"),
        RULE_PENDING => Some("cgroup not resolved yet (deny until it is)"),
        _ => None,
    }
}

/// The severity of a network record: denials stand out.
pub(super) fn severity(ev: &NetEvent) -> u64 {
    match ev.verdict {
        VERDICT_DENY => 3,
        VERDICT_WOULD_DENY => 2,
        _ => 1,
    }
}

/// The decision members of a network record: OCSF `action`/`disposition` and our `egress`
/// object (verdict, the rule that matched, the policy version in force).
pub(super) fn decision(obj: &mut Obj, ev: &NetEvent, versions: &Versions) {
    if ev.verdict == VERDICT_NONE {
        return;
    }
    let (verdict, action_id, action, disposition_id, disposition) = match ev.verdict {
        VERDICT_ALLOW if ev.redirected != 0 => ("allow", 4, "Modified", 1, "Allowed"),
        VERDICT_ALLOW => ("allow", 1, "Allowed", 1, "Allowed"),
        VERDICT_DENY => ("deny", 2, "Denied", 2, "Blocked"),
        VERDICT_WOULD_DENY => ("would_deny", 3, "Observed", 17, "Logged"),
        _ => ("unknown", 0, "Unknown", 0, "Unknown"),
    };
    obj.u64("action_id", action_id)
        .str("action", action)
        .u64("disposition_id", disposition_id)
        .str("disposition", disposition);
    let info = versions.get(ev.hdr.agent.agent_id, ev.policy_version);
    obj.obj("egress", |e| {
        e.str("verdict", verdict)
            .str("policy_version", &format!("{:016x}", ev.policy_version))
            .bool("redirected_to_resolver", ev.redirected != 0);
        match &info {
            Some(info) => e
                .str("policy_sha256", &info.hash)
                .str("mode", info.mode.as_str()),
            None => e.null("policy_sha256").str(
                "mode",
                if ev.verdict == VERDICT_WOULD_DENY {
                    "monitor"
                } else {
                    "enforce"
                },
            ),
        };
        e.obj("rule", |r| {
            r.u64("id", ev.rule_id as u64);
            let text = match (special_rule(ev.rule_id), &info) {
                (Some(text), _) => Some(text.to_owned()),
                _ if ev.rule_id == RULE_DEFAULT => {
                    Some("no rule matched (default deny)".to_owned())
                }
                (None, Some(info)) => info.rules.get(&ev.rule_id).cloned(),
                (None, None) => None,
            };
            match text {
                Some(text) => r.str("text", &text),
                None => r.null("text"),
            };
        });
    });
}

/// One query answered (or refused) by agentd's resolver.
#[derive(Debug)]
pub struct DnsQuery<'a> {
    /// The agent whose resolver got the query.
    pub agent: u32,
    /// The client's address as the resolver saw it.
    pub client: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// The question, when the query parsed.
    pub question: Option<&'a Question>,
    /// `allowed`, `refused`, `would_refuse`, `no_policy`, `malformed` or `overloaded`.
    pub decision: &'static str,
    /// The policy that decided, with the matching rule ids.
    pub policy: Option<(Arc<PolicyInfo>, Vec<u32>)>,
    /// The response code returned to the client.
    pub rcode: String,
    /// The addresses of the answer and what became of each.
    pub pins: &'a [PinOutcome],
    /// Addresses removed from the answer because the policy does not allow them.
    pub stripped: usize,
    /// The upstream that answered.
    pub upstream: Option<SocketAddr>,
    /// What went wrong (upstream unreachable, malformed message, map full).
    pub error: Option<String>,
    /// Time from query to reply.
    pub duration_us: u64,
}

impl Records {
    /// `dns.query`: OCSF DNS Activity (4003), activity Traffic (6).
    pub fn dns(&self, registry: &Registry, q: &DnsQuery<'_>) -> Record {
        let mut obj = self.base(
            "dns.query",
            &DNS_ACTIVITY,
            6,
            "Traffic",
            BootClock::wall_now_ns(),
        );
        let blocked = matches!(q.decision, "refused" | "malformed" | "overloaded");
        Self::severity(
            &mut obj,
            match q.decision {
                "refused" => 3,
                "would_refuse" => 2,
                "malformed" | "overloaded" => 3,
                _ if q.error.is_some() => 2,
                _ => 1,
            },
        );
        Self::agent_as(
            &mut obj,
            registry,
            AgentRef {
                agent_id: q.agent,
                selector_id: 0,
            },
            "resolver",
        );
        obj.obj("src_endpoint", |s| {
            s.str("ip", &q.client.ip().to_canonical().to_string())
                .u64("port", q.client.port() as u64);
        })
        .obj("connection_info", |c| {
            c.str("protocol_name", q.transport);
        });
        match q.question {
            Some(question) => obj.obj("query", |o| {
                o.str("hostname", &question.name)
                    .str("type", &question.qtype.to_string())
                    .u64("packet_uid", question.id as u64);
            }),
            None => obj.null("query"),
        };
        obj.str("rcode", &q.rcode);
        let answers: Vec<Obj> = q
            .pins
            .iter()
            .map(|p| {
                let mut a = Obj::new();
                a.str("rdata", &p.ip.to_string())
                    .str("type", if p.ip.is_ipv4() { "A" } else { "AAAA" })
                    .str("class", p.class.as_str())
                    .bool("pinned", p.pinned);
                if p.pinned {
                    a.u64("pinned_until", self.wall_ns(p.expires_ns) / 1_000_000);
                }
                a
            })
            .collect();
        obj.objs("answers", &answers);
        obj.u64("action_id", if blocked { 2 } else { 1 })
            .str("action", if blocked { "Denied" } else { "Allowed" })
            .u64("disposition_id", if blocked { 2 } else { 1 })
            .str("disposition", if blocked { "Blocked" } else { "Allowed" });
        obj.obj("egress", |e| {
            e.str("decision", q.decision)
                .u64("addresses_removed", q.stripped as u64)
                .u64("duration_us", q.duration_us);
            match &q.policy {
                Some((info, rules)) => {
                    e.str("policy_sha256", &info.hash)
                        .str("mode", info.mode.as_str());
                    let matched: Vec<Obj> = rules
                        .iter()
                        .map(|id| {
                            let mut r = Obj::new();
                            r.u64("id", *id as u64);
                            match info.rules.get(id) {
                                Some(text) => r.str("text", text),
                                None => r.null("text"),
                            };
                            r
                        })
                        .collect();
                    e.objs("rules", &matched);
                }
                None => {
                    e.null("policy_sha256");
                }
            }
            match q.upstream {
                Some(up) => e.str("upstream", &up.to_string()),
                None => e.null("upstream"),
            };
            if let Some(error) = &q.error {
                e.str("error", error);
            }
        });
        Record {
            kind: "dns.query",
            obj,
        }
    }

    /// `policy.change`: an agent's egress policy was put in force, replaced or removed
    /// (OCSF Entity Management, 3004).
    pub fn policy_change(
        &self,
        registry: &Registry,
        change: &PolicyChange,
        reason: &str,
        by: Option<&super::api::Requester<'_>>,
    ) -> Record {
        let (activity_id, activity) = match (&change.old, &change.new) {
            (None, Some(_)) => (1, "Create"),
            (Some(_), None) => (4, "Delete"),
            _ => (3, "Update"),
        };
        let mut obj = self.base(
            "policy.change",
            &ENTITY_MANAGEMENT,
            activity_id,
            activity,
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, if change.adopted { 1 } else { 3 });
        Self::agent_as(
            &mut obj,
            registry,
            AgentRef {
                agent_id: change.agent,
                selector_id: 0,
            },
            "policy",
        );
        if let Some(by) = by {
            by.write(&mut obj);
        }
        obj.obj("policy", |p| {
            p.str("reason", reason)
                .bool("adopted_from_kernel", change.adopted);
            match &change.old {
                Some(old) => p.str("old_version", old),
                None => p.null("old_version"),
            };
            match &change.new {
                Some(new) => p.str("new_version", new),
                None => p.null("new_version"),
            };
            if let Some(info) = &change.info {
                let rules: Vec<Obj> = info
                    .rules
                    .iter()
                    .map(|(id, text)| {
                        let mut r = Obj::new();
                        r.u64("id", *id as u64).str("text", text);
                        r
                    })
                    .collect();
                p.str("mode", info.mode.as_str())
                    .str("source", &info.source)
                    .objs("rules", &rules);
            }
        });
        Record {
            kind: "policy.change",
            obj,
        }
    }

    /// `policy.refused`: a new configuration or policy file was invalid, or could not be put in
    /// force; the policies in force did not change.
    pub fn policy_refused(&self, error: &ConfigError, in_force: &[(u32, String)]) -> Record {
        let mut obj = self.base(
            "policy.refused",
            &BASE_EVENT,
            0,
            "Unknown",
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 4);
        obj.obj("error", |e| {
            e.str("file", &error.file)
                .str("field", &error.field)
                .str("message", &error.message);
            match error.line {
                Some(line) => e.u64("line", line as u64),
                None => e.null("line"),
            };
            match error.column {
                Some(column) => e.u64("column", column as u64),
                None => e.null("column"),
            };
        });
        let kept: Vec<Obj> = in_force
            .iter()
            .map(|(agent, version)| {
                let mut o = Obj::new();
                o.u64("agent_id", *agent as u64).str("version", version);
                o
            })
            .collect();
        obj.objs("policies_in_force", &kept);
        Record {
            kind: "policy.refused",
            obj,
        }
    }
}
