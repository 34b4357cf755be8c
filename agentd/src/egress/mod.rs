//! Per-agent egress enforcement: allowlists compiled into the kernel's LPM trie, DNS owned by
//! agentd so that host rules are exact, and the bookkeeping that makes policy changes atomic
//! and restarts seamless. See docs/egress.md for the behaviour an operator sees.
//!
//! - [`compile`]: policy → trie entries (pure).
//! - [`addr`]: which addresses a DNS answer may pin.
//! - [`kernel`]: the seam to the maps ([`kernel::EgressKernel`]).
//! - [`state`]: policies in force, generations, pins, quarantines.
//! - [`held`]: quarantines saved beside agentd's state, for restarts that start from new maps.
//! - [`dns`]: DNS message handling (pure); [`resolver`]: the per-agent resolvers.

pub mod addr;
pub mod compile;
pub mod dns;
pub mod held;
pub mod kernel;
pub mod resolver;
pub mod state;

use std::collections::BTreeMap;

use crate::config::Config;

/// Each agent's resolver port: `port_base` + the agent's position in the configuration. Every
/// agent gets one (a policy added by a reload needs no new socket).
pub fn resolver_ports(config: &Config) -> BTreeMap<u32, u16> {
    config
        .agents
        .iter()
        .enumerate()
        .map(|(i, agent)| (agent.id, config.dns.port_base.saturating_add(i as u16)))
        .collect()
}
