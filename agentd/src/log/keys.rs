//! The log's signing key on disk.
//!
//! The private key lives in one file, mode 0600, owned by the user agentd runs as; agentd refuses
//! a key file anyone else can read (it would let them sign a forged log). The public key is
//! written next to it (`.pub`, mode 0644) in the verifier format auditors pass to
//! `agentctl verify --key`.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::note::{NoteError, NoteSigner, NoteVerifier};

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// File system trouble.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The key file's mode lets others read it.
    #[error(
        "{path} is readable by other users (mode {mode:04o}); the log's signing key must be mode 0600"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The key file belongs to another user.
    #[error("{path} is owned by uid {owner}, not by agentd's uid {uid}")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// agentd's uid.
        uid: u32,
    },
    /// The key file's contents are not a key.
    #[error("{path} does not hold a signing key")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: NoteError,
    },
    /// The key is named for another log.
    #[error("{path} is the key of log {found:?}, not of this log ({expected:?})")]
    WrongLog {
        /// The file.
        path: PathBuf,
        /// The key's name.
        found: String,
        /// The log's origin.
        expected: String,
    },
}

impl KeyError {
    /// What the operator can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            KeyError::Permissions { .. } | KeyError::Owner { .. } => {
                "fix it with `chown root:root KEY && chmod 0600 KEY`, and rotate the key if others may have read it"
            }
            KeyError::WrongLog { .. } => {
                "point `log.key` at this log's key, or `log.dir` at the key's log"
            }
            _ => "check the `log.key` setting and the file",
        }
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// 32 bytes from the kernel's random source.
fn random_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        // SAFETY: the pointer and length describe the unfilled part of `seed`.
        let n =
            unsafe { libc::getrandom(seed[filled..].as_mut_ptr().cast(), seed.len() - filled, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(seed)
}

/// The public key file next to a private key file.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Checks that a private key file is private: mode without group/other bits, owned by us.
pub fn check_private(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(io_error("read", path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(KeyError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

/// Loads the key at `path`, named `name`; creates it if the file does not exist. Returns the
/// signer and whether it was created.
pub fn load_or_create(path: &Path, name: &str) -> Result<(NoteSigner, bool), KeyError> {
    if path.exists() {
        return load(path, name).map(|signer| (signer, false));
    }
    let signer = NoteSigner::new(name, random_seed().map_err(io_error("generate", path))?)
        .map_err(|source| KeyError::Malformed {
            path: path.to_owned(),
            source,
        })?;
    write_private(path, &signer)?;
    Ok((signer, true))
}

/// Loads the key at `path` and checks it is named `name`.
pub fn load(path: &Path, name: &str) -> Result<NoteSigner, KeyError> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(io_error("read", path))?;
    let signer = NoteSigner::parse(&text).map_err(|source| KeyError::Malformed {
        path: path.to_owned(),
        source,
    })?;
    if signer.name() != name {
        return Err(KeyError::WrongLog {
            path: path.to_owned(),
            found: signer.name().to_owned(),
            expected: name.to_owned(),
        });
    }
    write_public(path, &signer.verifier())?;
    Ok(signer)
}

/// Writes a new private key file (0600, created exclusively) and its public key.
pub fn write_private(path: &Path, signer: &NoteSigner) -> Result<(), KeyError> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("create", dir))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    // The umask cannot widen 0600, but make sure.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error("chmod", path))?;
    file.write_all(format!("{}\n", signer.to_private_string()).as_bytes())
        .map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("sync", path))?;
    write_public(path, &signer.verifier())
}

/// Writes the public key next to `private` (atomically, mode 0644).
pub fn write_public(private: &Path, verifier: &NoteVerifier) -> Result<(), KeyError> {
    let public = public_path(private);
    let text = format!("{verifier}\n");
    if fs::read_to_string(&public).is_ok_and(|existing| existing == text) {
        return Ok(());
    }
    let tmp = public.with_extension("pub.tmp");
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_error("chmod", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("sync", &tmp))?;
    fs::rename(&tmp, &public).map_err(io_error("rename", &public))
}

/// Moves the current key aside (`<key>.retired-<key id>`, still 0600) and creates a new one with
/// the same name. Returns (old, new).
pub fn rotate(path: &Path, name: &str) -> Result<(NoteSigner, NoteSigner), KeyError> {
    let old = load(path, name)?;
    let retired = PathBuf::from(format!(
        "{}.retired-{}",
        path.display(),
        hex::encode(old.verifier().id())
    ));
    fs::rename(path, &retired).map_err(io_error("retire", path))?;
    let new = NoteSigner::new(name, random_seed().map_err(io_error("generate", path))?).map_err(
        |source| KeyError::Malformed {
            path: path.to_owned(),
            source,
        },
    )?;
    write_private(path, &new)?;
    Ok((old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_key_then_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/log.key");
        let (created, fresh) = load_or_create(&path, "host/custos/1").unwrap();
        assert!(fresh);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let public = fs::read_to_string(public_path(&path)).unwrap();
        assert_eq!(public.trim(), created.verifier().to_string());
        let (loaded, fresh) = load_or_create(&path, "host/custos/1").unwrap();
        assert!(!fresh);
        assert_eq!(loaded.verifier(), created.verifier());
    }

    #[test]
    fn refuses_a_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        load_or_create(&path, "n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load(&path, "n"),
            Err(KeyError::Permissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn refuses_another_logs_key_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        load_or_create(&path, "a").unwrap();
        assert!(matches!(load(&path, "b"), Err(KeyError::WrongLog { .. })));
        fs::write(&path, "hello").unwrap();
        assert!(matches!(load(&path, "a"), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn rotation_keeps_the_old_key_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let (first, _) = load_or_create(&path, "n").unwrap();
        let (old, new) = rotate(&path, "n").unwrap();
        assert_eq!(old.verifier(), first.verifier());
        assert_ne!(new.verifier(), old.verifier());
        assert_eq!(load(&path, "n").unwrap().verifier(), new.verifier());
        let retired = dir.path().join(format!(
            "log.key.retired-{}",
            hex::encode(old.verifier().id())
        ));
        assert_eq!(
            fs::metadata(retired).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
