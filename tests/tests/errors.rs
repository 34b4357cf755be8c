//! Bad configurations and unfit hosts: each gets a clear message (file, line and field for
//! configuration mistakes; a hint for the host) and a non-zero exit.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    process::{Command, Output},
};

use custos_tests::{Dirs, agentd_path, cgroup_root, with_private_paths};

fn agentd_with_config(config: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(agentd_path())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (out, path.display().to_string())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn configuration_mistakes_name_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[sensor]\nmode = \"everything\"\n",
            ":2:8: field `sensor.mode`",
            "unknown mode",
        ),
        (
            "[sensor]\nmodee = \"host\"\n",
            ":2:1",
            "unknown field `modee`",
        ),
        (
            "[[agent]]\nname = \"a\"\nselectors = [{ cgroup = \"x/[\" }]\n",
            ":3:",
            "field `agent[0].selectors[0].cgroup`: invalid glob",
        ),
        (
            "[[agent]]\nname = \"a\"\nselectors = [{ executable = \"/bin/true\", sha256 = \"12\" }]\n",
            ":3:",
            "field `agent[0].selectors[0].sha256`",
        ),
        (
            "[[agent]]\nname = \"a\"\n",
            ":2:8: field `agent[0].selectors`",
            "has no selectors",
        ),
        (
            "[[agent]]\nname = \"a\"\nselectors = [{ uid = 1 }]\n[[agent]]\nname = \"a\"\nselectors = [{ uid = 2 }]\n",
            ":5:8: field `agent[1].name`",
            "already used",
        ),
        (
            "[sensor]\nring_buffer_bytes = 12345\n",
            ":2:21: field `sensor.ring_buffer_bytes`",
            "power of two",
        ),
        ("[sensor\n", ":1:8", "unclosed table"),
    ];
    for (config, location, message) in cases {
        let (out, path) = agentd_with_config(config);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "exit code for {config:?}: {err}"
        );
        assert!(
            err.contains(&format!("{path}{location}")),
            "location {location} for {config:?}:\n{err}"
        );
        assert!(
            err.contains(message),
            "message {message:?} for {config:?}:\n{err}"
        );
    }
    let out = Command::new(agentd_path())
        .args(["--config", "/nonexistent/agentd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/agentd.toml: cannot read the file"),
        "{}",
        stderr(&out)
    );
}

/// Runs agentd (with its files in a private directory) with `setup` applied in the child
/// between fork and exec.
fn agentd_in(setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static) -> Output {
    let dirs = Dirs::new();
    let config = dirs.path().join("agentd.toml");
    let text = with_private_paths(
        &dirs,
        &format!("[output]\nevents = \"{}\"\n", dirs.events().display()),
    );
    std::fs::write(&config, text).unwrap();
    // Readable by the unprivileged user of the not-root test.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dirs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(agentd_path());
    cmd.arg("--config").arg(&config);
    // SAFETY: the closures passed below only make system calls on memory prepared before fork.
    unsafe { cmd.pre_exec(setup) };
    cmd.output().unwrap()
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A private mount namespace, so the test can hide mounts from agentd only.
fn private_mounts() -> std::io::Result<()> {
    // SAFETY: plain system calls with NUL-terminated literals.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))
    }
}

#[test]
fn not_root() {
    let out = agentd_in(|| {
        // SAFETY: plain system calls.
        unsafe {
            check(libc::setgid(65534))?;
            check(libc::setuid(65534))
        }
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("agentd must run as root"), "{err}");
    assert!(err.contains("hint: run it as root"), "{err}");
}

#[test]
fn no_cgroup_v2_mount() {
    let root = CString::new(cgroup_root().display().to_string()).unwrap();
    let out = agentd_in(move || {
        private_mounts()?;
        // SAFETY: a NUL-terminated path prepared before fork.
        check(unsafe { libc::umount2(root.as_ptr(), libc::MNT_DETACH) })
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no cgroup v2 file system is mounted"), "{err}");
    assert!(err.contains("hint: mount it"), "{err}");
}

#[test]
fn no_btf() {
    let out = agentd_in(|| {
        private_mounts()?;
        // An empty tmpfs over /sys/kernel/btf hides vmlinux.
        // SAFETY: NUL-terminated literals.
        check(unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/sys/kernel/btf".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        })
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("publishes no BTF"), "{err}");
    assert!(err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
}

#[test]
fn the_kernel_refuses_the_programs() {
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: dropped from the bounding set, since
    // exec would give root its capabilities back otherwise. The kernel then refuses the maps
    // and programs.
    let out = agentd_in(|| {
        // CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF (include/uapi/linux/capability.h).
        for cap in [21 as libc::c_ulong, 38, 39] {
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })?;
        }
        Ok(())
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(
        err.contains("hint: agentd needs root with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"),
        "{err}"
    );
}

/// Whoever reads agentd's diagnostics may go away (a closed pipe, a restarted journal): agentd
/// keeps running, and still stops cleanly on SIGINT with its log intact.
#[test]
fn survives_its_stderr_closing() {
    use std::io::{BufRead as _, BufReader};
    let dirs = Dirs::new();
    let config = dirs.path().join("agentd.toml");
    std::fs::write(&config, with_private_paths(&dirs, "")).unwrap();
    let mut child = Command::new(agentd_path())
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("agentd ready") {
        line.clear();
    }
    assert!(line.contains("agentd ready"), "agentd did not start");
    drop(stderr);
    // Heartbeats and checkpoints go on; every diagnostic now meets a broken pipe.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "agentd died with its stderr"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "agentd exited with {status}");
    let (code, out) = custos_tests::agentctl(&[
        "verify",
        dirs.log().to_str().unwrap(),
        "--key",
        dirs.public_key().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
}
