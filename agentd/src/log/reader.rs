//! Reading a log directory: leaves by sequence number, leaf hashes, checkpoints, and node
//! hashes for proofs. Used by the offline verifier and `agentctl proof`, and by the daemon to
//! serve past records.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use super::{
    files::{self, TILE_LEAVES},
    merkle::{Frontier, Hash, NodeSource, ProofError, root_of},
    note::SignedNote,
    segment::{self, INDEX_ENTRY},
};

/// A log directory that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// File system trouble.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The directory is not a log.
    #[error("{0} is not a Custos log directory (no `origin` file)")]
    NotALog(PathBuf),
    /// A sequence number outside the log.
    #[error("seq {seq} is not in the log (it holds {first}..{end})")]
    NoSuchLeaf {
        /// The sequence number asked for.
        seq: u64,
        /// First sequence number held.
        first: u64,
        /// One past the last.
        end: u64,
    },
    /// A file's contents make no sense.
    #[error("{path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ReadError + '_ {
    move |source| ReadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One segment and its index.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// First sequence number.
    pub first: u64,
    /// Leaves, per the index.
    pub count: u64,
    /// The segment file.
    pub path: PathBuf,
}

/// A checkpoint as found in the `checkpoints` file.
#[derive(Debug, Clone)]
pub struct CheckpointEntry {
    /// Position in the file (0-based).
    pub index: usize,
    /// The note text.
    pub text: String,
}

/// Read access to a log directory.
pub struct LogReader {
    dir: PathBuf,
    origin: String,
    segments: Vec<SegmentInfo>,
    base: Option<Frontier>,
    /// Leaf hashes of the pruned prefix's incomplete last tile.
    base_tile: Vec<Hash>,
    tiles: Vec<Hash>,
}

/// Lists the segments in `dir`, sorted.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentInfo>, ReadError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(segment::parse_segment_name) else {
            continue;
        };
        let path = entry.path();
        let idx = segment::index_path(&path);
        let count = fs::metadata(&idx)
            .map(|m| m.len() / INDEX_ENTRY)
            .unwrap_or(0);
        segments.push(SegmentInfo { first, count, path });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

