//! Idle connections cannot exhaust the listeners: 1,200 silent TCP connections held open on the
//! API port and as many on the agent's port leave `outpost dev` answering, deploying and running
//! tasks, with its open file descriptors bounded by the connection caps.

mod support;

use std::net::TcpStream;
use std::path::Path;

use support::{Dev, wait_for};

/// More than the 1,024 descriptors a process gets by default, as in the outage this guards.
const IDLE: usize = 1200;

/// The server's and the agent's connection caps (512 + 64), plus room for the store, logs,
/// task pipes and the agent's own client connections.
const FD_BOUND: usize = 512 + 64 + 300;

/// Raises this test process's soft open-file limit to its hard one: it holds 2,400 sockets.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard as usize > 2 * IDLE + 100,
        "the hard open-file limit ({hard}) is too low for this test"
    );
}

/// The pid of the `outpost dev` that uses `data_dir`.
fn dev_pid(data_dir: &Path) -> u32 {
    let needle = data_dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.contains(&needle.as_bytes()) && args.contains(&b"dev".as_slice())
            })
        })
        .expect("outpost dev is not running")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn connect_many(addr: &str) -> Vec<TcpStream> {
    (0..IDLE)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect()
}

#[test]
fn idle_connections_neither_exhaust_descriptors_nor_stop_the_api() {
    raise_fd_limit();
    let dev = Dev::start(&[]);
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let api = api.trim().trim_start_matches("https://").to_string();
    let agent = wait_for("the agent to register", || {
        let nodes = dev.json(&["nodes"]);
        let address = nodes.get(0)?["address"].as_str()?;
        Some(address.trim_start_matches("https://").to_string())
    });
    let pid = dev_pid(dev.data_dir());

    let mut held = connect_many(&api);
    held.extend(connect_many(&agent));
    assert!(held.len() >= IDLE, "only {} connections opened", held.len());
    let fds = open_fds(pid);
    assert!(
        fds < FD_BOUND,
        "outpost dev holds {fds} descriptors with {} idle connections open",
        held.len()
    );

    // While they are held: the API answers (once the idle ones time out), deploys work, and
    // the replicas start and pass readiness.
    wait_for("the API to answer while idle connections are held", || {
        let (ok, out, _) = dev.cli(&["services"]);
        ok.then_some(out)
    });
    dev.deploy(
        "web.yaml",
        r#"
name: web
replicas: 2
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { http: { path: /healthz, port: http }, period: 200ms }
"#,
    );
    dev.wait_ready("web", 2);
    // The server still reaches the agent's flooded port for logs.
    let task = dev.tasks("web")[0]["id"].as_str().unwrap().to_string();
    wait_for("the agent's log API to answer", || {
        let (ok, out, _) = dev.cli(&["logs", &task]);
        ok.then_some(out)
    });
    assert!(open_fds(pid) < FD_BOUND, "descriptors grew past the caps");

    // Released, nothing is left broken.
    drop(held);
    dev.ok(&["scale", "web", "3"]);
    dev.wait_ready("web", 3);
    wait_for(
        "descriptors to fall back once the connections are gone",
        || (open_fds(pid) < 200).then_some(()),
    );
}
