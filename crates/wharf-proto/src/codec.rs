//! The codec of every `wharf.v1` method: prost encoding, but a message that does not decode
//! is `INVALID_ARGUMENT` (the client sent bad input), not tonic's default `INTERNAL`.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

/// Prost encoding; decode failures are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct WharfCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for WharfCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for WharfCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WharfDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        WharfDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a malformed message is `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct WharfDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for WharfDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            // The same shape as every other Wharf error: the stable code in the metadata and
            // as a google.rpc.ErrorInfo detail.
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(
                crate::ERROR_CODE_KEY,
                tonic::metadata::MetadataValue::from_static("invalid_argument"),
            );
            Status::with_error_details_and_metadata(
                tonic::Code::InvalidArgument,
                format!("malformed protobuf message: {e}"),
                ErrorDetails::with_error_info(
                    "invalid_argument",
                    crate::ERROR_DOMAIN,
                    std::collections::HashMap::new(),
                ),
                metadata,
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        // tonic's decode buffer per call (request or stream). Its default, 8 KiB, is smaller
        // than a publish of 100 small messages, and a message larger than the buffer costs
        // two copies of what was received so far (the buffer grows as frames arrive, then
        // again when the message's length is read). 32 KiB holds those whole. (Encoding
        // keeps tonic's default: a long-lived stream holds both buffers.)
        BufferSettings::new(32 * 1024, 32 * 1024)
    }
}
