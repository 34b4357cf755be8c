//! Records of the API: containment actions and refused calls (SOC 2 CC6.1, CC7.4 evidence:
//! who did what to which agent, and why; who tried and was refused).

use sensor_common::identity::AgentRef;

use super::{Class, Record, Records};
use crate::{clock::BootClock, identity::registry::Registry, json::Obj};

const NETWORK_REMEDIATION: Class = Class {
    uid: 7004,
    name: "Network Remediation Activity",
    category_uid: 7,
    category_name: "Remediation",
};

const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
};

/// Who made an API call, for records.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The caller (`uid:0(root)`, a certificate identity).
    pub caller: &'a str,
    /// Its role.
    pub role: &'a str,
    /// `unix` or `tls`.
    pub transport: &'a str,
    /// The reason it gave.
    pub reason: &'a str,
}

impl Requester<'_> {
    /// The `actor` member.
    pub fn write(&self, obj: &mut Obj) {
        obj.obj("actor", |a| {
            a.obj("user", |u| {
                u.str("name", self.caller).str("type", self.role);
            })
            .str("transport", self.transport);
        })
        .str("reason", self.reason);
    }
}

impl Records {
    /// `containment.quarantine` / `containment.release`: an operator cut or restored an
    /// agent's egress.
    pub fn containment(
        &self,
        registry: &Registry,
        agent: u32,
        quarantine: bool,
        changed: bool,
        by: &Requester<'_>,
        released: Option<&crate::detect::actuator::Released>,
    ) -> Record {
        let (kind, activity_id, activity) = if quarantine {
            ("containment.quarantine", 1, "Isolate")
        } else {
            ("containment.release", 99, "Release")
        };
        let mut obj = self.base(
            kind,
            &NETWORK_REMEDIATION,
            activity_id,
            activity,
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, if quarantine { 4 } else { 3 });
        Self::agent_as(
            &mut obj,
            registry,
            AgentRef {
                agent_id: agent,
                selector_id: 0,
            },
            "containment",
        );
        by.write(&mut obj);
        obj.obj("containment", |c| {
            c.str("action", if quarantine { "quarantine" } else { "release" })
                .str("scope", "egress")
                .bool("changed", changed);
            if let Some(released) = released {
                c.u64("cgroups_thawed", released.thawed as u64)
                    .u64("processes_continued", released.continued as u64);
                match released.incident {
                    Some(id) => c.u64("incident", id),
                    None => c.null("incident"),
                };
            }
        });
        Record { kind, obj }
    }

    /// `detector.relearn`: an operator sent an agent's baseline back to learning (the profile's
    /// own change follows as a `detector.profile` record).
    pub fn relearn(&self, registry: &Registry, agent: u32, by: &Requester<'_>) -> Record {
        let mut obj = self.base(
            "detector.relearn",
            &API_ACTIVITY,
            3,
            "Update",
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 3);
        Self::agent_as(
            &mut obj,
            registry,
            AgentRef {
                agent_id: agent,
                selector_id: 0,
            },
            "api",
        );
        by.write(&mut obj);
        Record {
            kind: "detector.relearn",
            obj,
        }
    }

    /// `policy.reload`: a reload was asked for and done (the changes it made follow as
    /// `policy.change` records; a refused reload is a `policy.refused` record instead).
    pub fn policy_reload(&self, by: &Requester<'_>, changes: usize) -> Record {
        let mut obj = self.base(
            "policy.reload",
            &API_ACTIVITY,
            3,
            "Update",
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 2);
        by.write(&mut obj);
        obj.obj("reload", |r| {
            r.u64("policies_changed", changes as u64);
        });
        Record {
            kind: "policy.reload",
            obj,
        }
    }

    /// `api.denied`: a call was refused (unknown caller, or a role that may not make it).
    pub fn api_denied(
        &self,
        method: &str,
        caller: &str,
        role: Option<&str>,
        transport: &str,
        reason: &str,
    ) -> Record {
        let mut obj = self.base(
            "api.denied",
            &API_ACTIVITY,
            99,
            "Other",
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, 3);
        obj.obj("actor", |a| {
            a.obj("user", |u| {
                u.str("name", caller);
                match role {
                    Some(role) => u.str("type", role),
                    None => u.null("type"),
                };
            })
            .str("transport", transport);
        })
        .obj("api", |a| {
            a.str("operation", method).obj("service", |s| {
                s.str("name", "custos.v1.Custos");
            });
        })
        .str("status", "Failure")
        .str("status_detail", reason);
        Record {
            kind: "api.denied",
            obj,
        }
    }
}
