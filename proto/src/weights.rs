//! Weight blobs on the wire: one version is cut into [`pb::WeightsChunk`]s of
//! at most [`MAX_CHUNK_BYTES`] payload, so no message comes near the 1 MiB
//! bound whatever the model size, and joined again by [`WeightsAssembler`].
//!
//! The sender states the blob's size in every chunk; the receiver decides
//! how much it is willing to take (an actor: what its own network's
//! parameters need), and a larger claim is refused before anything is
//! allocated for it; so is a first chunk that does not start the blob.

use bytes::Bytes;

use crate::pb::WeightsChunk;

/// Payload bytes per chunk; with the header fields a chunk stays below 1 MiB.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024 - 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightsError {
    #[error("weights chunk for version {version} at offset {offset}, expected offset {expected}")]
    OutOfOrder { version: u64, offset: u64, expected: u64 },
    #[error("weights chunk for version {found} arrived while assembling version {expected}")]
    MixedVersions { expected: u64, found: u64 },
    #[error("weights version {version} promised {total} bytes but chunks carry {got}")]
    Length { version: u64, total: u64, got: u64 },
    #[error(
        "weights version {version} declares {total} bytes, more than the {limit} bytes this receiver takes; refused without allocating"
    )]
    TooLarge { version: u64, total: u64, limit: u64 },
    #[error("weights chunk for version {version} declares {found} bytes in all, an earlier chunk {expected}")]
    ChangedTotal { version: u64, expected: u64, found: u64 },
}

/// Cuts `bytes` (one weights version) into chunks of at most `MAX_CHUNK_BYTES`,
/// each a slice of the same buffer (nothing is copied). An empty blob still
/// yields one (empty, last) chunk.
pub fn chunk_weights(version: u64, bytes: &Bytes) -> Vec<WeightsChunk> {
    let total = bytes.len();
    let count = total.div_ceil(MAX_CHUNK_BYTES).max(1);
    (0..count)
        .map(|i| {
            let offset = i * MAX_CHUNK_BYTES;
            WeightsChunk {
                version,
                total_bytes: total as u64,
                offset: offset as u64,
                data: bytes.slice(offset..total.min(offset + MAX_CHUNK_BYTES)),
                last: i + 1 == count,
            }
        })
        .collect()
}

/// Joins chunks back into one blob, checking order, version and length.
#[derive(Debug)]
pub struct WeightsAssembler {
    /// Refuse blobs larger than this, so that a peer cannot choose how much
    /// we allocate: the receiver's own expectation of the blob's size.
    limit: u64,
    /// The version being assembled, its declared size, and the bytes so far.
    current: Option<(u64, u64, Vec<u8>)>,
}

