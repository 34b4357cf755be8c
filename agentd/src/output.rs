//! The JSON-lines export of the log: every record the log commits, as one line, to a file and,
//! on request, to standard output. The log is the source of truth; this is a convenience copy.
//!
//! The file is opened for appending with mode 0640 in a directory created with mode 0750: the
//! records name processes, paths and peers, which are not for every local user to read.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// A records file could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write records to {path}")]
pub struct SinkError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// The JSON-lines output.
pub struct EventSink {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    stdout: Option<io::Stdout>,
    line: Vec<u8>,
}

impl EventSink {
    /// Opens (creating if needed) the file at `path`; `stdout` copies every record there too.
    pub fn open(path: &Path, stdout: bool) -> Result<Self, SinkError> {
        let error = |source| SinkError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(error)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(error)?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(BufWriter::with_capacity(1 << 16, file)),
            stdout: stdout.then(io::stdout),
            line: Vec::with_capacity(1024),
        })
    }

    /// Standard output only.
    pub fn stdout() -> Self {
        Self {
            path: PathBuf::from("<stdout>"),
            file: None,
            stdout: Some(io::stdout()),
            line: Vec::with_capacity(1024),
        }
    }

    /// Writes one record (its JSON bytes) as one line.
    pub fn write(&mut self, record: &[u8]) -> Result<(), SinkError> {
        self.line.clear();
        self.line.extend_from_slice(record);
        self.line.push(b'\n');
        if let Some(file) = &mut self.file {
            file.write_all(&self.line).map_err(|source| SinkError {
                path: self.path.clone(),
                source,
            })?;
        }
        if let Some(stdout) = &self.stdout {
            // A closed stdout (the reader went away) must not stop the file output.
            let _ = stdout.lock().write_all(&self.line);
        }
        Ok(())
    }

    /// Pushes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(stdout) = &self.stdout {
            let _ = stdout.lock().flush();
        }
        match &mut self.file {
            Some(file) => file.flush().map_err(|source| SinkError {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_lines_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.jsonl");
        let mut sink = EventSink::open(&path, false).unwrap();
        sink.write(br#"{"a":1}"#).unwrap();
        sink.write(br#"{"b":"x"}"#).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":\"x\"}\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "others must not read the records");
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode & 0o007, 0);
    }
}
