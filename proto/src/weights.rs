//! Weight blobs on the wire: one version is cut into [`pb::WeightsChunk`]s of
//! at most [`MAX_CHUNK_BYTES`] payload, so no message comes near the 1 MiB
//! bound whatever the model size, and joined again by [`WeightsAssembler`].

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
    #[error("weights version {version} declares {total} bytes, above the limit of {limit}")]
    TooLarge { version: u64, total: u64, limit: u64 },
}

/// Cuts `bytes` (one weights version) into chunks of at most `MAX_CHUNK_BYTES`.
/// An empty blob still yields one (empty, last) chunk.
pub fn chunk_weights(version: u64, bytes: &[u8]) -> Vec<WeightsChunk> {
    let total_bytes = bytes.len() as u64;
    if bytes.is_empty() {
        return vec![WeightsChunk {
            version,
            total_bytes,
            offset: 0,
            data: vec![],
            last: true,
        }];
    }
    let count = bytes.len().div_ceil(MAX_CHUNK_BYTES);
    bytes
        .chunks(MAX_CHUNK_BYTES)
        .enumerate()
        .map(|(i, piece)| WeightsChunk {
            version,
            total_bytes,
            offset: (i * MAX_CHUNK_BYTES) as u64,
            data: piece.to_vec(),
            last: i + 1 == count,
        })
        .collect()
}

/// Joins chunks back into one blob, checking order, version and length.
#[derive(Debug)]
pub struct WeightsAssembler {
    /// Refuse blobs larger than this (a peer cannot make us allocate without bound).
    limit: u64,
    current: Option<(u64, u64, Vec<u8>)>,
}

impl WeightsAssembler {
    pub fn new(limit: u64) -> Self {
        Self { limit, current: None }
    }

    /// Feeds one chunk; returns `(version, bytes)` once the last chunk arrives.
    pub fn push(&mut self, chunk: WeightsChunk) -> Result<Option<(u64, Vec<u8>)>, WeightsError> {
        if chunk.total_bytes > self.limit {
            self.current = None;
            return Err(WeightsError::TooLarge {
                version: chunk.version,
                total: chunk.total_bytes,
                limit: self.limit,
            });
        }
        let (version, total, buf) = self
            .current
            .get_or_insert_with(|| (chunk.version, chunk.total_bytes, Vec::with_capacity(chunk.total_bytes as usize)));
        let error = if *version != chunk.version {
            Some(WeightsError::MixedVersions {
                expected: *version,
                found: chunk.version,
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
        buf.extend_from_slice(&chunk.data);
        if buf.len() as u64 > *total || (chunk.last && buf.len() as u64 != *total) {
            let error = WeightsError::Length {
                version: *version,
                total: *total,
                got: buf.len() as u64,
            };
            self.current = None;
            return Err(error);
        }
        if chunk.last {
            let blob = (*version, std::mem::take(buf));
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
        let blob: Vec<u8> = (0..5 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let chunks = chunk_weights(7, &blob);
        assert_eq!(chunks.len(), 6);
        let mut asm = WeightsAssembler::new(u64::MAX);
        let mut out = None;
        for c in chunks {
            assert!(c.encoded_len() < 1024 * 1024, "chunk of {} bytes", c.encoded_len());
            out = asm.push(c).unwrap();
        }
        assert_eq!(out, Some((7, blob)));
    }

    #[test]
    fn empty_blob_is_one_last_chunk() {
        let chunks = chunk_weights(1, &[]);
        assert_eq!(chunks.len(), 1);
        let mut asm = WeightsAssembler::new(10);
        assert_eq!(asm.push(chunks[0].clone()).unwrap(), Some((1, vec![])));
    }

    #[test]
    fn out_of_order_and_short_blobs_are_errors() {
        let blob = vec![1u8; MAX_CHUNK_BYTES * 2];
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
}
