//! The accept loop: HTTP/1 on hyper with a cap on open connections and a header-read timeout, so
//! idle or slow clients cannot hold file descriptors for ever (`axum::serve` has neither); and
//! HTTP/2 over TLS when the client offers it (ALPN), so that one node's concurrent calls share one
//! connection — 5,000 agents then hold 5,000 connections, not three or four times that.
//!
//! hyper starts its header-read timer whenever a connection waits for a request head, also
//! between two requests of a kept-alive connection; the same timeout is therefore the idle
//! keep-alive timeout. Clients keep their pooled connections idle for less than that
//! (`client` sets its pool idle timeout below [`DEFAULT_HEADER_READ_TIMEOUT`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower_service::Service;

/// 5 s: a real client sends its request head in one round trip; an idle or trickling one is cut
/// off long before it can pile up.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// 8 MiB: a deploy of hundreds of services fits many times over, and a server reading it whole
/// costs little memory.
pub const DEFAULT_BODY_LIMIT: usize = 8 << 20;

/// How long open connections get to finish their current request at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (out of file descriptors, say): the error persists for a while,
/// and retrying at once would spin a core.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Streams one HTTP/2 connection may have open at once: an agent has three, a server forwarding
/// its clients' calls to the leader a few dozen; more queue in the client.
const H2_MAX_STREAMS: u32 = 256;

/// How often an HTTP/2 connection is pinged, and how long the answer may take before the
/// connection is closed: a peer that vanished without a FIN does not hold its slot for ever.
const H2_PING_EVERY: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one warning about refused connections this often, so a flood cannot flood the log.
const REFUSED_WARN_EVERY: Duration = Duration::from_secs(10);

/// What one listener allows its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; one more is accepted and closed at once, so the ones already
    /// open are never starved.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head within this long, also after
    /// a previous request, is closed.
    pub header_read_timeout: Duration,
    /// Largest request body [`crate::Json`] reads; a larger one is answered 413.
    pub body_limit: usize,
}

impl Limits {
    /// Limits with `max_connections` and the default timeout and body limit.
    pub fn with_max_connections(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// The request body limit in force, put in every request's extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Serves `app` on `listener` until `shutdown` resolves, then gives open connections
/// `SHUTDOWN_GRACE` to finish, ends those still open (a blocking query, a followed log), and
/// returns. Each request carries the peer's address as axum's
/// `ConnectInfo<SocketAddr>` and the body limit as [`BodyLimit`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, app, limits, None, None, shutdown).await;
}

/// Picks, once its TLS handshake says who the client is, the runtime a connection is served
/// on: `None` keeps it on the listener's. A server keeps its operators and its peers apart from
/// thousands of agents this way, so that a queue of agents' requests does not delay them.
pub type Lane = Arc<dyn Fn(&PeerCertificate) -> Option<tokio::runtime::Handle> + Send + Sync>;

/// The certificate the client presented in the TLS handshake, put in every request's
/// extensions by [`serve_tls`]; `None` when it presented none (or the listener is plain).
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<CertificateDer<'static>>);

/// [`serve`], over TLS when `tls` is given: the handshake must finish within the header-read
/// timeout, and each request carries the client's certificate as [`PeerCertificate`]. A client
/// that speaks plain HTTP to a TLS listener fails the handshake and is closed. With a `lane`,
/// each connection is then served on the runtime it picks ([`Lane`]).
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    lane: Option<Lane>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let header_read_timeout = limits.header_read_timeout;
    let body_limit = limits.body_limit;
    let serve_one = move |stream: TcpStream, peer, watcher| {
        let one = Connection {
            app: app.clone(),
            http: http.clone(),
            h2: h2.clone(),
            watcher,
            peer,
            body_limit,
        };
        let (acceptor, lane) = (acceptor.clone(), lane.clone());
        async move {
            match acceptor {
                None => one.serve(stream, PeerCertificate(None)).await,
                Some(acceptor) => {
                    (one.handshake(acceptor, stream, header_read_timeout, lane)).await;
                }
            }
        }
    };
    accept_loop(
        listener,
        limits.max_connections,
        refuse_busy,
        serve_one,
        shutdown,
    )
    .await;
}

