//! Custos detector: learns what each agent identity normally does and decides when what it does
//! now is worth an alert or containment.
//!
//! Two layers, as research/detector.md recommends:
//! - exact-set novelty over named items ([`items`]): executables, exec edges, directories,
//!   sensitive resources, egress destinations, connecting executables, listening ports;
//! - a window model ([`model`]): counts per window ([`features`]) scored by a Gaussian mixture
//!   fitted with linfa, its threshold set on held-out learning windows.
//!
//! Findings gather into incidents ([`incident`]) whose severity comes from corroboration, and
//! High incidents of enforcing agents climb the containment ladder. Each agent version has a
//! profile ([`profile`]) that moves from learning to stable to enforcing.
//!
//! Pure logic: no I/O, no clock. agentd feeds it events with their log sequence numbers and the
//! time, carries out the actions it returns, and persists [`Detector::saved`].

pub mod features;
pub mod incident;
pub mod items;
pub mod model;
pub mod profile;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use features::Window;
use incident::{Finding, Incident, Ladder, Severity, Signal, Step, Tier};
use items::{Category, Item, Normaliser};
use profile::{Lifecycle, Profile, Saved, Stage, Transition};

/// Paths an agent wrote that are remembered, to recognise it running what it wrote.
const WRITTEN_KEPT: usize = 1024;

/// Detector settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Window length (ms).
    pub window_ms: u64,
    /// Lifecycle.
    pub lifecycle: Lifecycle,
    /// An incident without findings for this long closes, unless it contained the agent (then
    /// only an operator's release closes it) (ms).
    pub incident_gap_ms: u64,
    /// Unusual windows in a row that make a High finding.
    pub sustained: u32,
    /// Containment steps by trust tier.
    pub ladder: Ladder,
    /// Containment actions allowed per hour on the host; beyond, actions are logged as
    /// suppressed.
    pub max_actions_per_hour: usize,
    /// Log what would be done, do nothing.
    pub dry_run: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            lifecycle: Lifecycle::default(),
            incident_gap_ms: 600_000,
            sustained: 3,
            ladder: Ladder::default(),
            max_actions_per_hour: 20,
            dry_run: false,
        }
    }
}

/// An agent as configured.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Its id in agentd's registry.
    pub id: u32,
    /// Its name (profiles are kept by name: ids may change across restarts).
    pub name: String,
    /// Names this version: configuration and executable hashes.
    pub fingerprint: String,
    /// Configured to enforce.
    pub enforce: bool,
    /// Its trust tier.
    pub tier: Tier,
}

/// What happened, as seen by agentd's hooks.
#[derive(Debug, Clone, Copy)]
pub enum Observation<'a> {
    /// An exec.
    Exec {
        /// The executable.
        exe: &'a str,
        /// The executable of the process before it ran this one (the parent).
        parent_exe: Option<&'a str>,
    },
    /// A file opened (or created).
    Open {
        /// Its path.
        path: &'a str,
        /// Opened for writing.
        write: bool,
        /// The call succeeded.
        ok: bool,
    },
    /// An outbound connection or datagram.
    Connect {
        /// The executable that made it.
        exe: Option<&'a str>,
        /// The destination address.
        addr: IpAddr,
        /// The destination port.
        port: u16,
        /// The name it was resolved from, when known.
        name: Option<&'a str>,
        /// A UDP datagram rather than a connection.
        udp: bool,
        /// The call succeeded.
        ok: bool,
    },
    /// A listen or accept.
    Listen {
        /// The local port.
        port: u16,
    },
}

/// An incident as alerted.
#[derive(Debug, Clone)]
pub struct Alert {
    /// The agent's id.
    pub agent: u32,
    /// The agent's name.
    pub name: String,
    /// The incident.
    pub incident: u64,
    /// Its severity now.
    pub severity: Severity,
    /// The severity alerted before (`None`: this alert opens it).
    pub previous: Option<Severity>,
    /// The profile's stage.
    pub stage: Stage,
    /// Its findings.
    pub findings: Vec<Finding>,
    /// Evidence sequence numbers.
    pub evidence: Vec<u64>,
}

/// How a containment decision is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Do it.
    Act,
    /// Dry run: log what would be done.
    DryRun,
    /// The profile is stable but not enforcing: log what would be done.
    Monitor,
    /// Over the hourly limit: not done.
    RateLimited,
}

