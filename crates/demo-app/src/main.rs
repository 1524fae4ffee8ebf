//! `demo-app`: a dependency-free HTTP service used by the examples, the tests and `bench/`.
//!
//! Endpoints:
//! - `GET /` — a greeting with the task id and pid (`GREETING`, `OUTPOST_TASK_ID` from the env);
//! - `GET /healthz` — 200, or 503 once `/fail` was called (drives liveness tests);
//! - `GET /fail` — make `/healthz` fail from now on;
//! - `GET /crash` — exit at once with status 2 (drives restart tests);
//! - `GET /file` — the contents of the `--require-file` file (drives secret tests);
//! - `GET /slow/MS` — the greeting after MS milliseconds (a request in flight, for draining);
//! - `GET /client` — who the client is, as the app can tell: the connection's peer, the
//!   source a PROXY protocol v2 header gave (with `--proxy-protocol`), and `X-Forwarded-For`.
//!
//! With `--upstream HOST:PORT`, `GET /` also asks the upstream's `GET /` and appends its
//! answer: `hello from proxy.1.1 (pid 7) -> hello from api.1.1 (pid 9)`, so a chain of
//! services that find each other by name shows end to end. HOST is resolved the way a
//! container's resolver does it, by a query to the `nameserver` of /etc/resolv.conf with its
//! `search` domains (a `FROM scratch` image has no libc resolver to lean on); an IP address is
//! used as it is.
//!
//! Flags: `--port N` (default: `$PORT`, else 8080), `--exit-after MS` and `--exit-code N` (exit
//! on a timer, for restart-policy tests), `--delay-ready MS` (bind the port late, for readiness
//! tests), `--alloc-mb N` (hold N MiB of touched memory, for memory-limit tests),
//! `--keep-alive SECS` (serve the requests of an HTTP/1.1 connection one after another until
//! the client asks to close or is silent for SECS; without it each connection gets one answer
//! and is closed, which clients that read to the end rely on; `bench/lb` uses it),
//! `--require-file PATH` or `--require-file-env VAR` (the path in `$VAR`, as a database reads
//! `POSTGRES_PASSWORD_FILE`): refuse to start, exit 1, unless that file can be read and is not
//! empty; its contents are never printed. `--proxy-protocol` (no value): every connection
//! starts with a PROXY protocol v2 header, as a load balancer sends it; one without is refused.
//!
//! `demo-app probe PORT [PATH]` is a health check client: exit 0 when `GET PATH` (default
//! `/healthz`) on 127.0.0.1:PORT answers 2xx. A `FROM scratch` image has no shell or curl, so
//! exec probes and Compose healthchecks use this.
//!
//! `demo-app tty-report` answers each line read from stdin with whether stdin is a terminal
//! and its size (`tty-report: LINE tty=yes size=24x80`), and at the end of its input says so
//! and exits with status 3: a `FROM scratch` image has no `stty` or `tty` to check
//! `outpost exec -it` with.
//!
//! It is std-only (and `rustix` for the terminal's size, a safe wrapper of the system calls) so
//! it links statically and fits a `FROM scratch` image.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Options {
    port: u16,
    exit_after: Option<Duration>,
    exit_code: i32,
    delay_ready: Duration,
    alloc_mb: usize,
    require_file: Option<String>,
    upstream: Option<String>,
    keep_alive: Option<Duration>,
    proxy_protocol: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        port: std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8080),
        exit_after: None,
        exit_code: 0,
        delay_ready: Duration::ZERO,
        alloc_mb: 0,
        require_file: None,
        upstream: None,
        keep_alive: None,
        proxy_protocol: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--proxy-protocol" {
            opts.proxy_protocol = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: {value:?} is not {what}"))
        };
        match flag.as_str() {
            "--port" => opts.port = number("a port")? as u16,
            "--exit-after" => {
                opts.exit_after = Some(Duration::from_millis(number("milliseconds")?))
            }
            "--exit-code" => {
                opts.exit_code = value
                    .parse()
                    .map_err(|_| format!("--exit-code: {value:?} is not a number"))?
            }
            "--delay-ready" => opts.delay_ready = Duration::from_millis(number("milliseconds")?),
            "--alloc-mb" => opts.alloc_mb = number("a size in MiB")? as usize,
            "--keep-alive" => {
                let secs = number("a number of seconds")?;
                opts.keep_alive = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--require-file" => opts.require_file = Some(value),
            "--upstream" => opts.upstream = Some(value),
            "--require-file-env" => {
                let path = std::env::var(&value)
                    .map_err(|_| format!("--require-file-env: ${value} is not set"))?;
                opts.require_file = Some(path);
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; flags: --port, --exit-after, --exit-code, --delay-ready, --alloc-mb, --keep-alive, --require-file, --require-file-env, --upstream, --proxy-protocol"
                ));
            }
        }
    }
    Ok(opts)
}

