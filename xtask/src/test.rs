//! `cargo xtask test`: the whole suite. Unit tests first (no root needed), then the privileged
//! end-to-end tests in `tests/`, which start the real agentd against real processes, cgroups and
//! sockets. Everything builds in the release profile, once: the end-to-end tests use the same
//! agentd build they measure.

use anyhow::bail;

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Run only the unit tests (no root needed).
    #[arg(long)]
    unit_only: bool,
    /// Run only the end-to-end tests whose names contain this.
    #[arg(long)]
    filter: Option<String>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    setup::run()?;
    let root = util::workspace_root();
    if options.filter.is_none() {
        util::run(util::cargo().current_dir(&root).args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "sensor-ebpf",
            "--exclude",
            "custos-tests",
        ]))?;
    }
    if options.unit_only {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and create cgroups: run them as root \
             (`sudo -E cargo xtask test`), or pass --unit-only"
        );
    }
    util::run(
        util::cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "agentd"]),
    )?;
    let agentd = root.join("target/release/agentd");
    let mut cmd = util::cargo();
    cmd.current_dir(&root)
        .args(["test", "--release", "-p", "custos-tests", "--"])
        // The tests share the kernel's hooks and the cgroup tree: one at a time.
        .arg("--test-threads=1")
        .env("CUSTOS_AGENTD", &agentd);
    if let Some(filter) = &options.filter {
        cmd.arg(filter);
    }
    util::run(&mut cmd)
}