impl Mode {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Act => "act",
            Mode::DryRun => "dry_run",
            Mode::Monitor => "monitor",
            Mode::RateLimited => "rate_limited",
        }
    }
}

/// A containment decision.
#[derive(Debug, Clone)]
pub struct Action {
    /// The agent's id.
    pub agent: u32,
    /// The agent's name.
    pub name: String,
    /// The incident.
    pub incident: u64,
    /// The step.
    pub step: Step,
    /// How it is carried out.
    pub mode: Mode,
    /// Evidence sequence numbers.
    pub evidence: Vec<u64>,
}

/// What the detector tells agentd.
#[derive(Debug, Clone)]
pub enum Output {
    /// An incident opened or got worse: alert.
    Alert(Alert),
    /// A finding added to an incident without changing its severity.
    Finding {
        /// The agent's id.
        agent: u32,
        /// The incident.
        incident: u64,
        /// The finding.
        finding: Finding,
    },
    /// A containment decision.
    Action(Action),
    /// A profile changed stage (or was created).
    Stage {
        /// The agent's id.
        agent: u32,
        /// The agent's name.
        name: String,
        /// The change.
        transition: Transition,
        /// The profile after the change.
        summary: Summary,
    },
    /// An incident closed.
    Closed {
        /// The agent's id.
        agent: u32,
        /// The incident.
        incident: u64,
        /// Why.
        reason: &'static str,
    },
}

/// A profile, summarised for records and status.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The fingerprint.
    pub fingerprint: String,
    /// The stage.
    pub stage: Stage,
    /// Items learned per category.
    pub items: Vec<(Category, usize)>,
    /// Learning windows.
    pub windows: usize,
    /// Model: components, features kept, threshold.
    pub model: Option<(usize, usize, f64)>,
    /// Why there is no model.
    pub model_note: Option<String>,
}

impl Summary {
    fn of(profile: &Profile) -> Self {
        Self {
            fingerprint: profile.fingerprint.clone(),
            stage: profile.stage,
            items: profile.item_counts(),
            windows: profile.history.len(),
            model: profile
                .model
                .as_ref()
                .map(|m| (m.components(), m.kept_features().len(), m.threshold())),
            model_note: profile.model_note.clone(),
        }
    }
}

/// One agent's live state.
struct Agent {
    spec: AgentSpec,
    profile: Profile,
    window: Window,
    unusual_in_row: u32,
    incident: Option<Incident>,
    written: VecDeque<String>,
    written_set: HashSet<String>,
}

/// The detector.
pub struct Detector {
    settings: Settings,
    normaliser: Normaliser,
    agents: HashMap<u32, Agent>,
    /// Profiles loaded but not (yet) claimed by a configured agent, by name.
    parked: HashMap<String, Profile>,
    next_incident: u64,
    actions: VecDeque<u64>,
}

