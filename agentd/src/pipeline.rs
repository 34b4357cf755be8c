//! The event pipeline: one thread that drains the ring buffer, attributes each record to its
//! agent, keeps the identity maps current, and appends every record to the signed log, which
//! then feeds the exporters.
//!
//! It owns everything on the hot path, so nothing there takes a lock. While records flow it
//! drains the ring buffer every [`WAKE`] (the programs wake it sooner only when the ring fills
//! up, see `sensor-ebpf/src/emit.rs`); after a quiet spell it sleeps until the next record, a
//! resolver or policy record or a watched executable's change wakes it; and every [`TICK`] it
//! polls the loss counters, signs checkpoints and writes heartbeats.

use std::{
    os::fd::AsFd,
    sync::{
        PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Array, MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sensor_common::{
    event::HDR_UNATTRIBUTED,
    identity::{AGENT_PENDING, AgentRef, Binding, HOW_INHERITED, HOW_PENDING},
    loss::LOSS_SLOTS,
};

use crate::{
    api::hub::{Hub, LiveProcess, SignedCheckpoint},
    config::{Config, LogSettings, SelectorKind, SensorMode},
    control::ControlRx,
    detect::{
        Engine,
        actuator::{Actuator, Member, process_start_matches},
    },
    egress::state::SharedVersions,
    identity::{
        Identity, ProcessFacts, cgroups,
        maps::{IdentityMaps, MapWriteError},
        procscan,
    },
    json::Obj,
    log::store::{Log, LogError, Recovery},
    loss::LossTracker,
    output::{EventSink, SinkError},
    process::{ProcessInfo, ProcessTable},
    record::{Record, Records, detector::Outcome},
    sensor::{
        Attached, KernelMaps, SensorOutput,
        decode::{SensorEvent, bytes_of, decode, split_argv},
    },
    watch::ExeWatcher,
};

/// How often the loss counters are polled and checkpoints considered, at most.
pub const TICK: Duration = Duration::from_millis(250);

/// How often the ring buffer is drained while records flow (the programs then wake agentd only
/// when the ring is an eighth full): the most a record waits in the ring. It replaces a
/// wake-up per record.
pub const WAKE: Duration = Duration::from_millis(5);

/// After this many polls in a row found the ring empty (100 ms), agentd sleeps until a record
/// wakes it (or the next [`TICK`]), so an idle agentd wakes 4 times a second, not 200.
const QUIET_POLLS: u32 = 20;
/// Records handled between commits.
const DRAIN_BATCH: usize = 4096;
/// How often retention looks for segments to delete.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The JSON-lines export could not be written.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A kernel map refused an update.
    #[error(transparent)]
    Map(#[from] MapWriteError),
    /// The log failed in a way agentd cannot continue from.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Waiting for events failed.
    #[error("cannot wait for events")]
    Poll(#[source] nix::Error),
}

/// Counts for the stop record.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Records read from the kernel.
    pub kernel_records: u64,
    /// Records produced (appended to the log, or counted in an outage).
    pub records: u64,
    /// Events lost in the kernel (sum of all loss records).
    pub lost: u64,
}

/// Everything but the ring buffer (which is borrowed while records are read from it).
struct Core {
    identity: Identity,
    maps: KernelMaps,
    procs: ProcessTable,
    records: Records,
    log: Log,
    settings: LogSettings,
    export: Option<EventSink>,
    loss: LossTracker,
    loss_counters: aya::maps::PerCpuArray<MapData, u64>,
    watcher: ExeWatcher,
    control: ControlRx,
    versions: SharedVersions,
    loss_state: Option<std::path::PathBuf>,
    mode: SensorMode,
    stats: Stats,
    control_dropped: u64,
    last_retention: Instant,
    outage_logged: bool,
    hub: std::sync::Arc<Hub>,
    /// The process table changed since the hub's copy was made.
    procs_dirty: bool,
    /// The detector, when enabled.
    detect: Option<Engine>,
    /// Carries out containment.
    actuator: std::sync::Arc<Actuator>,
    /// Where alerts are posted, if anywhere.
    webhook: Option<crate::detect::webhook::Sender>,
}

/// The running pipeline.
pub struct Pipeline {
    ring: RingBuf<MapData>,
    /// The "asleep" flag the programs read (see [`Pipeline::wait`]).
    reader: Array<MapData, u32>,
    core: Core,
}

/// Inputs of [`Pipeline::start`].
pub struct Parts<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// Identity state.
    pub identity: Identity,
    /// The identity maps.
    pub maps: KernelMaps,
    /// The ring buffer and loss counters.
    pub output: SensorOutput,
    /// The attached programs.
    pub attached: &'a [Attached],
    /// The opened log and what opening it repaired.
    pub log: (Log, Recovery),
    /// A key rotation to record first: (old signer, new signer).
    pub rotation: Option<(crate::log::note::NoteSigner, crate::log::note::NoteSigner)>,
    /// Records made elsewhere (resolver, policy changes).
    pub control: ControlRx,
    /// Egress policy versions, to describe decisions.
    pub versions: SharedVersions,
    /// Where the loss totals already reported are kept, and those totals when the counters
    /// were re-adopted from an earlier run.
    pub loss_state: (std::path::PathBuf, Option<[u64; LOSS_SLOTS as usize]>),
    /// Where committed records and checkpoints are published for the API.
    pub hub: std::sync::Arc<Hub>,
    /// Carries out the detector's containment (shared with the API, which releases).
    pub actuator: std::sync::Arc<Actuator>,
    /// Where alerts are posted.
    pub webhook: Option<crate::detect::webhook::Sender>,
}

impl Pipeline {
    /// Records what the log's opening found, fills the identity maps, binds the processes
    /// already running, and writes (and signs) the start record. When this returns, every agent
    /// process is bound and every hook is live.
    pub fn start(parts: Parts<'_>) -> Result<Self, PipelineError> {
        let Parts {
            config,
            identity,
            maps,
            output,
            attached,
            log: (log, recovery),
            rotation,
            control,
            versions,
            loss_state: (loss_path, loss_baseline),
            hub,
            actuator,
            webhook,
        } = parts;
        let export = match &config.events_path {
            Some(path) => Some(EventSink::open(path, config.stdout)?),
            None if config.stdout => Some(EventSink::stdout()),
            None => None,
        };
        let exe_paths: Vec<(u32, std::path::PathBuf)> = identity
            .registry()
            .selectors()
            .iter()
            .filter_map(|s| match &s.kind {
                SelectorKind::Executable { path, .. } => Some((s.id, path.clone())),
                _ => None,
            })
            .collect();
        let watcher = ExeWatcher::new(exe_paths.iter().map(|(id, p)| (*id, p.as_path())));
        let mut core = Core {
            identity,
            maps,
            procs: ProcessTable::default(),
            records: Records::new(),
            log,
            settings: config.log.clone(),
            export,
            loss: LossTracker::with_baseline(loss_baseline.unwrap_or_default()),
            loss_counters: output.loss,
            watcher,
            control,
            versions,
            loss_state: Some(loss_path),
            mode: config.mode,
            stats: Stats::default(),
            control_dropped: 0,
            last_retention: Instant::now(),
            outage_logged: false,
            hub,
            procs_dirty: true,
            detect: None,
            actuator,
            webhook,
        };
        core.hub.set_committed(core.log.size());
        if let Some((checkpoint, note)) = core.log.last_checkpoint() {
            core.hub
                .checkpoint_signed(signed_checkpoint(checkpoint, note));
        }
        *core
            .hub
            .programs
            .write()
            .unwrap_or_else(PoisonError::into_inner) = attached
            .iter()
            .map(|a| (a.program.to_owned(), a.target.clone()))
            .collect();

        if !recovery.created {
            core.recovery_record(&recovery);
        }
        if let Some((old, new)) = rotation {
            core.rotate(old, new)?;
        }
        let changes = core.identity.sync(&mut core.maps)?;
        for change in &changes {
            let record = core.records.identity(core.identity.registry(), change);
            core.emit(record);
        }
        let running = procscan::scan();
        let bound = core.identity.bind_running(&mut core.maps, &running)?;
        for proc in &running {
            if let Some(binding) = bound.get(&proc.pid) {
                core.procs.insert(ProcessInfo {
                    pid: proc.pid,
                    start_ns: proc.start_ns,
                    ppid: proc.ppid,
                    parent_start_ns: 0,
                    exe: proc.exe_path.clone(),
                    exe_inode: proc.exe.map(|s| s.inode),
                    cmdline: Some(proc.cmdline.clone()),
                    binding: *binding,
                });
            }
        }
        let start = core.start_record(config, attached, bound.len());
        core.emit(start);
        if config.detector.enabled {
            let (engine, outputs, problem) = Engine::new(config);
            if let Some(problem) = problem {
                let mut detail = Obj::new();
                detail
                    .str("path", &problem.path.display().to_string())
                    .str("error", &problem.error);
                match &problem.moved_to {
                    Some(p) => detail.str("moved_to", &p.display().to_string()),
                    None => detail.null("moved_to"),
                };
                let record = core
                    .records
                    .log_event("detector.baselines_refused", 4, &detail);
                core.emit(record);
            }
            core.detect = Some(engine);
            core.detected(outputs);
        }
        core.take_control();
        core.commit()?;
        core.sign()?;
        core.flush_export()?;
        core.publish_state();
        tracing::info!(
            programs = attached.len(),
            agents = core.identity.registry().agents().count(),
            processes_bound = bound.len(),
            log = %config.log.dir.display(),
            origin = core.log.origin(),
            key = %core.log.signer().verifier(),
            "agentd ready"
        );
        Ok(Self {
            ring: output.events,
            reader: output.reader,
            core,
        })
    }

    /// Runs until `shutdown` is set, then drains what is left, writes the stop record and signs
    /// a final checkpoint.
    pub fn run(mut self, shutdown: &AtomicBool) -> Result<Stats, PipelineError> {
        let mut last_tick = Instant::now();
        // Consecutive wake-ups that found the ring empty.
        let mut quiet = 0u32;
        // A flag left set by a stopped agentd would have every record wake this one.
        self.set_asleep(false);
        loop {
            let stopping = shutdown.load(Ordering::Relaxed);
            self.wait(quiet >= QUIET_POLLS)?;
            let handled = self.drain()?;
            quiet = if handled == 0 {
                quiet.saturating_add(1)
            } else {
                0
            };
            self.core.take_control();
            self.core.commit()?;
            // Checked on every wake-up, not only per tick, so records wait at most the interval.
            if self.core.log.checkpoint_due() {
                self.core.sign()?;
            }
            self.core.watcher.read();
            if stopping || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.core.tick()?;
            }
            if stopping {
                break;
            }
        }
        // Everything the kernel delivered before the stop is recorded.
        while self.drain()? > 0 {
            self.core.commit()?;
        }
        self.core.take_control();
        self.core.tick()?;
        if let Some(engine) = &mut self.core.detect {
            engine.save();
        }
        let stats = self.core.stats;
        let mut detail = Obj::new();
        detail
            .u64("kernel_records", stats.kernel_records)
            .u64("records", stats.records + 1)
            .u64("lost", stats.lost);
        let stop = self
            .core
            .records
            .lifecycle("agentd.stop", 4, "Stop", &detail);
        self.core.emit(stop);
        self.core.commit()?;
        self.core.sign()?;
        self.core.flush_export()?;
        self.core.publish_state();
        self.core.hub.close();
        Ok(self.core.stats)
    }

    /// Waits for the ring buffer, a control record or the executable watch: up to [`WAKE`]
    /// while records flow (the programs do not wake agentd for each one), up to [`TICK`] when
    /// `asleep`, with the programs told to wake it on the next record.
    ///
    /// A record submitted before the programs see the flag is already in the ring, and `poll`
    /// returns at once for a non-empty ring. The flag's store and the ring's position are not
    /// ordered by a barrier, so in a rare interleaving a record may wait for the next tick
    /// ([`TICK`]); it is never lost.
    fn wait(&mut self, asleep: bool) -> Result<(), PipelineError> {
        if asleep {
            self.set_asleep(true);
        }
        let mut fds = vec![
            PollFd::new(self.ring.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.core.control.fd(), PollFlags::POLLIN),
        ];
        if let Some(fd) = self.core.watcher.fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let limit = if asleep { TICK } else { WAKE };
        let polled = poll(
            &mut fds,
            PollTimeout::try_from(limit).unwrap_or(PollTimeout::NONE),
        );
        drop(fds);
        if asleep {
            self.set_asleep(false);
        }
        match polled {
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(err) => Err(PipelineError::Poll(err)),
        }
    }

    /// Sets the programs' "asleep" flag. A failure costs latency (records then wait for the
    /// next poll, at most [`TICK`]), never records, so it is logged and the pipeline goes on.
    fn set_asleep(&mut self, asleep: bool) {
        if let Err(err) = self.reader.set(0, u32::from(asleep), 0) {
            tracing::warn!(%err, "cannot update the ring buffer's wake-up flag");
        }
    }

    /// Handles the records in the ring buffer, at most [`DRAIN_BATCH`] before the caller
    /// commits them: under a sustained flood the ring never empties, and staged records must
    /// neither pile up in memory nor wait for their checkpoint.
    fn drain(&mut self) -> Result<usize, PipelineError> {
        let mut handled = 0;
        while handled < DRAIN_BATCH
            && let Some(item) = self.ring.next()
        {
            handled += 1;
            self.core.stats.kernel_records += 1;
            match decode(&item) {
                Ok(event) => {
                    drop(item);
                    self.core.handle(event)?;
                }
                Err(err) => {
                    let record = self.core.records.decode_error(&err.to_string(), item.len());
                    drop(item);
                    self.core.emit(record);
                }
            }
        }
        Ok(handled)
    }
}

