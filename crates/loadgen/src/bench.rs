//! The run, phase by phase, against one server:
//!
//! 1. every simulated agent registers (and from then on heartbeats and watches);
//! 2. one deploy of every service; the clock runs until every task's node has heard of it
//!    (placed) and until every task's `running` report is acknowledged (running), and the
//!    server's own counts (`GET /v1/services`) confirm it;
//! 3. the steady phase: agents flip their tasks' readiness report after report for the asked
//!    time, while `GET /v1/tasks?service=…` is timed every 50 ms; then each agent finishes its
//!    report in flight, and the server's tasks are compared with what their nodes last had
//!    acknowledged.
//!
//! `phase=steady` and `phase=settled` go to stdout the moment the steady phase starts and ends,
//! so a script can read the server's I/O counters at exactly those points.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use api::{DeployRequest, DesiredState, TaskState};
use client::{Client, ClientError};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::args::Options;
use crate::figures::{Figures, Latencies};
use crate::sim::{Counters, Phase, Sim, Told};
use crate::specs;

/// How often `ps` of one service is timed in the steady phase: the sampling pace.
const PS_EVERY: Duration = Duration::from_millis(50);

/// How often a wait looks at the counters; their totals are timed by the agents themselves,
/// so this only bounds how late a phase ends, not what it measures.
const POLL: Duration = Duration::from_millis(10);

/// How often a long wait says how far it got, on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Loopback addresses for agents: 127.0.X.Y with X 1 to 255 and Y 1 to 250.
const PER_BLOCK: usize = 250;
pub const MAX_NODES: usize = 255 * PER_BLOCK;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot read {path}: {source} (is `outpost server --data-dir {dir}` running? or give \
         --api and --token)",
        dir = .path.parent().unwrap_or(Path::new(".")).display()
    )]
    ServerFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--nodes {nodes} is more than the {MAX_NODES} loopback addresses agents can use")]
    TooManyNodes { nodes: usize },
    #[error("cannot start the thread that times `ps`: {0}")]
    Runtime(std::io::Error),
    #[error("the generated service specs were refused: {0}")]
    Spec(#[from] spec::SpecError),
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        source: ClientError,
    },
    #[error(
        "{what} did not finish within {patience:?}: {got} of {want} (raise --patience, or see \
         the server's log){}",
        last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    Timeout {
        what: &'static str,
        got: u64,
        want: u64,
        patience: Duration,
        last_error: Option<String>,
    },
}

/// Where the server is and its token: from the flags, or its data dir's `api` and `token`.
pub fn target(options: &Options) -> Result<(String, String), LoadError> {
    let read = |name: &str| -> Result<String, LoadError> {
        let dir = options.data_dir.clone().unwrap_or_default();
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|source| LoadError::ServerFile { path, source })
    };
    let api = match &options.api {
        Some(a) => a.clone(),
        None => read("api")?,
    };
    let token = match &options.token {
        Some(t) => t.clone(),
        None => read("token")?,
    };
    Ok((api, token))
}

/// The TLS configuration for a server whose data dir holds the cluster CA (`ca.pem`); `None`
/// for a plain server.
pub fn tls(options: &Options) -> Result<Option<rustls::ClientConfig>, LoadError> {
    let Some(dir) = &options.data_dir else {
        return Ok(None);
    };
    let path = dir.join(pki::files::CA);
    let ca = match std::fs::read_to_string(&path) {
        Ok(ca) => ca,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::ServerFile { path, source }),
    };
    pki::tls::client_config(&ca, None)
        .map(Some)
        .map_err(|e| LoadError::ServerFile {
            path,
            source: std::io::Error::other(e),
        })
}

pub async fn run(options: &Options) -> Result<Figures, LoadError> {
    if options.nodes > MAX_NODES {
        return Err(LoadError::TooManyNodes {
            nodes: options.nodes,
        });
    }
    let (api, token) = target(options)?;
    let tls = tls(options)?;
    let control = Client::connect(&api, &token, None, tls.clone());
    let operator = Operator {
        api: api.clone(),
        token: token.clone(),
        tls: tls.clone(),
    };
    let mut run = Run {
        operator,
        options: options.clone(),
        counters: Arc::new(Counters::new(
            options.services as u64 * u64::from(options.replicas),
        )),
        figures: Figures {
            nodes: options.nodes as u64,
            services: options.services as u64,
            replicas: u64::from(options.replicas),
            ps_service: specs::service_name(0),
            ..Figures::default()
        },
        control,
    };
    run.wait_for_leader().await?;
    let join_token = match &tls {
        Some(_) => Some(run.join_token().await?),
        None => None,
    };
    let (phase, told) = run.start_agents(&api, &token, tls, join_token).await?;
    run.deploy().await?;
    // A steady load on a server still working through the deploy would measure the deploy.
    if run.figures.running_tasks >= run.tasks() {
        run.steady(&phase, told).await?;
    } else {
        eprintln!(
            "warning: not every task was reported running within {:?}, so the steady phase is \
             skipped (a longer --patience, or a smaller run, gets there)",
            options.patience
        );
    }
    Ok(run.finish())
}

