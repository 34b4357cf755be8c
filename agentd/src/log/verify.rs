//! The offline verifier: checks a log directory with nothing but the public key.
//!
//! It reads every leaf and checks, in one pass: each frame against its hash, the index against
//! the segment, sequence continuity (in the frames and in the records themselves), every
//! checkpoint's signature and root, consistency between successive checkpoints, key rotations,
//! and, given a checkpoint seen earlier, that the log was not rolled back or forked. It stops at
//! the first problem and names the entry.

use std::{fmt, fs::File};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};

use super::{
    merkle::{Hash, consistency_proof, verify_consistency},
    note::{Checkpoint, NoteVerifier, SignedNote},
    reader::LogReader,
    segment::{self, FrameReader},
};

/// The statement a key rotation signs with the old key.
pub fn rotation_statement(origin: &str, new_key: &NoteVerifier) -> String {
    format!("custos log key rotation\n{origin}\n{new_key}\n")
}

/// What to check against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Keys trusted to sign checkpoints (more are trusted after a valid rotation record).
    pub keys: Vec<NoteVerifier>,
    /// A checkpoint of this log seen earlier (by an auditor or a witness): the log must still
    /// contain that tree.
    pub seen: Option<String>,
    /// Accept leaves after the last checkpoint (a live log's last second).
    pub allow_unsigned_tail: bool,
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A leaf.
    Leaf(u64),
    /// An entry of the `checkpoints` file (0-based), and its size when known.
    Checkpoint(usize, Option<u64>),
    /// The log as a whole.
    Log,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub at: Location,
    /// What.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Location::Leaf(seq) => write!(f, "seq {seq}: {}", self.reason),
            Location::Checkpoint(i, Some(size)) => {
                write!(f, "checkpoint #{i} (size {size}): {}", self.reason)
            }
            Location::Checkpoint(i, None) => write!(f, "checkpoint #{i}: {}", self.reason),
            Location::Log => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Failure {}

fn fail<T>(at: Location, reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        at,
        reason: reason.into(),
    })
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The log's origin.
    pub origin: String,
    /// First sequence number held (above 0 after retention).
    pub first: u64,
    /// Leaves checked.
    pub leaves: u64,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// Size of the last checkpoint.
    pub signed_size: u64,
    /// Leaves after the last checkpoint.
    pub unsigned_tail: u64,
    /// Key rotations followed.
    pub rotations: usize,
    /// The root of the whole log.
    pub root: Hash,
}

struct ParsedCheckpoint {
    index: usize,
    checkpoint: Checkpoint,
    note: SignedNote,
}

