//! Kept-alive connections from the HTTP proxy to its endpoints: a stack of idle ones per
//! endpoint address, the most recently used taken first. Each connection is hyper's
//! `client::conn::http1`, its task beside the request's on the proxy's thread: a request costs
//! no URI-keyed lookup, no future boxed for a generic pool and no task spawned for it.
//!
//! A connection goes back to the stack only once its answer was read whole
//! ([`Conn::keep`]); one that is closed, not ready for another request, or idle for
//! [`IDLE_TIMEOUT`] is dropped (which closes it) when it is next looked at, or when the pool
//! meets an endpoint it holds nothing for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::ToEndpoint;

/// How long an idle connection may be used again. Under the header-read timeout of most
/// servers (`httpd`'s 5 s is the shortest here), so a request never goes on a connection its
/// endpoint is closing at that moment.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Idle connections kept per endpoint at most; an answer read whole beyond them closes its
/// connection.
const MAX_IDLE: usize = 256;

pub(crate) struct Pool {
    connect_timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

struct Idle {
    sender: SendRequest<ToEndpoint>,
    since: Instant,
}

impl Idle {
    /// Whether it may still be used: open, and idle for less than [`IDLE_TIMEOUT`]. One that
    /// is not ready yet (its task has not yet seen the end of the last answer) soon will be.
    fn alive(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

/// A connection with a request on it: [`Conn::keep`] it once the answer was read whole,
/// else drop it.
pub(crate) struct Conn {
    sender: SendRequest<ToEndpoint>,
    addr: SocketAddr,
    pool: Arc<Pool>,
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// It never reached the endpoint: no connection, or one that closed before the request was
    /// written. Any request may be sent again elsewhere.
    Unsent(String),
    /// It was sent, then the connection failed or the answer was not HTTP.
    Failed(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent(why) => write!(f, "not sent: {why}"),
            SendError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Pool {
        Pool {
            connect_timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `req` to `addr` on an idle connection, else a new one, and waits for the head of
    /// its answer. An idle connection the endpoint closed just before gives the request back:
    /// it goes on a new connection, as it never reached the endpoint.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<ToEndpoint>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        if let Some(sender) = self.checkout(addr) {
            match self.send_on(sender, addr, req).await {
                Err((SendError::Unsent(_), Some(back))) => req = back,
                done => return done.map_err(|(e, _)| e),
            }
        }
        let sender = self.connect(addr).await?;
        self.send_on(sender, addr, req).await.map_err(|(e, _)| e)
    }

    async fn send_on(
        self: &Arc<Self>,
        mut sender: SendRequest<ToEndpoint>,
        addr: SocketAddr,
        req: Request<ToEndpoint>,
    ) -> Result<(Response<Incoming>, Conn), (SendError, Option<Request<ToEndpoint>>)> {
        match sender.try_send_request(req).await {
            Ok(answer) => {
                let conn = Conn {
                    sender,
                    addr,
                    pool: Arc::clone(self),
                };
                Ok((answer, conn))
            }
            Err(mut e) => match e.take_message() {
                Some(back) => Err((SendError::Unsent(e.into_error().to_string()), Some(back))),
                None => Err((SendError::Failed(e.into_error()), None)),
            },
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<ToEndpoint>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.get_mut(&addr)?;
        let now = Instant::now();
        // Most often the top one; one not yet ready stays for a later request.
        let ready = stack
            .iter()
            .rposition(|conn| conn.sender.is_ready() && conn.alive(now))?;
        Some(stack.remove(ready).sender)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<ToEndpoint>, SendError> {
        let timeout = self.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Unsent(format!("cannot connect: {e}"))),
            Err(_) => {
                return Err(SendError::Unsent(format!(
                    "no connection within {timeout:?}"
                )));
            }
        };
        // Heads and small answers go out at once, not after the peer's delayed ack.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Unsent(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection to {addr} ended: {e}");
            }
        });
        Ok(sender)
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<ToEndpoint>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !idle.contains_key(&addr) {
            // A new endpoint: a good time to forget those gone (endpoints come and go with
            // tasks, each on a port of its own).
            idle.retain(|_, stack| {
                stack.retain(|conn| conn.alive(now));
                !stack.is_empty()
            });
        }
        let stack = idle.entry(addr).or_default();
        // The oldest are at the bottom: once the bottom one is dead, the dead all go.
        if stack.first().is_some_and(|conn| !conn.alive(now)) {
            stack.retain(|conn| conn.alive(now));
        }
        if stack.len() < MAX_IDLE {
            stack.push(Idle { sender, since: now });
        }
    }

    /// Idle connections to `addr`, for tests.
    #[cfg(test)]
    fn idle_to(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get(&addr).map_or(0, Vec::len)
    }
}

impl Conn {
    /// Back to the pool: its answer was read whole.
    pub(crate) fn keep(self) {
        self.pool.put(self.addr, self.sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Either, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// An endpoint answering every request of a connection with `ok`, counting connections.
    async fn endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<ToEndpoint> {
        Request::builder()
            .uri("/")
            .header("host", "x")
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap()
    }

    /// Waits until the pool holds a connection to `addr` ready for a request.
    async fn ready_one(pool: &Pool, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(sender) = pool.checkout(addr) {
                pool.put(addr, sender);
                return;
            }
            assert!(Instant::now() < deadline, "no connection became ready");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_connection_is_used_again_once_its_answer_was_read_whole() {
        let (addr, accepted) = endpoint().await;
        let pool = Arc::new(Pool::new(Duration::from_secs(1)));
        for _ in 0..5 {
            let (answer, conn) = pool.send(addr, get()).await.unwrap();
            let body = answer.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            conn.keep();
            ready_one(&pool, addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_to(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_not_read_is_not_kept() {
        let (addr, accepted) = endpoint().await;
        let pool = Arc::new(Pool::new(Duration::from_secs(1)));
        let (_answer, conn) = pool.send(addr, get()).await.unwrap();
        drop(conn);
        let (_answer, _conn) = pool.send(addr, get()).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_to(addr), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_not_used_after_the_idle_timeout() {
        let (addr, _) = endpoint().await;
        let pool = Arc::new(Pool::new(Duration::from_secs(1)));
        let (answer, conn) = pool.send(addr, get()).await.unwrap();
        answer.into_body().collect().await.unwrap();
        conn.keep();
        ready_one(&pool, addr).await;
        tokio::time::sleep(IDLE_TIMEOUT).await;
        assert!(pool.checkout(addr).is_none());
    }

    #[tokio::test]
    async fn no_endpoint_listening_is_a_request_never_sent() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = Arc::new(Pool::new(Duration::from_secs(1)));
        let e = pool.send(addr, get()).await.err().unwrap();
        assert!(matches!(e, SendError::Unsent(_)), "{e}");
    }
}
