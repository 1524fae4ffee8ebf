//! Test hosts: `outpost` nodes as containers of one `FROM scratch` image (a static `outpost` and
//! the demo app) on a Docker network the test creates, and the faults a site's network and
//! power deal out: a crash (`docker kill`), a freeze (`docker pause`), a cut cable
//! (`docker network disconnect`), packet loss (iptables' `statistic` match inside the host's
//! network namespace, entered with `nsenter`), and delay with jitter (a userspace TCP proxy, as
//! this kernel has no `netem`). Everything a test makes is named after its process and removed
//! when dropped. Traffic goes only to these containers and loopback.
//!
//! How a server, an agent and the CLI are started and connected lives in [`Site`] alone.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{outpost_bin, run, wait_within};

/// Longest wait of a multi-host test: containers start and fail over on a loaded 2-core machine.
pub const HOST_PATIENCE: Duration = Duration::from_secs(90);

/// Where a server's API listens inside its container.
pub const API_PORT: u16 = 7400;
/// Where an agent's own API (logs, probes) listens inside its container.
pub const AGENT_PORT: u16 = 7001;
/// Ports an agent hands its tasks: each container has its own, so every agent may use the same.
pub const TASK_PORTS: &str = "20000-20999";

/// The node image, built once per test binary; its id (`sha256:…`), so that another build of
/// the same tag elsewhere on the machine never changes what this run starts. `None` (with the
/// reason printed) where no Docker Engine answers, except under CI, where the tests must run.
pub fn node_image() -> Option<&'static str> {
    static IMAGE: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    match IMAGE.get_or_init(build_node_image) {
        Ok(id) => Some(id.as_str()),
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("multi-host tests must run under CI: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping a multi-host test: {reason}");
            None
        }
    }
}

fn build_node_image() -> Result<String, String> {
    run(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
        .map_err(|e| format!("no Docker Engine answers ({e})"))?;
    for tool in ["nsenter", "iptables"] {
        run(Command::new(tool).arg("--version"))
            .map_err(|e| format!("{tool} is needed on the host ({e})"))?;
    }
    let bin = super::static_binaries()?;
    let context = tempfile::tempdir().map_err(|e| e.to_string())?;
    for name in ["outpost", "demo-app"] {
        std::fs::copy(bin.join(name), context.path().join(name))
            .map_err(|e| format!("cannot copy the static {name}: {e}"))?;
    }
    // A scratch image has no folders at all: the data dir and the tasks' work dirs need some.
    std::fs::create_dir(context.path().join("empty")).map_err(|e| e.to_string())?;
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY outpost demo-app /\nCOPY empty /data\nCOPY empty /tmp\n\
         ENV OUTPOST_DATA_DIR=/data OUTPOST_LOG=info\nENTRYPOINT [\"/outpost\"]\n",
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("docker")
        .args(["build", "-q"])
        .arg(context.path()))
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args)).unwrap_or_else(|e| panic!("{e}"))
}

/// A Docker network of this test's own, with a subnet of its own so hosts keep their address
/// across a disconnect and a restart. Removed when dropped.
pub struct Net {
    pub name: String,
    /// The first three octets of its /24.
    prefix: [u8; 3],
    next_host: AtomicUsize,
}

impl Net {
    pub fn create(label: &str) -> Net {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("outpost-test-{}-{label}-{seq}", std::process::id());
        // Other test runs pick subnets too: try others until one is free.
        let mut last_error = String::new();
        for attempt in 0..64u32 {
            let spread = std::process::id().wrapping_mul(31) + (seq as u32) * 67 + attempt * 101;
            let prefix = [10, 64 + (spread / 250 % 128) as u8, (spread % 250) as u8];
            let subnet = format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]);
            let created = run(Command::new("docker").args([
                "network", "create", "--driver", "bridge", "--subnet", &subnet, &name,
            ]));
            match created {
                Ok(_) => {
                    return Net {
                        name,
                        prefix,
                        next_host: AtomicUsize::new(10),
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("no free subnet for network {name}: {last_error}")
    }

    /// The host side of the network: where a container reaches a proxy the test runs.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 1)
    }

    fn next_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        let n = self.next_host.fetch_add(1, Ordering::Relaxed);
        Ipv4Addr::new(a, b, c, n as u8)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = run(Command::new("docker").args(["network", "rm", &self.name]));
    }
}

