//! The detector, driven: turns decoded events into observations for the `detector` crate,
//! samples CPU time, persists baselines, and hands the pipeline what the detector decided.
//!
//! It runs on the pipeline thread (scoring an event costs microseconds), so the event an
//! alert cites is already in the log with the sequence number the alert names.

pub mod actuator;
pub mod cpu;
pub mod webhook;

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use detector::{
    AgentSpec, Detector, Observation, Output, incident::Tier, items::Normaliser, profile::Saved,
};
use sensor_common::event::{AF_INET, AF_INET6, EventKind, FileSyscall};
use sha2::Digest as _;

use crate::{
    config::{Config, SelectorKind, TrustTier, detector::Detection},
    process::ProcessTable,
    sensor::decode::{SensorEvent, bytes_of},
};

/// How often windows are closed and CPU sampled.
const TICK: Duration = Duration::from_secs(1);
/// How often baselines are saved (besides at stage changes and at stop).
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// The engine.
pub struct Engine {
    detector: Detector,
    cpu: cpu::CpuSampler,
    path: PathBuf,
    watched: std::collections::HashSet<u32>,
    last_tick: Instant,
    last_save: Instant,
    dirty: bool,
}

/// Why baselines could not be read (the detector starts fresh, the file is kept aside).
#[derive(Debug)]
pub struct LoadProblem {
    /// The file.
    pub path: PathBuf,
    /// Where it was moved.
    pub moved_to: Option<PathBuf>,
    /// Why.
    pub error: String,
}

impl Engine {
    /// Loads the baselines and puts the configured agents in place. Returns what to log.
    pub fn new(config: &Config) -> (Self, Vec<Output>, Option<LoadProblem>) {
        let settings = &config.detector;
        let path = settings.baselines_path(&config.state_dir);
        let (saved, problem) = match load(&path) {
            Ok(saved) => (saved, None),
            Err(error) => {
                // Never overwrite what could not be read: an operator may want it back.
                let aside = path.with_extension(format!(
                    "bad-{}",
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                ));
                let moved_to = std::fs::rename(&path, &aside).ok().map(|()| aside);
                tracing::error!(path = %path.display(), %error, "cannot read the detector's baselines; learning again");
                (
                    None,
                    Some(LoadProblem {
                        path: path.clone(),
                        moved_to,
                        error,
                    }),
                )
            }
        };
        let extra = [
            config.log.key.parent().map(Path::to_path_buf),
            Some(config.state_dir.clone()),
            Some(config.log.dir.clone()),
        ];
        let normaliser = Normaliser::new(
            extra
                .into_iter()
                .flatten()
                .map(|p| format!("{}/", p.display())),
        );
        let mut detector = Detector::new(settings.detector.clone(), normaliser, saved);
        let specs = specs(config);
        let out = detector.configure(&specs, now_ms());
        let engine = Self {
            detector,
            cpu: cpu::CpuSampler::new(),
            path,
            watched: specs.iter().map(|s| s.id).collect(),
            last_tick: Instant::now(),
            last_save: Instant::now(),
            dirty: true,
        };
        (engine, out, problem)
    }

    /// Feeds one event (`seq`: its log sequence number; `actor_exe`: the executable the
    /// process ran before this event, so for an exec, the one it replaced).
    pub fn observe(
        &mut self,
        event: &SensorEvent,
        seq: Option<u64>,
        actor_exe: Option<&str>,
    ) -> Vec<Output> {
        let agent = event.header().agent.agent_id;
        if !self.watched.contains(&agent) {
            return Vec::new();
        }
        let now = now_ms();
        let lossy;
        let lossy2;
        let observation = match event {
            SensorEvent::Exec(ev) => {
                lossy = String::from_utf8_lossy(bytes_of(&ev.filename, ev.filename_len));
                Observation::Exec {
                    exe: &lossy,
                    parent_exe: actor_exe,
                }
            }
            SensorEvent::File(ev) => {
                lossy = String::from_utf8_lossy(bytes_of(&ev.args.path, ev.args.path_len));
                let syscall = FileSyscall::try_from(ev.args.syscall).ok();
                let write = match syscall.map(FileSyscall::kind) {
                    Some(EventKind::FileOpen) => {
                        let f = ev.args.flags as i32;
                        f & libc::O_ACCMODE != libc::O_RDONLY
                            || f & (libc::O_CREAT | libc::O_TRUNC) != 0
                    }
                    _ => true,
                };
                if syscall.map(FileSyscall::kind) == Some(EventKind::FileRename) {
                    // The new name is what was written.
                    lossy2 = String::from_utf8_lossy(bytes_of(&ev.args.path2, ev.args.path2_len));
                    let mut out = self.detector.observe(
                        agent,
                        now,
                        seq,
                        Observation::Open {
                            path: &lossy,
                            write: true,
                            ok: ev.ret >= 0,
                        },
                    );
                    out.extend(self.detector.observe(
                        agent,
                        now,
                        seq,
                        Observation::Open {
                            path: &lossy2,
                            write: true,
                            ok: ev.ret >= 0,
                        },
                    ));
                    return out;
                }
                Observation::Open {
                    path: &lossy,
                    write,
                    ok: ev.ret >= 0,
                }
            }
            SensorEvent::Net(ev) => match EventKind::try_from(ev.hdr.kind) {
                Ok(EventKind::NetConnect | EventKind::NetUdpSend) => {
                    let Some(addr) = ip(&ev.remote) else {
                        return Vec::new();
                    };
                    Observation::Connect {
                        exe: actor_exe,
                        addr,
                        port: ev.remote.port,
                        name: None,
                        udp: ev.hdr.kind == EventKind::NetUdpSend as u32,
                        ok: ev.ret == 0 || ev.ret == -(libc::EINPROGRESS as i64),
                    }
                }
                Ok(EventKind::NetListen | EventKind::NetAccept) => Observation::Listen {
                    port: ev.local.port,
                },
                _ => return Vec::new(),
            },
            SensorEvent::Fork(_) | SensorEvent::Exit(_) | SensorEvent::Cgroup(_) => {
                return Vec::new();
            }
        };
        self.detector.observe(agent, now, seq, observation)
    }

