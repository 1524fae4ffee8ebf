//! The DNS server over real sockets: glibc's own resolver (`getent`, in a mount namespace whose
//! /etc/resolv.conf names the test's server) for names, search domains, NXDOMAIN, forwarding
//! and the retry over TCP of a truncated answer; hand-built packets over UDP and TCP for SRV,
//! EDNS0 sizes, forwarding over TCP, garbage and shutdown.
//!
//! glibc's resolver only uses port 53, so each glibc test binds port 53 of its own 127.0.53.x
//! address. Those tests need root and util-linux's `unshare`; without them they are skipped
//! with the reason printed, unless `CI` is set, where they fail.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use lb::dns::{Dns, DnsSnapshot, Record, Zone};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Generous bound for anything a test waits for on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const NOERROR: u16 = 0;
const NXDOMAIN: u16 = 3;

// ---- servers

/// Binds UDP and TCP on the same `ip` and `port` (a free one for 0) and serves `dns` on both.
async fn serve(dns: &Arc<Dns>, ip: &str, port: u16) -> SocketAddr {
    let (udp, tcp) = bind_both(ip, port).await;
    let addr = udp.local_addr().unwrap();
    tokio::spawn(lb::dns::serve_udp(
        udp,
        Arc::clone(dns),
        std::future::pending(),
    ));
    tokio::spawn(lb::dns::serve_tcp(
        tcp,
        Arc::clone(dns),
        std::future::pending(),
    ));
    addr
}

async fn bind_both(ip: &str, port: u16) -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, port)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        // With port 0 the TCP port of the same number may be taken: pick another.
        match TcpListener::bind(addr).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) if port == 0 => eprintln!("{addr} taken for TCP ({e}), another"),
            Err(e) => panic!("cannot bind TCP {addr}: {e}"),
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

fn zone(records: &[(&str, Record)]) -> Zone {
    let mut zone = Zone::new();
    for (name, record) in records {
        zone.insert(name, record.clone());
    }
    zone
}

fn a(ip: [u8; 4]) -> Record {
    Record::A(Ipv4Addr::from(ip))
}

// ---- glibc

/// Why glibc's resolver cannot be pointed at a test server here, if it cannot.
fn glibc_unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Some("not root: port 53 and a mount namespace need it".to_owned());
    }
    match std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Some(format!(
                "`unshare --mount` fails: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return Some(format!("no util-linux unshare: {e}")),
    }
    match std::process::Command::new("getent")
        .arg("--version")
        .output()
    {
        Ok(_) => None,
        Err(e) => Some(format!("no getent: {e}")),
    }
}

/// Whether to go on with a glibc test: skipped with the reason printed, failed under CI.
fn glibc_or_skip(test: &str) -> bool {
    match glibc_unavailable() {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => panic!("{test}: {reason}"),
        Some(reason) => {
            eprintln!("{test} skipped: {reason}");
            false
        }
    }
}

struct Getent {
    code: Option<i32>,
    stdout: String,
}

impl Getent {
    /// The addresses `getent ahosts*` printed, each once, in order.
    fn addresses(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for line in self.stdout.lines() {
            if let Some(addr) = line.split_whitespace().next()
                && !seen.iter().any(|s| s == addr)
            {
                seen.push(addr.to_owned());
            }
        }
        seen
    }
}

