//! Tampering with a real log directory, one way at a time: each is caught, at the right entry.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;
use crate::{
    json::Obj,
    log::{
        files,
        note::NoteSigner,
        segment::{FrameReader, encode_frame, encode_index},
        store::{Log, LogOptions},
    },
};

const ORIGIN: &str = "test.host/custos/verify";

fn signer(byte: u8) -> NoteSigner {
    NoteSigner::new(ORIGIN, [byte; 32]).unwrap()
}

fn options(dir: &Path) -> VerifyOptions {
    let _ = dir;
    VerifyOptions {
        keys: vec![signer(1).verifier()],
        seen: None,
        allow_unsigned_tail: false,
    }
}

/// A log of 30 records with checkpoints at 10, 20 and 30.
fn build() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        dir: dir.path().to_owned(),
        origin: ORIGIN.into(),
        segment_bytes: 1 << 20,
        checkpoint_interval: Duration::ZERO,
        retention_age: None,
        retention_bytes: None,
    };
    let (mut log, _) = Log::open(opts, signer(1)).unwrap();
    for batch in 0..3 {
        for i in 0..10 {
            let mut obj = Obj::new();
            obj.str("kind", "test.event").u64("i", batch * 10 + i);
            log.stage(&mut obj, "test.event").unwrap();
        }
        log.commit().unwrap();
        log.checkpoint().unwrap();
    }
    let segment = dir.path().join(crate::log::segment::segment_name(0));
    (dir, segment)
}

fn frames(segment: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut reader = FrameReader::open(segment).unwrap();
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        let frame = frame.unwrap();
        out.push((frame.seq, frame.leaf));
    }
    out
}

/// Rewrites a segment and its index from frames, the way a careful attacker would.
fn rewrite(segment: &Path, frames: &[(u64, Vec<u8>)]) {
    let (mut seg, mut idx) = (Vec::new(), Vec::new());
    for (seq, leaf) in frames {
        let offset = seg.len() as u64;
        let hash = encode_frame(&mut seg, *seq, leaf);
        encode_index(&mut idx, offset, &hash);
    }
    fs::write(segment, seg).unwrap();
    fs::write(crate::log::segment::index_path(segment), idx).unwrap();
}

fn failure(dir: &Path, opts: &VerifyOptions) -> String {
    verify(dir, opts)
        .expect_err("tampering must be detected")
        .to_string()
}

#[test]
fn an_untouched_log_verifies() {
    let (dir, _) = build();
    let report = verify(dir.path(), &options(dir.path())).unwrap();
    assert_eq!(
        (
            report.leaves,
            report.checkpoints,
            report.signed_size,
            report.unsigned_tail
        ),
        (30, 3, 30, 0)
    );
}

#[test]
fn a_flipped_byte_names_the_event() {
    let (dir, segment) = build();
    let mut bytes = fs::read(&segment).unwrap();
    let at = frames(&segment)[..13]
        .iter()
        .map(|(_, l)| l.len() + 44)
        .sum::<usize>()
        + 12
        + 3;
    bytes[at] ^= 0x20;
    fs::write(&segment, bytes).unwrap();
    let err = failure(dir.path(), &options(dir.path()));
    assert!(
        err.starts_with("seq 13: ") && err.contains("does not match its hash"),
        "{err}"
    );
}

#[test]
fn a_rewritten_event_with_fixed_hashes_breaks_the_signed_root() {
    let (dir, segment) = build();
    let mut all = frames(&segment);
    all[13].1 = String::from_utf8(all[13].1.clone())
        .unwrap()
        .replace("\"i\":13", "\"i\":99")
        .into_bytes();
    rewrite(&segment, &all);
    let err = failure(dir.path(), &options(dir.path()));
    assert!(
        err.starts_with("checkpoint #1 (size 20): its root differs"),
        "{err}"
    );
    assert!(err.contains("altered before seq 20"), "{err}");
}

#[test]
fn a_deleted_event_is_named() {
    let (dir, segment) = build();
    let mut all = frames(&segment);
    all.remove(13);
    rewrite(&segment, &all);
    let err = failure(dir.path(), &options(dir.path()));
    assert!(err.starts_with("seq 13: the frame carries seq 14"), "{err}");
}

