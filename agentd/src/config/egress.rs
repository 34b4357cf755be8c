//! Egress policy: what an agent may connect to. Written per agent in the configuration
//! (`[agent.egress]`) or in policy files (`[[egress]]` with `agent = "..."`), validated with the
//! same file/line/field errors as the rest of the configuration.

use std::net::{IpAddr, Ipv6Addr};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

/// Monitor or enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    /// Report what would be denied; block nothing.
    Monitor,
    /// Deny what no rule allows.
    Enforce,
}

impl EgressMode {
    /// The name in configuration and records.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Monitor => "monitor",
            EgressMode::Enforce => "enforce",
        }
    }
}

/// `tcp`, `udp` or any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// Either.
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

impl Protocol {
    /// The IP protocol number (0 for any).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The name in configuration and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A network in IPv6 space (IPv4 networks IPv4-mapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net {
    /// The network address.
    pub addr: [u8; 16],
    /// Prefix length in IPv6 space (an IPv4 /N is 96 + N).
    pub prefix: u8,
}

impl Net {
    /// Whether `addr` (IPv6 space) lies in the network.
    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        let bits = self.prefix as usize;
        let (bytes, rest) = (bits / 8, bits % 8);
        if self.addr[..bytes] != addr[..bytes] {
            return false;
        }
        rest == 0 || (self.addr[bytes] ^ addr[bytes]) >> (8 - rest) == 0
    }

    /// Whether this network contains all of `other`.
    pub fn covers(&self, other: &Net) -> bool {
        self.prefix <= other.prefix && self.contains(&other.addr)
    }

    /// As written: `a.b.c.d/N` for IPv4-mapped networks, `x::/N` otherwise.
    pub fn to_text(&self) -> String {
        let v6 = Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.prefix >= 96 => format!("{v4}/{}", self.prefix - 96),
            _ => format!("{v6}/{}", self.prefix),
        }
    }
}

/// An address in IPv6 space.
pub fn ip_to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A DNS name pattern: one name, or every name below a domain (`*.example.org`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(String),
    /// Any name ending in `.` + this domain, at any depth (not the domain itself).
    Below(String),
}

impl HostPattern {
    /// Whether `name` (lower case, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name == exact,
            HostPattern::Below(domain) => {
                name.len() > domain.len() + 1
                    && name.ends_with(domain.as_str())
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
            }
        }
    }

    /// As written.
    pub fn to_text(&self) -> String {
        match self {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Below(domain) => format!("*.{domain}"),
        }
    }
}

/// What a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A network.
    Cidr(Net),
    /// Addresses a name resolves to, through agentd's resolver.
    Host(HostPattern),
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Rule id within the policy (1-based, in order written).
    pub id: u32,
    /// The destination.
    pub target: Target,
    /// Allowed port ranges (inclusive).
    pub ports: Vec<(u16, u16)>,
    /// Allowed protocol.
    pub protocol: Protocol,
    /// For a host rule: private addresses (loopback, RFC 1918, ULA, CGNAT) in its answers are
    /// allowed (an internal name); link-local and metadata addresses never are.
    pub allow_private: bool,
}

impl EgressRule {
    /// The rule as a short text for records: `tcp api.example.com:443`.
    pub fn describe(&self) -> String {
        let target = match &self.target {
            Target::Cidr(net) => net.to_text(),
            Target::Host(pattern) => pattern.to_text(),
        };
        let ports = self
            .ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == 0 && hi == u16::MAX {
                    "*".to_owned()
                } else if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        format!("{} {target}:{ports}", self.protocol.as_str())
    }
}

/// An agent's egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Monitor or enforce.
    pub mode: EgressMode,
    /// Allow rules; everything else is denied (or, in monitor mode, reported).
    pub rules: Vec<EgressRule>,
    /// Where it was written (file name).
    pub source: String,
}

impl EgressPolicy {
    /// SHA-256 of the policy's canonical form: the version records carry.
    pub fn version(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut text = format!("mode={}\n", self.mode.as_str());
        for rule in &self.rules {
            text.push_str(&format!(
                "{} {} private={}\n",
                rule.id,
                rule.describe(),
                rule.allow_private
            ));
        }
        sha2::Sha256::digest(text.as_bytes()).into()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
}

/// `[[egress]]` in a policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgressFile {
    pub agent: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
}