/// Runs `getent args…` with glibc reading `resolv_conf` as /etc/resolv.conf (bind-mounted
/// in a mount namespace of its own, so the machine's file is untouched).
async fn getent(resolv_conf: &str, args: &[&str]) -> Getent {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(resolv_conf.as_bytes()).unwrap();
    file.flush().unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(["--mount", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec getent "$@""#)
        .arg(&path)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("getent finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("mount"),
        "the test's resolv.conf was not mounted: {stderr}"
    );
    Getent {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn resolv_conf(server: SocketAddr, extra: &str) -> String {
    format!("nameserver {}\n{extra}", server.ip())
}

// ---- hand-built packets

fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        m.extend_from_slice(&[0, 0, 41]);
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&[0; 6]);
    }
    m
}

#[derive(Debug)]
struct Answer {
    id: u16,
    rcode: u16,
    tc: bool,
    aa: bool,
    /// The question's name as written back.
    question: String,
    /// Each answer's type and data (SRV: priority, weight, port and target).
    records: Vec<(u16, String)>,
}

fn parse(m: &[u8]) -> Answer {
    let u16_at = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
    let (qd, an) = (u16_at(4), u16_at(6));
    assert_eq!(qd, 1, "one question in {m:?}");
    let mut pos = 12;
    let question = read_name(m, &mut pos);
    pos += 4;
    let mut records = Vec::new();
    for _ in 0..an {
        read_name(m, &mut pos);
        let rtype = u16_at(pos);
        let len = usize::from(u16_at(pos + 8));
        let data = &m[pos + 10..pos + 10 + len];
        let text = match rtype {
            TYPE_A => Ipv4Addr::from([data[0], data[1], data[2], data[3]]).to_string(),
            TYPE_AAAA => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(data).unwrap()).to_string(),
            TYPE_SRV => {
                let mut at = pos + 16;
                let target = read_name(m, &mut at);
                let f = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
                format!("{} {} {} {target}", f(0), f(2), f(4))
            }
            _ => format!("{data:?}"),
        };
        records.push((rtype, text));
        pos += 10 + len;
    }
    Answer {
        id: u16_at(0),
        rcode: u16_at(2) & 0xf,
        tc: m[2] & 0x02 != 0,
        aa: m[2] & 0x04 != 0,
        question,
        records,
    }
}

/// A dotted name at `pos` (pointers followed), moving `pos` past it.
fn read_name(m: &[u8], pos: &mut usize) -> String {
    let mut labels = Vec::new();
    let mut at = *pos;
    let mut jumped = false;
    loop {
        let len = m[at];
        if len & 0xc0 == 0xc0 {
            if !jumped {
                *pos = at + 2;
                jumped = true;
            }
            at = usize::from(u16::from_be_bytes([len & 0x3f, m[at + 1]]));
            continue;
        }
        if len == 0 {
            if !jumped {
                *pos = at + 1;
            }
            return labels.join(".");
        }
        let len = usize::from(len);
        labels.push(String::from_utf8_lossy(&m[at + 1..at + 1 + len]).into_owned());
        at += 1 + len;
    }
}

async fn ask_udp(server: SocketAddr, packet: &[u8]) -> Answer {
    let client = UdpSocket::bind((server.ip(), 0)).await.unwrap();
    client.send_to(packet, server).await.unwrap();
    let mut buf = vec![0; 65_535];
    let len = tokio::time::timeout(PATIENCE, client.recv(&mut buf))
        .await
        .expect("an answer over UDP")
        .unwrap();
    parse(&buf[..len])
}

async fn ask_tcp(stream: &mut TcpStream, packet: &[u8]) -> Answer {
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, async {
        let len = stream.read_u16().await.unwrap();
        let mut answer = vec![0; usize::from(len)];
        stream.read_exact(&mut answer).await.unwrap();
        answer
    })
    .await
    .expect("an answer over TCP");
    parse(&answer)
}

