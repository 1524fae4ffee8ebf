//! The accept loop on a real loopback socket: idle connections are closed, connections over the
//! cap are refused without disturbing the open ones, and requests see their peer and body limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use httpd::{BodyLimit, Limits};

/// Far above what any of these waits needs on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = Router::new().route(
        "/peer",
        get(
            |ConnectInfo(peer): ConnectInfo<SocketAddr>,
             axum::Extension(limit): axum::Extension<BodyLimit>| async move {
                format!("{} {}", peer.ip(), limit.0)
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(httpd::serve(listener, app, limits, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// One keep-alive GET on `s`; returns the answer text, empty if the connection failed.
fn get_peer(s: &mut TcpStream) -> String {
    if s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return String::new();
    }
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the server closed `s` (EOF or reset) within `PATIENCE`.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_header_read_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::with_max_connections(8)
    };
    let (addr, _stop) = start(limits).await;
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).unwrap();
        assert!(
            closed_by_server(&mut silent),
            "a silent connection stays open"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A half-sent head is cut off the same way.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\nHost:").unwrap();
        assert!(closed_by_server(&mut slow), "a trickling head stays open");

        // After an answer, a kept-alive connection that goes idle is closed too.
        let mut kept = TcpStream::connect(addr).unwrap();
        assert!(get_peer(&mut kept).starts_with("HTTP/1.1 200"));
        assert!(
            closed_by_server(&mut kept),
            "an idle kept-alive connection stays open"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_and_open_ones_keep_working() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(60),
        ..Limits::with_max_connections(2)
    };
    let (addr, _stop) = start(limits).await;
    tokio::task::spawn_blocking(move || {
        let mut first = TcpStream::connect(addr).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        assert!(get_peer(&mut first).ends_with("127.0.0.1 8388608"));
        assert!(get_peer(&mut second).starts_with("HTTP/1.1 200"));

        let mut third = TcpStream::connect(addr).unwrap();
        third.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut answer = String::new();
        let _ = third.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("2 connections open"),
            "{answer:?}"
        );

        // The open ones are not starved, and a freed slot is reused.
        assert!(get_peer(&mut first).starts_with("HTTP/1.1 200"));
        drop(second);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut again = TcpStream::connect(addr).unwrap();
            again.set_read_timeout(Some(PATIENCE)).unwrap();
            if get_peer(&mut again).starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the freed slot is never reused");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}