impl Core {
    /// Logs the records queued by the resolver and policy changes.
    fn take_control(&mut self) {
        for record in self.control.take(DRAIN_BATCH) {
            self.emit(record);
        }
    }

    /// Hands a record to the log (never fails: during an outage the log counts it); returns
    /// its sequence number (`None` during an outage).
    fn emit(&mut self, mut record: Record) -> Option<u64> {
        self.stats.records += 1;
        self.log.stage(&mut record.obj, record.kind)
    }

    /// Logs what the detector decided, carrying out containment first so that its record
    /// says what was done.
    fn detected(&mut self, outputs: Vec<detector::Output>) {
        use detector::Output;
        for output in outputs {
            let registry = self.identity.registry();
            match output {
                Output::Alert(alert) => {
                    tracing::warn!(
                        agent = %alert.name,
                        incident = alert.incident,
                        severity = alert.severity.as_str(),
                        findings = alert.findings.len(),
                        "detector alert"
                    );
                    let mut record = self.records.detector_alert(registry, &alert);
                    self.stats.records += 1;
                    self.log.stage(&mut record.obj, record.kind);
                    if let Some(webhook) = &self.webhook {
                        let mut body = Vec::new();
                        record.obj.write_to(&mut body);
                        webhook.send(body);
                    }
                }
                Output::Finding {
                    agent,
                    incident,
                    finding,
                } => {
                    let record = self
                        .records
                        .detector_finding(registry, agent, incident, &finding);
                    self.emit(record);
                }
                Output::Action(action) => {
                    let outcome = if action.mode == detector::Mode::Act {
                        self.contain(&action)
                    } else {
                        Outcome::NotDone
                    };
                    tracing::warn!(
                        agent = %action.name,
                        incident = action.incident,
                        step = action.step.as_str(),
                        mode = action.mode.as_str(),
                        ?outcome,
                        "detector containment"
                    );
                    let registry = self.identity.registry();
                    let record = self.records.detector_action(registry, &action, &outcome);
                    self.emit(record);
                }
                Output::Stage {
                    agent,
                    name,
                    transition,
                    summary,
                } => {
                    tracing::info!(agent = %name, stage = transition.to.as_str(), reason = %transition.reason, "detector profile");
                    let record =
                        self.records
                            .detector_profile(registry, agent, &transition, &summary);
                    self.emit(record);
                }
                Output::Closed {
                    agent,
                    incident,
                    reason,
                } => {
                    let record = self
                        .records
                        .detector_closed(registry, agent, incident, reason);
                    self.emit(record);
                }
            }
        }
    }

