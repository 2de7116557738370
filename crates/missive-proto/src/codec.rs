//! The prost codec with small initial buffers.
//!
//! tonic's default codec reserves an 8 KiB encode buffer for every call and
//! keeps it for the life of a streaming response; on a relay holding tens of
//! thousands of idle `Receive` streams that buffer was the largest single
//! cost per device (docs/BENCHMARKS.md, issue 17 item 10). Buffers start at
//! [`INITIAL_BUFFER_BYTES`] and grow as a message needs; the yield threshold
//! (how much a stream batches before handing bytes to HTTP/2) is tonic's.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial capacity of every encode and decode buffer: one queue-empty
/// marker or acknowledgement fits, an envelope grows it once.
pub const INITIAL_BUFFER_BYTES: usize = 256;

/// How many encoded bytes a response stream gathers before yielding them
/// (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// `application/grpc+proto` through prost, with [`INITIAL_BUFFER_BYTES`]
/// buffers. The generated clients and servers use it (see `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
