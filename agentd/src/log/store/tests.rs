use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};

use super::*;
use crate::log::{
    merkle::{consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion},
    note::NoteSigner,
    reader::LogReader,
};

fn options(dir: &Path) -> LogOptions {
    LogOptions {
        dir: dir.to_owned(),
        origin: "test.host/custos/log".into(),
        segment_bytes: 64 << 20,
        checkpoint_interval: Duration::from_millis(0),
        retention_age: None,
        retention_bytes: None,
    }
}

fn signer() -> NoteSigner {
    NoteSigner::new("test.host/custos/log", [5; 32]).unwrap()
}

fn record(i: u64) -> Obj {
    let mut obj = Obj::new();
    obj.str("kind", "test.event")
        .u64("i", i)
        .str("pad", &"x".repeat((i % 50) as usize));
    obj
}

fn append(log: &mut Log, n: u64) {
    for _ in 0..n {
        let i = log.next_seq();
        log.stage(&mut record(i), "test.event").unwrap();
    }
    log.commit().unwrap();
}

#[test]
fn appends_signs_reopens_and_proves() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, recovery) = Log::open(options(dir.path()), signer()).unwrap();
    assert!(recovery.created);
    append(&mut log, 300);
    let committed: Vec<u64> = log.committed().map(|c| c.seq).collect();
    assert_eq!(committed.len(), 300);
    assert_eq!((committed[0], committed[299]), (0, 299));
    let (checkpoint, note) = log.checkpoint().unwrap().unwrap().clone();
    assert_eq!(checkpoint.size, 300);
    assert!(note.verified_by(&[signer().verifier()]).is_ok());
    append(&mut log, 213);
    let root = log.root();
    drop(log);

    let (log, recovery) = Log::open(options(dir.path()), signer()).unwrap();
    assert!(!recovery.created && !recovery.repaired());
    assert_eq!((recovery.size, recovery.checkpoint_size), (513, 300));
    assert_eq!(log.root(), root);
    assert_eq!(log.tiles.len(), 2);
    assert_eq!(log.tile_leaves.len(), 1);

    let reader = LogReader::open(dir.path()).unwrap();
    let leaf = reader.leaf(7).unwrap();
    assert_eq!(leaf, record(7).tap_seq(7));
    // An inclusion proof of leaf 7 in the signed tree, and consistency from 300 to 513.
    let proof = inclusion_proof(&reader, 7, 300).unwrap();
    verify_inclusion(7, 300, &leaf_hash(&leaf), &proof, &checkpoint.root).unwrap();
    let proof = consistency_proof(&reader, 300, 513).unwrap();
    verify_consistency(300, 513, &checkpoint.root, &root, &proof).unwrap();
}

trait TapSeq {
    fn tap_seq(self, seq: u64) -> Vec<u8>;
}

impl TapSeq for Obj {
    fn tap_seq(mut self, seq: u64) -> Vec<u8> {
        self.u64("seq", seq);
        self.to_bytes()
    }
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(options(dir.path()), signer()).unwrap();
    append(&mut log, 10);
    log.checkpoint().unwrap();
    let segment = log.active.path.clone();
    drop(log);
    // Half a frame, as a crash mid-write leaves it.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    let mut frame = Vec::new();
    segment::encode_frame(&mut frame, 10, b"{\"kind\":\"half\"}");
    file.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(file);

    let (mut log, recovery) = Log::open(options(dir.path()), signer()).unwrap();
    assert_eq!(recovery.torn_bytes, (frame.len() / 2) as u64);
    assert_eq!(recovery.size, 10);
    assert!(recovery.repaired());
    append(&mut log, 1);
    assert_eq!(log.size(), 11);
    drop(log);
    assert_eq!(
        LogReader::open(dir.path()).unwrap().leaf(10).unwrap(),
        record(10).tap_seq(10)
    );
}

#[test]
fn a_log_shorter_than_its_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(options(dir.path()), signer()).unwrap();
    append(&mut log, 10);
    log.checkpoint().unwrap();
    let segment = log.active.path.clone();
    drop(log);
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 60)
        .unwrap();
    match Log::open(options(dir.path()), signer()) {
        Err(LogError::Inconsistent { detail, .. }) => {
            assert!(detail.contains("signed leaves are gone"), "{detail}")
        }
        other => panic!("expected an inconsistency, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn another_logs_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Log::open(options(dir.path()), signer()).unwrap();
    let mut other = options(dir.path());
    other.origin = "other/log".into();
    assert!(matches!(
        Log::open(other, signer()),
        Err(LogError::OriginMismatch { .. })
    ));
}

#[test]
fn segments_roll_and_retention_prunes_only_signed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let twin = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.segment_bytes = 4096;
    opts.retention_bytes = Some(1);
    let (mut log, _) = Log::open(opts.clone(), signer()).unwrap();
    // The same records in a log that is never pruned, to compare roots with.
    let (mut reference, _) = Log::open(options(twin.path()), signer()).unwrap();
    for _ in 0..10 {
        append(&mut log, 40);
        append(&mut reference, 40);
    }
    assert!(
        log.closed.len() >= 3,
        "{} closed segments",
        log.closed.len()
    );
    // Nothing is signed yet, so nothing may go.
    assert!(log.prunable().is_empty());
    log.checkpoint().unwrap();
    let prunable = log.prunable();
    assert!(!prunable.is_empty());
    let last = prunable.last().unwrap().clone();
    let base = log.prune(&last).unwrap();
    assert_eq!(base.size(), last.first + last.count);
    assert!(
        base.size() % TILE_LEAVES != 0,
        "the base cuts through a tile"
    );
    drop(log);

    // The log reopens from its base, completes the tile the base cut through, and keeps the
    // same roots as the unpruned twin.
    let (mut log, _) = Log::open(opts, signer()).unwrap();
    assert_eq!(log.root(), reference.root());
    append(&mut log, 300);
    append(&mut reference, 300);
    assert_eq!(log.root(), reference.root());
    assert_eq!(log.tiles, reference.tiles);
    let reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(reader.first(), base.size());
    assert!(reader.leaf(0).is_err());
    let seq = base.size() + 3;
    let proof = inclusion_proof(&reader, seq, log.size()).unwrap();
    verify_inclusion(
        seq,
        log.size(),
        &leaf_hash(&reader.leaf(seq).unwrap()),
        &proof,
        &log.root(),
    )
    .unwrap();
}

#[test]
fn key_file_modes_are_not_this_modules_business_but_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(options(dir.path()), signer()).unwrap();
    append(&mut log, 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log.active.path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode & 0o007, 0);
    let _ = std::fs::OpenOptions::new().mode(0o600);
}
