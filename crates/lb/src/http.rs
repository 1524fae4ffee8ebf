//! The HTTP proxy: HTTP/1 from clients, over `httpd`'s accept loop (connection cap, header-read
//! timeout, which hyper also applies between two requests of a kept-alive connection) with an
//! idle timeout on top (a trickled body cannot hold a connection either), to pooled keep-alive
//! connections to the endpoints (`pool.rs`).
//!
//! A request is sent to the endpoint its listener's [`Balancer`] picks, with `X-Forwarded-For`,
//! `X-Forwarded-Proto` and `Forwarded` added and hop-by-hop headers removed. When the attempt
//! fails (no connection, a reset, a reply that is not HTTP, a 5xx) the endpoint is ejected, and
//! the request is sent again to another one, within the retry budget, if it can be: it never
//! reached the endpoint (no connection), or it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE)
//! and failed without an answer or with 502, 503 or 504. Either way its body must have been
//! kept: bodies up to [`HttpOptions::max_replay_body`] are read whole first; larger or unsized
//! ones are streamed and their request has one try. A request no endpoint answered gets 502
//! (503 when there is no endpoint to try).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::balancer::{Balancer, Lease, RequestGuard, Tried};
use crate::idle::Activity;
use crate::pick::{Algorithm, HashKey, client_ip, ip_key};
use crate::pool::{Conn, Pool, SendError};
use crate::rng::stable_hash;

/// What one HTTP listener allows its clients and waits for its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Open client connections at most; one more gets a 503 and is closed.
    pub max_connections: usize,
    /// A client has this long to send a request head, the first or the next on a kept-alive
    /// connection.
    pub header_read_timeout: Duration,
    /// A client connection that moves no byte either way for this long is closed (within
    /// twice as long; `idle.rs` says why). A slow endpoint's answer counts as idle too.
    pub idle_timeout: Duration,
    /// An endpoint that has not accepted a connection within this long has failed.
    pub connect_timeout: Duration,
    /// Request bodies of at most this many bytes (by Content-Length) are read before the
    /// request is sent, so it can be sent again.
    pub max_replay_body: usize,
}

impl Default for HttpOptions {
    /// 10 s for a request head and 60 s idle (nginx's `client_header_timeout` is 60 s; a
    /// proxy in front of services can ask for less), 1 s to connect (an endpoint on the
    /// cluster's network accepts in a round trip), 64 KiB kept bodies.
    fn default() -> HttpOptions {
        HttpOptions {
            max_connections: 4_096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            max_replay_body: 64 << 10,
        }
    }
}

/// Serves HTTP on `listener`, sending requests to `balancer`'s endpoints, until `shutdown`
/// resolves; then open connections get a short grace to finish (see `httpd::accept_loop`).
pub async fn serve_http(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    options: HttpOptions,
    shutdown: impl Future<Output = ()>,
) {
    let hash = match &balancer.config().algorithm {
        Algorithm::ConsistentHash(key) => Some(key.clone()),
        _ => None,
    };
    let proxy = Arc::new(Proxy {
        balancer,
        pool: Arc::new(Pool::new(options.connect_timeout)),
        hash,
        max_replay_body: options.max_replay_body,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let idle_timeout = options.idle_timeout;
    let serve_one = move |stream: TcpStream, peer: SocketAddr, watcher: httpd::Watcher| {
        let proxy = Arc::clone(&proxy);
        let http = http.clone();
        async move {
            let activity = Activity::default();
            let client = Arc::new(ClientLines::new(client_ip(peer.ip())));
            let service = hyper::service::service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                let client = Arc::clone(&client);
                async move { Ok::<_, Infallible>(proxy.handle(req, peer, &client).await) }
            });
            let io = TokioIo::new(activity.watch(stream));
            let connection = watcher.watch(http.serve_connection(io, service));
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!("connection from {peer} ended: {e}");
                },
                () = activity.idle(idle_timeout) => {
                    tracing::debug!("connection from {peer} idle for {idle_timeout:?}, closed");
                }
            }
        }
    };
    httpd::accept_loop(
        listener,
        options.max_connections.max(1),
        httpd::refuse_busy,
        serve_one,
        shutdown,
    )
    .await;
}