    /// Carries out one containment step.
    fn contain(&self, action: &detector::Action) -> Outcome {
        use detector::incident::Step;
        let members: Vec<Member> = self
            .procs
            .iter()
            .filter(|p| p.binding.agent.agent_id == action.agent)
            .map(|p| Member {
                pid: p.pid,
                start_ns: p.start_ns,
            })
            .collect();
        // Who owns a process: the kernel's binding map first (the fork hook writes it, so it
        // knows a child forked a moment ago, which the table learns only from the ring), when
        // its start time matches the live process; the table otherwise.
        let owner = |pid: u32| {
            if let Ok(binding) = self.maps.bindings.get(&pid, 0)
                && process_start_matches(Member {
                    pid,
                    start_ns: binding.start_ns,
                })
            {
                return Some(binding.agent.agent_id);
            }
            self.procs.get(pid).map(|p| p.binding.agent.agent_id)
        };
        let result = match action.step {
            Step::Alert => return Outcome::NotDone,
            Step::Quarantine => self.actuator.quarantine(action.agent, action.incident),
            Step::Freeze => self
                .actuator
                .freeze(action.agent, action.incident, &members, owner),
            Step::Kill => self
                .actuator
                .kill(action.agent, action.incident, &members, owner),
        };
        match result {
            Ok(detail) => Outcome::Done(detail),
            Err(error) => Outcome::Failed(error),
        }
    }

