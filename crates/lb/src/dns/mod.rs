//! The node's DNS server, the resolver of every task: it answers for Outpost's own domain from a
//! [`Zone`] the caller builds (services' virtual IPs and SRV records) and forwards every other
//! name to the node's upstream servers.
//!
//! - [`Dns`]: the current zone (swapped whole by [`Dns::update`]), the upstreams and counters
//!   ([`Dns::snapshot`]). What a query gets: a name under the domain that the zone has is
//!   answered with its records of the asked type (all of them for ANY), or NOERROR with none
//!   (NODATA) when it has only others; a name under the domain the zone lacks is NXDOMAIN;
//!   anything else is forwarded, and no upstream answering is SERVFAIL.
//! - [`serve_udp`], [`serve_tcp`] (`serve.rs`): the listeners, and forwarding over the
//!   transport the query came by.
//! - `wire.rs`: the wire codec (pure); `zone.rs`: [`Zone`] and [`Record`].
//! - [`nameservers`]: the upstreams a resolv.conf names.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use lb::dns::{Dns, Record, Zone};
//! let upstreams = lb::dns::nameservers(&std::fs::read_to_string("/etc/resolv.conf")?);
//! let dns = Dns::new("outpost", upstreams);
//! let mut zone = Zone::new();
//! zone.insert("web.app.outpost", Record::A("10.254.0.7".parse().unwrap()));
//! dns.update(zone);
//! let udp = tokio::net::UdpSocket::bind("10.254.0.1:53").await?;
//! let tcp = tokio::net::TcpListener::bind("10.254.0.1:53").await?;
//! tokio::spawn(lb::dns::serve_udp(udp, dns.clone(), std::future::pending()));
//! tokio::spawn(lb::dns::serve_tcp(tcp, dns, std::future::pending()));
//! # Ok(()) }
//! ```

mod serve;
mod wire;
mod zone;

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::rng::Rng;
pub use serve::{
    FORWARD_TIMEOUT, MAX_FORWARDS, MAX_TCP_CONNECTIONS, TCP_IDLE, serve_tcp, serve_udp,
};
pub use wire::TTL;
use wire::{Bad, Query, Reply};
pub use zone::{Record, Zone, ZoneError};

/// The DNS server's state, shared by its listeners.
#[derive(Debug)]
pub struct Dns {
    /// Lowercase, without the trailing dot.
    domain: String,
    zone: RwLock<Arc<Zone>>,
    upstreams: Vec<SocketAddr>,
    /// Forwards in flight, at most [`MAX_FORWARDS`].
    forwards: Arc<Semaphore>,
    /// Ids of forwarded queries. Not cryptographic: the fresh socket (and so random source
    /// port) of each forward is the main defence against forged answers; the id adds 16 bits.
    ids: Rng,
    counters: Counters,
}

/// How a query came, which bounds its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug)]
enum Action {
    Reply(Vec<u8>),
    Forward(Query),
    Drop,
}

