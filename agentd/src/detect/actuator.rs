//! Containment, carried out: quarantine (the kernel's egress flag), freeze, kill, and release.
//!
//! Shared by the pipeline (the detector's decisions) and the API (an operator's release). Every
//! step is reversible but kill, and only an operator's release undoes one.
//!
//! Freezing uses the cgroup freezer when every process of a cgroup belongs to the agent
//! (`cgroup.freeze` stops them all at once, new children included); otherwise, so that no
//! bystander is frozen, the agent's processes are stopped one by one with SIGSTOP. Kill works
//! the same way with `cgroup.kill` and SIGKILL.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::{
    egress::state::{EgressState, Quarantine},
    identity::{cgroups, procscan},
    sensor::EgressMaps,
};

/// An agent process, as the pipeline knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    /// Process id.
    pub pid: u32,
    /// Its start time (boot ns): names it without PID reuse.
    pub start_ns: u64,
}

/// What is held against one agent.
#[derive(Debug, Default, Clone)]
struct Held {
    incident: u64,
    quarantined: bool,
    frozen: Vec<PathBuf>,
    stopped: Vec<Member>,
}

/// What a release undid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// The incident it held for.
    pub incident: Option<u64>,
    /// cgroups thawed.
    pub thawed: usize,
    /// Processes continued.
    pub continued: usize,
}

/// The containment actuator.
pub struct Actuator {
    egress: Arc<Mutex<EgressState<EgressMaps>>>,
    cgroup_root: PathBuf,
    held: Mutex<HashMap<u32, Held>>,
    released: Mutex<Vec<u32>>,
    relearn: Mutex<Vec<u32>>,
}