/// `demo-app probe PORT [PATH]`: exit 0 if the path answers 2xx, 1 otherwise.
fn probe(args: &[String]) -> ! {
    let port: u16 = args.first().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let path = args.get(1).map_or("/healthz", String::as_str);
    let healthy = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .is_some_and(|code| code.starts_with('2')))
    })();
    exit(if matches!(healthy, Ok(true)) { 0 } else { 1 })
}

/// `demo-app tty-report`: see the module doc.
fn tty_report() -> ! {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line = String::new();
    while stdin.lock().read_line(&mut line).is_ok_and(|n| n > 0) {
        let tty = rustix::termios::isatty(&stdin);
        let size = match rustix::termios::tcgetwinsize(&stdin) {
            Ok(w) => format!("{}x{}", w.ws_row, w.ws_col),
            Err(_) => "none".to_string(),
        };
        let said = line.trim_end_matches(['\r', '\n']);
        let tty = if tty { "yes" } else { "no" };
        let _ = writeln!(out, "tty-report: {said} tty={tty} size={size}");
        let _ = out.flush();
        line.clear();
    }
    let _ = writeln!(out, "tty-report: end of input");
    let _ = out.flush();
    exit(3)
}

/// Allocates and touches `mb` MiB so it is really resident, and keeps it.
fn hold_memory(mb: usize) -> Vec<u8> {
    let mut block = vec![0u8; mb << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    if mb > 0 {
        println!("demo-app: holding {mb} MiB");
    }
    block
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        probe(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("tty-report") {
        tty_report();
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo-app: {e}");
            exit(64);
        }
    };
    if let Some(after) = opts.exit_after {
        let code = opts.exit_code;
        std::thread::spawn(move || {
            std::thread::sleep(after);
            println!("demo-app: exiting with status {code} as asked");
            exit(code);
        });
    }
    let required = opts.require_file.as_deref().map(require_file);
    let _held = hold_memory(opts.alloc_mb);
    std::thread::sleep(opts.delay_ready);
    let listener = match TcpListener::bind(("0.0.0.0", opts.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-app: cannot listen on port {}: {e}", opts.port);
            exit(1);
        }
    };
    println!(
        "demo-app: listening on port {} (pid {})",
        opts.port,
        std::process::id()
    );
    let sick = Arc::new(AtomicBool::new(false));
    let required: Arc<Option<String>> = Arc::new(required);
    let upstream: Arc<Option<String>> = Arc::new(opts.upstream);
    let (keep_alive, proxy_protocol) = (opts.keep_alive, opts.proxy_protocol);
    for stream in listener.incoming().flatten() {
        let sick = sick.clone();
        let required = required.clone();
        let upstream = upstream.clone();
        std::thread::spawn(move || {
            let served = serve(
                stream,
                &sick,
                &required,
                &upstream,
                keep_alive,
                proxy_protocol,
            );
            // A client that hangs up or goes quiet (every TCP probe does) is not news.
            if let Err(e) = served
                && !client_went_away(&e)
            {
                eprintln!("demo-app: connection error: {e}");
            }
        });
    }
}

/// The required file's contents; exits 1 naming the path (never the contents) when it cannot
/// be read or is empty, as a database does without its password file.
fn require_file(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.is_empty() => {
            println!("demo-app: read {path} ({} bytes)", text.len());
            text
        }
        Ok(_) => {
            eprintln!("demo-app: {path} is empty");
            exit(1);
        }
        Err(e) => {
            eprintln!("demo-app: cannot read {path}: {e}");
            exit(1);
        }
    }
}