impl Dns {
    /// A server answering for `domain` ("outpost": lowercase, a trailing dot allowed) from an
    /// empty zone until [`Dns::update`], and forwarding other names to `upstreams`, tried in
    /// turn. `upstreams` must not include this server's own address, or forwards go round
    /// until they time out.
    pub fn new(domain: &str, upstreams: Vec<SocketAddr>) -> Arc<Dns> {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        // std's per-process random hash keys: a seed no other process can guess, with no
        // dependency.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Arc::new(Dns {
            domain: domain.to_ascii_lowercase(),
            zone: RwLock::new(Arc::new(Zone::new())),
            upstreams,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            ids: Rng::new(seed),
            counters: Counters::default(),
        })
    }

    /// Answers from `zone` from now on; queries being answered finish with the old one.
    pub fn update(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    pub fn snapshot(&self) -> DnsSnapshot {
        self.counters.snapshot()
    }

    fn zone(&self) -> Arc<Zone> {
        Arc::clone(&self.zone.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// What `packet`, from `peer`, gets: an answer from the zone or an error, a forward, or
    /// nothing.
    fn handle(&self, packet: &[u8], transport: Transport, peer: SocketAddr) -> Action {
        self.counters.queries.fetch_add(1, Relaxed);
        let query = match wire::parse_query(packet) {
            Ok(query) => query,
            Err(Bad::Drop(e)) => {
                tracing::debug!("DNS message from {peer} dropped: {e}");
                self.counters.failed.fetch_add(1, Relaxed);
                return Action::Drop;
            }
            Err(Bad::FormErr {
                id,
                opcode,
                rd,
                question,
                error,
            }) => {
                tracing::debug!("DNS query from {peer} answered FORMERR: {error}");
                let reply = Reply {
                    id,
                    opcode,
                    rd,
                    cd: false,
                    aa: false,
                    ra: self.recursion(),
                    tc: false,
                    rcode: wire::FORMERR,
                    question: Some(&question),
                    answers: &[],
                    edns: None,
                };
                return Action::Reply(self.fail(&reply));
            }
        };
        let limit = match transport {
            Transport::Udp => query.udp_limit(),
            Transport::Tcp => wire::TCP_MAX,
        };
        if query.opcode != wire::OPCODE_QUERY {
            tracing::debug!(
                "DNS query from {peer} answered NOTIMP: opcode {}",
                query.opcode
            );
            return Action::Reply(self.fail(&self.reply(&query, wire::NOTIMP)));
        }
        if let Some(edns) = query.edns
            && edns.version != 0
        {
            tracing::debug!(
                "DNS query from {peer} answered BADVERS: EDNS version {}",
                edns.version
            );
            return Action::Reply(self.fail(&self.reply(&query, wire::BADVERS)));
        }
        if !query.question.name.is_within(&self.domain) {
            return Action::Forward(query);
        }
        let question = &query.question;
        if !matches!(question.qclass, wire::CLASS_IN | wire::CLASS_ANY) {
            tracing::debug!(
                "DNS query from {peer} answered REFUSED: class {}",
                question.qclass
            );
            return Action::Reply(self.fail(&self.reply(&query, wire::REFUSED)));
        }
        // IXFR, AXFR, MAILB, MAILA: zone transfers and obsolete types.
        if (251..=254).contains(&question.qtype) {
            tracing::debug!(
                "DNS query from {peer} answered NOTIMP: type {}",
                question.qtype
            );
            return Action::Reply(self.fail(&self.reply(&query, wire::NOTIMP)));
        }
        let zone = self.zone();
        let records = match question.name.key() {
            // The domain itself always exists, even with an empty zone.
            Some(key) if key == self.domain => Some(zone.lookup(&key).unwrap_or(&[])),
            Some(key) => zone.lookup(&key),
            None => None,
        };
        let Some(records) = records else {
            self.counters.nxdomain.fetch_add(1, Relaxed);
            let mut reply = self.reply(&query, wire::NXDOMAIN);
            reply.aa = true;
            return Action::Reply(self.encode(&reply, limit));
        };
        let answers: Vec<&Record> = records
            .iter()
            .filter(|r| wire::wanted(question.qtype, r))
            .collect();
        self.counters.answered.fetch_add(1, Relaxed);
        let mut reply = self.reply(&query, wire::NOERROR);
        reply.aa = true;
        reply.answers = &answers;
        Action::Reply(self.encode(&reply, limit))
    }

    fn recursion(&self) -> bool {
        !self.upstreams.is_empty()
    }

    fn reply<'a>(&self, query: &'a Query, rcode: u16) -> Reply<'a> {
        let mut reply = Reply::to(query, rcode);
        reply.ra = self.recursion();
        reply
    }

    fn encode(&self, reply: &Reply<'_>, limit: usize) -> Vec<u8> {
        let (bytes, truncated) = wire::encode(reply, limit);
        if truncated {
            self.counters.truncated.fetch_add(1, Relaxed);
        }
        bytes
    }

    /// An error answer, counted as failed; it has no records, so it always fits.
    fn fail(&self, reply: &Reply<'_>) -> Vec<u8> {
        self.counters.failed.fetch_add(1, Relaxed);
        wire::encode(reply, wire::UDP_MIN).0
    }

    /// SERVFAIL for a query that could not be forwarded.
    fn servfail(&self, query: &Query) -> Vec<u8> {
        self.fail(&self.reply(query, wire::SERVFAIL))
    }

    /// A slot for one more forward, if fewer than [`MAX_FORWARDS`] are in flight.
    fn forward_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.forwards).try_acquire_owned().ok()
    }

    fn next_id(&self) -> u16 {
        self.ids.next_u64() as u16
    }
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    nxdomain: AtomicU64,
    forwarded: AtomicU64,
    failed: AtomicU64,
    truncated: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DnsSnapshot {
        DnsSnapshot {
            queries: self.queries.load(Relaxed),
            answered: self.answered.load(Relaxed),
            nxdomain: self.nxdomain.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
        }
    }
}

/// What a [`Dns`] has done since it was made. Every query ends as exactly one of `answered`,
/// `nxdomain`, `forwarded` or `failed`, so once none is in flight they add up to `queries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DnsSnapshot {
    /// Messages received, malformed ones included.
    pub queries: u64,
    /// Answered from the zone with NOERROR, with records or without (NODATA).
    pub answered: u64,
    /// Answered from the zone with NXDOMAIN.
    pub nxdomain: u64,
    /// Answered with an upstream's answer, whatever its response code.
    pub forwarded: u64,
    /// Dropped (unreadable), or answered with an error of this server's: FORMERR, NOTIMP,
    /// REFUSED, BADVERS, or SERVFAIL when no upstream answered or too many forwards were in
    /// flight.
    pub failed: u64,
    /// Answers from the zone sent with TC set, records left out (counted in `answered` too).
    pub truncated: u64,
}

