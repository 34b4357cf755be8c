//! The log writer: the single appender of a log directory.
//!
//! # Durability (the fsync policy)
//!
//! - Records are staged in memory and committed in batches (each drain of the ring buffer): one
//!   `write` per file per batch. A committed record has reached the kernel's page cache, so it
//!   survives agentd crashing, but not yet a power loss.
//! - Before a checkpoint is signed, the segment, its index and the tile file are `fdatasync`ed;
//!   the signed checkpoint is then appended to `checkpoints` and synced. So everything a signed
//!   checkpoint covers is on disk before the signature exists, and after a crash or power loss
//!   nothing a checkpoint covered can be missing. What can be lost is the tail written after the
//!   last checkpoint (at most one checkpoint interval, one second by default); start-up finds
//!   and repairs a torn tail and records what it repaired.
//! - A failed write (a full disk) never leaves a partial frame: the files are truncated back to
//!   the last complete batch, the batch's records are counted by kind, and the log is in
//!   *outage* until a write succeeds again; the first record written after it says what was lost.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use super::{
    files::{self, TILE_LEAVES},
    merkle::{Frontier, Hash, NodeSource, root_of},
    note::{Checkpoint, NoteSigner, SignedNote},
    reader::{self, SegmentInfo},
    segment::{self, FrameReader, INDEX_ENTRY},
};
use crate::json::Obj;

/// How the log is written.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The directory.
    pub dir: PathBuf,
    /// The origin to create a new log with (an existing log keeps its own).
    pub origin: String,
    /// Start a new segment past this size.
    pub segment_bytes: u64,
    /// The longest a committed record waits for a signed checkpoint (the log signs once the
    /// oldest unsigned record is half this old, so scheduling delays stay within the bound).
    pub checkpoint_interval: Duration,
    /// Delete whole segments older than this (only if a checkpoint covers them).
    pub retention_age: Option<Duration>,
    /// Delete the oldest whole segments while the log is larger than this (same rule).
    pub retention_bytes: Option<u64>,
}

/// Why the log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
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
    /// Reading the existing log failed.
    #[error(transparent)]
    Read(#[from] reader::ReadError),
    /// The directory holds another log.
    #[error("{dir} holds log {found:?}; agentd is configured for {configured:?}")]
    OriginMismatch {
        /// The directory.
        dir: PathBuf,
        /// Its origin.
        found: String,
        /// The configured one.
        configured: String,
    },
    /// The log is inconsistent with its own signed checkpoint: leaves it signed are gone or
    /// different. agentd will not append to it (that would sign a fork).
    #[error("{dir}: {detail}")]
    Inconsistent {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A write failed; the log is in outage (see the module documentation).
    #[error("writing the log failed; records are counted until writing works again")]
    Outage(#[source] io::Error),
    /// A checkpoint could not be made durable; the records stay written and the next attempt
    /// signs them.
    #[error("cannot write a checkpoint; the next attempt will sign what is written")]
    Sign(#[source] io::Error),
}

impl LogError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LogError::OriginMismatch { .. } => {
                Some("point `log.dir` at an empty directory or at this log's own directory")
            }
            LogError::Inconsistent { .. } => Some(
                "the log no longer matches what it signed: preserve it for investigation (`agentctl verify` names the \
                 damage), move it aside, and start a new log",
            ),
            LogError::Outage(_) | LogError::Sign(_) => {
                Some("free space on the log's file system; agentd resumes by itself")
            }
            _ => None,
        }
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What start-up found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The log was created now.
    pub created: bool,
    /// Leaves found.
    pub size: u64,
    /// Size of the last signed checkpoint found.
    pub checkpoint_size: u64,
    /// Bytes cut from the end of the last segment (a torn or damaged frame).
    pub torn_bytes: u64,
    /// Why they were cut.
    pub torn_reason: Option<String>,
    /// Index entries rebuilt or cut.
    pub index_repaired: u64,
    /// Bytes cut from the end of the checkpoints file.
    pub checkpoint_torn_bytes: u64,
    /// The last leaf, if any (the pipeline reads whether the last run stopped cleanly).
    pub last_leaf: Option<Vec<u8>>,
}

impl Recovery {
    /// Whether anything was repaired.
    pub fn repaired(&self) -> bool {
        self.torn_bytes > 0 || self.index_repaired > 0 || self.checkpoint_torn_bytes > 0
    }
}

/// An ongoing outage: what could not be written.
#[derive(Debug, Clone)]
pub struct Outage {
    /// When it started (wall clock).
    pub since: SystemTime,
    /// The error that started it.
    pub error: String,
    /// Records not written, by kind.
    pub dropped: BTreeMap<String, u64>,
}

/// The segment being written.
struct Active {
    first: u64,
    count: u64,
    bytes: u64,
    path: PathBuf,
    seg: File,
    idx: File,
}

/// Records staged for the next commit.
#[derive(Default)]
struct Staged {
    frames: Vec<u8>,
    index: Vec<u8>,
    hashes: Vec<Hash>,
    /// (range in `frames` of each leaf, kind).
    leaves: Vec<(usize, usize, &'static str)>,
}

/// A leaf that has just been committed.
pub struct Committed<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its bytes.
    pub leaf: &'a [u8],
    /// Its kind.
    pub kind: &'static str,
}

/// The log writer.
pub struct Log {
    opts: LogOptions,
    origin: String,
    signer: NoteSigner,
    closed: Vec<SegmentInfo>,
    active: Active,
    frontier: Frontier,
    base: Option<Frontier>,
    tiles: Vec<Hash>,
    /// Leaf hashes of the incomplete last tile.
    tile_leaves: Vec<Hash>,
    /// How many of `tiles` are in the tile file (the rest are written at the next chance).
    tiles_written: usize,
    tiles_file: File,
    checkpoints_file: File,
    last_checkpoint: Option<(Checkpoint, SignedNote)>,
    /// When the oldest record not covered by a checkpoint was committed.
    first_unsigned_at: Option<Instant>,
    last_append_at: Instant,
    staged: Staged,
    /// Bytes of the staged batch that was committed last (for `committed()`).
    committed: Staged,
    committed_first: u64,
    outage: Option<Outage>,
    /// A segment was closed since [`Log::take_rolled`] was last called.
    rolled: bool,
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io_error("open", path))
}