/// How long a client has to send a request on a connection that is not kept alive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers the requests of one connection: one, or with `keep_alive` each in turn until the
/// client closes, asks to close, speaks HTTP/1.0 or is silent that long.
fn serve(
    stream: TcpStream,
    sick: &AtomicBool,
    required: &Option<String>,
    upstream: &Option<String>,
    keep_alive: Option<Duration>,
    proxy_protocol: bool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(keep_alive.unwrap_or(REQUEST_TIMEOUT)))?;
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let proxied = match proxy_protocol {
        true => Some(proxy_header(&mut reader)?),
        false => None,
    };
    let mut writer = stream;
    let mut answered = 0u64;
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            // The client closed between two requests, or connected and sent nothing.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A kept-alive client silent for the whole idle time is done, not in error.
            Err(e) if answered > 0 && is_timeout(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut close = keep_alive.is_none() || !request_line.trim_end().ends_with("HTTP/1.1");
        // Drain the headers, minding `Connection: close`; bodies are not used by any endpoint.
        let mut line = String::new();
        let mut forwarded_for = None;
        while reader.read_line(&mut line)? > 2 {
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim(), value.trim());
                if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                }
                if name.eq_ignore_ascii_case("x-forwarded-for") {
                    forwarded_for = Some(value.to_string());
                }
            }
            line.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path {
            "/client" => {
                let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                let proxied = or_none(proxied.map(|a| a.to_string()));
                let forwarded = or_none(forwarded_for);
                let who =
                    format!("peer {peer}\nproxy-protocol {proxied}\nx-forwarded-for {forwarded}\n");
                ("200 OK", who)
            }
            _ => answer(path, sick, required, upstream),
        };
        // One write per answer: headers and body written apart would wait on Nagle's
        // algorithm for the client's delayed ACK on a kept-alive connection.
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" },
        );
        writer.write_all(response.as_bytes())?;
        answered += 1;
        if close {
            return writer.flush();
        }
    }
}

/// The PROXY protocol v2 signature that starts every header.
const PROXY_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY protocol v2 header: the client's address it carries for TCP over IPv4 or
/// IPv6. Anything else is refused as the connection's error.
fn proxy_header(reader: &mut impl std::io::Read) -> std::io::Result<std::net::SocketAddr> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut head = [0u8; 16];
    reader.read_exact(&mut head)?;
    if &head[..12] != PROXY_SIGNATURE || head[12] != 0x21 {
        return Err(invalid("no PROXY protocol v2 header (PROXY command)"));
    }
    let mut address = vec![0u8; usize::from(u16::from_be_bytes([head[14], head[15]]))];
    reader.read_exact(&mut address)?;
    let port = |at: usize| {
        address
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match head[13] {
        0x11 if address.len() >= 12 => {
            let ip: [u8; 4] = address[..4].try_into().unwrap_or_default();
            Ok((ip, port(8).unwrap_or(0)).into())
        }
        0x21 if address.len() >= 36 => {
            let ip: [u8; 16] = address[..16].try_into().unwrap_or_default();
            Ok((ip, port(32).unwrap_or(0)).into())
        }
        _ => Err(invalid(
            "a PROXY protocol v2 header for something other than TCP",
        )),
    }
}

