//! agentd: the Custos daemon.
//!
//! It loads the eBPF sensor, binds every process to its agent identity in the kernel, and
//! writes what agent processes do as OCSF-shaped JSON records.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, validated with file/line/field errors.
//! - [`preflight`]: start-up checks (root, BTF, cgroup v2) and the mounts agentd needs.
//! - [`sensor`]: loading and attaching the eBPF programs; decoding their records.
//! - [`identity`]: selectors → kernel maps, cgroup tracking, executable checks, `/proc` scan.
//! - [`pipeline`]: the thread that drains the ring buffer, attributes and writes records.
//! - [`record`]: the records' shape, written canonically by [`json`]; [`output`]: where they go.
//! - [`log`]: the signed Merkle log; [`ctl`]: the `agentctl` commands.
//! - [`egress`]: per-agent egress allowlists, the DNS resolver, pins.
//! - [`api`]: the gRPC API (streams, proofs, agents, containment) and its client.
//! - [`daemon`]: start-up order, the run loop, reloads; [`control`]: records made off the
//!   pipeline thread.
//! - [`process`], [`clock`], [`loss`], [`watch`]: the pipeline's helpers.
#![deny(missing_docs)]

pub mod api;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod detect;
pub mod egress;
pub mod identity;
pub mod json;
pub mod log;
pub mod loss;
pub mod notify;
pub mod output;
pub mod pipeline;
pub mod preflight;
pub mod process;
pub mod record;
pub mod sensor;
pub mod watch;

pub use daemon::run;
use log::{
    keys::{self, KeyError},
    store::{Log, LogError, LogOptions},
};

use crate::{
    config::{Config, ConfigError},
    egress::{resolver::BindError, state::ApplyError},
    pipeline::PipelineError,
    preflight::PreflightError,
    sensor::SensorError,
};

/// Why agentd could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The host cannot run the sensor.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The sensor could not be loaded.
    #[error(transparent)]
    Sensor(#[from] SensorError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The signing key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A policy is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policies could not be put in force.
    #[error("cannot put the egress policies in force")]
    Apply(#[from] ApplyError),
    /// A resolver socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The API could not listen.
    #[error(transparent)]
    Api(#[from] crate::api::server::ServeError),
    /// Another agentd holds the state directory.
    #[error("another agentd is running (it holds {path})")]
    Running {
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// A state file or task could not be set up.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            RunError::Preflight(err) => Some(err.hint()),
            RunError::Sensor(err) => err.hint(),
            RunError::Pipeline(PipelineError::Sink(_)) => Some(
                "check that the output directory exists, is writable by root and has free space",
            ),
            RunError::Pipeline(PipelineError::Log(err)) | RunError::Log(err) => err.hint(),
            RunError::Pipeline(_) => None,
            RunError::Key(err) => Some(err.hint()),
            RunError::Config(_) => Some("see docs/configuration.md and docs/egress.md"),
            RunError::Apply(_) => Some(
                "the allowlist map holds 65536 entries for all agents; reduce CIDR rules or split policies",
            ),
            RunError::Bind(_) => Some(
                "another program uses the port: set [dns] port_base to a free range (each agent takes the next port)",
            ),
            RunError::Running { .. } => Some(
                "stop the other agentd, or give this one its own [sensor] state_dir and pin_dir",
            ),
            RunError::Api(_) => Some(
                "see [api] in docs/configuration.md: the socket's directory must be writable by root; TLS needs a readable cert, a key of mode 0600 and a client CA",
            ),
            RunError::Io { .. } => None,
        }
    }
}

/// Options of one run that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replace the log's signing key, recording the rotation in the log.
    pub rotate_key: bool,
    /// The configuration file, re-read on SIGHUP (`None`: the embedded default).
    pub config_path: Option<std::path::PathBuf>,
    /// `--host-wide` was given (it overrides the file's `sensor.mode` on reload too).
    pub host_wide: bool,
}

/// The origin of a log created now: `<hostname>/custos/<random id>` (unique even when a host's
/// log is recreated).
fn new_origin() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '+')
        .collect();
    let mut id = [0u8; 6];
    // SAFETY: the pointer and length describe `id`.
    let _ = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    format!("{host}/custos/{}", hex::encode(id))
}

/// A key rotation to record: the old signer and the new.
pub(crate) type Rotation = (log::note::NoteSigner, log::note::NoteSigner);

/// Opens the signed log (creating it and its key on first start).
pub(crate) fn open_log(
    config: &Config,
    rotate: bool,
) -> Result<(Log, log::store::Recovery, Option<Rotation>), RunError> {
    let existing = std::fs::read_to_string(config.log.dir.join(log::files::ORIGIN))
        .ok()
        .map(|s| s.trim().to_owned());
    let origin = match (&config.log.origin, existing) {
        (Some(configured), _) => configured.clone(),
        (None, Some(existing)) => existing,
        (None, None) => new_origin(),
    };
    let (signer, created) = keys::load_or_create(&config.log.key, &origin)?;
    if created {
        tracing::info!(key = %config.log.key.display(), public = %signer.verifier(), "created the log's signing key");
    }
    let rotation = if rotate {
        let (old, new) = keys::rotate(&config.log.key, &origin)?;
        Some((old, new))
    } else {
        None
    };
    let signer = rotation.as_ref().map_or(signer, |(old, _)| old.clone());
    let (log, recovery) = Log::open(
        LogOptions {
            dir: config.log.dir.clone(),
            origin,
            segment_bytes: config.log.segment_bytes,
            checkpoint_interval: config.log.checkpoint_interval,
            retention_age: config.log.retention_age,
            retention_bytes: config.log.retention_bytes,
        },
        signer,
    )?;
    Ok((log, recovery, rotation))
}
