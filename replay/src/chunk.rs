//! Step data shared between items and tables: reference-counted [`Chunk`]s
//! of consecutive steps, optionally compressed, and [`ItemSteps`], an item's
//! steps as slices of chunks.
//!
//! An insert stores its new steps as one chunk. An item that continues the
//! previous item of its writer (R2D2's overlapping windows) references the
//! tail of that item's chunks instead of storing those steps again, and an
//! item inserted into several tables is one `Arc<ItemSteps>` in each. A
//! chunk lives exactly as long as some item (or a writer's previous item)
//! holds it: `Arc` counts the references, and dropping the last one frees
//! the chunk and takes it out of the service's [`ChunkStore`] totals.
//!
//! A chunk keeps the `run_id` its insert carried (one start of one actor),
//! and an item reads back with its first chunk's. A continued item must
//! come from the same run as its writer's previous one: steps from two
//! lives of an actor are never joined into one item.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_proto::pb;
use metrics::Gauge;
use prost::Message;
use prost::bytes::Bytes;

use crate::config::{Codec, Compression};
use crate::error::Error;
use crate::validate::{Signature, ValidationError, validate_steps};

/// The service's chunk totals and chunk ids. Shared by every table of one
/// service, so that steps shared between tables are counted once.
#[derive(Debug)]
pub struct ChunkStore {
    next_id: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
    chunks_gauge: Gauge,
    bytes_gauge: Gauge,
}

