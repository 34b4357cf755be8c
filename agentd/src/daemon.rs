//! agentd's life: start-up in an order that never leaves an enforced agent unprotected, the run
//! loop (pipeline thread, resolvers, pin expiry, signals), and policy reloads on SIGHUP.
//!
//! Start-up order, and why:
//! 1. checks, the instance lock, the policies (an invalid policy refuses the start), the log;
//! 2. the resolver sockets, so a redirected DNS query never meets a closed port once the new
//!    programs run;
//! 3. the programs: maps pinned by an earlier run are re-adopted (they kept enforcing while no
//!    agentd ran), new links are attached *beside* the earlier run's;
//! 4. the policies are put in force (unchanged ones are adopted untouched), identities synced
//!    and running processes bound;
//! 5. only then are the earlier run's links retired.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::DirBuilderExt as _},
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sensor_common::config::{MODE_AGENTS, MODE_HOST, SensorConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    RunError, RunOptions,
    api::{
        self,
        auth::Authenticator,
        hub::Hub,
        service::{Reload, Service},
    },
    clock::BootClock,
    config::{Config, ConfigError, SensorMode},
    control::{self, ControlTx},
    detect::{actuator::Actuator, webhook},
    egress::state::PolicyChange,
    egress::{
        self,
        resolver::{self, Listener},
        state::{EgressState, SharedVersions},
    },
    identity::{Identity, registry::Registry},
    loss, open_log,
    pipeline::{self, Pipeline, Stats},
    preflight,
    record::{Records, api::Requester},
    sensor::{EgressMaps, LoadOptions, Sensor},
};

/// How often lapsed DNS pins are removed from the maps (the kernel ignores them at once).
const EXPIRE_EVERY: Duration = Duration::from_secs(2);

/// The egress state as the daemon shares it.
type SharedEgress = Arc<Mutex<EgressState<EgressMaps>>>;

/// What start-up hands to the run loop.
struct Started {
    config: Config,
    pipeline: Pipeline,
    sensor: Sensor,
    egress: SharedEgress,
    versions: SharedVersions,
    listeners: Vec<Listener>,
    control: ControlTx,
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    api: api::server::Bound,
    actuator: Arc<Actuator>,
    _lock: File,
}

