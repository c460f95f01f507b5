//! The `fleet.v1.Replay` gRPC service over a set of [`Table`]s, and [`serve`],
//! which runs it with the standard health service until shutdown (behind
//! the bearer-token check when [`serve_announcing`] is given a token; the
//! health service stays open so that health checks need no secret; with
//! TLS on, every service on the port, health included, is served over TLS).
//!
//! This layer turns requests into table calls and table results into
//! messages: streams, statuses, back-pressure through bounded channels and
//! ending promptly when a client hangs up or the service stops. Validation
//! lives in [`crate::validate`], sampling and waiting in [`crate::table`].

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::auth::RequireToken;
use fleet_proto::pb::replay_server::{Replay, ReplayServer};
use fleet_proto::pb::{self, InsertRequest, InsertResponse, SampleResponse};
use fleet_proto::tls::Tls;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::checkpoint;
use crate::chunk::{ChunkStore, ItemSteps};
use crate::config::{Durability, ReplayConfig};
use crate::error::Error;
use crate::share::{Class, Share};
use crate::table::{SampledItem, Table, key_epoch, response_len};
use crate::validate::ValidationError;
use crate::wal::{self, Wal};

/// Acknowledgements buffered per insert stream before the server stops
/// reading requests (a client that never reads its acks is slowed down, not
/// buffered for).
const INSERT_ACK_BUFFER: usize = 32;

/// An insert's acknowledgement (or the stream's final status), with the log
/// position that must be on disk before the client may hear it (0: none).
type Ack = (u64, Result<InsertResponse, Status>);

/// Most batches a sample stream may prepare ahead of its client
/// (`SampleRequest.in_flight`). Items in this buffer have left a queue
/// table already, so a client that hangs up loses them; the default is one.
pub const MAX_SAMPLE_IN_FLIGHT: u32 = 16;

/// Most bytes (KiB, as response messages) of the batches a sample stream
/// holds drawn ahead of its client, beyond the first. A drawn batch keeps
/// its items' steps alive even once the table has evicted them, so with
/// a table that turns over quickly, 8 batches of 16 R2D2 sequences ahead
/// on each of 4 streams would pin 290 MB the table no longer holds. The
/// budget still lets small batches go `in_flight` deep; 16 MiB is the
/// connection's HTTP/2 window (`fleet_proto::connect`), and 8 ms of
/// sending at the 2 GB/s a sampler reads on loopback.
pub const SAMPLE_AHEAD_KIB: u32 = 16 << 10;

/// Writers one insert stream may continue items for; each keeps its previous
/// item's chunks alive, so this bounds what a stream can pin.
pub const MAX_WRITERS_PER_STREAM: usize = 4096;

/// The Replay service: the tables and the service-wide settings. Cheap to
/// clone (all clones share the tables).
#[derive(Debug, Clone)]
pub struct ReplayService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// In config order, for `Info`.
    tables: Vec<Arc<Table>>,
    /// The step data of every table's items.
    store: Arc<ChunkStore>,
    by_name: HashMap<String, Arc<Table>>,
    /// Used when a sample request does not set its own timeout.
    sample_timeout: Duration,
    max_message_bytes: usize,
    /// Cancelled on shutdown; ends every stream and every wait.
    shutdown: CancellationToken,
    /// `replay.checkpoint_dir`, when checkpoints are on.
    checkpoint_dir: Option<PathBuf>,
    keep_checkpoints: usize,
    /// One checkpoint at a time (the timer, the RPC and shutdown may meet).
    checkpointing: tokio::sync::Mutex<()>,
    /// With `replay.durability = "wal"`: the log every table change goes to.
    wal: Option<Arc<Wal>>,
    /// The server, shared by bytes between insert and sample streams.
    share: Arc<Share>,
}

/// What [`ReplayService::open_tables`] made.
struct OpenedTables {
    tables: Vec<Arc<Table>>,
    store: Arc<ChunkStore>,
    restored: Option<RestoredFrom>,
}

/// The checkpoint the tables came from: its directory, its chunks (by id)
/// and the first log segment it may lack.
struct RestoredFrom {
    dir: PathBuf,
    chunks: HashMap<u64, Arc<crate::chunk::Chunk>>,
    wal_segment: u64,
}

/// Where a starting service takes its items from.
#[derive(Debug, Clone, PartialEq)]
pub enum Restore {
    /// The newest complete checkpoint under `replay.checkpoint_dir`, when it
    /// is set and holds one; otherwise empty tables.
    Auto,
    /// The newest complete checkpoint under this directory; none is an error.
    From(PathBuf),
}