impl ChunkStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            next_id: AtomicU64::new(1),
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            chunks_gauge: metrics::gauge!(crate::metrics::CHUNKS),
            bytes_gauge: metrics::gauge!(crate::metrics::CHUNK_BYTES),
        })
    }

    /// Chunks alive now, and their stored bytes.
    pub fn totals(&self) -> (u64, u64) {
        (self.chunks.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// Validates a whole item (at least 2 steps) and stores it as one chunk.
    /// `priority` and `initial_state` stay with the item, not the chunk.
    pub fn item(self: &Arc<Self>, sequence: pb::Sequence, compression: Compression) -> Result<Arc<ItemSteps>, Error> {
        let signature = validate_steps(&sequence, 2)?;
        self.assemble(None, sequence, signature, compression)
    }

    /// Validates the new steps of an item whose first `overlap` steps are the
    /// last ones of `previous`, and stores only the new steps.
    pub fn continued_item(
        self: &Arc<Self>,
        previous: &ItemSteps,
        overlap: usize,
        sequence: pb::Sequence,
        compression: Compression,
    ) -> Result<Arc<ItemSteps>, Error> {
        let signature = validate_steps(&sequence, 1)?;
        if overlap > previous.len() {
            return Err(ValidationError::Overlap(format!(
                "overlap is {overlap} steps but the writer's previous item has only {}",
                previous.len()
            ))
            .into());
        }
        if signature != previous.signature {
            return Err(ValidationError::Overlap(format!(
                "the new steps hold {signature}, the writer's previous item {}",
                previous.signature
            ))
            .into());
        }
        let previous_run = previous.segments.last().map_or(0, |s| s.chunk.layout.run_id);
        if sequence.run_id != previous_run {
            return Err(ValidationError::Overlap(format!(
                "the new steps come from actor run {}, the writer's previous item from run {previous_run}",
                sequence.run_id
            ))
            .into());
        }
        self.assemble(Some((previous, overlap)), sequence, signature, compression)
    }

    fn assemble(
        self: &Arc<Self>,
        overlap: Option<(&ItemSteps, usize)>,
        mut sequence: pb::Sequence,
        signature: Signature,
        compression: Compression,
    ) -> Result<Arc<ItemSteps>, Error> {
        let initial_state = sequence.initial_state.take();
        let actor_id = sequence.actor_id;
        sequence.priority = 0.0;
        sequence.actor_id = 0;
        compact(&mut sequence);
        let steps = sequence.num_steps();
        let step_signature = Signature { state: None, ..signature };
        let chunk = self.store(sequence, step_signature, compression)?;
        let mut segments = overlap.map(|(previous, n)| previous.tail(n)).unwrap_or_default();
        segments.push(Segment { chunk, range: 0..steps });
        Ok(Arc::new(ItemSteps::new(segments, initial_state, actor_id, signature)))
    }

    /// Stores the steps of `sequence` (per-step fields only) as a new chunk.
    fn store(self: &Arc<Self>, sequence: pb::Sequence, signature: Signature, compression: Compression) -> Result<Arc<Chunk>, Error> {
        let steps = sequence.num_steps();
        let layout = StepLayout::of(&sequence);
        let body = Body::encode(sequence, compression)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(self.adopt(id, steps, body, layout, signature))
    }

    /// A chunk read back from a checkpoint: decoded, decompressed and
    /// validated before it is kept. Later chunks get larger ids.
    pub fn restore(self: &Arc<Self>, record: ChunkRecord) -> Result<Arc<Chunk>, Error> {
        let codec = Codec::from_code(record.codec)
            .ok_or_else(|| Error::Checkpoint(format!("chunk {}: unknown codec {}", record.id, record.codec)))?;
        let body = match codec {
            Codec::None => Body::Plain(Arc::new(
                pb::Sequence::decode(record.data).map_err(|e| Error::Checkpoint(format!("chunk {}: {e}", record.id)))?,
            )),
            codec => Body::Compressed { codec, data: record.data },
        };
        let sequence = body.decode().map_err(|e| Error::Checkpoint(format!("chunk {}: {e}", record.id)))?;
        let signature = validate_steps(&sequence, 1).map_err(|e| Error::Checkpoint(format!("chunk {}: {e}", record.id)))?;
        if sequence.num_steps() as u64 != record.steps || sequence.initial_state.is_some() {
            return Err(Error::Checkpoint(format!(
                "chunk {}: not the {} steps its record says",
                record.id, record.steps
            )));
        }
        self.next_id.fetch_max(record.id + 1, Ordering::Relaxed);
        let layout = StepLayout::of(&sequence);
        Ok(self.adopt(record.id, sequence.num_steps(), body, layout, signature))
    }

    fn adopt(self: &Arc<Self>, id: u64, steps: usize, body: Body, layout: StepLayout, signature: Signature) -> Arc<Chunk> {
        let bytes = body.stored_bytes();
        let chunks = self.chunks.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.chunks_gauge.set(chunks as f64);
        self.bytes_gauge.set(total as f64);
        Arc::new(Chunk {
            id,
            steps,
            bytes,
            signature,
            body,
            layout,
            store: Arc::clone(self),
        })
    }
}

/// Consecutive steps of one writer, stored once.
pub struct Chunk {
    id: u64,
    steps: usize,
    /// What the chunk occupies: its encoded (or compressed) size.
    bytes: u64,
    /// Of the steps alone (no initial state).
    signature: Signature,
    body: Body,
    /// What the encoded size of a run of these steps depends on.
    layout: StepLayout,
    store: Arc<ChunkStore>,
}

impl Chunk {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The chunk as a checkpoint stores it.
    pub fn record(&self) -> ChunkRecord {
        let (codec, data) = match &self.body {
            Body::Plain(sequence) => (Codec::None, Bytes::from(sequence.encode_to_vec())),
            Body::Compressed { codec, data } => (*codec, data.clone()),
        };
        ChunkRecord {
            id: self.id,
            steps: self.steps as u64,
            codec: codec.code(),
            data,
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let chunks = self.store.chunks.fetch_sub(1, Ordering::Relaxed) - 1;
        let total = self.store.bytes.fetch_sub(self.bytes, Ordering::Relaxed) - self.bytes;
        self.store.chunks_gauge.set(chunks as f64);
        self.store.bytes_gauge.set(total as f64);
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("id", &self.id)
            .field("steps", &self.steps)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.steps == other.steps && self.body == other.body
    }
}

/// A chunk's steps, plain (shared with every sample, no copy) or compressed.
#[derive(Debug, PartialEq)]
enum Body {
    Plain(Arc<pb::Sequence>),
    Compressed { codec: Codec, data: Bytes },
}

impl Body {
    fn encode(sequence: pb::Sequence, compression: Compression) -> Result<Self, Error> {
        let encoded = || sequence.encode_to_vec();
        let data = match compression.codec {
            Codec::None => return Ok(Body::Plain(Arc::new(sequence))),
            Codec::Zstd => zstd_compress(&encoded(), compression.level).map_err(|e| Error::Compression(format!("zstd: {e}")))?,
            Codec::Lz4 => lz4_flex::compress_prepend_size(&encoded()),
        };
        Ok(Body::Compressed {
            codec: compression.codec,
            data: data.into(),
        })
    }

    fn stored_bytes(&self) -> u64 {
        match self {
            Body::Plain(sequence) => sequence.encoded_len() as u64,
            Body::Compressed { data, .. } => data.len() as u64,
        }
    }

    /// The steps as a message; a plain chunk's are shared, not copied.
    fn decode(&self) -> Result<Arc<pb::Sequence>, Error> {
        let plain = match self {
            Body::Plain(sequence) => return Ok(Arc::clone(sequence)),
            Body::Compressed { codec: Codec::Zstd, data } => zstd_decompress(data).map_err(|e| Error::Compression(format!("zstd: {e}")))?,
            Body::Compressed { codec: Codec::Lz4, data } => lz4_decompress(data).map_err(|e| Error::Compression(format!("lz4: {e}")))?,
            Body::Compressed { codec: Codec::None, .. } => unreachable!("uncompressed chunks are plain"),
        };
        Ok(Arc::new(
            pb::Sequence::decode(&plain[..]).map_err(|e| Error::Compression(format!("decoding a chunk: {e}")))?,
        ))
    }
}

thread_local! {
    // zstd contexts cost more to make than small chunks cost to compress, so
    // each thread keeps one of each.
    static ZSTD_COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// One zstd frame that records its content size.
fn zstd_compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    ZSTD_COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((l, compressor)) if *l == level => compressor,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(data)
    })
}

/// The most bytes one chunk's steps decode to. A chunk holds the new steps
/// of one insert request, which `replay.max_message_bytes` (at most this)
/// bounded; compressed data (read back from a checkpoint) that claims more
/// is refused before anything is allocated for it.
const MAX_PLAIN_CHUNK_BYTES: u64 = crate::config::MAX_MESSAGE_BYTES_LIMIT as u64;

fn zstd_decompress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let size = zstd::zstd_safe::get_frame_content_size(data)
        .map_err(|_| invalid("not a zstd frame".into()))?
        .ok_or_else(|| invalid("the frame does not record its size".into()))?;
    if size > MAX_PLAIN_CHUNK_BYTES {
        return Err(invalid(format!(
            "the frame claims {size} bytes, more than the {MAX_PLAIN_CHUNK_BYTES} a chunk can hold"
        )));
    }
    let size = usize::try_from(size).map_err(|_| invalid("frame too large".into()))?;
    ZSTD_DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(data, size)
    })
}

