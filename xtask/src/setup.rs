//! `cargo xtask setup`: what a fresh machine needs before agentd can be built and tested.
//!
//! The recipe is the one verified in KERNEL_AND_TOOLCHAIN.md:
//! 1. `rust-src` for the nightly toolchain (aya-build compiles `core` for the BPF target);
//! 2. bpf-linker 0.13.0 linked against the LLVM the nightly rustc ships (a plain
//!    `cargo install bpf-linker` wants a system LLVM the machines do not have);
//! 3. bpffs and tracefs mounted (agentd mounts them too, but the tests read them);
//! 4. the programs the end-to-end tests drive, from Debian's packages: dnsmasq (a real DNS
//!    upstream) and iproute2 (network namespaces); the Python modules the verifiers import.
//!
//! Every step checks first and does nothing when the machine is already set up.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{self, output};

/// The bpf-linker release that links LLVM 22, as the nightly's rustc does.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    mounts()?;
    system_packages()?;
    python_packages()?;
    println!("setup: done");
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let Some(version) = output(Command::new("rustc").args(["+nightly", "--version"])) else {
        bail!(
            "setup: no nightly toolchain: the eBPF programs are built with nightly Rust.\n  \
             hint: rustup toolchain install nightly --component rust-src"
        );
    };
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for {version}: present");
        return Ok(());
    }
    println!("setup: rust-src for {version}: installing");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("setup: cannot install rust-src for the nightly toolchain")
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        if version.contains(BPF_LINKER_VERSION) {
            println!("setup: {version}: present");
            return Ok(());
        }
        println!("setup: {version} found, {BPF_LINKER_VERSION} wanted: reinstalling");
    } else {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: installing (about a minute on 2 cores)");
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("setup: cannot ask the nightly rustc for its sysroot")?;
    let lib = Path::new(&sysroot).join("lib");
    // The nightly ships its LLVM as lib/libLLVM.so.<major>.<minor>-rust-<version>-nightly.
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("setup: cannot list {}", lib.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .with_context(|| {
            format!(
                "setup: no libLLVM.so.*-rust-* in {}: cannot link bpf-linker",
                lib.display()
            )
        })?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("setup: cannot read the LLVM version from {llvm}"))?;
    let prefix = util::workspace_root().join("target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("setup: cannot create {}", prefix_lib.display()))?;
    for name in ["libLLVM.so".to_owned(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = fs::remove_file(&link);
        symlink(lib.join(&llvm), &link)
            .with_context(|| format!("setup: cannot link {}", link.display()))?;
    }
    println!(
        "setup: linking bpf-linker against {} (LLVM {major})",
        lib.join(&llvm).display()
    );
    util::run(
        util::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("setup: cannot build bpf-linker")
}

/// Programs the end-to-end tests run: (program, Debian package).
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    ("dnsmasq", "dnsmasq-base"),
    ("ip", "iproute2"),
    // The deployment tests: `systemd-analyze verify` and running agentd with the unit's
    // privileges.
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
];

fn system_packages() -> anyhow::Result<()> {
    install_packages(SYSTEM_PACKAGES, "the end-to-end tests")
}

/// The tools the benchmarks compare agentd with: (program, Debian package).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("auditd", "auditd"),
    ("auditctl", "auditd"),
    ("bpftrace", "bpftrace"),
];

/// Installs what `cargo xtask bench` compares with (auditd, bpftrace); the tests do not need
/// them, so [`run`] does not.
pub fn bench_tools() -> anyhow::Result<()> {
    install_packages(BENCH_PACKAGES, "the benchmarks")?;
    let missing: Vec<&str> = BENCH_PACKAGES
        .iter()
        .filter(|(program, _)| !installed(program))
        .map(|(program, _)| *program)
        .collect();
    if !missing.is_empty() {
        bail!("setup: the benchmarks need {}", missing.join(", "));
    }
    Ok(())
}

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).exists())
}

fn install_packages(packages: &[(&str, &str)], who: &str) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .filter(|(program, _)| {
            let found = installed(program);
            println!(
                "setup: {program}: {}",
                if found { "present" } else { "missing" }
            );
            !found
        })
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        println!(
            "setup: {who} need {}; install them as root (`apt-get install {}`)",
            missing.join(", "),
            missing.join(" ")
        );
        return Ok(());
    }
    let install = |packages: &[&str]| {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    println!("setup: installing {} with apt-get", missing.join(", "));
    if !install(&missing) {
        // A fresh machine may have no package lists yet.
        println!("setup: apt-get update, then installing again");
        util::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("setup: apt-get update failed")?;
        if !install(&missing) {
            bail!("setup: cannot install {} with apt-get", missing.join(", "));
        }
    }
    Ok(())
}

/// Python packages the independent verifiers in `tests/python` import.
/// grpcio and grpcio-tools (its protoc, as a library) make the independent API client: pinned,
/// so the generated code is the same on every machine.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("cryptography", "cryptography"),
    ("grpc", "grpcio==1.85.1"),
    ("grpc_tools", "grpcio-tools==1.85.1"),
];

fn python_packages() -> anyhow::Result<()> {
    for (module, package) in PYTHON_PACKAGES {
        if output(Command::new("python3").args(["-c", &format!("import {module}")])).is_some() {
            println!("setup: python3 module {module}: present");
            continue;
        }
        println!("setup: python3 module {module}: installing {package} with pip");
        util::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))
            .with_context(|| format!("setup: cannot install the Python package {package}"))?;
    }
    Ok(())
}

fn mounts() -> anyhow::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = |fstype: &str, at: &str| {
        mountinfo.lines().any(|line| {
            let Some((left, right)) = line.split_once(" - ") else {
                return false;
            };
            left.split(' ').nth(4) == Some(at) && right.split(' ').next() == Some(fstype)
        })
    };
    for (fstype, at) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        if mounted(fstype, at) {
            println!("setup: {fstype} at {at}: mounted");
            continue;
        }
        if !util::is_root() {
            println!(
                "setup: {fstype} is not mounted at {at}; agentd mounts it when it starts as root"
            );
            continue;
        }
        println!("setup: mounting {fstype} at {at}");
        fs::create_dir_all(at).ok();
        util::run(Command::new("mount").args(["-t", fstype, fstype, at]))
            .with_context(|| format!("setup: cannot mount {fstype} at {at}"))?;
    }
    Ok(())
}
