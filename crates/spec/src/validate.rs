//! Rules every service spec must satisfy however it arrived: parsed from native YAML or Compose,
//! or posted as JSON to the API (the server calls [`validate`]). Each broken rule becomes a
//! [`Problem`] naming the field, and all of them are reported together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::container;
use crate::decode::Path;
use crate::error::{Problem, SpecError};
use crate::quantity::{Cpu, Memory};
use crate::types::{
    DriverKind, OnNodeLost, PortRef, PortSpec, ProbeAction, ProbeSpec, PullPolicy, RestartSpec,
    ServiceSpec,
};

/// 1,000,000: ten times the 100,000 tasks a whole cluster is built for, so a larger number is a
/// typo at any size. Servers refuse far less by default (their `--max-replicas`, 10,000); this
/// is the ceiling of that setting.
pub const MAX_REPLICAS: u32 = 1_000_000;

/// 63: the DNS label limit (RFC 1035); service names become DNS names in service discovery.
pub const MAX_NAME_LEN: usize = 63;

/// 6 MiB: Docker refuses a smaller memory limit at container start; say so at deploy instead.
pub const MIN_DOCKER_MEMORY: u64 = 6 << 20;

/// 1,000,000 cores: a thousand times the largest machines sold, so only a typo or an attack asks
/// for more; it keeps every request far from the 2^63 at which a signed sum would wrap.
pub const MAX_CPU: Cpu = Cpu(1_000_000_000);

/// 1 EiB, the largest Kubernetes suffix (`1Ei`): no node has a millionth of it.
pub const MAX_MEMORY: Memory = Memory(1 << 60);

/// 4,194,304: Linux's `PID_MAX_LIMIT` on 64-bit, the most processes a node can ever have.
pub const MAX_PIDS: u64 = 1 << 22;

/// 100 ms: at most ten probes a second per task. A 1 ns period was accepted once and burnt 1.5
/// cores on the node; Kubernetes' own minimum is 1 s, Outpost allows shorter for its
/// sub-second failure detection.
pub const MIN_PROBE_PERIOD: Duration = Duration::from_millis(100);

/// 10 ms: below that even a loopback connect on a loaded node fails, so the probe would only
/// ever report failure.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);

/// 1 h: the longest probe period, timeout or initial delay; a probe that rare no longer detects
/// anything, so a longer one is almost surely a unit typo (`1d` for `1s`).
pub const MAX_PROBE_DURATION: Duration = Duration::from_secs(3600);

/// 100: consecutive results a probe may need. At the shortest period that is 10 s, at a minute
/// well over an hour: more only hides a dead task.
pub const MAX_PROBE_THRESHOLD: u32 = 100;

/// 1 h: a removal or an update waits up to this long for each task to stop. Docker's default is
/// 10 s and systemd's 90 s; `100000000000y` once left a service `removing` for ever.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);

/// 10 ms: the shortest first restart delay. A crash loop still doubles away from it quickly,
/// but a shorter one restarts a crashing task hundreds of times a second.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// 1 h: the longest restart delay. Longer, and a task that crashed once stays down for most of
/// a day, which no operator of a self-healing service expects.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// 1 day: the longest a task must stay up before its backoff resets.
pub const MAX_RESET_AFTER: Duration = Duration::from_secs(86_400);

/// 30 days: the longest a lost node's tasks may wait before they are replaced. Edge sites are
/// cut off for days; a longer wait is a unit typo (`2y` for `2s`) that would leave a service
/// short for good.
pub const MAX_NODE_LOST_WAIT: Duration = Duration::from_secs(30 * 86_400);

/// 1 h: the longest `delay` or `monitor` of an update. Longer, and a rollout of a few
/// replicas takes days: a unit typo, not a plan.
pub const MAX_UPDATE_WAIT: Duration = Duration::from_secs(3600);

/// 100: the most revisions kept per service; each is a copy of the spec in the state.
pub const MAX_REVISION_HISTORY: u32 = 100;

/// Variables the agent sets for every task, besides `PORT` and `OUTPOST_PORT_<NAME>`.
pub const TASK_VARS: [&str; 4] = [
    "OUTPOST_TASK_ID",
    "OUTPOST_SERVICE",
    "OUTPOST_SLOT",
    "OUTPOST_NODE",
];

/// Checks specs meant to run together, e.g. ones that arrived as JSON: each one, and that no
/// two share a name. Paths start with the service's name.
pub fn validate_all(specs: &[ServiceSpec]) -> Result<(), SpecError> {
    let mut problems = Vec::new();
    let mut named = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let root = root_path(spec);
        check_service(spec, &root, &[], &mut problems);
        named.push((root, spec.clone(), format!("service {}", i + 1)));
    }
    unique_names(&named, &mut problems);
    SpecError::check(problems)
}

fn root_path(spec: &ServiceSpec) -> Path {
    Path::root(if spec.name.is_empty() {
        "service"
    } else {
        &spec.name
    })
}