/// Runs agentd until SIGTERM or SIGINT; SIGHUP reloads the policies.
pub async fn run(config: Config, options: RunOptions) -> Result<Stats, RunError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| RunError::Io { what, source }
    };
    // Registered first: SIGHUP's default action would kill agentd.
    let mut hangup = signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;

    let start_options = options.clone();
    let started = tokio::task::spawn_blocking(move || start(config, &start_options))
        .await
        .map_err(|err| RunError::Io {
            what: "start-up failed".into(),
            source: std::io::Error::other(err),
        })??;
    let Started {
        config,
        pipeline,
        sensor,
        egress,
        versions,
        listeners,
        control,
        registry,
        hub,
        api,
        actuator,
        _lock,
    } = started;

    let upstream = resolver::upstreams(&config.dns.upstream);
    if upstream.is_empty() {
        tracing::warn!(
            "no upstream DNS server: agents with a policy cannot resolve names (set [dns] upstream)"
        );
    }
    let context = Arc::new(resolver::Context {
        state: Arc::clone(&egress),
        versions,
        upstream,
        timeout: config.dns.timeout,
        control: control.clone(),
        records: Records::new(),
        registry: Arc::clone(&registry),
    });
    let mut tasks =
        resolver::spawn(listeners, context).map_err(io("cannot start the DNS resolver"))?;
    tasks.push(tokio::spawn(expire_pins(Arc::clone(&egress))));

    let reloader = Arc::new(Reloader {
        options: options.clone(),
        current: config.clone(),
        egress: Arc::clone(&egress),
        control: control.clone(),
        records: Records::new(),
        registry: Arc::clone(&registry),
    });
    let service = Service::new(api::service::Parts {
        hub: Arc::clone(&hub),
        auth: Authenticator::new(Arc::new(config.api.clone())),
        registry: Arc::clone(&registry),
        egress: Arc::clone(&egress),
        control: control.clone(),
        reloader: Arc::clone(&reloader) as Arc<dyn Reload>,
        actuator,
    });
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api::server::serve(
        api,
        service,
        control.clone(),
        async move {
            let _ = api_stopped.await;
        },
    ));

    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let mut pipeline_task = tokio::task::spawn_blocking(move || pipeline.run(&flag));
    crate::notify::notify("READY=1");
    // However this function ends (a panic included), the pipeline thread is told to stop:
    // the runtime waits for it before the process can exit.
    let _stop_pipeline = StopOnDrop(Arc::clone(&shutdown));
    let result = loop {
        tokio::select! {
            result = &mut pipeline_task => break result,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the policies");
                let _ = reloader.reload(&Requester {
                    caller: "signal:SIGHUP",
                    role: "operator",
                    transport: "signal",
                    reason: "SIGHUP",
                });
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping");
                crate::notify::notify("STOPPING=1");
                shutdown.store(true, Ordering::Relaxed);
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping");
                crate::notify::notify("STOPPING=1");
                shutdown.store(true, Ordering::Relaxed);
            }
        }
    };
    // The pipeline has published its last record and closed the streams; let them finish.
    let _ = api_stop.send(());
    if tokio::time::timeout(Duration::from_secs(3), api_task)
        .await
        .is_err()
    {
        tracing::warn!("the API did not stop within 3 s");
    }
    for task in tasks {
        task.abort();
    }
    egress
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .release_monitored();
    // The links and maps stay pinned: enforcement and identity binding go on after agentd
    // exits, and the next agentd adopts them (`agentd --remove-pins` takes them away).
    drop(sensor);
    let stats = result.map_err(|err| RunError::Io {
        what: "the pipeline thread failed".into(),
        source: std::io::Error::other(err),
    })??;
    Ok(stats)
}

