//! The DNS listeners and forwarding. UDP: one loop answers from the zone inline and hands each
//! forward to a task of its own. TCP (RFC 7766): `httpd`'s accept loop with a connection cap,
//! messages framed by a 2-byte length, answered one after another, several per connection,
//! closed when idle. A forward goes to the upstreams in turn over the query's own transport,
//! with the query under a fresh id; the first answer to the same question is relayed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::wire::{self, Query};
use super::{Action, Dns, Transport};

/// How long one upstream gets to answer a forward: 2 s, so that two upstreams tried in turn
/// still answer within glibc's default 5 s timeout, before the task's resolver gives up on us.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards in flight at most; one more is answered SERVFAIL at once. A node's tasks ask a few
/// names each, mostly at start-up, and the upstreams usually answer in milliseconds; this many
/// in flight means they have stopped answering, and holding more (a socket and a task each, for
/// up to [`FORWARD_TIMEOUT`] per upstream) would only delay the same SERVFAIL.
pub const MAX_FORWARDS: usize = 256;

/// Open TCP connections at most. Stub resolvers use TCP only to retry a truncated answer, one
/// short connection at a time.
pub const MAX_TCP_CONNECTIONS: usize = 256;

/// A TCP connection with no whole query for this long is closed; a query's answer must be
/// taken within it too. 10 s: RFC 7766 §6.2.3 asks for seconds, not minutes, and a stub
/// resolver sends its queries at once.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Bytes read of a UDP query: queries are a header, a name and an OPT record, far below this;
/// a longer datagram is cut to it and read as far as it goes.
const UDP_QUERY_MAX: usize = 4_096;

/// Pause after a failed receive, so an error that persists does not spin the loop.
const RECV_RETRY: Duration = Duration::from_millis(10);

/// Answers queries on `socket` until `shutdown` resolves; forwards in flight then are dropped.
pub async fn serve_udp(socket: UdpSocket, dns: Arc<Dns>, shutdown: impl Future<Output = ()>) {
    let socket = Arc::new(socket);
    let mut forwards = JoinSet::new();
    let mut buf = vec![0; UDP_QUERY_MAX];
    tokio::pin!(shutdown);
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            () = &mut shutdown => break,
        };
        // Reap finished forwards so the set holds only those in flight.
        while forwards.try_join_next().is_some() {}
        let (len, peer) = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!("cannot receive a DNS query: {e}");
                tokio::time::sleep(RECV_RETRY).await;
                continue;
            }
        };
        let packet = &buf[..len];
        match dns.handle(packet, Transport::Udp, peer) {
            Action::Reply(answer) => send(&socket, &answer, peer).await,
            Action::Drop => {}
            Action::Forward(query) => {
                let Some(slot) = dns.forward_slot() else {
                    tracing::debug!(
                        "DNS query from {peer} answered SERVFAIL: {MAX_FORWARDS} forwards in flight"
                    );
                    send(&socket, &dns.servfail(&query), peer).await;
                    continue;
                };
                let packet = packet.to_vec();
                let dns = Arc::clone(&dns);
                let socket = Arc::clone(&socket);
                forwards.spawn(async move {
                    let answer = forward(&dns, &packet, &query, Transport::Udp).await;
                    send(&socket, &answer, peer).await;
                    drop(slot);
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, answer: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(answer, peer).await {
        tracing::debug!("cannot send a DNS answer to {peer}: {e}");
    }
}

/// Answers queries on connections to `listener` until `shutdown` resolves; connections still
/// open then are closed.
pub async fn serve_tcp(listener: TcpListener, dns: Arc<Dns>, shutdown: impl Future<Output = ()>) {
    let serve_one = move |stream: TcpStream, peer: SocketAddr, _: httpd::Watcher| {
        connection(Arc::clone(&dns), stream, peer)
    };
    httpd::accept_loop(listener, MAX_TCP_CONNECTIONS, close, serve_one, shutdown).await;
}

/// Refuses a connection over the cap: DNS has no way to say why before a query, so it is just
/// closed and the client tries its next server.
fn close(_: TcpStream, _: usize) {}

async fn connection(dns: Arc<Dns>, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_message(&mut stream)).await {
            Ok(Ok(query)) => query,
            Ok(Err(e)) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!("DNS connection from {peer} ended: {e}");
                }
                return;
            }
            Err(_) => {
                tracing::debug!("DNS connection from {peer} idle for {TCP_IDLE:?}, closed");
                return;
            }
        };
        let answer = match dns.handle(&query, Transport::Tcp, peer) {
            Action::Reply(answer) => answer,
            // The framing may be intact, but a client sending what cannot be answered gets
            // nothing more.
            Action::Drop => return,
            Action::Forward(parsed) => match dns.forward_slot() {
                Some(_slot) => forward(&dns, &query, &parsed, Transport::Tcp).await,
                None => {
                    tracing::debug!(
                        "DNS query from {peer} answered SERVFAIL: {MAX_FORWARDS} forwards in flight"
                    );
                    dns.servfail(&parsed)
                }
            },
        };
        match tokio::time::timeout(TCP_IDLE, write_message(&mut stream, &answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("cannot send a DNS answer to {peer}: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("DNS client {peer} took no answer for {TCP_IDLE:?}, closed");
                return;
            }
        }
    }
}

