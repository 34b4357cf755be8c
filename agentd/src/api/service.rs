//! The `custos.v1.Custos` service: every call authenticated, authorised by role, and the
//! operator calls (and every refusal) logged with the caller.
//!
//! Nothing here can stop, pause or rewrite the log: the API reads it and asks the pipeline to
//! append to it, like every other source of records.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    auth::{self, Authenticator, Caller},
    filter::Filter,
    hub::Hub,
    proto::{self, custos_server::Custos},
    stream,
};
use crate::{
    config::{ConfigError, api::Role},
    control::ControlTx,
    detect::actuator::Actuator,
    egress::state::{EgressState, PolicyChange, Quarantine},
    identity::registry::Registry,
    log::{merkle::consistency_proof, note::SignedNote, proof::ProofBundle, reader::LogReader},
    record::{Records, api::Requester},
    sensor::EgressMaps,
};

/// Longest reason accepted.
const MAX_REASON: usize = 1024;

/// Re-reads the configuration and puts new policies in force (the daemon implements it).
pub trait Reload: Send + Sync {
    /// Reloads on behalf of `by`; the changes made, or why nothing changed.
    fn reload(&self, by: &Requester<'_>) -> Result<Vec<PolicyChange>, ConfigError>;
}

/// The service.
pub struct Service {
    hub: Arc<Hub>,
    auth: Authenticator,
    registry: Arc<Registry>,
    egress: Arc<Mutex<EgressState<EgressMaps>>>,
    control: ControlTx,
    records: Records,
    reloader: Arc<dyn Reload>,
    actuator: Arc<Actuator>,
}

/// What the service needs.
pub struct Parts {
    /// Published records and figures.
    pub hub: Arc<Hub>,
    /// Caller identification.
    pub auth: Authenticator,
    /// The agents.
    pub registry: Arc<Registry>,
    /// Egress state (policies, quarantines).
    pub egress: Arc<Mutex<EgressState<EgressMaps>>>,
    /// Where records made here go.
    pub control: ControlTx,
    /// Policy reloads.
    pub reloader: Arc<dyn Reload>,
    /// The detector's containment (a release undoes it).
    pub actuator: Arc<Actuator>,
}

impl Service {
    /// The service.
    pub fn new(parts: Parts) -> Self {
        Self {
            hub: parts.hub,
            auth: parts.auth,
            registry: parts.registry,
            egress: parts.egress,
            control: parts.control,
            records: Records::new(),
            reloader: parts.reloader,
            actuator: parts.actuator,
        }
    }

    /// The caller, if it may make a call that needs `needed`; a refusal is logged.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &str,
        needed: Role,
    ) -> Result<Caller, Status> {
        match self.auth.caller(request) {
            Ok(caller) if auth::allowed(&caller, needed) => Ok(caller),
            Ok(caller) => {
                let reason = format!("{method} needs the {} role", needed.as_str());
                tracing::warn!(caller = %caller.name, method, "refused: {reason}");
                self.control.send(self.records.api_denied(
                    method,
                    &caller.name,
                    Some(caller.role.as_str()),
                    caller.transport,
                    &reason,
                ));
                Err(auth::refused(method, Some(&caller), &reason))
            }
            Err(unknown) => {
                tracing::warn!(peer = %unknown.peer, method, reason = %unknown.reason, "refused an unauthenticated call");
                self.control.send(self.records.api_denied(
                    method,
                    &unknown.peer,
                    None,
                    "unknown",
                    &unknown.reason,
                ));
                Err(auth::refused(method, None, &unknown.reason))
            }
        }
    }