/// Sets the shutdown flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Start-up, steps 1 to 5 of the module documentation.
fn start(config: Config, options: &RunOptions) -> Result<Started, RunError> {
    let host = preflight::check()?;
    let lock = lock_instance(&config.state_dir)?;
    let policies = config.policies()?;
    // The log before any program loads: a configuration that cannot log is refused first.
    let (log, recovery, rotation) = open_log(&config, options.rotate_key)?;
    let api = api::server::bind(&config.api)?;
    let hub = Arc::new(Hub::new(
        config.log.dir.clone(),
        config.api.subscriber_window,
    ));
    let registry = Arc::new(Registry::new(&config));
    let ports = egress::resolver_ports(&config);
    let listeners = resolver::bind(&ports, &registry)?;

    let mut sensor = Sensor::load(&LoadOptions {
        ring_bytes: config.ring_buffer_bytes,
        config: SensorConfig {
            mode: match config.mode {
                SensorMode::Agents => MODE_AGENTS,
                SensorMode::Host => MODE_HOST,
            },
            self_tgid: std::process::id(),
            pending_deny: policies.pending_deny as u32,
            _pad: 0,
        },
        cgroup_root: &host.cgroup_root,
        pin_dir: &config.pin_dir,
    })?;
    let maps = sensor.take_maps()?;
    let output = sensor.take_output()?;
    let egress_maps = sensor.take_egress()?;
    // Loading parsed the kernel's BTF twice (several MB of small allocations, all freed now):
    // hand that memory back to the system so the daemon's resident size reflects its real use.
    // SAFETY: malloc_trim only releases free heap memory; it has no other effect.
    unsafe { libc::malloc_trim(0) };

    let mut egress = EgressState::new(egress_maps, ports, config.dns.grace);
    if sensor.adopted() {
        let found = egress.adopt();
        tracing::info!(policies = found, pins = %config.pin_dir.display(), "re-adopted the pinned maps of an earlier run");
    }
    let changes = egress.apply(&policies, BootClock::boot_now_ns())?;
    egress.keep_quarantines_in(
        config.state_dir.clone(),
        registry
            .agents()
            .map(|(id, agent)| (id, agent.name.clone()))
            .collect(),
    );
    let restored = egress.restore_quarantines(!sensor.adopted(), &sensor.previous_quarantines());
    let (control, control_rx) = control::channel().map_err(|source| RunError::Io {
        what: "cannot create an eventfd".into(),
        source,
    })?;
    let records = Records::new();
    for change in &changes {
        control.send(records.policy_change(&registry, change, "start", None));
    }
    // A quarantine the maps had lost (they are new) is in force again, and logged as such.
    for (agent, quarantine) in &restored {
        let reason = format!(
            "{} (put back after a restart with new maps; quarantined by {})",
            quarantine.reason, quarantine.by
        );
        let by = crate::record::api::Requester {
            caller: "agentd",
            role: "daemon",
            transport: "restart",
            reason: &reason,
        };
        tracing::warn!(agent, reason = %quarantine.reason, "a saved quarantine is back in force");
        control.send(records.containment(&registry, *agent, true, true, &by, None));
    }

    let loss_path = config.state_dir.join(format!("loss-{}", sensor.layout()));
    let loss_baseline = if sensor.adopted() {
        loss::load(&loss_path)
    } else {
        None
    };
    let versions = egress.versions();
    let identity = Identity::new(Registry::new(&config), host.cgroup_root.clone());
    let egress = Arc::new(Mutex::new(egress));
    let actuator = Arc::new(Actuator::new(Arc::clone(&egress), host.cgroup_root.clone()));
    let webhook = match (&config.detector.webhook, config.detector.enabled) {
        (Some(settings), true) => Some(start_webhook(settings, log.signer(), &control)?),
        _ => None,
    };
    let pipeline = Pipeline::start(pipeline::Parts {
        config: &config,
        identity,
        maps,
        output,
        attached: sensor.attached(),
        log: (log, recovery),
        rotation,
        control: control_rx,
        versions: Arc::clone(&versions),
        loss_state: (loss_path, loss_baseline),
        hub: Arc::clone(&hub),
        actuator: Arc::clone(&actuator),
        webhook,
    })?;
    sensor.retire_previous();
    Ok(Started {
        config,
        pipeline,
        sensor,
        egress,
        versions,
        listeners,
        control,
        registry,
        hub,
        api,
        actuator,
        _lock: lock,
    })
}

/// Starts the alert webhook: bodies signed with the log's key, failures logged as records.
fn start_webhook(
    settings: &crate::config::detector::WebhookSettings,
    signer: &crate::log::note::NoteSigner,
    control: &ControlTx,
) -> Result<webhook::Sender, RunError> {
    let config = webhook::WebhookConfig {
        url: settings.url.clone(),
        ca: settings.ca.clone(),
        timeout: settings.timeout,
        attempts: settings.attempts,
        ..webhook::WebhookConfig::default()
    };
    let key = signer.verifier().to_string();
    let signer = signer.clone();
    let control = control.clone();
    let records = Records::new();
    webhook::spawn(
        config,
        key,
        Arc::new(move |message: &[u8]| signer.sign_bytes(message)),
        Arc::new(move |failure: webhook::Failure| {
            let mut detail = crate::json::Obj::new();
            detail
                .str("delivery", &failure.id)
                .u64("attempts", failure.attempts as u64)
                .str("error", &failure.error)
                .bool("dropped", failure.dropped);
            control.send(records.log_event("detector.webhook_failed", 4, &detail));
        }),
    )
    .map_err(|err| RunError::Io {
        what: "cannot start the alert webhook".into(),
        source: std::io::Error::other(err.to_string()),
    })
}

