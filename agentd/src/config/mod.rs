//! agentd's configuration: parsed from TOML ([`raw`]), then validated into [`Config`].
//!
//! Every mistake is reported with the file, line, column and the dotted path of the field, and
//! nothing half-valid is ever returned: a configuration is accepted whole or refused whole.

pub mod api;
pub mod detector;
pub mod egress;
mod raw;

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};
use sensor_common::names::DEFAULT_RING_BYTES;
use toml::Spanned;

use self::raw::{RawAgent, RawConfig, RawSelector};

/// The configuration used when agentd is started without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
/// How the embedded default is named in messages.
pub const EMBEDDED_NAME: &str = "<embedded default configuration>";

/// A configuration mistake, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or [`EMBEDDED_NAME`]).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `agent[1].selectors[0].cgroup`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": field `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Whether processes outside every agent are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorMode {
    /// Only agent processes (the default): everything else is filtered out in the kernel.
    Agents,
    /// Every process; those outside all agents are reported as unattributed.
    Host,
}

/// How far an agent is trusted; containment and approval policies key on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrustTier {
    /// Untrusted or new agents (the default).
    Low,
    /// Agents with a track record.
    Medium,
    /// Agents trusted with sensitive operations.
    High,
}

impl TrustTier {
    /// The name used in configuration and records.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustTier::Low => "low",
            TrustTier::Medium => "medium",
            TrustTier::High => "high",
        }
    }
}

/// How a selector names an agent's processes.
#[derive(Debug, Clone)]
pub enum SelectorKind {
    /// Processes in a cgroup whose path (relative to the cgroup v2 root, no leading `/`) matches
    /// the glob. `*` stays within one path component, `**` spans several. A matching cgroup's
    /// descendants belong to the agent too.
    Cgroup {
        /// The glob as written.
        pattern: String,
        /// The compiled glob.
        matcher: GlobMatcher,
    },
    /// Processes running this file, bound by inode once its sha256 (if given) checks out.
    Executable {
        /// Absolute path.
        path: PathBuf,
        /// Expected SHA-256 of the file's contents.
        sha256: Option<[u8; 32]>,
    },
    /// Processes with this real uid.
    Uid(u32),
    /// Processes with this real gid.
    Gid(u32),
}

impl SelectorKind {
    /// The selector type's name in records.
    pub fn type_name(&self) -> &'static str {
        match self {
            SelectorKind::Cgroup { .. } => "cgroup",
            SelectorKind::Executable { .. } => "executable",
            SelectorKind::Uid(_) => "uid",
            SelectorKind::Gid(_) => "gid",
        }
    }

    /// The selector's value in records.
    pub fn value(&self) -> String {
        match self {
            SelectorKind::Cgroup { pattern, .. } => pattern.clone(),
            SelectorKind::Executable { path, .. } => path.display().to_string(),
            SelectorKind::Uid(uid) => uid.to_string(),
            SelectorKind::Gid(gid) => gid.to_string(),
        }
    }
}

/// One agent identity.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's id in the kernel maps (derived from the SPIFFE id).
    pub id: u32,
    /// The name (last segment of the SPIFFE id).
    pub name: String,
    /// `spiffe://<trust domain>/agent/<name>`.
    pub spiffe_id: String,
    /// Who answers for the agent.
    pub owner: String,
    /// What the agent is allowed to do, as declared.
    pub scopes: Vec<String>,
    /// Trust tier.
    pub trust_tier: TrustTier,
    /// The selectors, in the order written.
    pub selectors: Vec<SelectorKind>,
    /// The egress policy written in the configuration, if any (policy files may add one).
    pub egress: Option<egress::EgressPolicy>,
    /// What the detector does for it.
    pub detection: detector::Detection,
}