/// A policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPolicyFile {
    pub egress: Vec<Spanned<RawEgressFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub ports: Option<Spanned<String>>,
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_private: Option<bool>,
}

/// Parses `"443"`, `"1000-2000"`, `"80,443,8000-8100"` or `"*"`.
pub fn parse_ports(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(vec![(0, u16::MAX)]);
    }
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port (0-65535)"))
        };
        let range = match part.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => {
                let p = port(part)?;
                (p, p)
            }
        };
        if range.0 > range.1 {
            return Err(format!("range {part:?} runs backwards"));
        }
        ranges.push(range);
    }
    if ranges.is_empty() {
        return Err("no ports".into());
    }
    Ok(ranges)
}

/// Parses `a.b.c.d[/N]` or `x::y[/N]` into a network in IPv6 space; refuses host bits beyond
/// the prefix (a likely typo).
pub fn parse_cidr(text: &str) -> Result<Net, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u8>()
                    .map_err(|_| format!("{p:?} is not a prefix length"))?,
            ),
        ),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let (bytes, prefix) = match ip {
        IpAddr::V4(v4) => {
            let p = prefix.unwrap_or(32);
            if p > 32 {
                return Err(format!("/{p} is too long for IPv4"));
            }
            (v4.to_ipv6_mapped().octets(), 96 + p)
        }
        IpAddr::V6(v6) => {
            let p = prefix.unwrap_or(128);
            if p > 128 {
                return Err(format!("/{p} is too long for IPv6"));
            }
            (v6.octets(), p)
        }
    };
    let mut masked = bytes;
    for (i, byte) in masked.iter_mut().enumerate() {
        let keep = (prefix as usize).saturating_sub(i * 8).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    if masked != bytes {
        let net = Net {
            addr: masked,
            prefix,
        };
        return Err(format!(
            "host bits are set beyond the prefix; did you mean {}?",
            net.to_text()
        ));
    }
    Ok(Net {
        addr: bytes,
        prefix,
    })
}