impl LogReader {
    /// Opens the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ReadError> {
        let origin_path = dir.join(files::ORIGIN);
        let origin = match fs::read_to_string(&origin_path) {
            Ok(text) => text.trim().to_owned(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::NotALog(dir.to_owned()));
            }
            Err(err) => {
                return Err(ReadError::Io {
                    path: origin_path,
                    source: err,
                });
            }
        };
        let base = match fs::read_to_string(dir.join(files::BASE)) {
            Ok(text) => Some(
                files::parse_frontier(&text).ok_or_else(|| ReadError::Corrupt {
                    path: dir.join(files::BASE),
                    detail: "not a frontier".into(),
                })?,
            ),
            Err(_) => None,
        };
        let hashes = |name: &str| -> Vec<Hash> {
            let bytes = fs::read(dir.join(name)).unwrap_or_default();
            bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect()
        };
        Ok(Self {
            dir: dir.to_owned(),
            origin,
            segments: list_segments(dir)?,
            base,
            base_tile: hashes(files::BASE_TILE),
            tiles: hashes(files::TILES),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// The frontier of the pruned prefix, if retention removed leading segments.
    pub fn base(&self) -> Option<&Frontier> {
        self.base.as_ref()
    }

    /// First sequence number held.
    pub fn first(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.base.as_ref().map_or(0, Frontier::size), |s| s.first)
    }

    /// One past the last sequence number held (the tree size).
    pub fn size(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.first(), |s| s.first + s.count)
    }

    fn segment_of(&self, seq: u64) -> Result<&SegmentInfo, ReadError> {
        let at = self.segments.partition_point(|s| s.first <= seq);
        at.checked_sub(1)
            .map(|i| &self.segments[i])
            .filter(|s| seq < s.first + s.count)
            .ok_or(ReadError::NoSuchLeaf {
                seq,
                first: self.first(),
                end: self.size(),
            })
    }

    /// The leaf with sequence number `seq`.
    pub fn leaf(&self, seq: u64) -> Result<Vec<u8>, ReadError> {
        use std::os::unix::fs::FileExt as _;
        let segment = self.segment_of(seq)?;
        let idx_path = segment::index_path(&segment.path);
        let idx = File::open(&idx_path).map_err(io_error(&idx_path))?;
        let (offset, hash) =
            segment::read_index_entry(&idx, seq - segment.first).map_err(io_error(&idx_path))?;
        let file = File::open(&segment.path).map_err(io_error(&segment.path))?;
        let mut head = [0u8; 12];
        file.read_exact_at(&mut head, offset)
            .map_err(io_error(&segment.path))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let frame_seq = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
        if len > segment::MAX_LEAF as u64 || frame_seq != seq {
            return Err(ReadError::Corrupt {
                path: segment.path.clone(),
                detail: format!("index entry {seq} points at a frame for seq {frame_seq}"),
            });
        }
        let mut leaf = vec![0u8; len as usize];
        file.read_exact_at(&mut leaf, offset + 12)
            .map_err(io_error(&segment.path))?;
        if super::merkle::leaf_hash(&leaf) != hash {
            return Err(ReadError::Corrupt {
                path: segment.path.clone(),
                detail: format!("leaf {seq} does not match its hash"),
            });
        }
        Ok(leaf)
    }

    /// Calls `each(seq, leaf)` for the leaves `start..end` in order, reading each segment
    /// sequentially (one index lookup per segment, not per leaf); stops early when `each`
    /// returns false. Every frame's hash is checked.
    pub fn for_each_leaf(
        &self,
        start: u64,
        end: u64,
        mut each: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> Result<(), ReadError> {
        use std::io::{Seek as _, SeekFrom};
        let mut seq = start;
        while seq < end {
            let segment = self.segment_of(seq)?;
            let idx_path = segment::index_path(&segment.path);
            let idx = File::open(&idx_path).map_err(io_error(&idx_path))?;
            let (offset, _) = segment::read_index_entry(&idx, seq - segment.first)
                .map_err(io_error(&idx_path))?;
            let mut file = File::open(&segment.path).map_err(io_error(&segment.path))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(io_error(&segment.path))?;
            let mut frames = segment::FrameReader::new(io::BufReader::with_capacity(1 << 16, file));
            let stop = (segment.first + segment.count).min(end);
            while seq < stop {
                let problem = match frames.next_frame().map_err(io_error(&segment.path))? {
                    Some(Ok(frame)) if frame.seq == seq => {
                        if !each(seq, frame.leaf) {
                            return Ok(());
                        }
                        seq += 1;
                        continue;
                    }
                    Some(Ok(frame)) => {
                        format!("expected seq {seq}, found a frame for {}", frame.seq)
                    }
                    Some(Err(problem)) => format!("seq {seq}: {problem}"),
                    None => format!("seq {seq}: the segment ends early"),
                };
                return Err(ReadError::Corrupt {
                    path: segment.path.clone(),
                    detail: problem,
                });
            }
        }
        Ok(())
    }

    /// Leaf hashes `start..start+count` (possibly across segments), from the indexes.
    pub fn leaf_hashes(&self, start: u64, count: u64) -> Result<Vec<Hash>, ReadError> {
        let mut hashes = Vec::with_capacity(count as usize);
        let mut seq = start;
        let end = start + count;
        // Pruned leaves of the incomplete tile at the base are kept in `base-tile`.
        if let Some(base) = &self.base {
            let tile_start = base.size() / TILE_LEAVES * TILE_LEAVES;
            while seq < end && seq >= tile_start && seq < base.size() {
                match self.base_tile.get((seq - tile_start) as usize) {
                    Some(hash) => hashes.push(*hash),
                    None => {
                        return Err(ReadError::NoSuchLeaf {
                            seq,
                            first: self.first(),
                            end: self.size(),
                        });
                    }
                }
                seq += 1;
            }
        }
        while seq < end {
            let segment = self.segment_of(seq)?;
            let take = (segment.first + segment.count).min(end) - seq;
            let idx_path = segment::index_path(&segment.path);
            let idx = File::open(&idx_path).map_err(io_error(&idx_path))?;
            hashes.extend(
                segment::read_index_hashes(&idx, seq - segment.first, take)
                    .map_err(io_error(&idx_path))?,
            );
            seq += take;
        }
        Ok(hashes)
    }

    /// Every checkpoint in the `checkpoints` file, and the offset of a torn tail if there is one.
    pub fn checkpoints(&self) -> Result<(Vec<CheckpointEntry>, Option<u64>), ReadError> {
        let path = self.dir.join(files::CHECKPOINTS);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(ReadError::Io { path, source: err }),
        };
        let (entries, torn) = files::split_checkpoints(&bytes);
        Ok((
            entries
                .into_iter()
                .enumerate()
                .map(|(index, (_, text))| CheckpointEntry { index, text })
                .collect(),
            torn,
        ))
    }

    /// The latest checkpoint, parsed.
    pub fn latest_checkpoint(&self) -> Result<Option<SignedNote>, ReadError> {
        let (entries, _) = self.checkpoints()?;
        match entries.last() {
            None => Ok(None),
            Some(entry) => {
                SignedNote::parse(&entry.text)
                    .map(Some)
                    .map_err(|err| ReadError::Corrupt {
                        path: self.dir.join(files::CHECKPOINTS),
                        detail: err.to_string(),
                    })
            }
        }
    }
}

impl NodeSource for LogReader {
    fn subtree(&self, start: u64, size: u64) -> Result<Hash, ProofError> {
        let unavailable = |err: ReadError| ProofError::Unavailable(err.to_string());
        if size == 0 {
            return Err(ProofError::Range("empty subtree".into()));
        }
        if size.is_power_of_two() && start.is_multiple_of(size) {
            if size >= TILE_LEAVES {
                let (first, count) = (
                    (start / TILE_LEAVES) as usize,
                    (size / TILE_LEAVES) as usize,
                );
                if first + count <= self.tiles.len() {
                    return Ok(root_of(&self.tiles[first..first + count]));
                }
            }
            if size <= TILE_LEAVES {
                return Ok(root_of(
                    &self.leaf_hashes(start, size).map_err(unavailable)?,
                ));
            }
        }
        let k = 1u64 << (63 - (size - 1).leading_zeros());
        Ok(super::merkle::node_hash(
            &self.subtree(start, k)?,
            &self.subtree(start + k, size - k)?,
        ))
    }
}
