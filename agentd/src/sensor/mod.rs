//! Loading and attaching the eBPF programs, and handing their maps to the rest of agentd.
//!
//! The object is built by `build.rs` and embedded. Loading resolves kernel struct offsets from
//! BTF ([`btf`]), sizes the ring buffer, then loads and attaches every program of the table in
//! [`PROGRAMS`]. Any refusal names the program, what it attaches to, and why.

pub mod btf;
pub mod decode;
mod tracefs;

pub use tracefs::tracefs_root;

use std::{
    fmt,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, ProgramError, TracePoint, links::FdLink,
    },
};
use sensor_common::{
    config::SensorConfig,
    egress::{AgentPolicy, EgressKey, EgressValue},
    event::InodeId,
    identity::{AgentRef, Binding, ExeRule},
    names::{self, programs as prog},
};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

/// What a program attaches to.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// A BTF-enabled tracepoint (`tp_btf/NAME`).
    BtfTracepoint(&'static str),
    /// Classic tracepoints in one category (one program may serve several).
    Tracepoint(&'static str, &'static [&'static str]),
    /// A cgroup socket-address hook, attached at the cgroup v2 root; the attach type comes from
    /// the program's section.
    CgroupSockAddr,
}

/// Every program and its hook. The order is the attach order: process hooks first, so no
/// process escapes its binding while the rest attach.
pub const PROGRAMS: &[(&str, Hook)] = &[
    (prog::PROC_FORK, Hook::BtfTracepoint("sched_process_fork")),
    (prog::PROC_EXEC, Hook::BtfTracepoint("sched_process_exec")),
    (prog::PROC_EXIT, Hook::BtfTracepoint("sched_process_exit")),
    (
        prog::CGROUP_MKDIR,
        Hook::Tracepoint("cgroup", &["cgroup_mkdir"]),
    ),
    (
        prog::CGROUP_RMDIR,
        Hook::Tracepoint("cgroup", &["cgroup_rmdir"]),
    ),
    (
        prog::FILE_EXIT,
        Hook::Tracepoint(
            "syscalls",
            &[
                "sys_exit_open",
                "sys_exit_openat",
                "sys_exit_openat2",
                "sys_exit_creat",
                "sys_exit_unlink",
                "sys_exit_unlinkat",
                "sys_exit_rename",
                "sys_exit_renameat",
                "sys_exit_renameat2",
            ],
        ),
    ),
    (
        prog::FILE_ENTER_OPEN,
        Hook::Tracepoint("syscalls", &["sys_enter_open"]),
    ),
    (
        prog::FILE_ENTER_OPENAT,
        Hook::Tracepoint("syscalls", &["sys_enter_openat"]),
    ),
    (
        prog::FILE_ENTER_OPENAT2,
        Hook::Tracepoint("syscalls", &["sys_enter_openat2"]),
    ),
    (
        prog::FILE_ENTER_CREAT,
        Hook::Tracepoint("syscalls", &["sys_enter_creat"]),
    ),
    (
        prog::FILE_ENTER_UNLINK,
        Hook::Tracepoint("syscalls", &["sys_enter_unlink"]),
    ),
    (
        prog::FILE_ENTER_UNLINKAT,
        Hook::Tracepoint("syscalls", &["sys_enter_unlinkat"]),
    ),
    (
        prog::FILE_ENTER_RENAME,
        Hook::Tracepoint("syscalls", &["sys_enter_rename"]),
    ),
    (
        prog::FILE_ENTER_RENAMEAT,
        Hook::Tracepoint("syscalls", &["sys_enter_renameat"]),
    ),
    (
        prog::FILE_ENTER_RENAMEAT2,
        Hook::Tracepoint("syscalls", &["sys_enter_renameat2"]),
    ),
    (
        prog::NET_CONNECT_EXIT,
        Hook::Tracepoint("syscalls", &["sys_exit_connect"]),
    ),
    (prog::NET_CONNECT4, Hook::CgroupSockAddr),
    (prog::NET_CONNECT6, Hook::CgroupSockAddr),
    (prog::NET_SENDMSG4, Hook::CgroupSockAddr),
    (prog::NET_SENDMSG6, Hook::CgroupSockAddr),
    (prog::NET_RECVMSG4, Hook::CgroupSockAddr),
    (prog::NET_RECVMSG6, Hook::CgroupSockAddr),
    (
        prog::NET_LISTEN_EXIT,
        Hook::Tracepoint("syscalls", &["sys_exit_listen"]),
    ),
    (
        prog::NET_LISTEN_ENTER,
        Hook::Tracepoint("syscalls", &["sys_enter_listen"]),
    ),
    (
        prog::NET_ACCEPT_EXIT,
        Hook::Tracepoint("syscalls", &["sys_exit_accept", "sys_exit_accept4"]),
    ),
];

/// Why the sensor could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// BTF could not be read.
    #[error("cannot read the kernel's BTF type information")]
    Btf(#[source] btf::BtfError),
    /// BTF lacks fields the programs need.
    #[error("the kernel's BTF lacks fields the sensor reads: {}", .0.join(", "))]
    MissingOffsets(Vec<&'static str>),
    /// The object could not be parsed, or its maps created.
    #[error("cannot load the eBPF object")]
    Object(#[source] aya::EbpfError),
    /// A program is missing from the object (a build problem).
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map is missing from the object, or has the wrong type.
    #[error("map `{name}` is missing from the eBPF object or has an unexpected type")]
    Map {
        /// The map.
        name: &'static str,
        /// The cause, if aya gave one.
        #[source]
        source: Option<aya::maps::MapError>,
    },
    /// The kernel refused to load or attach a program.
    #[error("the kernel refused program `{program}` ({target}): {reason}")]
    Program {
        /// The program.
        program: &'static str,
        /// What it attaches to.
        target: String,
        /// What went wrong, with the verifier's last words when it spoke.
        reason: String,
    },
    /// A tracepoint's record layout differs from what the programs read.
    #[error("tracepoint {tracepoint} has an unexpected format: {detail}")]
    TracepointFormat {
        /// `category/name`.
        tracepoint: String,
        /// The difference.
        detail: String,
    },
    /// Pinning in bpffs failed.
    #[error("cannot pin {what} at {path}")]
    Pin {
        /// What was being pinned.
        what: String,
        /// Where.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// The cgroup v2 root could not be opened.
    #[error("cannot open the cgroup v2 root {path}")]
    CgroupRoot {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SensorError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SensorError::Btf(_) | SensorError::MissingOffsets(_) => Some(
                "agentd needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (/sys/kernel/btf/vmlinux)",
            ),
            SensorError::Program { .. } | SensorError::Object(_) => Some(
                "agentd needs root with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_SYS_ADMIN before Linux 5.8); a kernel in \
                 lockdown 'confidentiality' mode or an LSM policy can also refuse BPF programs",
            ),
            SensorError::MissingProgram(_) | SensorError::Map { .. } => {
                Some("the embedded eBPF object does not match this agentd: rebuild it")
            }
            _ => None,
        }
    }
}

/// Load-time settings.
pub struct LoadOptions<'a> {
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// The sensor's run-time settings.
    pub config: SensorConfig,
    /// The cgroup v2 mount point.
    pub cgroup_root: &'a Path,
    /// The bpffs directory where maps and links are pinned.
    pub pin_dir: &'a Path,
}

/// Version of the record layouts the programs write (`sensor_common::event`): part of the
/// maps' identity, so a restarted agentd never reads a ring buffer written in another layout.
const WIRE_VERSION: u32 = 2;

/// An identifier of the map layout: the wire version and every map's type, key and value sizes,
/// capacity and flags. Maps pinned under the same identifier are re-adopted as they are.
pub fn layout_id(ring_bytes: u32) -> String {
    use sha2::Digest as _;
    let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
    let mut maps: Vec<(&String, &aya_obj::Map)> = object
        .maps
        .iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .collect();
    maps.sort_by_key(|(name, _)| *name);
    let mut hasher = sha2::Sha256::new();
    hasher.update(WIRE_VERSION.to_le_bytes());
    hasher.update(ring_bytes.to_le_bytes());
    for (name, map) in maps {
        hasher.update(name.as_bytes());
        for v in [
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries(),
            map.map_flags(),
        ] {
            hasher.update(v.to_le_bytes());
        }
    }
    hex::encode(&hasher.finalize()[..8])
}

/// A program that is attached.
#[derive(Clone, Debug)]
pub struct Attached {
    /// Program name.
    pub program: &'static str,
    /// What it is attached to.
    pub target: String,
}

/// The loaded and attached sensor. Its links and maps are pinned: dropping it (or agentd
/// dying) leaves every program attached, so enforcement and identity binding go on; the next
/// agentd re-adopts the maps and replaces the links without a gap (see [`Sensor::load`]).
pub struct Sensor {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    adopted: bool,
    layout: String,
    pins: Pins,
}

/// Where this run pinned its maps and links.
#[derive(Debug, Clone)]
struct Pins {
    root: PathBuf,
    maps: PathBuf,
    links: PathBuf,
}

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Refuses a pin directory outside bpffs (pinning there fails with an obscure error).
fn check_bpffs(dir: &Path) -> Result<(), SensorError> {
    let fs = nix::sys::statfs::statfs(dir).map_err(|err| SensorError::Pin {
        what: "the pin directory".into(),
        path: dir.to_owned(),
        reason: err.to_string(),
    })?;
    if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(SensorError::Pin {
            what: "the pin directory".into(),
            path: dir.to_owned(),
            reason: "it is not on a bpf file system: set [sensor] pin_dir below /sys/fs/bpf".into(),
        });
    }
    Ok(())
}

/// Removes everything agentd pinned under `pin_dir`: the programs detach and the maps are freed
/// (egress enforcement stops). For uninstalling, and for tests.
pub fn remove_pins(pin_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The kernel maps agentd writes to bind identities.
pub struct KernelMaps {
    /// tgid → binding.
    pub bindings: HashMap<MapData, u32, Binding>,
    /// cgroup id → agent.
    pub cgroup_agents: HashMap<MapData, u64, AgentRef>,
    /// cgroup id → creation time, while unresolved.
    pub cgroup_pending: HashMap<MapData, u64, u64>,
    /// Executable inode → agent.
    pub exe_agents: HashMap<MapData, InodeId, ExeRule>,
    /// uid → agent.
    pub uid_agents: HashMap<MapData, u32, AgentRef>,
    /// gid → agent.
    pub gid_agents: HashMap<MapData, u32, AgentRef>,
}

/// The egress maps (policy, allowlists).
pub struct EgressMaps {
    /// agent id → policy settings.
    pub policy: HashMap<MapData, u32, AgentPolicy>,
    /// The allowlists.
    pub rules: LpmTrie<MapData, EgressKey, EgressValue>,
    /// The run-time settings (agentd updates `pending_deny` with the policy).
    pub config: Array<MapData, SensorConfig>,
}

/// The sensor's output: the ring buffer and the loss counters.
pub struct SensorOutput {
    /// Every record.
    pub events: RingBuf<MapData>,
    /// Per-CPU loss counters.
    pub loss: PerCpuArray<MapData, u64>,
    /// The pipeline's "asleep" flag, read by the programs.
    pub reader: Array<MapData, u32>,
}

impl fmt::Debug for Sensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sensor")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

fn program_error(program: &'static str, target: String, err: ProgramError) -> SensorError {
    let reason = match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                format!("load failed: {io_error}")
            } else {
                format!(
                    "load failed: {io_error}; verifier log (last lines):\n    {}",
                    tail.join("\n    ")
                )
            }
        }
        other => {
            let mut reason = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(cause) = source {
                reason.push_str(": ");
                reason.push_str(&cause.to_string());
                source = cause.source();
            }
            reason
        }
    };
    SensorError::Program {
        program,
        target,
        reason,
    }
}