/// One `outpost` node: a container on a [`Net`], named `<net>-<name>`, with a fixed address; its
/// data dir lives in the container's own file system, so it outlives a restart of the container
/// as a disk outlives a reboot.
pub struct Host {
    pub name: String,
    pub container: String,
    pub ip: Ipv4Addr,
    /// A server (or else an agent).
    pub server: bool,
    net: String,
}

impl Host {
    /// Starts `outpost ARGS...` in a new container on `net`, with `name` as its host name.
    fn start(net: &Net, image: &str, name: &str, ip: Ipv4Addr, args: &[String]) -> Host {
        let container = format!("{}-{name}", net.name);
        let ip_text = ip.to_string();
        let mut cmd = vec![
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &net.name,
            "--ip",
            &ip_text,
            image,
        ];
        cmd.extend(args.iter().map(String::as_str));
        docker(&cmd);
        Host {
            name: name.to_string(),
            container,
            ip,
            server: false,
            net: net.name.clone(),
        }
    }

    /// The container's main process as the host sees it (0 while it is not running).
    pub fn pid(&self) -> u32 {
        let out = docker(&["inspect", "--format", "{{.State.Pid}}", &self.container]);
        out.parse().unwrap_or(0)
    }

    /// A crash: SIGKILL of everything in the container, no goodbye.
    pub fn kill(&self) {
        docker(&["kill", &self.container]);
    }

    /// A freeze: every process stopped where it stands (the cgroup freezer); sockets stay open.
    pub fn pause(&self) {
        docker(&["pause", &self.container]);
    }

    pub fn unpause(&self) {
        docker(&["unpause", &self.container]);
    }

    /// Starts the container again after a kill, with the same command, address and file
    /// system. Not for a server added by `server join`: its command joins again, which its
    /// data dir (already of the group) refuses; `bench/failover` runs such a server again as
    /// `outpost server` on the same data instead.
    pub fn start_again(&self) {
        docker(&["start", &self.container]);
    }

    /// A reboot: the container stops (SIGTERM, then SIGKILL after 1 s) and starts again.
    pub fn reboot(&self) {
        docker(&["restart", "-t", "1", &self.container]);
    }

    /// Pulls the cable: the host leaves the network (its processes go on).
    pub fn disconnect(&self) {
        docker(&["network", "disconnect", &self.net, &self.container]);
    }

    /// Plugs it back, with the address it had.
    pub fn connect(&self) {
        let ip = self.ip.to_string();
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &self.net,
            &self.container,
        ]);
    }

    /// Drops each packet in and out of the host with probability `p`, inside its own network
    /// namespace only.
    pub fn loss(&self, p: f64) {
        let p = format!("{p:.3}");
        for chain in ["INPUT", "OUTPUT"] {
            self.iptables(&[
                "-A",
                chain,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ]);
        }
    }

    /// Drops every packet to and from `peer`: a path cut between two hosts, the others intact.
    pub fn block(&self, peer: Ipv4Addr) {
        let peer = peer.to_string();
        self.iptables(&["-A", "INPUT", "-s", &peer, "-j", "DROP"]);
        self.iptables(&["-A", "OUTPUT", "-d", &peer, "-j", "DROP"]);
    }

    /// Takes every rule `loss` and `block` added away.
    pub fn heal(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            self.iptables(&["-F", chain]);
        }
    }

    fn iptables(&self, args: &[&str]) {
        let pid = self.pid();
        assert!(pid != 0, "{} is not running", self.container);
        let pid = pid.to_string();
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables", "-w"])
            .args(args))
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Reads a file out of the container (it may be stopped); `None` while it does not exist.
    pub fn read_file(&self, path: &str) -> Option<String> {
        let dir = tempfile::tempdir().ok()?;
        let from = format!("{}:{path}", self.container);
        run(Command::new("docker").args(["cp", &from]).arg(dir.path())).ok()?;
        let name = path.rsplit('/').next()?;
        std::fs::read_to_string(dir.path().join(name)).ok()
    }

    /// What the node printed, for a failing test's message.
    pub fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", "--tail", "100", &self.container])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot read the logs of {}: {e}", self.container),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = run(Command::new("docker").args(["rm", "-f", "-v", &self.container]));
    }
}