impl Detector {
    /// A detector with the profiles saved by an earlier run.
    pub fn new(settings: Settings, normaliser: Normaliser, saved: Option<Saved>) -> Self {
        let (parked, next_incident) = match saved {
            Some(saved) => (
                saved
                    .profiles
                    .into_iter()
                    .map(|p| (p.agent.clone(), p))
                    .collect(),
                saved.next_incident.max(1),
            ),
            None => (HashMap::new(), 1),
        };
        Self {
            settings,
            normaliser,
            agents: HashMap::new(),
            parked,
            next_incident,
            actions: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Puts the configured agents in place: a known agent keeps its profile (a new fingerprint
    /// starts a successor profile), a new one starts learning. Agents no longer configured keep
    /// their profiles (parked) in case they come back.
    pub fn configure(&mut self, specs: &[AgentSpec], now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let mut old: HashMap<u32, Agent> = std::mem::take(&mut self.agents);
        let mut by_name: HashMap<String, Agent> =
            old.drain().map(|(_, a)| (a.spec.name.clone(), a)).collect();
        for spec in specs {
            let mut live = by_name.remove(&spec.name);
            let profile = match live.as_ref().map(|a| a.profile.clone()) {
                Some(profile) => profile,
                None => match self.parked.remove(&spec.name) {
                    Some(profile) => profile,
                    None => {
                        let profile = Profile::new(&spec.name, &spec.fingerprint, now_ms);
                        out.push(self.stage_output(
                            spec,
                            &profile,
                            Transition {
                                from: None,
                                to: Stage::Learning,
                                reason: "new agent".into(),
                            },
                        ));
                        profile
                    }
                },
            };
            let profile = if profile.fingerprint != spec.fingerprint {
                let next = profile.successor(&spec.fingerprint, now_ms);
                out.push(self.stage_output(
                    spec,
                    &next,
                    Transition {
                        from: Some(profile.stage),
                        to: Stage::Learning,
                        reason: format!(
                            "new version: fingerprint {} replaces {}",
                            short(&spec.fingerprint),
                            short(&profile.fingerprint)
                        ),
                    },
                ));
                next
            } else {
                profile
            };
            let agent = match live.take() {
                Some(mut agent) => {
                    agent.spec = spec.clone();
                    agent.profile = profile;
                    agent
                }
                None => Agent {
                    spec: spec.clone(),
                    profile,
                    window: Window::new(align(now_ms, self.settings.window_ms)),
                    unusual_in_row: 0,
                    incident: None,
                    written: VecDeque::new(),
                    written_set: HashSet::new(),
                },
            };
            self.agents.insert(spec.id, agent);
        }
        for (name, agent) in by_name {
            self.parked.insert(name, agent.profile);
        }
        out
    }

    /// Feeds one event of agent `agent` (`seq`: its log sequence number).
    pub fn observe(
        &mut self,
        agent: u32,
        now_ms: u64,
        seq: Option<u64>,
        observation: Observation<'_>,
    ) -> Vec<Output> {
        let Some(state) = self.agents.get_mut(&agent) else {
            return Vec::new();
        };
        let items = match observation {
            Observation::Exec { exe, parent_exe } => {
                let written = state.written_set.contains(exe);
                let items = items::exec(parent_exe, exe, written);
                state.window.exec(&items[0].value);
                items
            }
            Observation::Open { path, write, ok } => {
                let items = self.normaliser.file(path, write);
                let dir = items[0].value.split_once(':').map_or("", |(_, d)| d);
                state.window.file(dir, write, ok);
                if !ok {
                    // A failed open touched nothing; only its count matters.
                    return Vec::new();
                }
                if write && path.starts_with('/') && !state.written_set.contains(path) {
                    if state.written.len() >= WRITTEN_KEPT
                        && let Some(old) = state.written.pop_front()
                    {
                        state.written_set.remove(&old);
                    }
                    state.written.push_back(path.to_owned());
                    state.written_set.insert(path.to_owned());
                }
                items
            }
            Observation::Connect {
                exe,
                addr,
                port,
                name,
                udp,
                ok,
            } => {
                let items = items::egress(exe, addr, port, name);
                state.window.connect(&items[0].value, udp, ok);
                items
            }
            Observation::Listen { port } => {
                state.window.listen();
                vec![items::listen(port)]
            }
        };
        let mut findings = Vec::new();
        let stage = state.profile.stage;
        let max_items = self.settings.lifecycle.max_items;
        for item in &items {
            match stage {
                Stage::Learning => {
                    state.profile.learn(item, now_ms, max_items);
                    if item.category == Category::Sensitive {
                        findings.push(finding(
                            Signal::SensitiveWhileLearning,
                            item,
                            Severity::Medium,
                            seq,
                            now_ms,
                        ));
                    }
                }
                Stage::Stable | Stage::Enforcing => {
                    if state.profile.knows(item) {
                        state.profile.learn(item, now_ms, max_items);
                    } else {
                        let severity = if item.category == Category::Sensitive {
                            Severity::High
                        } else {
                            Severity::Medium
                        };
                        findings.push(finding(
                            Signal::New(item.category),
                            item,
                            severity,
                            seq,
                            now_ms,
                        ));
                    }
                }
            }
        }
        let mut out = Vec::new();
        if !findings.is_empty() {
            self.add_findings(agent, findings, now_ms, &mut out);
        }
        out
    }

    /// Periodic work: closes windows and scores them, moves profiles along their lifecycle,
    /// closes quiet incidents. `usage` gives, per agent, the CPU time its processes used since
    /// the last tick (ms) and whether it has live processes.
    pub fn tick(&mut self, now_ms: u64, usage: &[(u32, u64, bool)]) -> Vec<Output> {
        let mut out = Vec::new();
        let usage: HashMap<u32, (u64, bool)> = usage
            .iter()
            .map(|&(a, cpu, live)| (a, (cpu, live)))
            .collect();
        let ids: Vec<u32> = self.agents.keys().copied().collect();
        for id in ids {
            let (cpu, live) = usage.get(&id).copied().unwrap_or((0, false));
            let mut findings = Vec::new();
            {
                let window_ms = self.settings.window_ms;
                let lifecycle = &self.settings.lifecycle;
                let agent = self.agents.get_mut(&id).expect("id from the map");
                agent.window.add_cpu(cpu);
                if now_ms >= agent.window.start_ms + window_ms {
                    let closed =
                        std::mem::replace(&mut agent.window, Window::new(align(now_ms, window_ms)));
                    // An agent with no process and nothing done is absent, not idle: its
                    // absence says nothing about its behaviour.
                    if live || !closed.is_idle() {
                        let vector = closed.vector();
                        match agent.profile.stage {
                            Stage::Learning => {
                                agent.profile.push_window(vector, lifecycle.max_history)
                            }
                            Stage::Stable | Stage::Enforcing => {
                                if let Some(model) = &agent.profile.model {
                                    let score = model.score(&vector);
                                    if score > model.threshold() {
                                        agent.unusual_in_row += 1;
                                        findings.push(window_finding(
                                            model,
                                            &vector,
                                            score,
                                            agent.unusual_in_row,
                                            self.settings.sustained,
                                            now_ms,
                                        ));
                                    } else {
                                        agent.unusual_in_row = 0;
                                    }
                                }
                            }
                        }
                    }
                }
                if let Some(transition) =
                    agent.profile.advance(now_ms, agent.spec.enforce, lifecycle)
                {
                    let spec = agent.spec.clone();
                    let summary = Summary::of(&agent.profile);
                    out.push(Output::Stage {
                        agent: spec.id,
                        name: spec.name,
                        transition,
                        summary,
                    });
                }
            }
            if !findings.is_empty() {
                self.add_findings(id, findings, now_ms, &mut out);
            }
            let gap = self.settings.incident_gap_ms;
            let agent = self.agents.get_mut(&id).expect("id from the map");
            if let Some(incident) = &agent.incident
                && incident.contained.is_none()
                && now_ms.saturating_sub(incident.last_ms) >= gap
            {
                out.push(Output::Closed {
                    agent: id,
                    incident: incident.id,
                    reason: "no finding for the incident gap",
                });
                agent.incident = None;
            }
        }
        out
    }

    /// An operator released `agent`: its incident closes (and a new one may open).
    pub fn release(&mut self, agent: u32) -> Option<Output> {
        let state = self.agents.get_mut(&agent)?;
        let incident = state.incident.take()?;
        state.unusual_in_row = 0;
        Some(Output::Closed {
            agent,
            incident: incident.id,
            reason: "released by an operator",
        })
    }

    /// An operator asked `agent` to learn again (its baseline was wrong).
    pub fn relearn(&mut self, agent: u32, now_ms: u64) -> Option<Output> {
        let state = self.agents.get_mut(&agent)?;
        let transition = state.profile.relearn(now_ms);
        Some(Output::Stage {
            agent,
            name: state.spec.name.clone(),
            transition,
            summary: Summary::of(&state.profile),
        })
    }

    /// The profile summary and open incident of each configured agent.
    pub fn status(&self) -> Vec<(u32, Summary, Option<&Incident>)> {
        let mut list: Vec<_> = self
            .agents
            .iter()
            .map(|(id, a)| (*id, Summary::of(&a.profile), a.incident.as_ref()))
            .collect();
        list.sort_by_key(|(id, _, _)| *id);
        list
    }

    /// Everything to persist.
    pub fn saved(&self) -> Saved {
        let mut profiles: Vec<Profile> = self
            .agents
            .values()
            .map(|a| a.profile.clone())
            .chain(self.parked.values().cloned())
            .collect();
        profiles.sort_by(|a, b| a.agent.cmp(&b.agent));
        Saved {
            format: profile::FORMAT,
            next_incident: self.next_incident,
            profiles,
        }
    }

    fn stage_output(&self, spec: &AgentSpec, profile: &Profile, transition: Transition) -> Output {
        Output::Stage {
            agent: spec.id,
            name: spec.name.clone(),
            transition,
            summary: Summary::of(profile),
        }
    }

    /// Adds what one event (or window) showed to the agent's incident (opening one), alerts
    /// once when the incident is new or worse, and decides containment.
    fn add_findings(
        &mut self,
        id: u32,
        findings: Vec<Finding>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let next_incident = &mut self.next_incident;
        let agent = self.agents.get_mut(&id).expect("caller checked");
        let incident = agent.incident.get_or_insert_with(|| {
            let incident = Incident::new(*next_incident, now_ms);
            *next_incident += 1;
            incident
        });
        let added: Vec<Finding> = findings
            .into_iter()
            .filter(|f| incident.add(f.clone()))
            .collect();
        if added.is_empty() {
            return;
        }
        let severity = incident.severity();
        let alertable = severity >= Severity::Medium;
        if alertable && incident.alerted.is_none_or(|a| a < severity) {
            out.push(Output::Alert(Alert {
                agent: id,
                name: agent.spec.name.clone(),
                incident: incident.id,
                severity,
                previous: incident.alerted,
                stage: agent.profile.stage,
                findings: incident.findings.clone(),
                evidence: incident.evidence.clone(),
            }));
            incident.alerted = Some(severity);
        } else {
            out.extend(added.into_iter().map(|finding| Output::Finding {
                agent: id,
                incident: incident.id,
                finding,
            }));
        }
        if severity < Severity::High || agent.profile.stage == Stage::Learning {
            return;
        }
        // Containment: the first High finding takes the first step; an agent that keeps
        // producing High findings after a step climbs the ladder up to its tier's limit. What
        // is only logged (monitor, dry run) climbs the same way, once per step.
        let acting = agent.profile.stage == Stage::Enforcing && !self.settings.dry_run;
        let limit = self.settings.ladder.max(agent.spec.tier);
        let current = if acting {
            incident.contained
        } else {
            incident.would
        };
        let step = match current {
            None => Step::Quarantine.min(limit),
            Some(step) if incident.high_since_step > 0 => step.next().min(limit),
            Some(_) => return,
        };
        if step == Step::Alert || current.is_some_and(|s| s >= step) {
            return;
        }
        let mode = if !acting {
            incident.would = Some(step);
            incident.high_since_step = 0;
            if self.settings.dry_run && agent.profile.stage == Stage::Enforcing {
                Mode::DryRun
            } else {
                Mode::Monitor
            }
        } else {
            while self
                .actions
                .front()
                .is_some_and(|&t| now_ms.saturating_sub(t) >= 3_600_000)
            {
                self.actions.pop_front();
            }
            if self.actions.len() >= self.settings.max_actions_per_hour {
                Mode::RateLimited
            } else {
                self.actions.push_back(now_ms);
                incident.contained = Some(step);
                incident.high_since_step = 0;
                Mode::Act
            }
        };
        out.push(Output::Action(Action {
            agent: id,
            name: agent.spec.name.clone(),
            incident: incident.id,
            step,
            mode,
            evidence: incident.evidence.clone(),
        }));
    }
}

fn finding(
    signal: Signal,
    item: &Item,
    severity: Severity,
    seq: Option<u64>,
    now_ms: u64,
) -> Finding {
    Finding {
        signal,
        item: item.value.clone(),
        severity,
        evidence: seq,
        at_ms: now_ms,
    }
}

fn window_finding(
    model: &model::Model,
    vector: &[f64],
    score: f64,
    in_row: u32,
    sustained: u32,
    now_ms: u64,
) -> Finding {
    let explained: Vec<String> = model
        .explain(vector, 3)
        .into_iter()
        .map(|(i, z)| {
            format!(
                "{}={:.0} ({z:+.1} sd)",
                features::NAMES[i],
                vector[i].exp_m1()
            )
        })
        .collect();
    let (signal, severity) = if in_row >= sustained {
        (Signal::Sustained, Severity::High)
    } else {
        (Signal::Window, Severity::Medium)
    };
    Finding {
        signal,
        item: format!(
            "score {score:.1} > {:.1}: {}",
            model.threshold(),
            explained.join(", ")
        ),
        severity,
        evidence: None,
        at_ms: now_ms,
    }
}

fn align(now_ms: u64, window_ms: u64) -> u64 {
    now_ms - now_ms % window_ms.max(1)
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

#[cfg(test)]
mod tests;
