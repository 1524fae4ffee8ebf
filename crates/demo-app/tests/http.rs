//! The demo app's switches work as the examples and tests rely on.

use std::io::{Read, Write};
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
    while get(port, "/healthz").is_none() {
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
