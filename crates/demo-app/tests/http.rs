//! The demo app's switches work as the examples and tests rely on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn start(args: &[&str]) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_demo-app"))
        .args(["--port", &port.to_string()])
        .args(args)
        .env("OUTPOST_TASK_ID", "web.1.1")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A connection, not a request: `get` reads to the end, which a kept-alive connection has
    // only once the app's idle time is over.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "demo-app did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, port)
}

#[test]
fn healthz_fails_after_fail_and_crash_exits() {
    let (mut child, port) = start(&[]);
    assert!(get(port, "/").unwrap().contains("hello from web.1.1"));
    assert!(get(port, "/healthz").unwrap().starts_with("HTTP/1.1 200"));
    get(port, "/fail").unwrap();
    assert!(get(port, "/healthz").unwrap().starts_with("HTTP/1.1 503"));
    let _ = get(port, "/crash");
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

#[test]
fn exits_on_a_timer_with_the_asked_code() {
    // Not started through `start`: waiting for it to listen would race the timer.
    let status = Command::new(env!("CARGO_BIN_EXE_demo-app"))
        .args(["--port", "0", "--exit-after", "200", "--exit-code", "3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

#[test]
fn bad_flags_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo-app"))
        .arg("--bogus")
        .arg("1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag --bogus"));
}

#[test]
fn probe_mode_reports_health_by_exit_code() {
    let (mut child, port) = start(&[]);
    let probe = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_demo-app"))
            .args(["probe", &port.to_string(), path])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(probe("/healthz"), Some(0));
    assert_eq!(probe("/missing"), Some(1));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(probe("/healthz"), Some(1), "nothing listens any more");
}

/// Reads one answer off a kept-alive connection: the head, then as many body bytes as its
/// Content-Length says.
fn read_answer(reader: &mut BufReader<TcpStream>) -> (String, String) {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(value) = line.strip_prefix("Content-Length:") {
            length = value.trim().parse().unwrap();
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn keep_alive_answers_requests_in_turn_until_asked_to_close() {
    let (mut child, port) = start(&["--keep-alive", "30"]);
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    for path in ["/", "/healthz"] {
        write!(writer, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (head, body) = read_answer(&mut reader);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Connection: keep-alive"), "{head}");
        let expected = if path == "/" {
            "hello from web.1.1"
        } else {
            "ok"
        };
        assert!(body.contains(expected), "{path}: {body}");
    }
    write!(
        writer,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: Close\r\n\r\n"
    )
    .unwrap();
    let (head, _) = read_answer(&mut reader);
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );

    // HTTP/1.0 gets one answer per connection too.
    let mut old = TcpStream::connect(("127.0.0.1", port)).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(old, "GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    old.read_to_string(&mut out).unwrap();
    assert!(
        out.contains("Connection: close") && out.contains("hello from"),
        "{out}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn without_keep_alive_each_connection_gets_one_answer() {
    let (mut child, port) = start(&[]);
    // `get` reads to the end: it returns only because the app closed after one answer.
    let out = get(port, "/").unwrap();
    assert!(
        out.contains("Connection: close") && out.ends_with(")\n"),
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
    child.kill().unwrap();
    child.wait().unwrap();
}
