//! The codec of every `wharf.v1` method: prost encoding, but a message that does not decode
//! is `INVALID_ARGUMENT` (the client sent bad input), not tonic's default `INTERNAL`.

use std::any::TypeId;
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
        ProstEncoder::new(if is_publish::<T>() {
            publish_buffer()
        } else {
            BufferSettings::default()
        })
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

/// The buffer of a call that carries `PublishRequest`s (encoding them in the client, decoding
/// them in the server): a request of up to 256 KiB (less the 5-byte gRPC prefix) is received
/// (or encoded) into it without a reallocation. A `PublishStream` holds it for its life, on
/// each side: 256 KiB per open publish stream. A buffer grows by `realloc`, which copies all of it: with tonic's 32 KiB, a
/// 100 KiB publish arriving in 64 KiB HTTP/2 frames was copied twice more on its way in (the
/// buffer grows for the first frame, then again when the message's length is read), and a
/// client's 8 KiB encode buffer four times.
fn publish_buffer() -> BufferSettings {
    BufferSettings::new(256 * 1024, 32 * 1024)
}

fn is_publish<M: 'static>() -> bool {
    TypeId::of::<M>() == TypeId::of::<crate::v1::PublishRequest>()
}

impl<U: prost::Message + Default + 'static> Decoder for WharfDecoder<U> {
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
        if is_publish::<U>() {
            return publish_buffer();
        }
        // Every other call's decode buffer (request or stream): tonic's default, 8 KiB, is
        // smaller than many answers (a read, a batch of deliveries); not the publish size,
        // because consuming streams are many and long-lived. (Encoding keeps tonic's default.)
        BufferSettings::new(32 * 1024, 32 * 1024)
    }
}
