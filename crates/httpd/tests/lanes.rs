//! A TLS listener with a [`httpd::Lane`]: each connection is served on the runtime the lane
//! picks from the client's certificate, as a server keeps agents apart from its operators.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use httpd::{Lane, Limits, PeerCertificate};
use pki::{Ca, ClientAuth, Identity, NodeRole};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(30);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A runtime on a thread named `name`, running until the test process ends.
fn runtime_on(name: &str) -> tokio::runtime::Handle {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .unwrap();
    handle
}

/// The name of the thread that served `GET /thread` to a client presenting `me`.
async fn served_on(addr: SocketAddr, ca: &Ca, me: Option<&Identity>) -> String {
    let mut config = pki::tls::client_config(ca.cert_pem(), me).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
        .await
        .unwrap();
    let request = b"GET /thread HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    tls.write_all(request).await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    body.to_string()
}

#[tokio::test]
async fn each_connection_is_served_on_the_runtime_its_certificate_picks() {
    let ca = Ca::generate().unwrap();
    let server = ca.issue(NodeRole::Server, "s1", &[LOCALHOST]).unwrap();
    let agent = ca.issue(NodeRole::Agent, "a1", &[LOCALHOST]).unwrap();
    let config = pki::tls::server_config(ca.cert_pem(), &server, ClientAuth::Optional).unwrap();
    let agents = runtime_on("agents");
    let lane: Lane = Arc::new(move |cert: &PeerCertificate| {
        let is_agent = (cert.0.as_ref()).is_some_and(|c| pki::tls::has_role(c, NodeRole::Agent));
        is_agent.then(|| agents.clone())
    });
    let app = Router::new().route(
        "/thread",
        get(|| async { std::thread::current().name().unwrap_or("").to_string() }),
    );
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits::with_max_connections(16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(httpd::serve_tls(
        listener,
        app,
        limits,
        Some(Arc::new(config)),
        Some(lane),
        async move {
            let _ = stopped.await;
        },
    ));
    let here = std::thread::current().name().unwrap().to_string();

    let by_agent = tokio::time::timeout(PATIENCE, served_on(addr, &ca, Some(&agent)));
    assert_eq!(by_agent.await.unwrap(), "agents");
    let by_server = tokio::time::timeout(PATIENCE, served_on(addr, &ca, Some(&server)));
    assert_eq!(
        by_server.await.unwrap(),
        here,
        "a server stays on the listener's runtime"
    );
    let by_operator = tokio::time::timeout(PATIENCE, served_on(addr, &ca, None));
    assert_eq!(
        by_operator.await.unwrap(),
        here,
        "no certificate: the listener's runtime"
    );

    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, serving)
        .await
        .unwrap()
        .unwrap();
}
