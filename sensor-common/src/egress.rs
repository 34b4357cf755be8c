//! Egress policy as the kernel sees it.
//!
//! agentd compiles each agent's allowlist into `EGRESS_RULES`, an LPM trie keyed by
//! ([`EgressKey`]: agent, generation, address). IPv4 addresses are stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one trie serves both families. Each entry lists the port ranges and
//! protocols allowed there ([`EgressValue`]); a more specific entry also carries the ranges of
//! every less specific rule that covers it, because an LPM lookup returns only the longest
//! match. Addresses learned through DNS are entries with an expiry, checked in the kernel.
//!
//! A policy is replaced atomically: the new rules are written under the agent's next
//! generation, then [`AgentPolicy::generation`] is switched with one map update, then the old
//! generation's entries are deleted. A decision reads the generation once, so it never sees a
//! mix.

/// No policy: connections are observed, not decided.
pub const MODE_NONE: u32 = 0;
/// Decide and report, but never block (what would be denied is reported as such).
pub const MODE_MONITOR: u32 = 1;
/// Deny what the allowlist does not allow.
pub const MODE_ENFORCE: u32 = 2;

/// No decision was made (no policy for the agent).
pub const VERDICT_NONE: u32 = 0;
/// Allowed by a rule.
pub const VERDICT_ALLOW: u32 = 1;
/// Denied (enforce mode).
pub const VERDICT_DENY: u32 = 2;
/// Would have been denied, but the agent is in monitor mode.
pub const VERDICT_WOULD_DENY: u32 = 3;

/// No rule matched: the default deny.
pub const RULE_DEFAULT: u32 = 0;
/// DNS (port 53) redirected to agentd's resolver.
pub const RULE_DNS: u32 = 0xffff_ff01;
/// agentd's own resolver, always reachable for agents with a policy.
pub const RULE_RESOLVER: u32 = 0xffff_ff02;
/// The agent's egress is quarantined.
pub const RULE_QUARANTINE: u32 = 0xffff_ff03;
/// The process's cgroup is too new to be resolved yet and an enforced agent may own it.
pub const RULE_PENDING: u32 = 0xffff_ff04;

/// Bits of [`EgressKey`] before the address (agent and generation): always part of a prefix.
pub const KEY_FIXED_BITS: u32 = 64;
/// Port ranges one trie entry can hold.
pub const MAX_PORT_RULES: usize = 8;

/// Protocol wildcard in [`PortRule::protocol`].
pub const PROTO_ANY: u8 = 0;

/// An agent's egress settings (`AGENT_POLICY`, keyed by agent id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentPolicy {
    /// `MODE_*`.
    pub mode: u32,
    /// Non-zero: every outbound connection is denied (containment).
    pub quarantined: u32,
    /// Which generation of `EGRESS_RULES` entries is in force.
    pub generation: u32,
    /// The port of this agent's DNS resolver on 127.0.0.1 and ::1 (host order).
    pub resolver_port: u32,
    /// The first eight bytes of the SHA-256 of the agent's policy, as stored in records.
    pub version: u64,
}
const _: () = assert!(core::mem::size_of::<AgentPolicy>() == 24);

/// The data part of an `EGRESS_RULES` key (the LPM prefix length travels beside it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EgressKey {
    /// Agent id.
    pub agent_id: u32,
    /// Policy generation.
    pub generation: u32,
    /// IPv6 address, or IPv4-mapped IPv4 address.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<EgressKey>() == 24);

/// One allowed port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// First port (host order).
    pub lo: u16,
    /// Last port (host order), inclusive.
    pub hi: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or [`PROTO_ANY`].
    pub protocol: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The rule this range comes from (records name it).
    pub rule_id: u32,
    /// Explicit padding.
    pub _pad2: u32,
    /// `CLOCK_BOOTTIME` ns after which the range no longer applies (a DNS answer's TTL plus
    /// grace); 0 for rules that do not expire.
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PortRule>() == 24);

/// The value of an `EGRESS_RULES` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressValue {
    /// Valid entries in `rules`.
    pub count: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The ranges.
    pub rules: [PortRule; MAX_PORT_RULES],
}
const _: () = assert!(core::mem::size_of::<EgressValue>() == 8 + 24 * MAX_PORT_RULES);

impl PortRule {
    /// Whether the range allows `port` over `protocol` at boot time `now`.
    #[inline(always)]
    pub fn allows(&self, port: u16, protocol: u8, now: u64) -> bool {
        (self.protocol == PROTO_ANY || self.protocol == protocol)
            && self.lo <= port
            && port <= self.hi
            && (self.expires_ns == 0 || now < self.expires_ns)
    }
}

/// The IPv4-mapped IPv6 form of an IPv4 address.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rules() {
        let rule = PortRule {
            lo: 443,
            hi: 443,
            protocol: 6,
            rule_id: 1,
            expires_ns: 100,
            ..Default::default()
        };
        assert!(rule.allows(443, 6, 99));
        assert!(!rule.allows(443, 6, 100));
        assert!(!rule.allows(443, 17, 0));
        assert!(!rule.allows(444, 6, 0));
        let any = PortRule {
            lo: 1000,
            hi: 2000,
            protocol: PROTO_ANY,
            ..Default::default()
        };
        assert!(any.allows(1500, 17, u64::MAX));
        assert_eq!(v4_mapped([10, 0, 0, 1])[10..], [0xff, 0xff, 10, 0, 0, 1]);
    }
}
