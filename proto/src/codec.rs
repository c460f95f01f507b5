//! The gRPC codec of every fleet service: prost's encoding, with each
//! message's buffer grown to its encoded length once before it is written.
//!
//! tonic's prost codec writes a message into a buffer that starts at 8 KiB
//! and at least doubles whenever a field does not fit, copying what is
//! already written each time: a sampled batch of sixteen 100 KiB items was
//! copied about once more as a whole on its way out. Sizing the buffer first
//! leaves the one copy that puts each field in the frame.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Encodes `T` into a buffer sized for it first; decodes `U` as prost does.
#[derive(Debug, Clone)]
pub struct PresizedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PresizedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for PresizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = PresizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        PresizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Reserves a message's encoded length, then encodes it.
#[derive(Debug, Clone)]
pub struct PresizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for PresizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
