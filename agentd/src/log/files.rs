//! The files of a log directory, their names, and the small ones written whole.
//!
//! ```text
//! origin                   the log's name (written once, when the log is created)
//! NNNNNNNNNNNNNNNNNNNN.seg segments (see `segment`), named by their first sequence number
//! NNNNNNNNNNNNNNNNNNNN.idx their indexes
//! tiles                    32-byte roots of every complete 256-leaf subtree, in order
//! checkpoints              every signed checkpoint: "<byte length>\n<note>", appended
//! checkpoint               the latest signed checkpoint (replaced atomically)
//! frontier                 the tree's frontier at the latest checkpoint (a cache)
//! base                     after retention pruned leading segments: the frontier of the pruned prefix
//! base-tile                the leaf hashes from the last 256-leaf boundary up to the base (raw, 32 bytes each)
//! ```

use std::{
    fs::{self, File},
    io::{self, Write},
    path::Path,
};

use super::merkle::{Frontier, Hash};

/// File names.
pub const ORIGIN: &str = "origin";
/// Tile hashes.
pub const TILES: &str = "tiles";
/// All checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// The latest checkpoint.
pub const CHECKPOINT: &str = "checkpoint";
/// The frontier at the latest checkpoint.
pub const FRONTIER: &str = "frontier";
/// The pruned prefix.
pub const BASE: &str = "base";
/// Leaf hashes of the pruned prefix's incomplete last tile.
pub const BASE_TILE: &str = "base-tile";

/// Leaves per tile.
pub const TILE_LEAVES: u64 = 256;

/// Writes `contents` to `dir/name` atomically (temporary file, fsync, rename, fsync of the
/// directory), so a reader sees the old or the new file, never a mix.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Frontier text: `size\n` then one hex node per line.
pub fn frontier_text(frontier: &Frontier) -> String {
    let mut text = format!("{}\n", frontier.size());
    for node in frontier.nodes() {
        text.push_str(&hex::encode(node));
        text.push('\n');
    }
    text
}

/// Parses [`frontier_text`].
pub fn parse_frontier(text: &str) -> Option<Frontier> {
    let mut lines = text.lines();
    let size: u64 = lines.next()?.parse().ok()?;
    let nodes: Option<Vec<Hash>> = lines
        .map(|line| {
            hex::decode(line)
                .ok()
                .and_then(|b| <Hash>::try_from(b).ok())
        })
        .collect();
    Frontier::from_parts(size, nodes?)
}

/// Parses the `checkpoints` file into `(offset, note text)` entries; also returns the offset
/// where a torn or malformed entry starts, if any.
pub fn split_checkpoints(bytes: &[u8]) -> (Vec<(u64, String)>, Option<u64>) {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(newline) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            return (entries, Some(pos as u64));
        };
        let len: Option<usize> = std::str::from_utf8(&bytes[pos..pos + newline])
            .ok()
            .and_then(|s| s.parse().ok());
        let start = pos + newline + 1;
        let Some(len) = len.filter(|&l| l > 0 && start + l <= bytes.len()) else {
            return (entries, Some(pos as u64));
        };
        let Ok(note) = std::str::from_utf8(&bytes[start..start + len]) else {
            return (entries, Some(pos as u64));
        };
        entries.push((pos as u64, note.to_owned()));
        pos = start + len;
    }
    (entries, None)
}

/// One entry of the `checkpoints` file.
pub fn checkpoint_entry(note: &str) -> Vec<u8> {
    let mut entry = format!("{}\n", note.len()).into_bytes();
    entry.extend_from_slice(note.as_bytes());
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::merkle::leaf_hash;

    #[test]
    fn frontier_text_round_trips() {
        let mut frontier = Frontier::new();
        for i in 0u8..11 {
            frontier.push(leaf_hash(&[i]));
        }
        assert_eq!(parse_frontier(&frontier_text(&frontier)), Some(frontier));
        assert_eq!(parse_frontier("3\nzz\n"), None);
    }

    #[test]
    fn checkpoints_split_and_torn_tails() {
        let mut bytes = checkpoint_entry("a\n1\nAA==\n\n\u{2014} k AAAA\n");
        bytes.extend(checkpoint_entry("b\n"));
        let (entries, torn) = split_checkpoints(&bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!(torn, None);
        let (entries, torn) = split_checkpoints(&bytes[..bytes.len() - 1]);
        assert_eq!(entries.len(), 1);
        assert_eq!(torn, Some(entries[0].1.len() as u64 + 3));
    }
}
