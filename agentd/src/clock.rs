//! Turning the kernel's `CLOCK_BOOTTIME` stamps into wall-clock time.
//!
//! Events carry `bpf_ktime_get_boot_ns`, which counts from boot and keeps counting through
//! suspend. Wall time is boot time plus the offset between `CLOCK_REALTIME` and
//! `CLOCK_BOOTTIME`; the offset is re-read periodically so NTP corrections show up.

use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

/// How often the offset is re-read.
const REFRESH: Duration = Duration::from_secs(10);

fn now_ns(clock: ClockId) -> i128 {
    match clock_gettime(clock) {
        Ok(ts) => ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128,
        // Both clocks exist on every Linux since 2.6.39; a failure here is not recoverable and
        // not worth aborting over: time falls back to the boot clock.
        Err(_) => 0,
    }
}

/// Converts boot-clock nanoseconds to Unix-epoch nanoseconds.
#[derive(Debug)]
pub struct BootClock {
    offset_ns: i128,
    read_at: Instant,
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

impl BootClock {
    /// Reads the current offset.
    pub fn new() -> Self {
        Self {
            offset_ns: Self::offset(),
            read_at: Instant::now(),
        }
    }

    fn offset() -> i128 {
        now_ns(ClockId::CLOCK_REALTIME) - now_ns(ClockId::CLOCK_BOOTTIME)
    }

    /// Re-reads the offset if it is older than the refresh period.
    pub fn refresh(&mut self) {
        if self.read_at.elapsed() >= REFRESH {
            *self = Self::new();
        }
    }

    /// Unix-epoch nanoseconds for a boot-clock stamp.
    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.offset_ns).max(0) as u64
    }

    /// The current boot-clock time.
    pub fn boot_now_ns() -> u64 {
        now_ns(ClockId::CLOCK_BOOTTIME).max(0) as u64
    }

    /// The current wall-clock time.
    pub fn wall_now_ns() -> u64 {
        now_ns(ClockId::CLOCK_REALTIME).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_now() {
        let clock = BootClock::new();
        let wall = clock.wall_ns(BootClock::boot_now_ns());
        let real = BootClock::wall_now_ns();
        assert!(wall.abs_diff(real) < 50_000_000, "wall {wall} real {real}");
    }
}