/// Reports, on the later spec, every name already used by an earlier one. `where` says where
/// each spec came from (`doc 2`, `service "web_1"`) because their paths look alike.
pub(crate) fn unique_names<'a>(
    named: impl IntoIterator<Item = &'a (Path, ServiceSpec, String)>,
    out: &mut Vec<Problem>,
) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (root, spec, place) in named {
        match seen.get(spec.name.as_str()) {
            Some(first) => out.push(Problem::new(
                root.key("name").to_string(),
                format!(
                    "{:?} is already the name of another service ({first})",
                    spec.name
                ),
            )),
            None => {
                seen.insert(&spec.name, place);
            }
        }
    }
}

/// The problems of freshly decoded specs: the decoder's, then each spec's rules, then duplicate
/// names. A rule about a field that already failed to decode is dropped: the field holds a
/// default, and a second problem about it would only confuse.
pub(crate) fn after_decoding(
    mut problems: Vec<Problem>,
    decoded: &[(Path, ServiceSpec, String)],
) -> Vec<Problem> {
    let failed: Vec<Path> = problems
        .iter()
        .map(|p| Path::root(p.path.clone()))
        .collect();
    for (root, spec, _) in decoded {
        check_service(spec, root, &failed, &mut problems);
    }
    unique_names(decoded, &mut problems);
    // A file may depend on services deployed before it: the server checks those.
    let specs: Vec<ServiceSpec> = decoded.iter().map(|(_, s, _)| s.clone()).collect();
    problems.extend(crate::stack::check_dependencies(
        &specs,
        &BTreeMap::new(),
        true,
    ));
    problems
}

/// Every rule for one spec; `root` is the path its problems start with. `failed` lists the paths
/// that failed to decode: rules about them, or that depend on them, stay quiet.
pub(crate) fn check_service(
    spec: &ServiceSpec,
    root: &Path,
    failed: &[Path],
    out: &mut Vec<Problem>,
) {
    let mut rules = Rules { root, failed, out };
    rules.name(spec);
    rules.depends_on(spec);
    rules.replicas(spec);
    match spec.driver {
        DriverKind::Process => {
            rules.process(spec);
            rules.docker_only(spec);
        }
        DriverKind::Docker => {
            rules.docker(spec);
            rules.container_ports(spec);
            rules.capabilities(spec);
            rules.security(spec);
        }
    }
    rules.env(spec);
    rules.ports(spec);
    rules.volumes(spec);
    rules.restart(&spec.restart);
    rules.stop_grace(spec);
    rules.on_node_lost(spec);
    rules.updates(spec);
    for (field, probe) in [("liveness", &spec.liveness), ("readiness", &spec.readiness)] {
        if let Some(probe) = probe {
            rules.probe(spec, &root.key(field), probe);
        }
    }
    rules.resources(spec);
    rules.references(spec);
    for (path, message) in crate::objects::check(spec, root) {
        rules.report(&path, message);
    }
}

struct Rules<'a> {
    root: &'a Path,
    failed: &'a [Path],
    out: &'a mut Vec<Problem>,
}