impl ReplayService {
    /// Checks `config` and builds its (empty) tables. Cancelling `shutdown`
    /// ends every blocked insert and sample with UNAVAILABLE.
    pub fn new(config: &ReplayConfig, shutdown: CancellationToken) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let store = ChunkStore::new();
        let tables = config
            .tables
            .iter()
            .map(|t| Arc::new(Table::sharing(t.clone(), shutdown.clone(), Arc::clone(&store))))
            .collect();
        Ok(Self::with_tables(config, tables, store, shutdown, None))
    }

    /// Like [`ReplayService::new`], with the tables restored as `restore`
    /// says. Returns the checkpoint used, if any. Every table the checkpoint
    /// holds must be in `config` (tables only in `config` start empty); any
    /// problem with the checkpoint is an error naming it, and nothing is
    /// served from half a checkpoint.
    ///
    /// With `replay.checkpoint_dir` set, this also deletes the unfinished
    /// checkpoints a crash left there, and counts this start in that
    /// directory: the count is the epoch of every key issued from now on
    /// (see [`crate::table`]'s "Keys"), so keys never repeat across
    /// restarts. Without a checkpoint directory nothing outlives the
    /// process: keys start at 1 on every start (epoch 0), or, restoring from
    /// `Restore::From`, in the epoch after the restored keys.
    ///
    /// With `replay.durability = "wal"`, the write-ahead log under the
    /// checkpoint directory is applied on top of the restored checkpoint
    /// (see [`crate::wal`]) and every later change is logged. Restoring
    /// from another directory is refused while the log holds changes, which
    /// belong to this directory's checkpoints.
    pub fn open(config: &ReplayConfig, shutdown: CancellationToken, restore: &Restore) -> Result<(Self, Option<PathBuf>), Error> {
        config.validate().map_err(Error::Config)?;
        let own_store = (!config.checkpoint_dir.is_empty()).then(|| checkpoint::store(std::path::Path::new(&config.checkpoint_dir), 1));
        if let Some(store) = &own_store {
            store.remove_leftovers()?;
        }
        let wal_dir = (config.durability == Durability::Wal).then(|| std::path::Path::new(&config.checkpoint_dir).join(wal::DIR));
        if let (Some(dir), Restore::From(from)) = (&wal_dir, restore)
            && wal::has_segments(dir)?
        {
            return Err(Error::Wal(format!(
                "refusing to restore from {}: the write-ahead log in {} holds changes to the checkpoints beside it; \
                 move it away to discard them",
                from.display(),
                dir.display()
            )));
        }
        let opened = Self::open_tables(config, &shutdown, restore)?;
        let restored = opened.restored.as_ref().map(|r| r.dir.clone());
        let wal = match wal_dir {
            Some(dir) => {
                let (from_segment, chunks) = opened.restored.map(|r| (r.wal_segment, r.chunks)).unwrap_or_default();
                let recovery = wal::recover(&dir, from_segment, &opened.store, chunks, &opened.tables)?;
                info!(
                    dir = %dir.display(),
                    segments = recovery.segments,
                    changes_applied = recovery.applied,
                    torn_bytes = recovery.torn_bytes,
                    "replay write-ahead log applied"
                );
                let wal = Wal::open(&dir, recovery.next_segment)?;
                for table in &opened.tables {
                    table.attach_wal(Arc::clone(&wal));
                }
                Some(wal)
            }
            None => None,
        };
        let service = Self::with_tables(config, opened.tables, opened.store, shutdown, wal);
        // Above every key restored, in case they come from a later start
        // than this directory has counted (or from another directory).
        let after_restored = service
            .inner
            .tables
            .iter()
            .map(|t| key_epoch(t.next_key() - 1) + 1)
            .max()
            .unwrap_or(0);
        let epoch = match &own_store {
            Some(store) => store.record_start(after_restored)?,
            None if restored.is_some() => after_restored,
            None => 0,
        };
        for table in &service.inner.tables {
            table.begin_epoch(epoch)?;
        }
        debug!(epoch, "replay keys begin at epoch");
        Ok((service, restored))
    }

    /// The tables of `config`, restored from a checkpoint as `restore` says.
    fn open_tables(config: &ReplayConfig, shutdown: &CancellationToken, restore: &Restore) -> Result<OpenedTables, Error> {
        let dir = match restore {
            Restore::From(root) => Some(
                checkpoint::newest(root)?.ok_or_else(|| Error::Checkpoint(format!("no complete checkpoint under {}", root.display())))?,
            ),
            Restore::Auto if config.checkpoint_dir.is_empty() => None,
            Restore::Auto => checkpoint::newest(std::path::Path::new(&config.checkpoint_dir))?,
        };
        let store = ChunkStore::new();
        let Some(dir) = dir else {
            let tables = config
                .tables
                .iter()
                .map(|t| Arc::new(Table::sharing(t.clone(), shutdown.clone(), Arc::clone(&store))))
                .collect();
            return Ok(OpenedTables {
                tables,
                store,
                restored: None,
            });
        };
        let checkpoint::Restored {
            tables: snapshots,
            chunks,
            wal_segment,
        } = checkpoint::read(&dir, &store)?;
        let mut snapshots: HashMap<String, checkpoint::TableSnapshot> = snapshots.into_iter().map(|s| (s.header.name.clone(), s)).collect();
        let mut tables = Vec::with_capacity(config.tables.len());
        for table_config in &config.tables {
            let table = match snapshots.remove(&table_config.name) {
                Some(snapshot) => Table::restore(table_config.clone(), shutdown.clone(), Arc::clone(&store), snapshot),
                None => Ok(Table::sharing(table_config.clone(), shutdown.clone(), Arc::clone(&store))),
            };
            tables.push(Arc::new(table.map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.display())))?));
        }
        if let Some(name) = snapshots.keys().next() {
            return Err(Error::Checkpoint(format!(
                "{} holds table {name:?}, which replay.tables does not declare",
                dir.display()
            )));
        }
        Ok(OpenedTables {
            tables,
            store,
            restored: Some(RestoredFrom { dir, chunks, wal_segment }),
        })
    }

    fn with_tables(
        config: &ReplayConfig,
        tables: Vec<Arc<Table>>,
        store: Arc<ChunkStore>,
        shutdown: CancellationToken,
        wal: Option<Arc<Wal>>,
    ) -> Self {
        let by_name = tables.iter().map(|t| (t.name().to_owned(), Arc::clone(t))).collect();
        Self {
            inner: Arc::new(Inner {
                tables,
                store,
                by_name,
                sample_timeout: Duration::from_millis(config.sample_timeout_ms),
                max_message_bytes: config.max_message_bytes,
                shutdown,
                checkpoint_dir: (!config.checkpoint_dir.is_empty()).then(|| PathBuf::from(&config.checkpoint_dir)),
                keep_checkpoints: config.keep_checkpoints,
                checkpointing: tokio::sync::Mutex::new(()),
                wal,
                share: Arc::new(Share::new()),
            }),
        }
    }

    /// Writes every table to a new checkpoint under `replay.checkpoint_dir`.
    /// Each table is locked only while its index is copied; the writing
    /// happens off the lock (and off the async threads) while inserts and
    /// samples go on.
    pub async fn write_checkpoint(&self) -> Result<PathBuf, Error> {
        let root = self.inner.checkpoint_dir.clone().ok_or(Error::CheckpointsDisabled)?;
        let _one_at_a_time = self.inner.checkpointing.lock().await;
        let started = std::time::Instant::now();
        // Every change logged from here on goes to a new segment, and the
        // snapshots hold everything logged before: once this checkpoint is
        // committed the older segments are no longer needed.
        let wal_segment = self.inner.wal.as_ref().map_or(0, |wal| wal.rotate());
        let snapshots: Vec<_> = self.inner.tables.iter().map(|t| t.snapshot()).collect();
        let items: u64 = snapshots.iter().map(|s| s.header.items).sum();
        let keep = self.inner.keep_checkpoints;
        let wal = self.inner.wal.clone();
        let path = tokio::task::spawn_blocking(move || {
            let path = checkpoint::write(&root, &snapshots, keep, wal_segment)?;
            if let Some(wal) = wal {
                wal.remove_segments_before(wal_segment)?;
            }
            Ok::<_, Error>(path)
        })
        .await
        .map_err(|e| Error::Checkpoint(format!("the writing task failed: {e}")))??;
        crate::metrics::checkpoint_written(started.elapsed());
        info!(path = %path.display(), items, seconds = started.elapsed().as_secs_f64(), "replay checkpoint written");
        Ok(path)
    }

    /// Writes and syncs what the write-ahead log holds and stops its
    /// writer (nothing without a log). Shutdown calls this last.
    pub fn close_wal(&self) {
        if let Some(wal) = &self.inner.wal {
            wal.close();
        }
    }

    /// The table called `name`.
    pub fn table(&self, name: &str) -> Result<Arc<Table>, Error> {
        self.inner
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTable(name.to_owned()))
    }

    /// The tonic service, with the configured message bound in both directions.
    pub fn into_server(self) -> ReplayServer<Self> {
        let limit = self.inner.max_message_bytes;
        ReplayServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// Reads one insert stream until the client closes it, storing each
    /// item and acknowledging it in order. Returns the error that ends the
    /// stream, if any.
    async fn run_insert_stream(&self, requests: &mut Streaming<InsertRequest>, acks: &mpsc::Sender<Ack>) -> Result<(), Error> {
        // Each writer's last stored item, which its next item may continue.
        let mut previous: HashMap<u64, Arc<ItemSteps>> = HashMap::new();
        loop {
            let request = tokio::select! {
                message = requests.message() => match message {
                    Ok(Some(request)) => request,
                    Ok(None) => return Ok(()),
                    // A request too large for max_message_bytes, one that is
                    // not a valid message, or a broken connection: the stream
                    // ends with that status after the acks of every item stored
                    // before it, so the client knows which items were stored.
                    // A client that has gone simply does not hear it.
                    Err(status) => return Err(Error::Request(status)),
                },
                () = acks.closed() => return Ok(()),
                () = self.inner.shutdown.cancelled() => return Err(Error::Shutdown),
            };
            // With a request in hand, this stream has work: it waits while
            // inserts have moved more than their share and a sample stream
            // is ready to run.
            tokio::select! {
                () = self.inner.share.turn(Class::Insert) => {}
                () = acks.closed() => return Ok(()),
                () = self.inner.shutdown.cancelled() => return Err(Error::Shutdown),
            }
            self.inner.share.charge(Class::Insert, prost::Message::encoded_len(&request));
            let tables = std::iter::once(&request.table)
                .chain(&request.also_tables)
                .map(|name| self.table(name))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(name) = request
                .also_tables
                .iter()
                .enumerate()
                .find_map(|(i, name)| (*name == request.table || request.also_tables[..i].contains(name)).then_some(name))
            {
                return Err(Error::InvalidInsert(format!("table {name:?} is named twice")));
            }
            if previous.len() >= MAX_WRITERS_PER_STREAM && !previous.contains_key(&request.writer) {
                return Err(Error::TooManyWriters(MAX_WRITERS_PER_STREAM));
            }
            let sequence = request.sequence.ok_or(ValidationError::Missing("sequence"))?;
            let priority = sequence.priority;
            // New steps are stored as the first table says.
            let compression = tables[0].config().compression();
            let steps = match request.overlap as usize {
                0 => self.inner.store.item(sequence, compression)?,
                overlap => {
                    let Some(before) = previous.get(&request.writer) else {
                        return Err(ValidationError::Overlap(format!(
                            "overlap is {overlap} steps but this stream has stored no item for writer {}",
                            request.writer
                        ))
                        .into());
                    };
                    self.inner.store.continued_item(before, overlap, sequence, compression)?
                }
            };
            // One item is in all its tables or in none: stored in all at
            // once when every one can take it, refused whole when any one
            // refuses it. Waits while any of them is full; that wait is the
            // back-pressure actors feel. A client that leaves mid-wait
            // leaves nothing behind: the wait is dropped before anything is
            // stored, and the item is not acknowledged (an actor resends it).
            let refs: Vec<&Table> = tables.iter().map(Arc::as_ref).collect();
            let keys = tokio::select! {
                keys = Table::insert_into_all(&refs, Arc::clone(&steps), priority, None) => keys?,
                () = acks.closed() => return Ok(()),
            };
            previous.insert(request.writer, steps);
            let ack = InsertResponse {
                key: keys[0],
                also_keys: keys[1..].to_vec(),
            };
            // With a log, the ack waits (in the response stream, not here)
            // until the log holding the item is on disk.
            let position = self.inner.wal.as_ref().map_or(0, |wal| wal.appended());
            if acks.send((position, Ok(ack))).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Produces the batches of one sample stream until `num_batches` are
    /// sent (0: until the client hangs up), a batch times out, or shutdown.
    /// A batch whose message would exceed `max_message_bytes` (which the
    /// server's encoder would refuse after the items had left the table) is
    /// not taken: the stream ends with RESOURCE_EXHAUSTED naming the sizes.
    async fn run_sample_stream(
        table: Arc<Table>,
        request: pb::SampleRequest,
        timeout: Duration,
        max_message_bytes: usize,
        shutdown: CancellationToken,
        share: Arc<Share>,
        batches: mpsc::Sender<DrawnBatch>,
    ) {
        let batch_size = request.batch_size as usize;
        let ahead = Arc::new(Semaphore::new(SAMPLE_AHEAD_KIB as usize));
        let mut sent = 0u64;
        while request.num_batches == 0 || sent < request.num_batches {
            // Take a slot first so that no items leave the table for a
            // client that is gone or not reading.
            let permit = tokio::select! {
                permit = batches.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = shutdown.cancelled() => {
                    // Best effort: the client may not be reading.
                    let _ = batches.try_send(Err(Error::Shutdown.into()));
                    return;
                }
            };
            // With room for a batch, this stream has work: it waits while
            // samples have moved more than their share and an insert stream
            // is ready to run.
            tokio::select! {
                () = share.turn(Class::Sample) => {}
                () = batches.closed() => return,
                () = shutdown.cancelled() => {
                    // Into the slot already reserved: the client hears why
                    // its stream ends.
                    permit.send(Err(Error::Shutdown.into()));
                    return;
                }
            }
            let result = tokio::select! {
                result = table.sample_within(batch_size, request.beta, timeout, max_message_bytes) => result,
                () = batches.closed() => return,
            };
            match result {
                Ok(items) => {
                    // Waits while the batches ahead of this one hold the
                    // budget; the response stream frees theirs as it sends.
                    let bytes = response_len(&items);
                    share.charge(Class::Sample, bytes);
                    let kib = bytes.div_ceil(1024).min(SAMPLE_AHEAD_KIB as usize) as u32;
                    let budget = tokio::select! {
                        budget = Arc::clone(&ahead).acquire_many_owned(kib) => match budget {
                            Ok(budget) => budget,
                            Err(_) => return,
                        },
                        () = batches.closed() => return,
                    };
                    permit.send(Ok(Drawn { items, _budget: budget }));
                    sent += 1;
                }
                Err(error) => {
                    debug!(%error, "sample stream ends");
                    permit.send(Err(error.into()));
                    return;
                }
            }
        }
        debug!(batches = sent, "sample stream complete");
    }
}

/// A batch drawn for a sample stream, waiting for the client as references
/// to its stored steps, with its share of the stream's [`SAMPLE_AHEAD_KIB`].
struct Drawn {
    items: Vec<SampledItem>,
    _budget: OwnedSemaphorePermit,
}

/// A drawn batch, or the status that ends the stream.
type DrawnBatch = Result<Drawn, Status>;

/// The message for a drawn batch, assembled as the response stream sends
/// it: a batch waiting in a stream's `in_flight` queue holds no copy of its
/// steps. Its budget is freed once the copy is made.
fn sample_response(batch: DrawnBatch) -> Result<SampleResponse, Status> {
    let items = batch?
        .items
        .into_iter()
        .map(sampled_item_message)
        .collect::<Result<Vec<_>, Error>>();
    items.map(|items| SampleResponse { items }).map_err(|error| {
        warn!(%error, "could not assemble a sampled item");
        error.into()
    })
}

/// The message for one sampled item, its steps assembled from their chunks.
fn sampled_item_message(item: SampledItem) -> Result<pb::SampledItem, Error> {
    Ok(pb::SampledItem {
        sequence: Some(item.sequence()?),
        key: item.key,
        priority: item.priority,
        probability: item.probability,
        times_sampled: item.times_sampled,
        table_size: item.table_size,
        weight: item.weight,
    })
}

#[tonic::async_trait]
impl Replay for ReplayService {
    type InsertStream = Pin<Box<dyn Stream<Item = Result<InsertResponse, Status>> + Send>>;
    type SampleStream = Pin<Box<dyn Stream<Item = Result<SampleResponse, Status>> + Send>>;

    async fn insert(&self, request: Request<Streaming<InsertRequest>>) -> Result<Response<Self::InsertStream>, Status> {
        let span = info_span!("insert_stream", peer = ?request.remote_addr());
        let mut requests = request.into_inner();
        let (acks, rx) = mpsc::channel::<Ack>(INSERT_ACK_BUFFER);
        let service = self.clone();
        let stream = async move {
            debug!("insert stream opened");
            match service.run_insert_stream(&mut requests, &acks).await {
                Ok(()) => debug!("insert stream closed"),
                Err(error) => {
                    match &error {
                        // The client went away mid-stream; nobody to tell.
                        Error::Request(status)
                            if matches!(
                                status.code(),
                                tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Unavailable
                            ) =>
                        {
                            debug!(%error, "insert stream broken by the client");
                        }
                        _ => warn!(%error, "insert stream rejected"),
                    }
                    // A failed send means the client has gone already.
                    let _ = acks.send((0, Err(error.into()))).await;
                }
            }
        };
        tokio::spawn(self.inner.share.task(Class::Insert, Box::pin(stream.instrument(span))));
        let acks = ReceiverStream::new(rx);
        Ok(Response::new(match self.inner.wal.clone() {
            None => Box::pin(acks.map(|(_, ack)| ack)),
            // Each ack in turn waits for the log to be on disk up to its
            // item; meanwhile later items are read, stored and logged, so
            // they share the same sync.
            Some(wal) => Box::pin(futures::StreamExt::then(acks, move |(position, ack)| {
                let wal = Arc::clone(&wal);
                async move {
                    match ack {
                        Ok(ack) => wal.synced(position).await.map(|()| ack).map_err(Status::from),
                        error => error,
                    }
                }
            })),
        }))
    }

    async fn sample(&self, request: Request<pb::SampleRequest>) -> Result<Response<Self::SampleStream>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let table = self.table(&request.table)?;
        table.check_sample_request(request.batch_size as usize, request.beta)?;
        let timeout = match request.timeout_ms {
            0 => self.inner.sample_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let span = info_span!(
            "sample_stream",
            ?peer,
            table = %request.table,
            batch_size = request.batch_size,
            num_batches = request.num_batches,
        );
        if request.in_flight > MAX_SAMPLE_IN_FLIGHT {
            return Err(Error::InvalidSampleRequest(format!(
                "in_flight is {}; at most {MAX_SAMPLE_IN_FLIGHT} batches may be prepared ahead",
                request.in_flight
            ))
            .into());
        }
        let (batches, rx) = mpsc::channel(request.in_flight.max(1) as usize);
        let shutdown = self.inner.shutdown.clone();
        let limit = self.inner.max_message_bytes;
        let share = Arc::clone(&self.inner.share);
        let drawing = Self::run_sample_stream(table, request, timeout, limit, shutdown, Arc::clone(&share), batches);
        tokio::spawn(share.task(Class::Sample, Box::pin(drawing.instrument(span))));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(sample_response))))
    }

    async fn update_priorities(
        &self,
        request: Request<pb::UpdatePrioritiesRequest>,
    ) -> Result<Response<pb::UpdatePrioritiesResponse>, Status> {
        let request = request.into_inner();
        let table = self.table(&request.table)?;
        let updates: Vec<(u64, f64)> = request.updates.iter().map(|u| (u.key, u.priority)).collect();
        let missing = table.update_priorities(&updates)?;
        debug!(table = %request.table, updates = updates.len(), missing, "priorities updated");
        Ok(Response::new(pb::UpdatePrioritiesResponse { missing }))
    }

    async fn checkpoint(&self, _request: Request<pb::CheckpointRequest>) -> Result<Response<pb::CheckpointResponse>, Status> {
        let path = self.write_checkpoint().await?;
        Ok(Response::new(pb::CheckpointResponse {
            path: path.display().to_string(),
        }))
    }

    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let tables = self
            .inner
            .tables
            .iter()
            .map(|table| {
                let stats = table.stats();
                pb::TableInfo {
                    name: stats.name,
                    sampler: stats.sampler.to_owned(),
                    remover: stats.remover.to_owned(),
                    size: stats.size,
                    max_size: stats.max_size,
                    inserts: stats.inserts,
                    samples: stats.samples,
                    max_times_sampled: stats.max_times_sampled,
                    bytes: stats.bytes,
                    max_bytes: stats.max_bytes,
                    evictions: stats.evictions,
                    min_size_to_sample: stats.rate_limiter.min_size_to_sample as u64,
                    samples_per_insert: stats.rate_limiter.samples_per_insert,
                    min_diff: stats.rate_limiter.min_diff,
                    max_diff: stats.rate_limiter.max_diff,
                    steps: stats.steps,
                    compression: stats.compression.as_str().to_owned(),
                }
            })
            .collect();
        let (chunks, chunk_bytes) = self.inner.store.totals();
        Ok(Response::new(pb::InfoResponse {
            tables,
            chunks,
            chunk_bytes,
        }))
    }
}