/// Lz4 data with its size prepended (as `compress_prepend_size` writes
/// it), the size checked before the output is allocated.
fn lz4_decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    let (size, body) = lz4_flex::block::uncompressed_size(data).map_err(|e| e.to_string())?;
    if size as u64 > MAX_PLAIN_CHUNK_BYTES {
        return Err(format!(
            "the data claims {size} bytes, more than the {MAX_PLAIN_CHUNK_BYTES} a chunk can hold"
        ));
    }
    lz4_flex::decompress(body, size).map_err(|e| e.to_string())
}

/// What the encoded length of any run of a chunk's steps depends on: the
/// layout of each time-major tensor and the varint length of each step's
/// `behaviour_versions` entry (every other per-step field has a fixed size),
/// and the `run_id` the steps came with. With it an item knows the size of
/// its message without assembling it.
#[derive(Debug, PartialEq)]
struct StepLayout {
    /// `observations`, `actions` and `behaviour_logits`, in that order.
    tensors: [Option<TensorLayout>; 3],
    version_lens: Box<[u8]>,
    /// The actor run that wrote these steps (0: not said); an item whose
    /// first steps these are reads back with it.
    run_id: u64,
}

#[derive(Debug, PartialEq)]
struct TensorLayout {
    dtype: i32,
    /// The shape after the time dimension.
    inner_shape: Vec<u64>,
    step_bytes: usize,
}

/// Field tags of `fleet.v1.Sequence` that [`StepLayout`] sizes.
const TENSOR_TAGS: [u32; 3] = [1, 2, 7];
const REWARDS_TAG: u32 = 3;
const FLAG_TAGS: [u32; 3] = [4, 5, 6];
const VERSIONS_TAG: u32 = 8;
const RUN_ID_TAG: u32 = 12;

impl StepLayout {
    fn of(sequence: &pb::Sequence) -> Self {
        let tensor = |t: &Option<pb::Tensor>| {
            t.as_ref().map(|t| {
                let steps = t.shape.first().copied().unwrap_or(0) as usize;
                TensorLayout {
                    dtype: t.dtype,
                    inner_shape: t.shape.iter().skip(1).copied().collect(),
                    step_bytes: t.data.len().checked_div(steps).unwrap_or(0),
                }
            })
        };
        Self {
            tensors: [
                tensor(&sequence.observations),
                tensor(&sequence.actions),
                tensor(&sequence.behaviour_logits),
            ],
            version_lens: sequence
                .behaviour_versions
                .iter()
                .map(|&v| prost::encoding::encoded_len_varint(v) as u8)
                .collect(),
            run_id: sequence.run_id,
        }
    }
}

/// Encoded length of a length-delimited field `tag` whose payload is `len`
/// bytes long (omitted, as prost omits it, when `len` is 0 and `omit_empty`).
fn delimited_len(tag: u32, len: usize, omit_empty: bool) -> usize {
    if len == 0 && omit_empty {
        return 0;
    }
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Encoded length of the per-step fields of `steps` steps laid out as
/// `layout`, whose `behaviour_versions` varints take `version_bytes`, plus
/// the layout's `run_id`.
fn steps_message_len(layout: &StepLayout, steps: usize, version_bytes: usize) -> usize {
    let mut len = 0;
    for (tensor, tag) in layout.tensors.iter().zip(TENSOR_TAGS) {
        let Some(tensor) = tensor else { continue };
        let mut shape = Vec::with_capacity(tensor.inner_shape.len() + 1);
        shape.push(steps as u64);
        shape.extend_from_slice(&tensor.inner_shape);
        let header = pb::Tensor {
            dtype: tensor.dtype,
            shape,
            data: Bytes::new(),
        };
        let body = header.encoded_len() + delimited_len(3, steps * tensor.step_bytes, true);
        len += delimited_len(tag, body, false);
    }
    len += delimited_len(REWARDS_TAG, 4 * steps, true);
    for tag in FLAG_TAGS {
        len += delimited_len(tag, steps, true);
    }
    if layout.run_id != 0 {
        len += prost::encoding::key_len(RUN_ID_TAG) + prost::encoding::encoded_len_varint(layout.run_id);
    }
    len + delimited_len(VERSIONS_TAG, version_bytes, true)
}

/// Steps `range` of one chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub chunk: Arc<Chunk>,
    pub range: Range<usize>,
}

/// One item's data: its steps as chunk slices in order, plus what belongs
/// to the item rather than to its steps.
#[derive(Debug, PartialEq)]
pub struct ItemSteps {
    segments: Vec<Segment>,
    initial_state: Option<pb::Tensor>,
    actor_id: u64,
    /// Of the whole item, initial state included.
    signature: Signature,
    len: usize,
    /// Encoded length of [`ItemSteps::to_sequence`]'s message.
    message_len: usize,
}

impl ItemSteps {
    fn new(segments: Vec<Segment>, initial_state: Option<pb::Tensor>, actor_id: u64, signature: Signature) -> Self {
        let len = segments.iter().map(|s| s.range.len()).sum();
        let version_bytes: usize = segments
            .iter()
            .map(|s| {
                s.chunk
                    .layout
                    .version_lens
                    .get(s.range.clone())
                    .map_or(0, |lens| lens.iter().map(|&l| usize::from(l)).sum())
            })
            .sum();
        let per_item = pb::Sequence {
            initial_state: initial_state.clone(),
            actor_id,
            ..Default::default()
        };
        // Disjoint fields: the encoded lengths add up.
        let message_len = segments
            .first()
            .map_or(0, |first| steps_message_len(&first.chunk.layout, len, version_bytes))
            + per_item.encoded_len();
        Self {
            segments,
            initial_state,
            actor_id,
            signature,
            len,
            message_len,
        }
    }