    fn agent_id(&self, name: &str) -> Result<u32, Status> {
        self.registry
            .agents()
            .find(|(_, a)| a.name == name || a.spiffe_id == name)
            .map(|(id, _)| id)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .registry
                    .agents()
                    .map(|(_, a)| a.name.as_str())
                    .collect();
                Status::not_found(format!(
                    "no agent named {name:?} (configured: {})",
                    known.join(", ")
                ))
            })
    }

    fn agent_message(&self, id: u32) -> Option<proto::Agent> {
        let spec = self.registry.agent(id)?;
        let egress = self.egress.lock().unwrap_or_else(PoisonError::into_inner);
        let policy = egress.policy_of(id).map(|p| proto::EgressPolicy {
            mode: p.mode.as_str().to_owned(),
            version: p.hash,
            rules: p
                .rules
                .iter()
                .map(|(id, text)| format!("{id}: {text}"))
                .collect(),
            source: p.source,
        });
        let containment = egress
            .quarantine_of(id)
            .map_or_else(proto::Containment::default, |q| proto::Containment {
                quarantined: true,
                reason: q.reason.clone(),
                by: q.by.clone(),
                since_ms: q.since_ms,
            });
        drop(egress);
        let processes = self
            .hub
            .processes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|p| p.agent == id)
            .map(|p| proto::Process {
                pid: p.pid,
                start_ns: p.start_ns,
                binding: p.binding.to_owned(),
                name: p.exe.clone(),
            })
            .collect();
        Some(proto::Agent {
            spiffe_id: spec.spiffe_id.clone(),
            name: spec.name.clone(),
            owner: spec.owner.clone(),
            scopes: spec.scopes.clone(),
            trust_tier: spec.trust_tier.as_str().to_owned(),
            selectors: self
                .registry
                .selectors()
                .iter()
                .filter(|s| s.agent_id == id)
                .map(|s| proto::Selector {
                    id: s.id,
                    r#type: s.kind.type_name().to_owned(),
                    value: s.kind.value(),
                })
                .collect(),
            policy,
            containment: Some(containment),
            processes,
        })
    }

    /// Quarantines or releases, logged with the caller.
    fn contain(
        &self,
        request: Request<proto::ContainmentRequest>,
        quarantine: bool,
    ) -> Result<Response<proto::ContainmentResponse>, Status> {
        let method = if quarantine { "Quarantine" } else { "Release" };
        let caller = self.authorize(&request, method, Role::Operator)?;
        let request = request.into_inner();
        let reason = check_reason(&request.reason)?;
        let agent = self.agent_id(&request.agent)?;
        let by = requester(&caller, reason);
        let changed = self
            .egress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_quarantine(
                agent,
                quarantine.then(|| Quarantine::now(reason, caller.name.clone())),
            )
            .map_err(|err| Status::internal(format!("cannot update the kernel map: {err}")))?;
        // A release also undoes what the detector did (frozen processes) and closes its
        // incident: only an operator ends a containment.
        let released = (!quarantine).then(|| self.actuator.release(agent));
        let changed = changed
            || released
                .as_ref()
                .is_some_and(|r| r.thawed > 0 || r.continued > 0);
        tracing::warn!(agent = %request.agent, caller = %caller.name, reason, changed, ?released, "{}", if quarantine { "agent quarantined" } else { "agent released" });
        self.control.send(self.records.containment(
            &self.registry,
            agent,
            quarantine,
            changed,
            &by,
            released.as_ref(),
        ));
        let containment = self
            .agent_message(agent)
            .and_then(|a| a.containment)
            .unwrap_or_default();
        Ok(Response::new(proto::ContainmentResponse {
            changed,
            containment: Some(containment),
        }))
    }
}

/// How records name an authorised caller and the reason it gave.
fn requester<'a>(caller: &'a Caller, reason: &'a str) -> Requester<'a> {
    Requester {
        caller: &caller.name,
        role: caller.role.as_str(),
        transport: caller.transport,
        reason,
    }
}

fn check_reason(reason: &str) -> Result<&str, Status> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Status::invalid_argument(
            "a reason is required: it is logged with the action",
        ));
    }
    if reason.len() > MAX_REASON {
        return Err(Status::invalid_argument(format!(
            "the reason is longer than {MAX_REASON} bytes"
        )));
    }
    Ok(reason)
}

fn latest_note(hub: &Hub) -> Result<(SignedNote, u64), Status> {
    let latest = hub
        .latest_checkpoint()
        .ok_or_else(|| Status::unavailable("no checkpoint signed yet"))?;
    let note = SignedNote::parse(&latest.note)
        .map_err(|err| Status::internal(format!("the latest checkpoint does not parse: {err}")))?;
    Ok((note, latest.size))
}

fn blocking_error(err: tokio::task::JoinError) -> Status {
    Status::internal(err.to_string())
}

type EventStream = Pin<Box<dyn Stream<Item = stream::Response> + Send>>;

