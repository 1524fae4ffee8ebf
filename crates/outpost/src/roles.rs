//! Long-running roles: `dev` (server + agent in one process), `server`, `agent`.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::{DesiredState, TaskState};
use client::Client;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::Connection;
use crate::commands;

pub const DEV_API: &str = "127.0.0.1:7400";
/// How long `dev` waits for the replicas it deployed to answer before printing where they are.
const DEV_READY_WAIT: Duration = Duration::from_secs(30);

/// The log on stderr, where a service manager's journal takes it.
fn init_logging() {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    log_format(ansi).with_writer(std::io::stderr).init();
}

/// `dev`'s log: appended to `outpost.log` in its data dir, so it does not bury what dev prints
/// of the replicas; on stderr with `-v`. Returns the file's path.
fn init_dev_logging(data_dir: &std::path::Path, verbose: bool) -> Result<Option<PathBuf>> {
    if verbose {
        init_logging();
        return Ok(None);
    }
    let path = data_dir.join("outpost.log");
    let file = std::fs::create_dir_all(data_dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    log_format(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(Some(path))
}

fn log_format(
    ansi: bool,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Compact>,
    tracing_subscriber::EnvFilter,
> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .compact()
}

/// SIGINT and SIGTERM, counted from the moment the role starts: the first asks for a clean stop,
/// a second one forces it. Installed before anything else starts, so a Ctrl-C at any moment —
/// even while the first replicas are still starting — takes the clean path instead of killing
/// the process by the signal's default action and leaving its tasks behind.
struct Signals {
    count: watch::Receiver<u32>,
}

impl Signals {
    fn install() -> Result<Signals> {
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let (tx, count) = watch::channel(0);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals { count })
    }

    /// Resolves once `n` signals have arrived.
    fn received(&self, n: u32) -> impl Future<Output = ()> + Send + 'static {
        let mut count = self.count.clone();
        async move {
            let _ = count.wait_for(|c| *c >= n).await;
        }
    }

    /// The first signal: stop cleanly.
    fn stop(&self) -> impl Future<Output = ()> + Send + 'static {
        self.received(1)
    }

    /// A second signal: stop now, killing tasks without waiting out their grace periods.
    fn force(&self) -> impl Future<Output = ()> + Send + 'static {
        self.received(2)
    }
}

fn listen_addr(conn: &Connection, default: &str) -> Result<SocketAddr> {
    listen_on(conn.api.as_deref().unwrap_or(default), "--api")
}

fn listen_on(raw: &str, flag: &str) -> Result<SocketAddr> {
    let bare = raw.trim_start_matches("http://").trim_end_matches('/');
    bare.parse().with_context(|| {
        format!("{flag} {raw:?} is not an address to listen on (like 127.0.0.1:7400)")
    })
}