    /// Writes the staged records and exports the ones that were written.
    fn commit(&mut self) -> Result<(), PipelineError> {
        match self.log.commit() {
            Ok(()) => {
                self.hub.publish(
                    self.log.size(),
                    self.log.committed().map(|c| (c.leaf, c.kind)),
                );
                if let Some(export) = &mut self.export {
                    for committed in self.log.committed() {
                        export.write(committed.leaf)?;
                    }
                }
                Ok(())
            }
            Err(LogError::Outage(err)) => {
                if !self.outage_logged {
                    // Enforcement and the sensor carry on; what cannot be written is counted
                    // and reported when writing works again.
                    tracing::error!(%err, "cannot write the log; counting records until it works again");
                    self.outage_logged = true;
                }
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Signs a checkpoint; a disk that cannot take it is reported, not fatal (the next attempt
    /// signs the same records).
    fn sign(&mut self) -> Result<(), PipelineError> {
        match self.log.checkpoint() {
            Ok(Some((checkpoint, note))) => {
                let signed = signed_checkpoint(checkpoint, note);
                self.hub.checkpoint_signed(signed);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(LogError::Sign(err)) => {
                if !self.outage_logged {
                    tracing::error!(%err, "cannot write a checkpoint; retrying");
                    self.outage_logged = true;
                }
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }

    fn flush_export(&mut self) -> Result<(), PipelineError> {
        if let Some(export) = &mut self.export {
            export.flush()?;
        }
        Ok(())
    }

    /// Periodic work: loss counters, settled executable changes, outage recovery, heartbeats,
    /// checkpoints, retention, clock, flush.
    fn tick(&mut self) -> Result<(), PipelineError> {
        let mut losses = self.loss.poll(&self.loss_counters);
        if !losses.is_empty()
            && let Some(path) = &self.loss_state
        {
            // Re-adopted counters must not be reported twice by the next run.
            if let Err(err) = crate::loss::save(path, self.loss.totals()) {
                tracing::warn!(path = %path.display(), %err, "cannot save the loss totals");
            }
        }
        let dropped = self.control.take_dropped();
        if dropped > 0 {
            self.control_dropped += dropped;
            losses.push(crate::loss::Loss {
                what: "control",
                count: dropped,
                total: self.control_dropped,
            });
        }
        for loss in losses {
            self.stats.lost += loss.count;
            tracing::warn!(
                what = loss.what,
                count = loss.count,
                total = loss.total,
                "the kernel dropped records"
            );
            let record = self.records.loss(loss.what, loss.count, loss.total);
            self.emit(record);
        }
        for selector in self.watcher.settled() {
            let change = self.identity.check_exe(&mut self.maps, selector)?;
            let record = self.records.identity(self.identity.registry(), &change);
            self.emit(record);
        }
        self.commit()?;
        self.try_resume();
        if self.log.outage().is_none() && self.log.idle_for() >= self.settings.heartbeat {
            let mut detail = Obj::new();
            detail
                .u64("size", self.log.size())
                .u64("processes", self.procs.len() as u64);
            let record = self.records.log_event("log.heartbeat", 1, &detail);
            self.emit(record);
            self.commit()?;
        }
        if self.log.checkpoint_due() {
            self.sign()?;
        }
        // Size limits matter when a segment closes; age limits are checked once a minute.
        if self.log.take_rolled() || self.last_retention.elapsed() >= RETENTION_EVERY {
            self.last_retention = Instant::now();
            self.retention()?;
        }
        if let Some(engine) = &mut self.detect {
            let released = self.actuator.take_released();
            let relearn = self.actuator.take_relearn();
            let outputs = engine.tick(&self.procs, &released, &relearn);
            self.detected(outputs);
            self.commit()?;
        }
        self.records.refresh_clock();
        self.publish_state();
        self.flush_export()
    }

    /// Hands the API the figures and the agent processes.
    fn publish_state(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.hub.counters;
        counters
            .kernel_records
            .store(self.stats.kernel_records, Relaxed);
        counters.records.store(self.stats.records, Relaxed);
        counters.lost.store(self.stats.lost, Relaxed);
        self.hub.sample_rate();
        *self
            .hub
            .origin
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (
            self.log.origin().to_owned(),
            self.log.signer().verifier().to_string(),
        );
        if std::mem::take(&mut self.procs_dirty) {
            let live: Vec<LiveProcess> = self
                .procs
                .iter()
                .filter(|p| p.binding.agent.agent_id != 0)
                .map(|p| LiveProcess {
                    agent: p.binding.agent.agent_id,
                    pid: p.pid,
                    start_ns: p.start_ns,
                    binding: match p.binding.how {
                        sensor_common::identity::HOW_DIRECT => "direct",
                        HOW_INHERITED => "inherited",
                        HOW_PENDING => "pending",
                        _ => "none",
                    },
                    exe: p.exe.clone().unwrap_or_default(),
                })
                .collect();
            *self
                .hub
                .processes
                .write()
                .unwrap_or_else(PoisonError::into_inner) = std::sync::Arc::new(live);
        }
    }

    /// During an outage, tries to write the record that ends it.
    fn try_resume(&mut self) {
        let Some(outage) = self.log.outage() else {
            return;
        };
        let mut detail = Obj::new();
        let since = outage
            .since
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut dropped = Obj::new();
        let mut total = 0;
        for (kind, count) in &outage.dropped {
            total += count;
            dropped.u64(kind.clone(), *count);
        }
        detail
            .u64("started", since.as_millis() as u64)
            .u64(
                "ended",
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
            )
            .str("error", &outage.error)
            .u64("records_not_written", total)
            .obj_value("not_written_by_kind", &dropped);
        let mut record = self.records.log_event("log.outage", 4, &detail);
        if self.log.resume(&mut record.obj) {
            tracing::warn!(
                records_not_written = total,
                "the log is writable again; the outage is recorded"
            );
            self.outage_logged = false;
            self.hub.publish(
                self.log.size(),
                self.log.committed().map(|c| (c.leaf, c.kind)),
            );
            if let Some(export) = &mut self.export {
                for committed in self.log.committed() {
                    let _ = export.write(committed.leaf);
                }
            }
        }
    }

    /// Deletes signed segments past the retention limits, recording what went.
    fn retention(&mut self) -> Result<(), PipelineError> {
        let prunable = self.log.prunable();
        let Some(last) = prunable.last() else {
            return Ok(());
        };
        let base = self.log.prune(last)?;
        let mut detail = Obj::new();
        detail
            .u64("segments", prunable.len() as u64)
            .u64("first_retained_seq", base.size())
            .str("base_root", &hex::encode(base.root()));
        let record = self.records.log_event("log.prune", 1, &detail);
        self.emit(record);
        self.commit()
    }

    fn recovery_record(&mut self, recovery: &Recovery) {
        let last_kind = recovery
            .last_leaf
            .as_deref()
            .and_then(|leaf| serde_json::from_slice::<serde_json::Value>(leaf).ok())
            .and_then(|v| v["kind"].as_str().map(str::to_owned));
        let clean = last_kind.as_deref() == Some("agentd.stop")
            && recovery.checkpoint_size == recovery.size
            && !recovery.repaired();
        let mut detail = Obj::new();
        detail
            .str("previous_run", if clean { "clean" } else { "unclean" })
            .u64("size", recovery.size)
            .u64("signed_size", recovery.checkpoint_size)
            .u64("unsigned_leaves", recovery.size - recovery.checkpoint_size)
            .u64("torn_bytes_removed", recovery.torn_bytes)
            .u64("index_entries_repaired", recovery.index_repaired)
            .u64("checkpoint_bytes_removed", recovery.checkpoint_torn_bytes);
        if let Some(reason) = &recovery.torn_reason {
            detail.str("torn_reason", reason);
        }
        if !clean {
            tracing::warn!(
                torn_bytes = recovery.torn_bytes,
                unsigned_leaves = recovery.size - recovery.checkpoint_size,
                "the previous run did not stop cleanly; the log was checked and repaired"
            );
        }
        let record = self
            .records
            .log_event("log.recovery", if clean { 1 } else { 3 }, &detail);
        self.emit(record);
    }

    /// Records a key rotation, signed by the old key, and signs from then on with the new one.
    fn rotate(
        &mut self,
        old: crate::log::note::NoteSigner,
        new: crate::log::note::NoteSigner,
    ) -> Result<(), PipelineError> {
        use base64::Engine as _;
        let statement = crate::log::verify::rotation_statement(self.log.origin(), &new.verifier());
        let signature = old.sign_bytes(statement.as_bytes());
        let mut rotation = Obj::new();
        rotation
            .str("old_key", &old.verifier().to_string())
            .str("new_key", &new.verifier().to_string())
            .str(
                "signature",
                &base64::engine::general_purpose::STANDARD.encode(signature),
            );
        let mut detail = Obj::new();
        detail.str("statement", &statement);
        let mut record = self.records.log_event("log.key_rotation", 3, &detail);
        record.obj.obj_value("rotation", &rotation);
        self.emit(record);
        self.commit()?;
        self.log.set_signer(new);
        self.sign()?;
        tracing::warn!(old = %old.verifier(), new = %self.log.signer().verifier(), "log signing key rotated");
        Ok(())
    }

    fn start_record(&self, config: &Config, attached: &[Attached], bound: usize) -> Record {
        let mut detail = Obj::new();
        detail
            .obj("config", |c| {
                c.str("source", &config.source)
                    .str("sha256", &hex::encode(config.sha256));
            })
            .str(
                "mode",
                match config.mode {
                    SensorMode::Agents => "agents",
                    SensorMode::Host => "host",
                },
            )
            .u64("ring_buffer_bytes", config.ring_buffer_bytes as u64)
            .u64("processes_bound_at_start", bound as u64)
            .obj("log", |l| {
                l.str("origin", self.log.origin())
                    .str("key", &self.log.signer().verifier().to_string())
                    .u64("size", self.log.next_seq());
            });
        let programs: Vec<Obj> = attached
            .iter()
            .map(|a| {
                let mut o = Obj::new();
                o.str("program", a.program).str("target", &a.target);
                o
            })
            .collect();
        detail.objs("programs", &programs);
        let agents: Vec<Obj> = self
            .identity
            .registry()
            .agents()
            .map(|(_, agent)| {
                let selectors: Vec<Obj> = agent
                    .selectors
                    .iter()
                    .map(|s| {
                        let mut o = Obj::new();
                        o.str("type", s.type_name()).str("value", &s.value());
                        o
                    })
                    .collect();
                let mut o = Obj::new();
                o.str("uid", &agent.spiffe_id)
                    .str("name", &agent.name)
                    .str("owner", &agent.owner)
                    .strs("scopes", agent.scopes.iter().map(String::as_str))
                    .str("trust_tier", agent.trust_tier.as_str())
                    .objs("selectors", &selectors);
                o
            })
            .collect();
        detail.objs("agents", &agents);
        self.records.lifecycle("agentd.start", 3, "Start", &detail)
    }

    fn handle(&mut self, mut event: SensorEvent) -> Result<(), PipelineError> {
        if let SensorEvent::Cgroup(ev) = &event {
            let path = String::from_utf8_lossy(bytes_of(&ev.path, ev.path_len)).into_owned();
            let change = if ev.hdr.kind == sensor_common::event::EventKind::CgroupMkdir as u32 {
                self.identity.on_mkdir(&mut self.maps, ev.id, &path)?
            } else {
                self.identity.on_rmdir(&mut self.maps, ev.id)
            };
            if let Some(change) = change {
                let record = self.records.identity(self.identity.registry(), &change);
                self.emit(record);
            }
            return Ok(());
        }
        if event.header().agent.agent_id == AGENT_PENDING && !self.resolve_pending(&mut event)? {
            return Ok(());
        }
        if matches!(
            event,
            SensorEvent::Exec(_) | SensorEvent::Fork(_) | SensorEvent::Exit(_)
        ) {
            self.procs_dirty = true;
        }
        // What an exec replaced (the table is updated below); other events' executables are
        // read from the table afterwards, without a copy.
        let mut replaced_exe = None;
        let registry = self.identity.registry();
        let record = match &event {
            SensorEvent::Exec(ev) => {
                let previous = self.procs.get(ev.hdr.tgid).cloned();
                let record = self
                    .records
                    .exec(registry, &self.procs, ev, previous.as_ref());
                let argv = split_argv(&ev.argv, ev.argv_len)
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.procs.insert(ProcessInfo {
                    pid: ev.hdr.tgid,
                    start_ns: ev.hdr.start_ns,
                    ppid: ev.ppid,
                    parent_start_ns: ev.parent_start_ns,
                    exe: Some(
                        String::from_utf8_lossy(bytes_of(&ev.filename, ev.filename_len))
                            .into_owned(),
                    ),
                    exe_inode: Some(ev.exe),
                    cmdline: Some(argv),
                    binding: binding_of(&ev.hdr),
                });
                replaced_exe = previous.and_then(|p| p.exe);
                record
            }
            SensorEvent::Fork(ev) => {
                let record = self.records.fork(registry, &self.procs, ev);
                let mut child = binding_of(&ev.hdr);
                child.start_ns = ev.child_start_ns;
                if child.agent.agent_id != 0 && child.how != HOW_PENDING {
                    child.how = HOW_INHERITED;
                }
                self.procs
                    .fork(ev.hdr.tgid, ev.child_tgid, ev.child_start_ns, child);
                record
            }
            SensorEvent::Exit(ev) => {
                let record = self.records.exit(registry, &self.procs, ev);
                self.procs.remove(ev.hdr.tgid);
                record
            }
            SensorEvent::File(ev) => self.records.file(registry, &self.procs, ev),
            SensorEvent::Net(ev) => {
                let versions = self.versions.read().unwrap_or_else(PoisonError::into_inner);
                self.records.net(registry, &self.procs, ev, &versions)
            }
            SensorEvent::Cgroup(_) => return Ok(()),
        };
        let seq = self.emit(record);
        if let Some(engine) = &mut self.detect {
            let actor_exe = match &event {
                SensorEvent::Exec(_) => replaced_exe.as_deref(),
                _ => self
                    .procs
                    .get(event.header().tgid)
                    .and_then(|p| p.exe.as_deref()),
            };
            let outputs = engine.observe(&event, seq, actor_exe);
            if !outputs.is_empty() {
                self.detected(outputs);
            }
        }
        Ok(())
    }

    /// A process bound as pending (it ran in a cgroup agentd had not matched yet when the kernel
    /// saw it): resolve it now, fix its kernel binding, and rewrite the header. Returns whether
    /// the event is still reported.
    fn resolve_pending(&mut self, event: &mut SensorEvent) -> Result<bool, PipelineError> {
        let exec_inode = match event {
            SensorEvent::Exec(ev) => Some(ev.exe),
            _ => None,
        };
        let hdr = *event.header();
        let known = self.procs.get(hdr.tgid);
        let parent = match event {
            // Before an exec, the process's own entry holds what it inherited at fork.
            SensorEvent::Exec(_) => known.map(|p| p.binding),
            _ => known
                .and_then(|p| self.procs.get(p.ppid))
                .map(|p| p.binding),
        };
        let exe = exec_inode.or_else(|| known.and_then(|p| p.exe_inode));
        let cgroup = match self.identity.cgroup_path(hdr.cgroup_id) {
            Some(path) => path.to_owned(),
            None => cgroups::of_process(hdr.tgid).unwrap_or_default(),
        };
        let facts = ProcessFacts {
            cgroup: &cgroup,
            exe,
            uid: hdr.uid,
            gid: hdr.gid,
        };
        let resolved = self.identity.resolve(&facts, parent.as_ref());
        let hdr = event.header_mut();
        match resolved {
            Some((agent, how)) => {
                self.maps.set_binding(
                    hdr.tgid,
                    Binding {
                        agent,
                        how,
                        _pad: 0,
                        start_ns: hdr.start_ns,
                    },
                )?;
                hdr.agent = agent;
                hdr.how = how;
                Ok(true)
            }
            None => {
                self.maps.clear_binding(hdr.tgid);
                hdr.agent = AgentRef::default();
                hdr.how = 0;
                hdr.flags |= HDR_UNATTRIBUTED;
                Ok(self.mode == SensorMode::Host)
            }
        }
    }
}

fn signed_checkpoint(
    checkpoint: &crate::log::note::Checkpoint,
    note: &crate::log::note::SignedNote,
) -> SignedCheckpoint {
    SignedCheckpoint {
        origin: checkpoint.origin.clone(),
        size: checkpoint.size,
        root: checkpoint.root,
        note: note.to_text(),
        at: Instant::now(),
    }
}

fn binding_of(hdr: &sensor_common::event::EventHeader) -> Binding {
    Binding {
        agent: hdr.agent,
        how: hdr.how,
        _pad: 0,
        start_ns: hdr.start_ns,
    }
}
