//! The configuration file as written: serde structures that keep the position of every value
//! that validation may need to point at.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub sensor: RawSensor,
    pub output: RawOutput,
    pub identity: RawIdentity,
    pub log: RawLog,
    pub dns: RawDns,
    pub policy: RawPolicy,
    pub api: RawApi,
    pub detector: super::detector::RawDetector,
    #[serde(rename = "agent")]
    pub agents: Vec<Spanned<RawAgent>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSensor {
    pub mode: Option<Spanned<String>>,
    pub ring_buffer_bytes: Option<Spanned<u64>>,
    pub pin_dir: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub pending_egress: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDns {
    pub upstream: Option<Vec<Spanned<String>>>,
    pub port_base: Option<Spanned<u64>>,
    pub grace_seconds: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApi {
    pub socket: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
    pub operator_group: Option<Spanned<String>>,
    pub subscriber_window: Option<Spanned<u64>>,
    pub tcp: Option<Spanned<RawTcp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcp {
    pub listen: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Spanned<String>,
    #[serde(default, rename = "client")]
    pub clients: Vec<Spanned<RawClient>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub identity: Spanned<String>,
    pub role: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPolicy {
    pub dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOutput {
    pub events: Option<Spanned<String>>,
    pub stdout: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    pub dir: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub origin: Option<Spanned<String>>,
    pub segment_mib: Option<Spanned<u64>>,
    pub checkpoint_interval_ms: Option<Spanned<u64>>,
    pub heartbeat_seconds: Option<Spanned<u64>>,
    pub retention_days: Option<Spanned<u64>>,
    pub retention_mib: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIdentity {
    pub trust_domain: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub name: Spanned<String>,
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    #[serde(default)]
    pub trust_tier: Option<Spanned<String>>,
    #[serde(default)]
    pub selectors: Vec<Spanned<RawSelector>>,
    #[serde(default)]
    pub egress: Option<Spanned<super::egress::RawEgress>>,
    #[serde(default)]
    pub detection: Option<Spanned<String>>,
}

/// One selector: exactly one of `cgroup`, `executable`, `uid`, `gid` (and `sha256` only with
/// `executable`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    #[serde(default)]
    pub cgroup: Option<Spanned<String>>,
    #[serde(default)]
    pub executable: Option<Spanned<String>>,
    #[serde(default)]
    pub sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub uid: Option<Spanned<i64>>,
    #[serde(default)]
    pub gid: Option<Spanned<i64>>,
}