/// One length-prefixed message; an empty one is an error, as it cannot be a query.
async fn read_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an empty message",
        ));
    }
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// Writes `message` with its length, in one write so it leaves in one segment. Messages are
/// built within [`wire::TCP_MAX`], and an upstream's answer was read under a 2-byte length.
async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Why an upstream's answer was not taken.
#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the answer was {0}")]
    Wire(#[from] wire::WireError),
}

/// The answer to `query` (read from `packet`) from the first upstream that gives one, under
/// the query's own id: an upstream answering SERVFAIL, NOTIMP or REFUSED gives way to the next
/// (as glibc's resolver does), and its answer is relayed only if none does better. SERVFAIL of
/// our own when none answers.
async fn forward(dns: &Dns, packet: &[u8], query: &Query, transport: Transport) -> Vec<u8> {
    let mut fallback = None;
    for &upstream in dns.upstreams() {
        let id = dns.next_id();
        let copy = wire::forwarded(packet, query, id);
        let mut answer =
            match tokio::time::timeout(FORWARD_TIMEOUT, ask(upstream, &copy, id, query, transport))
                .await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    tracing::debug!("DNS upstream {upstream} failed: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(
                        "DNS upstream {upstream} gave no answer within {FORWARD_TIMEOUT:?}"
                    );
                    continue;
                }
            };
        wire::set_id(&mut answer, query.id);
        let rcode = wire::rcode(&answer);
        if matches!(rcode, Some(wire::SERVFAIL | wire::NOTIMP | wire::REFUSED)) {
            tracing::debug!("DNS upstream {upstream} answered rcode {rcode:?}, trying the next");
            fallback = Some(answer);
            continue;
        }
        return dns.relayed(answer, query, transport);
    }
    match fallback {
        Some(answer) => dns.relayed(answer, query, transport),
        None => {
            tracing::debug!("no DNS upstream answered, SERVFAIL");
            dns.servfail(query)
        }
    }
}

impl Dns {
    /// An upstream's answer to pass on, counted. Over UDP one larger than the client takes
    /// (an upstream that ignored the size it was sent) becomes an empty answer with TC, so the
    /// client asks again over TCP.
    fn relayed(&self, answer: Vec<u8>, query: &Query, transport: Transport) -> Vec<u8> {
        self.counters
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if transport == Transport::Udp && answer.len() > query.udp_limit() {
            let mut reply = self.reply(query, wire::NOERROR);
            reply.tc = true;
            return wire::encode(&reply, wire::UDP_MIN).0;
        }
        answer
    }
}

async fn ask(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    asked: &Query,
    transport: Transport,
) -> Result<Vec<u8>, AskError> {
    match transport {
        Transport::Udp => ask_udp(upstream, query, id, asked).await,
        Transport::Tcp => ask_tcp(upstream, query, id, asked).await,
    }
}

/// Asks `upstream` over UDP from a socket of its own, so its source port is fresh and
/// only the upstream's datagrams reach it; datagrams that do not answer the question are
/// skipped.
async fn ask_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    asked: &Query,
) -> Result<Vec<u8>, AskError> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    // One byte more than the largest answer asked for, to tell one that is too large.
    let mut buf = vec![0; wire::UDP_MAX + 1];
    loop {
        let len = socket.recv(&mut buf).await?;
        let answer = &buf[..len];
        match wire::check_answer(answer, id, &asked.question) {
            Ok(()) => return Ok(answer.to_vec()),
            Err(e) => tracing::debug!("DNS upstream {upstream} sent a datagram skipped: {e}"),
        }
    }
}

