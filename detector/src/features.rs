//! Numeric window features: counts of what an agent did in one window (60 s by default), the
//! second layer of the detector. Volumes matter here (a miner burns CPU, an exfiltration makes
//! many connections), where the item layer only sees what is new.

use std::collections::HashSet;

/// Feature names, in vector order.
pub const NAMES: [&str; FEATURES] = [
    "execs",
    "distinct_exes",
    "file_reads",
    "file_writes",
    "distinct_dirs",
    "connects",
    "distinct_destinations",
    "udp_sends",
    "failures",
    "listens_accepts",
    "cpu_ms",
];

/// Length of a feature vector.
pub const FEATURES: usize = 11;

/// Counts of one window, being filled.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// When the window started (ms).
    pub start_ms: u64,
    execs: u64,
    exes: HashSet<String>,
    reads: u64,
    writes: u64,
    dirs: HashSet<String>,
    connects: u64,
    dests: HashSet<String>,
    udp: u64,
    failures: u64,
    listens: u64,
    cpu_ms: u64,
    /// Events seen (a window with none and no CPU is idle).
    events: u64,
}

/// Distinct values kept per window: beyond this the counts saturate (and the window is
/// anomalous anyway).
const MAX_DISTINCT: usize = 4096;

fn insert(set: &mut HashSet<String>, value: &str) {
    if set.len() < MAX_DISTINCT && !set.contains(value) {
        set.insert(value.to_owned());
    }
}

impl Window {
    /// An empty window from `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            start_ms,
            ..Self::default()
        }
    }

    /// An exec of `exe` (normalised).
    pub fn exec(&mut self, exe: &str) {
        self.events += 1;
        self.execs += 1;
        insert(&mut self.exes, exe);
    }

    /// A file opened in `dir` (normalised); `ok` is false when the call failed.
    pub fn file(&mut self, dir: &str, write: bool, ok: bool) {
        self.events += 1;
        if !ok {
            self.failures += 1;
            return;
        }
        if write {
            self.writes += 1;
        } else {
            self.reads += 1;
        }
        insert(&mut self.dirs, dir);
    }

    /// An outbound connection (or UDP datagram) to `dest`.
    pub fn connect(&mut self, dest: &str, udp: bool, ok: bool) {
        self.events += 1;
        if udp {
            self.udp += 1;
        } else {
            self.connects += 1;
        }
        if !ok {
            self.failures += 1;
        }
        insert(&mut self.dests, dest);
    }

    /// A listen or accept.
    pub fn listen(&mut self) {
        self.events += 1;
        self.listens += 1;
    }

    /// CPU time the agent's processes used in the window.
    pub fn add_cpu(&mut self, ms: u64) {
        self.cpu_ms += ms;
    }

    /// Whether nothing happened (no event, no CPU).
    pub fn is_idle(&self) -> bool {
        self.events == 0 && self.cpu_ms == 0
    }

    /// The feature vector: `ln(1 + count)` of each count, so a burst of 1000 is not a million
    /// times as far as a burst of 10 is, and zero stays zero.
    pub fn vector(&self) -> Vec<f64> {
        let raw = [
            self.execs,
            self.exes.len() as u64,
            self.reads,
            self.writes,
            self.dirs.len() as u64,
            self.connects,
            self.dests.len() as u64,
            self.udp,
            self.failures,
            self.listens,
            self.cpu_ms,
        ];
        raw.iter().map(|&c| (c as f64).ln_1p()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_log_features() {
        let mut w = Window::new(0);
        assert!(w.is_idle());
        assert_eq!(w.vector(), vec![0.0; FEATURES]);
        w.exec("/usr/bin/git");
        w.exec("/usr/bin/git");
        w.exec("/usr/bin/cargo");
        w.file("/src", false, true);
        w.file("/src", true, true);
        w.file("/etc", false, false);
        w.connect("api:443", false, true);
        w.connect("dns:53", true, true);
        w.listen();
        w.add_cpu(999);
        let v = w.vector();
        let expect = [3, 2, 1, 1, 1, 1, 2, 1, 1, 1, 999];
        for (i, (&got, &want)) in v.iter().zip(expect.iter()).enumerate() {
            assert!(
                (got - (want as f64).ln_1p()).abs() < 1e-12,
                "{}: {got}",
                NAMES[i]
            );
        }
        assert!(!w.is_idle());
    }
}
