//! The certificate step of a server joining: a real TLS server, `server::trust::join` into an
//! empty data dir, and what the cluster then knows. Waits poll with a deadline.

use std::net::IpAddr;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(30);
const LOOPBACK: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];

async fn tls_server(dir: &std::path::Path) -> server::ServerHandle {
    let config = server::ServerConfig {
        tls: true,
        ..server::ServerConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap())
    };
    let server = server::start(config).await.unwrap();
    // The founding server commits its tokens' digests once it leads.
    let deadline = Instant::now() + PATIENCE;
    while server
        .ctx
        .state
        .read(|s| s.token_digest("server").is_none())
    {
        assert!(Instant::now() < deadline, "the tokens were never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

#[tokio::test]
async fn a_server_joins_with_the_server_token_and_keeps_the_ca_and_its_certificate() {
    let root = tempfile::tempdir().unwrap();
    let first = tls_server(&root.path().join("s1")).await;
    let addr = first.addr.to_string();
    let token = std::fs::read_to_string(root.path().join("s1/join-server")).unwrap();
    let dir = root.path().join("s2");
    let joined = server::trust::join(&dir, &addr, token.trim(), "s2", &LOOPBACK)
        .await
        .unwrap();
    let ca = std::fs::read_to_string(root.path().join("s1/ca.pem")).unwrap();
    assert_eq!(joined.ca.cert_pem(), ca);
    let fingerprint = joined.me.fingerprint().unwrap();
    let known = first.ctx.state.read(|s| {
        s.certificate(&fingerprint)
            .map(|(r, n)| (r.to_string(), n.to_string()))
    });
    assert_eq!(known, Some(("server".into(), "s2".into())));
    use std::os::unix::fs::PermissionsExt;
    for file in ["ca.pem", "ca-key.pem", "node.pem", "node-key.pem"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // It serves with what it got: its own TLS configuration builds on the CA.
    joined.server_config().unwrap();
    first.shutdown().await;
}

#[tokio::test]
async fn an_agent_token_or_a_foreign_one_does_not_join_a_server() {
    let root = tempfile::tempdir().unwrap();
    let first = tls_server(&root.path().join("s1")).await;
    let addr = first.addr.to_string();
    let agent_token = std::fs::read_to_string(root.path().join("s1/join-agent")).unwrap();
    let dir = root.path().join("s2");
    let err = server::trust::join(&dir, &addr, agent_token.trim(), "s2", &LOOPBACK)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("this is the agent join token"), "{err}");
    assert!(!dir.join("node.pem").exists());

    let other = tempfile::tempdir().unwrap();
    server::init(&server::ServerConfig::new(
        other.path().join("c"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap();
    let foreign = std::fs::read_to_string(other.path().join("c/join-server")).unwrap();
    let err = server::trust::join(&dir, &addr, foreign.trim(), "s2", &LOOPBACK)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the one the token names"), "{err}");
    assert!(!dir.join("node.pem").exists());
    let servers = first.ctx.state.read(|s| {
        s.trust
            .values()
            .filter(|v| v.starts_with("server/"))
            .count()
    });
    assert_eq!(
        servers, 1,
        "only the first server's own certificate is known"
    );
    first.shutdown().await;
}

/// A node's concurrent calls share one connection: the cluster's TLS offers HTTP/2, so an
/// agent's heartbeat, report and watch do not hold a connection each (5,000 agents would hold
/// 15,000 or more, past a server's usual file limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_the_cluster_speak_http2_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path()).await;
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let tls = pki::tls::client_config(&ca, None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let url = format!("https://{}/v1/cluster", server.addr);
    // One call first, as an agent registers before anything else: until a connection has
    // negotiated HTTP/2, the client cannot know it may share one, and calls made together
    // each dial.
    let first = http
        .get(&url)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    let calls = (0..8).map(|_| http.get(&url).bearer_auth(&server.token).send());
    for answer in futures_util::future::join_all(calls).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    }
    let port = server.addr.port();
    let established = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // Local port in the 2nd column as hex, state 01 (established): the server's ends.
    let ends = established
        .lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&format!(":{port:04X}")) && cols[3] == "01"
        })
        .count();
    assert_eq!(ends, 1, "eight concurrent calls used {ends} connections");
    server.shutdown().await;
}
