//! `demo-app`: a dependency-free HTTP service used by the examples, the tests and `bench/`.
//!
//! Endpoints:
//! - `GET /` — a greeting with the task id and pid (`GREETING`, `OUTPOST_TASK_ID` from the env);
//! - `GET /healthz` — 200, or 503 once `/fail` was called (drives liveness tests);
//! - `GET /fail` — make `/healthz` fail from now on;
//! - `GET /crash` — exit at once with status 2 (drives restart tests);
//! - `GET /file` — the contents of the `--require-file` file (drives secret tests).
//!
//! Flags: `--port N` (default: `$PORT`, else 8080), `--exit-after MS` and `--exit-code N` (exit
//! on a timer, for restart-policy tests), `--delay-ready MS` (bind the port late, for readiness
//! tests), `--alloc-mb N` (hold N MiB of touched memory, for memory-limit tests),
//! `--require-file PATH` or `--require-file-env VAR` (the path in `$VAR`, as a database reads
//! `POSTGRES_PASSWORD_FILE`): refuse to start, exit 1, unless that file can be read and is not
//! empty; its contents are never printed.
//!
//! `demo-app probe PORT [PATH]` is a health check client: exit 0 when `GET PATH` (default
//! `/healthz`) on 127.0.0.1:PORT answers 2xx. A `FROM scratch` image has no shell or curl, so
//! exec probes and Compose healthchecks use this.
//!
//! It is std-only so it links statically and fits a `FROM scratch` image.

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
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
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
            "--require-file" => opts.require_file = Some(value),
            "--require-file-env" => {
                let path = std::env::var(&value)
                    .map_err(|_| format!("--require-file-env: ${value} is not set"))?;
                opts.require_file = Some(path);
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; flags: --port, --exit-after, --exit-code, --delay-ready, --alloc-mb, --require-file, --require-file-env"
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
    for stream in listener.incoming().flatten() {
        let sick = sick.clone();
        let required = required.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, &sick, &required) {
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

fn serve(
    mut stream: TcpStream,
    sick: &AtomicBool,
    required: &Option<String>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; bodies are not used by any endpoint.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
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
            (
                "200 OK",
                format!("{greeting} from {task} (pid {})\n", std::process::id()),
            )
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