impl Log {
    /// Opens (or creates) the log, repairing a torn tail. Refuses a log that contradicts its own
    /// signed checkpoint.
    pub fn open(opts: LogOptions, signer: NoteSigner) -> Result<(Self, Recovery), LogError> {
        let dir = opts.dir.clone();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(io_error("create", &dir))?;
        let mut recovery = Recovery::default();
        let origin_path = dir.join(files::ORIGIN);
        let origin = match fs::read_to_string(&origin_path) {
            Ok(text) => text.trim().to_owned(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                files::write_atomic(&dir, files::ORIGIN, format!("{}\n", opts.origin).as_bytes())
                    .map_err(io_error("create", &origin_path))?;
                recovery.created = true;
                opts.origin.clone()
            }
            Err(err) => {
                return Err(LogError::Io {
                    action: "read",
                    path: origin_path,
                    source: err,
                });
            }
        };
        if origin != opts.origin {
            return Err(LogError::OriginMismatch {
                dir,
                found: origin,
                configured: opts.origin.clone(),
            });
        }

        let base = match fs::read_to_string(dir.join(files::BASE)) {
            Ok(text) => {
                Some(
                    files::parse_frontier(&text).ok_or_else(|| LogError::Inconsistent {
                        dir: dir.clone(),
                        detail: "the `base` file is not a frontier".into(),
                    })?,
                )
            }
            Err(_) => None,
        };
        let mut segments = reader::list_segments(&dir)?;
        // Every segment but the last is closed: its index is trusted for its count, and the
        // segments must follow each other without a gap.
        let mut expected = base.as_ref().map_or(0, Frontier::size);
        for segment in &segments {
            if segment.first != expected {
                return Err(LogError::Inconsistent {
                    dir: dir.clone(),
                    detail: format!(
                        "segment {} starts at seq {}, expected {expected}: leaves are missing",
                        segment.path.display(),
                        segment.first
                    ),
                });
            }
            expected = segment.first + segment.count;
        }
        let active = match segments.pop() {
            Some(last) => Self::recover_segment(&last, &mut recovery)?,
            None => {
                let first = base.as_ref().map_or(0, Frontier::size);
                let path = dir.join(segment::segment_name(first));
                Active {
                    first,
                    count: 0,
                    bytes: 0,
                    seg: open_append(&path)?,
                    idx: open_append(&segment::index_path(&path))?,
                    path,
                }
            }
        };

        let mut log = Self {
            origin,
            signer,
            closed: segments,
            active,
            frontier: Frontier::new(),
            base,
            tiles: Vec::new(),
            tile_leaves: Vec::new(),
            tiles_written: 0,
            tiles_file: open_append(&dir.join(files::TILES))?,
            checkpoints_file: open_append(&dir.join(files::CHECKPOINTS))?,
            last_checkpoint: None,
            first_unsigned_at: None,
            last_append_at: Instant::now(),
            staged: Staged::default(),
            committed: Staged::default(),
            committed_first: 0,
            outage: None,
            rolled: false,
            opts,
        };
        recovery.size = log.size();
        log.recover_checkpoints(&mut recovery)?;
        log.rebuild_tree()?;
        let reader = log.reader()?;
        if recovery.size > reader.first() {
            recovery.last_leaf = Some(reader.leaf(recovery.size - 1)?);
        }
        Ok((log, recovery))
    }