pub async fn dev(
    conn: &Connection,
    files: &[PathBuf],
    node: &crate::NodeOptions,
    reset: bool,
    verbose: bool,
    settings: crate::ServerSettings,
) -> Result<()> {
    let signals = Signals::install()?;
    let (eviction_threshold, task_ports, mirror) = node_settings(node)?;
    let image_gc_every = parse_image_gc(&node.image_gc_every)?;
    // Parse before starting anything: a bad file must not leave a half-started dev behind.
    let specs = commands::read_specs(files, None)?;
    let data_dir = conn
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(commands::DEV_DATA_DIR));
    let log = init_dev_logging(&data_dir, verbose)?;
    let listen = listen_addr(conn, DEV_API)?;
    // The server keeps `api`, `token` and its store at the top of the data dir, where the CLI
    // looks; the agent keeps its own state below it, as it would on another machine.
    let server = server::start(server::ServerConfig {
        limits: settings.limits,
        report_batch: settings.report_batch,
        store: settings.store,
        service_range: settings.service_range,
        reset,
        // The agent below is called `local` too: `outpost nodes` shows one node, both roles.
        name: "local".into(),
        tls: true,
        ..server::ServerConfig::new(data_dir.clone(), listen)
    })
    .await
    .context("cannot start the server")?;
    let api = format!("https://{}", server.addr);
    let agent_config = agent::AgentConfig {
        name: DEV_NODE.into(),
        data_dir: data_dir.join("agent"),
        listen: "127.0.0.1:0".parse()?,
        server: api.clone(),
        token: String::new(),
        tls: None,
        advertise: None,
        workdir: std::env::current_dir().ok(),
        reserved: agent::default_reserved(),
        eviction_threshold,
        ports: task_ports,
        heartbeat: agent::HEARTBEAT_INTERVAL,
        mesh: true,
        mirror,
        image_gc_every,
        insecure_registries: node.insecure_registry.clone(),
    };
    // The agent is stopped only from here, after the first signal or a failed start-up, so it
    // ending by itself always means it could not run. Its certificate needs a leader; the
    // specs are deployed meanwhile.
    let (stop_agent, agent_stop) = tokio::sync::oneshot::channel::<()>();
    let (ctx, addr, force) = (server.ctx.clone(), server.addr, signals.force());
    let mut agent = tokio::spawn(async move {
        let tls = dev_agent_credentials(&ctx, addr, &agent_config.data_dir).await?;
        let config = agent::AgentConfig {
            tls: Some(tls),
            ..agent_config
        };
        let stop = async move {
            let _ = agent_stop.await;
        };
        agent::Agent::run(config, stop, force).await?;
        anyhow::Ok(())
    });
    let ca = server
        .ctx
        .trust
        .as_ref()
        .map(|t| t.ca.cert_pem().to_string())
        .unwrap_or_default();
    let client = Client::with_tls(&api, &server.token, pki::tls::client_config(&ca, None)?);
    println!("outpost dev: API at {api}, data in {}", data_dir.display());
    if let Some(log) = &log {
        println!("  log: {} (-v to see it here)", log.display());
    }
    println!("  try: outpost --data-dir {} ps", data_dir.display());
    let result = tokio::select! {
        done = dev_session(&client, specs, &signals) => done,
        // A dev without its agent (its state file is damaged, say) would look alive but run
        // nothing.
        ended = &mut agent => {
            server.shutdown().await;
            return match ended {
                Ok(Err(e)) => Err(e.context("the agent stopped")),
                Err(e) => Err(anyhow::Error::new(e).context("the agent stopped")),
                Ok(Ok(())) => bail!("the agent stopped on its own"),
            };
        }
    };
    println!("outpost dev: stopping tasks (press Ctrl-C again to force)");
    let _ = stop_agent.send(());
    match agent.await {
        Ok(Err(e)) => eprintln!("agent: {e}"),
        Err(e) => eprintln!("agent: {e}"),
        Ok(Ok(())) => {}
    }
    server.shutdown().await;
    result
}

/// The node name of `dev`'s own agent.
const DEV_NODE: &str = "local";

