//! Tower layers around every service: request-decoding failures become
//! `INVALID_ARGUMENT`/`RESOURCE_EXHAUSTED` (tonic answers them `INTERNAL` /
//! `OUT_OF_RANGE`), and a panicking handler answers `INTERNAL` while the
//! connection keeps serving.

use std::any::Any;

use tonic::{Code, Status};

/// Messages tonic's codec uses when it cannot decode a request.
const DECODE_FAILURES: &[&str] = &[
    "failed to decode Protobuf message",
    "protocol error: received message with",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "Error decompressing",
];

/// Rewrites the status of a trailers-only answer to an undecodable request.
pub fn rewrite_decode_errors<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let replacement = match status.code() {
        Code::Internal
            if DECODE_FAILURES
                .iter()
                .any(|p| status.message().starts_with(p)) =>
        {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message for this method ({})",
                status.message()
            ))
        }
        Code::OutOfRange if status.message().contains("message length too large") => {
            Status::resource_exhausted(format!("the request is too large ({})", status.message()))
        }
        _ => return response,
    };
    let headers = response.headers_mut();
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if replacement.add_header(headers).is_err() {
        tracing::warn!("could not rewrite a decode-error status");
    }
    response
}

/// The answer to a request whose handler panicked.
pub fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> http::Response<tonic::body::Body> {
    tracing::error!("a request handler panicked; answered INTERNAL and kept serving");
    Status::internal("the server hit an unexpected error handling this request; it keeps serving")
        .into_http()
}