    /// Scans the last segment, cuts a torn or damaged tail, and rebuilds its index.
    fn recover_segment(info: &SegmentInfo, recovery: &mut Recovery) -> Result<Active, LogError> {
        let path = info.path.clone();
        let idx_path = segment::index_path(&path);
        let mut reader = FrameReader::open(&path).map_err(io_error("read", &path))?;
        let mut index = Vec::new();
        let mut count = 0u64;
        let mut problem = None;
        while let Some(frame) = reader.next_frame().map_err(io_error("read", &path))? {
            match frame {
                Ok(frame) if frame.seq == info.first + count => {
                    segment::encode_index(&mut index, frame.offset, &frame.hash);
                    count += 1;
                }
                Ok(frame) => {
                    problem = Some(format!(
                        "frame at offset {} has seq {}, expected {}",
                        frame.offset,
                        frame.seq,
                        info.first + count
                    ));
                    break;
                }
                Err(err) => {
                    problem = Some(err.to_string());
                    break;
                }
            }
        }
        let good = reader.offset();
        let len = fs::metadata(&path).map_err(io_error("stat", &path))?.len();
        if good < len {
            recovery.torn_bytes = len - good;
            recovery.torn_reason = problem;
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open", &path))?;
            file.set_len(good).map_err(io_error("truncate", &path))?;
            file.sync_all().map_err(io_error("sync", &path))?;
        }
        let old_index = fs::read(&idx_path).unwrap_or_default();
        if old_index != index {
            recovery.index_repaired = (old_index.len() as u64 / INDEX_ENTRY)
                .abs_diff(count)
                .max(1);
            files::write_atomic(
                path.parent().unwrap_or(Path::new(".")),
                &idx_path.file_name().unwrap_or_default().to_string_lossy(),
                &index,
            )
            .map_err(io_error("rewrite", &idx_path))?;
        }
        Ok(Active {
            first: info.first,
            count,
            bytes: good,
            seg: open_append(&path)?,
            idx: open_append(&idx_path)?,
            path,
        })
    }

    /// Reads the checkpoints, cuts a torn tail, and keeps the latest one.
    fn recover_checkpoints(&mut self, recovery: &mut Recovery) -> Result<(), LogError> {
        let path = self.opts.dir.join(files::CHECKPOINTS);
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let (entries, torn) = files::split_checkpoints(&bytes);
        // Keep entries up to the first that does not parse as a checkpoint of this log.
        let mut keep = bytes.len() as u64;
        let mut last = None;
        for (offset, text) in &entries {
            let parsed = SignedNote::parse(text).ok().and_then(|note| {
                let checkpoint = Checkpoint::parse_body(&note.body).ok()?;
                (checkpoint.origin == self.origin).then_some((checkpoint, note))
            });
            match parsed {
                Some(parsed) => last = Some(parsed),
                None => {
                    keep = *offset;
                    break;
                }
            }
        }
        if let Some(torn) = torn {
            keep = keep.min(torn);
        }
        if keep < bytes.len() as u64 {
            recovery.checkpoint_torn_bytes = bytes.len() as u64 - keep;
            self.checkpoints_file
                .set_len(keep)
                .map_err(io_error("truncate", &path))?;
            self.checkpoints_file
                .sync_all()
                .map_err(io_error("sync", &path))?;
        }
        if let Some((checkpoint, _)) = &last {
            recovery.checkpoint_size = checkpoint.size;
            if checkpoint.size > self.size() {
                return Err(LogError::Inconsistent {
                    dir: self.opts.dir.clone(),
                    detail: format!(
                        "the log holds {} leaves but its last signed checkpoint covers {}: signed leaves are gone",
                        self.size(),
                        checkpoint.size
                    ),
                });
            }
        }
        self.last_checkpoint = last;
        Ok(())
    }

