//! The `agentd` binary: parse the command line, load the configuration, run until a signal.

use std::{path::PathBuf, process::ExitCode};

use agentd::config::{Config, SensorMode};
use clap::Parser;

/// Custos agentd: binds processes to agent identities in the kernel and records what they do.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it agentd runs on its embedded default, which
    /// declares one demonstration agent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write event records to FILE instead of the configured `output.events`.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Also write every event record to standard output.
    #[arg(long)]
    stdout: bool,
    /// Report every process, those outside all agents as unattributed (`sensor.mode = "host"`).
    #[arg(long)]
    host_wide: bool,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Replace the log's signing key (the old key signs a rotation record in the log, and is
    /// kept next to the new one as `<key>.retired-<id>`).
    #[arg(long)]
    rotate_key: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Detach every program and free every map agentd pinned (under `sensor.pin_dir`), then
    /// exit: egress enforcement and identity binding stop. For uninstalling.
    #[arg(long)]
    remove_pins: bool,
}

fn print_error(err: &dyn std::error::Error, hint: Option<&str>) {
    eprintln!("agentd: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    if let Some(hint) = hint {
        eprintln!("  hint: {hint}");
    }
}

/// Standard error for agentd's diagnostics, ignoring write failures: when whoever reads it goes
/// away (a closed pipe, a restarted journal), agentd must go on recording and enforcing. The
/// signed log, not standard error, is the record; tracing-subscriber would otherwise report the
/// failure with `eprintln!`, which panics on a broken pipe.
struct DiagnosticStderr;

impl std::io::Write for DiagnosticStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| DiagnosticStderr)
        .init();

    if cli.print_default_config {
        print!("{}", agentd::config::EMBEDDED_DEFAULT);
        return ExitCode::SUCCESS;
    }
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(err) => {
                print_error(&err, Some("see docs/configuration.md for every key"));
                return ExitCode::from(2);
            }
        },
        None => Config::embedded_default(),
    };
    if let Some(events) = cli.events {
        if !events.is_absolute() {
            print_error(
                &std::io::Error::other(format!(
                    "--events {}: must be an absolute path",
                    events.display()
                )),
                None,
            );
            return ExitCode::from(2);
        }
        config.events_path = Some(events);
    }
    config.stdout |= cli.stdout;
    if cli.host_wide {
        config.mode = SensorMode::Host;
    }
    let policies = match config.policies() {
        Ok(policies) => policies,
        Err(err) => {
            print_error(&err, Some("see docs/egress.md for policy files"));
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!(
            "{}: configuration is valid ({} agents, {} egress policies)",
            config.source,
            config.agents.len(),
            policies.by_agent.len()
        );
        return ExitCode::SUCCESS;
    }
    if cli.remove_pins {
        return match agentd::sensor::remove_pins(&config.pin_dir) {
            Ok(()) => {
                println!(
                    "removed {}: programs detached, maps freed",
                    config.pin_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                print_error(&err, None);
                ExitCode::FAILURE
            }
        };
    }

    // Two workers: the resolvers and the signal loop; the pipeline has a thread of its own.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            print_error(&err, None);
            return ExitCode::FAILURE;
        }
    };
    let options = agentd::RunOptions {
        rotate_key: cli.rotate_key,
        config_path: cli.config.clone(),
        host_wide: cli.host_wide,
    };
    let result = runtime.block_on(agentd::run(config, options));
    match result {
        Ok(stats) => {
            tracing::info!(
                kernel_records = stats.kernel_records,
                records = stats.records,
                lost = stats.lost,
                "agentd stopped"
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            print_error(&err, err.hint());
            ExitCode::FAILURE
        }
    }
}
