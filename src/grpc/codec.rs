//! The prost codec of every metasrv service, with small starting buffers.
//!
//! tonic's default codec starts each stream's encode and decode buffers at 8 KiB and keeps them
//! for the stream's life. A heartbeat stream lives as long as its datanode and carries messages
//! of a few hundred bytes to a few KiB, so at 10,000 datanodes the defaults held about 160 MB of
//! mostly empty buffer. Buffers still grow to the largest message a stream carries.
//!
//! Messages are decoded from one contiguous slice ([`SliceDecoder`]) rather than through
//! tonic's `DecodeBuf`: prost advances its buffer once per field, and each advance of a
//! `DecodeBuf` is an advance of the stream's `BytesMut` (its bookkeeping, not a pointer bump).
//! A 100-region heartbeat is a thousand fields: decoding it was a fifth of a leader's CPU at
//! 10,000 datanodes.

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Where a stream's buffers start (and the least they grow by).
const BUFFER_SIZE: usize = 1024;
/// tonic's default: how much a streaming encoder buffers before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers (named by `codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct CompactCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder { _type: PhantomData }
    }
}

/// Decodes each message from the contiguous bytes it arrived in (see the module's note).
#[derive(Debug)]
pub struct SliceDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        // A DecodeBuf is a view of one BytesMut, so the whole message is its first chunk; the
        // general path stays for any other layout.
        let decoded = if buf.chunk().len() >= len {
            let message = U::decode(&buf.chunk()[..len]);
            buf.advance(len);
            message
        } else {
            U::decode(buf)
        };
        // As tonic's prost codec: an undecodable message is INTERNAL, with prost's reason.
        decoded
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
