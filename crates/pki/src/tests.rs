//! Real TLS handshakes over loopback sockets between configurations made here.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Serves one connection with `config`; returns the client's result of writing `ping` and
/// reading the answer, and the fingerprint of the certificate the client presented.
fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<String, String>, Option<String>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 4];
        if tls.read_exact(&mut buf).is_err() {
            return None;
        }
        let _ = tls.write_all(b"pong");
        let _ = tls.flush();
        Some(
            tls.conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(tls::fingerprint),
        )
    });
    let tcp = TcpStream::connect(addr).unwrap();
    let name = ServerName::IpAddress(LOOPBACK.into());
    let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let result = (|| {
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })();
    drop(tls);
    (result, served.join().unwrap().flatten())
}

struct Cluster {
    ca: Ca,
    server: Identity,
    agent: Identity,
}

fn cluster() -> Cluster {
    let ca = Ca::generate().unwrap();
    let server = ca.issue(NodeRole::Server, "s1", &[LOOPBACK]).unwrap();
    let agent = ca.issue(NodeRole::Agent, "a1", &[LOOPBACK]).unwrap();
    Cluster { ca, server, agent }
}

#[test]
fn a_node_certificate_is_trusted_by_its_ca_in_both_directions() {
    let c = cluster();
    let server = tls::server_config(c.ca.cert_pem(), &c.server, ClientAuth::Required).unwrap();
    let client = tls::client_config(c.ca.cert_pem(), Some(&c.agent)).unwrap();
    let (result, peer) = handshake(server, client);
    assert_eq!(result.unwrap(), "pong");
    assert_eq!(peer, Some(c.agent.fingerprint().unwrap()));
}

#[test]
fn a_server_of_another_ca_is_refused() {
    let c = cluster();
    let other = cluster();
    let server =
        tls::server_config(other.ca.cert_pem(), &other.server, ClientAuth::Optional).unwrap();
    let client = tls::client_config(c.ca.cert_pem(), None).unwrap();
    let (result, _) = handshake(server, client);
    assert!(result.unwrap_err().contains("invalid peer certificate"));
}

#[test]
fn a_required_client_certificate_must_be_of_the_same_ca() {
    let c = cluster();
    let other = cluster();
    let server = tls::server_config(c.ca.cert_pem(), &c.server, ClientAuth::Required).unwrap();
    let client = tls::client_config(c.ca.cert_pem(), Some(&other.agent)).unwrap();
    let (result, peer) = handshake(server, client);
    assert!(result.is_err());
    assert_eq!(peer, None);
    let server = tls::server_config(c.ca.cert_pem(), &c.server, ClientAuth::Required).unwrap();
    let (result, _) = handshake(server, tls::client_config(c.ca.cert_pem(), None).unwrap());
    assert!(result.is_err(), "no certificate at all is refused too");
}

#[test]
fn a_joiner_trusts_a_server_only_when_the_token_digest_is_its_ca() {
    let c = cluster();
    let server = || tls::server_config(c.ca.cert_pem(), &c.server, ClientAuth::Optional).unwrap();
    let right = tls::pinned_client_config(&c.ca.digest().unwrap()).unwrap();
    assert_eq!(handshake(server(), right).0.unwrap(), "pong");

    let other = Ca::generate().unwrap();
    let wrong = tls::pinned_client_config(&other.digest().unwrap()).unwrap();
    let err = handshake(server(), wrong).0.unwrap_err();
    assert!(err.contains("not the one the token names"), "{err}");
    assert!(err.contains("the secret was not sent"), "{err}");
}

#[test]
fn a_server_posing_with_the_right_ca_but_a_foreign_key_is_refused() {
    // The chain holds the real CA certificate, but the server's own is signed by another key.
    let c = cluster();
    let impostor = cluster();
    let mut chain_pem = impostor.server.cert_pem.clone();
    chain_pem.push_str(c.ca.cert_pem());
    let config = tls::server_config(
        impostor.ca.cert_pem(),
        &Identity {
            cert_pem: chain_pem,
            key_pem: impostor.server.key_pem.clone(),
        },
        ClientAuth::Optional,
    )
    .unwrap();
    let pinned = tls::pinned_client_config(&c.ca.digest().unwrap()).unwrap();
    assert!(handshake(config, pinned).0.is_err());
}

#[test]
fn certificates_carry_their_role() {
    let c = cluster();
    let server = tls::first_cert(&c.server.cert_pem).unwrap();
    let agent = tls::first_cert(&c.agent.cert_pem).unwrap();
    assert!(tls::has_role(&server, NodeRole::Server));
    assert!(!tls::has_role(&server, NodeRole::Agent));
    assert!(tls::has_role(&agent, NodeRole::Agent));
    assert!(!tls::has_role(&agent, NodeRole::Server));
}

#[test]
fn a_ca_reads_back_from_its_files_and_signs_alike() {
    let c = cluster();
    let again = Ca::from_pem(c.ca.identity().clone()).unwrap();
    assert_eq!(again.digest().unwrap(), c.ca.digest().unwrap());
    assert_eq!(ca_digest(c.ca.cert_pem()).unwrap().len(), 64);
    let node = again.issue(NodeRole::Agent, "a2", &[LOOPBACK]).unwrap();
    let server = tls::server_config(c.ca.cert_pem(), &c.server, ClientAuth::Required).unwrap();
    let client = tls::client_config(c.ca.cert_pem(), Some(&node)).unwrap();
    assert_eq!(handshake(server, client).0.unwrap(), "pong");
    assert!(
        Ca::from_pem(Identity {
            cert_pem: "junk".into(),
            key_pem: c.ca.identity().key_pem.clone()
        })
        .is_err()
    );
}
