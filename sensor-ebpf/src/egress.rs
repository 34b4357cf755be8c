//! The egress decision: may the current process reach this destination?
//!
//! Only processes bound to an agent with a policy are decided; everything else is allowed
//! untouched (a process outside every agent is never affected). See `sensor_common::egress`
//! for the maps.

use aya_ebpf::{helpers::generated::bpf_ktime_get_boot_ns, maps::lpm_trie::Key};
use sensor_common::{
    egress::{
        EgressKey, KEY_FIXED_BITS, MAX_PORT_RULES, MODE_ENFORCE, MODE_NONE, RULE_DEFAULT, RULE_DNS,
        RULE_PENDING, RULE_QUARANTINE, RULE_RESOLVER, VERDICT_ALLOW, VERDICT_DENY, VERDICT_NONE,
        VERDICT_WOULD_DENY, v4_mapped,
    },
    event::{AF_INET, SockAddr},
    identity::AGENT_PENDING,
};

use crate::{
    binding::{bound, config},
    maps::{AGENT_POLICY, EGRESS_RULES},
};

/// The DNS port: traffic to it is redirected to agentd's resolver.
const DNS_PORT: u16 = 53;

/// What to do with a connection or datagram.
#[derive(Clone, Copy)]
pub struct Decision {
    /// `VERDICT_*`.
    pub verdict: u32,
    /// The rule that decided.
    pub rule_id: u32,
    /// The policy version that decided.
    pub version: u64,
    /// Non-zero: rewrite the destination to agentd's resolver on this port.
    pub resolver_port: u16,
}

impl Decision {
    const NONE: Decision = Decision {
        verdict: VERDICT_NONE,
        rule_id: RULE_DEFAULT,
        version: 0,
        resolver_port: 0,
    };

    /// Whether the kernel must refuse the call.
    pub fn blocks(&self) -> bool {
        self.verdict == VERDICT_DENY
    }
}

/// The address as stored in the trie: IPv4 in its IPv4-mapped form.
#[inline(always)]
fn trie_addr(dst: &SockAddr) -> [u8; 16] {
    if dst.family == AF_INET {
        v4_mapped([dst.addr[0], dst.addr[1], dst.addr[2], dst.addr[3]])
    } else {
        dst.addr
    }
}

/// Whether `dst` is agentd's resolver for this agent (127.0.0.1 or ::1 on its port).
#[inline(always)]
fn is_resolver(dst: &SockAddr, port: u32) -> bool {
    if port == 0 || dst.port as u32 != port {
        return false;
    }
    let a = trie_addr(dst);
    a == v4_mapped([127, 0, 0, 1]) || a == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
}

/// Whether `dst` is a loopback address.
#[inline(always)]
fn is_loopback(dst: &SockAddr) -> bool {
    if dst.family == AF_INET {
        return dst.addr[0] == 127;
    }
    // `[u8; 16] == [u8; 16]` compiles to plain loads (as in `is_resolver`); slices would need
    // memcmp, which BPF does not have.
    let a = trie_addr(dst);
    a == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        || (a[10] == 0xff
            && a[11] == 0xff
            && a[12] == 127
            && a == v4_mapped([127, a[13], a[14], a[15]]))
}

/// A quarantined agent: everything is refused, in monitor mode too (a quarantine is an
/// operator's decision, not a policy to try out), except loopback services other than DNS.
/// DNS is refused even through agentd's resolver: a quarantined agent must not be able to
/// tunnel data out through name lookups.
#[inline(always)]
fn quarantined(dst: &SockAddr, policy: &sensor_common::egress::AgentPolicy) -> Decision {
    let loopback_service =
        is_loopback(dst) && dst.port != DNS_PORT && !is_resolver(dst, policy.resolver_port);
    Decision {
        verdict: if loopback_service {
            VERDICT_ALLOW
        } else {
            VERDICT_DENY
        },
        rule_id: RULE_QUARANTINE,
        version: policy.version,
        resolver_port: 0,
    }
}

/// Decides for the current process (`tgid`) sending to `dst` over `protocol`.
#[inline(always)]
pub fn decide(tgid: u32, dst: &SockAddr, protocol: u8) -> Decision {
    let cfg = config();
    if tgid == cfg.self_tgid {
        return Decision::NONE;
    }
    let Some(binding) = bound(tgid) else {
        return Decision::NONE;
    };
    let agent = binding.agent.agent_id;
    if agent == AGENT_PENDING {
        // A new cgroup below an agent's: an agent that creates a child cgroup and execs in it
        // must not escape its policy while agentd resolves the cgroup.
        let covering = binding.agent.selector_id;
        if covering != 0 {
            // SAFETY: the value is copied out at once.
            return match (unsafe { AGENT_POLICY.get(covering) }).copied() {
                Some(policy) if policy.quarantined != 0 => quarantined(dst, &policy),
                Some(policy) if policy.mode != MODE_NONE => Decision {
                    verdict: if policy.mode == MODE_ENFORCE {
                        VERDICT_DENY
                    } else {
                        VERDICT_WOULD_DENY
                    },
                    rule_id: RULE_PENDING,
                    version: policy.version,
                    resolver_port: 0,
                },
                _ => Decision::NONE,
            };
        }
        return if cfg.pending_deny != 0 {
            Decision {
                verdict: VERDICT_DENY,
                rule_id: RULE_PENDING,
                version: 0,
                resolver_port: 0,
            }
        } else {
            Decision::NONE
        };
    }
    // SAFETY: the value is copied out at once.
    let Some(policy) = (unsafe { AGENT_POLICY.get(agent) }).copied() else {
        return Decision::NONE;
    };
    if policy.quarantined != 0 {
        return quarantined(dst, &policy);
    }
    if policy.mode == MODE_NONE {
        return Decision::NONE;
    }
    let deny = if policy.mode == MODE_ENFORCE {
        VERDICT_DENY
    } else {
        VERDICT_WOULD_DENY
    };
    let decided = |verdict, rule_id| Decision {
        verdict,
        rule_id,
        version: policy.version,
        resolver_port: 0,
    };
    if is_resolver(dst, policy.resolver_port) {
        return decided(VERDICT_ALLOW, RULE_RESOLVER);
    }
    if dst.port == DNS_PORT && policy.resolver_port != 0 {
        // Every DNS query of the agent goes to agentd's resolver, wherever it was sent: the
        // resolver decides names and pins their addresses before answering.
        return Decision {
            verdict: VERDICT_ALLOW,
            rule_id: RULE_DNS,
            version: policy.version,
            resolver_port: policy.resolver_port as u16,
        };
    }
    let key = Key::new(
        KEY_FIXED_BITS + 128,
        EgressKey {
            agent_id: agent,
            generation: policy.generation,
            addr: trie_addr(dst),
        },
    );
    if let Some(value) = EGRESS_RULES.get(&key) {
        // SAFETY: plain helper call without pointer arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i as u32 >= value.count {
                break;
            }
            let rule = &value.rules[i];
            if rule.allows(dst.port, protocol, now) {
                return decided(VERDICT_ALLOW, rule.rule_id);
            }
            i += 1;
        }
    }
    decided(deny, RULE_DEFAULT)
}
