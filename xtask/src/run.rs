//! `cargo xtask run`: build agentd and run it on the embedded default configuration, printing
//! every event. The default configuration declares one demo agent (the cgroup
//! `custos.slice/demo*.scope`); a short demo workload runs in that cgroup once agentd is ready,
//! so events show at once. Stop with Ctrl-C.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Do not start the demo workload.
    #[arg(long)]
    no_demo: bool,
    /// Report every process on the host, not only the demo agent.
    #[arg(long)]
    host_wide: bool,
}

const EVENTS: &str = "/var/lib/custos/events.jsonl";

fn wait_ready(since: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = fs::read(EVENTS) {
            let fresh = text.get(since as usize..).unwrap_or_default();
            if fresh
                .windows(b"\"agentd.start\"".len())
                .any(|w| w == b"\"agentd.start\"")
            {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

fn demo(cgroup: &Path) -> anyhow::Result<()> {
    let procs = cgroup.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec sh -c 'cat /etc/hostname > /dev/null; ls / > /dev/null; \
         (exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null; rm -f /tmp/custos-demo; touch /tmp/custos-demo; exit 0'",
        procs.display()
    );
    util::run(Command::new("bash").args(["-c", &script]))
}

pub fn run(options: Options) -> anyhow::Result<()> {
    setup::run()?;
    if !util::is_root() {
        bail!("agentd loads eBPF programs: run this as root (`sudo -E cargo xtask run`)");
    }
    let root = util::workspace_root();
    util::run(
        util::cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "agentd"]),
    )?;
    let cgroup = util::cgroup2_root()?.join("custos.slice/demo.scope");
    fs::create_dir_all(&cgroup).with_context(|| format!("cannot create {}", cgroup.display()))?;

    let since = fs::metadata(EVENTS).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(root.join("target/release/agentd"));
    cmd.arg("--stdout");
    if options.host_wide {
        cmd.arg("--host-wide");
    }
    println!("+ {}", util::describe(&cmd));
    let mut agentd = cmd.spawn().context("cannot start agentd")?;
    // Ctrl-C reaches agentd through the terminal's process group; this process waits for it.
    // SAFETY: setting SIGINT to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    if !options.no_demo {
        if wait_ready(since) {
            eprintln!(
                "\n== demo: a shell in {} runs a few commands; their events follow ==",
                cgroup.display()
            );
            demo(&cgroup)?;
            eprintln!(
                "\n== any process in that cgroup is the demo agent: try\n   echo $$ > {}/cgroup.procs\n\
                 == events also go to {EVENTS}; Ctrl-C stops agentd ==\n",
                cgroup.display()
            );
        } else {
            eprintln!("agentd did not report ready within 30 s; see its messages above");
        }
    }
    let status = agentd.wait().context("waiting for agentd")?;
    // A real deployment keeps its programs attached after agentd exits (fail closed); a demo
    // leaves nothing behind.
    let removed = Command::new(root.join("target/release/agentd"))
        .arg("--remove-pins")
        .stdout(std::process::Stdio::null())
        .status();
    if !removed.is_ok_and(|s| s.success()) {
        eprintln!("could not remove agentd's pins: run `target/release/agentd --remove-pins`");
    }
    if !status.success() {
        bail!("agentd exited with {status}");
    }
    Ok(())
}
