//! The `agentd` binary: parse the command line, load the configuration, run until a signal.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
    if cli.check_config {
        println!(
            "{}: configuration is valid ({} agents)",
            config.source,
            config.agents.len()
        );
        return ExitCode::SUCCESS;
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            print_error(&err, None);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let flag = Arc::clone(&shutdown);
        let options = agentd::RunOptions {
            rotate_key: cli.rotate_key,
        };
        let mut daemon = tokio::task::spawn_blocking(move || agentd::run(config, options, &flag));
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|err| err.to_string())?;
        tokio::select! {
            result = &mut daemon => return result.map_err(|err| err.to_string()),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        }
        shutdown.store(true, Ordering::Relaxed);
        daemon.await.map_err(|err| err.to_string())
    });
    match result {
        Ok(Ok(stats)) => {
            tracing::info!(
                kernel_records = stats.kernel_records,
                records = stats.records,
                lost = stats.lost,
                "agentd stopped"
            );
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            print_error(&err, err.hint());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("agentd: error: {err}");
            ExitCode::FAILURE
        }
    }
}
