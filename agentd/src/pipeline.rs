//! The event pipeline: one thread that drains the ring buffer, attributes each record to its
//! agent, keeps the identity maps current, and writes the records.
//!
//! It owns everything on the hot path, so nothing there takes a lock. It wakes when the ring
//! buffer has data, when a watched executable changes, or every [`TICK`] to poll the loss
//! counters and flush the output.

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sensor_common::{
    event::HDR_UNATTRIBUTED,
    identity::{AGENT_PENDING, AgentRef, Binding, HOW_INHERITED, HOW_PENDING},
};

use crate::{
    config::{Config, SelectorKind, SensorMode},
    identity::{
        Identity, ProcessFacts, cgroups,
        maps::{IdentityMaps, MapWriteError},
        procscan,
    },
    json::Obj,
    loss::LossTracker,
    output::{EventSink, SinkError},
    process::{ProcessInfo, ProcessTable},
    record::Records,
    sensor::{
        Attached, KernelMaps, SensorOutput,
        decode::{SensorEvent, bytes_of, decode, split_argv},
    },
    watch::ExeWatcher,
};

/// How often the loss counters are polled and the output flushed, at most.
pub const TICK: Duration = Duration::from_millis(250);

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The output could not be written.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A kernel map refused an update.
    #[error(transparent)]
    Map(#[from] MapWriteError),
    /// Waiting for events failed.
    #[error("cannot wait for events")]
    Poll(#[source] nix::Error),
}

/// Counts for the stop record.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Records read from the kernel.
    pub kernel_records: u64,
    /// Records written.
    pub records_written: u64,
    /// Events lost in the kernel (sum of all loss records).
    pub lost: u64,
}

/// Everything but the ring buffer (which is borrowed while records are read from it).
struct Core {
    identity: Identity,
    maps: KernelMaps,
    procs: ProcessTable,
    records: Records,
    sink: EventSink,
    loss: LossTracker,
    loss_counters: aya::maps::PerCpuArray<MapData, u64>,
    watcher: ExeWatcher,
    mode: SensorMode,
    stats: Stats,
    /// Reused for each record's bytes.
    buf: Vec<u8>,
}

/// The running pipeline.
pub struct Pipeline {
    ring: RingBuf<MapData>,
    core: Core,
}

impl Pipeline {
    /// Fills the identity maps, binds the processes already running, and writes the start
    /// record. When this returns, every agent process is bound and every hook is live.
    pub fn start(
        config: &Config,
        identity: Identity,
        maps: KernelMaps,
        output: SensorOutput,
        attached: &[Attached],
    ) -> Result<Self, PipelineError> {
        let sink = EventSink::open(&config.events_path, config.stdout)?;
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
            sink,
            loss: LossTracker::default(),
            loss_counters: output.loss,
            watcher,
            mode: config.mode,
            stats: Stats::default(),
            buf: Vec::with_capacity(4096),
        };

        let changes = core.identity.sync(&mut core.maps)?;
        for change in &changes {
            let record = core.records.identity(core.identity.registry(), change);
            core.write(&record)?;
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
            .u64("processes_bound_at_start", bound.len() as u64);
        let programs: Vec<Obj> = attached
            .iter()
            .map(|a| {
                let mut o = Obj::new();
                o.str("program", a.program).str("target", &a.target);
                o
            })
            .collect();
        detail.objs("programs", &programs);
        let agents: Vec<Obj> = core
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
        let start = core.records.lifecycle("agentd.start", 3, "Start", &detail);
        core.write(&start)?;
        core.sink.flush()?;
        tracing::info!(
            programs = attached.len(),
            agents = core.identity.registry().agents().count(),
            processes_bound = bound.len(),
            events = %config.events_path.display(),
            "agentd ready"
        );
        Ok(Self {
            ring: output.events,
            core,
        })
    }

    /// Runs until `shutdown` is set, then drains what is left and writes the stop record.
    pub fn run(mut self, shutdown: &AtomicBool) -> Result<Stats, PipelineError> {
        let mut last_tick = Instant::now();
        loop {
            let stopping = shutdown.load(Ordering::Relaxed);
            self.wait()?;
            self.drain()?;
            self.core.watcher.read();
            if stopping || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.core.tick()?;
            }
            if stopping {
                break;
            }
        }
        let stats = self.core.stats;
        let mut detail = Obj::new();
        detail
            .u64("kernel_records", stats.kernel_records)
            .u64("records_written", stats.records_written + 1)
            .u64("lost", stats.lost);
        let stop = self
            .core
            .records
            .lifecycle("agentd.stop", 4, "Stop", &detail);
        self.core.write(&stop)?;
        self.core.sink.flush()?;
        Ok(self.core.stats)
    }

    /// Waits up to one tick for the ring buffer or the executable watch.
    fn wait(&mut self) -> Result<(), PipelineError> {
        let mut fds = vec![PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = self.core.watcher.fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(
            &mut fds,
            PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE),
        ) {
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(err) => Err(PipelineError::Poll(err)),
        }
    }

    /// Handles every record in the ring buffer.
    fn drain(&mut self) -> Result<(), PipelineError> {
        while let Some(item) = self.ring.next() {
            self.core.stats.kernel_records += 1;
            match decode(&item) {
                Ok(event) => {
                    drop(item);
                    self.core.handle(event)?;
                }
                Err(err) => {
                    let record = self.core.records.decode_error(&err.to_string(), item.len());
                    drop(item);
                    self.core.write(&record)?;
                }
            }
        }
        Ok(())
    }
}

impl Core {
    fn write(&mut self, record: &Obj) -> Result<(), SinkError> {
        self.stats.records_written += 1;
        self.buf.clear();
        record.write_to(&mut self.buf);
        self.sink.write(&self.buf)
    }

    /// Periodic work: loss counters, settled executable changes, clock, flush.
    fn tick(&mut self) -> Result<(), PipelineError> {
        for loss in self.loss.poll(&self.loss_counters) {
            self.stats.lost += loss.count;
            tracing::warn!(
                what = loss.what,
                count = loss.count,
                total = loss.total,
                "the kernel dropped records"
            );
            let record = self.records.loss(loss.what, loss.count, loss.total);
            self.write(&record)?;
        }
        for selector in self.watcher.settled() {
            let change = self.identity.check_exe(&mut self.maps, selector)?;
            let record = self.records.identity(self.identity.registry(), &change);
            self.write(&record)?;
        }
        self.records.refresh_clock();
        self.sink.flush()?;
        Ok(())
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
                self.write(&record)?;
            }
            return Ok(());
        }
        if event.header().agent.agent_id == AGENT_PENDING && !self.resolve_pending(&mut event)? {
            return Ok(());
        }
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
            SensorEvent::Net(ev) => self.records.net(registry, &self.procs, ev),
            SensorEvent::Cgroup(_) => return Ok(()),
        };
        self.write(&record)?;
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

fn binding_of(hdr: &sensor_common::event::EventHeader) -> Binding {
    Binding {
        agent: hdr.agent,
        how: hdr.how,
        _pad: 0,
        start_ns: hdr.start_ns,
    }
}