/// Parses a host pattern: a DNS name, optionally `*.` + a domain.
pub fn parse_host(text: &str) -> Result<HostPattern, String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wild, domain) = match name.strip_prefix("*.") {
        Some(domain) => (true, domain.to_owned()),
        None => (false, name.clone()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(valid_label) {
        return Err(format!(
            "{text:?} is not a DNS name (or `*.` followed by one)"
        ));
    }
    if wild && !domain.contains('.') {
        return Err(format!(
            "{text:?} would match every name of a top-level domain"
        ));
    }
    Ok(if wild {
        HostPattern::Below(domain)
    } else {
        HostPattern::Exact(domain)
    })
}

impl Validator<'_> {
    /// Validates one agent's egress policy; `field` is its dotted path (`agent[0].egress`).
    pub(super) fn egress(
        &self,
        field: &str,
        mode: &Option<Spanned<String>>,
        allow: &[Spanned<RawRule>],
        span: std::ops::Range<usize>,
    ) -> Result<EgressPolicy, ConfigError> {
        let mode = match mode {
            None => EgressMode::Enforce,
            Some(m) => match m.get_ref().as_str() {
                "enforce" => EgressMode::Enforce,
                "monitor" => EgressMode::Monitor,
                other => {
                    return Err(self.error(
                        m.span(),
                        format!("{field}.mode"),
                        format!("unknown mode {other:?}: expected \"enforce\" or \"monitor\""),
                    ));
                }
            },
        };
        let mut rules = Vec::with_capacity(allow.len());
        for (i, raw) in allow.iter().enumerate() {
            let rule_field = format!("{field}.allow[{i}]");
            let r = raw.get_ref();
            let target = match (&r.cidr, &r.host) {
                (Some(cidr), None) => Target::Cidr(
                    parse_cidr(cidr.get_ref())
                        .map_err(|e| self.error(cidr.span(), format!("{rule_field}.cidr"), e))?,
                ),
                (None, Some(host)) => Target::Host(
                    parse_host(host.get_ref())
                        .map_err(|e| self.error(host.span(), format!("{rule_field}.host"), e))?,
                ),
                _ => {
                    return Err(self.error(
                        raw.span(),
                        rule_field,
                        "a rule has exactly one of `cidr` or `host`",
                    ));
                }
            };
            let ports = match &r.ports {
                None => vec![(0, u16::MAX)],
                Some(p) => {
                    let ports = parse_ports(p.get_ref())
                        .map_err(|e| self.error(p.span(), format!("{rule_field}.ports"), e))?;
                    if ports.len() > sensor_common::egress::MAX_PORT_RULES {
                        return Err(self.error(
                            p.span(),
                            format!("{rule_field}.ports"),
                            format!(
                                "{} port ranges; at most {} fit in one rule (use a range, or split the rule)",
                                ports.len(),
                                sensor_common::egress::MAX_PORT_RULES
                            ),
                        ));
                    }
                    ports
                }
            };
            let protocol = match &r.protocol {
                None => Protocol::Any,
                Some(p) => {
                    match p.get_ref().as_str() {
                        "any" => Protocol::Any,
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        other => {
                            return Err(self.error(p.span(), format!("{rule_field}.protocol"), format!("unknown protocol {other:?}: expected \"tcp\", \"udp\" or \"any\"")));
                        }
                    }
                }
            };
            if r.allow_private.is_some() && r.host.is_none() {
                return Err(self.error(
                    raw.span(),
                    format!("{rule_field}.allow_private"),
                    "`allow_private` only goes with `host`",
                ));
            }
            rules.push(EgressRule {
                id: i as u32 + 1,
                target,
                ports,
                protocol,
                allow_private: r.allow_private.unwrap_or(false),
            });
        }
        let policy = EgressPolicy {
            mode,
            rules,
            source: self.file.to_owned(),
        };
        // The kernel keeps at most MAX_PORT_RULES ranges per address prefix, counting every
        // covering rule; refuse a policy that cannot be compiled rather than drop ranges.
        if let Err(reason) = crate::egress::compile::check(&policy) {
            return Err(self.error(span, field.to_owned(), reason));
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_ports("443").unwrap(), vec![(443, 443)]);
        assert_eq!(
            parse_ports("80, 1000-2000").unwrap(),
            vec![(80, 80), (1000, 2000)]
        );
        assert_eq!(parse_ports("*").unwrap(), vec![(0, 65535)]);
        assert!(parse_ports("2000-1000").is_err());
        assert!(parse_ports("70000").is_err());
        assert!(parse_ports("").is_err());
    }

    #[test]
    fn cidrs() {
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert_eq!(net.prefix, 104);
        assert!(net.contains(&ip_to_v6("10.1.2.3".parse().unwrap())));
        assert!(!net.contains(&ip_to_v6("11.0.0.1".parse().unwrap())));
        assert_eq!(net.to_text(), "10.0.0.0/8");
        assert_eq!(parse_cidr("127.0.0.1").unwrap().prefix, 128);
        assert_eq!(parse_cidr("::1").unwrap().to_text(), "::1/128");
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(v6.contains(&ip_to_v6("2001:db8::5".parse().unwrap())));
        assert!(
            parse_cidr("10.0.0.1/8")
                .unwrap_err()
                .contains("did you mean 10.0.0.0/8")
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert!(
            parse_cidr("10.0.0.0/8")
                .unwrap()
                .covers(&parse_cidr("10.9.0.0/16").unwrap())
        );
        assert!(
            !parse_cidr("10.9.0.0/16")
                .unwrap()
                .covers(&parse_cidr("10.0.0.0/8").unwrap())
        );
        // IPv4 rules never cover IPv6 addresses (and the other way round).
        assert!(
            !parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains(&ip_to_v6("::1".parse().unwrap()))
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("API.Example.COM.").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        let wild = parse_host("*.example.org").unwrap();
        assert!(wild.matches("a.example.org"));
        assert!(wild.matches("a.b.example.org"));
        assert!(!wild.matches("example.org"));
        assert!(!wild.matches("badexample.org"));
        assert!(parse_host("*.com").is_err());
        assert!(parse_host("a..b").is_err());
        assert!(parse_host("bad name").is_err());
    }
}
