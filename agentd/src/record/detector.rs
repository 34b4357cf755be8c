//! Records of the detector: alerts, findings, containment actions, profile changes, closed
//! incidents (SOC 2 CC7.2, CC7.3, CC7.4 evidence: what was unusual, what it linked to, what was
//! done about it). Every alert and action names the log records that caused it (`evidence`).

use detector::{Action, Alert, Mode, Summary, incident::Finding, profile::Transition};
use sensor_common::identity::AgentRef;

use super::{Class, Record, Records};
use crate::{clock::BootClock, identity::registry::Registry, json::Obj};

const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};

const REMEDIATION: Class = Class {
    uid: 7001,
    name: "Remediation Activity",
    category_uid: 7,
    category_name: "Remediation",
};

/// What carrying out an action gave.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done: what was done.
    Done(String),
    /// Not attempted (dry run, monitor, rate limit).
    NotDone,
    /// Tried and failed: why.
    Failed(String),
}

fn finding_obj(f: &Finding) -> Obj {
    let mut o = Obj::new();
    o.str("signal", &f.signal.as_str())
        .str("item", &f.item)
        .str("severity", f.severity.as_str())
        .u64("time", f.at_ms);
    match f.evidence {
        Some(seq) => o.u64("evidence_seq", seq),
        None => o.null("evidence_seq"),
    };
    o
}

fn evidence(obj: &mut Obj, seqs: &[u64]) {
    let list: Vec<Obj> = seqs
        .iter()
        .map(|seq| {
            let mut o = Obj::new();
            o.u64("seq", *seq);
            o
        })
        .collect();
    obj.objs("evidence", &list);
}

impl Records {
    fn detector_base(
        &self,
        kind: &'static str,
        class: &Class,
        activity: (u32, &str),
        severity: u64,
        registry: &Registry,
        agent: u32,
    ) -> Obj {
        let mut obj = self.base(
            kind,
            class,
            activity.0,
            activity.1,
            BootClock::wall_now_ns(),
        );
        Self::severity(&mut obj, severity);
        Self::agent_as(
            &mut obj,
            registry,
            AgentRef {
                agent_id: agent,
                selector_id: 0,
            },
            "detector",
        );
        obj
    }

    /// `detector.alert`: an incident opened or got worse.
    pub fn detector_alert(&self, registry: &Registry, alert: &Alert) -> Record {
        let (activity_id, activity) = if alert.previous.is_none() {
            (1, "Create")
        } else {
            (2, "Update")
        };
        let mut obj = self.detector_base(
            "detector.alert",
            &DETECTION_FINDING,
            (activity_id, activity),
            alert.severity.ocsf_id(),
            registry,
            alert.agent,
        );
        let findings: Vec<Obj> = alert.findings.iter().map(finding_obj).collect();
        obj.obj("incident", |i| {
            i.u64("id", alert.incident)
                .str("severity", alert.severity.as_str())
                .str("profile_stage", alert.stage.as_str());
            match alert.previous {
                Some(p) => i.str("previous_severity", p.as_str()),
                None => i.null("previous_severity"),
            };
        })
        .obj("finding_info", |f| {
            f.str("uid", &format!("incident-{}", alert.incident))
                .str("title", &title(alert));
        })
        .objs("findings", &findings);
        evidence(&mut obj, &alert.evidence);
        Record {
            kind: "detector.alert",
            obj,
        }
    }

    /// `detector.finding`: more evidence for an incident already alerted at its severity.
    pub fn detector_finding(
        &self,
        registry: &Registry,
        agent: u32,
        incident: u64,
        finding: &Finding,
    ) -> Record {
        let mut obj = self.detector_base(
            "detector.finding",
            &DETECTION_FINDING,
            (2, "Update"),
            finding.severity.ocsf_id(),
            registry,
            agent,
        );
        obj.obj("incident", |i| {
            i.u64("id", incident);
        })
        .obj_value("finding", &finding_obj(finding));
        Record {
            kind: "detector.finding",
            obj,
        }
    }