impl Sensor {
    /// Loads the programs into the kernel and attaches every one of them, pinning maps and
    /// links under `pin_dir`.
    ///
    /// Maps pinned by an earlier run with the same layout are re-adopted (bindings, allowlists,
    /// loss counters and the ring buffer's unread records carry over). The new links are
    /// attached and pinned *before* the earlier run's links are unpinned, so at no moment is a
    /// hook missing; for a moment both run, which the hooks tolerate (the same decision, a
    /// binding written twice).
    pub fn load(options: &LoadOptions<'_>) -> Result<Self, SensorError> {
        let vmlinux = btf::Btf::from_file(Path::new(btf::VMLINUX_BTF)).map_err(SensorError::Btf)?;
        let (offsets, missing) = vmlinux.kernel_offsets();
        if !missing.is_empty() {
            return Err(SensorError::MissingOffsets(missing));
        }
        tracefs::check_cgroup_format()?;
        let aya_btf = aya::Btf::from_sys_fs().map_err(|err| {
            SensorError::Btf(btf::BtfError::Read {
                path: btf::VMLINUX_BTF.to_owned(),
                source: std::io::Error::other(err.to_string()),
            })
        })?;

        let pin_error = |what: &str, path: &Path, reason: String| SensorError::Pin {
            what: what.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let layout = layout_id(options.ring_bytes);
        let maps_dir = options.pin_dir.join(format!("maps-{layout}"));
        let adopted = maps_dir.is_dir();
        std::fs::create_dir_all(&maps_dir)
            .map_err(|err| pin_error("maps", &maps_dir, err.to_string()))?;
        check_bpffs(options.pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(names::EVENTS, options.ring_bytes)
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)
            .map_err(SensorError::Object)?;
        // Links of this run go to a directory of their own; older runs' links are removed once
        // every new link is pinned.
        let generation = format!("{:016x}", crate::clock::BootClock::wall_now_ns());
        let links_root = options.pin_dir.join("links");
        let links_dir = links_root.join(&generation);
        std::fs::create_dir_all(&links_dir)
            .map_err(|err| pin_error("links", &links_dir, err.to_string()))?;
        let mut link_count = 0usize;
        let mut pin = |name: &'static str, link: FdLink| -> Result<(), SensorError> {
            link_count += 1;
            let path = links_dir.join(format!("{name}-{link_count}"));
            link.pin(&path)
                .map(drop)
                .map_err(|err| pin_error(name, &path, err.to_string()))
        };

        let mut config: Array<&mut MapData, SensorConfig> = ebpf
            .map_mut(names::CONFIG)
            .ok_or(SensorError::Map {
                name: names::CONFIG,
                source: None,
            })?
            .try_into()
            .map_err(|source| SensorError::Map {
                name: names::CONFIG,
                source: Some(source),
            })?;
        config
            .set(0, options.config, 0)
            .map_err(|source| SensorError::Map {
                name: names::CONFIG,
                source: Some(source),
            })?;

        let cgroup = File::open(options.cgroup_root).map_err(|source| SensorError::CgroupRoot {
            path: options.cgroup_root.to_owned(),
            source,
        })?;
        let mut attached = Vec::new();
        for &(name, hook) in PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or(SensorError::MissingProgram(name))?;
            match hook {
                Hook::BtfTracepoint(tp) => {
                    let target = format!("tp_btf/{tp}");
                    let program: &mut BtfTracePoint = program
                        .try_into()
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    program
                        .load(tp, &aya_btf)
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    let id = program
                        .attach()
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    let link = program
                        .take_link(id)
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    pin(name, link.into())?;
                    attached.push(Attached {
                        program: name,
                        target,
                    });
                }
                Hook::Tracepoint(category, tracepoints) => {
                    let program: &mut TracePoint = program.try_into().map_err(|err| {
                        program_error(name, format!("tracepoint/{category}"), err)
                    })?;
                    program.load().map_err(|err| {
                        program_error(name, format!("tracepoint/{category}"), err)
                    })?;
                    for tp in tracepoints {
                        let target = format!("tracepoint/{category}/{tp}");
                        let id = program
                            .attach(category, tp)
                            .map_err(|err| program_error(name, target.clone(), err))?;
                        let link = program
                            .take_link(id)
                            .map_err(|err| program_error(name, target.clone(), err))?;
                        let link = FdLink::try_from(link).map_err(|err| {
                            pin_error(name, &links_dir, format!("not an fd link: {err}"))
                        })?;
                        pin(name, link)?;
                        attached.push(Attached {
                            program: name,
                            target,
                        });
                    }
                }
                Hook::CgroupSockAddr => {
                    let target = format!("cgroup {} ({name})", options.cgroup_root.display());
                    let program: &mut CgroupSockAddr = program
                        .try_into()
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    program
                        .load()
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    // A bpf_link attachment always coexists with other programs at the root (the
                    // kernel rejects the BPF_F_ALLOW_MULTI flag on links, hence `Single`, which
                    // passes no flag).
                    let id = program
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    let link = program
                        .take_link(id)
                        .map_err(|err| program_error(name, target.clone(), err))?;
                    let link = FdLink::try_from(link).map_err(|err| {
                        pin_error(name, &links_dir, format!("not an fd link: {err}"))
                    })?;
                    pin(name, link)?;
                    attached.push(Attached {
                        program: name,
                        target,
                    });
                }
            }
        }
        Ok(Self {
            ebpf,
            attached,
            adopted,
            layout,
            pins: Pins {
                root: options.pin_dir.to_owned(),
                maps: maps_dir,
                links: links_dir,
            },
        })
    }

    /// Whether the maps were pinned by an earlier run and re-adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The map layout id (see [`layout_id`]).
    pub fn layout(&self) -> &str {
        &self.layout
    }

    /// Unpins the links of earlier runs (and maps of another layout). Call it once this run's
    /// maps hold the identities and policies: until then the earlier programs, attached beside
    /// this run's, keep enforcing from their own maps.
    pub fn retire_previous(&self) {
        let links_root = self.pins.links.parent().unwrap_or(&self.pins.root);
        for entry in std::fs::read_dir(links_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path() != self.pins.links {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        for entry in std::fs::read_dir(&self.pins.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("maps-") && entry.path() != self.pins.maps {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The agents quarantined in the maps of an earlier run with another layout (still pinned
    /// until [`Sensor::retire_previous`]): an upgrade that changes the maps must not lift a
    /// quarantine, including one set before agentd kept them in its state directory. A map
    /// whose key or value has another size is skipped, with a warning.
    pub fn previous_quarantines(&self) -> Vec<u32> {
        let mut quarantined = Vec::new();
        for entry in std::fs::read_dir(&self.pins.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("maps-") || entry.path() == self.pins.maps {
                continue;
            }
            let path = entry.path().join(names::AGENT_POLICY);
            let policies = aya::maps::MapData::from_pin(&path)
                .map(aya::maps::Map::HashMap)
                .and_then(HashMap::<MapData, u32, AgentPolicy>::try_from);
            match policies {
                Ok(policies) => quarantined.extend(
                    policies
                        .iter()
                        .flatten()
                        .filter(|(_, policy)| policy.quarantined != 0)
                        .map(|(agent, _)| agent),
                ),
                Err(err) if path.exists() => {
                    tracing::warn!(path = %path.display(), %err, "cannot read an earlier run's quarantines");
                }
                Err(_) => {}
            }
        }
        quarantined.sort_unstable();
        quarantined.dedup();
        quarantined
    }

    /// The attached programs and their targets.
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    fn take<T>(&mut self, name: &'static str) -> Result<T, SensorError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(SensorError::Map { name, source: None })?;
        T::try_from(map).map_err(|source| SensorError::Map {
            name,
            source: Some(source),
        })
    }

    /// Takes the identity maps (once).
    pub fn take_maps(&mut self) -> Result<KernelMaps, SensorError> {
        Ok(KernelMaps {
            bindings: self.take(names::PROC_BINDINGS)?,
            cgroup_agents: self.take(names::CGROUP_AGENTS)?,
            cgroup_pending: self.take(names::CGROUP_PENDING)?,
            exe_agents: self.take(names::EXE_AGENTS)?,
            uid_agents: self.take(names::UID_AGENTS)?,
            gid_agents: self.take(names::GID_AGENTS)?,
        })
    }

    /// Takes the egress maps (once).
    pub fn take_egress(&mut self) -> Result<EgressMaps, SensorError> {
        Ok(EgressMaps {
            policy: self.take(names::AGENT_POLICY)?,
            rules: self.take(names::EGRESS_RULES)?,
            config: self.take(names::CONFIG)?,
        })
    }

    /// Takes the ring buffer and loss counters (once).
    pub fn take_output(&mut self) -> Result<SensorOutput, SensorError> {
        Ok(SensorOutput {
            events: self.take(names::EVENTS)?,
            loss: self.take(names::LOSS)?,
            reader: self.take(names::READER)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object holds every program of the table and every map named in
    /// `sensor_common::names`: a drift between the two sides fails here, without root.
    #[test]
    fn object_has_every_program_and_map() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for (name, _) in PROGRAMS {
            assert!(
                object.programs.contains_key(*name),
                "program {name} missing"
            );
        }
        for name in [
            names::EVENTS,
            names::LOSS,
            names::READER,
            names::CONFIG,
            names::PROC_BINDINGS,
            names::CGROUP_AGENTS,
            names::CGROUP_PENDING,
            names::EXE_AGENTS,
            names::UID_AGENTS,
            names::GID_AGENTS,
            names::FILE_PENDING,
            names::NET_PENDING,
            names::FILE_SCRATCH,
            names::AGENT_POLICY,
            names::EGRESS_RULES,
            names::DNS_ORIGINAL,
        ] {
            assert!(object.maps.contains_key(name), "map {name} missing");
        }
        assert_eq!(
            object.programs.len(),
            PROGRAMS.len(),
            "a program in the object is not attached"
        );
    }
}