    /// Rebuilds the frontier and the tile cache from the indexes, and checks the tree against
    /// the last checkpoint.
    fn rebuild_tree(&mut self) -> Result<(), LogError> {
        let dir = self.opts.dir.clone();
        let tiles_path = dir.join(files::TILES);
        let tile_bytes = fs::read(&tiles_path).map_err(io_error("read", &tiles_path))?;
        let mut tiles: Vec<Hash> = tile_bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let size = self.size();
        let base_size = self.base.as_ref().map_or(0, Frontier::size);
        // Tiles of pruned leaves are kept; tiles beyond the leaves are dropped; missing ones
        // (after a crash) are recomputed below.
        tiles.truncate((size / TILE_LEAVES) as usize);

        // Start from the saved frontier when it is usable, else from the base (or empty).
        let saved = fs::read_to_string(dir.join(files::FRONTIER))
            .ok()
            .and_then(|t| files::parse_frontier(&t));
        let mut frontier = match saved {
            Some(f) if f.size() <= size && f.size() >= base_size => f,
            _ => self.base.clone().unwrap_or_default(),
        };
        let reader = self.reader()?;
        let checkpoint = self.last_checkpoint.as_ref().map(|(c, _)| c.clone());
        let matches_checkpoint = |frontier: &Frontier| match &checkpoint {
            Some(c) if c.size == frontier.size() => frontier.root() == c.root,
            _ => true,
        };
        let inconsistent = |size: u64| LogError::Inconsistent {
            dir: dir.clone(),
            detail: format!(
                "the root of the first {size} leaves differs from the one the last checkpoint signed"
            ),
        };
        if !matches_checkpoint(&frontier) {
            return Err(inconsistent(frontier.size()));
        }
        let mut seq = frontier.size();
        const CHUNK: u64 = 1 << 16;
        while seq < size {
            let take = CHUNK.min(size - seq);
            for hash in reader.leaf_hashes(seq, take)? {
                frontier.push(hash);
                if !matches_checkpoint(&frontier) {
                    return Err(inconsistent(frontier.size()));
                }
            }
            seq += take;
        }
        // Recompute tiles that the crash left unwritten (they need their leaves).
        let complete = size / TILE_LEAVES;
        let on_disk = tiles.len();
        for tile in tiles.len() as u64..complete {
            let start = tile * TILE_LEAVES;
            if start < base_size {
                return Err(LogError::Inconsistent {
                    dir,
                    detail: format!("tile {tile} is missing and its leaves were pruned"),
                });
            }
            tiles.push(root_of(&reader.leaf_hashes(start, TILE_LEAVES)?));
        }
        self.tiles_file
            .set_len(on_disk as u64 * 32)
            .map_err(io_error("truncate", &tiles_path))?;
        let partial = complete * TILE_LEAVES;
        // (The reader serves the pruned part of this tile from `base-tile`.)
        self.tile_leaves = reader.leaf_hashes(partial, size - partial)?;
        self.tiles_written = on_disk;
        self.tiles = tiles;
        self.frontier = frontier;
        self.write_tiles();
        Ok(())
    }