    /// An item read back from a checkpoint. Every segment must lie within
    /// its chunk, and all chunks must hold the same kind of steps.
    pub fn from_parts(segments: Vec<Segment>, mut initial_state: Option<pb::Tensor>, actor_id: u64) -> Result<Self, ValidationError> {
        let Some(first) = segments.first() else {
            return Err(ValidationError::Overlap("an item without steps".to_owned()));
        };
        let mut signature = first.chunk.signature;
        for segment in &segments {
            if segment.range.is_empty() || segment.range.end > segment.chunk.steps {
                return Err(ValidationError::Overlap(format!(
                    "steps {:?} of chunk {}, which has {}",
                    segment.range, segment.chunk.id, segment.chunk.steps
                )));
            }
            if segment.chunk.signature != signature {
                return Err(ValidationError::Overlap(format!(
                    "chunk {} holds {}, chunk {} {signature}",
                    segment.chunk.id, segment.chunk.signature, first.chunk.id
                )));
            }
        }
        if let Some(state) = &mut initial_state {
            crate::validate::check_initial_state(state)?;
            signature.state =
                Some(
                    fleet_trajectory::StateSpec::from_shape(&state.dims()).ok_or_else(|| fleet_proto::SignatureError::State {
                        dtype: fleet_trajectory::Dtype::F32,
                        shape: state.shape.clone(),
                    })?,
                );
            state.compact();
        }
        let item = Self::new(segments, initial_state, actor_id, signature);
        if item.len < 2 {
            return Err(ValidationError::TooShort(item.len, 2));
        }
        Ok(item)
    }

    /// Steps in the item.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn initial_state(&self) -> Option<&pb::Tensor> {
        self.initial_state.as_ref()
    }

    pub fn actor_id(&self) -> u64 {
        self.actor_id
    }

    /// Encoded length of the item's message ([`ItemSteps::to_sequence`]),
    /// known without assembling it.
    pub fn message_len(&self) -> usize {
        self.message_len
    }

    /// Bytes that belong to this item alone (its initial state); its steps
    /// are counted through their chunks.
    pub fn own_bytes(&self) -> u64 {
        self.initial_state.as_ref().map_or(0, |t| t.encoded_len() as u64)
    }

    /// The last `n` steps as segments (sharing the chunks).
    fn tail(&self, n: usize) -> Vec<Segment> {
        let mut skip = self.len - n;
        let mut tail = Vec::new();
        for segment in &self.segments {
            let len = segment.range.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            tail.push(Segment {
                chunk: Arc::clone(&segment.chunk),
                range: segment.range.start + skip..segment.range.end,
            });
            skip = 0;
        }
        tail
    }

    /// The whole item as one sequence (priority 0: the table keeps that).
    /// Steps within one plain chunk share its bytes; steps from several are
    /// copied into one buffer per field.
    pub fn to_sequence(&self) -> Result<pb::Sequence, Error> {
        let decoded: Vec<Arc<pb::Sequence>> = self.segments.iter().map(|s| s.chunk.body.decode()).collect::<Result<_, _>>()?;
        // Whole chunks are read in place; only partial ones are cut out.
        let mut parts = self.segments.iter().zip(&decoded).map(|(segment, steps)| {
            if segment.range == (0..segment.chunk.steps) {
                Cow::Borrowed(&**steps)
            } else {
                Cow::Owned(steps.slice_steps(segment.range.clone()))
            }
        });
        let Some(first) = parts.next() else {
            unreachable!("an item has at least one segment: assemble adds one, from_parts refuses none")
        };
        let rest: Vec<Cow<'_, pb::Sequence>> = parts.collect();
        let mut sequence = if rest.is_empty() {
            first.into_owned()
        } else {
            pb::Sequence::concat_steps(&first, &rest.iter().map(AsRef::as_ref).collect::<Vec<_>>())
        };
        sequence.initial_state = self.initial_state.clone();
        sequence.actor_id = self.actor_id;
        sequence.priority = 0.0;
        Ok(sequence)
    }
}

/// A chunk as a checkpoint stores it: `data` is the encoded steps
/// (`Sequence`), compressed as `codec` says.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub steps: u64,
    #[prost(uint32, tag = "3")]
    pub codec: u32,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
}

