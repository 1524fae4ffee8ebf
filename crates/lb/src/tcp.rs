//! The TCP (L4) proxy: each client connection goes to the endpoint the listener's
//! [`Balancer`] picks (by the client's address under consistent hashing); an endpoint that does
//! not accept the connection is ejected and another one tried, within the retry budget. Then,
//! after an optional PROXY protocol v2 header, bytes are copied both ways until either side
//! closes or the connection is idle for the idle timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::balancer::{Balancer, Lease, Tried};
use crate::idle::Activity;
use crate::pick::ip_key;
use crate::proxy_protocol;

/// What one TCP listener allows its clients and waits for its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOptions {
    /// Open client connections at most; one more is closed at once.
    pub max_connections: usize,
    /// A connection that moves no byte either way for this long is closed (within twice as
    /// long).
    pub idle_timeout: Duration,
    /// An endpoint that has not accepted a connection within this long has failed.
    pub connect_timeout: Duration,
    /// Send each endpoint a PROXY protocol v2 header with the client's address first.
    pub proxy_protocol: bool,
}

impl Default for TcpOptions {
    /// 10 min idle: L4 clients (databases, brokers) keep quiet connections open and send
    /// their own keep-alives more often than that.
    fn default() -> TcpOptions {
        TcpOptions {
            max_connections: 4_096,
            idle_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(1),
            proxy_protocol: false,
        }
    }
}

/// Proxies TCP connections on `listener` to `balancer`'s endpoints until `shutdown` resolves;
/// connections still open then are closed.
pub async fn serve_tcp(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    options: TcpOptions,
    shutdown: impl Future<Output = ()>,
) {
    let options = Arc::new(options);
    let max_connections = options.max_connections.max(1);
    let serve_one = move |client: TcpStream, peer: SocketAddr, _: httpd::Watcher| {
        proxy(Arc::clone(&balancer), Arc::clone(&options), client, peer)
    };
    httpd::accept_loop(listener, max_connections, close, serve_one, shutdown).await;
}

/// Refuses a connection over the cap: TCP has no way to say why, so it is just closed.
fn close(_: TcpStream, _: usize) {}

async fn proxy(
    balancer: Arc<Balancer>,
    options: Arc<TcpOptions>,
    client: TcpStream,
    peer: SocketAddr,
) {
    let request = balancer.start_request();
    let started = balancer.now();
    let Some((lease, mut endpoint)) = connect(&balancer, &options, peer).await else {
        balancer.note_error();
        return;
    };
    balancer.note_latency(started);
    if options.proxy_protocol {
        let local = match client.local_addr() {
            Ok(local) => local,
            Err(e) => {
                tracing::debug!("connection from {peer} has no local address: {e}");
                return;
            }
        };
        let mut header = [0; proxy_protocol::MAX_LEN];
        let len = proxy_protocol::header(peer, local, &mut header);
        if let Err(e) = endpoint.write_all(&header[..len]).await {
            tracing::debug!("PROXY header to {} failed: {e}", lease.backend().addr());
            return;
        }
    }
    let activity = Activity::default();
    let mut client = activity.watch(client);
    let mut endpoint = activity.watch(endpoint);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut endpoint) => {
            if let Err(e) = copied {
                tracing::debug!("connection from {peer} to {} ended: {e}", lease.backend().addr());
            }
        }
        () = activity.idle(options.idle_timeout) => {
            tracing::debug!("connection from {peer} idle for {:?}, closed", options.idle_timeout);
        }
    }
    drop((lease, request));
}

/// A connection to an endpoint, trying others while they fail to accept and the budget lasts.
async fn connect(
    balancer: &Balancer,
    options: &TcpOptions,
    peer: SocketAddr,
) -> Option<(Lease, TcpStream)> {
    let key = ip_key(peer.ip());
    let mut tried = Tried::default();
    for attempt in 0..balancer.config().max_attempts {
        let lease = if attempt == 0 {
            balancer.pick(key, &tried)?
        } else {
            balancer.pick_retry(key, &tried)?
        };
        tried.add(&lease);
        let addr = lease.backend().addr();
        match tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                lease.succeeded(balancer);
                return Some((lease, stream));
            }
            Ok(Err(e)) => tracing::debug!("cannot connect to {addr}: {e}"),
            Err(_) => tracing::debug!("{addr} did not accept within {:?}", options.connect_timeout),
        }
        lease.failed(balancer);
    }
    None
}
