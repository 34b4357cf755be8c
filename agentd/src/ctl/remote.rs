//! The `agentctl` commands that talk to a running agentd over its API.
#![expect(
    clippy::print_stdout,
    reason = "a command-line tool prints its results"
)]

use std::{collections::BTreeMap, io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Args;
use tonic::{Code, Status};

use crate::{
    api::{
        client::{self, Target},
        proto::{self, custos_client::CustosClient, stream_events_response::Item},
    },
    config::{Config, api::DEFAULT_SOCKET},
    log::{
        merkle::{Hash, leaf_hash, root_of, verify_consistency},
        note::{Checkpoint, NoteVerifier, SignedNote},
        proof::ProofBundle,
    },
};

/// Where agentd is: its Unix socket (default), or TCP with mutual TLS.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// agentd's API socket.
    #[arg(long, env = "CUSTOS_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Connect over TCP with mutual TLS to HOST:PORT instead of the socket.
    #[arg(long, global = true, requires_all = ["ca", "cert", "key"])]
    pub endpoint: Option<String>,
    /// CA certificate that signed agentd's TLS certificate (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// The name agentd's certificate must carry (default: the endpoint's host).
    #[arg(long, global = true)]
    pub server_name: Option<String>,
}

impl Connection {
    fn target(&self) -> Target {
        match (&self.endpoint, &self.ca, &self.cert, &self.key) {
            (Some(endpoint), Some(ca), Some(cert), Some(key)) => Target::Tls {
                endpoint: endpoint.clone(),
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                server_name: self.server_name.clone(),
            },
            _ => Target::Unix(self.socket.clone()),
        }
    }

    /// Connects, or explains why not.
    pub async fn connect(&self) -> anyhow::Result<CustosClient<tonic::transport::Channel>> {
        Ok(client::connect(&self.target()).await?)
    }
}

/// Turns a refused call into a message a person can act on.
pub fn explain(status: Status) -> anyhow::Error {
    let hint = match status.code() {
        Code::PermissionDenied => {
            " (operator calls need root or `[api] operator_group` on the socket, or an operator certificate)"
        }
        Code::Unauthenticated => " (the API does not know this client)",
        Code::Unavailable => " (is agentd running?)",
        _ => "",
    };
    anyhow::anyhow!("{}: {}{hint}", code_name(status.code()), status.message())
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "unauthenticated",
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::OutOfRange => "out of range",
        Code::Unavailable => "unavailable",
        _ => "error",
    }
}