/// The body sent to an endpoint: kept whole (it can be sent again) or streamed from the client.
pub(crate) type ToEndpoint = Either<Full<Bytes>, Incoming>;

struct Proxy {
    balancer: Arc<Balancer>,
    pool: Arc<Pool>,
    hash: Option<HashKey>,
    max_replay_body: usize,
}

/// Why no endpoint answered, for the client's 502 or 503.
#[derive(Debug, Clone, Copy)]
enum Failure {
    NoEndpoint,
    Connect,
    Answer,
}

impl Failure {
    fn answer(self) -> Response<ProxyBody> {
        match self {
            Failure::NoEndpoint => local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no endpoint of this service is ready; retry shortly\n",
            ),
            Failure::Connect => local(
                StatusCode::BAD_GATEWAY,
                "no endpoint of this service accepted a connection\n",
            ),
            Failure::Answer => local(
                StatusCode::BAD_GATEWAY,
                "the endpoint of this service failed before it answered\n",
            ),
        }
    }
}

impl Proxy {
    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        client: &ClientLines,
    ) -> Response<ProxyBody> {
        let request = self.balancer.start_request();
        let started = self.balancer.now();
        let key = self.key(&req, peer);
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        // hyper answered the client's `Expect: 100-continue` when the body was read; the
        // endpoint gets the body at once either way.
        parts.headers.remove(header::EXPECT);
        add_forwarded(&mut parts.headers, client);
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(e) => {
                tracing::debug!("request body from {peer} could not be read: {e}");
                return local(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read\n",
                );
            }
        };
        match self.send(parts, body, key).await {
            Ok((answer, lease, conn)) => self.respond(answer, lease, conn, request, started),
            Err(failure) => {
                self.balancer.note_error();
                self.balancer.note_latency(started);
                failure.answer()
            }
        }
    }

    /// Sends the request to endpoints until one answers or no other may be tried: the answer
    /// with the attempt it came on, or why there is none.
    async fn send(
        &self,
        parts: Parts,
        mut body: Kept,
        key: u64,
    ) -> Result<(Response<Incoming>, Lease, Conn), Failure> {
        let idempotent = is_idempotent(&parts.method);
        let mut head = Some(parts);
        let mut failure = Failure::NoEndpoint;
        // A 502-504 answer kept while another endpoint is tried: better than the proxy's own
        // 502 if no other answers.
        let mut gateway_error = None;
        let mut tried = Tried::default();
        let attempts = self.balancer.config().max_attempts;
        for attempt in 0..attempts {
            let lease = if attempt == 0 {
                self.balancer.pick(key, &tried)
            } else {
                self.balancer.pick_retry(key, &tried)
            };
            let Some(lease) = lease else {
                break;
            };
            tried.add(&lease);
            let can_retry = matches!(body, Kept::Whole(_)) && attempt + 1 < attempts;
            let Some(to_send) = outgoing(&mut head, &mut body, can_retry, &lease) else {
                break;
            };
            match self.pool.send(lease.backend().addr(), to_send).await {
                Ok((answer, conn)) if answer.status().is_server_error() => {
                    lease.failed(&self.balancer);
                    let gateway = matches!(answer.status().as_u16(), 502..=504);
                    if can_retry && idempotent && gateway {
                        gateway_error = Some((answer, lease, conn));
                        continue;
                    }
                    return Ok((answer, lease, conn));
                }
                Ok((answer, conn)) => {
                    lease.succeeded(&self.balancer);
                    return Ok((answer, lease, conn));
                }
                Err(e) => {
                    lease.failed(&self.balancer);
                    tracing::debug!("request to {} failed: {e}", lease.backend().addr());
                    let unsent = matches!(e, SendError::Unsent(_));
                    failure = if unsent {
                        Failure::Connect
                    } else {
                        Failure::Answer
                    };
                    if !(can_retry && (idempotent || unsent)) {
                        break;
                    }
                }
            }
        }
        gateway_error.ok_or(failure)
    }

    /// The request's consistent-hash key; 0 when the algorithm needs none.
    fn key(&self, req: &Request<Incoming>, peer: SocketAddr) -> u64 {
        let value = match &self.hash {
            None => return 0,
            Some(HashKey::ClientIp) => None,
            Some(HashKey::Header(name)) => req.headers().get(name).map(HeaderValue::as_bytes),
            Some(HashKey::Cookie(name)) => cookie(req.headers(), name),
        };
        match value {
            Some(value) => stable_hash(0, value),
            None => ip_key(peer.ip()),
        }
    }

    async fn read_body(&self, body: Incoming) -> Result<Kept, hyper::Error> {
        if body.is_end_stream() {
            return Ok(Kept::Whole(Bytes::new()));
        }
        match body.size_hint().exact() {
            Some(size) if size <= self.max_replay_body as u64 => {
                Ok(Kept::Whole(body.collect().await?.to_bytes()))
            }
            _ => Ok(Kept::Streamed(Some(body))),
        }
    }

    fn respond(
        &self,
        answer: Response<Incoming>,
        lease: Lease,
        conn: Conn,
        request: RequestGuard,
        started: crate::clock::Nanos,
    ) -> Response<ProxyBody> {
        let balancer = request.balancer();
        balancer.note_latency(started);
        if answer.status().is_server_error() {
            balancer.note_error();
        }
        let (mut parts, body) = answer.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let body = ProxyBody {
            inner: Inner::Endpoint(body),
            conn: Some(conn),
            _attempt: Some(lease),
            _request: Some(request),
        };
        Response::from_parts(parts, body)
    }
}

