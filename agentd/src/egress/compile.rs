//! Compiling an egress policy into LPM trie entries (pure: no kernel, unit-tested).
//!
//! An LPM lookup returns only the most specific entry containing an address, so each entry
//! carries its own rules' port ranges *and* those of every less specific rule covering it;
//! otherwise a narrow rule would hide a wider rule's ports.

use sensor_common::egress::{EgressValue, MAX_PORT_RULES, PortRule};

use crate::config::egress::{EgressPolicy, EgressRule, Net, Target};

/// One trie entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The prefix.
    pub net: Net,
    /// What is allowed there.
    pub ranges: Vec<PortRule>,
}

impl Entry {
    /// The kernel value.
    pub fn value(&self) -> EgressValue {
        let mut value = EgressValue {
            count: self.ranges.len().min(MAX_PORT_RULES) as u32,
            ..Default::default()
        };
        for (slot, range) in value.rules.iter_mut().zip(&self.ranges) {
            *slot = *range;
        }
        value
    }
}

/// The port ranges of one rule, expiring at `expires_ns` (0: never).
pub fn ranges(rule: &EgressRule, expires_ns: u64) -> Vec<PortRule> {
    rule.ports
        .iter()
        .map(|&(lo, hi)| PortRule {
            lo,
            hi,
            protocol: rule.protocol.number(),
            rule_id: rule.id,
            expires_ns,
            ..Default::default()
        })
        .collect()
}

fn push_unique(into: &mut Vec<PortRule>, ranges: impl IntoIterator<Item = PortRule>) {
    for range in ranges {
        if !into.contains(&range) {
            into.push(range);
        }
    }
}

/// The ranges of every CIDR rule covering `net`.
fn covering(policy: &EgressPolicy, net: &Net) -> Vec<PortRule> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        if let Target::Cidr(rule_net) = &rule.target
            && rule_net.covers(net)
        {
            push_unique(&mut out, ranges(rule, 0));
        }
    }
    out
}

/// The entries for the policy's CIDR rules.
pub fn static_entries(policy: &EgressPolicy) -> Result<Vec<Entry>, String> {
    let mut nets: Vec<Net> = Vec::new();
    for rule in &policy.rules {
        if let Target::Cidr(net) = &rule.target
            && !nets.contains(net)
        {
            nets.push(*net);
        }
    }
    nets.sort();
    nets.into_iter()
        .map(|net| {
            let ranges = covering(policy, &net);
            if ranges.len() > MAX_PORT_RULES {
                return Err(format!(
                    "{} is covered by {} port ranges; at most {MAX_PORT_RULES} fit (merge rules or port lists)",
                    net.to_text(),
                    ranges.len()
                ));
            }
            Ok(Entry { net, ranges })
        })
        .collect()
}

/// The entry for an address learned through DNS: the pins' ranges (those that fit first) plus
/// the ranges of CIDR rules covering the address.
pub fn pin_entry(policy: &EgressPolicy, addr: [u8; 16], pins: &[PortRule]) -> Entry {
    let net = Net { addr, prefix: 128 };
    let mut ranges = covering(policy, &net);
    push_unique(&mut ranges, pins.iter().copied());
    // Validation (`check`) guarantees a single pin fits with its covering rules; several names
    // pinning the same address can still overflow, and then the newest pins lose their place.
    ranges.truncate(MAX_PORT_RULES);
    Entry { net, ranges }
}