/// agentd's DNS resolver for agents with an egress policy (`[dns]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Where allowed queries are forwarded; empty: the nameservers of `/etc/resolv.conf`.
    pub upstream: Vec<std::net::SocketAddr>,
    /// The first resolver port; each agent with a policy gets the next one (127.0.0.1, ::1).
    pub port_base: u16,
    /// How long an answer's addresses stay allowed past their TTL.
    pub grace: std::time::Duration,
    /// How long to wait for the upstream.
    pub timeout: std::time::Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            upstream: Vec::new(),
            // Below the kernel's ephemeral range (32768 and up), so no client socket holds it.
            port_base: 15300,
            // Clients keep using addresses a little past the TTL (Cilium found the same and
            // settled on 60 s of idle grace).
            grace: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// The signed log's settings (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The log directory.
    pub dir: PathBuf,
    /// The signing key file.
    pub key: PathBuf,
    /// The log's origin; `None` derives one when the log is created.
    pub origin: Option<String>,
    /// Segment size in bytes.
    pub segment_bytes: u64,
    /// Sign a checkpoint at least this often while records arrive.
    pub checkpoint_interval: std::time::Duration,
    /// Append a heartbeat record (and sign it) after this long without records.
    pub heartbeat: std::time::Duration,
    /// Delete signed segments older than this.
    pub retention_age: Option<std::time::Duration>,
    /// Delete the oldest signed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            // State lives with the rest of agentd's state (systemd StateDirectory=custos).
            dir: PathBuf::from("/var/lib/custos/log"),
            // Kept apart from the log so a copy of the log never carries the key.
            key: PathBuf::from("/var/lib/custos/keys/log.key"),
            origin: None,
            // Large enough that a busy host rolls a few segments an hour, small enough that
            // retention frees space in useful steps.
            segment_bytes: 64 << 20,
            // The bound: a record is covered by a signature within a second.
            checkpoint_interval: std::time::Duration::from_secs(1),
            // An idle log still proves it is alive (and not truncated) every ten seconds.
            heartbeat: std::time::Duration::from_secs(10),
            // 13 months: a SOC 2 Type II window plus a margin.
            retention_age: Some(std::time::Duration::from_secs(400 * 86_400)),
            retention_bytes: None,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or [`EMBEDDED_NAME`]).
    pub source: String,
    /// SHA-256 of the file's bytes: names this configuration version in records.
    pub sha256: [u8; 32],
    /// Sensor mode.
    pub mode: SensorMode,
    /// Ring buffer size in bytes.
    pub ring_buffer_bytes: u32,
    /// Where the JSON-lines export of the log goes (`None`: no export).
    pub events_path: Option<PathBuf>,
    /// Also write events to standard output.
    pub stdout: bool,
    /// The SPIFFE trust domain of the agents.
    pub trust_domain: String,
    /// The signed log.
    pub log: LogSettings,
    /// The DNS resolver.
    pub dns: DnsSettings,
    /// A directory of policy files (`*.toml`), read at start and on reload.
    pub policy_dir: Option<PathBuf>,
    /// The bpffs directory where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// Where agentd keeps small state (the instance lock, loss counts already reported).
    pub state_dir: PathBuf,
    /// `[sensor] pending_egress = "deny"`: deny egress from new cgroups outside every agent's
    /// until agentd resolves them, while an enforced agent is selected by cgroup.
    pub pending_egress_deny: bool,
    /// The API (`[api]`).
    pub api: api::ApiSettings,
    /// `[detector]`.
    pub detector: detector::DetectorSettings,
    /// The agents.
    pub agents: Vec<AgentSpec>,
}

/// Smallest ring buffer agentd accepts (two pages).
const MIN_RING_BYTES: u64 = 8 << 10;
/// Largest ring buffer agentd accepts.
const MAX_RING_BYTES: u64 = 1 << 30;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            field: String::new(),
            message: format!("cannot read the file: {err}"),
        })?;
        Self::parse(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        Self::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME)
            // The unit test `embedded_default_is_valid` guarantees this.
            .expect("the embedded default configuration is valid")
    }

    /// Validates `text`, naming it `file` in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let (line, column) = match err.span() {
                Some(span) => position(text, span.start),
                None => (None, None),
            };
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                field: String::new(),
                message: err.message().trim_end().to_owned(),
            }
        })?;
        Validator { text, file }.config(raw, text)
    }
}