    /// A reader over this log's directory.
    pub fn reader(&self) -> Result<reader::LogReader, LogError> {
        Ok(reader::LogReader::open(&self.opts.dir)?)
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The signing key.
    pub fn signer(&self) -> &NoteSigner {
        &self.signer
    }

    /// Committed leaves (the tree size).
    pub fn size(&self) -> u64 {
        self.active.first + self.active.count
    }

    /// The sequence number the next staged record gets.
    pub fn next_seq(&self) -> u64 {
        self.size() + self.staged.hashes.len() as u64
    }

    /// The current tree root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The latest signed checkpoint.
    pub fn last_checkpoint(&self) -> Option<&(Checkpoint, SignedNote)> {
        self.last_checkpoint.as_ref()
    }

    /// The ongoing outage, if writing fails.
    pub fn outage(&self) -> Option<&Outage> {
        self.outage.as_ref()
    }

    /// How long since the last record was committed.
    pub fn idle_for(&self) -> Duration {
        self.last_append_at.elapsed()
    }

    /// Stages `record` (adding its `seq`) for the next commit. During an outage the record is
    /// counted under `kind` and dropped; returns `None` then.
    pub fn stage(&mut self, record: &mut Obj, kind: &'static str) -> Option<u64> {
        if let Some(outage) = &mut self.outage {
            *outage.dropped.entry(kind.to_owned()).or_default() += 1;
            return None;
        }
        Some(self.stage_now(record, kind))
    }

    fn stage_now(&mut self, record: &mut Obj, kind: &'static str) -> u64 {
        let seq = self.next_seq();
        record.u64("seq", seq);
        // The frame is built in place: header, the record's canonical bytes, their hash (see
        // `segment::encode_frame`), with no intermediate copy of the leaf.
        let frames = &mut self.staged.frames;
        let frame = frames.len();
        frames.extend_from_slice(&[0u8; 12]);
        record.write_to(frames);
        let (start, end) = (frame + 12, frames.len());
        frames[frame..frame + 4].copy_from_slice(&((end - start) as u32).to_le_bytes());
        frames[frame + 4..frame + 12].copy_from_slice(&seq.to_le_bytes());
        let hash = super::merkle::leaf_hash(&frames[start..end]);
        frames.extend_from_slice(&hash);
        segment::encode_index(
            &mut self.staged.index,
            self.active.bytes + frame as u64,
            &hash,
        );
        self.staged.hashes.push(hash);
        self.staged.leaves.push((start, end, kind));
        seq
    }

    /// Writes the staged records. On a write failure the files are cut back to where they were,
    /// the batch is counted as dropped, and the log enters outage.
    pub fn commit(&mut self) -> Result<(), LogError> {
        self.committed = Staged::default();
        if self.staged.hashes.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        let (seg_len, idx_len) = (self.active.bytes, self.active.count * INDEX_ENTRY);
        let written = self
            .active
            .seg
            .write_all(&staged.frames)
            .and_then(|()| self.active.idx.write_all(&staged.index));
        if let Err(err) = written {
            // Never leave a partial frame behind: cut both files back to the last batch.
            let _ = self.active.seg.set_len(seg_len);
            let _ = self.active.idx.set_len(idx_len);
            let outage = self.outage.get_or_insert_with(|| Outage {
                since: SystemTime::now(),
                error: err.to_string(),
                dropped: BTreeMap::new(),
            });
            for (_, _, kind) in &staged.leaves {
                *outage.dropped.entry((*kind).to_owned()).or_default() += 1;
            }
            return Err(LogError::Outage(err));
        }
        self.committed_first = self.size();
        for hash in &staged.hashes {
            self.frontier.push(*hash);
        }
        self.active.count += staged.hashes.len() as u64;
        self.active.bytes += staged.frames.len() as u64;
        self.last_append_at = Instant::now();
        self.first_unsigned_at.get_or_insert(self.last_append_at);
        self.update_tiles(&staged.hashes);
        self.committed = staged;
        if self.active.bytes >= self.opts.segment_bytes {
            self.roll_segment()?;
        }
        Ok(())
    }

    /// The leaves the last successful commit wrote.
    pub fn committed(&self) -> impl ExactSizeIterator<Item = Committed<'_>> {
        self.committed
            .leaves
            .iter()
            .enumerate()
            .map(|(i, (start, end, kind))| Committed {
                seq: self.committed_first + i as u64,
                leaf: &self.committed.frames[*start..*end],
                kind,
            })
    }

    /// Ends an outage: stages `record` (which should say what was lost) ahead of anything else
    /// and commits it. Returns whether writing works again.
    pub fn resume(&mut self, record: &mut Obj) -> bool {
        if self.outage.is_none() {
            return true;
        }
        let outage = self.outage.take();
        self.staged = Staged::default();
        self.stage_now(record, "log.outage");
        match self.commit() {
            Ok(()) => true,
            Err(_) => {
                // Still failing: keep the original outage (with its counts).
                let failed = self.outage.take();
                self.outage = outage.or(failed);
                false
            }
        }
    }