    /// `detector.action`: a containment step taken (or logged as what would be taken).
    pub fn detector_action(
        &self,
        registry: &Registry,
        action: &Action,
        outcome: &Outcome,
    ) -> Record {
        let severity = match outcome {
            Outcome::Done(_) | Outcome::Failed(_) => 4,
            Outcome::NotDone => 3,
        };
        let mut obj = self.detector_base(
            "detector.action",
            &REMEDIATION,
            (1, "Isolate"),
            severity,
            registry,
            action.agent,
        );
        obj.obj("incident", |i| {
            i.u64("id", action.incident);
        })
        .obj("containment", |c| {
            c.str("action", action.step.as_str())
                .str("mode", action.mode.as_str())
                .str("by", "detector");
            match outcome {
                Outcome::Done(detail) => c.bool("done", true).str("detail", detail),
                Outcome::NotDone => c.bool("done", false),
                Outcome::Failed(error) => c.bool("done", false).str("error", error),
            };
        });
        if action.mode == Mode::RateLimited {
            obj.str(
                "status_detail",
                "over detector.max_actions_per_hour: not done",
            );
        }
        evidence(&mut obj, &action.evidence);
        Record {
            kind: "detector.action",
            obj,
        }
    }

    /// `detector.profile`: a baseline was created or changed stage.
    pub fn detector_profile(
        &self,
        registry: &Registry,
        agent: u32,
        transition: &Transition,
        summary: &Summary,
    ) -> Record {
        let mut obj = self.detector_base(
            "detector.profile",
            &DETECTION_FINDING,
            (99, "Other"),
            1,
            registry,
            agent,
        );
        let items: Vec<Obj> = summary
            .items
            .iter()
            .map(|(c, n)| {
                let mut o = Obj::new();
                o.str("category", c.as_str()).u64("count", *n as u64);
                o
            })
            .collect();
        obj.obj("profile", |p| {
            match transition.from {
                Some(from) => p.str("from", from.as_str()),
                None => p.null("from"),
            };
            p.str("stage", transition.to.as_str())
                .str("reason", &transition.reason)
                .str("fingerprint", &summary.fingerprint)
                .u64("windows", summary.windows as u64)
                .objs("items", &items);
            match (&summary.model, &summary.model_note) {
                (Some((k, kept, threshold)), _) => p.obj("model", |m| {
                    m.str("kind", "gaussian_mixture")
                        .u64("components", *k as u64)
                        .u64("features", *kept as u64)
                        .str("threshold", &format!("{threshold:.3}"));
                }),
                (None, Some(note)) => p.str("model_note", note),
                (None, None) => p.null("model"),
            };
        });
        Record {
            kind: "detector.profile",
            obj,
        }
    }

    /// `detector.closed`: an incident closed.
    pub fn detector_closed(
        &self,
        registry: &Registry,
        agent: u32,
        incident: u64,
        reason: &str,
    ) -> Record {
        let mut obj = self.detector_base(
            "detector.closed",
            &DETECTION_FINDING,
            (3, "Close"),
            1,
            registry,
            agent,
        );
        obj.obj("incident", |i| {
            i.u64("id", incident).str("reason", reason);
        });
        Record {
            kind: "detector.closed",
            obj,
        }
    }
}

fn title(alert: &Alert) -> String {
    let first = alert
        .findings
        .iter()
        .max_by_key(|f| f.severity)
        .map(|f| format!("{}: {}", f.signal.as_str(), f.item))
        .unwrap_or_default();
    let more = alert.findings.len().saturating_sub(1);
    if more > 0 {
        format!(
            "{} {}: {first} (+{more} more)",
            alert.severity.as_str(),
            alert.name
        )
    } else {
        format!("{} {}: {first}", alert.severity.as_str(), alert.name)
    }
}