/// `dev`'s agent's certificate: kept in its data dir, or issued by the server in the same
/// process (no token needed) once the server leads its group.
async fn dev_agent_credentials(
    server: &server::Server,
    addr: SocketAddr,
    dir: &std::path::Path,
) -> Result<agent::credentials::AgentTls> {
    let join = agent::credentials::Join {
        server: Some(addr.to_string()),
        token: None,
    };
    if agent::credentials::joined(dir) {
        let hosts = [std::net::IpAddr::from([127, 0, 0, 1])];
        let (_, tls) = agent::credentials::load_or_join(dir, &join, DEV_NODE, &hosts).await?;
        return Ok(tls);
    }
    let deadline = tokio::time::Instant::now() + DEV_READY_WAIT;
    let loopback = [std::net::IpAddr::from([127, 0, 0, 1])];
    loop {
        match server
            .issue(pki::NodeRole::Agent, DEV_NODE, &loopback)
            .await
        {
            Ok(joined) => {
                return Ok(agent::credentials::keep(
                    dir,
                    joined.ca,
                    joined.cert,
                    joined.key,
                )?);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("cannot issue the dev agent's certificate: {e}")
            }
            // No leader yet: the one-member group elects itself within a second or so.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What `dev` does while it runs: deploys the given specs and shows where their replicas answer,
/// then waits for the first signal. A signal during start-up ends it at once.
async fn dev_session(client: &Client, specs: commands::Specs, signals: &Signals) -> Result<()> {
    let start_up = async {
        if !specs.services.is_empty() {
            let names: Vec<String> = specs.services.iter().map(|s| s.name.clone()).collect();
            let how = commands::DeployOptions::default();
            commands::apply(client, specs, &how, crate::Format::Table).await?;
            show_endpoints(client, &names).await;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        started = start_up => started?,
        _ = signals.stop() => return Ok(()),
    }
    signals.stop().await;
    Ok(())
}

/// Prints where each replica of the deployed services answers, once they run.
async fn show_endpoints(client: &Client, services: &[String]) {
    let deadline = tokio::time::Instant::now() + DEV_READY_WAIT;
    let mut tasks = Vec::new();
    while tokio::time::Instant::now() < deadline {
        tasks = client.tasks(None).await.unwrap_or_default();
        tasks.retain(|t| services.contains(&t.service) && t.desired == DesiredState::Running);
        let wanted: u32 = client
            .services()
            .await
            .map(|s| {
                s.iter()
                    .filter(|s| services.contains(&s.name))
                    .map(|s| s.replicas)
                    .sum()
            })
            .unwrap_or(0);
        let up = tasks
            .iter()
            .filter(|t| t.state == TaskState::Running && t.ready)
            .count() as u32;
        if up >= wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        let ports: Vec<String> = t
            .ports
            .iter()
            .map(|(name, p)| format!("{name} → http://127.0.0.1:{p}"))
            .collect();
        let state = if t.ready {
            "ready".to_string()
        } else {
            t.state.to_string()
        };
        println!("  {:<16} {:<9} {}", t.id, state, ports.join("  "));
    }
}

/// Where a server listens (`--listen`, else `--api`, else the default) and is reached.
pub(crate) fn server_addrs(
    conn: &Connection,
    addr: &crate::ServerAddr,
) -> Result<(SocketAddr, Option<SocketAddr>)> {
    let listen = match &addr.listen {
        Some(l) => l
            .parse()
            .with_context(|| format!("--listen {l:?} is not an address (like 127.0.0.1:7400)"))?,
        None => listen_addr(conn, DEV_API)?,
    };
    let advertise = addr
        .advertise
        .as_deref()
        .map(|a| {
            a.parse().with_context(|| {
                format!("--advertise {a:?} is not an address (like 10.0.0.5:7400)")
            })
        })
        .transpose()?;
    Ok((listen, advertise))
}

/// `outpost server init`: writes a new cluster's CA, certificates and tokens, and returns.
pub fn server_init(conn: &Connection, addr: &crate::ServerAddr) -> Result<()> {
    let data_dir = conn
        .data_dir
        .clone()
        .context("server init needs --data-dir (or OUTPOST_DATA_DIR)")?;
    let (listen, advertise) = server_addrs(conn, addr)?;
    let config = server::ServerConfig {
        advertise: advertise.map(|a| a.to_string()),
        ..server::ServerConfig::new(data_dir.clone(), listen)
    };
    server::init(&config)?;
    let dir = data_dir.display();
    println!("outpost server init: a new cluster in {dir}");
    println!("  start it:     outpost --data-dir {dir} server --listen {listen}");
    println!(
        "  join agents:  outpost agent --join {} --token \"$(outpost --data-dir {dir} token show agent)\" ...",
        advertise.unwrap_or(listen)
    );
    Ok(())
}

pub async fn server(conn: &Connection, role: crate::ServerRole) -> Result<()> {
    let signals = Signals::install()?;
    init_logging();
    let data_dir = conn
        .data_dir
        .clone()
        .context("a server needs --data-dir (or OUTPOST_DATA_DIR)")?;
    let (listen, _) = server_addrs(conn, &role.addr)?;
    if role.join.is_some() && conn.token.is_none() {
        bail!(
            "joining a group needs its server join token: --token or OUTPOST_TOKEN (`outpost \
             token show server` on a server of the group prints it)"
        );
    }
    let settings = role.settings;
    let joining = role.join.clone();
    let start = server::start(server::ServerConfig {
        limits: settings.limits,
        report_batch: settings.report_batch,
        store: settings.store,
        service_range: settings.service_range,
        reset: role.reset,
        tls: true,
        advertise: role.addr.advertise.clone(),
        name: role.name.unwrap_or_default(),
        join: role.join,
        token: joining.as_ref().and(conn.token.clone()),
        ..server::ServerConfig::new(data_dir.clone(), listen)
    });
    // A join waits for the leader; a signal meanwhile ends it.
    let server = tokio::select! {
        started = start => started?,
        _ = signals.stop() => return Ok(()),
    };
    match joining {
        Some(target) if server.joined => println!(
            "outpost server: joined the group of {target} as server {}; API at https://{}",
            server.ctx.id, server.addr
        ),
        Some(_) => println!(
            "outpost server: already joined, as server {}; API at https://{}",
            server.ctx.id, server.addr
        ),
        None => println!(
            "outpost server: API at https://{}; CA in {}, admin token in {}",
            server.addr,
            data_dir.join(pki::files::CA).display(),
            data_dir.join("token").display()
        ),
    }
    signals.stop().await;
    server.shutdown().await;
    Ok(())
}

/// Where an agent finds the cluster and serves its own API.
pub struct AgentAddr {
    pub join: Option<String>,
    pub listen: String,
    pub advertise: Option<String>,
}

pub async fn agent(
    conn: &Connection,
    name: Option<String>,
    addr: &AgentAddr,
    heartbeat: &str,
    node: &crate::NodeOptions,
) -> Result<()> {
    let signals = Signals::install()?;
    let (eviction_threshold, task_ports, mirror) = node_settings(node)?;
    let image_gc_every = parse_image_gc(&node.image_gc_every)?;
    let heartbeat = parse_heartbeat(heartbeat)?;
    init_logging();
    let data_dir = conn
        .data_dir
        .clone()
        .context("an agent needs --data-dir (or OUTPOST_DATA_DIR)")?;
    let name = match name {
        Some(n) => n,
        None => hostname().context("cannot read the host name; give one with --name")?,
    };
    let listen: SocketAddr = addr
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an address", addr.listen))?;
    let advertise: Option<SocketAddr> = addr
        .advertise
        .as_deref()
        .map(|a| {
            a.parse()
                .with_context(|| format!("--advertise {a:?} is not an address"))
        })
        .transpose()?;
    let ip = advertise.unwrap_or(listen).ip();
    if ip.is_unspecified() {
        bail!(
            "the agent listens on {listen}: give the address servers reach it at with --advertise"
        );
    }
    let join = agent::credentials::Join {
        server: addr.join.clone().or_else(|| conn.api.clone()),
        token: conn.token.clone(),
    };
    let (server, tls) = agent::credentials::load_or_join(&data_dir, &join, &name, &[ip]).await?;
    let config = agent::AgentConfig {
        name,
        data_dir,
        listen,
        server,
        token: String::new(),
        tls: Some(tls),
        advertise,
        workdir: None,
        reserved: agent::default_reserved(),
        eviction_threshold,
        ports: task_ports.clone(),
        heartbeat,
        mesh: true,
        mirror,
        image_gc_every,
        insecure_registries: node.insecure_registry.clone(),
    };
    agent::Agent::run(config, signals.stop(), signals.force()).await?;
    Ok(())
}

/// The node's eviction threshold and task port range, checked before anything starts.
fn node_settings(
    node: &crate::NodeOptions,
) -> Result<(u64, RangeInclusive<u16>, Option<SocketAddr>)> {
    Ok((
        parse_threshold(&node.eviction_threshold)?,
        parse_port_range(&node.task_ports)?,
        parse_mirror(&node.mirror)?,
    ))
}

/// `--mirror`: a loopback address, or `off`. The mirror takes pushes without credentials, so
/// it never listens beyond the host.
fn parse_mirror(text: &str) -> Result<Option<SocketAddr>> {
    if text == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = text.parse().with_context(|| {
        format!("--mirror {text:?} is not an address like 127.0.0.1:5000 (or off)")
    })?;
    if !addr.ip().is_loopback() {
        bail!(
            "--mirror {text}: the image mirror listens on loopback only (127.0.0.1:PORT), or give off"
        );
    }
    Ok(Some(addr))
}

/// `--image-gc-every`: a duration, or `off`. Under a minute a collection would mostly reread
/// the same manifests.
fn parse_image_gc(text: &str) -> Result<Option<Duration>> {
    if text == "off" {
        return Ok(None);
    }
    let every = humantime::parse_duration(text).map_err(|e| {
        anyhow::anyhow!("--image-gc-every {text:?} is not a duration like 10m (or off): {e}")
    })?;
    anyhow::ensure!(
        every >= Duration::from_secs(60),
        "--image-gc-every {text:?} is under a minute: give 1m or more, or off"
    );
    Ok(Some(every))
}

fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>> {
    let parsed = text.split_once('-').and_then(|(first, last)| {
        Some((
            first.trim().parse::<u16>().ok()?,
            last.trim().parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some((first, last)) if first > 0 && first <= last => Ok(first..=last),
        _ => bail!(
            "--task-ports {text:?} is not a port range like 20000-29999 (FIRST-LAST, 1-65535)"
        ),
    }
}

fn parse_heartbeat(text: &str) -> Result<Duration> {
    let every = humantime::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("--heartbeat {text:?} is not a duration like 500ms: {e}"))?;
    let (min, max) = (agent::MIN_HEARTBEAT, agent::MAX_HEARTBEAT);
    anyhow::ensure!(
        (min..=max).contains(&every),
        "--heartbeat {text:?} is outside {} to {}: faster loads the servers for nothing, slower \
         cannot detect a lost node in about a second",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    Ok(every)
}

fn parse_threshold(text: &str) -> Result<u64> {
    let bytes = text
        .parse::<spec::Memory>()
        .map_err(|e| anyhow::anyhow!("--eviction-threshold: {e}"))?;
    Ok(bytes.bytes())
}

fn hostname() -> Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))?;
    Ok(raw.trim().to_string())
}
