//! Start-up checks of the host, each failing with what is wrong and what to do about it, and the
//! mounts agentd needs (bpffs, tracefs) made when they are missing.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    unistd::Uid,
};

use crate::sensor::btf::VMLINUX_BTF;

/// A host that cannot run the sensor.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Not root.
    #[error(
        "agentd must run as root (it loads eBPF programs and attaches them to the cgroup root)"
    )]
    NotRoot,
    /// No BTF.
    #[error("the kernel publishes no BTF type information ({VMLINUX_BTF} is missing)")]
    NoBtf,
    /// No cgroup v2 mount.
    #[error("no cgroup v2 file system is mounted (none listed in /proc/self/mountinfo)")]
    NoCgroup2,
    /// `/proc/self/mountinfo` unreadable.
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    /// A mount agentd needs failed.
    #[error("cannot mount {fstype} at {path}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

impl PreflightError {
    /// What the operator can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            PreflightError::NotRoot => {
                "run it as root, e.g. `sudo agentd`, or as the systemd unit in deploy/systemd"
            }
            PreflightError::NoBtf => {
                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.x)"
            }
            PreflightError::NoCgroup2 => {
                "mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with \
                 systemd.unified_cgroup_hierarchy=1"
            }
            PreflightError::Mountinfo(_) => "is /proc mounted?",
            PreflightError::Mount { .. } => {
                "mount it before agentd starts (the systemd unit waits for systemd's mounts), or give agentd CAP_SYS_ADMIN"
            }
        }
    }
}

/// What start-up found.
#[derive(Debug, Clone)]
pub struct Host {
    /// Where the cgroup v2 hierarchy is mounted.
    pub cgroup_root: PathBuf,
    /// Where bpffs is mounted.
    pub bpffs: PathBuf,
}

/// One mount from `/proc/self/mountinfo`: (mount point, file system type).
fn mounts(mountinfo: &str) -> Vec<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(unescape(mount_point)), fstype.to_owned()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount point, found in mountinfo (never assumed: hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`).
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mounts(mountinfo)
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(path, _)| path)
}

fn is_mounted(mountinfo: &str, fstype: &str, path: &Path) -> bool {
    mounts(mountinfo)
        .iter()
        .any(|(p, t)| t == fstype && p == path)
}

fn ensure_mount(mountinfo: &str, fstype: &'static str, path: &Path) -> Result<(), PreflightError> {
    if is_mounted(mountinfo, fstype, path) {
        return Ok(());
    }
    let _ = fs::create_dir_all(path);
    tracing::info!(fstype, path = %path.display(), "mounting");
    mount(
        Some(fstype),
        path,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| PreflightError::Mount {
        fstype,
        path: path.to_owned(),
        source,
    })
}

/// Runs every check and makes the mounts agentd needs.
pub fn check() -> Result<Host, PreflightError> {
    if !Uid::effective().is_root() {
        return Err(PreflightError::NotRoot);
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(PreflightError::Mountinfo)?;
    let cgroup_root = find_cgroup2(&mountinfo).ok_or(PreflightError::NoCgroup2)?;
    let bpffs = PathBuf::from("/sys/fs/bpf");
    ensure_mount(&mountinfo, "bpf", &bpffs)?;
    // Classic tracepoints are found through tracefs.
    if crate::sensor::tracefs_root().is_none() {
        ensure_mount(&mountinfo, "tracefs", Path::new("/sys/kernel/tracing"))?;
    }
    Ok(Host { cgroup_root, bpffs })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
30 22 0:28 / /sys/fs/bpf rw shared:14 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            find_cgroup2(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_on_a_unified_host() {
        let unified = "26 22 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_is_none() {
        let v1 = "27 25 0:25 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2(v1), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        let spaced = "26 22 0:24 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(spaced), Some(PathBuf::from("/mnt/with space")));
    }

    #[test]
    fn bpffs_detection() {
        assert!(is_mounted(HYBRID, "bpf", Path::new("/sys/fs/bpf")));
        assert!(!is_mounted(HYBRID, "bpf", Path::new("/sys/fs/bpf2")));
    }
}