impl Rules<'_> {
    fn report(&mut self, path: &Path, message: impl Into<String>) {
        let path = path.to_string();
        if !self.failed.iter().any(|f| f.covers(&path)) {
            self.out.push(Problem::new(path, message));
        }
    }

    /// Whether `field` decoded cleanly, so rules that look at it can trust what they see.
    fn sound(&self, field: &str) -> bool {
        let field = self.at(field);
        !self.failed.iter().any(|f| field.covers(&f.to_string()))
    }

    fn at(&self, field: &str) -> Path {
        self.root.key(field)
    }

    fn name(&mut self, spec: &ServiceSpec) {
        if let Some(stack) = &spec.stack
            && let Err(why) = crate::stack::check_stack_name(stack)
        {
            self.report(&self.at("stack"), why);
            return;
        }
        if let Err(why) = crate::stack::check_service_name(&spec.name, spec.stack.as_deref()) {
            self.report(&self.at("name"), why);
        }
    }

    /// Each dependency is a service of the same stack (or, without one, of no stack).
    fn depends_on(&mut self, spec: &ServiceSpec) {
        for dep in spec.depends_on.keys() {
            let short = crate::types::stack_short_name(dep, spec.stack.as_deref());
            let at = self.at("depends_on").key(short);
            if let Err(why) = crate::stack::check_service_name(dep, spec.stack.as_deref()) {
                self.report(&at, why);
            }
        }
    }

    fn replicas(&mut self, spec: &ServiceSpec) {
        if spec.replicas > MAX_REPLICAS {
            let message = format!(
                "{} is more than the maximum of {MAX_REPLICAS}",
                spec.replicas
            );
            self.report(&self.at("replicas"), message);
        }
    }

    fn process(&mut self, spec: &ServiceSpec) {
        match spec.command.first() {
            None => self.report(&self.at("command"), "a process service needs a command"),
            Some(program) if program.is_empty() => {
                self.report(&self.at("command").index(0), "the program name is empty")
            }
            Some(_) => {}
        }
        if spec.image.is_some() {
            let message = "a process service cannot have an image (set `driver: docker` to run it as a container)";
            self.report(&self.at("image"), message);
        }
        if !spec.entrypoint.is_empty() {
            let message = "only containers have an entrypoint; put the program first in `command`";
            self.report(&self.at("entrypoint"), message);
        }
        if !spec.volumes.is_empty() {
            self.report(&self.at("volumes"), "volumes need the docker driver");
        }
        for (i, port) in spec.ports.iter().enumerate() {
            let at = self.at("ports").index(i);
            if port.host_ip.is_some() {
                self.report(
                    &at.key("host_ip"),
                    "only containers can be published on one address",
                );
            }
        }
    }

    fn docker(&mut self, spec: &ServiceSpec) {
        match spec.image.as_deref() {
            None | Some("") => self.report(&self.at("image"), "a docker service needs an image"),
            Some(image) if image.chars().any(char::is_whitespace) => self.report(
                &self.at("image"),
                format!("{image:?} is not an image reference"),
            ),
            Some(_) => {}
        }
        if let Some(dir) = &spec.workdir
            && !dir.starts_with('/')
        {
            let message = format!("{dir:?} must be an absolute path inside the container");
            self.report(&self.at("workdir"), message);
        }
    }

    /// Container settings a process cannot honour, each reported so the user sees what to drop.
    fn docker_only(&mut self, spec: &ServiceSpec) {
        #[rustfmt::skip]
        let settings = [
            ("read_only", spec.read_only, "have a read-only root filesystem"),
            ("cap_add", !spec.cap_add.is_empty(), "add capabilities"),
            ("cap_drop", !spec.cap_drop.is_empty(), "drop capabilities"),
            ("security_opt", !spec.security_opt.is_empty(), "take security options"),
            ("privileged", spec.privileged, "be privileged"),
            ("pull", spec.pull != PullPolicy::default(), "pull images"),
            ("pull_secret", spec.pull_secret.is_some(), "pull images with credentials"),
            ("stop_signal", spec.stop_signal.is_some(), "choose a stop signal (processes get SIGTERM)"),
        ];
        for (field, set, what) in settings {
            if set {
                self.report(&self.at(field), format!("only docker services can {what}"));
            }
        }
    }

    /// The driver publishes a host port onto `container_port`; without one there is nothing
    /// to publish to.
    fn container_ports(&mut self, spec: &ServiceSpec) {
        for (i, port) in spec.ports.iter().enumerate() {
            if port.container_port.is_none() {
                let message =
                    "a docker port needs container_port (the port the container listens on)";
                self.report(&self.at("ports").index(i).key("container_port"), message);
            }
        }
    }

    fn capabilities(&mut self, spec: &ServiceSpec) {
        for (field, names) in [("cap_add", &spec.cap_add), ("cap_drop", &spec.cap_drop)] {
            for (i, name) in names.iter().enumerate() {
                if let Err(why) = container::check_capability(name) {
                    self.report(&self.at(field).index(i), why);
                }
            }
        }
        // Docker resolves a capability in both lists silently; which one wins is not obvious.
        for (i, name) in spec.cap_drop.iter().enumerate() {
            if spec.cap_add.contains(name) {
                let message = format!("{name:?} is also in cap_add; list it in one of them");
                self.report(&self.at("cap_drop").index(i), message);
            }
        }
        // Docker ignores the lists for a privileged container; a drop that does nothing would
        // leave the user believing the container is confined.
        if spec.privileged && !spec.cap_drop.is_empty() {
            let message = "has no effect: a privileged container keeps every capability";
            self.report(&self.at("cap_drop"), message);
        }
    }

    fn security(&mut self, spec: &ServiceSpec) {
        for (i, option) in spec.security_opt.iter().enumerate() {
            if let Err(why) = container::check_security_opt(option) {
                self.report(&self.at("security_opt").index(i), why);
            }
        }
        if let Some(signal) = &spec.stop_signal
            && let Err(why) = container::check_signal(signal)
        {
            self.report(&self.at("stop_signal"), why);
        }
    }

    fn env(&mut self, spec: &ServiceSpec) {
        for (key, value) in &spec.env {
            let at = self.at("env").key(key);
            if !is_identifier(key) {
                let message = "is not a valid variable name (use letters, digits and '_', not starting with a digit)";
                self.report(&at, message);
            }
            if let Some(why) = reserved(spec, key) {
                self.report(&at, why);
            }
            if value.contains('\0') {
                self.report(&at, "contains a NUL byte");
            }
        }
    }

    fn ports(&mut self, spec: &ServiceSpec) {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        let mut published: BTreeMap<(u16, bool), &str> = BTreeMap::new();
        let mut service_ports: BTreeMap<(u16, bool), &PortSpec> = BTreeMap::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let at = self.at("ports").index(i);
            if let Err(why) = dns_label(&port.name) {
                self.report(&at.key("name"), format!("{:?} {why}", port.name));
            }
            if !names.insert(&port.name) {
                self.report(
                    &at.key("name"),
                    format!("{:?} is declared twice", port.name),
                );
            }
            for (field, number) in [
                ("container_port", port.container_port),
                ("host_port", port.host_port),
                ("publish", port.publish),
            ] {
                if number == Some(0) {
                    self.report(&at.key(field), "0 is not a port number (use 1 to 65535)");
                }
            }
            if let Some(ip) = &port.host_ip
                && ip.parse::<IpAddr>().is_err()
            {
                self.report(&at.key("host_ip"), format!("{ip:?} is not an IP address"));
            }
            if let Some(host) = port.host_port {
                let key = (host, port.protocol.is_udp());
                if let Some(other) = published.insert(key, &port.name) {
                    let message = format!("host port {host} is already used by port {other:?}");
                    self.report(&at.key("host_port"), message);
                }
            }
            if let Some(publish) = port.publish {
                if port.protocol.is_udp() {
                    let message = "the routing mesh carries TCP and HTTP only: publish a UDP \
                                   port as a fixed `host_port` on the nodes that run it";
                    self.report(&at.key("publish"), message);
                } else if let Some(other) = published.insert((publish, false), &port.name) {
                    let message = format!("port {publish} is already used by port {other:?}");
                    self.report(&at.key("publish"), message);
                }
            }
            // Two ports may share a number on the virtual IP only if they reach the same
            // port of the task (a container port published twice).
            if let Some(number) = port.service_port() {
                let key = (number, port.protocol.is_udp());
                match service_ports.get(&key) {
                    Some(other) if other.container_port != port.container_port => {
                        let message = format!(
                            "port {number} is already the service's port {:?} on its virtual \
                             IP: give one of them another container_port",
                            other.name
                        );
                        self.report(&at, message);
                    }
                    Some(_) => {}
                    None => {
                        service_ports.insert(key, port);
                    }
                }
            }
        }
        for (field, message) in crate::balance::check(&spec.load_balancer) {
            self.report(&self.at("load_balancer").key(&field), message);
        }
    }

    fn volumes(&mut self, spec: &ServiceSpec) {
        let mut targets = BTreeSet::new();
        for (i, volume) in spec.volumes.iter().enumerate() {
            let at = self.at("volumes").index(i);
            if let Err(why) = volume_source(&volume.source) {
                self.report(&at.key("source"), why);
            }
            if !volume.target.starts_with('/') {
                let message = format!(
                    "{:?} must be an absolute path inside the container",
                    volume.target
                );
                self.report(&at.key("target"), message);
            }
            if !targets.insert(volume.target.as_str()) {
                self.report(
                    &at.key("target"),
                    format!("{:?} is mounted twice", volume.target),
                );
            }
        }
    }

    fn restart(&mut self, restart: &RestartSpec) {
        let at = self.at("restart");
        #[rustfmt::skip]
        let ranges = [
            ("initial_backoff", restart.initial_backoff, MIN_BACKOFF, MAX_BACKOFF),
            ("max_backoff", restart.max_backoff, MIN_BACKOFF, MAX_BACKOFF),
            ("reset_after", restart.reset_after, Duration::ZERO, MAX_RESET_AFTER),
        ];
        for (field, value, min, max) in ranges {
            self.duration(&at.key(field), value, min, max);
        }
        if restart.initial_backoff > restart.max_backoff {
            let message = format!(
                "{} is longer than max_backoff ({})",
                humantime::format_duration(restart.initial_backoff),
                humantime::format_duration(restart.max_backoff)
            );
            self.report(&at.key("initial_backoff"), message);
        }
    }

    fn stop_grace(&mut self, spec: &ServiceSpec) {
        self.duration(
            &self.at("stop_grace"),
            spec.stop_grace,
            Duration::ZERO,
            MAX_STOP_GRACE,
        );
    }

    fn on_node_lost(&mut self, spec: &ServiceSpec) {
        let OnNodeLost::Replace(after) = &spec.on_node_lost else {
            return;
        };
        let at = self.at("on_node_lost");
        for (field, value) in [
            ("replace_after", after.replace_after),
            ("unreachable_after", after.unreachable_after),
        ] {
            self.duration(&at.key(field), value, Duration::ZERO, MAX_NODE_LOST_WAIT);
        }
    }

    fn updates(&mut self, spec: &ServiceSpec) {
        for (field, update) in [("update", &spec.update), ("rollback", &spec.rollback)] {
            let at = self.at(field);
            if update.parallelism == 0 {
                let message = "0 would replace no task: give 1 or more";
                self.report(&at.key("parallelism"), message.to_string());
            }
            self.duration(
                &at.key("delay"),
                update.delay,
                Duration::ZERO,
                MAX_UPDATE_WAIT,
            );
            self.duration(
                &at.key("monitor"),
                update.monitor,
                Duration::ZERO,
                MAX_UPDATE_WAIT,
            );
        }
        if !(1..=MAX_REVISION_HISTORY).contains(&spec.revision_history) {
            let message = format!(
                "{} is not between 1 and {MAX_REVISION_HISTORY}",
                spec.revision_history
            );
            self.report(&self.at("revision_history"), message);
        }
    }

    /// Reports a duration outside `min..=max`, saying which bound it crossed.
    fn duration(&mut self, at: &Path, value: Duration, min: Duration, max: Duration) {
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        let message = if value < min {
            format!(
                "{} is shorter than the minimum of {}",
                shown(value),
                shown(min)
            )
        } else if value > max {
            format!(
                "{} is longer than the maximum of {}",
                shown(value),
                shown(max)
            )
        } else {
            return;
        };
        self.report(at, message);
    }

    fn probe(&mut self, spec: &ServiceSpec, at: &Path, probe: &ProbeSpec) {
        #[rustfmt::skip]
        let ranges = [
            ("initial_delay", probe.initial_delay, Duration::ZERO),
            ("period", probe.period, MIN_PROBE_PERIOD),
            ("timeout", probe.timeout, MIN_PROBE_TIMEOUT),
        ];
        for (field, value, min) in ranges {
            self.duration(&at.key(field), value, min, MAX_PROBE_DURATION);
        }
        for (field, value) in [
            ("failure_threshold", probe.failure_threshold),
            ("success_threshold", probe.success_threshold),
        ] {
            if !(1..=MAX_PROBE_THRESHOLD).contains(&value) {
                let message = format!("{value} is not between 1 and {MAX_PROBE_THRESHOLD}");
                self.report(&at.key(field), message);
            }
        }
        match &probe.action {
            ProbeAction::Http { path, port } => {
                if let Err(why) = http_path(path) {
                    self.report(&at.key("http").key("path"), why);
                }
                self.probe_port(spec, &at.key("http").key("port"), port);
            }
            ProbeAction::Tcp { port } => self.probe_port(spec, &at.key("tcp").key("port"), port),
            ProbeAction::Exec { command } => match command.first() {
                None => self.report(&at.key("exec"), "must name a command to run"),
                Some(program) if program.is_empty() => {
                    self.report(&at.key("exec").index(0), "the program name is empty")
                }
                Some(_) => {}
            },
        }
    }

    fn probe_port(&mut self, spec: &ServiceSpec, at: &Path, port: &PortRef) {
        if !self.sound("ports") {
            return;
        }
        match port {
            PortRef::Number(0) => self.report(at, "0 is not a port number (use 1 to 65535)"),
            PortRef::Number(_) => {}
            PortRef::Name(name) if spec.ports.iter().any(|p| &p.name == name) => {}
            PortRef::Name(name) if spec.ports.is_empty() => {
                let message = format!("no port named {name:?}: the service declares no ports");
                self.report(at, message);
            }
            PortRef::Name(name) => {
                let declared: Vec<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
                let message = format!("no port named {name:?} (declared: {})", declared.join(", "));
                self.report(at, message);
            }
        }
    }

    fn resources(&mut self, spec: &ServiceSpec) {
        let (requests, limits) = (&spec.resources.requests, &spec.resources.limits);
        let at = self.at("resources");
        let pairs = [
            (
                "cpu",
                requests.cpu.map(|c| (c.0, c.to_string())),
                limits.cpu.map(|c| (c.0, c.to_string())),
            ),
            (
                "memory",
                requests.memory.map(|m| (m.0, m.to_string())),
                limits.memory.map(|m| (m.0, m.to_string())),
            ),
            (
                "pids",
                requests.pids.map(|n| (n, n.to_string())),
                limits.pids.map(|n| (n, n.to_string())),
            ),
        ];
        let maxima = [
            (MAX_CPU.0, format!("{} cores", MAX_CPU.0 / 1000)),
            (MAX_MEMORY.0, MAX_MEMORY.to_string()),
            (MAX_PIDS, MAX_PIDS.to_string()),
        ];
        for ((field, request, limit), (max, max_text)) in pairs.iter().zip(&maxima) {
            for (kind, amount) in [("requests", request), ("limits", limit)] {
                if let Some((value, text)) = amount
                    && value > max
                {
                    let message = format!("{text} is more than the maximum of {max_text}");
                    self.report(&at.key(kind).key(field), message);
                }
            }
        }
        for (field, request, limit) in pairs {
            if let Some((0, _)) = limit {
                self.report(&at.key("limits").key(field), "must be more than zero");
            }
            // A zero CPU or memory request is Kubernetes' way to ask for nothing; a task
            // always runs at least one process, so zero pids is only ever a mistake.
            if field == "pids"
                && let Some((0, _)) = request
            {
                self.report(&at.key("requests").key(field), "must be more than zero");
            }
            if let (Some((want, want_text)), Some((cap, cap_text))) = (request, limit)
                && want > cap
            {
                let message = format!("{want_text} is more than the limit ({cap_text})");
                self.report(&at.key("requests").key(field), message);
            }
        }
        if let Some(memory) = limits.memory
            && spec.driver == DriverKind::Docker
            && memory.0 > 0
            && memory.0 < MIN_DOCKER_MEMORY
        {
            let message = format!("{memory} is below Docker's minimum memory limit of 6Mi");
            self.report(&at.key("limits").key("memory"), message);
        }
    }

    /// `${NAME}` in entrypoint, command and env values is expanded by the agent at start (see
    /// `agent::supervisor::expand`): in env values from the variables Outpost sets, in the
    /// entrypoint and command from those and `env`. A name that resolves to nothing would be left
    /// as literal text, so it is refused, as Compose refuses a required variable. `$NAME`
    /// without braces, and shell forms such as `${NAME:-default}`, are never expanded by Outpost
    /// and pass through to a shell.
    fn references(&mut self, spec: &ServiceSpec) {
        if !self.sound("ports") || !self.sound("env") {
            return;
        }
        let mut texts: Vec<(Path, &str, Scope)> = Vec::new();
        for (field, args) in [("entrypoint", &spec.entrypoint), ("command", &spec.command)] {
            for (i, arg) in args.iter().enumerate() {
                texts.push((self.at(field).index(i), arg, Scope::Argv));
            }
        }
        for (key, value) in &spec.env {
            texts.push((self.at("env").key(key), value, Scope::Env));
        }
        for (at, text, scope) in texts {
            for name in references(text).into_iter().filter(|n| is_identifier(n)) {
                if let Some(why) = unresolved(spec, name, scope) {
                    self.report(&at, format!("\"${{{name}}}\" {why}"));
                }
            }
        }
    }
}