fn client_went_away(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    is_timeout(e)
        || matches!(
            e.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
        )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The status line and body for `path`.
fn answer(
    path: &str,
    sick: &AtomicBool,
    required: &Option<String>,
    upstream: &Option<String>,
) -> (&'static str, String) {
    match path {
        "/healthz" if sick.load(Ordering::SeqCst) => {
            ("503 Service Unavailable", "unhealthy\n".to_string())
        }
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/fail" => {
            sick.store(true, Ordering::SeqCst);
            println!("demo-app: /healthz will fail from now on");
            ("200 OK", "healthz will fail\n".to_string())
        }
        "/file" => match required {
            Some(text) => ("200 OK", text.clone()),
            None => ("404 Not Found", "no --require-file\n".to_string()),
        },
        "/crash" => {
            println!("demo-app: crashing as asked");
            exit(2);
        }
        "/" => {
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
            let task = std::env::var("OUTPOST_TASK_ID").unwrap_or_else(|_| "-".into());
            let me = format!("{greeting} from {task} (pid {})", std::process::id());
            match upstream.as_deref().map(ask_upstream) {
                None => ("200 OK", format!("{me}\n")),
                Some(Ok(answer)) => ("200 OK", format!("{me} -> {answer}")),
                Some(Err(e)) => ("502 Bad Gateway", format!("{me} -> {e}\n")),
            }
        }
        slow if slow.starts_with("/slow/") => match slow["/slow/".len()..].parse() {
            Ok(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                answer("/", sick, required, upstream)
            }
            Err(_) => (
                "400 Bad Request",
                "/slow/MS takes milliseconds\n".to_string(),
            ),
        },
        _ => ("404 Not Found", "not found\n".to_string()),
    }
}

/// `GET /` of `upstream` (`HOST:PORT`): its body, or why there is none.
fn ask_upstream(upstream: &str) -> Result<String, String> {
    let (host, port) = upstream
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--upstream {upstream:?} is not HOST:PORT"))?;
    let ip = match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => resolve(host)?,
    };
    let fail = |e: std::io::Error| format!("{upstream} ({ip}): {e}");
    let mut s =
        TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).map_err(fail)?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok(body.to_string())
}

/// An A record of `host`, asked of /etc/resolv.conf's first nameserver, trying its search
/// domains first for a name without a dot.
fn resolve(host: &str) -> Result<std::net::Ipv4Addr, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| format!("{e}"))?;
    let word = |key: &str| -> Vec<String> {
        (conf.lines())
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|rest| rest.split_whitespace().map(str::to_string))
            .collect()
    };
    let server =
        (word("nameserver").first().cloned()).ok_or("no nameserver in /etc/resolv.conf")?;
    let mut names: Vec<String> = Vec::new();
    if !host.contains('.') {
        names.extend(word("search").iter().map(|d| format!("{host}.{d}")));
    }
    names.push(host.to_string());
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    for name in &names {
        let mut query = vec![0x4f, 0x50, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket
            .send_to(&query, (server.as_str(), 53))
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 512];
        let n = socket
            .recv(&mut answer)
            .map_err(|e| format!("{server}: {e}"))?;
        if let Some(ip) = first_a(&answer[..n], query.len()) {
            return Ok(ip);
        }
    }
    Err(format!(
        "{host}: no such name (asked {server} for {})",
        names.join(", ")
    ))
}

/// The first A record of an answer whose question is `question_len` bytes of header and
/// question, answers written with a pointer to the question (as servers write them).
fn first_a(answer: &[u8], question_len: usize) -> Option<std::net::Ipv4Addr> {
    let count = u16::from_be_bytes([*answer.get(6)?, *answer.get(7)?]);
    let mut at = question_len;
    for _ in 0..count {
        // The owner name: a pointer, or labels up to the root.
        if answer.get(at)? & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while *answer.get(at)? != 0 {
                at += 1 + usize::from(*answer.get(at)?);
            }
            at += 1;
        }
        let kind = u16::from_be_bytes([*answer.get(at)?, *answer.get(at + 1)?]);
        let len = usize::from(u16::from_be_bytes([
            *answer.get(at + 8)?,
            *answer.get(at + 9)?,
        ]));
        let data = answer.get(at + 10..at + 10 + len)?;
        if kind == 1 && len == 4 {
            return Some(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    None
}
