//! The signed log end to end: the real agentd writes it; agentctl and an independent Python
//! verifier check it; tampering, crashes, a full disk and key rotation are each caught or
//! recorded.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use agentd::log::segment::{FrameReader, encode_frame, encode_index, index_path, segment_name};
use custos_tests::{Agentd, Cgroup, Dirs, Running, agentctl, python_verify, unique, workload_path};

const CONFIG: &str = "[[agent]]\nname = \"logged\"\nselectors = [{ cgroup = \"system.slice/custos-log-*.service\" }]\n";

/// Runs a short workload in an agent cgroup (a few hundred records).
fn workload(agentd: &mut Agentd, actions: &[&str]) -> u32 {
    let cgroup = Cgroup::create(&format!("system.slice/{}.service", unique("custos-log")));
    let mut cmd = cgroup.command(workload_path());
    cmd.arg("pid").args(actions).env_remove("LD_LIBRARY_PATH");
    let mut running = Running::spawn(cmd);
    let pid: u32 = running.line().parse().unwrap();
    running.wait();
    agentd.wait_for("the workload's exit", |r| {
        r["kind"] == "process.exit" && r["process"]["pid"] == pid
    });
    pid
}

fn verify(dirs: &Dirs, extra: &[&str]) -> (i32, String) {
    let log = dirs.log();
    let key = dirs.public_key();
    let mut args = vec![
        "verify",
        log.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    agentctl(&args)
}

/// A log written by agentd: two runs, a few hundred records.
fn written_log() -> Dirs {
    let dirs = Dirs::new();
    let mut agentd = Agentd::start_in(&dirs, CONFIG, &[]);
    workload(
        &mut agentd,
        &["spawn:3:/bin/true", "open:/etc/hostname", "exit:0"],
    );
    agentd.stop();
    let mut agentd = Agentd::start_in(&dirs, CONFIG, &[]);
    workload(&mut agentd, &["open-rate:0:0.05:/etc/hostname", "exit:0"]);
    agentd.stop();
    dirs
}

#[test]
fn agentctl_and_an_independent_python_verifier_agree() {
    let dirs = written_log();
    let (code, out) = verify(&dirs, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: log "), "{out}");
    let root = out
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .unwrap()
        .to_owned();

    // Every exported line is a leaf, in order: the export is the log.
    let export = fs::read_to_string(dirs.events()).unwrap();
    let lines: Vec<&str> = export.lines().collect();
    let leaves: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, leaf) in leaves.iter().enumerate() {
        assert_eq!(leaf["seq"], i as u64);
    }
    assert!(
        leaves
            .iter()
            .any(|r| r["kind"] == "log.recovery" && r["detail"]["previous_run"] == "clean")
    );

    // A proof of one record, checked by agentctl and by Python.
    let seq = leaves
        .iter()
        .position(|r| r["kind"] == "process.exec")
        .unwrap() as u64;
    let proof = dirs.path().join("proof.json");
    let (code, out) = agentctl(&[
        "proof",
        &seq.to_string(),
        "--dir",
        dirs.log().to_str().unwrap(),
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let bundle: serde_json::Value = serde_json::from_slice(&fs::read(&proof).unwrap()).unwrap();
    assert_eq!(bundle["leaf"], lines[seq as usize]);
    let key = dirs.public_key();
    let (code, out) = agentctl(&[
        "verify-proof",
        proof.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("ok: record {seq} is in log")),
        "{out}"
    );

    let (code, out) = python_verify(&dirs.log(), &key, Some(&proof));
    assert_eq!(code, 0, "{out}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        (fields[0], fields[1], fields[2]),
        ("OK", &*lines.len().to_string(), &*root),
        "{out}"
    );

    // A proof whose record was altered fails in both.
    let mut forged = bundle.clone();
    forged["leaf"] = serde_json::Value::String(
        lines[seq as usize].replace("\"process.exec\"", "\"process.exit\""),
    );
    fs::write(&proof, serde_json::to_vec(&forged).unwrap()).unwrap();
    let (code, out) = agentctl(&[
        "verify-proof",
        proof.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("inclusion proof"), "{out}");
    assert_eq!(python_verify(&dirs.log(), &key, Some(&proof)).0, 1);
}

/// Copies a log directory (to tamper with the copy).
fn copy_log(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
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

/// Rewrites a segment and its index consistently, as a careful attacker would.
fn rewrite(segment: &Path, frames: &[(u64, Vec<u8>)]) {
    let (mut seg, mut idx) = (Vec::new(), Vec::new());
    for (seq, leaf) in frames {
        let offset = seg.len() as u64;
        let hash = encode_frame(&mut seg, *seq, leaf);
        encode_index(&mut idx, offset, &hash);
    }
    fs::write(segment, seg).unwrap();
    fs::write(index_path(segment), idx).unwrap();
}

fn checkpoint_sizes(log: &Path) -> Vec<u64> {
    let bytes = fs::read(log.join("checkpoints")).unwrap();
    let (entries, _) = agentd::log::files::split_checkpoints(&bytes);
    entries
        .iter()
        .map(|(_, text)| text.lines().nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn tampering_is_caught_and_the_entry_named() {
    let dirs = written_log();
    let key = dirs.public_key();
    let seg_name = segment_name(0);
    let original = frames(&dirs.log().join(&seg_name));
    let size = original.len() as u64;
    let sizes = checkpoint_sizes(&dirs.log());
    let n = original
        .iter()
        .position(|(_, leaf)| String::from_utf8_lossy(leaf).contains("\"process.exec\""))
        .unwrap();
    // The first checkpoint that covers leaf n: a rewrite of leaf n breaks its root.
    let covering = sizes.iter().position(|&s| s > n as u64).unwrap();

    // Each case tampers with a copy; agentctl must name the entry, and the independent Python
    // verifier must reject it too.
    let case = |name: &str, tamper: &dyn Fn(&Path)| -> String {
        let dir = dirs.path().join(name);
        copy_log(&dirs.log(), &dir);
        tamper(&dir);
        let (code, out) = agentctl(&[
            "verify",
            dir.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{name} was not detected: {out}");
        let (py, py_out) = python_verify(&dir, &key, None);
        assert_eq!(py, 1, "python missed {name}: {py_out}");
        out.trim().to_owned()
    };

    let out = case("flipped-byte", &|dir| {
        let path = dir.join(&seg_name);
        let mut bytes = fs::read(&path).unwrap();
        let at = original[..n]
            .iter()
            .map(|(_, l)| l.len() + 44)
            .sum::<usize>()
            + 12
            + 2;
        bytes[at] ^= 0x01;
        fs::write(&path, bytes).unwrap();
    });
    assert!(
        out.starts_with(&format!("FAILED: seq {n}: ")) && out.contains("does not match its hash"),
        "{out}"
    );

    let out = case("rewritten", &|dir| {
        let mut all = original.clone();
        all[n].1 = String::from_utf8(all[n].1.clone())
            .unwrap()
            .replace("\"process.exec\"", "\"process.exit\"")
            .into_bytes();
        rewrite(&dir.join(&seg_name), &all);
    });
    assert!(
        out.starts_with(&format!(
            "FAILED: checkpoint #{covering} (size {}): its root differs",
            sizes[covering]
        )),
        "{out}"
    );

    let out = case("deleted", &|dir| {
        let mut all = original.clone();
        all.remove(n);
        rewrite(&dir.join(&seg_name), &all);
    });
    assert!(
        out.starts_with(&format!("FAILED: seq {n}: the frame carries seq {}", n + 1)),
        "{out}"
    );

    let out = case("swapped", &|dir| {
        let mut all = original.clone();
        all.swap(n, n + 1);
        rewrite(&dir.join(&seg_name), &all);
    });
    assert!(
        out.starts_with(&format!("FAILED: seq {n}: the frame carries seq {}", n + 1)),
        "{out}"
    );

    let out = case("truncated", &|dir| {
        rewrite(&dir.join(&seg_name), &original[..original.len() - 3])
    });
    assert!(
        out.contains(&format!(
            "but the log ends at {}: the log was truncated after seq {}",
            size - 3,
            size - 4
        )),
        "{out}"
    );

    let out = case("appended", &|dir| {
        let mut all = original.clone();
        all.push((
            size,
            format!("{{\"kind\":\"process.exec\",\"seq\":{size}}}").into_bytes(),
        ));
        rewrite(&dir.join(&seg_name), &all);
    });
    assert!(
        out.starts_with(&format!(
            "FAILED: seq {size}: 1 leaves from here on are not covered"
        )),
        "{out}"
    );

    let out = case("foreign-checkpoint", &|dir| {
        let origin = fs::read_to_string(dir.join("origin"))
            .unwrap()
            .trim()
            .to_owned();
        let forger = agentd::log::note::NoteSigner::new(&origin, [7; 32]).unwrap();
        let last = fs::read_to_string(dir.join("checkpoint")).unwrap();
        let body = last.split("\n\n").next().unwrap().to_owned() + "\n";
        let note = agentd::log::note::SignedNote::sign(&body, &[&forger]);
        let mut checkpoints = fs::read(dir.join("checkpoints")).unwrap();
        checkpoints.extend(agentd::log::files::checkpoint_entry(&note.to_text()));
        fs::write(dir.join("checkpoints"), checkpoints).unwrap();
    });
    assert!(out.contains("not signed by a trusted key"), "{out}");

    // Rolled back: an older, self-consistent state of the log, served after a newer checkpoint
    // was seen. Only the checkpoint seen before can tell.
    let seen = dirs.path().join("seen.checkpoint");
    fs::copy(dirs.log().join("checkpoint"), &seen).unwrap();
    let dir = dirs.path().join("rolled-back");
    copy_log(&dirs.log(), &dir);
    let keep = sizes[sizes.len() / 2] as usize;
    rewrite(&dir.join(&seg_name), &original[..keep]);
    let bytes = fs::read(dir.join("checkpoints")).unwrap();
    let (entries, _) = agentd::log::files::split_checkpoints(&bytes);
    let cut = entries
        .iter()
        .position(|(_, t)| t.lines().nth(1).unwrap().parse::<usize>().unwrap() > keep)
        .unwrap();
    fs::write(dir.join("checkpoints"), &bytes[..entries[cut].0 as usize]).unwrap();
    let dir_str = dir.to_str().unwrap();
    let (code, out) = agentctl(&["verify", dir_str, "--key", key.to_str().unwrap()]);
    assert_eq!(code, 0, "the rolled-back log is self-consistent: {out}");
    let (code, out) = agentctl(&[
        "verify",
        dir_str,
        "--key",
        key.to_str().unwrap(),
        "--checkpoint",
        seen.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("FAILED: rolled back: the log holds {keep} leaves, but a checkpoint of {size} leaves was seen before")), "{out}");
}

/// The latest signed checkpoint's size and text.
fn latest(log: &Path) -> Option<(u64, String)> {
    let text = fs::read_to_string(log.join("checkpoint")).ok()?;
    Some((text.lines().nth(1)?.parse().ok()?, text))
}

#[test]
fn sigkill_under_load_loses_nothing_signed_and_the_repair_is_recorded() {
    let dirs = Dirs::new();
    let mut agentd = Agentd::start_in(&dirs, CONFIG, &[]);
    let cgroup = Cgroup::create(&format!("system.slice/{}.service", unique("custos-log")));
    let mut cmd = cgroup.command(workload_path());
    cmd.args(["open-rate:20000:6:/etc/hostname"])
        .env_remove("LD_LIBRARY_PATH");
    let running = Running::spawn(cmd);
    // Under load, remember the newest signed checkpoint, then kill agentd without warning.
    std::thread::sleep(Duration::from_millis(2500));
    let (seen_size, seen) = latest(&dirs.log()).expect("a checkpoint under load");
    agentd.wait_for("records under load", |r| r["kind"] == "file.open");
    std::thread::sleep(Duration::from_millis(300));
    agentd.kill();
    running.wait();

    let seen_path = dirs.path().join("seen");
    fs::write(&seen_path, &seen).unwrap();
    let mut agentd = Agentd::start_in(&dirs, CONFIG, &[]);
    let recovery = agentd.wait_for("the recovery record", |r| r["kind"] == "log.recovery");
    assert_eq!(recovery["detail"]["previous_run"], "unclean", "{recovery}");
    agentd.stop();

    // Everything the checkpoint seen before the kill covered is there, and the log verifies.
    let (code, out) = verify(&dirs, &["--checkpoint", seen_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        seen_size > 1000,
        "the kill came under load ({seen_size} records signed)"
    );
    let (code, out) = python_verify(&dirs.log(), &dirs.public_key(), None);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_full_disk_is_an_outage_that_is_recorded_and_never_corrupts_the_log() {
    let dirs = Dirs::new();
    // The log on a 2 MiB file system of its own; the key and export elsewhere.
    let mount = dirs.path().join("small");
    fs::create_dir_all(&mount).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(status.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let log = mount.join("log");
    let config = format!(
        "[log]\ndir = \"{}\"\nkey = \"{}\"\nheartbeat_seconds = 1\n\n{CONFIG}",
        log.display(),
        dirs.key().display()
    );
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    // Fill the file system but for a little room, then make more records than fit.
    let filler = mount.join("filler");
    let free = nix::sys::statvfs::statvfs(&mount)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    fs::write(
        &filler,
        vec![0u8; (free as usize).saturating_sub(256 << 10)],
    )
    .unwrap();
    let cgroup = Cgroup::create(&format!("system.slice/{}.service", unique("custos-log")));
    let mut cmd = cgroup.command(workload_path());
    cmd.args(["open-rate:5000:1:/etc/hostname"])
        .env_remove("LD_LIBRARY_PATH");
    Running::spawn(cmd).wait();
    std::thread::sleep(Duration::from_secs(1));
    // agentd runs on through the outage (the sensor, and enforcement, never wait on the log)...
    assert!(
        std::process::Command::new("kill")
            .arg("-0")
            .arg(agentd.pid().to_string())
            .status()
            .unwrap()
            .success()
    );
    let during = agentd.records().len();
    fs::remove_file(&filler).unwrap();
    // ...and once space is back, a record says what could not be written.
    agentd.wait_for("an outage record", |r| r["kind"] == "log.outage");
    let records = agentd.records();
    let outages: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "log.outage")
        .collect();
    let not_written: u64 = outages
        .iter()
        .map(|r| r["detail"]["records_not_written"].as_u64().unwrap())
        .sum();
    let opens: u64 = outages
        .iter()
        .filter_map(|r| r["detail"]["not_written_by_kind"]["file.open"].as_u64())
        .sum();
    assert!(not_written > 0 && opens > 0, "{outages:?}");
    assert!(
        outages.iter().all(|r| r["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("No space left")),
        "{outages:?}"
    );
    // Every open the workload made is either in the log or counted as not written.
    let logged = records
        .iter()
        .filter(|r| r["kind"] == "file.open" && r["file"]["path"] == "/etc/hostname")
        .count() as u64;
    assert!(logged + opens >= 5000, "{logged} logged + {opens} counted");
    assert!(records.len() > during || not_written > 0);
    agentd.stop();
    let log_str = log.to_str().unwrap();
    let key = dirs.public_key();
    let (code, out) = agentctl(&["verify", log_str, "--key", key.to_str().unwrap()]);
    assert_eq!(code, 0, "the log survived the full disk intact: {out}");
}

#[test]
fn key_rotation_is_a_signed_record_that_hands_trust_to_the_new_key() {
    let dirs = Dirs::new();
    Agentd::start_in(&dirs, CONFIG, &[]).stop();
    let old_key = dirs.path().join("old.pub");
    fs::copy(dirs.public_key(), &old_key).unwrap();
    let mut agentd = Agentd::start_in(&dirs, CONFIG, &["--rotate-key"]);
    let rotation = agentd.wait_for("the rotation record", |r| r["kind"] == "log.key_rotation");
    agentd.stop();
    assert_eq!(
        rotation["rotation"]["old_key"].as_str().unwrap(),
        fs::read_to_string(&old_key).unwrap().trim()
    );
    assert_eq!(
        rotation["rotation"]["new_key"].as_str().unwrap(),
        fs::read_to_string(dirs.public_key()).unwrap().trim()
    );

    // The auditor who holds the old key verifies the whole log through the rotation.
    let log = dirs.log();
    let (code, out) = agentctl(&[
        "verify",
        log.to_str().unwrap(),
        "--key",
        old_key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 key rotations"), "{out}");
    let (code, out) = python_verify(&log, &old_key, None);
    assert_eq!(code, 0, "{out}");
    // The new key alone cannot vouch for what was signed before it existed.
    let (code, out) = agentctl(&[
        "verify",
        log.to_str().unwrap(),
        "--key",
        dirs.public_key().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("checkpoint #0") && out.contains("not signed by a trusted key"),
        "{out}"
    );
    // The retired key is kept, private.
    let retired = fs::read_dir(dirs.key().parent().unwrap())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains(".retired-"))
        .expect("the retired key");
    assert_eq!(retired.metadata().unwrap().permissions().mode() & 0o077, 0);
}

#[test]
fn a_key_others_can_read_is_refused() {
    let dirs = Dirs::new();
    Agentd::start_in(&dirs, CONFIG, &[]).stop();
    fs::set_permissions(dirs.key(), fs::Permissions::from_mode(0o644)).unwrap();
    let config = dirs.path().join("agentd.toml");
    let out = std::process::Command::new(custos_tests::agentd_path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is readable by other users (mode 0644)",
            dirs.key().display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: fix it with `chown root:root KEY && chmod 0600 KEY`"),
        "{err}"
    );
}

#[test]
fn retention_deletes_only_signed_segments_and_the_log_still_verifies() {
    let dirs = Dirs::new();
    let config = format!(
        "[log]\ndir = \"{}\"\nkey = \"{}\"\nsegment_mib = 1\nretention_mib = 2\n\n{CONFIG}",
        dirs.log().display(),
        dirs.key().display()
    );
    let mut agentd = Agentd::start_in(&dirs, &config, &[]);
    // About 6 MB of records: several 1 MiB segments, more than the 2 MiB kept.
    workload(
        &mut agentd,
        &["open-rate:20000:0.5:/etc/hostname", "exit:0"],
    );
    workload(
        &mut agentd,
        &["open-rate:20000:0.5:/etc/hostname", "exit:0"],
    );
    agentd.wait_for("a prune record", |r| r["kind"] == "log.prune");
    let records = agentd.stop();
    let prune = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "log.prune")
        .unwrap();
    let first = prune["detail"]["first_retained_seq"].as_u64().unwrap();
    assert!(first > 0);
    assert!(!dirs.log().join(segment_name(0)).exists());
    let (code, out) = verify(&dirs, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("(seq {first}..")), "{out}");
}
