//! CPU time per agent, for the window feature that catches mining-like abuse: the sum of
//! user and system time of the agent's live processes, sampled from `/proc/PID/stat`.
//!
//! A process that starts and exits between two samples is not counted (its CPU is gone with
//! it); CPU abuse is sustained by nature, so the samples see it.

use std::collections::HashMap;

use crate::{identity::procscan, process::ProcessTable};

/// CPU sampler.
pub struct CpuSampler {
    tick_ms: f64,
    /// Last total (ticks) per process (pid, start).
    last: HashMap<(u32, u64), u64>,
    primed: bool,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSampler {
    /// A sampler; the first sample only sets the baseline.
    pub fn new() -> Self {
        Self {
            tick_ms: 1000.0 / procscan::clock_ticks() as f64,
            last: HashMap::new(),
            primed: false,
        }
    }

    /// CPU used since the last sample (ms) and whether it has a live process, per agent.
    pub fn sample(&mut self, procs: &ProcessTable) -> HashMap<u32, (u64, bool)> {
        let mut out: HashMap<u32, (u64, bool)> = HashMap::new();
        let mut seen = HashMap::with_capacity(self.last.len());
        for p in procs.iter() {
            let agent = p.binding.agent.agent_id;
            if agent == 0 {
                continue;
            }
            let entry = out.entry(agent).or_default();
            entry.1 = true;
            let Some(total) = cpu_ticks(p.pid) else {
                continue;
            };
            let key = (p.pid, p.start_ns);
            // A process first seen after the first sample started since: all its time is new.
            let before =
                self.last
                    .get(&key)
                    .copied()
                    .unwrap_or(if self.primed { 0 } else { total });
            entry.0 += (total.saturating_sub(before) as f64 * self.tick_ms) as u64;
            seen.insert(key, total);
        }
        self.last = seen;
        self.primed = true;
        out
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

/// utime (field 14) + stime (field 15) of a `/proc/PID/stat` line; fields are counted from the
/// last `)` because the comm may hold anything.
fn parse_cpu(stat: &str) -> Option<u64> {
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let stat = "42 (a) b (c)) R 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 999 1000 10";
        assert_eq!(parse_cpu(stat), Some(281));
        assert_eq!(parse_cpu("garbage"), None);
        // Our own process has a readable line.
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
