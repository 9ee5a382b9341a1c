//! The HTTP seam: an adapter with endpoints of its own (Server-Sent Events,
//! long-polling) implements [`Endpoint`], and the gateway's server
//! (`tidings_transport::serve_with`) routes its path to it. Its responses
//! may stream ([`Body`]).

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use tidings_session::BoxFuture;

/// A response body: whole, or a stream (an event stream's events as they
/// come).
pub type Body = BoxBody<Bytes, Infallible>;

/// An HTTP endpoint of a wire adapter, mounted on a path of the gateway's
/// server. Every refusal is a response: it never fails.
pub trait Endpoint: Send + Sync + 'static {
    /// Answers one request from TCP peer `peer` (the request carries
    /// hyper's `OnUpgrade` when the server allows upgrades).
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> BoxFuture<'static, Response<Body>>;
}

/// A whole body.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A plain-text response with `status`.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(full_body(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