/// The egress policies in force: the configuration's and the policy files'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    /// Agent id → policy.
    pub by_agent: std::collections::BTreeMap<u32, egress::EgressPolicy>,
    /// Whether a process in a cgroup agentd has not resolved yet must be denied egress: some
    /// enforced agent is selected by cgroup, and the new cgroup may be its.
    pub pending_deny: bool,
}

impl Config {
    /// Every egress policy: those in the configuration, then those in the policy directory's
    /// `*.toml` files (in name order). An agent's policy is defined in one place only.
    pub fn policies(&self) -> Result<Policies, ConfigError> {
        let mut by_agent = std::collections::BTreeMap::new();
        let mut defined: HashMap<u32, String> = HashMap::new();
        for agent in &self.agents {
            if let Some(policy) = &agent.egress {
                by_agent.insert(agent.id, policy.clone());
                defined.insert(agent.id, self.source.clone());
            }
        }
        if let Some(dir) = &self.policy_dir {
            let read_error = |message: String| ConfigError {
                file: dir.display().to_string(),
                line: None,
                column: None,
                field: String::new(),
                message,
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|err| read_error(format!("cannot read the policy directory: {err}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            for path in files {
                let file = path.display().to_string();
                let text = std::fs::read_to_string(&path).map_err(|err| ConfigError {
                    file: file.clone(),
                    line: None,
                    column: None,
                    field: String::new(),
                    message: format!("cannot read the file: {err}"),
                })?;
                for (agent_id, span, policy) in parse_policy_file(&text, &file, &self.agents)? {
                    if let Some(previous) = defined.get(&agent_id) {
                        let name = self
                            .agents
                            .iter()
                            .find(|a| a.id == agent_id)
                            .map_or("", |a| a.name.as_str());
                        let (line, column) = position(&text, span.start);
                        return Err(ConfigError {
                            file,
                            line,
                            column,
                            field: "egress.agent".into(),
                            message: format!(
                                "agent {name:?} already has an egress policy (in {previous})"
                            ),
                        });
                    }
                    defined.insert(agent_id, file.clone());
                    by_agent.insert(agent_id, policy);
                }
            }
        }
        let pending_deny = self.pending_egress_deny
            && by_agent.iter().any(|(id, policy)| {
                policy.mode == egress::EgressMode::Enforce
                    && self.agents.iter().any(|a| {
                        a.id == *id
                            && a.selectors
                                .iter()
                                .any(|s| matches!(s, SelectorKind::Cgroup { .. }))
                    })
            });
        Ok(Policies {
            by_agent,
            pending_deny,
        })
    }
}

/// Parses a policy file: `[[egress]]` tables naming configured agents.
fn parse_policy_file(
    text: &str,
    file: &str,
    agents: &[AgentSpec],
) -> Result<Vec<(u32, Range<usize>, egress::EgressPolicy)>, ConfigError> {
    let raw: egress::RawPolicyFile = toml::from_str(text).map_err(|err| {
        let (line, column) = match err.span() {
            Some(span) => position(text, span.start),
            None => (None, None),
        };
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            field: String::new(),
            message: err.message().trim_end().to_owned(),
        }
    })?;
    let validator = Validator { text, file };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in raw.egress.iter().enumerate() {
        let e = entry.get_ref();
        let Some(agent) = agents.iter().find(|a| a.name == *e.agent.get_ref()) else {
            return Err(validator.error(
                e.agent.span(),
                format!("egress[{i}].agent"),
                format!(
                    "no agent named {:?} in the configuration",
                    e.agent.get_ref()
                ),
            ));
        };
        if !seen.insert(agent.id) {
            return Err(validator.error(
                e.agent.span(),
                format!("egress[{i}].agent"),
                format!("agent {:?} has two policies in this file", agent.name),
            ));
        }
        let policy = validator.egress(&format!("egress[{i}]"), &e.mode, &e.allow, entry.span())?;
        out.push((agent.id, e.agent.span(), policy));
    }
    Ok(out)
}

fn position(text: &str, offset: usize) -> (Option<usize>, Option<usize>) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (Some(line), Some(column))
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = position(self.text, span.start);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// An optional number that must lie in `min..=max`.
    fn range(
        &self,
        value: &Option<Spanned<u64>>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) if (min..=max).contains(v.get_ref()) => Ok(Some(*v.get_ref())),
            Some(v) => Err(self.error(
                v.span(),
                field,
                format!("{} is outside {min}..={max}", v.get_ref()),
            )),
        }
    }

    fn config(&self, raw: RawConfig, text: &str) -> Result<Config, ConfigError> {
        use sha2::Digest as _;

        let mode = match &raw.sensor.mode {
            None => SensorMode::Agents,
            Some(mode) => match mode.get_ref().as_str() {
                "agents" => SensorMode::Agents,
                "host" => SensorMode::Host,
                other => {
                    return Err(self.error(
                        mode.span(),
                        "sensor.mode",
                        format!("unknown mode {other:?}: expected \"agents\" or \"host\""),
                    ));
                }
            },
        };
        let ring_buffer_bytes = match &raw.sensor.ring_buffer_bytes {
            None => DEFAULT_RING_BYTES,
            Some(bytes) => {
                let value = *bytes.get_ref();
                if !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&value) || !value.is_power_of_two() {
                    return Err(self.error(
                        bytes.span(),
                        "sensor.ring_buffer_bytes",
                        format!(
                            "{value} is not a power of two between {MIN_RING_BYTES} and {MAX_RING_BYTES}"
                        ),
                    ));
                }
                value as u32
            }
        };
        let events_path = match &raw.output.events {
            None => Some(PathBuf::from("/var/lib/custos/events.jsonl")),
            Some(path) if path.get_ref().is_empty() => None,
            Some(path) => {
                let value = PathBuf::from(path.get_ref());
                if !value.is_absolute() {
                    return Err(self.error(
                        path.span(),
                        "output.events",
                        "must be an absolute path (or \"\" for none)",
                    ));
                }
                Some(value)
            }
        };
        let trust_domain = match &raw.identity.trust_domain {
            None => "custos.local".to_owned(),
            Some(domain) => {
                let value = domain.get_ref();
                let valid = !value.is_empty()
                    && value.len() <= 255
                    && value.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)
                    });
                if !valid {
                    return Err(self.error(
                        domain.span(),
                        "identity.trust_domain",
                        format!(
                            "{value:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
                        ),
                    ));
                }
                value.clone()
            }
        };

        let log = self.log(&raw.log)?;
        let dns = self.dns(&raw.dns)?;
        let api = self.api(&raw.api)?;
        let detector = self.detector(&raw.detector)?;
        let abs = |value: &Option<Spanned<String>>,
                   field: &str,
                   default: &str|
         -> Result<PathBuf, ConfigError> {
            match value {
                None => Ok(PathBuf::from(default)),
                Some(v) if Path::new(v.get_ref()).is_absolute() => Ok(PathBuf::from(v.get_ref())),
                Some(v) => Err(self.error(v.span(), field, "must be an absolute path")),
            }
        };
        let pin_dir = abs(&raw.sensor.pin_dir, "sensor.pin_dir", "/sys/fs/bpf/custos")?;
        let pending_egress_deny = match &raw.sensor.pending_egress {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "allow" => false,
                "deny" => true,
                other => {
                    return Err(self.error(
                        v.span(),
                        "sensor.pending_egress",
                        format!("unknown value {other:?}: expected \"allow\" or \"deny\""),
                    ));
                }
            },
        };
        let state_dir = abs(
            &raw.sensor.state_dir,
            "sensor.state_dir",
            "/var/lib/custos/state",
        )?;
        let policy_dir = match &raw.policy.dir {
            None => None,
            Some(dir) if dir.get_ref().is_empty() => None,
            Some(_) => Some(abs(&raw.policy.dir, "policy.dir", "")?),
        };

        let mut agents = Vec::with_capacity(raw.agents.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        // Selectors that name the same thing in two agents make attribution ambiguous.
        let mut claimed: HashMap<String, String> = HashMap::new();
        for (index, agent) in raw.agents.into_iter().enumerate() {
            let span = agent.span();
            let name_span = agent.get_ref().name.span();
            let spec = self.agent(index, agent.into_inner(), &trust_domain)?;
            if let Some(previous) = names.insert(spec.name.clone(), index) {
                return Err(self.error(
                    name_span,
                    format!("agent[{index}].name"),
                    format!(
                        "agent name {:?} is already used by agent[{previous}]",
                        spec.name
                    ),
                ));
            }
            for (s, selector) in spec.selectors.iter().enumerate() {
                let key = format!("{}={}", selector.type_name(), selector.value());
                if let Some(owner) = claimed.insert(key.clone(), spec.name.clone()) {
                    return Err(self.error(
                        span.clone(),
                        format!("agent[{index}].selectors[{s}]"),
                        format!(
                            "selector {key} is also declared by agent {owner:?}: each process must belong to one agent"
                        ),
                    ));
                }
            }
            // Ids derive from names; two names hashing alike are astronomically unlikely, but a
            // collision would merge two agents in the kernel, so it is refused.
            let ids = agents.iter().map(|a: &AgentSpec| a.id);
            if ids.clone().any(|id| id == spec.id) {
                return Err(self.error(
                    span.clone(),
                    format!("agent[{index}].name"),
                    "this name's id collides with another agent's; rename it",
                ));
            }
            let mut selector_ids: std::collections::HashSet<u32> = agents
                .iter()
                .flat_map(|a| {
                    a.selectors
                        .iter()
                        .map(|k| crate::identity::registry::selector_id(&a.spiffe_id, k))
                })
                .collect();
            for (s, kind) in spec.selectors.iter().enumerate() {
                if !selector_ids.insert(crate::identity::registry::selector_id(
                    &spec.spiffe_id,
                    kind,
                )) {
                    return Err(self.error(
                        span.clone(),
                        format!("agent[{index}].selectors[{s}]"),
                        "this selector's id collides with another; change it slightly",
                    ));
                }
            }
            agents.push(spec);
        }
        if dns.port_base as usize + agents.len() > usize::from(u16::MAX) + 1 {
            let span = raw.dns.port_base.as_ref().map_or(0..0, Spanned::span);
            return Err(self.error(
                span,
                "dns.port_base",
                format!(
                    "{} agents need ports {} and up, past 65535",
                    agents.len(),
                    dns.port_base
                ),
            ));
        }

        Ok(Config {
            source: self.file.to_owned(),
            sha256: sha2::Sha256::digest(text.as_bytes()).into(),
            mode,
            ring_buffer_bytes,
            events_path,
            stdout: raw.output.stdout.unwrap_or(false),
            trust_domain,
            log,
            dns,
            policy_dir,
            pin_dir,
            state_dir,
            pending_egress_deny,
            api,
            detector,
            agents,
        })
    }

    fn dns(&self, raw: &raw::RawDns) -> Result<DnsSettings, ConfigError> {
        let mut dns = DnsSettings::default();
        if let Some(upstream) = &raw.upstream {
            for (i, server) in upstream.iter().enumerate() {
                let text = server.get_ref();
                let addr = text
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        text.parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        self.error(
                            server.span(),
                            format!("dns.upstream[{i}]"),
                            format!("{text:?} is not an address (ip or ip:port)"),
                        )
                    })?;
                dns.upstream.push(addr);
            }
        }
        if let Some(port) = self.range(&raw.port_base, "dns.port_base", 1024, 60_000)? {
            dns.port_base = port as u16;
        }
        if let Some(secs) = self.range(&raw.grace_seconds, "dns.grace_seconds", 0, 86_400)? {
            dns.grace = std::time::Duration::from_secs(secs);
        }
        if let Some(ms) = self.range(&raw.timeout_ms, "dns.timeout_ms", 50, 30_000)? {
            dns.timeout = std::time::Duration::from_millis(ms);
        }
        Ok(dns)
    }

    fn log(&self, raw: &raw::RawLog) -> Result<LogSettings, ConfigError> {
        let mut log = LogSettings::default();
        let path = |value: &Option<Spanned<String>>,
                    field: &str,
                    default: PathBuf|
         -> Result<PathBuf, ConfigError> {
            match value {
                None => Ok(default),
                Some(v) if Path::new(v.get_ref()).is_absolute() => Ok(PathBuf::from(v.get_ref())),
                Some(v) => Err(self.error(v.span(), field, "must be an absolute path")),
            }
        };
        log.dir = path(&raw.dir, "log.dir", log.dir)?;
        log.key = path(&raw.key, "log.key", log.key)?;
        if log.key.starts_with(&log.dir) {
            let span = raw.key.as_ref().map(Spanned::span).unwrap_or(0..0);
            return Err(self.error(
                span,
                "log.key",
                "the signing key must live outside the log directory (copies of the log must not carry it)",
            ));
        }
        if let Some(origin) = &raw.origin {
            let value = origin.get_ref();
            if value.is_empty()
                || value
                    .chars()
                    .any(|c| c.is_whitespace() || c == '+' || c.is_control())
            {
                return Err(self.error(
                    origin.span(),
                    "log.origin",
                    "must be non-empty, without spaces or '+'",
                ));
            }
            log.origin = Some(value.clone());
        }
        if let Some(mib) = self.range(&raw.segment_mib, "log.segment_mib", 1, 4096)? {
            log.segment_bytes = mib << 20;
        }
        if let Some(ms) = self.range(
            &raw.checkpoint_interval_ms,
            "log.checkpoint_interval_ms",
            10,
            60_000,
        )? {
            log.checkpoint_interval = std::time::Duration::from_millis(ms);
        }
        if let Some(secs) = self.range(&raw.heartbeat_seconds, "log.heartbeat_seconds", 1, 3600)? {
            log.heartbeat = std::time::Duration::from_secs(secs);
        }
        if let Some(days) = self.range(&raw.retention_days, "log.retention_days", 0, 36_500)? {
            log.retention_age = (days > 0).then(|| std::time::Duration::from_secs(days * 86_400));
        }
        if let Some(mib) = self.range(&raw.retention_mib, "log.retention_mib", 0, 1 << 30)? {
            log.retention_bytes = (mib > 0).then_some(mib << 20);
        }
        Ok(log)
    }

    fn agent(
        &self,
        index: usize,
        raw: RawAgent,
        trust_domain: &str,
    ) -> Result<AgentSpec, ConfigError> {
        let field = |name: &str| format!("agent[{index}].{name}");
        let name = raw.name.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(self.error(
                raw.name.span(),
                field("name"),
                format!("{name:?} is not a valid agent name (letters, digits, '.', '-', '_')"),
            ));
        }
        let trust_tier = match &raw.trust_tier {
            None => TrustTier::Low,
            Some(tier) => {
                match tier.get_ref().as_str() {
                    "low" => TrustTier::Low,
                    "medium" => TrustTier::Medium,
                    "high" => TrustTier::High,
                    other => {
                        return Err(self.error(
                        tier.span(),
                        field("trust_tier"),
                        format!("unknown trust tier {other:?}: expected \"low\", \"medium\" or \"high\""),
                    ));
                    }
                }
            }
        };
        let mut scopes = Vec::with_capacity(raw.scopes.len());
        for (s, scope) in raw.scopes.iter().enumerate() {
            let value = scope.get_ref();
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.error(
                    scope.span(),
                    format!("agent[{index}].scopes[{s}]"),
                    format!("{value:?} is not a valid scope (non-empty, no spaces)"),
                ));
            }
            scopes.push(value.clone());
        }
        if raw.selectors.is_empty() {
            return Err(self.error(
                raw.name.span(),
                field("selectors"),
                format!("agent {name:?} has no selectors: nothing could ever be attributed to it"),
            ));
        }
        let mut selectors = Vec::with_capacity(raw.selectors.len());
        for (s, selector) in raw.selectors.into_iter().enumerate() {
            let span = selector.span();
            selectors.push(self.selector(
                &format!("agent[{index}].selectors[{s}]"),
                selector.into_inner(),
                span,
            )?);
        }
        let egress = match &raw.egress {
            None => None,
            Some(e) => Some(self.egress(
                &field("egress"),
                &e.get_ref().mode,
                &e.get_ref().allow,
                e.span(),
            )?),
        };
        let detection = self.detection(&raw.detection, &field("detection"))?;
        let spiffe_id = format!("spiffe://{trust_domain}/agent/{name}");
        Ok(AgentSpec {
            detection,
            egress,
            id: crate::identity::registry::stable_id(&spiffe_id),
            spiffe_id,
            name: name.clone(),
            owner: raw.owner.map(Spanned::into_inner).unwrap_or_default(),
            scopes,
            trust_tier,
            selectors,
        })
    }

    fn selector(
        &self,
        field: &str,
        raw: RawSelector,
        span: Range<usize>,
    ) -> Result<SelectorKind, ConfigError> {
        let kinds = [
            raw.cgroup.is_some(),
            raw.executable.is_some(),
            raw.uid.is_some(),
            raw.gid.is_some(),
        ];
        match kinds.iter().filter(|&&k| k).count() {
            1 => {}
            0 => {
                return Err(self.error(
                    span,
                    field,
                    "a selector needs one of `cgroup`, `executable`, `uid` or `gid`",
                ));
            }
            _ => {
                return Err(self.error(
                    span,
                    field,
                    "a selector has exactly one of `cgroup`, `executable`, `uid` or `gid`; write two selectors to match either",
                ));
            }
        }
        if let (Some(sha), None) = (&raw.sha256, &raw.executable) {
            return Err(self.error(
                sha.span(),
                format!("{field}.sha256"),
                "`sha256` only goes with `executable`",
            ));
        }
        if let Some(pattern) = raw.cgroup {
            let value = pattern.get_ref().trim_start_matches('/').to_owned();
            if value.is_empty() {
                return Err(self.error(
                    pattern.span(),
                    format!("{field}.cgroup"),
                    "empty cgroup pattern",
                ));
            }
            let matcher = GlobBuilder::new(&value)
                .literal_separator(true)
                .build()
                .map_err(|err| {
                    self.error(
                        pattern.span(),
                        format!("{field}.cgroup"),
                        format!("invalid glob: {}", err.kind()),
                    )
                })?
                .compile_matcher();
            return Ok(SelectorKind::Cgroup {
                pattern: value,
                matcher,
            });
        }
        if let Some(path) = raw.executable {
            let value = PathBuf::from(path.get_ref());
            if !value.is_absolute() {
                return Err(self.error(
                    path.span(),
                    format!("{field}.executable"),
                    "must be an absolute path",
                ));
            }
            let sha256 = match raw.sha256 {
                None => None,
                Some(sha) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(sha.get_ref().trim(), &mut digest).map_err(|_| {
                        self.error(
                            sha.span(),
                            format!("{field}.sha256"),
                            "must be 64 hexadecimal digits (the output of `sha256sum`)",
                        )
                    })?;
                    Some(digest)
                }
            };
            return Ok(SelectorKind::Executable {
                path: value,
                sha256,
            });
        }
        let id = |value: &Spanned<i64>, name: &str| -> Result<u32, ConfigError> {
            u32::try_from(*value.get_ref())
                .ok()
                .filter(|&id| id != u32::MAX)
                .ok_or_else(|| {
                    self.error(
                        value.span(),
                        format!("{field}.{name}"),
                        format!("{} is not a valid {name}", value.get_ref()),
                    )
                })
        };
        if let Some(uid) = &raw.uid {
            return Ok(SelectorKind::Uid(id(uid, "uid")?));
        }
        let gid = raw.gid.as_ref().map(|gid| id(gid, "gid"));
        match gid {
            Some(gid) => Ok(SelectorKind::Gid(gid?)),
            None => unreachable!("exactly one selector kind is present"),
        }
    }
}

#[cfg(test)]
mod tests;
