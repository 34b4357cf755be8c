//! `cargo xtask`: orchestration for Custos. Every command does its own set-up first.
//!
//! - `setup`: installs what a fresh machine lacks (nightly rust-src, bpf-linker) and mounts
//!   bpffs and tracefs; idempotent.
//! - `run`: builds agentd and runs it on the embedded default configuration, with a demo agent
//!   process so events show at once.
//! - `test`: the whole test suite: unit tests, then the privileged end-to-end tests.
//! - `bench`: benchmarks (results in `target/bench/results.json`).
//! - `eval`: the detector's detection rate, false alarms and response times against the real
//!   daemon (results in `target/eval/results.json`).
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a command-line tool"
)]

mod bench;
mod bench_api;
mod bench_egress;
mod bench_overhead;
mod bench_sensor;
mod daemon;
mod eval;
mod peers;
mod run;
mod setup;
mod test;
mod util;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Custos development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker) and mount bpffs/tracefs.
    Setup,
    /// Build and run agentd on its embedded default configuration, printing events.
    Run(run::Options),
    /// Run the whole test suite, including the privileged end-to-end tests.
    Test(test::Options),
    /// Measure: overhead against auditd and bpftrace, throughput and loss, latencies, memory
    /// (see docs/BENCHMARKS.md).
    Bench(bench::Options),
    /// Evaluate the detector: benign agents and attacks against the real daemon.
    Eval(eval::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Run(options) => run::run(options),
        Command::Test(options) => test::run(options),
        Command::Bench(options) => bench::run(options),
        Command::Eval(options) => eval::run(options),
    }
}
