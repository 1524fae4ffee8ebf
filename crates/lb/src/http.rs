//! The HTTP proxy: HTTP/1 from clients, over `httpd`'s accept loop (connection cap, header-read
//! timeout, which hyper also applies between two requests of a kept-alive connection) with an
//! idle timeout on top (a trickled body cannot hold a connection either), to pooled keep-alive
//! connections to the endpoints (hyper-util's client).
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
use std::io::Write as _;
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
use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::balancer::{Balancer, Lease, RequestGuard, Tried};
use crate::idle::Activity;
use crate::pick::{Algorithm, HashKey, client_ip, ip_key};
use crate::rng::stable_hash;

/// How long a pooled connection to an endpoint may stay unused. Under the header-read timeout
/// of most servers (`httpd`'s 5 s is the shortest here), so the proxy is the side that closes;
/// a connection closed by the endpoint first costs a request hyper sends again by itself.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

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
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(options.connect_timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    let hash = match &balancer.config().algorithm {
        Algorithm::ConsistentHash(key) => Some(key.clone()),
        _ => None,
    };
    let proxy = Arc::new(Proxy {
        balancer,
        client,
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
            let service = hyper::service::service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
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
type ToEndpoint = Either<Full<Bytes>, Incoming>;

struct Proxy {
    balancer: Arc<Balancer>,
    client: Client<HttpConnector, ToEndpoint>,
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
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let request = self.balancer.start_request();
        let started = self.balancer.now();
        let key = self.key(&req, peer);
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        // hyper answered the client's `Expect: 100-continue` when the body was read; the
        // endpoint gets the body at once either way.
        parts.headers.remove(header::EXPECT);
        add_forwarded(&mut parts.headers, client_ip(peer.ip()));
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
            Ok((answer, lease)) => self.respond(answer, lease, request, started),
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
    ) -> Result<(Response<Incoming>, Lease), Failure> {
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
            match self.client.request(to_send).await {
                Ok(answer) if answer.status().is_server_error() => {
                    lease.failed(&self.balancer);
                    let gateway = matches!(answer.status().as_u16(), 502..=504);
                    if can_retry && idempotent && gateway {
                        gateway_error = Some((answer, lease));
                        continue;
                    }
                    return Ok((answer, lease));
                }
                Ok(answer) => {
                    lease.succeeded(&self.balancer);
                    return Ok((answer, lease));
                }
                Err(e) => {
                    lease.failed(&self.balancer);
                    tracing::debug!("request to {} failed: {e:?}", lease.backend().addr());
                    let unsent = e.is_connect();
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
    *req.uri_mut() = to_endpoint(uri, &lease.backend().authority);
    Some(req)
}

/// The client's URI with the endpoint's address, which the pooled client connects to; the
/// client's Host header is kept.
fn to_endpoint(uri: Uri, authority: &Authority) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // A scheme, an authority and a path always make a URI.
    Uri::from_parts(parts).unwrap_or_default()
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Says who the client is: appended to what an earlier proxy said (`X-Forwarded-For` joined
/// into one line, as nginx's `$proxy_add_x_forwarded_for` does, since some applications read
/// one line only), and that it spoke plain HTTP to this proxy.
fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    append(headers, &X_FORWARDED_FOR, |line| write!(line, "{client}"));
    append(headers, &header::FORWARDED, |line| match client {
        IpAddr::V4(ip) => write!(line, "for={ip};proto=http"),
        IpAddr::V6(ip) => write!(line, "for=\"[{ip}]\";proto=http"),
    });
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Replaces the `name` header by one line: its earlier values, then the one `write` makes.
fn append(
    headers: &mut HeaderMap,
    name: &HeaderName,
    write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) {
    let mut line = Vec::with_capacity(64);
    for earlier in headers.get_all(name) {
        line.extend_from_slice(earlier.as_bytes());
        line.extend_from_slice(b", ");
    }
    if write(&mut line).is_err() {
        return;
    }
    // Earlier values were valid header bytes, and an address formats as ASCII.
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
/// it is sent or dropped (so least connections counts streaming answers), or one of the proxy's.
pub(crate) struct ProxyBody {
    inner: Inner,
    _attempt: Option<Lease>,
    _request: Option<RequestGuard>,
}

enum Inner {
    Endpoint(Incoming),
    Local(Full<Bytes>),
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
        add_forwarded(&mut h, "10.0.0.7".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["forwarded"], "for=10.0.0.7;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, "::1".parse().unwrap());
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
    fn the_endpoint_uri_keeps_path_and_query() {
        let authority = Authority::from_static("127.0.0.1:9000");
        let uri = to_endpoint("/a/b?c=d".parse().unwrap(), &authority);
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/a/b?c=d");
        let uri = to_endpoint("http://elsewhere/x".parse().unwrap(), &authority);
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/x");
    }
}