/// The `nameserver` lines of a resolv.conf text, in order, as port-53 addresses (the only port
/// glibc's resolver uses). An IPv6 address may carry a numeric scope (`fe80::1%2`); lines that
/// do not hold an address are skipped.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let word = words.next()?;
            let addr = nameserver(word);
            if addr.is_none() {
                tracing::debug!("resolv.conf nameserver {word:?} is not an address, skipped");
            }
            addr
        })
        .collect()
}

fn nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (ip, scope) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope: u32 = scope.parse().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::wire::{self, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_SRV, parse_answer, query};
    use super::*;

    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5353);

    fn dns() -> Arc<Dns> {
        let dns = Dns::new("Outpost.", vec!["192.0.2.1:53".parse().unwrap()]);
        let mut zone = Zone::new();
        zone.insert("web.app.outpost", Record::A(Ipv4Addr::new(10, 0, 0, 1)));
        zone.insert("web.app.outpost", Record::Aaaa("fd00::1".parse().unwrap()));
        zone.insert("db.app.outpost", Record::A(Ipv4Addr::new(10, 0, 0, 2)));
        zone.insert(
            "_http._tcp.web.app.outpost",
            Record::Srv {
                priority: 0,
                weight: 1,
                port: 8080,
                target: "web.app.outpost".to_owned(),
            },
        );
        dns.update(zone);
        dns
    }

    /// The answer `dns` gives to a query for `name` and `qtype` over UDP.
    fn ask(dns: &Dns, name: &str, qtype: u16) -> wire::Parsed {
        match dns.handle(&query(42, name, qtype, None), Transport::Udp, PEER) {
            Action::Reply(bytes) => parse_answer(&bytes).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn types(parsed: &wire::Parsed) -> Vec<u16> {
        parsed.answers.iter().map(|a| a.1).collect()
    }

    #[test]
    fn a_aaaa_and_srv_queries_get_their_records() {
        let dns = dns();
        let a = ask(&dns, "web.app.outpost", TYPE_A);
        assert_eq!((a.rcode, a.aa, a.id), (wire::NOERROR, true, 42));
        assert_eq!(types(&a), [TYPE_A]);
        assert_eq!(wire::a(&a.answers[0].2), Ipv4Addr::new(10, 0, 0, 1));
        let aaaa = ask(&dns, "web.app.outpost", TYPE_AAAA);
        assert_eq!(types(&aaaa), [TYPE_AAAA]);
        assert_eq!(
            wire::aaaa(&aaaa.answers[0].2),
            "fd00::1".parse::<Ipv6Addr>().unwrap()
        );
        let srv = ask(&dns, "_http._tcp.web.app.outpost", TYPE_SRV);
        assert_eq!(types(&srv), [TYPE_SRV]);
        assert_eq!(&srv.answers[0].2[..6], &[0, 0, 0, 1, 0x1f, 0x90]);
    }

    #[test]
    fn any_gets_every_record_of_the_name() {
        let any = ask(&dns(), "web.app.outpost", TYPE_ANY);
        assert_eq!(any.rcode, wire::NOERROR);
        assert_eq!(types(&any), [TYPE_A, TYPE_AAAA]);
    }

    #[test]
    fn missing_names_are_nxdomain_and_missing_types_nodata() {
        let dns = dns();
        let nx = ask(&dns, "cache.app.outpost", TYPE_A);
        assert_eq!(
            (nx.rcode, nx.aa, nx.answers.len()),
            (wire::NXDOMAIN, true, 0)
        );
        let nodata = ask(&dns, "db.app.outpost", TYPE_AAAA);
        assert_eq!((nodata.rcode, nodata.answers.len()), (wire::NOERROR, 0));
        let nodata = ask(&dns, "db.app.outpost", TYPE_SRV);
        assert_eq!((nodata.rcode, nodata.answers.len()), (wire::NOERROR, 0));
        // Names between the domain and a record exist, and so does the domain itself.
        for name in ["_tcp.web.app.outpost", "app.outpost", "outpost"] {
            let between = ask(&dns, name, TYPE_A);
            assert_eq!(
                (between.rcode, between.answers.len()),
                (wire::NOERROR, 0),
                "{name}"
            );
        }
        let snapshot = dns.snapshot();
        assert_eq!((snapshot.nxdomain, snapshot.answered), (1, 5));
    }

    #[test]
    fn names_match_in_any_case_and_the_question_is_echoed_as_asked() {
        let a = ask(&dns(), "WeB.ApP.OutPost", TYPE_A);
        assert_eq!(types(&a), [TYPE_A]);
        assert_eq!(
            a.question.unwrap().name.wire(),
            b"\x03WeB\x03ApP\x07OutPost\x00"
        );
        assert_eq!(a.answers[0].0, "web.app.outpost");
    }

    #[test]
    fn names_outside_the_domain_are_forwarded() {
        let dns = dns();
        for name in ["example.com", "outpost.example.com", "notoutpost", ""] {
            let packet = query(1, name, TYPE_A, None);
            assert!(
                matches!(
                    dns.handle(&packet, Transport::Udp, PEER),
                    Action::Forward(_)
                ),
                "{name}"
            );
        }
        // Without upstreams recursion is not offered.
        let lonely = Dns::new("outpost", vec![]);
        assert!(!lonely.recursion());
        let nx = ask(&lonely, "web.outpost", TYPE_A);
        assert_eq!(nx.flags & 0x0080, 0);
    }

    #[test]
    fn an_update_replaces_the_zone_whole() {
        let dns = dns();
        let mut zone = Zone::new();
        zone.insert("cache.app.outpost", Record::A(Ipv4Addr::new(10, 0, 0, 9)));
        dns.update(zone);
        assert_eq!(ask(&dns, "web.app.outpost", TYPE_A).rcode, wire::NXDOMAIN);
        assert_eq!(types(&ask(&dns, "cache.app.outpost", TYPE_A)), [TYPE_A]);
    }

    #[test]
    fn udp_answers_are_truncated_at_the_clients_size_and_tcp_ones_are_not() {
        let dns = Dns::new("outpost", vec![]);
        let mut zone = Zone::new();
        for i in 0..100 {
            zone.insert("many.outpost", Record::A(Ipv4Addr::new(10, 0, 1, i)));
        }
        dns.update(zone);
        let reply = |packet: &[u8], transport| match dns.handle(packet, transport, PEER) {
            Action::Reply(bytes) => bytes,
            other => panic!("{other:?}"),
        };
        let plain = query(1, "many.outpost", TYPE_A, None);
        let udp = reply(&plain, Transport::Udp);
        assert!(udp.len() <= 512 && parse_answer(&udp).unwrap().tc);
        let edns = reply(
            &query(1, "many.outpost", TYPE_A, Some(4096)),
            Transport::Udp,
        );
        assert!(edns.len() <= 1232 && edns.len() > 1100 && parse_answer(&edns).unwrap().tc);
        let tcp = parse_answer(&reply(&plain, Transport::Tcp)).unwrap();
        assert!(!tcp.tc);
        assert_eq!(tcp.answers.len(), 100);
        assert_eq!(dns.snapshot().truncated, 2);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing_and_count_as_failed() {
        let dns = dns();
        let mut two = query(7, "web.app.outpost", TYPE_A, None);
        two[5] = 2;
        match dns.handle(&two, Transport::Udp, PEER) {
            Action::Reply(bytes) => {
                let parsed = parse_answer(&bytes).unwrap();
                assert_eq!((parsed.id, parsed.rcode), (7, wire::FORMERR));
                assert!(parsed.question.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            dns.handle(b"\x01\x02garbage", Transport::Udp, PEER),
            Action::Drop
        ));
        let mut notify = query(8, "web.app.outpost", TYPE_A, None);
        notify[2] |= 4 << 3;
        match dns.handle(&notify, Transport::Udp, PEER) {
            Action::Reply(bytes) => assert_eq!(parse_answer(&bytes).unwrap().rcode, wire::NOTIMP),
            other => panic!("{other:?}"),
        }
        let mut v1 = query(9, "web.app.outpost", TYPE_A, Some(1232));
        let at = v1.len() - 5;
        v1[at] = 1;
        match dns.handle(&v1, Transport::Udp, PEER) {
            Action::Reply(bytes) => assert_eq!(parse_answer(&bytes).unwrap().rcode, wire::BADVERS),
            other => panic!("{other:?}"),
        }
        let axfr = ask(&dns, "app.outpost", 252);
        assert_eq!(axfr.rcode, wire::NOTIMP);
        let snapshot = dns.snapshot();
        assert_eq!((snapshot.queries, snapshot.failed), (5, 5));
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# a comment\n; another\nsearch example.com\nnameserver 10.0.0.2\n\
                    nameserver  ::1 # trailing\n\tnameserver fe80::1%2\nnameserver fe80::1%eth0\n\
                    nameserver bogus\nnameserver\nnameservers 10.0.0.9\noptions ndots:2\n";
        assert_eq!(
            nameservers(text),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        assert!(nameservers("").is_empty());
    }
}