    /// Adds committed leaf hashes to the tile cache, and appends the hashes of completed tiles
    /// to the tile file. The tile file is derivable: if writing it fails (a full disk), the
    /// hashes stay in memory and are written at the next chance.
    fn update_tiles(&mut self, hashes: &[Hash]) {
        for hash in hashes {
            self.tile_leaves.push(*hash);
            if self.tile_leaves.len() as u64 == TILE_LEAVES {
                self.tiles.push(root_of(&self.tile_leaves));
                self.tile_leaves.clear();
            }
        }
        self.write_tiles();
    }

    fn write_tiles(&mut self) {
        if self.tiles_written == self.tiles.len() {
            return;
        }
        let bytes: Vec<u8> = self.tiles[self.tiles_written..]
            .iter()
            .flatten()
            .copied()
            .collect();
        if self.tiles_file.write_all(&bytes).is_ok() {
            self.tiles_written = self.tiles.len();
        } else {
            let _ = self.tiles_file.set_len(self.tiles_written as u64 * 32);
        }
    }

    /// Closes the active segment and starts the next.
    fn roll_segment(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let first = self.size();
        let path = self.opts.dir.join(segment::segment_name(first));
        let next = Active {
            first,
            count: 0,
            bytes: 0,
            seg: open_append(&path)?,
            idx: open_append(&segment::index_path(&path))?,
            path,
        };
        let old = std::mem::replace(&mut self.active, next);
        self.closed.push(SegmentInfo {
            first: old.first,
            count: old.count,
            path: old.path,
        });
        self.rolled = true;
        Ok(())
    }

    /// Flushes every committed byte to disk.
    fn sync(&mut self) -> Result<(), LogError> {
        self.active
            .seg
            .sync_data()
            .map_err(io_error("sync", &self.active.path))?;
        let idx = segment::index_path(&self.active.path);
        self.active
            .idx
            .sync_data()
            .map_err(io_error("sync", &idx))?;
        let tiles = self.opts.dir.join(files::TILES);
        self.tiles_file
            .sync_data()
            .map_err(io_error("sync", &tiles))
    }

    /// Whether a checkpoint is due: the oldest unsigned record is half the interval old.
    pub fn checkpoint_due(&self) -> bool {
        self.first_unsigned_at
            .is_some_and(|at| at.elapsed() >= self.opts.checkpoint_interval / 2)
    }