#[test]
fn swapped_events_are_named() {
    let (dir, segment) = build();
    let mut all = frames(&segment);
    all.swap(13, 14);
    rewrite(&segment, &all);
    assert!(
        failure(dir.path(), &options(dir.path())).starts_with("seq 13: the frame carries seq 14")
    );
    // Even with the frame numbers rewritten, the records' own seq gives the swap away.
    let mut renumbered = all.clone();
    renumbered[13].0 = 13;
    renumbered[14].0 = 14;
    rewrite(&segment, &renumbered);
    let err = failure(dir.path(), &options(dir.path()));
    assert!(err.starts_with("seq 13: the record says seq 14"), "{err}");
}

#[test]
fn a_truncated_tail_is_found() {
    let (dir, segment) = build();
    let all = frames(&segment);
    rewrite(&segment, &all[..25]);
    let err = failure(dir.path(), &options(dir.path()));
    assert!(
        err.starts_with("checkpoint #2 (size 30): it covers 30 leaves but the log ends at 25"),
        "{err}"
    );
    assert!(err.contains("truncated after seq 24"), "{err}");
}

#[test]
fn an_appended_forged_event_is_not_covered() {
    let (dir, segment) = build();
    let mut all = frames(&segment);
    all.push((
        30,
        br#"{"kind":"process.exec","seq":30,"forged":true}"#.to_vec(),
    ));
    rewrite(&segment, &all);
    let err = failure(dir.path(), &options(dir.path()));
    assert!(
        err.starts_with("seq 30: 1 leaves from here on are not covered"),
        "{err}"
    );

    // And a checkpoint the forger signs with their own key is refused.
    let mut frontier = crate::log::merkle::Frontier::new();
    for (_, leaf) in &all {
        frontier.push(crate::log::merkle::leaf_hash(leaf));
    }
    let forged = Checkpoint {
        origin: ORIGIN.into(),
        size: 31,
        root: frontier.root(),
    };
    let note = SignedNote::sign(&forged.body(), &[&signer(66)]);
    let mut checkpoints = fs::read(dir.path().join(files::CHECKPOINTS)).unwrap();
    checkpoints.extend(files::checkpoint_entry(&note.to_text()));
    fs::write(dir.path().join(files::CHECKPOINTS), checkpoints).unwrap();
    let err = failure(dir.path(), &options(dir.path()));
    assert!(
        err.starts_with("checkpoint #3 (size 31): not signed by a trusted key"),
        "{err}"
    );
}

#[test]
fn a_rolled_back_log_is_caught_with_a_checkpoint_seen_before() {
    let (dir, segment) = build();
    let seen = fs::read_to_string(dir.path().join(files::CHECKPOINT)).unwrap();
    // Roll back to the tree of 20: segment, index and checkpoints as they were then.
    let all = frames(&segment);
    rewrite(&segment, &all[..20]);
    let bytes = fs::read(dir.path().join(files::CHECKPOINTS)).unwrap();
    let (entries, _) = files::split_checkpoints(&bytes);
    fs::write(
        dir.path().join(files::CHECKPOINTS),
        &bytes[..entries[2].0 as usize],
    )
    .unwrap();
    // On its own the rolled-back log is self-consistent...
    verify(dir.path(), &options(dir.path())).unwrap();
    // ...but not to someone who saw the newer checkpoint.
    let opts = VerifyOptions {
        seen: Some(seen),
        ..options(dir.path())
    };
    let err = failure(dir.path(), &opts);
    assert!(
        err.starts_with(
            "rolled back: the log holds 20 leaves, but a checkpoint of 30 leaves was seen before"
        ),
        "{err}"
    );
}

#[test]
fn the_wrong_key_verifies_nothing() {
    let (dir, _) = build();
    let opts = VerifyOptions {
        keys: vec![signer(2).verifier()],
        ..options(dir.path())
    };
    let err = failure(dir.path(), &opts);
    assert!(
        err.starts_with("checkpoint #0 (size 10): not signed by a trusted key"),
        "{err}"
    );
}
