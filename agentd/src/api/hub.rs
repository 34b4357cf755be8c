//! The meeting point of the pipeline and the API: committed records and signed checkpoints
//! are published here as they happen, with the live figures `Status` reports.
//!
//! The pipeline never waits on a subscriber. Records go out on a bounded broadcast channel of
//! shared chunks: a subscriber that falls more than the window (`[api] subscriber_window`,
//! [`CHANNEL_CHUNKS`] by default) behind loses its
//! place in the channel (not a record: it reads the missed range back from the log files, which
//! the pipeline has already written). Nothing is published while nobody subscribes.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::broadcast;

/// Records per published chunk.
pub const CHUNK_LEAVES: usize = 256;
/// Chunks the channel holds for the slowest subscriber by default (at most ~64 k records).
pub const CHANNEL_CHUNKS: usize = 256;

/// A run of consecutive committed records.
#[derive(Debug)]
pub struct Chunk {
    /// Sequence number of the first.
    pub first: u64,
    /// (record bytes, kind), shared by every subscriber.
    pub leaves: Vec<(bytes::Bytes, &'static str)>,
}

impl Chunk {
    /// One past the last sequence number.
    pub fn end(&self) -> u64 {
        self.first + self.leaves.len() as u64
    }
}

/// A signed checkpoint as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The log's origin.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Merkle root.
    pub root: [u8; 32],
    /// The signed note.
    pub note: String,
    /// When it was signed.
    pub at: Instant,
}

/// What subscribers receive, in log order.
#[derive(Debug, Clone)]
pub enum Item {
    /// Newly committed records.
    Records(Arc<Chunk>),
    /// A newly signed checkpoint (covering every record published before it).
    Checkpoint(Arc<SignedCheckpoint>),
    /// agentd is stopping: nothing follows.
    End,
}

/// One attached subscriber, for `Status`.
#[derive(Debug)]
pub struct SubscriberInfo {
    /// Who.
    pub caller: String,
    /// The next sequence number it will be sent.
    pub next: Arc<AtomicU64>,
}

/// Counters the pipeline keeps current.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the kernel.
    pub kernel_records: AtomicU64,
    /// Records produced.
    pub records: AtomicU64,
    /// Events lost in the kernel.
    pub lost: AtomicU64,
}

/// A live process of an agent.
#[derive(Debug, Clone)]
pub struct LiveProcess {
    /// Agent id.
    pub agent: u32,
    /// Process id.
    pub pid: u32,
    /// Start time (boot clock, ns).
    pub start_ns: u64,
    /// How it was bound.
    pub binding: &'static str,
    /// Its executable, when known.
    pub exe: String,
}

/// The hub.
pub struct Hub {
    tx: broadcast::Sender<Item>,
    committed: AtomicU64,
    checkpoint: RwLock<Option<Arc<SignedCheckpoint>>>,
    /// The log directory (past records are read from it).
    pub log_dir: PathBuf,
    /// The log's origin and public key.
    pub origin: RwLock<(String, String)>,
    /// The pipeline's counters.
    pub counters: Counters,
    rate: Mutex<Vec<(Instant, u64)>>,
    /// The programs attached: (program, target).
    pub programs: RwLock<Vec<(String, String)>>,
    /// Agent processes, refreshed by the pipeline.
    pub processes: RwLock<Arc<Vec<LiveProcess>>>,
    started: Instant,
    subscribers: Mutex<BTreeMap<u64, SubscriberInfo>>,
    next_subscriber: AtomicU64,
}

impl Hub {
    /// A hub for the log in `log_dir`, keeping `window` chunks for live subscribers.
    pub fn new(log_dir: PathBuf, window: usize) -> Self {
        Self {
            tx: broadcast::channel(window.max(1)).0,
            committed: AtomicU64::new(0),
            checkpoint: RwLock::new(None),
            log_dir,
            origin: RwLock::new((String::new(), String::new())),
            counters: Counters::default(),
            rate: Mutex::new(Vec::new()),
            programs: RwLock::new(Vec::new()),
            processes: RwLock::new(Arc::new(Vec::new())),
            started: Instant::now(),
            subscribers: Mutex::new(BTreeMap::new()),
            next_subscriber: AtomicU64::new(1),
        }
    }