#[tonic::async_trait]
impl Custos for Service {
    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<proto::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = self.authorize(&request, "StreamEvents", Role::Reader)?;
        let request = request.into_inner();
        let filter = Filter::new(request.filter).map_err(Status::invalid_argument)?;
        let rx = stream::subscribe(&self.hub, request.from_sequence, filter, caller.name)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        self.authorize(&request, "GetCheckpoint", Role::Reader)?;
        let latest = self
            .hub
            .latest_checkpoint()
            .ok_or_else(|| Status::unavailable("no checkpoint signed yet"))?;
        Ok(Response::new(stream::checkpoint_message(&latest)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProof>, Status> {
        self.authorize(&request, "GetInclusionProof", Role::Reader)?;
        let seq = request.into_inner().sequence;
        let (note, _) = latest_note(&self.hub)?;
        let dir = self.hub.log_dir.clone();
        let latest = self.hub.latest_checkpoint();
        let bundle = tokio::task::spawn_blocking(move || {
            let reader = LogReader::open(&dir).map_err(|e| Status::unavailable(e.to_string()))?;
            ProofBundle::make(&reader, seq, &note).map_err(|e| Status::out_of_range(e.0))
        })
        .await
        .map_err(blocking_error)??;
        Ok(Response::new(proto::InclusionProof {
            sequence: bundle.seq,
            record: bundle.leaf.into_bytes(),
            checkpoint: latest.map(|c| stream::checkpoint_message(&c)),
            hashes: bundle.proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProof>, Status> {
        self.authorize(&request, "GetConsistencyProof", Role::Reader)?;
        let request = request.into_inner();
        let (_, signed) = latest_note(&self.hub)?;
        let (old, new) = (request.old_size, request.new_size);
        if old > new || new > signed {
            return Err(Status::out_of_range(format!(
                "sizes must satisfy old_size <= new_size <= {signed} (the latest checkpoint)"
            )));
        }
        let dir = self.hub.log_dir.clone();
        let hashes = tokio::task::spawn_blocking(move || {
            let reader = LogReader::open(&dir).map_err(|e| Status::unavailable(e.to_string()))?;
            consistency_proof(&reader, old, new).map_err(|e| Status::out_of_range(e.to_string()))
        })
        .await
        .map_err(blocking_error)??;
        Ok(Response::new(proto::ConsistencyProof {
            old_size: old,
            new_size: new,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<proto::ListAgentsRequest>,
    ) -> Result<Response<proto::ListAgentsResponse>, Status> {
        self.authorize(&request, "ListAgents", Role::Reader)?;
        let agents = self
            .registry
            .agents()
            .filter_map(|(id, _)| self.agent_message(id))
            .collect();
        Ok(Response::new(proto::ListAgentsResponse { agents }))
    }

    async fn get_agent(
        &self,
        request: Request<proto::GetAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        self.authorize(&request, "GetAgent", Role::Reader)?;
        let id = self.agent_id(&request.into_inner().agent)?;
        self.agent_message(id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such agent"))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        self.authorize(&request, "Status", Role::Reader)?;
        let hub = &self.hub;
        let committed = hub.committed();
        let latest = hub.latest_checkpoint();
        let (origin, public_key) = hub
            .origin
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(Response::new(proto::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: hub.uptime().as_secs(),
            programs: hub
                .programs
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(name, target)| proto::Program {
                    name: name.clone(),
                    target: target.clone(),
                })
                .collect(),
            kernel_records: hub.counters.kernel_records.load(Relaxed),
            records: hub.counters.records.load(Relaxed),
            records_per_second: hub.records_per_second(),
            lost: hub.counters.lost.load(Relaxed),
            origin,
            public_key,
            log_size: committed,
            checkpoint_size: latest.as_ref().map_or(0, |c| c.size),
            checkpoint_age_ms: latest.as_ref().map_or(0, |c| {
                c.at.elapsed()
                    .min(Duration::from_secs(u32::MAX as u64))
                    .as_millis() as u64
            }),
            subscribers: hub
                .subscribers()
                .into_iter()
                .map(|(id, caller, next)| proto::Subscriber {
                    id,
                    caller,
                    next_sequence: next,
                    behind: committed.saturating_sub(next),
                })
                .collect(),
        }))
    }

    async fn quarantine(
        &self,
        request: Request<proto::ContainmentRequest>,
    ) -> Result<Response<proto::ContainmentResponse>, Status> {
        self.contain(request, true)
    }

    async fn release(
        &self,
        request: Request<proto::ContainmentRequest>,
    ) -> Result<Response<proto::ContainmentResponse>, Status> {
        self.contain(request, false)
    }

    async fn relearn(
        &self,
        request: Request<proto::ContainmentRequest>,
    ) -> Result<Response<proto::RelearnResponse>, Status> {
        let caller = self.authorize(&request, "Relearn", Role::Operator)?;
        let request = request.into_inner();
        let reason = check_reason(&request.reason)?;
        let agent = self.agent_id(&request.agent)?;
        let by = requester(&caller, reason);
        tracing::warn!(agent = %request.agent, caller = %caller.name, reason, "baseline sent back to learning");
        self.control
            .send(self.records.relearn(&self.registry, agent, &by));
        // The pipeline applies it at its next tick and logs the profile's change.
        self.actuator.request_relearn(agent);
        Ok(Response::new(proto::RelearnResponse {}))
    }

    async fn reload_policy(
        &self,
        request: Request<proto::ReloadPolicyRequest>,
    ) -> Result<Response<proto::ReloadPolicyResponse>, Status> {
        let caller = self.authorize(&request, "ReloadPolicy", Role::Operator)?;
        let reason = check_reason(&request.get_ref().reason)?.to_owned();
        let reloader = Arc::clone(&self.reloader);
        let outcome =
            tokio::task::spawn_blocking(move || reloader.reload(&requester(&caller, &reason)))
                .await
                .map_err(blocking_error)?;
        Ok(Response::new(match outcome {
            Ok(changes) => proto::ReloadPolicyResponse {
                applied: true,
                changes: changes
                    .iter()
                    .map(|c| proto::PolicyChange {
                        agent: self
                            .registry
                            .agent(c.agent)
                            .map_or_else(|| c.agent.to_string(), |a| a.name.clone()),
                        old_version: c.old.clone().unwrap_or_default(),
                        new_version: c.new.clone().unwrap_or_default(),
                    })
                    .collect(),
                error: String::new(),
            },
            Err(err) => proto::ReloadPolicyResponse {
                applied: false,
                changes: Vec::new(),
                error: err.to_string(),
            },
        }))
    }
}
