//! Long-running roles: `dev` (server + agent in one process), `server`, `agent`.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::{DesiredState, TaskState};
use client::Client;
use spec::ServiceSpec;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::Connection;
use crate::commands;

pub const DEV_API: &str = "127.0.0.1:7400";
/// How long `dev` waits for the replicas it deployed to answer before printing where they are.
const DEV_READY_WAIT: Duration = Duration::from_secs(30);

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .compact()
        .init();
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
    settings: crate::ServerSettings,
) -> Result<()> {
    let signals = Signals::install()?;
    let (eviction_threshold, task_ports) = node_settings(node)?;
    init_logging();
    // Parse before starting anything: a bad file must not leave a half-started dev behind.
    let specs = commands::read_specs(files)?;
    let data_dir = conn
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(commands::DEV_DATA_DIR));
    let listen = listen_addr(conn, DEV_API)?;
    // The server keeps `api`, `token` and its store at the top of the data dir, where the CLI
    // looks; the agent keeps its own state below it, as it would on another machine.
    let server = server::start(server::ServerConfig {
        limits: settings.limits,
        report_batch: settings.report_batch,
        store: settings.store,
        reset,
        // The agent below is called `local` too: `outpost nodes` shows one node, both roles.
        name: "local".into(),
        ..server::ServerConfig::new(data_dir.clone(), listen)
    })
    .await
    .context("cannot start the server")?;
    let api = format!("http://{}", server.addr);
    let agent_config = agent::AgentConfig {
        name: "local".into(),
        data_dir: data_dir.join("agent"),
        listen: "127.0.0.1:0".parse()?,
        server: api.clone(),
        token: server.token.clone(),
        workdir: std::env::current_dir().ok(),
        reserved: agent::default_reserved(),
        eviction_threshold,
        ports: task_ports,
        heartbeat: agent::HEARTBEAT_INTERVAL,
    };
    // The agent is stopped only from here, after the first signal or a failed start-up, so it
    // ending by itself always means it could not run.
    let (stop_agent, agent_stop) = tokio::sync::oneshot::channel::<()>();
    let mut agent = tokio::spawn(agent::Agent::run(
        agent_config,
        async move {
            let _ = agent_stop.await;
        },
        signals.force(),
    ));
    let client = Client::new(&api, &server.token);
    println!("outpost dev: API at {api}, data in {}", data_dir.display());
    println!("  try: outpost --data-dir {} ps", data_dir.display());
    let result = tokio::select! {
        done = dev_session(&client, specs, &signals) => done,
        // A dev without its agent (its state file is damaged, say) would look alive but run
        // nothing.
        ended = &mut agent => {
            server.shutdown().await;
            return match ended {
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the agent stopped")),
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

/// What `dev` does while it runs: deploys the given specs and shows where their replicas answer,
/// then waits for the first signal. A signal during start-up ends it at once.
async fn dev_session(client: &Client, specs: Vec<ServiceSpec>, signals: &Signals) -> Result<()> {
    let start_up = async {
        if !specs.is_empty() {
            let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            commands::apply(client, specs, false, crate::Format::Table).await?;
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

pub async fn server(conn: &Connection, role: crate::ServerRole) -> Result<()> {
    let signals = Signals::install()?;
    init_logging();
    let data_dir = conn
        .data_dir
        .clone()
        .context("a server needs --data-dir (or OUTPOST_DATA_DIR)")?;
    let listen = match &role.listen {
        Some(raw) => listen_on(raw, "--listen")?,
        None => listen_addr(conn, DEV_API)?,
    };
    if role.join.is_some() && conn.token.is_none() {
        bail!(
            "joining a group needs its cluster token: --token, --token-file or OUTPOST_TOKEN \
             (a server of the group keeps it in its data dir's `token` file)"
        );
    }
    let settings = role.settings;
    let joining = role.join.clone();
    let start = server::start(server::ServerConfig {
        limits: settings.limits,
        report_batch: settings.report_batch,
        store: settings.store,
        reset: role.reset,
        advertise: role.advertise,
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
        Some(target) => println!(
            "outpost server: joined the group of {target} as server {}; API at http://{}",
            server.ctx.id, server.addr
        ),
        None => println!(
            "outpost server: API at http://{}; token in {}",
            server.addr,
            data_dir.join("token").display()
        ),
    }
    signals.stop().await;
    server.shutdown().await;
    Ok(())
}

pub async fn agent(
    conn: &Connection,
    name: Option<String>,
    agent_listen: &str,
    heartbeat: &str,
    node: &crate::NodeOptions,
) -> Result<()> {
    let signals = Signals::install()?;
    let (eviction_threshold, task_ports) = node_settings(node)?;
    let heartbeat = parse_heartbeat(heartbeat)?;
    init_logging();
    let data_dir = conn
        .data_dir
        .clone()
        .context("an agent needs --data-dir (or OUTPOST_DATA_DIR)")?;
    let Some(api) = conn.api.clone() else {
        bail!("an agent needs the server's address: --api or OUTPOST_API")
    };
    let Some(token) = conn.token.clone() else {
        bail!("an agent needs the cluster token: --token or OUTPOST_TOKEN")
    };
    let name = match name {
        Some(n) => n,
        None => hostname().context("cannot read the host name; give one with --name")?,
    };
    let listen: SocketAddr = agent_listen
        .parse()
        .with_context(|| format!("--agent-listen {agent_listen:?} is not an address"))?;
    let config = agent::AgentConfig {
        name,
        data_dir,
        listen,
        server: api,
        token,
        workdir: None,
        reserved: agent::default_reserved(),
        eviction_threshold,
        ports: task_ports.clone(),
        heartbeat,
    };
    agent::Agent::run(config, signals.stop(), signals.force()).await?;
    Ok(())
}

/// The node's eviction threshold and task port range, checked before anything starts.
fn node_settings(node: &crate::NodeOptions) -> Result<(u64, RangeInclusive<u16>)> {
    Ok((
        parse_threshold(&node.eviction_threshold)?,
        parse_port_range(&node.task_ports)?,
    ))
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
