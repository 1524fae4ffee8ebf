//! The Docker driver: a task is a container, created through the Engine API (bollard) and
//! labelled with its service, task, revision and the agent that owns it. Docker's own restart
//! policy stays `no`: restarts, backoff and probes are the supervisor's, as for processes.
//! Containers outlive the agent; a restarted agent re-adopts them by container id and label.
//!
//! Only this file knows bollard.

use crate::mirror::upstream::{PullSecret, Reference};
use crate::objects::{CONFIGS_VAR, SECRETS_VAR};
use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptions, StartContainerOptions, StatsOptionsBuilder,
    TagImageOptionsBuilder, WaitContainerOptions,
};
use futures_util::StreamExt;
use spec::{PullPolicy, ServiceSpec};
use tokio::io::AsyncWriteExt;

use super::{BoxFuture, Driver, DriverError, Exit, Handle, Launch, Liveness, Started, StopSignal};

pub const LABEL_SERVICE: &str = "outpost.service";
pub const LABEL_TASK: &str = "outpost.task";
pub const LABEL_REVISION: &str = "outpost.revision";
/// The agent that owns a container: cleanup never touches another agent's containers.
pub const LABEL_AGENT: &str = "outpost.agent";

/// The capabilities an ordinary service keeps, after dropping all (Docker's default set minus
/// the rarely needed and risky ones: NET_RAW, MKNOD, AUDIT_WRITE, SYS_CHROOT).
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
];

/// How often a dead log stream is retried while its container runs.
const LOG_RETRY: Duration = Duration::from_millis(500);

pub struct DockerDriver {
    docker: Docker,
    agent_id: String,
    /// The node's image mirror, which images missing from the Engine are pulled from first.
    mirror: Option<crate::mirror::Mirror>,
}

