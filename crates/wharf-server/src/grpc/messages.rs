//! `Messages`: publish (unary and client-streaming) and read.

use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};
use wharf_broker::{Position, ReadRequest};
use wharf_proto::v1;

use super::convert;
use super::{Ctx, Grpc};
use crate::auth::Scope;
use crate::error::{ApiError, ApiResult};
use crate::routes::topics::publish_messages;

/// Most messages one `PublishStream` call may carry: its one answer holds a result per message
/// and must stay within what gRPC clients accept by default (4 MiB).
const MAX_STREAM_MESSAGES: usize = 100_000;

async fn publish(c: &Ctx, r: v1::PublishRequest) -> ApiResult<v1::PublishResponse> {
    c.caller.require(Scope::Publish, &r.topic)?;
    // A new vector (not one collected in place, which shrinks the old allocation by copying).
    let mut messages = Vec::with_capacity(r.messages.len());
    messages.extend(r.messages.into_iter().map(convert::message_in));
    let results = publish_messages(&c.s, &c.trace, &r.topic, messages, r.create_queue).await?;
    Ok(v1::PublishResponse {
        results: results.into_iter().map(convert::published_out).collect(),
    })
}

#[tonic::async_trait]
impl v1::messages_server::Messages for Grpc {
    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        self.call(
            "/wharf.v1.Messages/Publish",
            request,
            |c: Ctx, r| async move { publish(&c, r).await },
        )
        .await
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<v1::PublishStreamResponse>, Status> {
        let route = "/wharf.v1.Messages/PublishStream";
        self.call(route, request, |c: Ctx, mut stream| async move {
            let mut responses = Vec::new();
            let mut messages = 0usize;
            let idle = Duration::from_millis(c.s.config.limits.body_read_timeout_ms);
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    () = tokio::time::sleep(idle) => return Err(ApiError::new(
                        "request_timeout",
                        "no batch arrived within limits.body_read_timeout_ms; the batches \
                         answered before were stored",
                    )),
                    () = c.s.shutdown.cancelled() => return Err(ApiError::new(
                        "shutting_down",
                        "the server is shutting down; the batches answered before were stored",
                    ).retry_after(1)),
                };
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => return Err(status_to_api(&status)),
                };
                messages += batch.messages.len();
                if messages > MAX_STREAM_MESSAGES {
                    return Err(ApiError::invalid(
                        "messages",
                        format!(
                            "a PublishStream carries at most {MAX_STREAM_MESSAGES} messages \
                             (the batches before this one were stored); open another stream"
                        ),
                    ));
                }
                responses.push(publish(&c, batch).await?);
            }
            Ok(v1::PublishStreamResponse { responses })
        })
        .await
    }

    async fn read(
        &self,
        request: Request<v1::ReadRequest>,
    ) -> Result<Response<v1::ReadResponse>, Status> {
        self.call("/wharf.v1.Messages/Read", request, |c: Ctx, r| async move {
            c.caller.require(Scope::Consume, &r.topic)?;
            let max_bytes = r.max_bytes.unwrap_or(1024 * 1024);
            if max_bytes == 0 {
                return Err(ApiError::invalid("max_bytes", "must be at least 1"));
            }
            let request = ReadRequest {
                partition: r.partition,
                from: convert::position("from", r.from.as_ref(), Position::Earliest)?,
                max_messages: c.s.count("max_messages", r.max_messages, 100)?,
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                wait: c.s.wait(r.wait_ms)?,
            };
            let read =
                c.s.unless_shutdown(c.s.engine.read(&r.topic, request))
                    .await?;
            let bytes: usize = read.messages.iter().map(|m| m.value.len()).sum();
            c.s.metrics
                .delivered(&r.topic, "", read.messages.len() as u64, bytes as u64);
            Ok(convert::read_out(read))
        })
        .await
    }
}

/// A failure reading a client stream (a malformed message, a reset stream) as an API error.
pub(crate) fn status_to_api(status: &Status) -> ApiError {
    match status.code() {
        tonic::Code::InvalidArgument => ApiError::new("invalid_argument", status.message()),
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => {
            ApiError::new("payload_too_large", status.message())
        }
        _ => ApiError::new(
            "invalid_argument",
            format!("the request stream failed: {}", status.message()),
        ),
    }
}