/// The accept loop under every listener: accepts on `listener` until `shutdown` resolves, with
/// at most `max_connections` open at once (one more is handed to `over_cap` with the cap, then
/// closed, so the ones already open are never starved). Each accepted connection runs as its own
/// task, `serve(stream, peer, watcher)`, holding its slot until it ends. At shutdown the
/// listener is closed, connections that watch `watcher` get `SHUTDOWN_GRACE` to finish their
/// current request, and every connection still open is then ended.
pub async fn accept_loop<S, F>(
    listener: TcpListener,
    max_connections: usize,
    over_cap: fn(TcpStream, usize),
    mut serve: S,
    shutdown: impl Future<Output = ()>,
) where
    S: FnMut(TcpStream, SocketAddr, Watcher) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut refused = Refused::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.note(peer, max_connections);
            over_cap(stream, max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = serve(stream, peer, graceful.watcher());
        connections.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after {SHUTDOWN_GRACE:?} are ended");
    }
    connections.shutdown().await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    app: Router,
    http: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    watcher: Watcher,
    peer: SocketAddr,
    body_limit: usize,
}

impl Connection {
    /// Finishes the TLS handshake within `timeout` (a silent client must not hold a slot for
    /// ever), then serves, on the runtime `lane` picks.
    async fn handshake(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        timeout: Duration,
        lane: Option<Lane>,
    ) {
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake with {} failed: {e}", self.peer);
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake with {} timed out", self.peer);
                return;
            }
        };
        let session = tls.get_ref().1;
        let cert = (session.peer_certificates())
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let h2 = session.alpn_protocol() == Some(b"h2");
        let cert = PeerCertificate(cert);
        let elsewhere = lane.and_then(|lane| lane(&cert));
        let serve = async move {
            if h2 {
                self.serve_h2(tls, cert).await;
            } else {
                self.serve(tls, cert).await;
            }
        };
        match elsewhere {
            None => serve.await,
            Some(runtime) => {
                // Ended with this task (at shutdown, or when the listener's runtime goes), as
                // a connection served here would be.
                let served = runtime.spawn(serve);
                let _abort = AbortOnDrop(served.abort_handle());
                let _ = served.await;
            }
        }
    }

    /// What each request of this connection is handed to: the app, with who sent it and how
    /// large its body may be in its extensions.
    fn service(
        app: Router,
        peer: SocketAddr,
        body_limit: usize,
        cert: PeerCertificate,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>>
                 + Send
                 + 'static,
    > + Clone
    + Send
    + 'static {
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(BodyLimit(body_limit));
            req.extensions_mut().insert(cert.clone());
            app.clone().call(req)
        })
    }

    async fn serve_h2<IO>(self, io: IO, cert: PeerCertificate)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = Connection::service(self.app, self.peer, self.body_limit, cert);
        let connection = self.h2.serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(connection).await {
            tracing::debug!("connection ended: {e}");
        }
    }

    async fn serve<IO>(self, io: IO, cert: PeerCertificate)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            app,
            http,
            watcher,
            peer,
            body_limit,
            ..
        } = self;
        let service = Connection::service(app, peer, body_limit, cert);
        let connection = http.serve_connection(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!("connection ended: {e}");
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts refused connections and warns about them now and then.
#[derive(Default)]
struct Refused {
    count: u64,
    last_warning: Option<tokio::time::Instant>,
}

impl Refused {
    fn note(&mut self, peer: SocketAddr, cap: usize) {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= REFUSED_WARN_EVERY)
        {
            tracing::warn!(
                "refused {} connection(s), the last from {peer}: {cap} connections are open, the maximum",
                self.count
            );
            self.count = 0;
            self.last_warning = Some(now);
        }
    }
}

/// Closes a connection over the cap, with a best-effort 503 so a real HTTP client learns why.
pub fn refuse_busy(stream: TcpStream, cap: usize) {
    let body = format!(
        r#"{{"error":"the server has {cap} connections open, its maximum; retry shortly"}}"#
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}
