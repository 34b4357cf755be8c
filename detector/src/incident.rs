//! Findings, incidents and the containment ladder.
//!
//! A finding is one piece of evidence (a new item, an unusual window). An incident gathers an
//! agent's findings while they keep coming; it is the unit a security team handles, and the unit
//! the evaluation counts false alarms in. Severity comes from corroboration: one new item in a
//! stable profile is worth a look (Medium), two independent kinds of novelty together, a
//! sensitive resource, or a sustained volume anomaly are worth acting on (High).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::items::Category;

/// Findings kept in an incident (later ones are counted, not kept).
pub const MAX_FINDINGS: usize = 64;
/// Evidence sequence numbers kept in an incident.
pub const MAX_EVIDENCE: usize = 256;

/// How much a finding or an incident matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Logged, never alerted (learning-time novelty).
    Low,
    /// Alert: worth a look.
    Medium,
    /// Alert and, when enforcing, containment.
    High,
}

impl Severity {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    /// The OCSF `severity_id` (2 low, 3 medium, 4 high).
    pub fn ocsf_id(self) -> u64 {
        match self {
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// An item never seen while learning (in a stable profile).
    New(Category),
    /// A sensitive resource touched while learning: alerted so that an operator sees what the
    /// baseline is about to accept.
    SensitiveWhileLearning,
    /// A window whose counts the model finds unusual.
    Window,
    /// Unusual windows, several in a row.
    Sustained,
}

impl Signal {
    /// The name used in records.
    pub fn as_str(self) -> String {
        match self {
            Signal::New(category) => format!("new_{}", category.as_str()),
            Signal::SensitiveWhileLearning => "sensitive_while_learning".into(),
            Signal::Window => "unusual_window".into(),
            Signal::Sustained => "sustained_unusual_windows".into(),
        }
    }

    /// Independent kinds of evidence: two findings of different groups corroborate each other.
    fn group(self) -> &'static str {
        match self {
            Signal::New(Category::Exe | Category::ExecEdge | Category::WrittenExec) => "exec",
            Signal::New(Category::FileDir) => "file",
            Signal::New(Category::Sensitive) | Signal::SensitiveWhileLearning => "sensitive",
            Signal::New(Category::Egress) => "egress",
            Signal::New(Category::Connector) => "connector",
            Signal::New(Category::Listen) => "listen",
            Signal::Window | Signal::Sustained => "volume",
        }
    }
}

/// One piece of evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// What it is about.
    pub signal: Signal,
    /// The item or a description of the window.
    pub item: String,
    /// Its own severity (before corroboration).
    pub severity: Severity,
    /// The log sequence number of the event that showed it, if one did.
    pub evidence: Option<u64>,
    /// When (ms).
    pub at_ms: u64,
}

/// Containment steps, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Alert only.
    Alert,
    /// Cut the agent's egress (the kernel quarantine flag).
    Quarantine,
    /// Freeze the agent's processes.
    Freeze,
    /// Kill the agent's processes.
    Kill,
}

impl Step {
    /// The name used in records and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Alert => "alert",
            Step::Quarantine => "quarantine",
            Step::Freeze => "freeze",
            Step::Kill => "kill",
        }
    }

    /// Parses a configuration value.
    pub fn parse(s: &str) -> Option<Self> {
        [Step::Alert, Step::Quarantine, Step::Freeze, Step::Kill]
            .into_iter()
            .find(|step| step.as_str() == s)
    }

    /// The next step up.
    pub fn next(self) -> Self {
        match self {
            Step::Alert => Step::Quarantine,
            Step::Quarantine => Step::Freeze,
            Step::Freeze | Step::Kill => Step::Kill,
        }
    }
}

/// An agent's trust tier (from its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Least trusted: contained furthest.
    Low,
    /// In between.
    Medium,
    /// Most trusted: by default alerted on, not contained.
    High,
}

/// The furthest containment step taken for a High incident, by trust tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ladder {
    /// For low-trust agents.
    pub low: Step,
    /// For medium-trust agents.
    pub medium: Step,
    /// For high-trust agents.
    pub high: Step,
}

impl Default for Ladder {
    /// Kill is never a default: it loses the agent's state, and freezing keeps it for forensics.
    fn default() -> Self {
        Self {
            low: Step::Freeze,
            medium: Step::Quarantine,
            high: Step::Alert,
        }
    }
}

impl Ladder {
    /// The furthest step for `tier`.
    pub fn max(&self, tier: Tier) -> Step {
        match tier {
            Tier::Low => self.low,
            Tier::Medium => self.medium,
            Tier::High => self.high,
        }
    }
}