    /// Periodic work (call often; it acts once a second): CPU, windows, lifecycle, releases,
    /// saving. `released` and `relearn` list agents an operator released, or sent back to
    /// learning, since the last call.
    pub fn tick(&mut self, procs: &ProcessTable, released: &[u32], relearn: &[u32]) -> Vec<Output> {
        let mut out = Vec::new();
        for agent in released {
            out.extend(self.detector.release(*agent));
        }
        for agent in relearn {
            out.extend(self.detector.relearn(*agent, now_ms()));
            self.dirty = true;
        }
        if self.last_tick.elapsed() < TICK {
            return out;
        }
        self.last_tick = Instant::now();
        let usage: Vec<(u32, u64, bool)> = self
            .cpu
            .sample(procs)
            .into_iter()
            .map(|(agent, (cpu, live))| (agent, cpu, live))
            .collect();
        let more = self.detector.tick(now_ms(), &usage);
        if more.iter().any(|o| matches!(o, Output::Stage { .. })) {
            self.dirty = true;
        }
        out.extend(more);
        if self.dirty || self.last_save.elapsed() >= SAVE_EVERY {
            self.save();
        }
        out
    }

    /// Writes the baselines (atomically, mode 0600); a failure is logged and retried at the
    /// next save.
    pub fn save(&mut self) {
        match save(&self.path, &self.detector.saved()) {
            Ok(()) => {
                self.dirty = false;
                self.last_save = Instant::now();
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot save the detector's baselines");
                self.last_save = Instant::now();
            }
        }
    }

    /// The detector (for status).
    pub fn detector(&self) -> &Detector {
        &self.detector
    }
}

/// The detector's view of the configured agents.
pub fn specs(config: &Config) -> Vec<AgentSpec> {
    config
        .agents
        .iter()
        .filter(|a| a.detection != Detection::Off)
        .map(|a| AgentSpec {
            id: a.id,
            name: a.name.clone(),
            fingerprint: fingerprint(a),
            enforce: a.detection == Detection::Enforce,
            tier: match a.trust_tier {
                TrustTier::Low => Tier::Low,
                TrustTier::Medium => Tier::Medium,
                TrustTier::High => Tier::High,
            },
        })
        .collect()
}

/// Names a version of an agent: what its configuration says it is (selectors, scopes, tier)
/// and the contents of the executables it is bound to. Detection mode and egress policy are
/// left out: changing how it is watched or what it may reach does not change what it does.
fn fingerprint(agent: &crate::config::AgentSpec) -> String {
    let mut h = sha2::Sha256::new();
    h.update(agent.spiffe_id.as_bytes());
    h.update(b"\0");
    for scope in &agent.scopes {
        h.update(scope.as_bytes());
        h.update(b"\0");
    }
    h.update(agent.trust_tier.as_str().as_bytes());
    for selector in &agent.selectors {
        h.update(b"\0");
        h.update(selector.type_name().as_bytes());
        h.update(b"=");
        h.update(selector.value().as_bytes());
        if let SelectorKind::Executable { path, .. } = selector {
            // The file's contents: a new build of the agent is a new version.
            if let Ok(bytes) = std::fs::read(path) {
                h.update(b"@");
                h.update(sha2::Sha256::digest(&bytes));
            }
        }
    }
    hex::encode(h.finalize())
}

fn ip(addr: &sensor_common::event::SockAddr) -> Option<IpAddr> {
    match addr.family {
        AF_INET => {
            let b: [u8; 4] = addr.addr[..4].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        AF_INET6 => {
            let v6 = std::net::Ipv6Addr::from(addr.addr);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Wall-clock milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn load(path: &Path) -> Result<Option<Saved>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|err| err.to_string())?;
    saved.check().map_err(|err| err.to_string())?;
    Ok(Some(saved))
}

fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