/// `agentctl status`.
pub async fn status(conn: &Connection) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    let s = client
        .status(proto::StatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    println!("agentd {} up {}s", s.version, s.uptime_seconds);
    println!("log        {} ({} records)", s.origin, s.log_size);
    println!("key        {}", s.public_key);
    println!(
        "checkpoint {} records, signed {:.1}s ago",
        s.checkpoint_size,
        s.checkpoint_age_ms as f64 / 1000.0
    );
    println!(
        "records    {} ({} from the kernel), {:.1}/s, {} lost in the kernel",
        s.records, s.kernel_records, s.records_per_second, s.lost
    );
    println!("programs   {} attached", s.programs.len());
    for p in &s.programs {
        println!("  {:<28} {}", p.name, p.target);
    }
    println!("subscribers {}", s.subscribers.len());
    for sub in &s.subscribers {
        println!(
            "  #{:<4} {:<32} next {} ({} behind)",
            sub.id, sub.caller, sub.next_sequence, sub.behind
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `agentctl agents [NAME]`.
pub async fn agents(
    conn: &Connection,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    let agents = match name {
        Some(agent) => vec![
            client
                .get_agent(proto::GetAgentRequest { agent })
                .await
                .map_err(explain)?
                .into_inner(),
        ],
        None => {
            client
                .list_agents(proto::ListAgentsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .agents
        }
    };
    for a in &agents {
        if json {
            println!("{}", agent_json(a));
            continue;
        }
        let containment = a.containment.clone().unwrap_or_default();
        println!("{} ({})", a.name, a.spiffe_id);
        println!(
            "  owner {}, trust tier {}, scopes [{}]",
            a.owner,
            a.trust_tier,
            a.scopes.join(", ")
        );
        for s in &a.selectors {
            println!("  selector {} {}", s.r#type, s.value);
        }
        match &a.policy {
            Some(p) => {
                println!(
                    "  egress {} policy {} ({})",
                    p.mode,
                    &p.version[..16.min(p.version.len())],
                    p.source
                );
                for rule in &p.rules {
                    println!("    allow {rule}");
                }
            }
            None => println!("  egress: no policy (connections recorded, not decided)"),
        }
        if containment.quarantined {
            println!(
                "  QUARANTINED by {}: {}",
                containment.by, containment.reason
            );
        }
        println!("  processes {}", a.processes.len());
        for p in &a.processes {
            println!("    {:>7} {:<10} {}", p.pid, p.binding, p.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn agent_json(a: &proto::Agent) -> serde_json::Value {
    serde_json::json!({
        "spiffe_id": a.spiffe_id,
        "name": a.name,
        "owner": a.owner,
        "scopes": a.scopes,
        "trust_tier": a.trust_tier,
        "selectors": a.selectors.iter().map(|s| serde_json::json!({"id": s.id, "type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "policy": a.policy.as_ref().map(|p| serde_json::json!({"mode": p.mode, "version": p.version, "rules": p.rules, "source": p.source})),
        "containment": a.containment.as_ref().map(|c| serde_json::json!({"quarantined": c.quarantined, "reason": c.reason, "by": c.by, "since_ms": c.since_ms})),
        "processes": a.processes.iter().map(|p| serde_json::json!({"pid": p.pid, "start_ns": p.start_ns.to_string(), "binding": p.binding, "name": p.name})).collect::<Vec<_>>(),
    })
}

/// What `agentctl tail` shows.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Start at this sequence number (default: only new records).
    #[arg(long)]
    pub from: Option<u64>,
    /// Only this agent (name or SPIFFE id); repeat for several.
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Only these kinds (`net.connect`, or a prefix ending in a dot: `net.`); repeat.
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Only these OCSF classes (4001 ...); repeat.
    #[arg(long = "class")]
    pub classes: Vec<u32>,
    /// Only these decisions (`deny`, `would_deny`, `allow`, `refused` ...); repeat.
    #[arg(long = "decision")]
    pub decisions: Vec<String>,
    /// One JSON object per line: `{"sequence":N,"record":{...}}`, `{"checkpoint":{...}}`,
    /// `{"lag":{...}}`.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Colour: auto (on a terminal), always, never.
    #[arg(long, default_value = "auto")]
    pub color: String,
}

/// `agentctl tail`.
pub async fn tail(conn: &Connection, args: TailArgs) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    let color = match args.color.as_str() {
        "always" => true,
        "never" => false,
        "auto" => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        other => bail!("--color {other}: expected auto, always or never"),
    };
    let mut stream = client
        .stream_events(proto::StreamEventsRequest {
            from_sequence: args.from,
            filter: Some(proto::EventFilter {
                agents: args.agents,
                kinds: args.kinds,
                class_uids: args.classes,
                decisions: args.decisions,
            }),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let mut shown = 0u64;
    while let Some(message) = stream.message().await.map_err(explain)? {
        match message.item {
            Some(Item::Event(event)) => {
                if args.json {
                    let record = String::from_utf8_lossy(&event.record);
                    println!("{{\"sequence\":{},\"record\":{record}}}", event.sequence);
                } else {
                    println!("{}", human_line(&event, color));
                }
                shown += 1;
                if args.count.is_some_and(|c| shown >= c) {
                    break;
                }
            }
            // People do not need checkpoints scrolling by; machines get them to verify.
            Some(Item::Checkpoint(c)) if args.json => {
                println!(
                    "{}",
                    serde_json::json!({"checkpoint": {"origin": c.origin, "tree_size": c.tree_size, "root_hash": hex::encode(&c.root_hash), "note": c.note}})
                );
            }
            Some(Item::Checkpoint(_)) => {}
            Some(Item::Lag(lag)) => {
                if args.json {
                    println!("{}", serde_json::json!({"lag": {"behind": lag.behind}}));
                } else {
                    eprintln!(
                        "agentctl: fell {} records behind; catching up from the log",
                        lag.behind
                    );
                }
            }
            None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One record as a line for people: sequence, time, kind, agent, the gist.
fn human_line(event: &proto::Event, color: bool) -> String {
    let v: serde_json::Value = serde_json::from_slice(&event.record).unwrap_or_default();
    let time = v["time"].as_u64().map_or_else(String::new, |ms| {
        let secs = ms / 1000;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            ms % 1000
        )
    });
    let agent = v["agent"]["name"].as_str().unwrap_or("-");
    let process = &v["actor"]["process"];
    let who = match process["pid"].as_u64() {
        Some(pid) => format!("{}[{pid}]", process["name"].as_str().unwrap_or("?")),
        None => String::new(),
    };
    let gist = match event.kind.split('.').next().unwrap_or("") {
        "process" => v["process"]["cmd_line"]
            .as_str()
            .or(v["process"]["file"]["path"].as_str())
            .unwrap_or("")
            .to_owned(),
        "file" => v["file"]["path"].as_str().unwrap_or("").to_owned(),
        "net" => format!(
            "{}:{} {}",
            v["dst_endpoint"]["ip"].as_str().unwrap_or("?"),
            v["dst_endpoint"]["port"].as_u64().unwrap_or(0),
            v["egress"]["verdict"].as_str().unwrap_or("")
        ),
        "dns" => format!(
            "{} {}",
            v["query"]["hostname"].as_str().unwrap_or("?"),
            v["egress"]["decision"].as_str().unwrap_or("")
        ),
        _ => v["reason"]
            .as_str()
            .or(v["status_detail"].as_str())
            .unwrap_or("")
            .to_owned(),
    };
    let line = format!(
        "{:>8} {time} {:<18} {:<12} {who} {gist}",
        event.sequence, event.kind, agent
    );
    if !color {
        return line;
    }
    let severity = v["severity_id"].as_u64().unwrap_or(0);
    let code = match severity {
        4.. => "31",
        3 => "33",
        2 => "36",
        _ => "0",
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

/// `agentctl relearn AGENT --reason R`.
pub async fn relearn(conn: &Connection, agent: String, reason: String) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    client
        .relearn(proto::ContainmentRequest {
            agent: agent.clone(),
            reason,
        })
        .await
        .map_err(explain)?;
    println!("{agent}: baseline sent back to learning (logged)");
    Ok(ExitCode::SUCCESS)
}

/// `agentctl quarantine|release AGENT --reason R`.
pub async fn contain(
    conn: &Connection,
    agent: String,
    reason: String,
    quarantine: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    let request = proto::ContainmentRequest {
        agent: agent.clone(),
        reason,
    };
    let response = if quarantine {
        client.quarantine(request).await
    } else {
        client.release(request).await
    }
    .map_err(explain)?
    .into_inner();
    let verb = if quarantine {
        "quarantined"
    } else {
        "released"
    };
    if response.changed {
        println!("{agent}: {verb} (logged)");
    } else {
        println!("{agent}: already {verb} (the request is logged)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `agentctl policy reload --reason R`.
pub async fn reload(conn: &Connection, reason: String) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    let response = client
        .reload_policy(proto::ReloadPolicyRequest { reason })
        .await
        .map_err(explain)?
        .into_inner();
    if !response.applied {
        println!("refused: {}", response.error);
        println!("the policies in force are unchanged");
        return Ok(ExitCode::from(1));
    }
    if response.changes.is_empty() {
        println!("no policy changed");
    }
    for c in &response.changes {
        let short = |v: &str| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v[..16.min(v.len())].to_owned()
            }
        };
        println!(
            "{}: {} -> {}",
            c.agent,
            short(&c.old_version),
            short(&c.new_version)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `agentctl policy diff [--config FILE]`: the policies a configuration would put in force,
/// against those in force.
pub async fn diff(conn: &Connection, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = match &config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    };
    let wanted = config.policies()?;
    let registry = crate::identity::registry::Registry::new(&config);
    let mut client = conn.connect().await?;
    let running = client
        .list_agents(proto::ListAgentsRequest {})
        .await
        .map_err(explain)?
        .into_inner()
        .agents;
    // Agent name → (the policy in force, the configuration's: version, rules, mode).
    type Wanted = (String, Vec<String>, String);
    let mut names: BTreeMap<String, (Option<&proto::EgressPolicy>, Option<Wanted>)> =
        BTreeMap::new();
    for a in &running {
        names.entry(a.name.clone()).or_default().0 = a.policy.as_ref();
    }
    for (id, policy) in &wanted.by_agent {
        let Some(spec) = registry.agent(*id) else {
            continue;
        };
        let rules = policy
            .rules
            .iter()
            .map(|r| format!("{}: {}", r.id, r.describe()))
            .collect();
        names.entry(spec.name.clone()).or_default().1 = Some((
            hex::encode(policy.version()),
            rules,
            policy.mode.as_str().to_owned(),
        ));
    }
    let mut differ = false;
    for (name, (now, new)) in &names {
        match (now, new) {
            (None, None) => {}
            (Some(now), Some((version, rules, mode))) if now.version == *version => {
                println!("{name}: unchanged ({mode}, {})", &version[..16]);
                let _ = rules;
            }
            (Some(now), Some((version, rules, mode))) => {
                differ = true;
                println!(
                    "{name}: {} {} -> {mode} {}",
                    now.mode,
                    &now.version[..16],
                    &version[..16]
                );
                for rule in &now.rules {
                    if !rules.contains(rule) {
                        println!("  - {rule}");
                    }
                }
                for rule in rules {
                    if !now.rules.contains(rule) {
                        println!("  + {rule}");
                    }
                }
            }
            (None, Some((version, rules, mode))) => {
                differ = true;
                println!("{name}: no policy -> {mode} {}", &version[..16]);
                for rule in rules {
                    println!("  + {rule}");
                }
            }
            (Some(now), None) => {
                differ = true;
                println!("{name}: {} {} -> no policy", now.mode, &now.version[..16]);
            }
        }
    }
    Ok(if differ {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `agentctl proof SEQ --online`: the bundle `agentctl proof` writes, from the daemon.
pub async fn proof(conn: &Connection, seq: u64) -> anyhow::Result<ProofBundle> {
    let mut client = conn.connect().await?;
    let p = client
        .get_inclusion_proof(proto::GetInclusionProofRequest { sequence: seq })
        .await
        .map_err(explain)?
        .into_inner();
    let checkpoint = p.checkpoint.context("the daemon sent no checkpoint")?;
    Ok(ProofBundle {
        seq: p.sequence,
        leaf: String::from_utf8(p.record).context("the record is not UTF-8")?,
        checkpoint: checkpoint.note,
        proof: p
            .hashes
            .iter()
            .map(|h| {
                h.as_slice()
                    .try_into()
                    .context("a proof hash is not 32 bytes")
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// `agentctl verify --online --key K`: streams the whole log from the daemon, recomputes the
/// tree, and checks every checkpoint received against it (signature, root) and each against
/// the one before (consistency, via the daemon's proof).
pub async fn verify(conn: &Connection, keys: &[NoteVerifier]) -> anyhow::Result<ExitCode> {
    let mut client = conn.connect().await?;
    let head = client
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let mut stream = client
        .stream_events(proto::StreamEventsRequest {
            from_sequence: Some(0),
            filter: None,
        })
        .await
        .map_err(|status| {
            if status.code() == Code::OutOfRange {
                anyhow::anyhow!(
                    "{}: retention removed the start of the log; verify a copy offline with `agentctl verify DIR --key KEY`",
                    status.message()
                )
            } else {
                explain(status)
            }
        })?
        .into_inner();
    let mut hashes: Vec<Hash> = Vec::new();
    let mut checked = 0u64;
    let mut previous: Option<Checkpoint> = None;
    while let Some(message) = stream.message().await.map_err(explain)? {
        match message.item {
            Some(Item::Event(event)) => {
                if event.sequence != hashes.len() as u64 {
                    println!(
                        "FAILED: expected record {}, received {}",
                        hashes.len(),
                        event.sequence
                    );
                    return Ok(ExitCode::from(1));
                }
                hashes.push(leaf_hash(&event.record));
            }
            Some(Item::Checkpoint(c)) => {
                let note = SignedNote::parse(&c.note)?;
                if note.verified_by(keys).is_err() {
                    println!(
                        "FAILED: checkpoint of {} records: no trusted signature",
                        c.tree_size
                    );
                    return Ok(ExitCode::from(1));
                }
                let body = Checkpoint::parse_body(&note.body)?;
                if body.size > hashes.len() as u64
                    || root_of(&hashes[..body.size as usize]) != body.root
                {
                    println!(
                        "FAILED: checkpoint of {} records does not match the records received",
                        body.size
                    );
                    return Ok(ExitCode::from(1));
                }
                if let Some(prev) = &previous {
                    let proof = client
                        .get_consistency_proof(proto::GetConsistencyProofRequest {
                            old_size: prev.size,
                            new_size: body.size,
                        })
                        .await
                        .map_err(explain)?
                        .into_inner();
                    let hashes: Vec<[u8; 32]> = proof
                        .hashes
                        .iter()
                        .filter_map(|h| h.as_slice().try_into().ok())
                        .collect();
                    if verify_consistency(prev.size, body.size, &prev.root, &body.root, &hashes)
                        .is_err()
                    {
                        println!(
                            "FAILED: checkpoint {} is not consistent with checkpoint {}",
                            body.size, prev.size
                        );
                        return Ok(ExitCode::from(1));
                    }
                }
                checked += 1;
                let done = body.size >= head.tree_size;
                previous = Some(body);
                if done {
                    break;
                }
            }
            _ => {}
        }
    }
    match previous {
        Some(last) if last.size >= head.tree_size => {
            println!(
                "ok: log {} verified online: {} records, {} checkpoints checked, root {}",
                last.origin,
                last.size,
                checked,
                hex::encode(last.root)
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            println!(
                "FAILED: the stream ended before the checkpoint of {} records",
                head.tree_size
            );
            Ok(ExitCode::from(1))
        }
    }
}