/// Where a `${NAME}` stands, which decides what it may refer to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Entrypoint or command: Outpost's variables and the spec's `env`.
    Argv,
    /// An env value: Outpost's variables only; other env entries are not expanded there.
    Env,
}

/// Why an env key cannot be set by the user: the agent sets it itself and would override it.
fn reserved(spec: &ServiceSpec, key: &str) -> Option<String> {
    if key == "PORT"
        && let Some(first) = spec.ports.first()
    {
        return Some(format!(
            "is set by Outpost to the host port of the first port ({:?}), so this value would be ignored; remove it and read ${{PORT}}, or use another name",
            first.name
        ));
    }
    if key.starts_with("OUTPOST_") {
        return Some(
            "is set by Outpost (names starting with OUTPOST_ are reserved for the variables it gives every task); use another name".to_string(),
        );
    }
    None
}

/// Why `${name}` would not be expanded where it stands, if it would not.
fn unresolved(spec: &ServiceSpec, name: &str, scope: Scope) -> Option<String> {
    let known = TASK_VARS.contains(&name)
        || (name == "OUTPOST_SECRETS_DIR" && !spec.secrets.is_empty())
        || (name == "OUTPOST_CONFIGS_DIR" && !spec.configs.is_empty())
        || (name == "PORT" && !spec.ports.is_empty())
        || spec.ports.iter().any(|p| p.env_var() == name);
    if known || (scope == Scope::Argv && spec.env.contains_key(name)) {
        return None;
    }
    if name == "PORT" {
        return Some(
            "is only set for services that declare a port (add `ports: [http]`)".to_string(),
        );
    }
    if name.starts_with("OUTPOST_PORT_") {
        let vars: Vec<String> = spec.ports.iter().map(|p| p.env_var()).collect();
        return Some(match vars.is_empty() {
            true => "refers to a port, but the service declares no ports".to_string(),
            false => format!(
                "refers to no declared port (ports give {})",
                vars.join(", ")
            ),
        });
    }
    let vars = TASK_VARS.join(", ");
    if name.starts_with("OUTPOST_") {
        return Some(format!(
            "is not a variable Outpost sets (it sets PORT, OUTPOST_PORT_<NAME>, {vars})"
        ));
    }
    if spec.env.contains_key(name) {
        return Some(format!(
            "names another env entry, and env values are not expanded from each other; write its value here, or refer to {name} from the command"
        ));
    }
    Some(format!(
        "is not set: it is neither in `env` nor one of the variables Outpost sets (PORT, OUTPOST_PORT_<NAME>, {vars}); add it to env, or write ${name} without braces for a shell to expand"
    ))
}