impl WeightsAssembler {
    /// An assembler that refuses blobs declared larger than `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, current: None }
    }

    /// The largest blob this assembler takes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Feeds one chunk; returns `(version, bytes)` once the last chunk arrives.
    /// A version that came whole in one chunk is that chunk's buffer, not a
    /// copy of it.
    pub fn push(&mut self, chunk: WeightsChunk) -> Result<Option<(u64, Bytes)>, WeightsError> {
        if chunk.total_bytes > self.limit {
            self.current = None;
            return Err(WeightsError::TooLarge {
                version: chunk.version,
                total: chunk.total_bytes,
                limit: self.limit,
            });
        }
        if self.current.is_none() && chunk.offset != 0 {
            // Nothing is reserved for a version that does not start at its
            // first byte.
            return Err(WeightsError::OutOfOrder {
                version: chunk.version,
                offset: chunk.offset,
                expected: 0,
            });
        }
        if self.current.is_none() && chunk.last {
            // The whole version in one chunk (it starts at 0, checked above).
            let got = chunk.data.len() as u64;
            if got != chunk.total_bytes {
                return Err(WeightsError::Length {
                    version: chunk.version,
                    total: chunk.total_bytes,
                    got,
                });
            }
            return Ok(Some((chunk.version, chunk.data)));
        }
        let (version, total, buf) = self
            .current
            .get_or_insert_with(|| (chunk.version, chunk.total_bytes, Vec::with_capacity(chunk.total_bytes as usize)));
        let error = if *version != chunk.version {
            Some(WeightsError::MixedVersions {
                expected: *version,
                found: chunk.version,
            })
        } else if chunk.total_bytes != *total {
            Some(WeightsError::ChangedTotal {
                version: *version,
                expected: *total,
                found: chunk.total_bytes,
            })
        } else if chunk.offset != buf.len() as u64 {
            Some(WeightsError::OutOfOrder {
                version: *version,
                offset: chunk.offset,
                expected: buf.len() as u64,
            })
        } else {
            None
        };
        if let Some(error) = error {
            self.current = None;
            return Err(error);
        }
        let got = (buf.len() + chunk.data.len()) as u64;
        if got > *total || (chunk.last && got != *total) {
            let error = WeightsError::Length {
                version: *version,
                total: *total,
                got,
            };
            self.current = None;
            return Err(error);
        }
        buf.extend_from_slice(&chunk.data);
        if chunk.last {
            let blob = (*version, Bytes::from(std::mem::take(buf)));
            self.current = None;
            return Ok(Some(blob));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn large_blob_round_trips_in_chunks_under_one_mebibyte() {
        let blob: Bytes = (0..5 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let chunks = chunk_weights(7, &blob);
        assert_eq!(chunks.len(), 6);
        // Every chunk is a view of the published blob, not a copy.
        for c in &chunks {
            assert_eq!(c.data.as_ptr(), blob[c.offset as usize..].as_ptr());
        }
        let mut asm = WeightsAssembler::new(u64::MAX);
        let mut out = None;
        for c in chunks {
            assert!(c.encoded_len() < 1024 * 1024, "chunk of {} bytes", c.encoded_len());
            out = asm.push(c).unwrap();
        }
        assert_eq!(out, Some((7, blob)));
    }

    /// A version that fits one chunk reaches the receiver as the chunk's
    /// own buffer.
    #[test]
    fn a_one_chunk_version_is_taken_without_a_copy() {
        let blob = Bytes::from(vec![5u8; 3000]);
        let chunks = chunk_weights(2, &blob);
        assert_eq!(chunks.len(), 1);
        let (version, taken) = WeightsAssembler::new(3000).push(chunks[0].clone()).unwrap().unwrap();
        assert_eq!((version, taken.as_ptr()), (2, blob.as_ptr()));
        let mut short = chunks[0].clone();
        short.data.truncate(2999);
        let error = WeightsAssembler::new(3000).push(short).unwrap_err();
        assert_eq!(
            error,
            WeightsError::Length {
                version: 2,
                total: 3000,
                got: 2999
            }
        );
    }

    #[test]
    fn empty_blob_is_one_last_chunk() {
        let chunks = chunk_weights(1, &Bytes::new());
        assert_eq!(chunks.len(), 1);
        let mut asm = WeightsAssembler::new(10);
        assert_eq!(asm.push(chunks[0].clone()).unwrap(), Some((1, Bytes::new())));
    }

    #[test]
    fn out_of_order_and_short_blobs_are_errors() {
        let blob = Bytes::from(vec![1u8; MAX_CHUNK_BYTES * 2]);
        let chunks = chunk_weights(3, &blob);
        let mut asm = WeightsAssembler::new(u64::MAX);
        assert!(matches!(asm.push(chunks[1].clone()), Err(WeightsError::OutOfOrder { .. })));
        let mut short = chunks[1].clone();
        short.offset = 0;
        short.data.truncate(10);
        assert!(matches!(asm.push(short), Err(WeightsError::Length { .. })));
        let mut big = chunks[0].clone();
        big.total_bytes = 1 << 40;
        let mut small = WeightsAssembler::new(1 << 20);
        assert!(matches!(small.push(big), Err(WeightsError::TooLarge { .. })));
    }

    /// The size a peer declares is checked against the receiver's limit
    /// before anything is reserved for it, in the first chunk and in every
    /// later one.
    #[test]
    fn a_declared_size_above_the_limit_is_refused_before_allocating() {
        let blob = Bytes::from(vec![7u8; MAX_CHUNK_BYTES + 10]);
        let chunks = chunk_weights(4, &blob);
        let mut asm = WeightsAssembler::new(blob.len() as u64);
        let mut huge = chunks[0].clone();
        huge.total_bytes = 3 << 30;
        let error = asm.push(huge).unwrap_err();
        assert_eq!(
            error,
            WeightsError::TooLarge {
                version: 4,
                total: 3 << 30,
                limit: blob.len() as u64
            }
        );
        assert!(error.to_string().contains("refused without allocating"), "{error}");
        assert!(asm.current.is_none(), "nothing is kept, let alone reserved");

        // A later chunk cannot raise the size the first one declared.
        assert_eq!(asm.push(chunks[0].clone()).unwrap(), None);
        assert_eq!(
            asm.current.as_ref().map(|(_, _, buf)| buf.capacity() as u64),
            Some(blob.len() as u64)
        );
        let mut grown = chunks[1].clone();
        grown.total_bytes -= 1;
        assert!(matches!(asm.push(grown), Err(WeightsError::ChangedTotal { .. })));

        // A blob of exactly the limit is taken.
        let mut out = None;
        for chunk in chunks {
            out = asm.push(chunk).unwrap();
        }
        assert_eq!(out, Some((4, blob)));
    }

    /// Chunks with any version, declared size, offset, payload and end
    /// flag, as a broken or hostile learner might send them.
    fn chunk() -> impl proptest::strategy::Strategy<Value = WeightsChunk> {
        use proptest::prelude::*;
        let small_or_any = || prop_oneof![3 => 0u64..200, 1 => any::<u64>()];
        (
            0u64..3,
            small_or_any(),
            small_or_any(),
            proptest::collection::vec(any::<u8>(), 0..80),
            any::<bool>(),
        )
            .prop_map(|(version, total_bytes, offset, data, last)| WeightsChunk {
                version,
                total_bytes,
                offset,
                data: data.into(),
                last,
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Whatever chunks arrive, the assembler never panics, never holds
        /// (or reserves) more than its limit, gives up whatever it held on
        /// an error, and yields only blobs of exactly their declared size.
        #[test]
        fn arbitrary_chunks_never_exceed_the_limit(limit in 0u64..300, chunks in proptest::collection::vec(chunk(), 0..12)) {
            let mut asm = WeightsAssembler::new(limit);
            for chunk in chunks {
                let total = chunk.total_bytes;
                match asm.push(chunk) {
                    Ok(Some((_, blob))) => {
                        proptest::prop_assert_eq!(blob.len() as u64, total);
                        proptest::prop_assert!(total <= limit);
                        proptest::prop_assert!(asm.current.is_none());
                    }
                    Ok(None) => {
                        let (_, declared, buf) = asm.current.as_ref().expect("a version in progress");
                        proptest::prop_assert!(*declared <= limit);
                        proptest::prop_assert!(buf.capacity() as u64 <= limit);
                        proptest::prop_assert!(buf.len() as u64 <= *declared);
                    }
                    Err(error) => {
                        proptest::prop_assert!(asm.current.is_none(), "{}", error);
                        proptest::prop_assert!(!error.to_string().is_empty());
                    }
                }
            }
        }

        /// Any bytes decoded as a chunk and fed in: refused or taken, and
        /// never more than the limit reserved.
        #[test]
        fn arbitrary_bytes_as_chunks(limit in 0u64..4096, messages in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 1..6)) {
            let mut asm = WeightsAssembler::new(limit);
            for bytes in messages {
                if let Ok(chunk) = WeightsChunk::decode(&bytes[..]) {
                    let _ = asm.push(chunk);
                    if let Some((_, _, buf)) = &asm.current {
                        proptest::prop_assert!(buf.capacity() as u64 <= limit);
                    }
                }
            }
        }

        /// A real blob cut into chunks comes back whole, whatever the limit
        /// at or above its size; below it, it is refused at the first chunk.
        #[test]
        fn real_blobs_round_trip_within_the_limit(blob in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), slack in 0u64..10) {
            let blob = Bytes::from(blob);
            let chunks = chunk_weights(9, &blob);
            let mut asm = WeightsAssembler::new(blob.len() as u64 + slack);
            let mut out = None;
            for c in chunks.clone() {
                out = asm.push(c).unwrap();
            }
            proptest::prop_assert_eq!(out, Some((9, blob.clone())));
            if !blob.is_empty() {
                let mut small = WeightsAssembler::new(blob.len() as u64 - 1);
                let refused = matches!(small.push(chunks[0].clone()), Err(WeightsError::TooLarge { .. }));
                proptest::prop_assert!(refused);
            }
        }
    }
}