/// An open incident.
#[derive(Debug, Clone)]
pub struct Incident {
    /// Its id (unique for the detector's lifetime, persisted).
    pub id: u64,
    /// When it opened (ms).
    pub opened_ms: u64,
    /// When its last finding came (ms).
    pub last_ms: u64,
    /// Its findings, first [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Findings not kept.
    pub more_findings: u64,
    /// Evidence sequence numbers, first [`MAX_EVIDENCE`].
    pub evidence: Vec<u64>,
    /// The severity last alerted (`None`: not alerted yet).
    pub alerted: Option<Severity>,
    /// The containment step in force for it (`None`: none).
    pub contained: Option<Step>,
    /// The step last logged as what would be done (monitor, dry run).
    pub would: Option<Step>,
    /// High findings since the last containment step (an agent that keeps going is escalated).
    pub high_since_step: u32,
    seen: BTreeSet<(Signal, String)>,
}

impl Incident {
    /// A new incident.
    pub fn new(id: u64, now_ms: u64) -> Self {
        Self {
            id,
            opened_ms: now_ms,
            last_ms: now_ms,
            findings: Vec::new(),
            more_findings: 0,
            evidence: Vec::new(),
            alerted: None,
            contained: None,
            would: None,
            high_since_step: 0,
            seen: BTreeSet::new(),
        }
    }

    /// Adds a finding; false when the same signal and item are already in the incident (so a
    /// loop reading the same key does not make a thousand findings).
    pub fn add(&mut self, finding: Finding) -> bool {
        // Several findings of one event cite it once.
        if let Some(seq) = finding.evidence
            && self.evidence.len() < MAX_EVIDENCE
            && !self.evidence.contains(&seq)
        {
            self.evidence.push(seq);
        }
        if !self.seen.insert((finding.signal, finding.item.clone())) {
            return false;
        }
        self.last_ms = self.last_ms.max(finding.at_ms);
        if finding.severity == Severity::High && (self.contained.is_some() || self.would.is_some())
        {
            self.high_since_step += 1;
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.more_findings += 1;
        }
        true
    }

    /// The incident's severity: its worst finding, raised to High when Medium findings of two
    /// independent groups corroborate each other.
    pub fn severity(&self) -> Severity {
        let worst = self
            .findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Low);
        let groups: BTreeSet<&str> = self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Medium)
            .map(|f| f.signal.group())
            .collect();
        if groups.len() >= 2 {
            Severity::High
        } else {
            worst
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(signal: Signal, item: &str, severity: Severity, seq: u64) -> Finding {
        Finding {
            signal,
            item: item.into(),
            severity,
            evidence: Some(seq),
            at_ms: seq,
        }
    }

    #[test]
    fn corroboration_raises_severity() {
        let mut i = Incident::new(1, 0);
        assert_eq!(i.severity(), Severity::Low);
        assert!(i.add(finding(
            Signal::New(Category::Egress),
            "a:1",
            Severity::Medium,
            1
        )));
        assert_eq!(i.severity(), Severity::Medium);
        // Same group: still one kind of evidence.
        i.add(finding(
            Signal::New(Category::Egress),
            "b:1",
            Severity::Medium,
            2,
        ));
        assert_eq!(i.severity(), Severity::Medium);
        i.add(finding(
            Signal::New(Category::WrittenExec),
            "/tmp",
            Severity::Medium,
            3,
        ));
        assert_eq!(i.severity(), Severity::High);
        assert_eq!(i.evidence, vec![1, 2, 3]);
    }

    #[test]
    fn repeated_findings_add_evidence_only() {
        let mut i = Incident::new(1, 0);
        let f = finding(
            Signal::New(Category::Sensitive),
            "read:/.ssh/",
            Severity::High,
            7,
        );
        assert!(i.add(f.clone()));
        assert!(!i.add(Finding {
            evidence: Some(8),
            ..f
        }));
        assert_eq!(i.findings.len(), 1);
        assert_eq!(i.evidence, vec![7, 8]);
        assert_eq!(i.severity(), Severity::High);
    }

    #[test]
    fn ladder_and_steps() {
        let ladder = Ladder::default();
        assert_eq!(ladder.max(Tier::Low), Step::Freeze);
        assert_eq!(ladder.max(Tier::High), Step::Alert);
        assert_eq!(Step::Alert.next(), Step::Quarantine);
        assert_eq!(Step::Kill.next(), Step::Kill);
        assert_eq!(Step::parse("freeze"), Some(Step::Freeze));
        assert_eq!(Step::parse("nuke"), None);
        assert!(Step::Quarantine < Step::Kill);
    }
}
