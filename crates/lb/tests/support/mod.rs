//! Real backends on loopback for the proxy's tests: small hyper servers that answer with their
//! name, can hold requests until released, and can be killed (their listener and every
//! connection dropped at once, as a SIGKILLed task's are); a backend that answers garbage; a
//! pooled HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Generous bound for anything a test waits for on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds or [`PATIENCE`] runs out.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests answered (or being held).
    pub hits: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
    task: JoinHandle<()>,
}

impl Backend {
    /// A backend answering every request with its name; `/hold` waits for [`Backend::release`].
    /// It echoes the forwarding headers it got as `seen-*` headers.
    pub async fn start(name: &str) -> Backend {
        Backend::answering(name, StatusCode::OK).await
    }

    /// A backend like [`Backend::start`]'s that answers with `status`.
    pub async fn answering(name: &str, status: StatusCode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let task = tokio::spawn(serve(
            listener,
            name.to_owned(),
            Arc::clone(&hits),
            Arc::clone(&release),
            status,
        ));
        Backend {
            name: name.to_owned(),
            addr,
            hits,
            release,
            task,
        }
    }

    pub fn endpoint(&self) -> lb::Endpoint {
        lb::Endpoint::ready(self.name.clone(), self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    /// Lets every held request, and every later one, through.
    pub fn release(&self) {
        self.release.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Drops the listener and every open connection at once.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    hits: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
    status: StatusCode,
) {
    // Owned by this task, so aborting it closes every connection too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (name, hits, release) = (name.clone(), Arc::clone(&hits), Arc::clone(&release));
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (name, hits, release) = (name.clone(), Arc::clone(&hits), Arc::clone(&release));
                async move {
                    hits.fetch_add(1, SeqCst);
                    if req.uri().path() == "/hold" {
                        let _ = release.acquire().await;
                    }
                    let mut answer = Response::new(Full::new(Bytes::from(name)));
                    *answer.status_mut() = status;
                    for (seen, header) in [
                        ("seen-x-forwarded-for", "x-forwarded-for"),
                        ("seen-x-forwarded-proto", "x-forwarded-proto"),
                        ("seen-forwarded", "forwarded"),
                        ("seen-host", "host"),
                    ] {
                        if let Some(v) = req.headers().get(header) {
                            answer.headers_mut().insert(seen, v.clone());
                        }
                    }
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    answer.headers_mut().insert("seen-body-len", body.into());
                    Ok::<_, hyper::Error>(answer)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A backend that reads a little, answers bytes that are not HTTP and closes.
pub async fn garbage() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"SSH-2.0-definitely not http\r\n\x00\x01\x02\r\n\r\n")
                    .await;
            });
        }
    });
    (addr, task)
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Starts an HTTP listener for `balancer`; it stops when the test's runtime ends.
pub async fn http_proxy(balancer: Arc<lb::Balancer>, options: lb::HttpOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(lb::serve_http(
        listener,
        balancer,
        options,
        std::future::pending(),
    ));
    addr
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let answer = client.request(req).await.expect("the proxy answers");
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.expect("the whole answer").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &HttpClient, proxy: SocketAddr, path: &str) -> Answer {
    send(client, request("GET", proxy, path)).await
}

pub fn request(method: &str, proxy: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}
