//! Records made off the pipeline thread (the DNS resolver's queries, policy changes) reach the
//! log through this bounded channel. The pipeline polls an eventfd beside the ring buffer, so a
//! record waits no longer than a kernel event would. A full channel drops the record and counts
//! it; the pipeline turns the count into a `sensor.loss` record (what = "control"): nothing is
//! lost silently.

use std::{
    os::fd::{AsFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::record::Record;

/// Records the channel holds before dropping.
pub const CAPACITY: usize = 65_536;

struct Shared {
    wake: EventFd,
    dropped: AtomicU64,
}

/// The sending side (cheap to clone, usable from any thread or task; never blocks).
#[derive(Clone)]
pub struct ControlTx {
    tx: SyncSender<Record>,
    shared: Arc<Shared>,
}

/// The pipeline's side.
pub struct ControlRx {
    rx: Receiver<Record>,
    shared: Arc<Shared>,
}

/// A new channel.
pub fn channel() -> std::io::Result<(ControlTx, ControlRx)> {
    let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let shared = Arc::new(Shared {
        wake,
        dropped: AtomicU64::new(0),
    });
    let (tx, rx) = sync_channel(CAPACITY);
    Ok((
        ControlTx {
            tx,
            shared: Arc::clone(&shared),
        },
        ControlRx { rx, shared },
    ))
}

impl ControlTx {
    /// Queues a record for the log.
    pub fn send(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {
                let _ = self.shared.wake.write(1);
            }
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The pipeline has stopped: agentd is shutting down.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl ControlRx {
    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.wake.as_fd()
    }

    /// Up to `max` queued records (clearing the wake-up when the queue is empty).
    pub fn take(&self, max: usize) -> Vec<Record> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(record) => out.push(record),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    // Reset the counter, then look once more: a record sent in between has
                    // written the eventfd again, so no wake-up is lost.
                    let _ = self.shared.wake.read();
                    match self.rx.try_recv() {
                        Ok(record) => out.push(record),
                        Err(_) => break,
                    }
                }
            }
        }
        out
    }

    /// Records dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Records;

    #[test]
    fn delivers_then_counts_overflow() {
        let (tx, rx) = channel().unwrap();
        let records = Records::new();
        for _ in 0..3 {
            tx.send(records.log_event("test", 1, &crate::json::Obj::new()));
        }
        assert_eq!(rx.take(2).len(), 2);
        assert_eq!(rx.take(10).len(), 1);
        assert!(rx.take(10).is_empty());
        for _ in 0..CAPACITY + 5 {
            tx.send(records.log_event("test", 1, &crate::json::Obj::new()));
        }
        assert_eq!(rx.take_dropped(), 5);
        assert_eq!(rx.take_dropped(), 0);
    }
}