/// How an operator reaches the server: what the `ps` sampler connects with.
struct Operator {
    api: String,
    token: String,
    tls: Option<rustls::ClientConfig>,
}

struct Run {
    operator: Operator,
    options: Options,
    counters: Arc<Counters>,
    figures: Figures,
    control: Client,
}

impl Run {
    fn tasks(&self) -> u64 {
        self.figures.tasks()
    }

    /// Writes are refused until the one-member group has elected itself.
    async fn wait_for_leader(&self) -> Result<(), LoadError> {
        let deadline = Instant::now() + self.options.patience;
        loop {
            if let Ok(status) = self.control.status().await
                && status.leader.is_some()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("the server electing itself leader", 0, 1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent join token, as `outpost token show agent` gets it.
    async fn join_token(&self) -> Result<String, LoadError> {
        let answer = self.control.token("agent").await;
        answer.map(|a| a.token).map_err(|source| LoadError::Api {
            what: "reading the agent join token",
            source,
        })
    }

    /// Starts every simulated agent and waits until all are registered.
    async fn start_agents(
        &mut self,
        api: &str,
        token: &str,
        tls: Option<rustls::ClientConfig>,
        join_token: Option<String>,
    ) -> Result<(watch::Sender<Phase>, mpsc::UnboundedReceiver<Told>), LoadError> {
        let start = Instant::now();
        let (phase, phase_rx) = watch::channel(Phase::Deploy);
        let (told_tx, told) = mpsc::unbounded_channel();
        let registering = Arc::new(Semaphore::new(crate::sim::REGISTERING));
        for i in 0..self.options.nodes {
            let sim = Sim {
                name: node_name(i),
                address: node_address(i),
                api: api.to_string(),
                token: token.to_string(),
                tls: tls.clone(),
                join_token: join_token.clone(),
                counters: self.counters.clone(),
                phase: phase_rx.clone(),
                told: told_tx.clone(),
                registering: registering.clone(),
            };
            tokio::spawn(sim.run());
        }
        let counters = self.counters.clone();
        let nodes = self.options.nodes as u64;
        let what = "registering every node";
        let deadline = start + self.options.patience;
        let registered = progress_until(what, nodes, deadline, || {
            counters.registered.load(Ordering::Relaxed)
        })
        .await;
        if registered < nodes {
            return Err(self.timeout(what, registered, nodes));
        }
        self.figures.registered = start.elapsed();
        eprintln!(
            "registered {nodes} nodes in {:.1} s",
            self.figures.registered.as_secs_f64()
        );
        Ok((phase, told))
    }

    /// Deploys every service in one request and times it to placed and to running. A server
    /// that does not get there within the patience is measured as far as it got: how many
    /// tasks, in how long.
    async fn deploy(&mut self) -> Result<(), LoadError> {
        let request = DeployRequest {
            services: specs::services(self.options.services, self.options.replicas)?,
            dry_run: false,
            objects: Vec::new(),
            force: false,
        };
        let start = Instant::now();
        let deadline = start + self.options.patience;
        self.send_deploy(&request, deadline).await?;
        self.figures.deploy_call = start.elapsed();
        let tasks = self.tasks();
        let c = self.counters.clone();
        self.figures.placed_tasks =
            progress_until("placing every task", tasks, deadline, || c.placed()).await;
        self.figures.placed = reached(c.all_placed.get(), start);
        self.figures.running_tasks =
            progress_until("every task reported running", tasks, deadline, || {
                c.running()
            })
            .await;
        self.figures.running = reached(c.all_running.get(), start);
        eprintln!(
            "{} of {tasks} tasks placed in {:.1} s, {} running in {:.1} s",
            self.figures.placed_tasks,
            self.figures.placed.as_secs_f64(),
            self.figures.running_tasks,
            self.figures.running.as_secs_f64()
        );
        // A server too busy to answer leaves the counts at zero; the run still prints what it
        // measured.
        if let Err(e) = self.confirm_running().await {
            eprintln!("warning: {e}");
        }
        Ok(())
    }

    /// The deploy, sent again while the server cannot take it yet (no leader, or too busy to
    /// answer): a deploy of the same specs changes nothing the second time.
    async fn send_deploy(
        &self,
        request: &DeployRequest,
        deadline: Instant,
    ) -> Result<(), LoadError> {
        loop {
            match self.control.deploy(request).await {
                Ok(_) => return Ok(()),
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    eprintln!("deploy not taken yet ({e}); sending it again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(source) => {
                    return Err(LoadError::Api {
                        what: "the deploy failed",
                        source,
                    });
                }
            }
        }
    }

    /// What the server itself counts, running and ready, across every service.
    async fn confirm_running(&mut self) -> Result<(), LoadError> {
        let services = self
            .control
            .services()
            .await
            .map_err(|source| LoadError::Api {
                what: "cannot list services",
                source,
            })?;
        self.figures.confirmed_running = services.iter().map(|s| u64::from(s.running)).sum();
        self.figures.confirmed_ready = services.iter().map(|s| u64::from(s.ready)).sum();
        Ok(())
    }

    /// Readiness flips for the asked time, `ps` timed meanwhile; then every agent settles and
    /// the server's tasks are compared with what their agents were told.
    async fn steady(
        &mut self,
        phase: &watch::Sender<Phase>,
        mut told: mpsc::UnboundedReceiver<Told>,
    ) -> Result<(), LoadError> {
        let index_before = self.applied_index().await?;
        let changes_before = self.counters.changes.load(Ordering::Relaxed);
        let reports_before = self.counters.reports.load(Ordering::Relaxed);
        println!("phase=steady");
        self.figures.steady_ran = true;
        let start = Instant::now();
        phase.send_replace(Phase::Steady);
        let (stop_sampling, stopped) = watch::channel(false);
        let sampler = self.start_sampler(stopped)?;
        // The length of the load, not a wait for anything: the agents keep reporting meanwhile.
        tokio::time::sleep(self.options.steady).await;
        phase.send_replace(Phase::Settle);
        let expected = self.collect_told(&mut told).await;
        self.figures.steady = start.elapsed();
        let _ = stop_sampling.send(true);
        let sampled = tokio::task::spawn_blocking(move || sampler.join()).await;
        self.figures.ps = sampled.ok().and_then(Result::ok).unwrap_or_default();
        self.figures.steady_changes =
            self.counters.changes.load(Ordering::Relaxed) - changes_before;
        self.figures.steady_reports =
            self.counters.reports.load(Ordering::Relaxed) - reports_before;
        self.figures.steady_entries = self.applied_index().await? - index_before;
        println!("phase=settled");
        eprintln!(
            "{} status changes in {:.1} s",
            self.figures.steady_changes,
            self.figures.steady.as_secs_f64()
        );
        self.verify(expected).await
    }

    /// Every agent's acknowledged readiness, once its last report is in; within the patience,
    /// so the tasks of agents whose last report never got through are left unverified.
    async fn collect_told(
        &mut self,
        told: &mut mpsc::UnboundedReceiver<Told>,
    ) -> HashMap<String, bool> {
        let deadline = Instant::now() + self.options.patience;
        let mut expected = HashMap::new();
        let mut agents = 0;
        while agents < self.options.nodes {
            match tokio::time::timeout_at(deadline, told.recv()).await {
                Ok(Some(t)) => {
                    agents += 1;
                    expected.extend(t);
                }
                _ => {
                    eprintln!(
                        "warning: {} of {} agents still had a report in flight after {:?}",
                        self.options.nodes - agents,
                        self.options.nodes,
                        self.options.patience
                    );
                    break;
                }
            }
        }
        self.figures.settled_nodes = agents as u64;
        expected
    }

    /// Compares each running task's readiness on the server with what its agent was told.
    async fn verify(&mut self, expected: HashMap<String, bool>) -> Result<(), LoadError> {
        let tasks = self
            .control
            .tasks(None)
            .await
            .map_err(|source| LoadError::Api {
                what: "cannot list tasks",
                source,
            })?;
        let on_server: HashMap<&str, bool> = tasks
            .iter()
            .filter(|t| t.desired == DesiredState::Running && t.state == TaskState::Running)
            .map(|t| (t.id.as_str(), t.ready))
            .collect();
        let matching = expected
            .iter()
            .filter(|(id, ready)| on_server.get(id.as_str()) == Some(*ready))
            .count() as u64;
        self.figures.verified = matching;
        self.figures.mismatched = expected.len() as u64 - matching;
        Ok(())
    }

    async fn applied_index(&self) -> Result<u64, LoadError> {
        self.control
            .status()
            .await
            .map(|s| s.applied_index)
            .map_err(|source| LoadError::Api {
                what: "cannot read the server's status",
                source,
            })
    }

    fn timeout(&self, what: &'static str, got: u64, want: u64) -> LoadError {
        LoadError::Timeout {
            what,
            got,
            want,
            patience: self.options.patience,
            last_error: self.counters.last_error(),
        }
    }

    fn finish(mut self) -> Figures {
        let c = &self.counters;
        self.figures.joined = c.joined.load(Ordering::Relaxed);
        self.figures.failed_joins = c.failed_joins.load(Ordering::Relaxed);
        self.figures.failed_registers = c.failed_registers.load(Ordering::Relaxed);
        self.figures.failed_reports = c.failed_reports.load(Ordering::Relaxed);
        self.figures.failed_heartbeats = c.failed_heartbeats.load(Ordering::Relaxed);
        self.figures.failed_watches = c.failed_watches.load(Ordering::Relaxed);
        self.figures
    }
}

/// Waits until `progress` reaches `want` or `deadline` passes, saying how far it got now and
/// then; returns the last count.
async fn progress_until(
    what: &str,
    want: u64,
    deadline: Instant,
    progress: impl Fn() -> u64,
) -> u64 {
    let start = Instant::now();
    let mut next_note = start + PROGRESS_EVERY;
    loop {
        let got = progress();
        let now = Instant::now();
        if got >= want || now >= deadline {
            return got;
        }
        if now >= next_note {
            eprintln!(
                "{what}: {got} of {want} after {:.0} s",
                (now - start).as_secs_f64()
            );
            next_note = now + PROGRESS_EVERY;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// From `start` to the instant a total was reached, or to now if it was not.
fn reached(at: Option<&Instant>, start: Instant) -> Duration {
    at.map_or_else(|| start.elapsed(), |t| *t - start)
}

impl Run {
    /// Times `ps` of one service from a thread, runtime and connection of its own, as
    /// `outpost ps` is a process of its own: on the runtime of 5,000 simulated agents the
    /// figure would include the load generator's own queue.
    fn start_sampler(
        &self,
        stop: watch::Receiver<bool>,
    ) -> Result<std::thread::JoinHandle<Latencies>, LoadError> {
        let Operator { api, token, tls } = &self.operator;
        let (api, token, tls) = (api.clone(), token.clone(), tls.clone());
        let service = self.figures.ps_service.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LoadError::Runtime)?;
        std::thread::Builder::new()
            .name("ps-sampler".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let client = Client::connect(&api, &token, None, tls);
                    sample_ps(client, service, stop).await
                })
            })
            .map_err(LoadError::Runtime)
    }
}

/// Times `GET /v1/tasks?service=…` (what `outpost ps SERVICE` asks) every [`PS_EVERY`] until
/// told to stop. A slow answer delays the next sample rather than overlapping it.
async fn sample_ps(client: Client, service: String, mut stop: watch::Receiver<bool>) -> Latencies {
    let mut tick = tokio::time::interval(PS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Latencies::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return latencies,
        }
        let start = Instant::now();
        match client.tasks(Some(&service)).await {
            Ok(_) => latencies.record(start.elapsed()),
            Err(_) => latencies.errors += 1,
        }
    }
}

/// Whether a failed request may go through if sent again: the server was not reachable or
/// answered that it cannot take it now.
fn retryable(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { .. }) || e.status().is_some_and(|s| s.as_u16() == 503)
}

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Agent `i`'s own loopback address; 127.0.0.x stays free for the server and its clients.
fn node_address(i: usize) -> IpAddr {
    let block = (1 + i / PER_BLOCK).min(255) as u8;
    let host = (1 + i % PER_BLOCK) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, block, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_gets_its_own_loopback_address_outside_127_0_0() {
        let addresses: std::collections::HashSet<IpAddr> =
            (0..MAX_NODES).map(node_address).collect();
        assert_eq!(addresses.len(), MAX_NODES);
        assert!(addresses.iter().all(|a| a.is_loopback()));
        assert_eq!(node_address(0), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
        assert_eq!(
            node_address(MAX_NODES - 1),
            IpAddr::V4(Ipv4Addr::new(127, 0, 255, 250))
        );
    }

    #[test]
    fn the_server_is_found_through_its_data_dir_and_a_missing_file_says_what_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api"), "http://127.0.0.1:7400\n").unwrap();
        std::fs::write(dir.path().join("token"), "secret\n").unwrap();
        let options = Options {
            data_dir: Some(dir.path().to_path_buf()),
            ..Options::default()
        };
        assert_eq!(
            target(&options).unwrap(),
            ("http://127.0.0.1:7400".into(), "secret".into())
        );
        std::fs::remove_file(dir.path().join("token")).unwrap();
        let err = target(&options).unwrap_err().to_string();
        assert!(
            err.contains("token") && err.contains("outpost server --data-dir"),
            "{err}"
        );
    }
}