/// Checks that the policy compiles: every entry's ranges fit, including a host rule's pin
/// together with the CIDR rules that may cover its addresses.
pub fn check(policy: &EgressPolicy) -> Result<(), String> {
    let entries = static_entries(policy)?;
    let widest = entries.iter().map(|e| e.ranges.len()).max().unwrap_or(0);
    for rule in &policy.rules {
        if let Target::Host(pattern) = &rule.target
            && rule.ports.len() + widest > MAX_PORT_RULES
        {
            return Err(format!(
                "rule for {} has {} port ranges; with the {widest} of the widest covering network rules that is more than {MAX_PORT_RULES}",
                pattern.to_text(),
                rule.ports.len()
            ));
        }
        if rule.ports.len() > MAX_PORT_RULES {
            return Err(format!(
                "a rule has {} port ranges; at most {MAX_PORT_RULES}",
                rule.ports.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::egress::{EgressMode, HostPattern, Protocol, parse_cidr};

    fn rule(id: u32, target: Target, ports: &[(u16, u16)], protocol: Protocol) -> EgressRule {
        EgressRule {
            id,
            target,
            ports: ports.to_vec(),
            protocol,
            allow_private: false,
        }
    }

    fn policy(rules: Vec<EgressRule>) -> EgressPolicy {
        EgressPolicy {
            mode: EgressMode::Enforce,
            rules,
            source: "t".into(),
        }
    }

    #[test]
    fn narrow_entries_inherit_wider_rules_ports() {
        let p = policy(vec![
            rule(
                1,
                Target::Cidr(parse_cidr("10.0.0.0/8").unwrap()),
                &[(443, 443)],
                Protocol::Tcp,
            ),
            rule(
                2,
                Target::Cidr(parse_cidr("10.1.0.0/16").unwrap()),
                &[(80, 80)],
                Protocol::Any,
            ),
            rule(
                3,
                Target::Cidr(parse_cidr("::1").unwrap()),
                &[(8000, 8100)],
                Protocol::Udp,
            ),
        ]);
        let entries = static_entries(&p).unwrap();
        let find = |text: &str| {
            entries
                .iter()
                .find(|e| e.net == parse_cidr(text).unwrap())
                .unwrap()
        };
        let wide = find("10.0.0.0/8");
        assert_eq!(
            wide.ranges.iter().map(|r| r.rule_id).collect::<Vec<_>>(),
            vec![1]
        );
        let narrow = find("10.1.0.0/16");
        let mut ids: Vec<u32> = narrow.ranges.iter().map(|r| r.rule_id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        let v6 = find("::1");
        assert_eq!(
            (v6.ranges[0].lo, v6.ranges[0].hi, v6.ranges[0].protocol),
            (8000, 8100, 17)
        );
        assert_eq!(v6.value().count, 1);
    }

    #[test]
    fn pins_carry_covering_rules() {
        let p = policy(vec![
            rule(
                1,
                Target::Cidr(parse_cidr("10.0.0.0/8").unwrap()),
                &[(22, 22)],
                Protocol::Tcp,
            ),
            rule(
                2,
                Target::Host(HostPattern::Exact("a.test".into())),
                &[(443, 443)],
                Protocol::Tcp,
            ),
        ]);
        let addr = crate::config::egress::ip_to_v6("10.2.3.4".parse().unwrap());
        let entry = pin_entry(&p, addr, &ranges(&p.rules[1], 99));
        let ids: Vec<(u32, u64)> = entry
            .ranges
            .iter()
            .map(|r| (r.rule_id, r.expires_ns))
            .collect();
        assert_eq!(ids, vec![(1, 0), (2, 99)]);
        assert_eq!(entry.net.prefix, 128);
    }

    #[test]
    fn too_many_ranges_are_refused() {
        let many: Vec<(u16, u16)> = (1..=9).map(|p| (p, p)).collect();
        let p = policy(vec![rule(
            1,
            Target::Cidr(parse_cidr("10.0.0.0/8").unwrap()),
            &many,
            Protocol::Any,
        )]);
        assert!(static_entries(&p).unwrap_err().contains("at most 8"));
        assert!(check(&p).is_err());
        let p = policy(vec![
            rule(
                1,
                Target::Cidr(parse_cidr("0.0.0.0/0").unwrap()),
                &[(1, 1), (2, 2), (3, 3), (4, 4)],
                Protocol::Any,
            ),
            rule(
                2,
                Target::Host(HostPattern::Exact("a.test".into())),
                &[(5, 5), (6, 6), (7, 7), (8, 8), (9, 9)],
                Protocol::Any,
            ),
        ]);
        assert!(check(&p).unwrap_err().contains("a.test"));
    }
}