/// Makes every tensor own exactly its bytes (see [`pb::Tensor::compact`]),
/// so a stored chunk holds no receive buffer.
fn compact(sequence: &mut pb::Sequence) {
    let tensors = [
        &mut sequence.observations,
        &mut sequence.actions,
        &mut sequence.behaviour_logits,
        &mut sequence.initial_state,
    ];
    for tensor in tensors.into_iter().flatten() {
        tensor.compact();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::cartpole_sequence;

    /// Steps `range` of one long CartPole stream, as a writer would cut them.
    fn steps(stream: &pb::Sequence, range: Range<usize>) -> pb::Sequence {
        let mut part = stream.slice_steps(range);
        part.actor_id = stream.actor_id;
        part
    }

    #[test]
    fn a_continued_item_shares_the_overlap_and_reads_back_whole() {
        let store = ChunkStore::new();
        let stream = cartpole_sequence(21, 4);
        let first = store.item(steps(&stream, 0..11), Compression::NONE).unwrap();
        let second = store.continued_item(&first, 6, steps(&stream, 11..16), Compression::NONE).unwrap();
        let third = store.continued_item(&second, 6, steps(&stream, 16..21), Compression::NONE).unwrap();
        assert_eq!(store.totals().0, 3, "one chunk per insert");
        assert_eq!(third.segments().len(), 3, "steps 10..21 span all three chunks");
        assert_eq!(second.to_sequence().unwrap(), steps(&stream, 5..16));
        assert_eq!(third.to_sequence().unwrap(), steps(&stream, 10..21));
        drop((first, second));
        assert_eq!(store.totals().0, 3, "the third item still needs every chunk");
        drop(third);
        assert_eq!(store.totals(), (0, 0));
    }

    #[test]
    fn compressed_chunks_read_back_exactly() {
        for codec in [Codec::Zstd, Codec::Lz4] {
            let compression = Compression { codec, level: 3 };
            let store = ChunkStore::new();
            let mut sequence = cartpole_sequence(40, 2);
            sequence.initial_state = Some(pb::Tensor::from_f32(&[2, 3], &[0.5; 6]));
            let item = store.item(sequence.clone(), compression).unwrap();
            assert_eq!(item.to_sequence().unwrap(), sequence);
            let restored = ChunkStore::new().restore(item.segments()[0].chunk.record()).unwrap();
            assert_eq!(*restored, *item.segments()[0].chunk);
        }
    }

    /// An item knows its message's size without assembling it: plain or
    /// compressed, whole or continued across chunks, with or without a
    /// stored state, with small and large version numbers.
    #[test]
    fn message_len_is_the_encoded_length_of_the_assembled_item() {
        let mut stream = cartpole_sequence(60, 3);
        for (t, version) in stream.behaviour_versions.iter_mut().enumerate() {
            *version = [0, 1, 127, 128, 300, 1 << 20, u64::MAX][t % 7];
        }
        for codec in [Codec::None, Codec::Zstd, Codec::Lz4] {
            let compression = Compression { codec, level: 1 };
            let store = ChunkStore::new();
            let first = store.item(steps(&stream, 0..20), compression).unwrap();
            let second = store.continued_item(&first, 15, steps(&stream, 20..30), compression).unwrap();
            let third = store.continued_item(&second, 24, steps(&stream, 30..60), compression).unwrap();
            let mut run = steps(&stream, 0..20);
            run.run_id = u64::MAX;
            let run_first = store.item(run, compression).unwrap();
            let mut rest = steps(&stream, 20..30);
            rest.run_id = u64::MAX;
            let run_second = store.continued_item(&run_first, 15, rest, compression).unwrap();
            assert_eq!(run_second.to_sequence().unwrap().run_id, u64::MAX);
            let mut tiny = steps(&stream, 0..2);
            tiny.actor_id = 0;
            tiny.initial_state = Some(pb::Tensor::from_f32(&[2, 3], &[0.25; 6]));
            let tiny = store.item(tiny, compression).unwrap();
            for item in [&first, &second, &third, &tiny, &run_first, &run_second] {
                assert_eq!(item.message_len(), item.to_sequence().unwrap().encoded_len(), "{codec:?}");
            }
            let restored = ChunkStore::new().restore(third.segments()[0].chunk.record()).unwrap();
            assert_eq!(restored.layout, third.segments()[0].chunk.layout);
        }
    }

    #[test]
    fn overlap_must_fit_and_match_the_previous_item() {
        let store = ChunkStore::new();
        let first = store.item(cartpole_sequence(5, 1), Compression::NONE).unwrap();
        let err = store
            .continued_item(&first, 6, cartpole_sequence(2, 1), Compression::NONE)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("overlap is 6 steps but the writer's previous item has only 5"),
            "{err}"
        );
        let mut other = cartpole_sequence(2, 1);
        other.initial_state = Some(pb::Tensor::from_f32(&[2, 1], &[0.0; 2]));
        let err = store.continued_item(&first, 1, other, Compression::NONE).unwrap_err();
        assert!(err.to_string().contains("the writer's previous item"), "{err}");
        assert_eq!(store.totals().0, 1, "refused steps are not stored");
    }

    /// Steps of a restarted actor (another run id) never continue an item
    /// of its earlier life, even on the same writer.
    #[test]
    fn a_continued_item_must_come_from_the_previous_items_run() {
        let store = ChunkStore::new();
        let mut first = cartpole_sequence(5, 1);
        first.run_id = 11;
        let first = store.item(first, Compression::NONE).unwrap();
        let mut later = cartpole_sequence(2, 1);
        later.run_id = 12;
        let err = store.continued_item(&first, 1, later.clone(), Compression::NONE).unwrap_err();
        assert!(
            err.to_string().contains("actor run 12, the writer's previous item from run 11"),
            "{err}"
        );
        assert_eq!(store.totals().0, 1, "refused steps are not stored");
        later.run_id = 11;
        let item = store.continued_item(&first, 1, later, Compression::NONE).unwrap();
        assert_eq!(item.to_sequence().unwrap().run_id, 11);
    }

    mod reference_counts {
        use std::collections::{HashMap, HashSet};
        use std::sync::Weak;
        use std::time::Duration;

        use proptest::prelude::*;
        use tokio_util::sync::CancellationToken;

        use super::*;
        use crate::config::{SamplerKind, TableConfig};
        use crate::table::Table;

        const STREAM: usize = 400;

        #[derive(Debug, Clone)]
        enum Op {
            /// An item of `new` new steps for `writer`, continuing its previous
            /// item by `overlap` steps (capped at that item's length).
            Insert {
                writer: u64,
                new: usize,
                overlap: usize,
            },
            Sample(usize),
            /// The writer's stream closes: its previous item is let go.
            Forget(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..3u64, 1..5usize, 0..6usize).prop_map(|(writer, new, overlap)| Op::Insert { writer, new, overlap }),
                2 => (1..4usize).prop_map(Op::Sample),
                1 => (0..3u64).prop_map(Op::Forget),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Under random inserts (with and without overlap), evictions,
            /// samples that remove items and writers letting go, a chunk is
            /// alive exactly while an item or a writer references it, the
            /// totals and the table's bytes agree with what is referenced, and
            /// every item reads back as the steps it was given.
            #[test]
            fn chunks_live_exactly_while_referenced(ops in proptest::collection::vec(op(), 1..60)) {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let config = TableConfig {
                    name: "t".into(),
                    sampler: SamplerKind::Uniform,
                    max_size: 5,
                    max_times_sampled: 2,
                    ..TableConfig::default()
                };
                let table = Table::with_seed(config, CancellationToken::new(), 7);
                let store = Arc::clone(table.store());
                let streams: Vec<pb::Sequence> = (0..3).map(|w| cartpole_sequence(STREAM, w)).collect();
                // Per writer: its previous item and where its stream has got to.
                let mut previous: HashMap<u64, Arc<ItemSteps>> = HashMap::new();
                let mut position: HashMap<u64, usize> = HashMap::new();
                let mut expected: HashMap<u64, pb::Sequence> = HashMap::new();
                let mut chunks: Vec<(u64, Weak<Chunk>)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Insert { writer, new, overlap } => {
                            let at = position.entry(writer).or_insert(0);
                            let overlap = previous.get(&writer).map_or(0, |p| overlap.min(p.len()));
                            let new = if overlap == 0 { new.max(2) } else { new };
                            if *at + new > STREAM {
                                continue;
                            }
                            let stream = &streams[writer as usize];
                            let fresh = steps(stream, *at..*at + new);
                            let item = match previous.get(&writer) {
                                Some(before) if overlap > 0 => store.continued_item(before, overlap, fresh, Compression::NONE).unwrap(),
                                _ => store.item(fresh, Compression::NONE).unwrap(),
                            };
                            let chunk = &item.segments().last().unwrap().chunk;
                            chunks.push((chunk.id(), Arc::downgrade(chunk)));
                            let key = runtime.block_on(table.insert_item(Arc::clone(&item), 1.0, None)).unwrap();
                            expected.insert(key, steps(stream, *at - overlap..*at + new));
                            *at += new;
                            previous.insert(writer, item);
                        }
                        Op::Sample(n) => {
                            // Every item has a draw left, so this many can be served.
                            let n = n.min(table.len());
                            if n > 0 {
                                runtime.block_on(table.sample(n, 0.0, Duration::from_secs(1))).unwrap();
                            }
                        }
                        Op::Forget(writer) => {
                            previous.remove(&writer);
                        }
                    }

                    let snapshot = table.snapshot();
                    let mut referenced: HashSet<u64> = HashSet::new();
                    let mut table_bytes: HashMap<u64, u64> = HashMap::new();
                    for item in &snapshot.items {
                        prop_assert_eq!(&item.steps.to_sequence().unwrap(), &expected[&item.meta.key]);
                        prop_assert_eq!(item.steps.message_len(), expected[&item.meta.key].encoded_len());
                        for segment in item.steps.segments() {
                            referenced.insert(segment.chunk.id());
                            table_bytes.insert(segment.chunk.id(), segment.chunk.bytes());
                        }
                    }
                    drop(snapshot);
                    for item in previous.values() {
                        referenced.extend(item.segments().iter().map(|s| s.chunk.id()));
                    }
                    let mut alive = 0;
                    for (id, weak) in &chunks {
                        let is_alive = weak.strong_count() > 0;
                        prop_assert_eq!(is_alive, referenced.contains(id), "chunk {} alive: {}", id, is_alive);
                        alive += u64::from(is_alive);
                    }
                    prop_assert_eq!(store.totals().0, alive);
                    prop_assert_eq!(table.stats().bytes, table_bytes.values().sum::<u64>());
                }
                drop((table, previous));
                prop_assert_eq!(store.totals(), (0, 0), "nothing leaks once everything is gone");
            }
        }
    }
}