impl DockerDriver {
    /// Connects to the local engine and checks that it answers.
    pub async fn connect(agent_id: &str) -> Result<DockerDriver, String> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot connect to the Docker Engine: {e}"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| format!("the Docker Engine does not answer: {e}"))?;
        docker
            .ping()
            .await
            .map_err(|e| format!("the Docker Engine does not answer: {e}"))?;
        Ok(DockerDriver {
            docker,
            agent_id: agent_id.to_string(),
            mirror: None,
        })
    }

    /// Pulls images through the node's mirror when it holds them.
    pub fn with_mirror(self, mirror: Option<crate::mirror::Mirror>) -> DockerDriver {
        DockerDriver { mirror, ..self }
    }

    fn container_name(&self, task: &str) -> String {
        format!("outpost-{}-{task}", self.agent_id)
    }

    /// Containers of this agent: (task id, container id).
    pub async fn owned(&self) -> Result<Vec<(String, String)>, String> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_AGENT}={}", self.agent_id)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.labels?.get(LABEL_TASK)?.clone(), c.id?)))
            .collect())
    }

    /// Removes a container of this agent, running or not.
    pub async fn remove(&self, container: &str) {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        if let Err(e) = self.docker.remove_container(container, Some(options)).await
            && !is_not_found(&e)
        {
            tracing::warn!("cannot remove container {container}: {e}");
        }
    }

    /// Removes the Engine's copy of the store's `name:tag` that was pulled through the node's
    /// mirror at `mirror` (tagged `MIRROR/name:tag`, and with the spec's name, which the store
    /// names `name:tag` too), unless a container, running or not, uses it. Returns the tags
    /// removed; the image goes with its last one.
    pub async fn remove_mirrored(
        &self,
        mirror: &str,
        name: &str,
        tag: &str,
    ) -> Result<Vec<String>, String> {
        let pulled = format!("{mirror}/{name}:{tag}");
        let image = match self.docker.inspect_image(&pulled).await {
            Ok(image) => image,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot inspect {pulled}: {e}")),
        };
        let Some(id) = image.id else {
            return Ok(Vec::new());
        };
        let options = ListContainersOptionsBuilder::new().all(true).build();
        let containers = (self.docker.list_containers(Some(options)).await)
            .map_err(|e| format!("cannot list containers: {e}"))?;
        if containers
            .iter()
            .any(|c| c.image_id.as_deref() == Some(&id))
        {
            return Ok(Vec::new());
        }
        let ours = |t: &String| *t == pulled || images::store_name(t) == (name, tag);
        let mut removed = Vec::new();
        for t in image
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter(|t| ours(t))
        {
            match self
                .docker
                .remove_image(t, None::<RemoveImageOptions>, None)
                .await
            {
                Ok(_) => removed.push(t.clone()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(format!("cannot remove {t} from the Docker Engine: {e}")),
            }
        }
        Ok(removed)
    }

    /// Makes sure the image is here, following the pull policy. Returns warnings.
    async fn ensure_image(&self, launch: &Launch, image: &str) -> Result<Vec<String>, DriverError> {
        let spec = &launch.spec;
        let present = self.docker.inspect_image(image).await.is_ok();
        let fail = |reason: String| DriverError::Start {
            program: image.to_string(),
            reason,
        };
        let secret = pull_secret(launch).map_err(fail)?;
        let Some(mirror) = &self.mirror else {
            return (self.ensure_without_mirror(spec.pull, image, present, secret.as_ref())).await;
        };
        let refresh = match (spec.pull, present) {
            (PullPolicy::Never, true) | (PullPolicy::IfNotPresent, true) => return Ok(Vec::new()),
            (PullPolicy::Never, false) => {
                let why = "the image is not on this node and the pull policy is never";
                return Err(fail(why.into()));
            }
            (PullPolicy::IfNotPresent, false) => false,
            (PullPolicy::Always, _) => true,
        };
        // The store is filled (from its registry, or from peers, which the node's mirror knows)
        // and the Engine pulls from the mirror: it never needs the registry itself.
        let quiet = |_| {};
        let obtained = match mirror.obtain(image, refresh, secret.as_ref(), &quiet).await {
            Ok(obtained) => obtained,
            Err(why) if present => {
                return Ok(vec![format!(
                    "cannot pull {image} ({why}); starting from the Engine's local image"
                )]);
            }
            Err(why) => {
                return Err(fail(format!(
                    "the image is not on this node and no source could give it: {why} (push                      it to a node's mirror to start it without a registry)"
                )));
            }
        };
        self.pull_from_mirror(image, &obtained.image)
            .await
            .map_err(fail)?;
        Ok(obtained.warning.into_iter().collect())
    }

    /// The pull policy with the node's mirror `off`: the Engine pulls from the registry itself.
    async fn ensure_without_mirror(
        &self,
        pull: PullPolicy,
        image: &str,
        present: bool,
        secret: Option<&PullSecret>,
    ) -> Result<Vec<String>, DriverError> {
        let fail = |reason: String| DriverError::Start {
            program: image.to_string(),
            reason,
        };
        let credentials = match secret {
            Some(secret) => engine_credentials(secret, image).map_err(fail)?,
            None => None,
        };
        match (pull, present) {
            (PullPolicy::Never, true) | (PullPolicy::IfNotPresent, true) => Ok(Vec::new()),
            (PullPolicy::Never, false) => Err(fail(
                "the image is not on this node and the pull policy is never".into(),
            )),
            (_, present) => match self.pull(image, credentials).await {
                Ok(()) => Ok(Vec::new()),
                Err(e) if present => Ok(vec![format!(
                    "cannot pull {image} ({e}); the registry is unreachable, starting from the \
                     local image"
                )]),
                Err(e) => Err(fail(format!(
                    "the image is not on this node and cannot be pulled (this node's image \
                     mirror is off): {e}"
                ))),
            },
        }
    }

    /// Pulls `from` (`MIRROR/name:tag`) and tags it as `image`, the name the spec gives.
    pub(crate) async fn pull_from_mirror(&self, image: &str, from: &str) -> Result<(), String> {
        self.pull(from, None).await.map_err(|e| {
            format!("cannot pull {image} from this node's image mirror ({from}): {e}")
        })?;
        let (repo, tag) = images::split_tag(image);
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        (self.docker.tag_image(from, Some(options)).await)
            .map_err(|e| format!("cannot tag {from} as {image}: {e}"))
    }

    async fn pull(
        &self,
        image: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<(), String> {
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(step) = stream.next().await {
            step.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn body(&self, launch: &Launch, security_opt: Vec<String>) -> ContainerCreateBody {
        let spec = &launch.spec;
        let (bindings, exposed) = port_bindings(launch);
        let labels = HashMap::from([
            (LABEL_SERVICE.to_string(), launch.service.clone()),
            (LABEL_TASK.to_string(), launch.task_id.clone()),
            (LABEL_REVISION.to_string(), launch.version.to_string()),
            (LABEL_AGENT.to_string(), self.agent_id.clone()),
        ]);
        ContainerCreateBody {
            image: spec.image.clone(),
            cmd: (!launch.command.is_empty()).then(|| launch.command.clone()),
            entrypoint: (!launch.entrypoint.is_empty()).then(|| launch.entrypoint.clone()),
            // The host directories of its files are the agent's business: the container sees
            // the files where Swarm puts them.
            env: Some(
                launch
                    .env
                    .iter()
                    .filter(|(k, _)| ![SECRETS_VAR, CONFIGS_VAR].contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            user: spec.user.clone(),
            working_dir: spec.workdir.clone(),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            stop_signal: spec.stop_signal.clone(),
            host_config: Some(HostConfig {
                dns: launch.dns.as_ref().map(|d| vec![d.server.to_string()]),
                dns_search: launch.dns.as_ref().map(|d| d.search.clone()),
                ..host_config(spec, bindings, security_opt, file_binds(launch))
            }),
            ..Default::default()
        }
    }

    async fn create_and_start(&self, launch: &Launch) -> Result<Started, DriverError> {
        let image = launch.spec.image.clone().unwrap_or_default();
        let fail = |reason: String| DriverError::Start {
            program: image.clone(),
            reason,
        };
        let mut warnings = self.ensure_image(launch, &image).await?;
        let name = self.container_name(&launch.task_id);
        // A container of an earlier run of this task may remain: a restart replaces it.
        self.remove(&name).await;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(
                Some(options),
                self.body(launch, security_opts(&launch.spec).map_err(fail)?),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let inspect = self
            .docker
            .inspect_container(&created.id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let pid = inspect
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32);
        if launch.spec.privileged {
            warnings.push("runs privileged: it has full access to the node".into());
        }
        let user = inspect
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        if user.is_empty()
            || user == "root"
            || user == "0"
            || user.starts_with("0:")
            || user.starts_with("root:")
        {
            warnings.push(
                "runs as root: set `user` to an unprivileged user where the image allows".into(),
            );
        }
        self.follow_logs(&created.id, launch, None);
        Ok(Started {
            handle: Handle {
                pid,
                start_ticks: pid.and_then(super::process::start_ticks),
                // The container id names it; the Engine knows whether it survived a reboot.
                boot_id: None,
                container_id: Some(created.id),
            },
            warnings,
        })
    }

    /// Copies the container's output into the task's log file until the container stops.
    fn follow_logs(&self, container: &str, launch: &Launch, since: Option<i32>) {
        let docker = self.docker.clone();
        let container = container.to_string();
        let path = launch.log_path.clone();
        tokio::spawn(async move {
            let Ok(mut file) = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
            else {
                tracing::warn!("cannot open log file {}", path.display());
                return;
            };
            let mut options = LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true);
            if let Some(since) = since {
                options = options.since(since);
            }
            let mut stream = docker.logs(&container, Some(options.build()));
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => {
                        if file.write_all(chunk.as_ref()).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("log stream of {container} ended: {e}");
                        tokio::time::sleep(LOG_RETRY).await;
                        return;
                    }
                }
            }
        });
    }
}

/// The spec's security options as the Engine takes them, with `no-new-privileges` on unless the
/// spec decides it. The Engine wants a seccomp profile's JSON, so a path is read here on the node.
/// An exec started and attached: its id, its output, and its stdin.
type Attached = (
    String,
    std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
);

/// How long a new exec's terminal may refuse its first size (the Engine answers a resize
/// only once the exec's process runs): 2 s, far more than it takes on a loaded node.
const FIRST_RESIZE_PATIENCE: Duration = Duration::from_secs(2);
const FIRST_RESIZE_RETRY: Duration = Duration::from_millis(20);

impl DockerDriver {
    /// Creates and starts the Engine's exec of `req`, attached; with a tty, sized before any
    /// of the caller's input reaches it (Engines before API 1.42 take no size at creation).
    async fn start_attached(&self, id: &str, req: &api::ExecRequest) -> Result<Attached, String> {
        let config = bollard::models::ExecConfig {
            cmd: Some(req.argv.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(req.interactive),
            tty: Some(req.tty.is_some()),
            ..Default::default()
        };
        let cannot = |e: bollard::errors::Error| format!("the Docker Engine cannot run it: {e}");
        let exec = self.docker.create_exec(id, config).await.map_err(cannot)?;
        let options = bollard::exec::StartExecOptions {
            detach: false,
            tty: req.tty.is_some(),
            output_capacity: None,
        };
        let started = self.docker.start_exec(&exec.id, Some(options)).await;
        let (output, input) = match started.map_err(cannot)? {
            bollard::exec::StartExecResults::Attached { output, input } => (output, input),
            bollard::exec::StartExecResults::Detached => {
                return Err("the Docker Engine started it detached".into());
            }
        };
        if let Some(size) = req.tty {
            let deadline = tokio::time::Instant::now() + FIRST_RESIZE_PATIENCE;
            while let Err(e) = self.resize_exec(&exec.id, size).await {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("the Docker Engine cannot size its terminal: {e}"));
                }
                tokio::time::sleep(FIRST_RESIZE_RETRY).await;
            }
        }
        Ok((exec.id, output, input))
    }

    async fn resize_exec(
        &self,
        exec: &str,
        size: api::WindowSize,
    ) -> Result<(), bollard::errors::Error> {
        let options = bollard::exec::ResizeExecOptions {
            height: size.rows,
            width: size.cols,
        };
        self.docker.resize_exec(exec, options).await
    }

    /// Passes the caller's input to the exec: its stdin (closed at the caller's end of it) when
    /// attached, and its terminal's new sizes.
    async fn feed_exec(
        &self,
        exec: &str,
        mut stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
        mut input: super::ExecInputs,
    ) {
        while let Some(next) = input.recv().await {
            match (next, stdin.as_mut()) {
                (api::ExecInput::Stdin(bytes), Some(to)) => {
                    let written = async {
                        to.write_all(&bytes).await?;
                        to.flush().await
                    };
                    // A command that stopped reading gets no more input; its output flows on.
                    if written.await.is_err() {
                        stdin = None;
                    }
                }
                (api::ExecInput::StdinClosed, Some(to)) => {
                    let _ = to.shutdown().await;
                    stdin = None;
                }
                (api::ExecInput::Resize(size), _) => {
                    if let Err(e) = self.resize_exec(exec, size).await {
                        tracing::debug!("cannot resize the terminal of exec {exec}: {e}");
                    }
                }
                _ => {}
            }
        }
        if let Some(mut to) = stdin {
            let _ = to.shutdown().await;
        }
    }
}

fn security_opts(spec: &ServiceSpec) -> Result<Vec<String>, String> {
    let mut opts = Vec::new();
    if !spec
        .security_opt
        .iter()
        .any(|o| o.starts_with("no-new-privileges"))
    {
        opts.push("no-new-privileges=true".to_string());
    }
    for opt in &spec.security_opt {
        match opt.strip_prefix("seccomp=") {
            Some(path) if path.starts_with('/') => {
                let profile = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read seccomp profile {path} on this node: {e}"))?;
                opts.push(format!("seccomp={profile}"));
            }
            _ => opts.push(opt.clone()),
        }
    }
    Ok(opts)
}

type Bindings = HashMap<String, Option<Vec<PortBinding>>>;

/// Host port bindings for the spec's ports that name a container port, and the container ports
/// to expose (`8080/tcp`).
fn port_bindings(launch: &Launch) -> (Bindings, Vec<String>) {
    let mut bindings = Bindings::new();
    let mut exposed = Vec::new();
    for port in &launch.spec.ports {
        let (Some(inside), Some(host)) = (port.container_port, launch.ports.get(&port.name)) else {
            continue;
        };
        let protocol = if port.protocol == spec::Protocol::Udp {
            "udp"
        } else {
            "tcp"
        };
        let key = format!("{inside}/{protocol}");
        let binding = PortBinding {
            host_ip: port.host_ip.clone(),
            host_port: Some(host.to_string()),
        };
        bindings
            .entry(key.clone())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
        exposed.push(key);
    }
    (bindings, exposed)
}

/// Capabilities to add back after dropping all: a small default set (unless the spec drops ALL
/// itself), plus `cap_add`, less `cap_drop`.
fn capabilities(spec: &ServiceSpec) -> Vec<String> {
    let drop_all = spec.cap_drop.iter().any(|c| c == "ALL");
    let mut cap_add: Vec<String> = if drop_all {
        Vec::new()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    cap_add.extend(spec.cap_add.iter().cloned());
    cap_add.retain(|c| !spec.cap_drop.contains(c));
    cap_add
}

/// The Engine takes limits as `i64`; a value past its range is as good as unlimited.
fn engine_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Limits, capabilities, security options and the restart policy `no` (Outpost restarts).
fn host_config(
    spec: &ServiceSpec,
    bindings: Bindings,
    security_opt: Vec<String>,
    files: Vec<String>,
) -> HostConfig {
    let limits = &spec.resources.limits;
    let requests = &spec.resources.requests;
    let mut binds: Vec<String> = spec.volumes.iter().map(volume_bind).collect();
    binds.extend(files);
    HostConfig {
        port_bindings: Some(bindings),
        binds: Some(binds),
        memory: limits.memory.map(|m| engine_i64(m.bytes())),
        memory_reservation: requests.memory.map(|m| engine_i64(m.bytes())),
        nano_cpus: limits
            .cpu
            .map(|c| engine_i64(c.millis().saturating_mul(1_000_000))),
        // Kubernetes' conversion: 1 core of request = 1024 shares.
        cpu_shares: requests
            .cpu
            .map(|c| engine_i64(c.millis().saturating_mul(1024) / 1000).max(2)),
        pids_limit: limits.pids.map(engine_i64),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(capabilities(spec)),
        security_opt: Some(security_opt),
        privileged: Some(spec.privileged),
        readonly_rootfs: Some(spec.read_only),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    }
}

/// The read-only mounts of the task's secret and config files, from the directories the
/// supervisor named in its environment.
/// What the Engine is given to pull `image` itself: the secret's credentials for its registry.
fn engine_credentials(
    secret: &PullSecret,
    image: &str,
) -> Result<Option<DockerCredentials>, String> {
    let host = Reference::parse(image)?.host;
    Ok(secret.credentials(&host)?.map(|c| DockerCredentials {
        username: Some(c.user),
        password: Some(c.pass),
        serveraddress: Some(host),
        ..Default::default()
    }))
}

/// The launch's pull secret, read from the file the agent fetched it to.
fn pull_secret(launch: &Launch) -> Result<Option<PullSecret>, String> {
    let (Some(name), Some(path)) = (&launch.spec.pull_secret, &launch.pull_secret) else {
        return Ok(None);
    };
    let config = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read pull secret {name} ({}): {e}", path.display()))?;
    Ok(Some(PullSecret {
        name: name.clone(),
        config,
    }))
}

fn file_binds(launch: &Launch) -> Vec<String> {
    let dirs: Vec<(api::ObjectKind, std::path::PathBuf)> = [
        (api::ObjectKind::Secret, SECRETS_VAR),
        (api::ObjectKind::Config, CONFIGS_VAR),
    ]
    .into_iter()
    .filter_map(|(kind, var)| launch.env.get(var).map(|d| (kind, d.into())))
    .collect();
    crate::objects::container_binds(&dirs, &launch.spec)
}

fn volume_bind(v: &spec::VolumeSpec) -> String {
    format!(
        "{}:{}{}",
        v.source,
        v.target,
        if v.read_only { ":ro" } else { "" }
    )
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn outlives_agent(&self) -> bool {
        true
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Started, DriverError>> {
        Box::pin(self.create_and_start(launch))
    }

    fn adopt<'a>(&'a self, handle: &'a Handle, launch: &'a Launch) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(id) = &handle.container_id else {
                return;
            };
            // Resume the log where the file stopped growing; a line or two may repeat.
            let since = std::fs::metadata(&launch.log_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i32);
            self.follow_logs(id, launch, since);
        })
    }

    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Exit> {
        Box::pin(async move {
            let Some(id) = &handle.container_id else {
                return Exit::Unknown;
            };
            let mut stream = self.docker.wait_container(id, None::<WaitContainerOptions>);
            let code = match stream.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                _ => return Exit::Unknown,
            };
            let inspect = self
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .ok();
            if inspect.and_then(|i| i.state).and_then(|s| s.oom_killed) == Some(true) {
                return Exit::OutOfMemory;
            }
            // The engine reports death by signal N as 128 + N, like a shell.
            match code {
                129..=192 => Exit::Signal(code as i32 - 128),
                c => Exit::Code(c as i32),
            }
        })
    }

    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let Some(id) = &handle.container_id else {
                return Ok(());
            };
            let name = match signal {
                StopSignal::Kill => "SIGKILL".to_string(),
                // The image's (or the spec's) stop signal, as `docker stop` uses.
                StopSignal::Term => self
                    .docker
                    .inspect_container(id, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|i| i.config?.stop_signal)
                    .unwrap_or_else(|| "SIGTERM".into()),
            };
            let options = KillContainerOptionsBuilder::new().signal(&name).build();
            match self.docker.kill_container(id, Some(options)).await {
                Ok(()) => Ok(()),
                // Already stopped or gone: what a stop wants anyway.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => Ok(()),
                Err(e) => Err(DriverError::Other(format!(
                    "cannot signal container {id}: {e}"
                ))),
            }
        })
    }

    fn alive<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Liveness> {
        Box::pin(async move {
            let Some(id) = &handle.container_id else {
                return Liveness::Gone;
            };
            match self
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => {
                    let ours = i
                        .config
                        .and_then(|c| c.labels)
                        .and_then(|l| l.get(LABEL_AGENT).cloned())
                        == Some(self.agent_id.clone());
                    match ours && i.state.and_then(|s| s.running) == Some(true) {
                        true => Liveness::Alive,
                        false => Liveness::Gone,
                    }
                }
                Err(e) if is_not_found(&e) => Liveness::Gone,
                Err(e) => Liveness::Unknown(format!("cannot inspect container {id}: {e}")),
            }
        })
    }

    fn cleanup<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(id) = &handle.container_id {
                self.remove(id).await;
            }
        })
    }

    fn exec<'a>(
        &'a self,
        handle: &'a Handle,
        // The container already has the task's environment, and only the task's.
        _launch: &'a Launch,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Option<i32>> {
        Box::pin(async move {
            let id = handle.container_id.as_ref()?;
            let run = async {
                let config = bollard::models::ExecConfig {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                };
                let exec = self.docker.create_exec(id, config).await.ok()?;
                if let Ok(bollard::exec::StartExecResults::Attached { mut output, .. }) =
                    self.docker.start_exec(&exec.id, None).await
                {
                    while output.next().await.is_some() {}
                }
                self.docker
                    .inspect_exec(&exec.id)
                    .await
                    .ok()?
                    .exit_code
                    .map(|c| c as i32)
            };
            tokio::time::timeout(timeout, run).await.ok().flatten()
        })
    }

    fn exec_streaming<'a>(
        &'a self,
        handle: &'a Handle,
        _launch: &'a Launch,
        req: &'a api::ExecRequest,
        input: super::ExecInputs,
        frames: tokio::sync::mpsc::Sender<api::ExecFrame>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(id) = handle.container_id.as_ref() else {
                let why = "the task has no container".to_string();
                let _ = frames.send(super::exec_end(None, Some(why))).await;
                return;
            };
            let (exec, mut output, stdin) = match self.start_attached(id, req).await {
                Ok(started) => started,
                Err(why) => {
                    let _ = frames.send(super::exec_end(None, Some(why))).await;
                    return;
                }
            };
            let relay = async {
                while let Some(Ok(chunk)) = output.next().await {
                    let frame = match chunk {
                        bollard::container::LogOutput::StdErr { message } => {
                            api::ExecFrame::Stderr(message.to_vec())
                        }
                        other => api::ExecFrame::Stdout(other.into_bytes().to_vec()),
                    };
                    // Whoever asked has gone; the Engine ends the exec's stream with the
                    // command.
                    if frames.send(frame).await.is_err() {
                        return false;
                    }
                }
                true
            };
            let feed = self.feed_exec(&exec, req.interactive.then_some(stdin), input);
            if !super::while_feeding(relay, feed).await {
                return;
            }
            let code = (self.docker.inspect_exec(&exec).await.ok())
                .and_then(|e| e.exit_code)
                .map(|c| c as i32);
            let _ = frames.send(super::exec_end(code, None)).await;
        })
    }

    fn memory_usage<'a>(
        &'a self,
        handle: &'a Handle,
        _task: &'a str,
    ) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move {
            let id = handle.container_id.as_ref()?;
            // One sample, without the Engine's second sample for CPU rates.
            let options = StatsOptionsBuilder::new()
                .stream(false)
                .one_shot(true)
                .build();
            let stats = self.docker.stats(id, Some(options)).next().await?.ok()?;
            stats.memory_stats?.usage
        })
    }

    /// One sample of the Engine's stats (no second one for rates: the reader computes them).
    fn usage<'a>(&'a self, handle: &'a Handle, _task: &'a str) -> BoxFuture<'a, api::Usage> {
        Box::pin(async move {
            let Some(id) = handle.container_id.as_ref() else {
                return api::Usage::default();
            };
            let options = StatsOptionsBuilder::new()
                .stream(false)
                .one_shot(true)
                .build();
            let Some(Ok(stats)) = self.docker.stats(id, Some(options)).next().await else {
                return api::Usage::default();
            };
            let networks = stats.networks.unwrap_or_default();
            let net = |f: fn(&bollard::models::ContainerNetworkStats) -> Option<u64>| {
                (!networks.is_empty()).then(|| networks.values().filter_map(f).sum())
            };
            let blkio =
                (stats.blkio_stats.and_then(|b| b.io_service_bytes_recursive)).unwrap_or_default();
            let disk = |op: &str| {
                let entries = blkio
                    .iter()
                    .filter(|e| e.op.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(op)));
                Some(entries.filter_map(|e| e.value).sum())
            };
            api::Usage {
                cpu_ns: (stats.cpu_stats.and_then(|c| c.cpu_usage)).and_then(|u| u.total_usage),
                memory_bytes: stats.memory_stats.and_then(|m| m.usage),
                net_rx_bytes: net(|n| n.rx_bytes),
                net_tx_bytes: net(|n| n.tx_bytes),
                disk_read_bytes: disk("read"),
                disk_write_bytes: disk("write"),
            }
        })
    }

    /// The container ports that are published on the node: what the mesh connects to.
    fn serving_ports(
        &self,
        spec: &ServiceSpec,
        ports: &std::collections::BTreeMap<String, u16>,
    ) -> Vec<u16> {
        (spec.ports.iter())
            .filter(|p| !p.protocol.is_udp() && ports.contains_key(&p.name))
            .filter_map(|p| p.container_port)
            .collect()
    }
}
