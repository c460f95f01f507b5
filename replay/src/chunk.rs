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
            Body::Compressed { codec: Codec::Lz4, data } => {
                lz4_flex::decompress_size_prepended(data).map_err(|e| Error::Compression(format!("lz4: {e}")))?
            }
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

fn zstd_decompress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let size = zstd::zstd_safe::get_frame_content_size(data)
        .map_err(|_| invalid("not a zstd frame"))?
        .ok_or_else(|| invalid("the frame does not record its size"))?;
    let size = usize::try_from(size).map_err(|_| invalid("frame too large"))?;
    ZSTD_DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(data, size)
    })
}

/// What the encoded length of any run of a chunk's steps depends on: the
/// layout of each time-major tensor and the varint length of each step's
/// `behaviour_versions` entry (every other per-step field has a fixed size).
/// With it an item knows the size of its message without assembling it.
#[derive(Debug, PartialEq)]
struct StepLayout {
    /// `observations`, `actions` and `behaviour_logits`, in that order.
    tensors: [Option<TensorLayout>; 3],
    version_lens: Box<[u8]>,
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
/// `layout`, whose `behaviour_versions` varints take `version_bytes`.
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
            let mut tiny = steps(&stream, 0..2);
            tiny.actor_id = 0;
            tiny.initial_state = Some(pb::Tensor::from_f32(&[2, 3], &[0.25; 6]));
            let tiny = store.item(tiny, compression).unwrap();
            for item in [&first, &second, &third, &tiny] {
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