/// A site: servers and agents as [`Host`]s on a network of its own, and the CLI run on the test
/// machine against them. The one place that knows how each is started and connected.
pub struct Site {
    // Hosts go before the network: fields drop in order, and a network with containers on it
    // cannot be removed.
    hosts: Vec<Host>,
    pub net: Net,
    image: &'static str,
    /// The credentials, read from the first server's data dir: the admin token (the CLI's),
    /// the join tokens of servers and agents, and the cluster CA the CLI checks servers by.
    token: String,
    server_token: String,
    agent_token: String,
    ca: tempfile::NamedTempFile,
}

impl Site {
    /// A site with one server, `name`, leading its group. `None` (the reason printed) where no
    /// Docker Engine answers outside CI.
    pub fn new(label: &str, server: &str) -> Option<Site> {
        let image = node_image()?;
        let net = Net::create(label);
        let mut site = Site {
            hosts: vec![],
            net,
            image,
            token: String::new(),
            server_token: String::new(),
            agent_token: String::new(),
            ca: tempfile::NamedTempFile::new().expect("a temporary file for the CA"),
        };
        let api = format!("0.0.0.0:{API_PORT}");
        let host = site.start_host(server, &[], |ip| {
            vec![
                "server".into(),
                "--listen".into(),
                api.clone(),
                "--advertise".into(),
                format!("{ip}:{API_PORT}"),
                "--name".into(),
                server.into(),
            ]
        });
        let mut host = host;
        host.server = true;
        // The first start makes the cluster's CA and tokens; the CA is written last.
        let ca = wait_within(HOST_PATIENCE, "the first server's CA", || {
            host.read_file("/data/ca.pem")
                .filter(|t| t.contains("END CERTIFICATE"))
        });
        std::fs::write(site.ca.path(), ca).expect("the CA written for the CLI");
        let read = |file: &str| {
            let text = host.read_file(&format!("/data/{file}")).unwrap_or_default();
            assert!(!text.trim().is_empty(), "the first server has no {file}");
            text.trim().to_string()
        };
        site.token = read("token");
        site.server_token = read("join-server");
        site.agent_token = read("join-agent");
        site.hosts.push(host);
        site.wait_leader();
        Some(site)
    }

    /// Starts `outpost --data-dir /data GLOBAL... ROLE...` in a container of its own; `role`
    /// is given the host's address, which is fixed before it starts.
    fn start_host(
        &self,
        name: &str,
        global: &[String],
        role: impl Fn(Ipv4Addr) -> Vec<String>,
    ) -> Host {
        let ip = self.net.next_ip();
        let mut args = vec!["--data-dir".to_string(), "/data".into()];
        args.extend_from_slice(global);
        args.extend(role(ip));
        Host::start(&self.net, self.image, name, ip, &args)
    }

    /// Adds server `name` to the group.
    pub fn join_server(&mut self, name: &str) -> &Host {
        let first = self.servers()[0].ip;
        let global = vec!["--token".to_string(), self.server_token.clone()];
        let host = self.start_host(name, &global, |ip| {
            vec![
                "server".into(),
                "join".into(),
                format!("{first}:{API_PORT}"),
                "--listen".into(),
                format!("0.0.0.0:{API_PORT}"),
                "--advertise".into(),
                format!("{ip}:{API_PORT}"),
                "--name".into(),
                name.into(),
            ]
        });
        let mut host = host;
        host.server = true;
        self.hosts.push(host);
        wait_within(
            HOST_PATIENCE,
            &format!("server {name} in the group"),
            || {
                let nodes = self.try_json(&["nodes"])?;
                nodes
                    .as_array()?
                    .iter()
                    .any(|n| n["name"] == name && n["role"] != "agent")
                    .then_some(())
            },
        );
        self.host(name)
    }