/// A request's body as the proxy holds it.
enum Kept {
    Whole(Bytes),
    /// Taken by the one attempt.
    Streamed(Option<Incoming>),
}

/// The request for one attempt, to `lease`'s endpoint. Its head is copied while the request may
/// be sent again, else moved; `None` when it was already moved (never, as no attempt follows
/// one that could not be retried).
fn outgoing(
    head: &mut Option<Parts>,
    body: &mut Kept,
    can_retry: bool,
    lease: &Lease,
) -> Option<Request<ToEndpoint>> {
    let body = match body {
        Kept::Whole(bytes) => Either::Left(Full::new(bytes.clone())),
        Kept::Streamed(stream) => Either::Right(stream.take()?),
    };
    let mut req = if can_retry {
        let parts = head.as_ref()?;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        req
    } else {
        Request::from_parts(head.take()?, body)
    };
    // HTTP/1.1 to the endpoint whatever the client spoke, so the connection is kept.
    *req.version_mut() = Version::HTTP_11;
    let uri = std::mem::take(req.uri_mut());
    *req.uri_mut() = to_endpoint(uri);
    if !req.headers().contains_key(header::HOST) {
        // An HTTP/1.0 client may send none; HTTP/1.1 requires one.
        let authority = &lease.backend().authority;
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    Some(req)
}

/// The request target sent to the endpoint: the client's path and query (origin form, which
/// every HTTP/1.1 server takes), even when the client sent an absolute URI.
fn to_endpoint(uri: Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str().starts_with('/') => Uri::from(path.clone()),
        // `OPTIONS *` and the like go as they came.
        Some(_) if uri.scheme().is_none() => uri,
        _ => Uri::from(PathAndQuery::from_static("/")),
    }
}

fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Headers of one hop that a proxy must not pass on (RFC 9110 §7.6.1), with those the
/// Connection header names. `Transfer-Encoding` goes too: hyper frames each side's body itself.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and answers carry none: one pass over the names costs less than a removal
    // (a hash and a probe) of each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the proxy says of one client, made once for its connection: its address as
/// `X-Forwarded-For` and as `Forwarded` give it.
#[derive(Debug, Clone)]
struct ClientLines {
    forwarded_for: HeaderValue,
    forwarded: HeaderValue,
}

impl ClientLines {
    fn new(client: IpAddr) -> ClientLines {
        let forwarded = match client {
            IpAddr::V4(ip) => format!("for={ip};proto=http"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto=http"),
        };
        // An address formats as ASCII.
        let value = |text: String| {
            HeaderValue::from_maybe_shared(Bytes::from(text))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        };
        ClientLines {
            forwarded_for: value(client.to_string()),
            forwarded: value(forwarded),
        }
    }
}

/// Says who the client is: appended to what an earlier proxy said (`X-Forwarded-For` joined
/// into one line, as nginx's `$proxy_add_x_forwarded_for` does, since some applications read
/// one line only), and that it spoke plain HTTP to this proxy.
fn add_forwarded(headers: &mut HeaderMap, client: &ClientLines) {
    append(headers, &X_FORWARDED_FOR, &client.forwarded_for);
    append(headers, &header::FORWARDED, &client.forwarded);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Replaces the `name` header by one line: its earlier values, then `ours`.
fn append(headers: &mut HeaderMap, name: &HeaderName, ours: &HeaderValue) {
    if !headers.contains_key(name) {
        headers.insert(name.clone(), ours.clone());
        return;
    }
    let mut line = Vec::with_capacity(64);
    for earlier in headers.get_all(name) {
        line.extend_from_slice(earlier.as_bytes());
        line.extend_from_slice(b", ");
    }
    line.extend_from_slice(ours.as_bytes());
    // Earlier values and ours were valid header bytes.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(line)) {
        headers.insert(name.clone(), value);
    }
}

/// The value of cookie `name`, from any Cookie header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

fn local(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut answer = Response::new(ProxyBody {
        inner: Inner::Local(Full::new(Bytes::from_static(text.as_bytes()))),
        conn: None,
        _attempt: None,
        _request: None,
    });
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

/// The body sent to a client: an endpoint's, which holds its attempt and request in flight until
/// it is sent or dropped (so least connections counts streaming answers), and its connection,
/// kept for another request if the body was sent whole; or one of the proxy's.
pub(crate) struct ProxyBody {
    inner: Inner,
    conn: Option<Conn>,
    _attempt: Option<Lease>,
    _request: Option<RequestGuard>,
}

enum Inner {
    Endpoint(Incoming),
    Local(Full<Bytes>),
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let (Inner::Endpoint(body), Some(conn)) = (&self.inner, self.conn.take())
            && body.is_end_stream()
        {
            conn.keep();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Endpoint(body) => Pin::new(body).poll_frame(cx),
            Inner::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Endpoint(body) => body.is_end_stream(),
            Inner::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Endpoint(body) => body.size_hint(),
            Inner::Local(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn forwarded_headers_append_to_earlier_proxies() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &ClientLines::new("10.0.0.7".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["forwarded"], "for=10.0.0.7;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, &ClientLines::new("::1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "sess"), None);
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn the_endpoint_gets_the_path_and_query_in_origin_form() {
        let uri = to_endpoint("/a/b?c=d".parse().unwrap());
        assert_eq!(uri.to_string(), "/a/b?c=d");
        let uri = to_endpoint("http://elsewhere/x?y".parse().unwrap());
        assert_eq!(uri.to_string(), "/x?y");
        let uri = to_endpoint("http://elsewhere".parse().unwrap());
        assert_eq!(uri.to_string(), "/");
        let uri = to_endpoint("*".parse().unwrap());
        assert_eq!(uri.to_string(), "*");
    }
}
