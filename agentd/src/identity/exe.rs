//! Executable selectors: hash the file, and name its inode the way the kernel does.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::Path,
};

use sensor_common::event::InodeId;
use sha2::{Digest, Sha256};

/// What the kernel sees of a file at exec: its inode and ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Device and inode, with the device in the kernel's encoding.
    pub inode: InodeId,
    /// ctime seconds.
    pub ctime_sec: i64,
    /// ctime nanoseconds.
    pub ctime_nsec: u32,
}

/// The kernel's `dev_t` for a user-space `st_dev`: `MAJOR << 20 | MINOR` (`include/linux/kdev_t.h`).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev) as u32;
    let minor = libc::minor(st_dev) as u32;
    (major << 20) | (minor & 0xfffff)
}

/// The stamp of the file at `path` (following symlinks, as exec does).
pub fn stamp(path: &Path) -> io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    Ok(FileStamp {
        inode: InodeId {
            dev: kernel_dev(meta.dev()),
            _pad: 0,
            ino: meta.ino(),
        },
        ctime_sec: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
    })
}

/// Largest executable agentd hashes (SPIRE caps hashing too: a huge file is a denial of service).
pub const MAX_HASHED_BYTES: u64 = 1 << 30;

/// SHA-256 of the file's contents, and the stamp taken before and after reading it: if the two
/// differ the file changed while being read and the hash is worthless.
pub fn hash(path: &Path) -> io::Result<([u8; 32], FileStamp)> {
    let before = stamp(path)?;
    let mut file = File::open(path)?;
    if file.metadata()?.len() > MAX_HASHED_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_HASHED_BYTES} bytes"
        )));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let after = stamp(path)?;
    if before != after {
        return Err(io::Error::other(
            "the file changed while it was being hashed",
        ));
    }
    Ok((hasher.finalize().into(), after))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn hashes_and_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").unwrap();
        let (digest, stamp1) = hash(&path).unwrap();
        assert_eq!(
            hex::encode(digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        let stamp2 = stamp(&path).unwrap();
        assert_eq!(stamp1.inode, stamp2.inode);
        assert_ne!(
            (stamp1.ctime_sec, stamp1.ctime_nsec),
            (stamp2.ctime_sec, stamp2.ctime_nsec)
        );
    }

    #[test]
    fn kernel_dev_encoding() {
        // 8:1 (sda1) is 0x801 in user space and 0x800001 in the kernel.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 3)), (259 << 20) | 3);
    }
}
