//! `agentctl`: the operator and auditor command line. See `agentctl --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = agentd::ctl::Cli::parse();
    match agentd::ctl::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("agentctl: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
