//! Quarantines kept beside agentd's state (`quarantines.json` in `sensor.state_dir`), so they
//! outlive a restart that starts from new maps: an upgrade that changes the maps' layout, or
//! pins removed by hand. The kernel flag is what enforces; this file is how a later agentd puts
//! it back, with who asked and why.

use std::{fs, io, os::unix::fs::PermissionsExt as _, path::Path};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const FILE: &str = "quarantines.json";

/// The file format this agentd writes and reads.
const FORMAT: u32 = 1;

/// One quarantine, by agent name (agent ids follow from names, but names are what operators
/// read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The agent's name.
    pub agent: String,
    /// Why it was quarantined.
    pub reason: String,
    /// Who asked.
    pub by: String,
    /// Since when, epoch milliseconds.
    pub since_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    quarantines: Vec<Held>,
}

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    /// It exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// It is not a quarantine file of this format.
    #[error("{path}: not a quarantine file of format {FORMAT}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The quarantines saved in `dir`; none when there is no file.
pub fn load(dir: &Path) -> Result<Vec<Held>, HeldError> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HeldError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let format = |reason: String| HeldError::Format {
        path: path.display().to_string(),
        reason,
    };
    let saved: Saved = serde_json::from_str(&text).map_err(|err| format(err.to_string()))?;
    if saved.format != FORMAT {
        return Err(format(format!("format {}", saved.format)));
    }
    Ok(saved.quarantines)
}

/// Moves an unreadable file aside (`quarantines.json.bad-<ms>`), so the next save does not
/// overwrite what an operator may still recover from it. Returns where it went.
pub fn set_aside(dir: &Path) -> std::path::PathBuf {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let aside = dir.join(format!("{FILE}.bad-{ms}"));
    if let Err(err) = fs::rename(dir.join(FILE), &aside) {
        tracing::error!(%err, "cannot move the unreadable quarantine file aside");
    }
    aside
}

/// Replaces the file in `dir` with `held` (atomically and durably, mode 0600).
pub fn save(dir: &Path, held: &[Held]) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(&Saved {
        format: FORMAT,
        quarantines: held.to_vec(),
    })
    .map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    fs::write(&tmp, text)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dir.join(FILE))?;
    // The rename itself must survive a power cut, or a released quarantine could come back.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(agent: &str) -> Held {
        Held {
            agent: agent.into(),
            reason: "incident 42".into(),
            by: "uid:0(root)".into(),
            since_ms: 1_796_000_000_000,
        }
    }

    #[test]
    fn round_trip_with_a_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Vec::new(), "no file: none");
        save(dir.path(), &[held("coder"), held("data")]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![held("coder"), held("data")]);
        let mode = fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        save(dir.path(), &[]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Vec::new());
    }

    #[test]
    fn a_damaged_or_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE),
            "{\"format\":1,\"quarantines\":[{\"agent\":",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(FILE), "{err}");
        fs::write(dir.path().join(FILE), "{\"format\":2,\"quarantines\":[]}").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format 2"), "{err}");
    }
}
