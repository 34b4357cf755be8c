//! `StreamEvents`: past records from the log files, then live ones from the [`Hub`], each
//! exactly once and in order, with the signed checkpoints that cover them.
//!
//! The subscription is taken *before* the files are read, so a record committed meanwhile is
//! either in the files or in the channel (duplicates are dropped by sequence number). Each
//! subscriber has a bounded outgoing queue; a consumer too slow to keep up falls out of the
//! channel's window, is told how far behind it is ([`proto::Lag`]), and is served from the files
//! until it catches up. The pipeline never waits for anyone.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{broadcast::error::RecvError, mpsc};
use tonic::Status;

use super::{
    filter::{Filter, kind_of},
    hub::{Hub, Item, SignedCheckpoint},
    proto::{self, stream_events_response::Item as Out},
};
use crate::log::reader::{LogReader, ReadError};

/// Messages queued per subscriber before the producer waits for the consumer.
const QUEUE: usize = 256;
/// Records read from the files per blocking read.
const READ_CHUNK: u64 = 1024;

/// What a subscriber receives.
pub type Response = Result<proto::StreamEventsResponse, Status>;

/// A checkpoint on the wire.
pub fn checkpoint_message(c: &SignedCheckpoint) -> proto::Checkpoint {
    proto::Checkpoint {
        origin: c.origin.clone(),
        tree_size: c.size,
        root_hash: c.root.to_vec(),
        note: c.note.clone(),
    }
}

/// Starts a subscription from `from` (or the head) for `caller`. Fails at once when `from` is
/// not in the log.
pub fn subscribe(
    hub: &Arc<Hub>,
    from: Option<u64>,
    filter: Filter,
    caller: String,
) -> Result<mpsc::Receiver<Response>, Status> {
    let rx = hub.subscribe();
    let committed = hub.committed();
    let next = match from {
        None => committed,
        Some(from) => {
            if from > committed {
                return Err(Status::out_of_range(format!(
                    "from_sequence {from} is past the end of the log ({committed} records)"
                )));
            }
            let first = LogReader::open(&hub.log_dir)
                .map_err(|err| Status::unavailable(format!("cannot read the log: {err}")))?
                .first();
            if from < first {
                return Err(Status::out_of_range(format!(
                    "from_sequence {from} was removed by retention: the log holds {first}..{committed}"
                )));
            }
            from
        }
    };
    let (tx, out) = mpsc::channel(QUEUE);
    let position = Arc::new(AtomicU64::new(next));
    let guard = hub.register(caller, Arc::clone(&position));
    let subscriber = Subscriber {
        hub: Arc::clone(hub),
        filter,
        tx,
        next,
        position,
        sent_checkpoint: 0,
        pending_checkpoint: None,
    };
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(status) = subscriber.run(rx).await {
            tracing::debug!(%status, "a stream ended with an error");
        }
    });
    Ok(out)
}

struct Subscriber {
    hub: Arc<Hub>,
    filter: Filter,
    tx: mpsc::Sender<Response>,
    /// The next sequence number to consider.
    next: u64,
    position: Arc<AtomicU64>,
    /// Tree size of the last checkpoint sent.
    sent_checkpoint: u64,
    /// A checkpoint that covers records not sent yet.
    pending_checkpoint: Option<Arc<SignedCheckpoint>>,
}

/// Why a subscriber stopped.
enum Stop {
    /// The consumer went away.
    Gone,
    /// Something failed; the consumer is told.
    Failed(Status),
}

impl Subscriber {
    async fn run(mut self, mut rx: tokio::sync::broadcast::Receiver<Item>) -> Result<(), Status> {
        match self.serve(&mut rx).await {
            Ok(()) | Err(Stop::Gone) => Ok(()),
            Err(Stop::Failed(status)) => {
                let _ = self.tx.send(Err(status.clone())).await;
                Err(status)
            }
        }
    }