/// Fuzzing of what replay decodes from outside: insert requests (decoded,
/// validated and stored as chunks) and checkpoint chunk records (decoded,
/// decompressed and validated). Whatever arrives, these return an item or
/// an error that says what is wrong; they never panic, and a length the
/// input claims is checked against what it carries (or a fixed bound)
/// before anything is allocated for it.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::validate::testing::cartpole_sequence;

    /// An item was stored whole and reads back as it came; or it was
    /// refused with a message.
    fn stored_intact_or_refused(sequence: pb::Sequence, min_steps: usize) -> Result<(), TestCaseError> {
        let store = ChunkStore::new();
        let expected = {
            let mut s = sequence.clone();
            s.priority = 0.0;
            s
        };
        let result = match min_steps {
            2 => store.item(sequence, Compression::NONE),
            _ => {
                let first = store
                    .item(cartpole_sequence(3, 0), Compression::NONE)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                store.continued_item(&first, 1, sequence, Compression::NONE)
            }
        };
        match result {
            Ok(item) if min_steps == 2 => {
                let back = item.to_sequence().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(item.message_len(), back.encoded_len());
                prop_assert_eq!(back, expected);
            }
            Ok(item) => {
                let back = item.to_sequence().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(item.message_len(), back.encoded_len());
            }
            Err(error) => {
                prop_assert!(!error.to_string().is_empty());
                prop_assert!(
                    matches!(error, Error::InvalidSequence(_)),
                    "an insert is refused as an invalid sequence, not {error:?}"
                );
            }
        }
        Ok(())
    }

    /// Dimensions that are small, zero, or absurd.
    fn dim() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => 0u64..6,
            1 => Just(1u64 << 32),
            1 => Just(1u64 << 62),
            1 => Just(u64::MAX),
            1 => any::<u64>(),
        ]
    }

    /// A tensor whose dtype, shape and bytes may or may not agree.
    fn tensor() -> impl Strategy<Value = pb::Tensor> {
        let dtype = prop_oneof![Just(0), Just(1), Just(2), Just(3), any::<i32>()];
        let shape = proptest::collection::vec(dim(), 0..5);
        (dtype, shape, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..96)).prop_map(|(dtype, shape, consistent, mut data)| {
            // Half the time the bytes match the shape where it is small
            // enough, so that later checks are reached too.
            let size = fleet_proto::tensor::dtype_size(pb::Dtype::try_from(dtype).unwrap_or(pb::Dtype::Unspecified)).unwrap_or(1);
            let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            if consistent && let Some(n) = elements.and_then(|n| n.checked_mul(size as u64)).filter(|&n| n <= 4096) {
                data.resize(n as usize, 0x3f);
            }
            pb::Tensor {
                dtype,
                shape,
                data: data.into(),
            }
        })
    }

    fn floats() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -10.0f32..10.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => any::<f32>(),
        ]
    }

    /// Sequences built field by field, each field free of the others.
    fn inconsistent_sequence() -> impl Strategy<Value = pb::Sequence> {
        let len = || 0usize..6;
        (
            (
                proptest::option::weighted(0.9, tensor()),
                proptest::option::weighted(0.9, tensor()),
                proptest::option::weighted(0.9, tensor()),
                proptest::option::of(tensor()),
            ),
            proptest::collection::vec(floats(), len()),
            (
                proptest::collection::vec(any::<bool>(), len()),
                proptest::collection::vec(any::<bool>(), len()),
                proptest::collection::vec(any::<bool>(), len()),
            ),
            proptest::collection::vec(any::<u64>(), len()),
            prop_oneof![Just(0.0), Just(f64::NAN), Just(-1.0), any::<f64>()],
        )
            .prop_map(
                |(
                    (observations, actions, behaviour_logits, initial_state),
                    rewards,
                    (is_first, terminated, truncated),
                    versions,
                    priority,
                )| {
                    pb::Sequence {
                        observations,
                        actions,
                        rewards,
                        is_first,
                        terminated,
                        truncated,
                        behaviour_logits,
                        behaviour_versions: versions,
                        initial_state,
                        actor_id: 1,
                        priority,
                        run_id: 0,
                    }
                },
            )
    }

    /// One change to a valid sequence: the kind of mistake a buggy writer makes.
    #[derive(Debug, Clone)]
    enum Mutation {
        Dim { tensor: usize, axis: usize, value: u64 },
        Bytes { tensor: usize, keep: usize, extra: usize },
        Dtype { tensor: usize, dtype: i32 },
        Length { field: usize, len: usize },
        Value { field: usize, index: usize, value: f32 },
        Action { index: usize, value: i64 },
        State(pb::Tensor),
        Priority(f64),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (0..3usize, 0..3usize, dim()).prop_map(|(tensor, axis, value)| Mutation::Dim { tensor, axis, value }),
            (0..3usize, 0..200usize, 0..16usize).prop_map(|(tensor, keep, extra)| Mutation::Bytes { tensor, keep, extra }),
            (0..3usize, prop_oneof![0..4i32, any::<i32>()]).prop_map(|(tensor, dtype)| Mutation::Dtype { tensor, dtype }),
            (0..5usize, 0..12usize).prop_map(|(field, len)| Mutation::Length { field, len }),
            (0..3usize, 0..40usize, floats()).prop_map(|(field, index, value)| Mutation::Value { field, index, value }),
            (0..6usize, prop_oneof![-2i64..4, any::<i64>()]).prop_map(|(index, value)| Mutation::Action { index, value }),
            tensor().prop_map(Mutation::State),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.5), 0.0f64..10.0].prop_map(Mutation::Priority),
        ]
    }

    /// Observations, actions or logits, by number.
    fn tensor_mut(s: &mut pb::Sequence, i: usize) -> Option<&mut pb::Tensor> {
        match i {
            0 => s.observations.as_mut(),
            1 => s.actions.as_mut(),
            _ => s.behaviour_logits.as_mut(),
        }
    }

    fn apply(sequence: &mut pb::Sequence, mutation: Mutation) {
        match mutation {
            Mutation::Dim { tensor: i, axis, value } => {
                if let Some(t) = tensor_mut(sequence, i)
                    && let Some(d) = t.shape.get_mut(axis)
                {
                    *d = value;
                }
            }
            Mutation::Bytes { tensor: i, keep, extra } => {
                if let Some(t) = tensor_mut(sequence, i) {
                    let mut data = t.data.to_vec();
                    data.truncate(keep);
                    data.extend(std::iter::repeat_n(0x7f, extra));
                    t.data = data.into();
                }
            }
            Mutation::Dtype { tensor: i, dtype } => {
                if let Some(t) = tensor_mut(sequence, i) {
                    t.dtype = dtype;
                }
            }
            Mutation::Length { field, len } => match field {
                0 => sequence.rewards.resize(len, 0.0),
                1 => sequence.is_first.resize(len, false),
                2 => sequence.terminated.resize(len, false),
                3 => sequence.truncated.resize(len, false),
                _ => sequence.behaviour_versions.resize(len, 0),
            },
            Mutation::Value { field, index, value } => match field {
                0 => {
                    if let Some(r) = sequence.rewards.get_mut(index) {
                        *r = value;
                    }
                }
                i => {
                    if let Some(t) = tensor_mut(sequence, if i == 1 { 0 } else { 2 }) {
                        let mut data = t.data.to_vec();
                        if let Some(bytes) = data.get_mut(index * 4..index * 4 + 4) {
                            bytes.copy_from_slice(&value.to_le_bytes());
                        }
                        t.data = data.into();
                    }
                }
            },
            Mutation::Action { index, value } => {
                if let Some(t) = sequence.actions.as_mut() {
                    let mut data = t.data.to_vec();
                    if let Some(bytes) = data.get_mut(index * 8..index * 8 + 8) {
                        bytes.copy_from_slice(&value.to_le_bytes());
                    }
                    t.data = data.into();
                }
            }
            Mutation::State(state) => sequence.initial_state = Some(state),
            Mutation::Priority(priority) => sequence.priority = priority,
        }
    }

    /// A zstd frame header that records `size` bytes of content (and no content).
    fn zstd_header(size: u64) -> Vec<u8> {
        // Magic number; descriptor: 8-byte content size, single segment.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        frame.extend_from_slice(&size.to_le_bytes());
        frame
    }

    #[test]
    fn compressed_chunks_that_claim_too_much_are_refused_before_allocating() {
        let store = ChunkStore::new();
        let record = |codec: Codec, data: Vec<u8>| ChunkRecord {
            id: 1,
            steps: 2,
            codec: codec.code(),
            data: data.into(),
        };
        for size in [1u64 << 40, u64::MAX - 2] {
            let error = store.restore(record(Codec::Zstd, zstd_header(size))).unwrap_err().to_string();
            assert!(error.contains(&format!("claims {size} bytes")), "{error}");
        }
        let mut lz4 = u32::MAX.to_le_bytes().to_vec();
        lz4.extend_from_slice(&[0x10, 0x41]);
        let error = store.restore(record(Codec::Lz4, lz4)).unwrap_err().to_string();
        assert!(error.contains(&format!("claims {} bytes", u32::MAX)), "{error}");
        assert_eq!(store.totals(), (0, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes as an insert request: not a message, or a message
        /// whose sequence is stored intact or refused.
        #[test]
        fn arbitrary_insert_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(request) = pb::InsertRequest::decode(&bytes[..])
                && let Some(sequence) = request.sequence
            {
                stored_intact_or_refused(sequence.clone(), 2)?;
                stored_intact_or_refused(sequence, 1)?;
            }
        }

        /// Sequences whose fields disagree with each other in any way.
        #[test]
        fn inconsistent_sequences(sequence in inconsistent_sequence()) {
            stored_intact_or_refused(sequence.clone(), 2)?;
            stored_intact_or_refused(sequence, 1)?;
        }

        /// A valid sequence with one or two mistakes: refused, unless the
        /// change kept it valid; a tensor that claims more elements than
        /// its bytes hold is always refused.
        #[test]
        fn mutated_sequences(steps in 2usize..6, mutations in proptest::collection::vec(mutation(), 1..3)) {
            let mut sequence = cartpole_sequence(steps, 3);
            for m in mutations {
                apply(&mut sequence, m);
            }
            let claims_more_than_it_carries = [&sequence.observations, &sequence.actions, &sequence.behaviour_logits]
                .into_iter()
                .flatten()
                .any(|t| {
                    let size = t.checked_dtype().ok().and_then(fleet_proto::tensor::dtype_size).unwrap_or(1);
                    t.num_elements().ok().and_then(|n| n.checked_mul(size)).is_none_or(|bytes| bytes > t.data.len())
                });
            if claims_more_than_it_carries {
                prop_assert!(validate_steps(&sequence, 1).is_err());
            }
            stored_intact_or_refused(sequence.clone(), 2)?;
            stored_intact_or_refused(sequence, 1)?;
        }

        /// Checkpoint chunk records of any bytes, in every codec: restored
        /// only when they hold valid steps of the count they claim.
        #[test]
        fn arbitrary_chunk_records(
            codec in 0u32..4,
            steps in 0u64..8,
            data in proptest::collection::vec(any::<u8>(), 0..256),
            claimed in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        ) {
            // Sometimes a zstd header claiming any size in front of the bytes.
            let data = match claimed {
                Some(size) if codec == Codec::Zstd.code() => [zstd_header(size), data].concat(),
                _ => data,
            };
            let store = ChunkStore::new();
            let record = ChunkRecord { id: 1, steps, codec, data: data.into() };
            match store.restore(record) {
                Ok(chunk) => prop_assert_eq!(chunk.steps() as u64, steps),
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
        }

        /// A whole valid item compressed, then damaged: read back exactly
        /// or refused.
        #[test]
        fn damaged_compressed_chunks(codec in prop_oneof![Just(Codec::Zstd), Just(Codec::Lz4)], at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let store = ChunkStore::new();
            let item = store.item(cartpole_sequence(6, 1), Compression { codec, level: 1 }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut record = item.segments()[0].chunk.record();
            let mut data = record.data.to_vec();
            let i = at.index(data.len());
            data[i] = byte;
            record.data = data.into();
            if let Ok(chunk) = ChunkStore::new().restore(record) {
                prop_assert_eq!(chunk.steps(), 6);
            }
        }
    }
}
