//! Turning the kernel's per-CPU loss counters into explicit loss records.
//!
//! Each increase of a counter since the last poll becomes one record with the exact count, so
//! a reader can account for every event the sensor saw but could not deliver.

use aya::maps::{MapData, PerCpuArray};
use sensor_common::loss::LOSS_SLOTS;

/// What each `LOSS_*` slot counts, as named in loss records.
pub const SLOT_NAMES: [&str; LOSS_SLOTS as usize] = [
    "exec", "fork", "exit", "file", "net", "cgroup", "binding", "pending",
];

/// An increase of one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// What was lost (a [`SLOT_NAMES`] entry).
    pub what: &'static str,
    /// How many since the last report.
    pub count: u64,
    /// How many since the counters were created.
    pub total: u64,
}

/// Remembers the last totals.
#[derive(Debug, Default)]
pub struct LossTracker {
    last: [u64; LOSS_SLOTS as usize],
}

impl LossTracker {
    /// A tracker that reports only what exceeds `totals` (already reported by an earlier run).
    pub fn with_baseline(totals: [u64; LOSS_SLOTS as usize]) -> Self {
        Self { last: totals }
    }

    /// The totals reported so far.
    pub fn totals(&self) -> [u64; LOSS_SLOTS as usize] {
        self.last
    }

    /// Compares fresh totals with the last ones.
    pub fn update(&mut self, totals: [u64; LOSS_SLOTS as usize]) -> Vec<Loss> {
        let mut losses = Vec::new();
        for (slot, total) in totals.into_iter().enumerate() {
            let count = total.saturating_sub(self.last[slot]);
            if count > 0 {
                losses.push(Loss {
                    what: SLOT_NAMES[slot],
                    count,
                    total,
                });
            }
            self.last[slot] = total;
        }
        losses
    }

    /// Reads the counters (summed over CPUs) and compares them with the last totals.
    pub fn poll(&mut self, counters: &PerCpuArray<MapData, u64>) -> Vec<Loss> {
        let mut totals = [0u64; LOSS_SLOTS as usize];
        for (slot, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = counters.get(&(slot as u32), 0) {
                *total = values.iter().sum();
            }
        }
        self.update(totals)
    }
}

/// Saves the reported totals (one number per line, in slot order).
pub fn save(path: &std::path::Path, totals: [u64; LOSS_SLOTS as usize]) -> std::io::Result<()> {
    let text: String = totals.iter().map(|t| format!("{t}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Reads totals saved by [`save`]; `None` when missing or unreadable.
pub fn load(path: &std::path::Path) -> Option<[u64; LOSS_SLOTS as usize]> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut totals = [0u64; LOSS_SLOTS as usize];
    let mut lines = text.lines();
    for total in &mut totals {
        *total = lines.next()?.trim().parse().ok()?;
    }
    Some(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_increases() {
        let mut tracker = LossTracker::default();
        assert!(tracker.update([0; 8]).is_empty());
        let losses = tracker.update([3, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            losses,
            vec![
                Loss {
                    what: "exec",
                    count: 3,
                    total: 3
                },
                Loss {
                    what: "pending",
                    count: 1,
                    total: 1
                }
            ]
        );
        assert!(tracker.update([3, 0, 0, 0, 0, 0, 0, 1]).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss");
        save(&path, tracker.totals()).unwrap();
        assert_eq!(load(&path), Some([3, 0, 0, 0, 0, 0, 0, 1]));
        assert!(
            LossTracker::with_baseline(load(&path).unwrap())
                .update([3, 0, 0, 0, 0, 0, 0, 1])
                .is_empty()
        );
        assert_eq!(
            tracker.update([5, 0, 0, 0, 0, 0, 0, 1]),
            vec![Loss {
                what: "exec",
                count: 2,
                total: 5
            }]
        );
    }
}