/// Polls `dns`'s counters until `check` holds; counters of an answer are updated before it
/// is sent, but a test may read them as the server is still on it.
async fn wait_counters(dns: &Dns, what: &str, check: impl Fn(&DnsSnapshot) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let snapshot = dns.snapshot();
        if check(&snapshot) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- glibc tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_resolves_service_names_in_any_case() {
    if !glibc_or_skip("glibc_resolves_service_names_in_any_case") {
        return;
    }
    let dns = Dns::new("outpost", vec![]);
    dns.update(zone(&[
        ("web.outpost", a([10, 254, 0, 7])),
        ("api.outpost", a([10, 254, 0, 8])),
        ("api.outpost", Record::Aaaa("fd00:254::8".parse().unwrap())),
    ]));
    let server = serve(&dns, "127.0.53.1", 53).await;
    let conf = resolv_conf(server, "search outpost\n");
    let web = getent(&conf, &["ahostsv4", "web.outpost"]).await;
    assert_eq!(web.code, Some(0), "{}", web.stdout);
    assert_eq!(web.addresses(), ["10.254.0.7"]);
    let upper = getent(&conf, &["ahostsv4", "WEB.Outpost"]).await;
    assert_eq!(upper.addresses(), ["10.254.0.7"]);
    // `getent hosts` asks AAAA first: NODATA for web makes glibc ask A next.
    let web = getent(&conf, &["hosts", "web.outpost"]).await;
    assert!(web.stdout.starts_with("10.254.0.7 "), "{}", web.stdout);
    let api = getent(&conf, &["hosts", "api.outpost"]).await;
    assert!(api.stdout.starts_with("fd00:254::8 "), "{}", api.stdout);
    // NODATA sends glibc on through the search list ("web.outpost.outpost", NXDOMAIN), but
    // nothing under the domain is forwarded or fails.
    let snapshot = dns.snapshot();
    assert_eq!(
        (snapshot.forwarded, snapshot.failed),
        (0, 0),
        "{snapshot:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_completes_short_names_with_the_search_domains() {
    if !glibc_or_skip("glibc_completes_short_names_with_the_search_domains") {
        return;
    }
    let dns = Dns::new("outpost", vec![]);
    dns.update(zone(&[
        ("db.app.outpost", a([10, 254, 1, 1])),
        ("db.other.outpost", a([10, 254, 2, 1])),
        ("app_db.outpost", a([10, 254, 3, 1])),
    ]));
    let server = serve(&dns, "127.0.53.2", 53).await;
    let conf = resolv_conf(server, "search app.outpost outpost\n");
    let db = getent(&conf, &["ahostsv4", "db"]).await;
    assert_eq!(db.addresses(), ["10.254.1.1"], "{}", db.stdout);
    // Not in the stack's own domain: "app_db.app.outpost" is NXDOMAIN, "app_db.outpost" is it.
    let app_db = getent(&conf, &["ahostsv4", "app_db"]).await;
    assert_eq!(app_db.addresses(), ["10.254.3.1"], "{}", app_db.stdout);
    let other = getent(&conf, &["ahostsv4", "db.other"]).await;
    assert_eq!(other.addresses(), ["10.254.2.1"], "{}", other.stdout);
    assert!(dns.snapshot().nxdomain >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_gets_nxdomain_for_a_name_the_zone_lacks() {
    if !glibc_or_skip("glibc_gets_nxdomain_for_a_name_the_zone_lacks") {
        return;
    }
    // An upstream that would answer anything, to show nothing under the domain goes there.
    let upstream = Dns::new("", vec![]);
    upstream.update(zone(&[("gone.outpost", a([192, 0, 2, 1]))]));
    let upstream_addr = serve(&upstream, "127.0.0.1", 0).await;
    let dns = Dns::new("outpost", vec![upstream_addr]);
    dns.update(zone(&[("web.outpost", a([10, 254, 0, 7]))]));
    let server = serve(&dns, "127.0.53.3", 53).await;
    // The search list is only "outpost", so every name glibc tries is under the domain.
    let conf = resolv_conf(server, "search outpost\n");
    let started = tokio::time::Instant::now();
    let gone = getent(&conf, &["ahostsv4", "gone.outpost"]).await;
    // getent's "not found" (2), at once: NXDOMAIN is final, not a timeout.
    assert_eq!(gone.code, Some(2), "{}", gone.stdout);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let snapshot = dns.snapshot();
    assert!(snapshot.nxdomain >= 1, "{snapshot:?}");
    assert_eq!(
        (snapshot.forwarded, snapshot.failed),
        (0, 0),
        "{snapshot:?}"
    );
    assert_eq!(upstream.snapshot().queries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_gets_other_names_from_the_upstream() {
    if !glibc_or_skip("glibc_gets_other_names_from_the_upstream") {
        return;
    }
    // The upstream is another Dns, answering for "corp".
    let upstream = Dns::new("corp", vec![]);
    upstream.update(zone(&[("db.corp", a([10, 9, 0, 1]))]));
    let upstream_addr = serve(&upstream, "127.0.0.1", 0).await;
    let dns = Dns::new("outpost", vec![upstream_addr]);
    dns.update(zone(&[("web.outpost", a([10, 254, 0, 7]))]));
    let server = serve(&dns, "127.0.53.4", 53).await;
    let conf = resolv_conf(server, "search outpost\n");
    let db = getent(&conf, &["ahostsv4", "db.corp"]).await;
    assert_eq!(db.addresses(), ["10.9.0.1"], "{}", db.stdout);
    // The upstream's NXDOMAIN is relayed as it is.
    let none = getent(&conf, &["ahostsv4", "nothing.corp"]).await;
    assert_eq!(none.code, Some(2), "{}", none.stdout);
    let web = getent(&conf, &["ahostsv4", "web.outpost"]).await;
    assert_eq!(web.addresses(), ["10.254.0.7"]);
    let ours = dns.snapshot();
    assert!(ours.forwarded >= 2 && ours.answered >= 1, "{ours:?}");
    let theirs = upstream.snapshot();
    assert!(theirs.answered >= 1 && theirs.nxdomain >= 1, "{theirs:?}");
    assert_eq!(theirs.queries, ours.forwarded, "{theirs:?} {ours:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_retries_a_truncated_answer_over_tcp() {
    if !glibc_or_skip("glibc_retries_a_truncated_answer_over_tcp") {
        return;
    }
    let dns = Dns::new("outpost", vec![]);
    let many: Vec<(&str, Record)> = (1..=100)
        .map(|i| ("many.outpost", a([10, 254, 7, i])))
        .collect();
    dns.update(zone(&many));
    let server = serve(&dns, "127.0.53.5", 53).await;
    // 100 A records take 1.6 kB, over UDP's 512 bytes: only TCP carries them all.
    let got = getent(
        &resolv_conf(server, "search outpost\n"),
        &["ahostsv4", "many.outpost"],
    )
    .await;
    let mut addresses = got.addresses();
    addresses.sort();
    let mut want: Vec<String> = (1..=100).map(|i| format!("10.254.7.{i}")).collect();
    want.sort();
    assert_eq!(addresses, want, "{}", got.stdout);
    assert!(dns.snapshot().truncated >= 1);
}

// ---- hand-built packets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_queries_get_their_records() {
    let dns = Dns::new("outpost", vec![]);
    let srv = |priority, port, target: &str| Record::Srv {
        priority,
        weight: 10,
        port,
        target: target.to_owned(),
    };
    dns.update(zone(&[
        (
            "_http._tcp.web.app.outpost",
            srv(0, 8080, "web-1.app.outpost"),
        ),
        (
            "_http._tcp.web.app.outpost",
            srv(1, 8081, "web-2.app.outpost."),
        ),
        ("web-1.app.outpost", a([10, 0, 0, 1])),
    ]));
    let server = serve(&dns, "127.0.0.1", 0).await;
    let answer = ask_udp(
        server,
        &query(0x5353, "_HTTP._tcp.web.app.outpost", TYPE_SRV, None),
    )
    .await;
    assert_eq!(
        (answer.id, answer.rcode, answer.aa),
        (0x5353, NOERROR, true)
    );
    assert_eq!(answer.question, "_HTTP._tcp.web.app.outpost");
    assert_eq!(
        answer.records,
        [
            (TYPE_SRV, "0 10 8080 web-1.app.outpost".to_owned()),
            (TYPE_SRV, "1 10 8081 web-2.app.outpost".to_owned()),
        ]
    );
    // SRV of a name that has only an A record: NODATA; of no name: NXDOMAIN.
    let nodata = ask_udp(server, &query(1, "web-1.app.outpost", TYPE_SRV, None)).await;
    assert_eq!((nodata.rcode, nodata.records.len()), (NOERROR, 0));
    let nx = ask_udp(
        server,
        &query(2, "_grpc._tcp.web.app.outpost", TYPE_SRV, None),
    )
    .await;
    assert_eq!(nx.rcode, NXDOMAIN);
    let between = ask_udp(server, &query(3, "_tcp.web.app.outpost", TYPE_SRV, None)).await;
    assert_eq!((between.rcode, between.records.len()), (NOERROR, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answers_fit_the_size_the_client_advertises() {
    let dns = Dns::new("outpost", vec![]);
    let sixty: Vec<(&str, Record)> = (1..=60)
        .map(|i| ("big.outpost", a([10, 3, 0, i])))
        .collect();
    dns.update(zone(&sixty));
    let server = serve(&dns, "127.0.0.1", 0).await;
    // 60 records are ~1 kB: over 512 bytes, within EDNS0's 1232.
    let plain = ask_udp(server, &query(1, "big.outpost", TYPE_A, None)).await;
    assert!(plain.tc);
    assert!(plain.records.len() < 60);
    let edns = ask_udp(server, &query(2, "big.outpost", TYPE_A, Some(4096))).await;
    assert!(!edns.tc);
    assert_eq!(edns.records.len(), 60);
    let mut tcp = TcpStream::connect(server).await.unwrap();
    let full = ask_tcp(&mut tcp, &query(3, "big.outpost", TYPE_A, None)).await;
    assert!(!full.tc);
    assert_eq!(full.records.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_carries_several_queries() {
    let dns = Dns::new("outpost", vec![]);
    dns.update(zone(&[
        ("web.outpost", a([10, 0, 0, 1])),
        ("db.outpost", a([10, 0, 0, 2])),
    ]));
    let server = serve(&dns, "127.0.0.1", 0).await;
    let mut tcp = TcpStream::connect(server).await.unwrap();
    for (id, name, want) in [
        (1, "web.outpost", "10.0.0.1"),
        (2, "db.outpost", "10.0.0.2"),
        (3, "web.outpost", "10.0.0.1"),
    ] {
        let answer = ask_tcp(&mut tcp, &query(id, name, TYPE_A, None)).await;
        assert_eq!(answer.id, id);
        assert_eq!(answer.records, [(TYPE_A, want.to_owned())]);
    }
    // Two queries written at once, as glibc sends A and AAAA, are both answered in turn.
    let mut both = Vec::new();
    for packet in [
        query(4, "web.outpost", TYPE_A, None),
        query(5, "web.outpost", TYPE_AAAA, None),
    ] {
        both.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        both.extend_from_slice(&packet);
    }
    tcp.write_all(&both).await.unwrap();
    for id in [4, 5] {
        let len = tcp.read_u16().await.unwrap();
        let mut answer = vec![0; usize::from(len)];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(parse(&answer).id, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_forwarded_over_their_own_transport() {
    // One upstream that listens only on TCP, one only on UDP.
    let corp = Dns::new("corp", vec![]);
    corp.update(zone(&[("db.corp", a([10, 9, 0, 1]))]));
    let tcp_only = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_upstream = tcp_only.local_addr().unwrap();
    tokio::spawn(lb::dns::serve_tcp(
        tcp_only,
        Arc::clone(&corp),
        std::future::pending(),
    ));
    let udp_only = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_upstream = udp_only.local_addr().unwrap();
    tokio::spawn(lb::dns::serve_udp(
        udp_only,
        Arc::clone(&corp),
        std::future::pending(),
    ));

    let via_tcp = Dns::new("outpost", vec![tcp_upstream]);
    let server = serve(&via_tcp, "127.0.0.1", 0).await;
    let mut tcp = TcpStream::connect(server).await.unwrap();
    let answer = ask_tcp(&mut tcp, &query(77, "DB.corp", TYPE_A, None)).await;
    assert_eq!((answer.id, answer.rcode), (77, NOERROR));
    assert_eq!(answer.question, "DB.corp");
    assert_eq!(answer.records, [(TYPE_A, "10.9.0.1".to_owned())]);
    assert_eq!(via_tcp.snapshot().forwarded, 1);

    let via_udp = Dns::new("outpost", vec![udp_upstream]);
    let server = serve(&via_udp, "127.0.0.1", 0).await;
    let answer = ask_udp(server, &query(78, "db.corp", TYPE_A, None)).await;
    assert_eq!((answer.id, answer.rcode), (78, NOERROR));
    assert_eq!(answer.records, [(TYPE_A, "10.9.0.1".to_owned())]);
    assert_eq!(corp.snapshot().answered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_stop_the_server() {
    let dns = Dns::new("outpost", vec![]);
    dns.update(zone(&[("web.outpost", a([10, 0, 0, 1]))]));
    let server = serve(&dns, "127.0.0.1", 0).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut pointer_loop = query(1, "web.outpost", TYPE_A, None);
    pointer_loop.truncate(12);
    pointer_loop.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let mut huge_counts = query(2, "web.outpost", TYPE_A, None);
    huge_counts[6..12].copy_from_slice(&[0xff; 6]);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        pointer_loop,
        huge_counts,
        (0..=255).collect(),
    ];
    for packet in &garbage {
        client.send_to(packet, server).await.unwrap();
    }
    // The huge counts' query had a readable question: it alone is answered, FORMERR.
    let mut buf = vec![0; 4096];
    let len = tokio::time::timeout(PATIENCE, client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let formerr = parse(&buf[..len]);
    assert_eq!((formerr.id, formerr.rcode), (2, 1));
    let answer = ask_udp(server, &query(9, "web.outpost", TYPE_A, None)).await;
    assert_eq!(answer.records, [(TYPE_A, "10.0.0.1".to_owned())]);
    // Over TCP: garbage closes that connection, the next one is served.
    let mut bad = TcpStream::connect(server).await.unwrap();
    bad.write_all(b"\x00\x05hello").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, bad.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    let mut good = TcpStream::connect(server).await.unwrap();
    let answer = ask_tcp(&mut good, &query(10, "web.outpost", TYPE_A, None)).await;
    assert_eq!(answer.records, [(TYPE_A, "10.0.0.1".to_owned())]);
    let queries = garbage.len() as u64 + 3;
    wait_counters(&dns, "every message counted", |s| s.queries == queries).await;
    let snapshot = dns.snapshot();
    assert_eq!(
        (snapshot.answered, snapshot.failed),
        (2, queries - 2),
        "{snapshot:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listeners_stop_at_shutdown() {
    let dns = Dns::new("outpost", vec![]);
    let (udp, tcp) = bind_both("127.0.0.1", 0).await;
    let addr = udp.local_addr().unwrap();
    let (stop_udp, udp_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_tcp, tcp_stopped) = tokio::sync::oneshot::channel::<()>();
    let udp_task = tokio::spawn(lb::dns::serve_udp(udp, Arc::clone(&dns), async {
        let _ = udp_stopped.await;
    }));
    let tcp_task = tokio::spawn(lb::dns::serve_tcp(tcp, Arc::clone(&dns), async {
        let _ = tcp_stopped.await;
    }));
    let mut open = TcpStream::connect(addr).await.unwrap();
    let answer = ask_tcp(&mut open, &query(1, "web.outpost", TYPE_A, None)).await;
    assert_eq!(answer.rcode, NXDOMAIN);
    stop_udp.send(()).unwrap();
    stop_tcp.send(()).unwrap();
    tokio::time::timeout(PATIENCE, udp_task)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, tcp_task)
        .await
        .unwrap()
        .unwrap();
    // The open connection was closed and the port is free again.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, open.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty());
    UdpSocket::bind(addr).await.unwrap();
    TcpListener::bind(addr).await.unwrap();
}