/// Serves the Replay service and `grpc.health.v1.Health` on `listener` until
/// `shutdown` completes. Health reports SERVING (for "" and
/// `fleet.v1.Replay`) once the tables exist, NOT_SERVING once shutdown
/// starts; blocked inserts and samples then end with UNAVAILABLE so that the
/// server can drain promptly. With `replay.checkpoint_dir` set, the tables
/// come from a checkpoint as `restore` says, one is written every
/// `checkpoint_interval_secs` and a last one once the server has stopped.
pub async fn serve(
    config: ReplayConfig,
    restore: Restore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_announcing(config, restore, listener, RequireToken::default(), Tls::default(), shutdown, || {}).await
}

/// [`serve`], with the Replay service behind `auth` (the health service is
/// never behind it) and the whole port behind `tls`, calling `ready` once
/// the tables are restored (or made) and health reports SERVING, before the
/// first request is served. A start that fails before then (a bad config, a
/// damaged checkpoint) returns its error without calling `ready`.
pub async fn serve_announcing(
    config: ReplayConfig,
    restore: Restore,
    listener: TcpListener,
    auth: RequireToken,
    tls: Tls,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), Error> {
    // Help text and units for every replay metric, so that /metrics is
    // complete (harmless without a recorder, and when called again).
    crate::metrics::describe();
    let token = CancellationToken::new();
    // Whatever ends this function (error, or the caller dropping it) releases
    // every waiter.
    let _release = token.clone().drop_guard();
    let (service, restored) = ReplayService::open(&config, token.clone(), &restore)?;
    match &restored {
        Some(path) => info!(path = %path.display(), "replay tables restored from checkpoint"),
        None if config.checkpoint_dir.is_empty() => {}
        None => info!(dir = %config.checkpoint_dir, "no replay checkpoint yet; starting empty"),
    }
    // The tables as they run, presets applied.
    info!(
        addr = ?listener.local_addr().ok(),
        bearer_token_required = auth.is_on(),
        tls = tls.is_on(),
        mutual_tls = tls.is_mutual(),
        config = ?config.effective(),
        "replay service starting"
    );
    if service.inner.checkpoint_dir.is_some() && config.checkpoint_interval_secs > 0.0 {
        let service = service.clone();
        let token = token.clone();
        let every = Duration::from_secs_f64(config.checkpoint_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(error) = service.write_checkpoint().await {
                    warn!(%error, "periodic replay checkpoint failed");
                }
            }
        });
    }

    // Built before SERVING is announced, so that TLS settings tonic refuses
    // fail the start instead.
    let mut server = fleet_proto::connect::server(&tls)?;
    let (health, health_server) = tonic_health::server::health_reporter();
    health.set_serving::<ReplayServer<ReplayService>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    ready();

    let stop = {
        let token = token.clone();
        async move {
            shutdown.await;
            info!("replay service shutting down");
            health.set_not_serving::<ReplayServer<ReplayService>>().await;
            health.set_service_status("", ServingStatus::NotServing).await;
            token.cancel();
        }
    };
    let incoming = TcpListenerStream::new(listener).map(|connection| {
        if let Ok(stream) = &connection {
            // Acks and batches are small messages that should not wait for
            // Nagle's algorithm.
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%error, "could not set TCP_NODELAY");
            }
        }
        connection
    });
    server
        .add_service(health_server)
        .add_service(InterceptedService::new(service.clone().into_server(), auth))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    if service.inner.checkpoint_dir.is_some() {
        service.write_checkpoint().await?;
    }
    service.close_wal();
    info!("replay service stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::SocketAddr;

    use fleet_proto::pb::replay_client::ReplayClient;
    use prost::Message;
    use tokio::task::JoinHandle;
    use tonic::Code;
    use tonic::transport::Channel;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response};

    use super::*;
    use crate::config::{SamplerKind, TableConfig};
    use crate::validate::testing::cartpole_sequence;

    /// A server on a free local port, stopped (and awaited) when dropped
    /// through [`Server::stop`].
    struct Server {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<Result<(), Error>>,
    }

    impl Server {
        async fn start(config: ReplayConfig) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(config, Restore::Auto, listener, async move {
                let _ = stopped.await;
            }));
            Self {
                addr,
                stop: Some(stop),
                task,
            }
        }

        async fn client(&self) -> ReplayClient<Channel> {
            ReplayClient::connect(format!("http://{}", self.addr)).await.unwrap()
        }

        async fn stop(mut self) -> Result<(), Error> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(Duration::from_secs(10), &mut self.task)
                .await
                .expect("server did not stop within 10 s")
                .unwrap()
        }
    }

    fn config_with(max_size: usize) -> ReplayConfig {
        ReplayConfig {
            tables: vec![TableConfig {
                name: "queue".into(),
                max_size,
                sampler: SamplerKind::Fifo,
                max_times_sampled: 1,
                ..TableConfig::default()
            }],
            ..ReplayConfig::default()
        }
    }

    fn insert_request(sequence: pb::Sequence) -> InsertRequest {
        InsertRequest {
            table: "queue".into(),
            sequence: Some(sequence),
            ..Default::default()
        }
    }

    fn sample_request(batch_size: u32, num_batches: u64, timeout_ms: u32) -> pb::SampleRequest {
        pb::SampleRequest {
            table: "queue".into(),
            batch_size,
            num_batches,
            timeout_ms,
            beta: 0.0,
            in_flight: 1,
        }
    }

    /// Inserts `requests` on one fresh stream and returns the acks, or the
    /// status that ended the stream.
    async fn insert_all(client: &mut ReplayClient<Channel>, requests: Vec<InsertRequest>) -> Result<Vec<u64>, Status> {
        let count = requests.len();
        let mut acks = client.insert(tokio_stream::iter(requests)).await?.into_inner();
        let mut keys = vec![];
        while keys.len() < count {
            match acks.message().await? {
                Some(ack) => keys.push(ack.key),
                None => break,
            }
        }
        Ok(keys)
    }

    async fn table_size(client: &mut ReplayClient<Channel>) -> u64 {
        client.info(pb::InfoRequest {}).await.unwrap().into_inner().tables[0].size
    }

    #[tokio::test]
    async fn insert_reject_info_and_sample_round_trip() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;

        let good: Vec<pb::Sequence> = (0..3).map(|seed| cartpole_sequence(21, seed)).collect();
        let keys = insert_all(&mut client, good.iter().cloned().map(insert_request).collect())
            .await
            .unwrap();
        assert_eq!(keys, vec![1, 2, 3]);

        let mut short_rewards = cartpole_sequence(21, 7);
        short_rewards.rewards.pop();
        let mut short_bytes = cartpole_sequence(21, 8);
        let data = &mut short_bytes.observations.as_mut().unwrap().data;
        data.truncate(data.len() - 1);
        let mut nan_reward = cartpole_sequence(21, 9);
        nan_reward.rewards[3] = f32::NAN;
        let cases = [
            (short_rewards, "rewards has 20 entries but observations have 21 steps"),
            (short_bytes, "observations: tensor of shape [21, 4]"),
            (nan_reward, "rewards[3] is NaN"),
        ];
        for (bad, expected) in cases {
            let status = insert_all(&mut client, vec![insert_request(bad)]).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(expected), "{:?} lacks {expected:?}", status.message());
        }
        // A good item ahead of a bad one on the same stream is kept and acked.
        let mut bad = cartpole_sequence(21, 10);
        bad.is_first.clear();
        let mut acks = client
            .insert(tokio_stream::iter(vec![
                insert_request(cartpole_sequence(21, 3)),
                insert_request(bad),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acks.message().await.unwrap().unwrap().key, 4);
        assert_eq!(acks.message().await.unwrap_err().code(), Code::InvalidArgument);

        let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(
            info.tables,
            vec![pb::TableInfo {
                name: "queue".into(),
                sampler: "fifo".into(),
                remover: "fifo".into(),
                size: 4,
                max_size: 32,
                inserts: 4,
                samples: 0,
                max_times_sampled: 1,
                // Each item's steps, without the actor id that stays with the item.
                bytes: good
                    .iter()
                    .chain([&cartpole_sequence(21, 3)])
                    .map(|s| pb::Sequence { actor_id: 0, ..s.clone() }.encoded_len() as u64)
                    .sum(),
                max_bytes: 0,
                evictions: 0,
                min_size_to_sample: 1,
                samples_per_insert: 1.0,
                min_diff: f64::NEG_INFINITY,
                max_diff: f64::INFINITY,
                steps: 4 * 21,
                compression: "none".into(),
            }]
        );

        let mut batches = client.sample(sample_request(3, 1, 0)).await.unwrap().into_inner();
        let batch = batches.message().await.unwrap().unwrap();
        assert_eq!(batches.message().await.unwrap(), None, "num_batches = 1 ends the stream");
        assert_eq!(batch.items.len(), 3);
        for (i, (item, sent)) in batch.items.iter().zip(&good).enumerate() {
            assert_eq!(item.key, i as u64 + 1);
            assert_eq!(item.sequence.as_ref(), Some(sent), "sequence {i} changed on the way");
            assert_eq!((item.priority, item.weight, item.times_sampled), (1.0, 1.0, 1));
            assert_eq!(item.table_size, 4 - i as u64);
            assert_eq!(item.probability, 1.0 / (4 - i) as f64);
        }
        assert_eq!(table_size(&mut client).await, 1);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn unknown_tables_are_not_found() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        let request = InsertRequest {
            table: "nope".into(),
            sequence: Some(cartpole_sequence(3, 0)),
            ..Default::default()
        };
        let status = insert_all(&mut client, vec![request]).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("nope"), "{status:?}");

        let status = client
            .sample(pb::SampleRequest {
                table: "nope".into(),
                batch_size: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let request = pb::UpdatePrioritiesRequest {
            table: "nope".into(),
            updates: vec![],
        };
        assert_eq!(client.update_priorities(request).await.unwrap_err().code(), Code::NotFound);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn missing_sequence_is_invalid() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        let status = insert_all(
            &mut client,
            vec![InsertRequest {
                table: "queue".into(),
                sequence: None,
                ..Default::default()
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("sequence is missing"), "{status:?}");
        assert_eq!(table_size(&mut client).await, 0);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn bad_sample_requests_are_invalid() {
        let server = Server::start(config_with(4)).await;
        let mut client = server.client().await;
        for batch_size in [0, 5] {
            let status = client.sample(sample_request(batch_size, 1, 10)).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "batch_size {batch_size}");
        }
        let status = client
            .sample(pb::SampleRequest {
                beta: -1.0,
                ..sample_request(1, 1, 10)
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn sample_timeout_is_deadline_exceeded() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        insert_all(&mut client, vec![insert_request(cartpole_sequence(3, 0))])
            .await
            .unwrap();
        let mut batches = client.sample(sample_request(2, 0, 50)).await.unwrap().into_inner();
        let status = batches.message().await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("2 items"), "{status:?}");
        assert_eq!(table_size(&mut client).await, 1, "a timed-out batch takes nothing");
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn streams_several_batches_and_stops_at_num_batches() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        let requests = (0..5).map(|seed| insert_request(cartpole_sequence(3, seed))).collect();
        insert_all(&mut client, requests).await.unwrap();
        let mut batches = client.sample(sample_request(2, 2, 1000)).await.unwrap().into_inner();
        let mut keys = vec![];
        while let Some(batch) = batches.message().await.unwrap() {
            keys.extend(batch.items.iter().map(|i| i.key));
        }
        assert_eq!(keys, vec![1, 2, 3, 4]);
        assert_eq!(table_size(&mut client).await, 1);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn priority_updates_over_grpc() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        insert_all(&mut client, vec![insert_request(cartpole_sequence(3, 0))])
            .await
            .unwrap();
        let update = |key, priority| pb::PriorityUpdate { key, priority };
        let request = pb::UpdatePrioritiesRequest {
            table: "queue".into(),
            updates: vec![update(1, 4.0), update(77, 1.0)],
        };
        assert_eq!(client.update_priorities(request).await.unwrap().into_inner().missing, 1);
        let request = pb::UpdatePrioritiesRequest {
            table: "queue".into(),
            updates: vec![update(1, 5.0), update(1, f64::NAN)],
        };
        assert_eq!(client.update_priorities(request).await.unwrap_err().code(), Code::InvalidArgument);
        let mut batches = client.sample(sample_request(1, 1, 1000)).await.unwrap().into_inner();
        assert_eq!(batches.message().await.unwrap().unwrap().items[0].priority, 4.0);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn prioritized_table_over_grpc() {
        let config = ReplayConfig {
            tables: vec![TableConfig {
                name: "replay".into(),
                max_size: 16,
                sampler: SamplerKind::Prioritized,
                max_times_sampled: 0,
                priority_exponent: 1.0,
                ..TableConfig::default()
            }],
            ..ReplayConfig::default()
        };
        let server = Server::start(config).await;
        let mut client = server.client().await;
        // Priority 0 asks for the largest seen so far: 3.
        let requests = [1.0, 3.0, 0.0]
            .iter()
            .enumerate()
            .map(|(seed, &priority)| InsertRequest {
                table: "replay".into(),
                sequence: Some(pb::Sequence {
                    priority,
                    ..cartpole_sequence(3, seed as u64)
                }),
                ..Default::default()
            })
            .collect();
        assert_eq!(insert_all(&mut client, requests).await.unwrap(), vec![1, 2, 3]);

        let sample = |beta| pb::SampleRequest {
            in_flight: 1,
            table: "replay".into(),
            batch_size: 16,
            num_batches: 1,
            timeout_ms: 1000,
            beta,
        };
        let mut batches = client.sample(sample(0.5)).await.unwrap().into_inner();
        let batch = batches.message().await.unwrap().unwrap();
        assert_eq!(batches.message().await.unwrap(), None);
        assert_eq!(batch.items.len(), 16, "draws with replacement from three items");
        // P = 1/7, 3/7, 3/7 and N = 3: (N·P)^-0.5 normalised by the largest
        // weight in the batch, that of key 1 when drawn: 1, 1/√3, 1/√3.
        let key_1_drawn = batch.items.iter().any(|i| i.key == 1);
        let mut times_sampled = HashMap::new();
        for item in &batch.items {
            let (priority, probability, weight) = match item.key {
                1 => (1.0, 1.0 / 7.0, 1.0),
                2 | 3 if key_1_drawn => (3.0, 3.0 / 7.0, 1.0 / 3f64.sqrt()),
                2 | 3 => (3.0, 3.0 / 7.0, 1.0),
                key => panic!("unexpected key {key}"),
            };
            assert_eq!((item.priority, item.table_size), (priority, 3), "{item:?}");
            assert!((item.probability - probability).abs() < 1e-12, "{item:?}");
            let seen = times_sampled.entry(item.key).or_insert(0);
            *seen += 1;
            assert_eq!(item.times_sampled, *seen);
            assert_eq!(item.sequence.as_ref().unwrap().actor_id, item.key - 1);
            assert!((item.weight - weight).abs() < 1e-12, "{item:?}");
        }

        let update = |key, priority| pb::PriorityUpdate { key, priority };
        let request = pb::UpdatePrioritiesRequest {
            table: "replay".into(),
            updates: vec![update(1, 0.0), update(2, 4.0), update(99, 1.0)],
        };
        assert_eq!(client.update_priorities(request).await.unwrap().into_inner().missing, 1);
        let request = pb::UpdatePrioritiesRequest {
            table: "replay".into(),
            updates: vec![update(1, 50.0), update(3, -1.0)],
        };
        assert_eq!(client.update_priorities(request).await.unwrap_err().code(), Code::InvalidArgument);

        let mut batches = client.sample(sample(0.0)).await.unwrap().into_inner();
        let batch = batches.message().await.unwrap().unwrap();
        for item in &batch.items {
            let (priority, probability) = match item.key {
                2 => (4.0, 4.0 / 7.0),
                3 => (3.0, 3.0 / 7.0),
                key => panic!("key {key} has priority 0 and must not be drawn"),
            };
            assert_eq!((item.priority, item.weight), (priority, 1.0), "{item:?}");
            assert!((item.probability - probability).abs() < 1e-12, "{item:?}");
        }

        let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
        let table = &info.tables[0];
        assert_eq!((table.sampler.as_str(), table.remover.as_str()), ("prioritized", "fifo"));
        assert_eq!((table.size, table.max_size, table.inserts, table.samples), (3, 16, 3, 32));
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn full_table_holds_back_acks() {
        let server = Server::start(config_with(2)).await;
        let mut client = server.client().await;
        let (requests, rx) = mpsc::channel(8);
        let mut acks = client.insert(ReceiverStream::new(rx)).await.unwrap().into_inner();
        for seed in 0..3 {
            requests.send(insert_request(cartpole_sequence(3, seed))).await.unwrap();
        }
        assert_eq!(acks.message().await.unwrap().unwrap().key, 1);
        assert_eq!(acks.message().await.unwrap().unwrap().key, 2);
        let third = tokio::time::timeout(Duration::from_millis(200), acks.message()).await;
        assert!(third.is_err(), "the third insert must wait for room");

        let mut batches = client.sample(sample_request(1, 1, 1000)).await.unwrap().into_inner();
        assert_eq!(batches.message().await.unwrap().unwrap().items[0].key, 1);
        let third = tokio::time::timeout(Duration::from_secs(5), acks.message()).await.unwrap();
        assert_eq!(third.unwrap().unwrap().key, 3);
        drop(requests);
        assert_eq!(acks.message().await.unwrap(), None);
        server.stop().await.unwrap();
    }

    /// A sampler whose client has hung up must stop: if it lingered it would
    /// take the next item inserted.
    #[tokio::test]
    async fn hung_up_sampler_takes_nothing() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        let batches = client.sample(sample_request(1, 0, 60_000)).await.unwrap().into_inner();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(batches);
        tokio::time::sleep(Duration::from_millis(200)).await;
        insert_all(&mut client, vec![insert_request(cartpole_sequence(3, 0))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(table_size(&mut client).await, 1);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_draws_ahead_at_most_its_byte_budget() {
        // Batches of one item of about 4 MB: 16 in flight would draw 16
        // ahead of a client that does not read; the budget holds 4, then
        // one more is drawn and waits for it, and the transport takes one.
        const ITEMS: usize = 24;
        let item = |seed| cartpole_sequence(100_000, seed);
        let item_bytes = item(0).encoded_len();
        let budgeted = SAMPLE_AHEAD_KIB as usize / item_bytes.div_ceil(1024);
        assert!(
            budgeted + 3 < MAX_SAMPLE_IN_FLIGHT as usize,
            "{item_bytes} B items are too small to tell"
        );
        let server = Server::start(config_with(ITEMS)).await;
        let mut client = server
            .client()
            .await
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20);
        insert_all(&mut client, (0..ITEMS as u64).map(|seed| insert_request(item(seed))).collect())
            .await
            .unwrap();
        let mut request = sample_request(1, 0, 60_000);
        request.in_flight = MAX_SAMPLE_IN_FLIGHT;
        let batches = client.sample(request).await.unwrap().into_inner();
        // Until the stream has filled its budget (however slow the machine),
        // and then a while longer for any draw beyond it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ITEMS - (table_size(&mut client).await as usize) <= budgeted && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let drawn = ITEMS - table_size(&mut client).await as usize;
        assert!(
            (budgeted + 1..=budgeted + 3).contains(&drawn),
            "drew {drawn} ahead; the budget holds {budgeted}"
        );
        drop(batches);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn health_reports_serving() {
        let server = Server::start(ReplayConfig::default()).await;
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        for service in ["", "fleet.v1.Replay"] {
            let response = health
                .check(HealthCheckRequest { service: service.into() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                response.status(),
                health_check_response::ServingStatus::Serving,
                "service {service:?}"
            );
        }
        let status = health
            .check(HealthCheckRequest {
                service: "fleet.v1.Nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        server.stop().await.unwrap();
    }

    /// Shutdown ends blocked inserts and samples, so the server drains
    /// promptly instead of waiting for their timeouts.
    #[tokio::test]
    async fn shutdown_ends_blocked_streams() {
        let server = Server::start(config_with(1)).await;
        let mut client = server.client().await;
        let (requests, rx) = mpsc::channel(8);
        let mut acks = client.insert(ReceiverStream::new(rx)).await.unwrap().into_inner();
        requests.send(insert_request(cartpole_sequence(3, 0))).await.unwrap();
        requests.send(insert_request(cartpole_sequence(3, 1))).await.unwrap();
        assert_eq!(acks.message().await.unwrap().unwrap().key, 1);

        let other = Server::start(config_with(1)).await;
        let mut other_client = other.client().await;
        let mut batches = other_client.sample(sample_request(1, 0, 600_000)).await.unwrap().into_inner();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = tokio::time::Instant::now();
        server.stop().await.unwrap();
        other.stop().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        // Blocked streams end with UNAVAILABLE (or the connection closing).
        let insert_end = acks.message().await;
        assert!(matches!(&insert_end, Err(s) if s.code() == Code::Unavailable), "{insert_end:?}");
        let sample_end = batches.message().await;
        assert!(matches!(&sample_end, Err(s) if s.code() == Code::Unavailable), "{sample_end:?}");
        drop(requests);
    }

    #[tokio::test]
    async fn invalid_config_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = ReplayConfig {
            tables: vec![],
            ..ReplayConfig::default()
        };
        let result = serve(config, Restore::Auto, listener, std::future::pending()).await;
        assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    }
    /// Over gRPC with a write-ahead log, acks come once the log is synced,
    /// in order, for inserts pipelined on one stream.
    #[tokio::test]
    async fn acks_wait_for_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let config = ReplayConfig {
            checkpoint_dir: dir.path().display().to_string(),
            checkpoint_interval_secs: 0.0,
            durability: Durability::Wal,
            ..config_with(100)
        };
        let server = Server::start(config).await;
        let mut client = server.client().await;
        let requests = (1..=20).map(|seed| insert_request(cartpole_sequence(9, seed))).collect();
        let keys = tokio::time::timeout(Duration::from_secs(20), insert_all(&mut client, requests))
            .await
            .expect("acked within 20 s")
            .unwrap();
        assert_eq!(keys.len(), 20);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        server.stop().await.unwrap();
    }

    /// With a write-ahead log, a service that stops without writing a last
    /// checkpoint comes back with every change since its newest one:
    /// inserts into two tables at once, evictions, samples (and the items
    /// they sampled out), priority updates, and the counters; a torn record
    /// at the log's end is cut off, and segments a checkpoint covers are
    /// deleted. A second life continues the same log.
    #[tokio::test]
    async fn the_write_ahead_log_restores_every_change_since_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        let config = ReplayConfig {
            tables: vec![
                TableConfig {
                    name: "queue".into(),
                    max_size: 100,
                    sampler: SamplerKind::Fifo,
                    max_times_sampled: 1,
                    ..TableConfig::default()
                },
                TableConfig {
                    name: "prioritized".into(),
                    max_size: 6,
                    sampler: SamplerKind::Prioritized,
                    remover: SamplerKind::Fifo,
                    max_times_sampled: 0,
                    priority_exponent: 1.0,
                    ..TableConfig::default()
                },
            ],
            checkpoint_dir: root.display().to_string(),
            checkpoint_interval_secs: 0.0,
            durability: Durability::Wal,
            ..ReplayConfig::default()
        };
        let open = || ReplayService::open(&config, CancellationToken::new(), &Restore::Auto).unwrap().0;
        let insert = |service: &ReplayService, seed: u64, priority: f64| {
            let service = service.clone();
            async move {
                let (queue, prioritized) = (service.table("queue").unwrap(), service.table("prioritized").unwrap());
                let steps = service
                    .inner
                    .store
                    .item(cartpole_sequence(9, seed), crate::config::Compression::NONE)
                    .unwrap();
                Table::insert_into_all(&[&queue, &prioritized], steps, priority, None)
                    .await
                    .unwrap()
            }
        };
        let snapshots = |service: &ReplayService| {
            service
                .inner
                .tables
                .iter()
                .map(|t| {
                    let mut snapshot = t.snapshot();
                    // A new start takes keys in a new epoch; nothing else may differ.
                    snapshot.header.next_key = 0;
                    snapshot
                })
                .collect::<Vec<_>>()
        };

        let service = open();
        for seed in 1..=5 {
            insert(&service, seed, seed as f64).await;
        }
        service.write_checkpoint().await.unwrap();
        let mut keys = Vec::new();
        for seed in 6..=10 {
            keys.push(insert(&service, seed, 0.0).await);
        }
        let prioritized = service.table("prioritized").unwrap();
        assert_eq!(prioritized.stats().evictions, 4, "the full table evicted");
        let sampled = service
            .table("queue")
            .unwrap()
            .sample(3, 0.0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(sampled.len(), 3);
        assert_eq!(prioritized.update_priorities(&[(keys[2][1], 7.5), (1, 2.0)]).unwrap(), 1);
        prioritized.sample(4, 0.6, Duration::from_secs(1)).await.unwrap();
        let before = snapshots(&service);
        assert_eq!(before[0].items.len(), 7);
        let wal = service.inner.wal.clone().unwrap();
        wal.synced(wal.appended()).await.unwrap();
        drop(wal);
        // No last checkpoint: the log alone holds what happened since.
        service.close_wal();
        drop(service);
        let wal_dir = root.join(wal::DIR);
        let segment_files = || {
            let mut names: Vec<String> = std::fs::read_dir(&wal_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            segment_files(),
            [format!("{:020}.wal", 1)],
            "the checkpoint made segment 0 unneeded"
        );
        // A crash in the middle of a write leaves a torn frame.
        let newest = wal_dir.join(&segment_files()[0]);
        let length = std::fs::metadata(&newest).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap()
            .write_all(&[200, 0, 0, 0, 1, 2])
            .unwrap();

        let service = open();
        assert_eq!(snapshots(&service), before, "every change came back, in order");
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), length, "the torn frame is cut off");
        let sampled_again = service
            .table("queue")
            .unwrap()
            .sample(1, 0.0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(sampled_again[0].key, before[0].items[0].meta.key, "the queue goes on where it was");
        assert!(
            sampled.iter().all(|item| item.key < sampled_again[0].key),
            "the sampled-out items stay out"
        );
        let last = insert(&service, 11, 3.0).await;
        let before = snapshots(&service);
        service.close_wal();
        drop(service);

        let service = open();
        assert_eq!(snapshots(&service), before, "a second life continues the log");
        assert!(
            service
                .table("queue")
                .unwrap()
                .snapshot()
                .items
                .iter()
                .any(|item| item.meta.key == last[0])
        );
        service.close_wal();
    }

    #[tokio::test]
    async fn a_restarted_service_restores_items_priorities_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        let config = ReplayConfig {
            checkpoint_dir: root.display().to_string(),
            // No timer: the RPC and shutdown write the checkpoints.
            checkpoint_interval_secs: 0.0,
            ..config_with(16)
        };
        let server = Server::start(config.clone()).await;
        let mut client = server.client().await;
        let sent: Vec<pb::Sequence> = (1..=5).map(|seed| cartpole_sequence(9, seed)).collect();
        insert_all(&mut client, sent.iter().cloned().map(insert_request).collect())
            .await
            .unwrap();
        let first = client
            .sample(sample_request(2, 1, 0))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.items.len(), 2);
        let path = client.checkpoint(pb::CheckpointRequest {}).await.unwrap().into_inner().path;
        assert!(path.starts_with(&root.display().to_string()), "{path}");
        // Shutdown writes one more, which the restart takes.
        insert_all(&mut client, vec![insert_request(cartpole_sequence(9, 6))])
            .await
            .unwrap();
        let before = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
        server.stop().await.unwrap();
        assert_eq!(
            checkpoint::newest(&root)
                .unwrap()
                .map(|p| p.as_path() != std::path::Path::new(&path)),
            Some(true)
        );

        let server = Server::start(config.clone()).await;
        let mut client = server.client().await;
        assert_eq!(client.info(pb::InfoRequest {}).await.unwrap().into_inner(), before);
        let mut batches = client.sample(sample_request(4, 1, 0)).await.unwrap().into_inner();
        let batch = batches.message().await.unwrap().unwrap();
        let keys: Vec<u64> = batch.items.iter().map(|i| i.key).collect();
        // The first start with this directory issued keys in epoch 1.
        let first = crate::table::first_key(1);
        assert_eq!(
            keys,
            vec![first + 2, first + 3, first + 4, first + 5],
            "FIFO order and keys survive"
        );
        for (item, expected) in batch.items.iter().zip(sent[2..].iter().chain([&cartpole_sequence(9, 6)])) {
            assert_eq!(item.sequence.as_ref(), Some(expected));
        }
        let keys = insert_all(&mut client, vec![insert_request(cartpole_sequence(9, 7))])
            .await
            .unwrap();
        assert_eq!(
            keys,
            vec![crate::table::first_key(2)],
            "keys go on in the next start's epoch, above the restored ones"
        );
        server.stop().await.unwrap();

        // A checkpoint holding a table the config lost is refused by name.
        let renamed = ReplayConfig {
            tables: vec![TableConfig {
                name: "other".into(),
                ..config.tables[0].clone()
            }],
            ..config.clone()
        };
        let err = ReplayService::open(&renamed, CancellationToken::new(), &Restore::Auto).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"holds table "queue", which replay.tables does not declare"#),
            "{err}"
        );
        // An explicit restore needs a checkpoint to be there.
        let empty = dir.path().join("empty");
        let err = ReplayService::open(&config, CancellationToken::new(), &Restore::From(empty.clone())).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("no complete checkpoint under {}", empty.display())),
            "{err}"
        );
        // A corrupt newest checkpoint stops the start, naming the file.
        let newest = checkpoint::newest(&root).unwrap().unwrap();
        let file = newest.join("table-0.pb");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let err = ReplayService::open(&config, CancellationToken::new(), &Restore::Auto).unwrap_err();
        assert!(err.to_string().contains(&format!("{} is corrupt", file.display())), "{err}");
        assert_eq!(tonic::Status::from(err).code(), Code::Internal);
    }

    /// An item named for several tables is stored in all of them or in
    /// none: not when a later table refuses it as too large, and not when
    /// its client leaves while a later table is full.
    #[tokio::test]
    async fn an_item_lands_in_all_its_tables_or_in_none() {
        let table = |name: &str, max_size, max_bytes| TableConfig {
            name: name.into(),
            max_size,
            max_bytes,
            sampler: SamplerKind::Fifo,
            max_times_sampled: 1,
            ..TableConfig::default()
        };
        let config = ReplayConfig {
            tables: vec![table("queue", 8, 0), table("small", 8, 64), table("full", 1, 0)],
            ..ReplayConfig::default()
        };
        let server = Server::start(config).await;
        let mut client = server.client().await;
        let sizes = |mut client: ReplayClient<Channel>| async move {
            let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
            info.tables.iter().map(|t| (t.size, t.inserts)).collect::<Vec<_>>()
        };
        let request = |seed, also: &[&str]| InsertRequest {
            also_tables: also.iter().map(|&t| t.to_owned()).collect(),
            ..insert_request(cartpole_sequence(21, seed))
        };

        // The second table refuses it: the first one must not keep it.
        let status = insert_all(&mut client, vec![request(1, &["small"])]).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("\"small\""), "{status:?}");
        assert_eq!(sizes(client.clone()).await, vec![(0, 0), (0, 0), (0, 0)]);

        // A full queue holds it back: while it waits, no table has it, and
        // when its client leaves, none ever will.
        let full = InsertRequest {
            table: "full".into(),
            ..request(2, &[])
        };
        insert_all(&mut client, vec![full]).await.unwrap();
        let (requests, rx) = mpsc::channel(1);
        let mut acks = client.insert(ReceiverStream::new(rx)).await.unwrap().into_inner();
        requests.send(request(3, &["full"])).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), acks.message()).await;
        assert!(waiting.is_err(), "the insert must wait for room in \"full\"");
        assert_eq!(sizes(client.clone()).await, vec![(0, 0), (0, 0), (1, 1)]);
        drop((requests, acks));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let freed = pb::SampleRequest {
            table: "full".into(),
            ..sample_request(1, 1, 1000)
        };
        client.sample(freed).await.unwrap().into_inner().message().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            sizes(client.clone()).await,
            vec![(0, 0), (0, 0), (0, 1)],
            "the abandoned item is in no table"
        );

        // With room in both, it lands in both, under a key from each.
        let (requests, rx) = mpsc::channel(1);
        let mut acks = client.insert(ReceiverStream::new(rx)).await.unwrap().into_inner();
        requests.send(request(4, &["full"])).await.unwrap();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!((ack.key, ack.also_keys), (1, vec![2]));
        assert_eq!(sizes(client.clone()).await, vec![(1, 1), (0, 0), (1, 2)]);
        drop(requests);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn checkpoint_without_a_directory_is_a_failed_precondition() {
        let server = Server::start(ReplayConfig::default()).await;
        let mut client = server.client().await;
        let status = client.checkpoint(pb::CheckpointRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("replay.checkpoint_dir"), "{status:?}");
        server.stop().await.unwrap();
    }
}