/// Verifies the log in `dir`.
pub fn verify(dir: &std::path::Path, opts: &VerifyOptions) -> Result<Report, Failure> {
    let reader = LogReader::open(dir).or_else(|err| fail(Location::Log, err.to_string()))?;
    let origin = reader.origin().to_owned();
    let (entries, torn) = reader
        .checkpoints()
        .or_else(|err| fail(Location::Log, err.to_string()))?;
    let mut checkpoints = Vec::new();
    for entry in &entries {
        let at = Location::Checkpoint(entry.index, None);
        let note =
            SignedNote::parse(&entry.text).or_else(|err| fail(at.clone(), err.to_string()))?;
        let checkpoint =
            Checkpoint::parse_body(&note.body).or_else(|err| fail(at.clone(), err.to_string()))?;
        let at = Location::Checkpoint(entry.index, Some(checkpoint.size));
        if checkpoint.origin != origin {
            return fail(
                at,
                format!(
                    "origin {:?} is not this log's ({origin:?})",
                    checkpoint.origin
                ),
            );
        }
        if let Some(previous) = checkpoints.last().map(|p: &ParsedCheckpoint| &p.checkpoint) {
            if checkpoint.size < previous.size {
                return fail(
                    at,
                    format!(
                        "size goes back from {} (an older tree signed after a newer one)",
                        previous.size
                    ),
                );
            }
            if checkpoint.size == previous.size && checkpoint.root != previous.root {
                return fail(
                    at,
                    "two different roots signed for the same size (equivocation)",
                );
            }
        }
        checkpoints.push(ParsedCheckpoint {
            index: entry.index,
            checkpoint,
            note,
        });
    }
    if let Some(offset) = torn {
        return fail(
            Location::Checkpoint(entries.len(), None),
            format!("the checkpoints file is damaged from byte {offset}"),
        );
    }
    let seen = match &opts.seen {
        None => None,
        Some(text) => {
            let note = SignedNote::parse(text)
                .or_else(|err| fail(Location::Log, format!("the checkpoint seen before: {err}")))?;
            note.verified_by(&opts.keys)
                .or_else(|err| fail(Location::Log, format!("the checkpoint seen before: {err}")))?;
            let checkpoint = Checkpoint::parse_body(&note.body)
                .or_else(|err| fail(Location::Log, err.to_string()))?;
            if checkpoint.origin != origin {
                return fail(
                    Location::Log,
                    format!(
                        "the checkpoint seen before is of log {:?}",
                        checkpoint.origin
                    ),
                );
            }
            Some(checkpoint)
        }
    };

    let mut keys = opts.keys.clone();
    let mut frontier = reader.base().cloned().unwrap_or_default();
    let first = frontier.size();
    let mut next = 0usize;
    let mut previous: Option<Checkpoint> = None;
    let mut report = Report {
        origin: origin.clone(),
        first,
        ..Report::default()
    };

    // Checkpoints of pruned trees: their signatures still count; their roots cannot be
    // recomputed, except at the base itself.
    while next < checkpoints.len() && checkpoints[next].checkpoint.size <= first {
        check_checkpoint(
            &checkpoints[next],
            &keys,
            (first == checkpoints[next].checkpoint.size).then(|| frontier.root()),
        )?;
        previous = Some(checkpoints[next].checkpoint.clone());
        next += 1;
        report.checkpoints += 1;
    }
    if let Some(seen) = &seen
        && seen.size == first
        && frontier.size() > 0
        && seen.root != frontier.root()
    {
        return fail(
            Location::Log,
            "fork: the retained log does not extend the checkpoint seen before",
        );
    }

    for info in reader.segments() {
        let expected = frontier.size();
        if info.first != expected {
            return fail(
                Location::Leaf(expected),
                format!(
                    "missing: the next segment ({}) starts at seq {}",
                    info.path.display(),
                    info.first
                ),
            );
        }
        let idx_path = segment::index_path(&info.path);
        let idx = File::open(&idx_path).or_else(|err| {
            fail(
                Location::Leaf(expected),
                format!("cannot open {}: {err}", idx_path.display()),
            )
        })?;
        let mut frames = FrameReader::open(&info.path).or_else(|err| {
            fail(
                Location::Leaf(expected),
                format!("cannot open {}: {err}", info.path.display()),
            )
        })?;
        loop {
            let seq = frontier.size();
            let at = Location::Leaf(seq);
            let frame = match frames.next_frame() {
                Ok(None) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(problem))) => {
                    return fail(
                        at,
                        format!(
                            "{} at byte {}: {problem}",
                            display(&info.path),
                            frames.offset()
                        ),
                    );
                }
                Err(err) => return fail(at, format!("cannot read {}: {err}", display(&info.path))),
            };
            if frame.seq != seq {
                return fail(
                    at,
                    format!(
                        "the frame carries seq {}: leaves are missing, duplicated or out of order",
                        frame.seq
                    ),
                );
            }
            match segment::read_index_entry(&idx, seq - info.first) {
                Ok((offset, hash)) if offset == frame.offset && hash == frame.hash => {}
                Ok(_) => {
                    return fail(
                        at,
                        format!(
                            "the index ({}) does not match the segment",
                            display(&idx_path)
                        ),
                    );
                }
                Err(_) => {
                    return fail(
                        at,
                        format!("the index ({}) has no entry for it", display(&idx_path)),
                    );
                }
            }
            let record: serde_json::Value = serde_json::from_slice(&frame.leaf)
                .or_else(|err| fail(at.clone(), format!("the leaf is not a JSON record: {err}")))?;
            if record.get("seq").and_then(serde_json::Value::as_u64) != Some(seq) {
                return fail(
                    at,
                    format!(
                        "the record says seq {}: records were moved",
                        record.get("seq").unwrap_or(&serde_json::Value::Null)
                    ),
                );
            }
            if record.get("kind").and_then(serde_json::Value::as_str) == Some("log.key_rotation") {
                // The new key replaces the old one: checkpoints covering the rotation and later
                // ones must be signed by the new key.
                let (old, new) = check_rotation(&record, &origin, &keys)
                    .or_else(|reason| fail(at.clone(), reason))?;
                keys.retain(|k| *k != old);
                keys.push(new);
                report.rotations += 1;
            }
            frontier.push(frame.hash);
            report.leaves += 1;
            if let Some(seen) = &seen
                && seen.size == frontier.size()
                && seen.root != frontier.root()
            {
                return fail(
                    Location::Log,
                    format!(
                        "fork: the first {} leaves differ from the checkpoint seen before",
                        seen.size
                    ),
                );
            }
            while next < checkpoints.len() && checkpoints[next].checkpoint.size == frontier.size() {
                let parsed = &checkpoints[next];
                check_checkpoint(parsed, &keys, Some(frontier.root()))?;
                // A previous checkpoint inside a pruned prefix has no provable subtrees left.
                if let Some(old) = previous.as_ref().filter(|old| old.size >= first) {
                    check_consistency(&reader, old, &parsed.checkpoint).or_else(|reason| {
                        fail(
                            Location::Checkpoint(parsed.index, Some(parsed.checkpoint.size)),
                            reason,
                        )
                    })?;
                }
                previous = Some(parsed.checkpoint.clone());
                next += 1;
                report.checkpoints += 1;
            }
        }
        let indexed = std::fs::metadata(&idx_path).map_or(0, |m| m.len() / segment::INDEX_ENTRY);
        if indexed != frontier.size() - info.first {
            return fail(
                Location::Leaf(frontier.size()),
                format!(
                    "the index ({}) lists {indexed} leaves, the segment holds {}",
                    display(&idx_path),
                    frontier.size() - info.first
                ),
            );
        }
    }

    let size = frontier.size();
    if let Some(parsed) = checkpoints.get(next) {
        return fail(
            Location::Checkpoint(parsed.index, Some(parsed.checkpoint.size)),
            format!(
                "it covers {} leaves but the log ends at {size}: the log was truncated after seq {}",
                parsed.checkpoint.size,
                size.saturating_sub(1)
            ),
        );
    }
    if let Some(seen) = &seen
        && seen.size > size
    {
        return fail(
            Location::Log,
            format!(
                "rolled back: the log holds {size} leaves, but a checkpoint of {} leaves was seen before",
                seen.size
            ),
        );
    }
    report.signed_size = previous.as_ref().map_or(0, |c| c.size);
    report.unsigned_tail = size - report.signed_size.max(first);
    if report.unsigned_tail > 0 && !opts.allow_unsigned_tail {
        return fail(
            Location::Leaf(report.signed_size.max(first)),
            format!(
                "{} leaves from here on are not covered by any signed checkpoint (appended after the last signature)",
                report.unsigned_tail
            ),
        );
    }
    report.root = frontier.root();
    Ok(report)
}