/// An HTTP probe's request target: an absolute path of visible ASCII, so nothing in it can end
/// the request line early (CR/LF would split the request, a space would end the target).
fn http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{path:?} contains {c:?}; a probe path is visible ASCII only (percent-encode anything else, e.g. %20 for a space)"
        ));
    }
    Ok(())
}

/// The names in `${NAME}` references, found the way the agent's expansion finds them.
pub(crate) fn references(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    names
}

/// RFC 1035 label: lowercase letters, digits and '-', starting with a letter, at most 63 long.
pub(crate) fn dns_label(name: &str) -> Result<(), String> {
    let rule =
        "use lowercase letters, digits and '-', starting with a letter and not ending with '-'";
    if name.is_empty() {
        return Err("is empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is longer than {MAX_NAME_LEN} characters"));
    }
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts_ok = name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid_chars || !starts_ok || name.ends_with('-') {
        return Err(format!("is not a valid name: {rule}"));
    }
    Ok(())
}

/// A POSIX shell variable name.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A host path (`/srv/data`, `./data`) or a Docker volume name (`pgdata`).
fn volume_source(source: &str) -> Result<(), String> {
    if source.is_empty() {
        return Err("must not be empty".to_string());
    }
    if source.starts_with('/') || source.starts_with('.') {
        return Ok(());
    }
    let mut chars = source.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Ok(());
    }
    Err(format!(
        "{source:?} is neither a host path (starting with / or .) nor a volume name"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PortRef, PortSpec, ProbeAction, ProbeSpec};

    /// One spec through the production entry point: alone, no other name can clash with it.
    fn validate(spec: &ServiceSpec) -> Result<(), SpecError> {
        validate_all(std::slice::from_ref(spec))
    }

    fn check(spec: &ServiceSpec, expect: &[&str]) {
        let got = match validate(spec) {
            Ok(()) => Vec::new(),
            Err(e) => e.problems.iter().map(Problem::to_string).collect(),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn specs_arriving_as_json_get_the_same_rules() {
        let json = r#"{"name":"web","replicas":1,"driver":"process","command":["./web","${PORT}"],
            "restart":{"policy":"always","initial_backoff":"0s","max_backoff":"30s","reset_after":"10s"},
            "readiness":{"tcp":{"port":"http"},"initial_delay":"0s","period":"1s","timeout":"1s",
            "failure_threshold":3,"success_threshold":1},"stop_grace":"5s"}"#;
        let spec: ServiceSpec = serde_json::from_str(json).unwrap();
        check(
            &spec,
            &[
                "web.restart.initial_backoff: 0s is shorter than the minimum of 10ms",
                r#"web.readiness.tcp.port: no port named "http": the service declares no ports"#,
                r#"web.command[1]: "${PORT}" is only set for services that declare a port (add `ports: [http]`)"#,
            ],
        );
    }

    #[test]
    fn a_good_spec_passes_and_an_unnamed_one_is_called_service() {
        let mut spec = ServiceSpec::process("web", &["./web", "${PORT}"]);
        spec.ports = vec![PortSpec::named("http")];
        check(&spec, &[]);
        check(
            &ServiceSpec::process("", &["./x"]),
            &[r#"service.name: "" is empty"#],
        );
    }

    #[test]
    fn validate_all_also_rejects_duplicate_names() {
        let a = ServiceSpec::process("a", &["./a"]);
        let error = validate_all(&[a.clone(), ServiceSpec::process("b", &["./b"]), a]).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"a.name: "a" is already the name of another service (service 1)"#
        );
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "web", "api-2", "a1-b2"] {
            assert_eq!(dns_label(good), Ok(()), "{good}");
        }
        for bad in ["", "Web", "1web", "web-", "we_b", "wéb", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
    }

    fn web() -> ServiceSpec {
        let mut spec = ServiceSpec::process("web", &["./web"]);
        spec.ports = vec![PortSpec::named("http")];
        spec
    }

    #[test]
    fn quantities_past_the_maxima_are_refused_with_their_path() {
        let mut spec = web();
        // 2^64 - 100000 millicores: wraps negative as an i64.
        spec.resources.requests.cpu = Some("18446744073709451616m".parse().unwrap());
        spec.resources.limits.memory = Some(Memory(u64::MAX));
        spec.resources.limits.pids = Some(MAX_PIDS + 1);
        check(
            &spec,
            &[
                "web.resources.requests.cpu: 18446744073709451616m is more than the maximum of 1000000 cores",
                "web.resources.limits.memory: 18446744073709551615 is more than the maximum of 1Ei",
                "web.resources.limits.pids: 4194305 is more than the maximum of 4194304",
            ],
        );
        spec.resources.requests.cpu = Some(MAX_CPU);
        spec.resources.limits.memory = Some(MAX_MEMORY);
        spec.resources.limits.pids = Some(MAX_PIDS);
        check(&spec, &[]);
    }

    fn probe(path: &str) -> ProbeSpec {
        ProbeSpec::new(ProbeAction::Http {
            path: path.into(),
            port: PortRef::Name("http".into()),
        })
    }

    #[test]
    fn probe_timings_have_sane_ranges() {
        let mut spec = web();
        let mut liveness = probe("/healthz");
        liveness.period = Duration::from_nanos(1);
        liveness.timeout = Duration::from_secs(7200);
        liveness.initial_delay = Duration::from_secs(86_400);
        liveness.failure_threshold = 0;
        liveness.success_threshold = 1000;
        spec.liveness = Some(liveness);
        check(
            &spec,
            &[
                "web.liveness.initial_delay: 1day is longer than the maximum of 1h",
                "web.liveness.period: 1ns is shorter than the minimum of 100ms",
                "web.liveness.timeout: 2h is longer than the maximum of 1h",
                "web.liveness.failure_threshold: 0 is not between 1 and 100",
                "web.liveness.success_threshold: 1000 is not between 1 and 100",
            ],
        );
        let mut edges = probe("/healthz");
        edges.period = MIN_PROBE_PERIOD;
        edges.timeout = MIN_PROBE_TIMEOUT;
        edges.initial_delay = MAX_PROBE_DURATION;
        edges.failure_threshold = MAX_PROBE_THRESHOLD;
        spec.liveness = Some(edges);
        check(&spec, &[]);
    }

    #[test]
    fn stop_grace_and_backoffs_have_sane_ranges() {
        let mut spec = web();
        spec.stop_grace = humantime::parse_duration("100000000000y").unwrap();
        spec.restart.initial_backoff = Duration::from_nanos(1);
        spec.restart.max_backoff = Duration::from_secs(86_400);
        spec.restart.reset_after = Duration::from_secs(7 * 86_400);
        check(
            &spec,
            &[
                "web.restart.initial_backoff: 1ns is shorter than the minimum of 10ms",
                "web.restart.max_backoff: 1day is longer than the maximum of 1h",
                "web.restart.reset_after: 7days is longer than the maximum of 1day",
                "web.stop_grace: 100000000000years is longer than the maximum of 1h",
            ],
        );
        spec.stop_grace = MAX_STOP_GRACE;
        spec.restart.initial_backoff = MIN_BACKOFF;
        spec.restart.max_backoff = MAX_BACKOFF;
        spec.restart.reset_after = MAX_RESET_AFTER;
        check(&spec, &[]);
    }

    #[test]
    fn probe_paths_cannot_split_the_request() {
        for bad in [
            "/x\r\nX-Injected: 1",
            "/a b",
            "/tab\t",
            "/caf\u{e9}",
            "healthz",
        ] {
            let mut spec = web();
            spec.readiness = Some(probe(bad));
            let problems = validate(&spec).unwrap_err().problems;
            assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
            assert_eq!(problems[0].path, "web.readiness.http.path");
        }
        let mut spec = web();
        spec.readiness = Some(probe("/healthz?full=1&x=%20"));
        check(&spec, &[]);
    }

    #[test]
    fn env_keys_outpost_sets_are_refused() {
        let mut spec = web();
        spec.env.insert("PORT".into(), "80".into());
        spec.env.insert("OUTPOST_NODE".into(), "elsewhere".into());
        let got: Vec<String> = validate(&spec)
            .unwrap_err()
            .problems
            .iter()
            .map(|p| p.path.clone())
            .collect();
        assert_eq!(got, ["web.env.OUTPOST_NODE", "web.env.PORT"]);
        let mut portless = ServiceSpec::process("job", &["./job"]);
        portless.env.insert("PORT".into(), "80".into());
        check(&portless, &[]);
    }

    #[test]
    fn unknown_references_are_refused_where_the_agent_would_leave_them() {
        let mut spec = web();
        spec.command = vec![
            "./web".into(),
            "${NOPE}".into(),
            "${GREETING}-${PORT}".into(),
        ];
        spec.env.insert("GREETING".into(), "hi".into());
        spec.env
            .insert("URL".into(), "http://x:${PORT}/${GREETING}".into());
        let problems: Vec<String> = validate(&spec)
            .unwrap_err()
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with(r#"web.command[1]: "${NOPE}" is not set"#),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with(r#"web.env.URL: "${GREETING}" names another env entry"#),
            "{problems:#?}"
        );
        // A shell's own forms pass through untouched.
        spec.command = vec![
            "sh".into(),
            "-c".into(),
            "echo $HOME ${X:-d} ${GREETING}".into(),
        ];
        spec.env.insert("URL".into(), "http://x:${PORT}".into());
        check(&spec, &[]);
    }

    #[test]
    fn references_are_found_as_the_agent_finds_them() {
        assert_eq!(
            references("--port=${PORT} ${A}${B} $C ${unclosed"),
            ["PORT", "A", "B"]
        );
    }
}
