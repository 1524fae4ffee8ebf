//! The TCP proxy over real loopback sockets, in front of real TCP backends.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lb::{Balancer, Config, Endpoint, TcpOptions};
use support::{PATIENCE, dead_addr};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A backend that greets each connection with its name and then echoes. With `proxy_header`,
/// it first reads a PROXY v2 header for IPv4 and greets with the source address in it instead.
async fn echo(name: &'static str, proxy_header: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let greeting = if proxy_header {
                    let mut header = [0; 28];
                    s.read_exact(&mut header).await.unwrap();
                    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
                    assert_eq!(&header[12..16], &[0x21, 0x11, 0, 12]);
                    let ip =
                        std::net::Ipv4Addr::from([header[16], header[17], header[18], header[19]]);
                    let port = u16::from_be_bytes([header[24], header[25]]);
                    format!("{ip}:{port}\n")
                } else {
                    format!("{name}\n")
                };
                s.write_all(greeting.as_bytes()).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn tcp_proxy(balancer: Arc<Balancer>, options: TcpOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(lb::serve_tcp(
        listener,
        balancer,
        options,
        std::future::pending(),
    ));
    addr
}

async fn greeting(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0];
    while tokio::time::timeout(PATIENCE, s.read_exact(&mut byte))
        .await
        .unwrap()
        .is_ok()
    {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_round_robin_around_a_dead_endpoint_and_echo() {
    let set = vec![
        Endpoint::ready("a", echo("a", false).await),
        Endpoint::ready("dead", dead_addr().await),
        Endpoint::ready("b", echo("b", false).await),
    ];
    let balancer = Balancer::new(Config::default(), &set);
    let proxy = tcp_proxy(Arc::clone(&balancer), TcpOptions::default()).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        seen.push(greeting(&mut s).await);
        s.write_all(b"ping\n").await.unwrap();
        assert_eq!(greeting(&mut s).await, "ping");
    }
    let a = seen.iter().filter(|g| *g == "a").count();
    assert_eq!(
        a + seen.iter().filter(|g| *g == "b").count(),
        20,
        "{seen:?}"
    );
    assert!((8..=12).contains(&a), "{seen:?}");
    let s = balancer.snapshot();
    // Ejected at its first failure; on a loaded machine the 20 connections may outlast the
    // ejection, so its count is what is sure, not its state now.
    let dead = s.endpoint("dead").unwrap();
    assert!(dead.counters.ejections >= 1, "{dead:?}");
    assert_eq!(s.listener.errors, 0);
    assert!(s.listener.retries >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_header_names_the_client() {
    let set = vec![Endpoint::ready("a", echo("a", true).await)];
    let balancer = Balancer::new(Config::default(), &set);
    let options = TcpOptions {
        proxy_protocol: true,
        ..TcpOptions::default()
    };
    let proxy = tcp_proxy(balancer, options).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let me = s.local_addr().unwrap();
    assert_eq!(greeting(&mut s).await, me.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_the_cap_holds() {
    let set = vec![Endpoint::ready("a", echo("a", false).await)];
    let balancer = Balancer::new(Config::default(), &set);
    let options = TcpOptions {
        idle_timeout: Duration::from_millis(300),
        max_connections: 1,
        ..TcpOptions::default()
    };
    let proxy = tcp_proxy(Arc::clone(&balancer), options).await;
    let mut idle = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greeting(&mut idle).await, "a");

    // Over the cap: closed without a greeting.
    let mut refused = TcpStream::connect(proxy).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, refused.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());

    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed");
    support::wait_for("the slot to be free", || {
        balancer.snapshot().listener.in_flight == 0
    })
    .await;
    let mut next = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greeting(&mut next).await, "a");
}