impl Actuator {
    /// An actuator over the egress state and the cgroup v2 hierarchy at `cgroup_root`.
    pub fn new(egress: Arc<Mutex<EgressState<EgressMaps>>>, cgroup_root: PathBuf) -> Self {
        Self {
            egress,
            cgroup_root,
            held: Mutex::new(HashMap::new()),
            released: Mutex::new(Vec::new()),
            relearn: Mutex::new(Vec::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts `agent`'s egress (the kernel quarantine flag, which outlives agentd).
    pub fn quarantine(&self, agent: u32, incident: u64) -> Result<String, String> {
        let changed = self
            .egress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_quarantine(
                agent,
                Some(Quarantine::now(
                    format!("detector incident {incident}"),
                    "detector",
                )),
            )
            .map_err(|err| format!("cannot set the quarantine flag: {err}"))?;
        let mut held = self.held();
        let h = held.entry(agent).or_default();
        h.incident = incident;
        h.quarantined = true;
        Ok(if changed {
            "egress quarantined".to_owned()
        } else {
            "egress was already quarantined".to_owned()
        })
    }

    /// Freezes `agent`'s processes (`members`); `owner` says which agent a pid belongs to.
    pub fn freeze(
        &self,
        agent: u32,
        incident: u64,
        members: &[Member],
        owner: impl Fn(u32) -> Option<u32>,
    ) -> Result<String, String> {
        let done = self.apply(agent, members, &owner, "cgroup.freeze", Signal::SIGSTOP);
        let detail = format!(
            "{} cgroup(s) frozen, {} process(es) stopped",
            done.cgroups.len(),
            done.processes.len()
        );
        {
            let mut held = self.held();
            let h = held.entry(agent).or_default();
            h.incident = incident;
            h.frozen.extend(done.cgroups);
            h.stopped.extend(done.processes);
        }
        outcome(detail, &done.errors)
    }

    /// Kills `agent`'s processes.
    pub fn kill(
        &self,
        agent: u32,
        incident: u64,
        members: &[Member],
        owner: impl Fn(u32) -> Option<u32>,
    ) -> Result<String, String> {
        let done = self.apply(agent, members, &owner, "cgroup.kill", Signal::SIGKILL);
        self.held().entry(agent).or_default().incident = incident;
        let detail = format!(
            "{} cgroup(s) killed, {} process(es) killed",
            done.cgroups.len(),
            done.processes.len()
        );
        outcome(detail, &done.errors)
    }

    /// Writes `1` to `knob` of the cgroups holding only `agent`'s processes, and sends `signal`
    /// to its processes elsewhere.
    fn apply(
        &self,
        agent: u32,
        members: &[Member],
        owner: &impl Fn(u32) -> Option<u32>,
        knob: &str,
        signal: Signal,
    ) -> Applied {
        let (whole, loose) = self.split(agent, members, owner);
        let mut done = Applied::default();
        for dir in whole {
            match std::fs::write(dir.join(knob), "1") {
                Ok(()) => done.cgroups.push(dir),
                Err(err) => done.errors.push(format!("{}: {err}", dir.display())),
            }
        }
        for m in loose {
            match nix::sys::signal::kill(Pid::from_raw(m.pid as i32), signal) {
                Ok(()) => done.processes.push(m),
                Err(err) => done.errors.push(format!("pid {}: {err}", m.pid)),
            }
        }
        done
    }

    /// Undoes freezing (an operator's release; the quarantine flag is lifted by the caller,
    /// who logs it) and tells the pipeline the agent's incident is over.
    pub fn release(&self, agent: u32) -> Released {
        let held = self.held().remove(&agent);
        self.released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(agent);
        let Some(held) = held else {
            return Released::default();
        };
        let mut out = Released {
            incident: Some(held.incident),
            ..Released::default()
        };
        for dir in held.frozen {
            match std::fs::write(dir.join("cgroup.freeze"), "0") {
                Ok(()) => out.thawed += 1,
                Err(err) => tracing::warn!(cgroup = %dir.display(), %err, "cannot thaw"),
            }
        }
        for m in held.stopped {
            // A process that exited (or whose pid was reused) is not signalled.
            if process_start_matches(m)
                && nix::sys::signal::kill(Pid::from_raw(m.pid as i32), Signal::SIGCONT).is_ok()
            {
                out.continued += 1;
            }
        }
        out
    }

    /// Asks the detector (on the pipeline thread) to send `agent`'s baseline back to learning.
    pub fn request_relearn(&self, agent: u32) {
        self.relearn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(agent);
    }

    /// Agents whose baselines an operator sent back to learning since the last call.
    pub fn take_relearn(&self) -> Vec<u32> {
        std::mem::take(&mut *self.relearn.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Agents released since the last call (for the detector to close their incidents).
    pub fn take_released(&self) -> Vec<u32> {
        std::mem::take(&mut *self.released.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The cgroups holding only `agent`'s processes, and the agent's processes elsewhere.
    fn split(
        &self,
        agent: u32,
        members: &[Member],
        owner: &impl Fn(u32) -> Option<u32>,
    ) -> (Vec<PathBuf>, Vec<Member>) {
        let mut by_cgroup: HashMap<String, Vec<Member>> = HashMap::new();
        for m in members {
            if let Ok(path) = cgroups::of_process(m.pid) {
                by_cgroup.entry(path).or_default().push(*m);
            }
        }
        let mut whole = BTreeSet::new();
        let mut loose = Vec::new();
        for (path, ms) in by_cgroup {
            let dir = self.cgroup_root.join(&path);
            if !path.is_empty() && only_agent(&dir, agent, owner) {
                whole.insert(dir);
            } else {
                loose.extend(ms);
            }
        }
        (whole.into_iter().collect(), loose)
    }
}

/// What [`Actuator::apply`] reached, and what it could not.
#[derive(Default)]
struct Applied {
    cgroups: Vec<PathBuf>,
    processes: Vec<Member>,
    errors: Vec<String>,
}

/// `Ok(detail)`, or the detail and what failed.
fn outcome(detail: String, errors: &[String]) -> Result<String, String> {
    if errors.is_empty() {
        Ok(detail)
    } else {
        Err(format!("{detail}; failed: {}", errors.join("; ")))
    }
}

/// Whether every process in the cgroup `dir` (and its descendants) belongs to `agent`.
fn only_agent(dir: &Path, agent: u32, owner: &impl Fn(u32) -> Option<u32>) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return false;
    };
    let all_ours = text
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .all(|pid| owner(pid) == Some(agent));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    all_ours
        && entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .all(|e| only_agent(&e.path(), agent, owner))
}

/// Whether `m.pid` still names the process that started at `m.start_ns` (`/proc` gives the
/// start time in clock ticks, so they agree to a tick).
pub fn process_start_matches(m: Member) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", m.pid)) else {
        return false;
    };
    let Some((_, start_ticks, _)) = procscan::parse_stat(&stat) else {
        return false;
    };
    let tick_ns = 1_000_000_000 / procscan::clock_ticks();
    start_ticks.saturating_mul(tick_ns).abs_diff(m.start_ns) <= 2 * tick_ns
}