    /// Syncs the log and signs a checkpoint of everything committed, if there is anything new.
    /// Returns the new checkpoint. A failure to make it durable (a full disk) leaves the
    /// checkpoints file as it was and returns [`LogError::Sign`].
    pub fn checkpoint(&mut self) -> Result<Option<&(Checkpoint, SignedNote)>, LogError> {
        let signed = self.last_checkpoint.as_ref().map_or(0, |(c, _)| c.size);
        if self.size() == signed && self.last_checkpoint.is_some() {
            self.first_unsigned_at = None;
            return Ok(None);
        }
        self.write_tiles();
        self.sync().map_err(|err| match err {
            LogError::Io { source, .. } => LogError::Sign(source),
            other => other,
        })?;
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: self.size(),
            root: self.frontier.root(),
        };
        let note = SignedNote::sign(&checkpoint.body(), &[&self.signer]);
        let text = note.to_text();
        let before = self
            .checkpoints_file
            .metadata()
            .map_err(LogError::Sign)?
            .len();
        let written = self
            .checkpoints_file
            .write_all(&files::checkpoint_entry(&text))
            .and_then(|()| self.checkpoints_file.sync_data());
        if let Err(err) = written {
            // Never leave half a checkpoint: the next attempt signs the same leaves again.
            let _ = self.checkpoints_file.set_len(before);
            return Err(LogError::Sign(err));
        }
        // The latest checkpoint and the frontier are conveniences; losing them loses nothing.
        let _ = files::write_atomic(&self.opts.dir, files::CHECKPOINT, text.as_bytes());
        let _ = files::write_atomic(
            &self.opts.dir,
            files::FRONTIER,
            files::frontier_text(&self.frontier).as_bytes(),
        );
        self.last_checkpoint = Some((checkpoint, note));
        self.first_unsigned_at = None;
        Ok(self.last_checkpoint.as_ref())
    }

    /// Starts signing with `signer` (after a key rotation record was committed).
    pub fn set_signer(&mut self, signer: NoteSigner) {
        self.signer = signer;
    }

    /// Whether a segment was closed since the last call (retention then has work to look at).
    pub fn take_rolled(&mut self) -> bool {
        std::mem::take(&mut self.rolled)
    }

    /// Segments retention would delete now: closed, covered by the last checkpoint, and too old
    /// or over the size limit. Oldest first.
    pub fn prunable(&self) -> Vec<SegmentInfo> {
        let covered = self.last_checkpoint.as_ref().map_or(0, |(c, _)| c.size);
        let mut total: u64 = self
            .closed
            .iter()
            .map(|s| fs::metadata(&s.path).map_or(0, |m| m.len()))
            .sum::<u64>()
            + self.active.bytes;
        let mut out = Vec::new();
        for segment in &self.closed {
            if segment.first + segment.count > covered {
                break;
            }
            let meta = fs::metadata(&segment.path).ok();
            let bytes = meta.as_ref().map_or(0, |m| m.len());
            let too_old = match (
                self.opts.retention_age,
                meta.and_then(|m| m.modified().ok()),
            ) {
                (Some(age), Some(modified)) => modified.elapsed().is_ok_and(|e| e > age),
                _ => false,
            };
            let too_big = self.opts.retention_bytes.is_some_and(|limit| total > limit);
            if !(too_old || too_big) {
                break;
            }
            total -= bytes;
            out.push(segment.clone());
        }
        out
    }

    /// Deletes the leading segments up to and including `through` (from [`Self::prunable`]),
    /// after saving the frontier of the pruned prefix as `base`. Returns the new base.
    pub fn prune(&mut self, through: &SegmentInfo) -> Result<Frontier, LogError> {
        let end = through.first + through.count;
        let reader = self.reader()?;
        // The frontier of the first `end` leaves: the roots of its complete subtrees.
        let mut nodes = Vec::new();
        let mut start = 0u64;
        for bit in (0..64).rev() {
            let size = 1u64 << bit;
            if end & size != 0 {
                nodes.push(
                    reader
                        .subtree(start, size)
                        .map_err(|err| LogError::Inconsistent {
                            dir: self.opts.dir.clone(),
                            detail: format!("cannot compute the pruned prefix's frontier: {err}"),
                        })?,
                );
                start += size;
            }
        }
        let base = Frontier::from_parts(end, nodes).expect("one node per set bit");
        // The leaves of the tile the base cuts through, so that tile can still be completed.
        let tile_start = end / TILE_LEAVES * TILE_LEAVES;
        let mut tile = Vec::new();
        for hash in reader.leaf_hashes(tile_start, end - tile_start)? {
            tile.extend_from_slice(&hash);
        }
        files::write_atomic(&self.opts.dir, files::BASE_TILE, &tile)
            .map_err(io_error("write", &self.opts.dir.join(files::BASE_TILE)))?;
        files::write_atomic(
            &self.opts.dir,
            files::BASE,
            files::frontier_text(&base).as_bytes(),
        )
        .map_err(io_error("write", &self.opts.dir.join(files::BASE)))?;
        while let Some(segment) = self.closed.first() {
            if segment.first >= end {
                break;
            }
            let segment = self.closed.remove(0);
            fs::remove_file(&segment.path).map_err(io_error("delete", &segment.path))?;
            let idx = segment::index_path(&segment.path);
            fs::remove_file(&idx).map_err(io_error("delete", &idx))?;
        }
        self.base = Some(base.clone());
        Ok(base)
    }

    /// The bytes the log occupies (segments and indexes).
    pub fn bytes(&self) -> u64 {
        let closed: u64 = self
            .closed
            .iter()
            .map(|s| fs::metadata(&s.path).map_or(0, |m| m.len()) + s.count * INDEX_ENTRY)
            .sum();
        closed + self.active.bytes + self.active.count * INDEX_ENTRY
    }
}

#[cfg(test)]
mod tests;
