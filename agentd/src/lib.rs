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
//! - [`process`], [`clock`], [`loss`], [`watch`]: the pipeline's helpers.
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod identity;
pub mod json;
pub mod loss;
pub mod output;
pub mod pipeline;
pub mod preflight;
pub mod process;
pub mod record;
pub mod sensor;
pub mod watch;

use std::sync::atomic::AtomicBool;

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
            RunError::Pipeline(_) => None,
        }
    }
}

/// Runs agentd with `config` until `shutdown` is set.
pub fn run(config: Config, shutdown: &AtomicBool) -> Result<Stats, RunError> {
    let host = preflight::check()?;
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
    let pipeline = Pipeline::start(&config, identity, maps, output, sensor.attached())?;
    let stats = pipeline.run(shutdown)?;
    // The programs detach when `sensor` drops, after the last record is written.
    drop(sensor);
    Ok(stats)
}