    /// Publishes records just committed: `size` is the tree size after them, `leaves` yields
    /// them in order. The committed size is stored *before* the subscriber count is read, so a
    /// subscriber that joins in between still finds these records in the files.
    pub fn publish<'a>(
        &self,
        size: u64,
        leaves: impl ExactSizeIterator<Item = (&'a [u8], &'static str)>,
    ) {
        let count = leaves.len() as u64;
        self.committed.store(size, Ordering::SeqCst);
        if count == 0 || self.tx.receiver_count() == 0 {
            return;
        }
        let mut first = size - count;
        let mut chunk = Vec::with_capacity(CHUNK_LEAVES.min(count as usize));
        for (leaf, kind) in leaves {
            chunk.push((bytes::Bytes::copy_from_slice(leaf), kind));
            if chunk.len() == CHUNK_LEAVES {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_LEAVES));
                let n = full.len() as u64;
                let _ = self.tx.send(Item::Records(Arc::new(Chunk {
                    first,
                    leaves: full,
                })));
                first += n;
            }
        }
        if !chunk.is_empty() {
            let _ = self.tx.send(Item::Records(Arc::new(Chunk {
                first,
                leaves: chunk,
            })));
        }
    }

    /// Sets the committed size without records (at start-up, from the opened log).
    pub fn set_committed(&self, size: u64) {
        self.committed.store(size, Ordering::SeqCst);
    }

    /// Publishes a newly signed checkpoint.
    pub fn checkpoint_signed(&self, checkpoint: SignedCheckpoint) {
        let checkpoint = Arc::new(checkpoint);
        *self
            .checkpoint
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&checkpoint));
        let _ = self.tx.send(Item::Checkpoint(checkpoint));
    }

    /// Tells every subscriber that nothing more will come.
    pub fn close(&self) {
        let _ = self.tx.send(Item::End);
    }

    /// A receiver of what is published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Item> {
        self.tx.subscribe()
    }

    /// The tree size written to the log files.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<Arc<SignedCheckpoint>> {
        self.checkpoint
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Time since agentd started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Samples the record counter (the pipeline calls this every tick).
    pub fn sample_rate(&self) {
        let mut rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        rate.push((now, self.counters.records.load(Ordering::Relaxed)));
        rate.retain(|(at, _)| now.duration_since(*at) <= Duration::from_secs(5));
    }

    /// Records per second over the last few seconds.
    pub fn records_per_second(&self) -> f64 {
        let rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        match (rate.first(), rate.last()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Registers a subscriber; it is listed until the returned guard drops.
    pub fn register(self: &Arc<Self>, caller: String, next: Arc<AtomicU64>) -> SubscriberGuard {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, SubscriberInfo { caller, next });
        SubscriberGuard {
            hub: Arc::clone(self),
            id,
        }
    }

    /// The subscribers: (id, caller, next sequence).
    pub fn subscribers(&self) -> Vec<(u64, String, u64)> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, s)| (*id, s.caller.clone(), s.next.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Removes a subscriber from the list when its stream ends.
pub struct SubscriberGuard {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.hub
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_in_chunks_only_to_subscribers() {
        let hub = Hub::new(PathBuf::from("/nonexistent"), CHANNEL_CHUNKS);
        let leaves: Vec<Vec<u8>> = (0..600).map(|i| format!("{i}").into_bytes()).collect();
        // Nobody listens: only the committed size moves.
        hub.publish(600, leaves.iter().map(|l| (l.as_slice(), "x")));
        assert_eq!(hub.committed(), 600);
        let mut rx = hub.subscribe();
        hub.publish(1200, leaves.iter().map(|l| (l.as_slice(), "x")));
        let mut firsts = Vec::new();
        while let Ok(Item::Records(chunk)) = rx.try_recv() {
            assert!(chunk.leaves.len() <= CHUNK_LEAVES);
            assert_eq!(
                chunk.leaves[0].0,
                format!("{}", chunk.first - 600).into_bytes()
            );
            firsts.push((chunk.first, chunk.end()));
        }
        assert_eq!(firsts, vec![(600, 856), (856, 1112), (1112, 1200)]);
    }
}