/// Takes the instance lock in `state_dir` (created 0700): two agentds sharing state or pins
/// would undo each other's work.
fn lock_instance(state_dir: &Path) -> Result<File, RunError> {
    let io = |what: String| move |source| RunError::Io { what, source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(format!(
            "cannot create the state directory {}",
            state_dir.display()
        )))?;
    let path = state_dir.join("agentd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(RunError::Running { path });
        }
        return Err(io(format!("cannot lock {}", path.display()))(err));
    }
    Ok(file)
}

/// Removes lapsed pins now and then.
async fn expire_pins(egress: SharedEgress) {
    let mut every = tokio::time::interval(EXPIRE_EVERY);
    loop {
        every.tick().await;
        let lapsed = egress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expire(BootClock::boot_now_ns());
        for (agent, ip) in lapsed {
            tracing::debug!(agent, %ip, "DNS pin lapsed");
        }
    }
}

/// Whether two configurations declare different identities (agents, selectors, metadata, mode):
/// those need a restart, because the kernel maps and the log's records follow them.
fn identities_differ(a: &Config, b: &Config) -> bool {
    let identities = |c: &Config| -> Vec<String> {
        c.agents
            .iter()
            .map(|agent| {
                let mut agent = agent.clone();
                agent.egress = None;
                format!("{agent:?}")
            })
            .collect()
    };
    a.mode != b.mode || a.trust_domain != b.trust_domain || identities(a) != identities(b)
}

/// Policy reloads (SIGHUP and the API's `ReloadPolicy`).
struct Reloader {
    options: RunOptions,
    current: Config,
    egress: SharedEgress,
    control: ControlTx,
    records: Records,
    registry: Arc<Registry>,
}

impl Reload for Reloader {
    /// Re-reads the configuration and policy files and puts the new policies in force,
    /// atomically; anything invalid is refused (recorded with file, line and reason) and the
    /// policies in force stay.
    fn reload(&self, by: &Requester<'_>) -> Result<Vec<PolicyChange>, ConfigError> {
        let path = self.options.config_path.as_deref();
        let current = &self.current;
        let loaded = match path {
            Some(path) => Config::load(path),
            None => Ok(Config::embedded_default()),
        };
        let policies = loaded.and_then(|mut new| {
            if self.options.host_wide {
                new.mode = SensorMode::Host;
            }
            if identities_differ(current, &new) {
                return Err(ConfigError {
                    file: new.source.clone(),
                    line: None,
                    column: None,
                    field: "agent".into(),
                    message: "the agents, their selectors or the sensor mode changed: restart agentd to apply identity changes (no policy was changed)".into(),
                });
            }
            new.policies()
        });
        let mut state = self.egress.lock().unwrap_or_else(PoisonError::into_inner);
        let refuse = |err: ConfigError, state: &EgressState<EgressMaps>| {
            tracing::error!(%err, caller = by.caller, "reload refused; the policies in force are unchanged");
            let mut record = self.records.policy_refused(&err, &state.in_force());
            by.write(&mut record.obj);
            self.control.send(record);
            Err(err)
        };
        let policies = match policies {
            Ok(policies) => policies,
            Err(err) => return refuse(err, &state),
        };
        match state.apply(&policies, BootClock::boot_now_ns()) {
            Ok(changes) => {
                if changes.is_empty() {
                    tracing::info!(caller = by.caller, "reload: no policy changed");
                }
                self.control
                    .send(self.records.policy_reload(by, changes.len()));
                for change in &changes {
                    tracing::info!(agent = change.agent, old = ?change.old, new = ?change.new, caller = by.caller, "egress policy changed");
                    self.control.send(self.records.policy_change(
                        &self.registry,
                        change,
                        "reload",
                        Some(by),
                    ));
                }
                Ok(changes)
            }
            Err(err) => {
                let error = ConfigError {
                    file: path.map_or_else(|| current.source.clone(), |p| p.display().to_string()),
                    line: None,
                    column: None,
                    field: "egress".into(),
                    message: format!(
                        "{err}: {}",
                        std::error::Error::source(&err)
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                };
                refuse(error, &state)
            }
        }
    }
}