    /// Starts agent `name`, given every server's address, and waits until its node is ready.
    pub fn agent(&mut self, name: &str) -> &Host {
        let api = self.api();
        self.agent_through(name, &api)
    }

    /// Starts agent `name` joining through the server at `api` (`host:port`, a proxy's, say)
    /// with the agent join token, and waits until its node is ready. It learns the other
    /// servers from the one it joined.
    pub fn agent_through(&mut self, name: &str, api: &str) -> &Host {
        self.agent_through_with(name, api, &[])
    }

    /// Starts agent `name` as [`Site::agent`] does, with agent flags of its own
    /// (`--insecure-registry HOST:PORT`).
    pub fn agent_with(&mut self, name: &str, flags: &[&str]) -> &Host {
        let api = self.api();
        self.agent_through_with(name, &api, flags)
    }

    fn agent_through_with(&mut self, name: &str, api: &str, flags: &[&str]) -> &Host {
        let global = vec!["--token".to_string(), self.agent_token.clone()];
        let join = api.split(',').next().unwrap_or(api);
        let join = join.trim_start_matches("https://").to_string();
        let host = self.start_host(name, &global, |ip| {
            vec![
                "agent".into(),
                "--join".into(),
                join.clone(),
                "--name".into(),
                name.into(),
                "--listen".into(),
                format!("{ip}:{AGENT_PORT}"),
                "--task-ports".into(),
                TASK_PORTS.into(),
            ]
            .into_iter()
            .chain(flags.iter().map(|f| f.to_string()))
            .collect()
        });
        self.hosts.push(host);
        self.wait_node(name, "ready");
        self.host(name)
    }

    pub fn host(&self, name: &str) -> &Host {
        (self.hosts.iter())
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The server hosts, in the order they were started.
    pub fn servers(&self) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.server).collect()
    }

    /// Every server's API, for an agent or the CLI to try in turn.
    pub fn api(&self) -> String {
        let servers: Vec<String> = (self.servers().iter())
            .map(|h| format!("https://{}:{API_PORT}", h.ip))
            .collect();
        servers.join(",")
    }

    /// The CLI as this site's operator runs it, for a thread of its own.
    pub fn client(&self) -> Cli {
        Cli {
            token: self.token.clone(),
            ca: self.ca.path().to_path_buf(),
        }
    }

    /// Runs the CLI on the test machine against `api`; returns (success, stdout, stderr).
    pub fn cli_at(&self, api: &str, args: &[&str]) -> (bool, String, String) {
        self.client().run(api, args)
    }

    /// Runs the CLI against every server.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_at(&self.api(), args)
    }

    /// Runs a CLI command that must succeed, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "outpost {args:?} failed:\n{err}\n{}", self.logs());
        out
    }

    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let (ok, out, _) = self.cli(&full);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    /// Deploys `spec` (YAML text) from a file on the test machine.
    pub fn deploy(&self, spec: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, spec).unwrap();
        self.ok(&["deploy", "-f", path.to_str().unwrap()])
    }

    /// The node named `name` as `outpost nodes -o json` shows it.
    pub fn node(&self, name: &str) -> Option<Value> {
        let nodes = self.try_json(&["nodes"])?;
        nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    }

    pub fn wait_node(&self, name: &str, state: &str) -> Value {
        wait_within(HOST_PATIENCE, &format!("node {name} {state}"), || {
            self.node(name).filter(|n| n["state"] == state)
        })
    }

    /// Waits until some server answers as the group's leader.
    pub fn wait_leader(&self) {
        wait_within(HOST_PATIENCE, "a leader", || {
            let nodes = self.try_json(&["nodes"])?;
            nodes
                .as_array()?
                .iter()
                .any(|n| n["leader"] == true)
                .then_some(())
        });
    }

    /// The tasks of `service` the control plane holds.
    pub fn ps(&self, service: &str) -> Vec<Value> {
        (self.try_json(&["ps", service]))
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// What `services -o json` says of a service: (ready, replicas).
    pub fn counts(&self, service: &str) -> Option<(u64, u64)> {
        let services = self.try_json(&["services"])?;
        let s = services.as_array()?.iter().find(|s| s["name"] == service)?;
        Some((s["ready"].as_u64()?, s["replicas"].as_u64()?))
    }

    /// The node state transitions `events` shows for node `name`, oldest first.
    pub fn node_transitions(&self, name: &str) -> Vec<String> {
        let events = self
            .try_json(&["events", "--node", name])
            .unwrap_or_default();
        (events.as_array().into_iter().flatten())
            .filter(|e| e["reason"] == "node-state")
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect()
    }

    /// Every host's last lines, for a failing test's message.
    pub fn logs(&self) -> String {
        (self.hosts.iter())
            .map(|h| format!("--- {} ---\n{}", h.name, h.logs()))
            .collect()
    }
}