    async fn serve(&mut self, rx: &mut tokio::sync::broadcast::Receiver<Item>) -> Result<(), Stop> {
        self.catch_up().await?;
        loop {
            match rx.recv().await {
                Ok(Item::Records(chunk)) => {
                    if chunk.first > self.next {
                        // Cannot happen (the subscription predates the file read), but if it
                        // did, the files have what is missing.
                        self.catch_up().await?;
                    }
                    let skip = self.next.saturating_sub(chunk.first) as usize;
                    for (i, (leaf, kind)) in chunk.leaves.iter().enumerate().skip(skip) {
                        self.send_record(chunk.first + i as u64, leaf, kind).await?;
                    }
                    self.flush_checkpoint().await?;
                }
                Ok(Item::Checkpoint(checkpoint)) => {
                    self.pending_checkpoint = Some(checkpoint);
                    self.flush_checkpoint().await?;
                }
                Ok(Item::End) | Err(RecvError::Closed) => {
                    // agentd is stopping: what was committed before the end is sent first.
                    self.catch_up().await?;
                    return Ok(());
                }
                Err(RecvError::Lagged(_)) => {
                    // The live window moved past this subscriber. Only a subscriber that has
                    // not sent what the window dropped is behind (one that was reading the files
                    // meanwhile may already have it all): it is told so, then served from the
                    // files.
                    let behind = self.hub.committed().saturating_sub(self.next);
                    if behind > 0 {
                        self.send(Out::Lag(proto::Lag { behind })).await?;
                    }
                    self.catch_up().await?;
                }
            }
        }
    }

    /// Sends what the files hold from `next` to the committed head, then the latest checkpoint
    /// if it covers no more than that.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let head = self.hub.committed();
            if self.next >= head {
                break;
            }
            let (start, end) = (self.next, head.min(self.next + READ_CHUNK));
            let dir = self.hub.log_dir.clone();
            let leaves = tokio::task::spawn_blocking(move || -> Result<_, ReadError> {
                let reader = LogReader::open(&dir)?;
                let mut leaves = Vec::with_capacity((end - start) as usize);
                reader.for_each_leaf(start, end, |seq, leaf| {
                    leaves.push((seq, leaf));
                    true
                })?;
                Ok(leaves)
            })
            .await
            .map_err(|err| Stop::Failed(Status::internal(err.to_string())))?
            .map_err(|err| match err {
                ReadError::NoSuchLeaf { .. } => Stop::Failed(Status::out_of_range(format!(
                    "the subscriber fell behind records that retention removed: {err}"
                ))),
                other => Stop::Failed(Status::unavailable(format!("cannot read the log: {other}"))),
            })?;
            for (seq, leaf) in leaves {
                let kind = kind_of(&leaf);
                self.send_record(seq, &bytes::Bytes::from(leaf), &kind)
                    .await?;
            }
        }
        if let Some(latest) = self.hub.latest_checkpoint() {
            self.pending_checkpoint = Some(latest);
        }
        self.flush_checkpoint().await
    }

    async fn send_record(&mut self, seq: u64, leaf: &bytes::Bytes, kind: &str) -> Result<(), Stop> {
        if seq != self.next {
            return Ok(());
        }
        self.next += 1;
        self.position.store(self.next, Ordering::Relaxed);
        if !self.filter.matches(leaf, kind) {
            return Ok(());
        }
        self.send(Out::Event(proto::Event {
            sequence: seq,
            record: leaf.clone(),
            kind: kind.to_owned(),
        }))
        .await
    }

    /// Sends the pending checkpoint once every record it covers has been considered.
    async fn flush_checkpoint(&mut self) -> Result<(), Stop> {
        let Some(checkpoint) = self.pending_checkpoint.clone() else {
            return Ok(());
        };
        if checkpoint.size > self.next {
            return Ok(());
        }
        self.pending_checkpoint = None;
        if checkpoint.size <= self.sent_checkpoint {
            return Ok(());
        }
        self.sent_checkpoint = checkpoint.size;
        self.send(Out::Checkpoint(checkpoint_message(&checkpoint)))
            .await
    }

    async fn send(&self, item: Out) -> Result<(), Stop> {
        self.tx
            .send(Ok(proto::StreamEventsResponse { item: Some(item) }))
            .await
            .map_err(|_| Stop::Gone)
    }
}
