//! The `agentctl` commands.
//!
//! Operator and auditor commands talk to a running agentd over its API ([`remote`]): `status`,
//! `agents`, `tail`, `quarantine`, `release`, `policy reload|diff`, and `verify`/`proof`/
//! `checkpoint` with `--online`.
//!
//! The log commands also work offline, on a log directory and a public key, so an auditor needs
//! nothing from the host but a copy of the files:
//!
//! - `agentctl verify DIR --key KEY`: every leaf, every checkpoint signature, consistency between
//!   checkpoints, sequence continuity; names the first bad entry.
//! - `agentctl proof SEQ [--dir DIR]`: a record with its inclusion proof against the latest
//!   checkpoint, as a self-contained JSON bundle.
//! - `agentctl verify-proof FILE --key KEY`: checks such a bundle.
#![expect(
    clippy::print_stdout,
    reason = "a command-line tool prints its results"
)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

pub mod remote;

use crate::log::{
    note::NoteVerifier,
    proof::ProofBundle,
    reader::LogReader,
    verify::{VerifyOptions, verify},
};

/// The default log directory.
const DEFAULT_LOG: &str = "/var/lib/custos/log";

/// Custos agentctl: watch and steer agentd, verify the signed activity log, prove records.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    conn: remote::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon's health: programs, rates, losses, checkpoint age, subscribers.
    Status,
    /// The agents: identity, selectors, policy, containment, live processes.
    Agents {
        /// One agent (name or SPIFFE id).
        name: Option<String>,
        /// JSON, one agent per line.
        #[arg(long)]
        json: bool,
    },
    /// Follow the log live (or from --from), filtered.
    Tail(remote::TailArgs),
    /// Follow the detector's alerts, containment actions and closed incidents: `tail` of
    /// `detector.alert`, `detector.action` and `detector.closed` unless --kind says otherwise.
    Alerts(remote::TailArgs),
    /// Cut an agent's egress in the kernel (operator). Logged with you and the reason.
    Quarantine {
        /// Name or SPIFFE id.
        agent: String,
        /// Why (required, logged).
        #[arg(long)]
        reason: String,
    },
    /// Send an agent's behaviour baseline back to learning (operator), keeping what it learned:
    /// how a new behaviour is accepted. Logged with you and the reason.
    Relearn {
        /// Name or SPIFFE id.
        agent: String,
        /// Why (required, logged).
        #[arg(long)]
        reason: String,
    },
    /// Lift a quarantine (operator). Logged with you and the reason.
    Release {
        /// Name or SPIFFE id.
        agent: String,
        /// Why (required, logged).
        #[arg(long)]
        reason: String,
    },
    /// Policy changes.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Verify a log directory offline (or the running daemon's log with --online): every
    /// record, every checkpoint signature, consistency between checkpoints and sequence
    /// continuity. Exits 1 at the first problem, naming it.
    Verify {
        /// The log directory (offline).
        #[arg(required_unless_present = "online")]
        dir: Option<PathBuf>,
        /// Verify what the running daemon serves instead of a directory.
        #[arg(long, conflicts_with_all = ["checkpoint", "allow_unsigned_tail"])]
        online: bool,
        /// A trusted public key: the key text (`name+id+base64`) or a file holding it. Repeat
        /// for several.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// A checkpoint of this log seen earlier (a file): the log must still contain that tree,
        /// which catches a log rolled back or forked since.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Accept records after the last checkpoint (a running daemon signs them within a
        /// second).
        #[arg(long)]
        allow_unsigned_tail: bool,
    },
    /// Print a record with its inclusion proof against the latest checkpoint (JSON).
    Proof {
        /// The record's sequence number.
        seq: u64,
        /// Ask the running daemon instead of reading a directory.
        #[arg(long)]
        online: bool,
        /// The log directory.
        #[arg(long, default_value = DEFAULT_LOG)]
        dir: PathBuf,
        /// Write the bundle to FILE instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof bundle written by `agentctl proof`.
    VerifyProof {
        /// The bundle.
        file: PathBuf,
        /// A trusted public key (text or file). Repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Print the latest signed checkpoint of a log.
    Checkpoint {
        /// The log directory.
        #[arg(long, default_value = DEFAULT_LOG)]
        dir: PathBuf,
        /// Ask the running daemon instead of reading a directory.
        #[arg(long)]
        online: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Re-read the configuration and policy files and put them in force (operator), as SIGHUP
    /// does; an invalid policy is refused and the old one stays.
    Reload {
        /// Why (required, logged).
        #[arg(long)]
        reason: String,
    },
    /// Show how the policies of a configuration differ from those in force. Exits 1 when they
    /// differ.
    Diff {
        /// The configuration file (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs an API command on a small runtime.
fn online<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// Parses a key given as text or as a file holding it.
fn parse_key(arg: &str) -> anyhow::Result<NoteVerifier> {
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read key file {arg}"))?
    } else {
        arg.to_owned()
    };
    NoteVerifier::parse(&text).with_context(|| {
        format!("{arg} is not a public key (expected name+id+base64, or a file holding one)")
    })
}

fn keys(args: &[String]) -> anyhow::Result<Vec<NoteVerifier>> {
    args.iter().map(|a| parse_key(a)).collect()
}

/// Runs one command; `Ok` carries the exit code (1 for a failed verification).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = &cli.conn;
    match cli.command {
        Command::Status => online(remote::status(conn)),
        Command::Agents { name, json } => online(remote::agents(conn, name, json)),
        Command::Tail(args) => online(remote::tail(conn, args)),
        Command::Alerts(mut args) => {
            if args.kinds.is_empty() {
                args.kinds = ["detector.alert", "detector.action", "detector.closed"]
                    .map(String::from)
                    .to_vec();
            }
            online(remote::tail(conn, args))
        }
        Command::Quarantine { agent, reason } => online(remote::contain(conn, agent, reason, true)),
        Command::Release { agent, reason } => online(remote::contain(conn, agent, reason, false)),
        Command::Relearn { agent, reason } => online(remote::relearn(conn, agent, reason)),
        Command::Policy(PolicyCommand::Reload { reason }) => online(remote::reload(conn, reason)),
        Command::Policy(PolicyCommand::Diff { config }) => online(remote::diff(conn, config)),
        Command::Verify {
            online: true,
            keys: key_args,
            ..
        } => {
            let keys = keys(&key_args)?;
            online(remote::verify(conn, &keys))
        }
        Command::Verify {
            dir,
            keys: key_args,
            checkpoint,
            allow_unsigned_tail,
            ..
        } => {
            let dir = dir.context("a log directory (or --online) is required")?;
            let seen = match checkpoint {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let opts = VerifyOptions {
                keys: keys(&key_args)?,
                seen,
                allow_unsigned_tail,
            };
            match verify(&dir, &opts) {
                Ok(report) => {
                    println!(
                        "ok: log {} verified: {} records (seq {}..{}), {} checkpoints, signed through seq {}{}{}",
                        report.origin,
                        report.leaves,
                        report.first,
                        (report.first + report.leaves).saturating_sub(1),
                        report.checkpoints,
                        report.signed_size.saturating_sub(1),
                        if report.unsigned_tail > 0 {
                            format!(", {} records not yet signed", report.unsigned_tail)
                        } else {
                            String::new()
                        },
                        if report.rotations > 0 {
                            format!(", {} key rotations", report.rotations)
                        } else {
                            String::new()
                        },
                    );
                    println!("root {}", hex::encode(report.root));
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    println!("FAILED: {failure}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Proof {
            seq,
            dir,
            out,
            online: remote_proof,
        } => {
            let bundle = if remote_proof {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?
                    .block_on(remote::proof(conn, seq))?
            } else {
                let reader = LogReader::open(&dir)?;
                let checkpoint = reader
                    .latest_checkpoint()?
                    .with_context(|| format!("{} has no signed checkpoint yet", dir.display()))?;
                ProofBundle::make(&reader, seq, &checkpoint)?
            };
            let mut json = bundle.to_json();
            json.push(b'\n');
            match out {
                Some(path) => std::fs::write(&path, &json)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().write_all(&json)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyProof {
            file,
            keys: key_args,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bundle = ProofBundle::from_json(&bytes)?;
            match bundle.verify(&keys(&key_args)?) {
                Ok(checkpoint) => {
                    println!(
                        "ok: record {} is in log {} (checkpoint of {} records, root {})",
                        bundle.seq,
                        checkpoint.origin,
                        checkpoint.size,
                        hex::encode(checkpoint.root)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    println!("FAILED: {err}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Checkpoint { online: true, .. } => online(async {
            let mut client = conn.connect().await?;
            let checkpoint = client
                .get_checkpoint(crate::api::proto::GetCheckpointRequest {})
                .await
                .map_err(remote::explain)?
                .into_inner();
            print!("{}", checkpoint.note);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Checkpoint { dir, .. } => {
            let reader = LogReader::open(&dir)?;
            match reader.latest_checkpoint()? {
                Some(note) => {
                    print!("{}", note.to_text());
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!("{} has no signed checkpoint yet", dir.display()),
            }
        }
    }
}