/// Asks `upstream` over a TCP connection of its own.
async fn ask_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    asked: &Query,
) -> Result<Vec<u8>, AskError> {
    let mut stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    write_message(&mut stream, query).await?;
    let answer = read_message(&mut stream).await?;
    wire::check_answer(&answer, id, &asked.question)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::{Record, Zone};
    use super::*;
    use wire::{TYPE_A, parse_answer, query};

    /// Generous bound for anything a test waits for on a loaded machine.
    const PATIENCE: Duration = Duration::from_secs(20);

    async fn udp_server(dns: Arc<Dns>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(serve_udp(socket, dns, std::future::pending()));
        addr
    }

    async fn ask(server: SocketAddr, packet: &[u8]) -> wire::Parsed {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(packet, server).await.unwrap();
        let mut buf = vec![0; 65_535];
        let len = tokio::time::timeout(PATIENCE, client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        parse_answer(&buf[..len]).unwrap()
    }

    #[tokio::test]
    async fn an_upstream_that_fails_gives_way_to_the_next() {
        // A server for another domain with no upstreams of its own SERVFAILs "www.example".
        let servfailing = udp_server(Dns::new("other", vec![])).await;
        let good = Dns::new("example", vec![]);
        let mut zone = Zone::new();
        zone.insert("www.example", Record::A(Ipv4Addr::new(192, 0, 2, 80)));
        good.update(zone);
        let good = udp_server(good).await;
        let dns = Dns::new("outpost", vec![servfailing, good]);
        let front = udp_server(Arc::clone(&dns)).await;
        let answer = ask(front, &query(99, "www.example", TYPE_A, None)).await;
        assert_eq!((answer.id, answer.rcode), (99, wire::NOERROR));
        assert_eq!(wire::a(&answer.answers[0].2), Ipv4Addr::new(192, 0, 2, 80));
        assert_eq!(dns.snapshot().forwarded, 1);
        // Only failing upstreams: the last failure is relayed.
        let dns = Dns::new("outpost", vec![servfailing]);
        let front = udp_server(Arc::clone(&dns)).await;
        let answer = ask(front, &query(5, "www.example", TYPE_A, None)).await;
        assert_eq!((answer.id, answer.rcode), (5, wire::SERVFAIL));
        assert_eq!(dns.snapshot().forwarded, 1);
    }

    #[tokio::test]
    async fn no_upstream_answering_is_servfail() {
        // A bound socket that never answers, and a port with nothing on it.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let dns = Dns::new("outpost", vec![closed_addr, silent.local_addr().unwrap()]);
        let front = udp_server(Arc::clone(&dns)).await;
        let started = tokio::time::Instant::now();
        let answer = ask(front, &query(3, "example.com", TYPE_A, None)).await;
        assert_eq!((answer.id, answer.rcode), (3, wire::SERVFAIL));
        assert!(
            started.elapsed() >= FORWARD_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        let snapshot = dns.snapshot();
        assert_eq!(
            (snapshot.queries, snapshot.failed, snapshot.forwarded),
            (1, 1, 0)
        );
        // Nothing to forward to at all.
        let front = udp_server(Dns::new("outpost", vec![])).await;
        let answer = ask(front, &query(4, "example.com", TYPE_A, None)).await;
        assert_eq!(answer.rcode, wire::SERVFAIL);
    }

    #[tokio::test]
    async fn answers_to_other_questions_or_ids_are_skipped() {
        // An upstream that first answers a different id, then a different name, then right.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let (len, from) = upstream.recv_from(&mut buf).await.unwrap();
            let q = wire::parse_query(&buf[..len]).unwrap();
            let wrong_id =
                wire::parse_query(&query(q.id ^ 1, "example.com", TYPE_A, None)).unwrap();
            let wrong_name = wire::parse_query(&query(q.id, "example.org", TYPE_A, None)).unwrap();
            let a = Record::A(Ipv4Addr::new(192, 0, 2, 1));
            let answers = [&a];
            for asked in [&wrong_id, &wrong_name, &q] {
                let mut reply = wire::Reply::to(asked, wire::NOERROR);
                reply.answers = &answers;
                let (bytes, _) = wire::encode(&reply, 512);
                upstream.send_to(&bytes, from).await.unwrap();
            }
        });
        let dns = Dns::new("outpost", vec![upstream_addr]);
        let front = udp_server(dns).await;
        let answer = ask(front, &query(11, "Example.com", TYPE_A, None)).await;
        assert_eq!((answer.id, answer.rcode), (11, wire::NOERROR));
        assert_eq!(
            answer.question.unwrap().name.key().as_deref(),
            Some("example.com")
        );
        assert_eq!(wire::a(&answer.answers[0].2), Ipv4Addr::new(192, 0, 2, 1));
    }

    #[tokio::test]
    async fn an_oversized_upstream_answer_becomes_tc() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let (len, from) = upstream.recv_from(&mut buf).await.unwrap();
            let q = wire::parse_query(&buf[..len]).unwrap();
            let records: Vec<Record> = (0..60)
                .map(|i| Record::A(Ipv4Addr::new(192, 0, 2, i)))
                .collect();
            let answers: Vec<&Record> = records.iter().collect();
            let mut reply = wire::Reply::to(&q, wire::NOERROR);
            reply.answers = &answers;
            // Ignores the 512 bytes the query allows.
            let (bytes, _) = wire::encode(&reply, wire::TCP_MAX);
            assert!(bytes.len() > 512);
            upstream.send_to(&bytes, from).await.unwrap();
        });
        let front = udp_server(Dns::new("outpost", vec![upstream_addr])).await;
        let answer = ask(front, &query(12, "big.example", TYPE_A, None)).await;
        assert!(answer.tc);
        assert_eq!((answer.id, answer.answers.len()), (12, 0));
    }
}
