//! Segment files: the leaves, framed, append-only; and their index files.
//!
//! A segment is named by the sequence number of its first leaf (`00000000000000000000.seg`,
//! twenty digits). Each leaf is one frame:
//!
//! ```text
//! u32 length (little-endian) | u64 seq (little-endian) | leaf (length bytes) | SHA-256(0x00 || leaf)
//! ```
//!
//! The trailing leaf hash makes every frame self-checking, so a torn or altered frame is found
//! by reading the segment alone. The index file (`.idx`) holds one 40-byte entry per leaf:
//! `u64 offset of the frame (little-endian) | leaf hash`, for random access and proofs; it can
//! always be rebuilt from the segment.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::{Path, PathBuf},
};

use super::merkle::{Hash, leaf_hash};

/// Bytes of a frame around the leaf.
pub const FRAME_OVERHEAD: u64 = 4 + 8 + 32;
/// Bytes of an index entry.
pub const INDEX_ENTRY: u64 = 8 + 32;
/// The largest leaf accepted: records are a few kilobytes; anything bigger is corruption.
pub const MAX_LEAF: u32 = 1 << 20;

/// The segment file name for a first sequence number.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The index path of a segment path.
pub fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// Parses a segment file name into its first sequence number.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// Appends one frame for `leaf` with sequence number `seq` to `out`; returns the leaf hash.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, leaf: &[u8]) -> Hash {
    let hash = leaf_hash(leaf);
    out.extend_from_slice(&(leaf.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(leaf);
    out.extend_from_slice(&hash);
    hash
}

/// Appends one index entry.
pub fn encode_index(out: &mut Vec<u8>, offset: u64, hash: &Hash) {
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(hash);
}

/// One frame read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// The sequence number the frame carries.
    pub seq: u64,
    /// The leaf.
    pub leaf: Vec<u8>,
    /// The leaf hash stored in the frame (checked against the leaf).
    pub hash: Hash,
}

/// Why reading stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameProblem {
    /// The file ends inside a frame (a torn write).
    Truncated,
    /// The length field is impossible.
    BadLength(u32),
    /// The stored hash does not match the leaf.
    HashMismatch,
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameProblem::Truncated => f.write_str("the file ends inside a frame"),
            FrameProblem::BadLength(len) => write!(f, "impossible leaf length {len}"),
            FrameProblem::HashMismatch => f.write_str("the leaf does not match its hash"),
        }
    }
}

/// Reads frames from a segment, one at a time.
pub struct FrameReader<R> {
    reader: R,
    offset: u64,
}

impl FrameReader<BufReader<File>> {
    /// Opens a segment file.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self::new(BufReader::with_capacity(
            1 << 16,
            File::open(path)?,
        )))
    }
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `reader`.
    pub fn new(reader: R) -> Self {
        Self { reader, offset: 0 }
    }

    /// Offset just past the last frame read successfully.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Fills `buf` completely; `Ok(false)` if the input ended before the first byte, and
    /// `Truncated` if it ended after it.
    fn fill(&mut self, buf: &mut [u8], at_start: bool) -> io::Result<Result<bool, FrameProblem>> {
        let mut read = 0;
        while read < buf.len() {
            match self.reader.read(&mut buf[read..]) {
                Ok(0) => {
                    return Ok(if read == 0 && at_start {
                        Ok(false)
                    } else {
                        Err(FrameProblem::Truncated)
                    });
                }
                Ok(n) => read += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Ok(true))
    }

    /// The next frame: `Ok(None)` at a clean end, `Ok(Some(Err(problem)))` at a bad frame.
    pub fn next_frame(&mut self) -> io::Result<Option<Result<Frame, FrameProblem>>> {
        let mut head = [0u8; 12];
        match self.fill(&mut head, true)? {
            Ok(false) => return Ok(None),
            Err(problem) => return Ok(Some(Err(problem))),
            Ok(true) => {}
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if len > MAX_LEAF {
            return Ok(Some(Err(FrameProblem::BadLength(len))));
        }
        let seq = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        let mut leaf = vec![0u8; len as usize];
        if let Err(problem) = self.fill(&mut leaf, false)? {
            return Ok(Some(Err(problem)));
        }
        let mut hash = [0u8; 32];
        if let Err(problem) = self.fill(&mut hash, false)? {
            return Ok(Some(Err(problem)));
        }
        if leaf_hash(&leaf) != hash {
            return Ok(Some(Err(FrameProblem::HashMismatch)));
        }
        let offset = self.offset;
        self.offset += FRAME_OVERHEAD + len as u64;
        Ok(Some(Ok(Frame {
            offset,
            seq,
            leaf,
            hash,
        })))
    }
}

/// Reads index entry `i` of an index file.
pub fn read_index_entry(file: &File, i: u64) -> io::Result<(u64, Hash)> {
    use std::os::unix::fs::FileExt as _;
    let mut entry = [0u8; INDEX_ENTRY as usize];
    file.read_exact_at(&mut entry, i * INDEX_ENTRY)?;
    let offset = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
    Ok((offset, entry[8..].try_into().expect("32 bytes")))
}

/// Reads the leaf hashes of entries `start..start+count` of an index file.
pub fn read_index_hashes(file: &File, start: u64, count: u64) -> io::Result<Vec<Hash>> {
    use std::os::unix::fs::FileExt as _;
    let mut bytes = vec![0u8; (count * INDEX_ENTRY) as usize];
    file.read_exact_at(&mut bytes, start * INDEX_ENTRY)?;
    Ok(bytes
        .chunks_exact(INDEX_ENTRY as usize)
        .map(|e| e[8..].try_into().expect("32 bytes"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(leaves: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, leaf) in leaves.iter().enumerate() {
            encode_frame(&mut out, seq as u64, leaf);
        }
        out
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn frames_round_trip() {
        let bytes = frames(&[b"{\"a\":1}", b"", b"{\"b\":2}"]);
        let mut reader = FrameReader::new(bytes.as_slice());
        let mut seqs = Vec::new();
        while let Some(frame) = reader.next_frame().unwrap() {
            let frame = frame.unwrap();
            assert_eq!(frame.hash, leaf_hash(&frame.leaf));
            seqs.push(frame.seq);
        }
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!(reader.offset(), bytes.len() as u64);
    }

    #[test]
    fn torn_and_altered_frames_are_found() {
        let bytes = frames(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let first_end = FRAME_OVERHEAD + 7;
        for cut in [first_end + 1, first_end + 11, bytes.len() as u64 - 1] {
            let mut reader = FrameReader::new(&bytes[..cut as usize]);
            assert!(reader.next_frame().unwrap().unwrap().is_ok());
            assert_eq!(
                reader.next_frame().unwrap(),
                Some(Err(FrameProblem::Truncated))
            );
            assert_eq!(reader.offset(), first_end);
        }
        let mut flipped = bytes.clone();
        flipped[first_end as usize + 14] ^= 1;
        let mut reader = FrameReader::new(flipped.as_slice());
        assert!(reader.next_frame().unwrap().unwrap().is_ok());
        assert_eq!(
            reader.next_frame().unwrap(),
            Some(Err(FrameProblem::HashMismatch))
        );
        let mut huge = bytes;
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            FrameReader::new(huge.as_slice()).next_frame().unwrap(),
            Some(Err(FrameProblem::BadLength(u32::MAX)))
        );
    }
}