/// The CLI on the test machine, with the site's credentials.
#[derive(Clone)]
pub struct Cli {
    token: String,
    ca: std::path::PathBuf,
}

impl Cli {
    /// Runs `outpost ARGS...` against `api`; returns (success, stdout, stderr).
    pub fn run(&self, api: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(outpost_bin())
            .args(["--api", api, "--token", &self.token, "--ca"])
            .arg(&self.ca)
            .args(args)
            .env_remove("OUTPOST_DATA_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run outpost: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

/// Tasks of `tasks` wanted running, running and ready, on `node`.
pub fn ready_on(tasks: &[Value], node: &str) -> Vec<Value> {
    (tasks.iter())
        .filter(|t| t["node"] == node && t["desired"] == "running")
        .filter(|t| t["ready"] == true && t["state"] == "running")
        .cloned()
        .collect()
}

/// What the demo app at `ip:port` says on `GET /` (its task id is in it); `None` when nothing
/// answers.
pub fn greeting(ip: Ipv4Addr, port: u16) -> Option<String> {
    let addr = SocketAddr::from((ip, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// The host port a task was handed for its port `name`.
pub fn task_port(task: &Value, name: &str) -> Option<u16> {
    task["ports"][name].as_u64().map(|p| p as u16)
}

/// A userspace TCP proxy with delay and jitter: each chunk read is held `delay` plus a random
/// share of `jitter` before it is sent on, in order. Listens on `listen` (port 0 picks one) and
/// forwards every connection to `target`; stops forwarding when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
        jitter: Duration,
    ) -> Proxy {
        let listener =
            TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy on {listen}: {e}"));
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                pipe(c, s, delay, jitter, stop.clone());
                pipe(server, client, delay, jitter, stop.clone());
            }
        });
        Proxy { addr, cut }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// One direction of a proxied connection: a reader thread stamps each chunk with the time it may
/// leave, a writer thread sends it then. Chunks keep their order, as TCP's bytes do.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    jitter: Duration,
    cut: Arc<AtomicBool>,
) {
    static SEED: AtomicUsize = AtomicUsize::new(0x9e37_79b9);
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_cut = cut.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = Instant::now();
        let mut seed =
            SEED.fetch_add(0x6a09_e667, Ordering::Relaxed) as u64 ^ std::process::id() as u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if reader_cut.load(Ordering::Relaxed) {
                break;
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let share = (seed >> 33) as f64 / (1u64 << 31) as f64;
            let due = (Instant::now() + delay + jitter.mul_f64(share)).max(last);
            last = due;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if cut.load(Ordering::Relaxed) || to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
