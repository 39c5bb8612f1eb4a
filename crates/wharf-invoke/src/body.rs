//! Bodies: streamed by default; a request that may be retried is buffered if it is small
//! (at most [`RETRY_BUFFER_BYTES`]), so that it can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::error::{BoxError, InvokeError};
use crate::transport::full;

/// Request and response bodies through the stack.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Requests with larger bodies are streamed and never retried.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// A request body: whole (can be sent again) or a stream (sent once).
pub enum ReqBody {
    /// The whole body.
    Full(Bytes),
    /// A stream, sent as it arrives.
    Stream(Body),
}

impl ReqBody {
    pub(crate) fn into_body(self) -> Body {
        match self {
            Self::Full(b) => full(b),
            Self::Stream(b) => b,
        }
    }

    /// Reads `body` whole if it ends within [`RETRY_BUFFER_BYTES`] and has no trailers;
    /// otherwise returns a stream of what was read followed by the rest.
    pub(crate) async fn buffer(mut body: Body) -> Result<Self, InvokeError> {
        if body.size_hint().lower() > RETRY_BUFFER_BYTES as u64 {
            return Ok(Self::Stream(body));
        }
        let mut buf = BytesMut::new();
        loop {
            match body.frame().await {
                None => return Ok(Self::Full(buf.freeze())),
                Some(Err(e)) => return Err(InvokeError::Body(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() > RETRY_BUFFER_BYTES {
                            return Ok(Self::Stream(Prefixed::boxed(buf.freeze(), None, body)));
                        }
                    }
                    Err(frame) => {
                        // Trailers: keep them, and stream.
                        return Ok(Self::Stream(Prefixed::boxed(
                            buf.freeze(),
                            Some(frame),
                            body,
                        )));
                    }
                },
            }
        }
    }
}

/// Bytes already read, then (maybe) a non-data frame, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    frame: Option<Frame<Bytes>>,
    rest: Body,
}

impl Prefixed {
    fn boxed(prefix: Bytes, frame: Option<Frame<Bytes>>, rest: Body) -> Body {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            frame,
            rest,
        }
        .boxed_unsync()
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if let Some(f) = self.frame.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.frame.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let h = self.rest.size_hint();
        let mut out = SizeHint::new();
        out.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            out.set_upper(u + extra);
        }
        out
    }
}

/// A response body that holds something (a concurrency permit) until it ends or is dropped.
pub(crate) struct Guarded<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Send + Unpin + 'static> Guarded<G> {
    pub(crate) fn wrap(inner: Body, guard: G) -> Body {
        Self {
            inner,
            guard: Some(guard),
        }
        .boxed_unsync()
    }
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