fn display(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn check_checkpoint(
    parsed: &ParsedCheckpoint,
    keys: &[NoteVerifier],
    root: Option<Hash>,
) -> Result<(), Failure> {
    let at = Location::Checkpoint(parsed.index, Some(parsed.checkpoint.size));
    if let Err(err) = parsed.note.verified_by(keys) {
        return fail(at, format!("not signed by a trusted key: {err}"));
    }
    if let Some(root) = root
        && root != parsed.checkpoint.root
    {
        return fail(
            at,
            format!(
                "its root differs from the root of the leaves: the log was altered before seq {}",
                parsed.checkpoint.size
            ),
        );
    }
    Ok(())
}

fn check_consistency(reader: &LogReader, old: &Checkpoint, new: &Checkpoint) -> Result<(), String> {
    if old.size == 0 || old.size == new.size {
        return Ok(());
    }
    let proof = consistency_proof(reader, old.size, new.size)
        .map_err(|err| format!("cannot prove consistency with size {}: {err}", old.size))?;
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof).map_err(|err| {
        format!(
            "not consistent with the previous checkpoint (size {}): {err}",
            old.size
        )
    })
}

/// Checks a `log.key_rotation` record and returns the old key and the new key it introduces.
fn check_rotation(
    record: &serde_json::Value,
    origin: &str,
    keys: &[NoteVerifier],
) -> Result<(NoteVerifier, NoteVerifier), String> {
    let rotation = &record["rotation"];
    let field = |name: &str| {
        rotation[name]
            .as_str()
            .ok_or_else(|| format!("key rotation without `{name}`"))
    };
    let old = NoteVerifier::parse(field("old_key")?).map_err(|err| err.to_string())?;
    let new = NoteVerifier::parse(field("new_key")?).map_err(|err| err.to_string())?;
    if !keys.contains(&old) {
        return Err(format!("key rotation from an untrusted key {old}"));
    }
    let signature: [u8; 64] = B64
        .decode(field("signature")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("key rotation signature is not 64 base64 bytes")?;
    if !old.verify_bytes(rotation_statement(origin, &new).as_bytes(), &signature) {
        return Err("the key rotation is not signed by the old key".into());
    }
    Ok((old, new))
}

#[cfg(test)]
mod tests;
