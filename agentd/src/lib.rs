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
//! - [`process`], [`clock`], [`loss`], [`watch`]: the pipeline's helpers.
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod ctl;
pub mod identity;
pub mod json;
pub mod log;
pub mod loss;
pub mod output;
pub mod pipeline;
pub mod preflight;
pub mod process;
pub mod record;
pub mod sensor;
pub mod watch;

use std::sync::atomic::AtomicBool;

use log::{
    keys::{self, KeyError},
    store::{Log, LogError, LogOptions},
};

use sensor_common::config::{MODE_AGENTS, MODE_HOST, SensorConfig};

use crate::{
    config::{Config, SensorMode},
    identity::{Identity, registry::Registry},
    pipeline::{Pipeline, PipelineError, Stats},
    preflight::PreflightError,
    sensor::{LoadOptions, Sensor, SensorError},
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
        }
    }
}

/// Options of one run that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Replace the log's signing key, recording the rotation in the log.
    pub rotate_key: bool,
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
type Rotation = (log::note::NoteSigner, log::note::NoteSigner);

/// Opens the signed log (creating it and its key on first start).
fn open_log(
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

/// Runs agentd with `config` until `shutdown` is set.
pub fn run(config: Config, options: RunOptions, shutdown: &AtomicBool) -> Result<Stats, RunError> {
    let host = preflight::check()?;
    // The log first: a configuration that cannot log is refused before any program loads.
    let (log, recovery, rotation) = open_log(&config, options.rotate_key)?;
    let mut sensor = Sensor::load(&LoadOptions {
        ring_bytes: config.ring_buffer_bytes,
        config: SensorConfig {
            mode: match config.mode {
                SensorMode::Agents => MODE_AGENTS,
                SensorMode::Host => MODE_HOST,
            },
            self_tgid: std::process::id(),
        },
        cgroup_root: &host.cgroup_root,
    })?;
    let maps = sensor.take_maps()?;
    let output = sensor.take_output()?;
    // Loading parsed the kernel's BTF twice (several MB of small allocations, all freed now):
    // hand that memory back to the system so the daemon's resident size reflects its real use.
    // SAFETY: malloc_trim only releases free heap memory; it has no other effect.
    unsafe { libc::malloc_trim(0) };
    let identity = Identity::new(Registry::new(&config), host.cgroup_root.clone());
    let pipeline = Pipeline::start(pipeline::Parts {
        config: &config,
        identity,
        maps,
        output,
        attached: sensor.attached(),
        log: (log, recovery),
        rotation,
    })?;
    let stats = pipeline.run(shutdown)?;
    // The programs detach when `sensor` drops, after the last record is written.
    drop(sensor);
    Ok(stats)
}
