//! Outpost's native spec format: one service per YAML document, fields named as in
//! [`ServiceSpec`]. Every default is filled in here, once, so later readers never guess.

use std::collections::BTreeMap;

use crate::decode::{Decoder, Fields, Path};
use crate::error::{Problem, SpecError};
use crate::rollout::{FailureAction, UpdateOrder, UpdateSpec};
use crate::types::{
    Condition, DriverKind, KeepTasks, OnNodeLost, PortRef, PortSpec, ProbeAction, ProbeSpec,
    Protocol, PullPolicy, ReplaceAfter, ResourceList, Resources, RestartPolicy, RestartSpec,
    ServiceSpec, VolumeSpec, stack_service_name,
};
use crate::validate;
use crate::yaml::Yaml;

#[rustfmt::skip]
const SERVICE_KEYS: &[&str] = &[
    "name", "replicas", "driver", "image", "command", "entrypoint", "env", "workdir", "user",
    "ports", "volumes", "restart", "liveness", "readiness", "resources", "stop_grace",
    "stop_signal", "pull", "read_only", "cap_add", "cap_drop", "security_opt", "privileged",
    "on_node_lost", "update", "rollback", "revision_history", "secrets", "configs", "stack",
    "depends_on", "load_balancer", "pull_secret",
];
const DEPENDENCY_KEYS: &[&str] = &["condition"];
const PORT_KEYS: &[&str] = &[
    "name",
    "container_port",
    "host_port",
    "protocol",
    "host_ip",
    "publish",
];
const VOLUME_KEYS: &[&str] = &["source", "target", "read_only"];
const ON_NODE_LOST_KEYS: &[&str] = &["replace_after", "unreachable_after"];
#[rustfmt::skip]
const UPDATE_KEYS: &[&str] = &[
    "parallelism", "delay", "order", "monitor", "failure_action", "max_failure_ratio", "canary",
];
const ORDERS: &[(&str, UpdateOrder)] = &[
    ("start-first", UpdateOrder::StartFirst),
    ("stop-first", UpdateOrder::StopFirst),
];
const FAILURE_ACTIONS: &[(&str, FailureAction)] = &[
    ("rollback", FailureAction::Rollback),
    ("pause", FailureAction::Pause),
    ("continue", FailureAction::Continue),
];
const RESTART_KEYS: &[&str] = &["policy", "initial_backoff", "max_backoff", "reset_after"];
const PROBE_ACTIONS: &[&str] = &["http", "tcp", "exec"];
#[rustfmt::skip]
const PROBE_KEYS: &[&str] = &[
    "http", "tcp", "exec", "initial_delay", "period", "timeout", "failure_threshold",
    "success_threshold",
];
const RESOURCE_KEYS: &[&str] = &["requests", "limits"];
const RESOURCE_LIST_KEYS: &[&str] = &["cpu", "memory", "pids"];

pub(crate) const DRIVERS: &[(&str, DriverKind)] = &[
    ("process", DriverKind::Process),
    ("docker", DriverKind::Docker),
];
/// Compose's words; native specs also take `http` (see [`NATIVE_PROTOCOLS`]).
pub(crate) const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const NATIVE_PROTOCOLS: &[(&str, Protocol)] = &[
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("http", Protocol::Http),
];
const PULL_POLICIES: &[(&str, PullPolicy)] = &[
    ("if-not-present", PullPolicy::IfNotPresent),
    ("always", PullPolicy::Always),
    ("never", PullPolicy::Never),
];
const POLICIES: &[(&str, RestartPolicy)] = &[
    ("always", RestartPolicy::Always),
    ("on-failure", RestartPolicy::OnFailure),
    ("never", RestartPolicy::Never),
];

/// Decodes and validates every service in a native spec file's documents. `source` names the
/// file in messages; `project` is the stack `-p` names, if any. Fails with every problem found,
/// each with its field path.
pub(crate) fn from_docs(
    source: &str,
    docs: &[Yaml],
    project: Option<&str>,
) -> Result<Vec<ServiceSpec>, SpecError> {
    if docs.is_empty() {
        return Err(Problem::new(source, "no services: the file has no YAML documents").into());
    }
    let mut d = Decoder::default();
    let mut decoded = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let root = doc_root(source, i, doc);
        if let Some(spec) = service(&mut d, &root, doc, project) {
            decoded.push((root, spec, format!("doc {}", i + 1)));
        }
    }
    SpecError::check(validate::after_decoding(d.problems, &decoded))?;
    Ok(decoded.into_iter().map(|(_, spec, _)| spec).collect())
}

/// Problems start with the service's name once it is known; before that, with the document.
fn doc_root(source: &str, i: usize, doc: &Yaml) -> Path {
    match doc.get("name").and_then(Yaml::scalar_text) {
        Some(name) if !name.is_empty() => Path::root(name),
        _ => Path::root(format!("{source}[doc {}]", i + 1)),
    }
}

fn service(d: &mut Decoder, root: &Path, doc: &Yaml, project: Option<&str>) -> Option<ServiceSpec> {
    if !matches!(doc, Yaml::Map(_)) {
        d.wrong_type::<()>(root, "a mapping of service fields", doc);
        return None;
    }
    let f = d.fields(root, doc, SERVICE_KEYS)?;
    let mut spec = ServiceSpec::process("", &[]);
    spec.name = f.require(d, "name", Decoder::string).unwrap_or_default();
    spec.image = f.take(d, "image", Decoder::string);
    // Without a (valid) driver, infer it, so a typo in `driver` is one problem, not several.
    let inferred = if f.has("image") {
        DriverKind::Docker
    } else {
        DriverKind::Process
    };
    spec.driver = f
        .take(d, "driver", |d, p, n| d.choice(p, n, DRIVERS))
        .unwrap_or(inferred);
    spec.replicas = f
        .take(d, "replicas", Decoder::number)
        .unwrap_or(spec.replicas);
    spec.command = f.take(d, "command", Decoder::argv).unwrap_or_default();
    spec.entrypoint = f.take(d, "entrypoint", Decoder::argv).unwrap_or_default();
    spec.env = f
        .take(d, "env", |d, p, n| Some(d.string_map(p, n)))
        .unwrap_or_default();
    spec.workdir = f.take(d, "workdir", Decoder::string);
    spec.user = f.take(d, "user", Decoder::string);
    spec.ports = f
        .take(d, "ports", |d, p, n| d.list(p, n, port))
        .unwrap_or_default();
    spec.volumes = f
        .take(d, "volumes", |d, p, n| d.list(p, n, volume))
        .unwrap_or_default();
    spec.restart = f.take(d, "restart", restart).unwrap_or_default();
    spec.liveness = f.take(d, "liveness", probe);
    spec.readiness = f.take(d, "readiness", probe);
    spec.resources = f.take(d, "resources", resources).unwrap_or_default();
    spec.stop_grace = f
        .take(d, "stop_grace", Decoder::duration)
        .unwrap_or(spec.stop_grace);
    spec.on_node_lost = f.take(d, "on_node_lost", on_node_lost).unwrap_or_default();
    let defaults = UpdateSpec::default();
    spec.update = (f.take(d, "update", |d, p, n| update(d, p, n, defaults))).unwrap_or(defaults);
    let defaults = UpdateSpec::rollback_default();
    spec.rollback =
        (f.take(d, "rollback", |d, p, n| update(d, p, n, defaults))).unwrap_or(defaults);
    spec.revision_history = f
        .take(d, "revision_history", Decoder::number)
        .unwrap_or(spec.revision_history);
    spec.secrets = f
        .take(d, "secrets", crate::objects::file_refs)
        .unwrap_or_default();
    spec.configs = f
        .take(d, "configs", crate::objects::file_refs)
        .unwrap_or_default();
    spec.load_balancer = f
        .take(d, "load_balancer", crate::balance::decode)
        .unwrap_or_default();
    container_settings(d, &f, &mut spec);
    stack(d, &f, project, &mut spec);
    Some(spec)
}

/// `stack:` (or `-p`), which makes the service `<stack>_<name>`, and `depends_on:`, whose names
/// are those of the same stack.
fn stack(d: &mut Decoder, f: &Fields<'_>, project: Option<&str>, spec: &mut ServiceSpec) {
    let own = f.take(d, "stack", Decoder::string);
    spec.stack = match (project, own) {
        (Some(p), Some(own)) if p != own => {
            let message = format!(
                "stack {own:?} differs from the {p:?} given with -p: leave `stack:` out, or \
                 deploy with -p {own}"
            );
            d.error(&f.path().key("stack"), message);
            Some(p.to_string())
        }
        (Some(p), _) => Some(p.to_string()),
        (None, own) => own,
    };
    let stack = spec.stack.as_deref();
    if !spec.name.is_empty() {
        spec.name = stack_service_name(stack, &spec.name);
    }
    let deps = f.take(d, "depends_on", dependencies).unwrap_or_default();
    spec.depends_on = (deps.into_iter())
        .map(|(name, condition)| (stack_service_name(stack, &name), condition))
        .collect();
}

/// `depends_on: [db]`, or `depends_on: { db: { condition: service_healthy } }` as in Compose.
fn dependencies(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<BTreeMap<String, Condition>> {
    match node {
        Yaml::Seq(_) => {
            let names = d.list(path, node, Decoder::string)?;
            Some(
                (names.into_iter())
                    .map(|n| (n, Condition::ServiceStarted))
                    .collect(),
            )
        }
        Yaml::Map(_) => {
            let f = d.any_fields(path, node)?;
            let mut out = BTreeMap::new();
            for (dep_path, name, body) in f.entries() {
                let condition = match body {
                    Yaml::Null => Some(Condition::ServiceStarted),
                    body => d.fields(&dep_path, body, DEPENDENCY_KEYS).map(|c| {
                        c.take(d, "condition", |d, p, n| d.choice(p, n, &Condition::ALL))
                            .unwrap_or_default()
                    }),
                };
                out.extend(condition.map(|c| (name.to_string(), c)));
            }
            Some(out)
        }
        other => d.wrong_type(path, "a list of service names, or a mapping of them", other),
    }
}

/// `on_node_lost: keep`, or `{ replace_after: 2s, unreachable_after: 5m }` with either left to
/// its default. Compose takes the same value as `x-outpost-on-node-lost`.
pub(crate) fn on_node_lost(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<OnNodeLost> {
    match node {
        Yaml::Str(_) => {
            return d
                .choice(path, node, &[("keep", KeepTasks::Keep)])
                .map(OnNodeLost::Keep);
        }
        Yaml::Map(_) => {}
        other => {
            let expected = "`keep`, or a mapping of `replace_after` and `unreachable_after`";
            return d.wrong_type(path, expected, other);
        }
    }
    let f = d.fields(path, node, ON_NODE_LOST_KEYS)?;
    let mut after = ReplaceAfter::default();
    let durations = [
        ("replace_after", &mut after.replace_after),
        ("unreachable_after", &mut after.unreachable_after),
    ];
    for (key, slot) in durations {
        if let Some(value) = f.take(d, key, Decoder::duration) {
            *slot = value;
        }
    }
    Some(OnNodeLost::Replace(after))
}

/// `update:` or `rollback:`: each field left out keeps its value in `defaults`.
pub(crate) fn update(
    d: &mut Decoder,
    path: &Path,
    node: &Yaml,
    defaults: UpdateSpec,
) -> Option<UpdateSpec> {
    let f = d.fields(path, node, UPDATE_KEYS)?;
    let mut spec = defaults;
    spec.parallelism = (f.take(d, "parallelism", Decoder::number)).unwrap_or(spec.parallelism);
    spec.delay = f.take(d, "delay", Decoder::duration).unwrap_or(spec.delay);
    spec.order = (f.take(d, "order", |d, p, n| d.choice(p, n, ORDERS))).unwrap_or(spec.order);
    spec.monitor = f
        .take(d, "monitor", Decoder::duration)
        .unwrap_or(spec.monitor);
    spec.failure_action = (f.take(d, "failure_action", |d, p, n| {
        d.choice(p, n, FAILURE_ACTIONS)
    }))
    .unwrap_or(spec.failure_action);
    spec.max_failure_ratio =
        (f.take(d, "max_failure_ratio", Decoder::ratio)).unwrap_or(spec.max_failure_ratio);
    spec.canary = f.take(d, "canary", Decoder::number).unwrap_or(spec.canary);
    Some(spec)
}

/// The docker-only settings, stored in their normal form (`NET_ADMIN`, `SIGTERM`).
fn container_settings(d: &mut Decoder, f: &Fields<'_>, spec: &mut ServiceSpec) {
    spec.stop_signal = f.take(d, "stop_signal", Decoder::signal);
    spec.pull = f
        .take(d, "pull", |d, p, n| d.choice(p, n, PULL_POLICIES))
        .unwrap_or_default();
    spec.pull_secret = f.take(d, "pull_secret", Decoder::string);
    spec.read_only = f.take(d, "read_only", Decoder::boolean).unwrap_or(false);
    spec.cap_add = f
        .take(d, "cap_add", Decoder::capabilities)
        .unwrap_or_default();
    spec.cap_drop = f
        .take(d, "cap_drop", Decoder::capabilities)
        .unwrap_or_default();
    spec.security_opt = f
        .take(d, "security_opt", |d, p, n| d.list(p, n, Decoder::string))
        .unwrap_or_default();
    spec.privileged = f.take(d, "privileged", Decoder::boolean).unwrap_or(false);
}

/// `- http`, or `- { name: http, container_port: 80, host_port: 8080, protocol: tcp }`, or
/// `- { name: http, container_port: 80, publish: 8080, protocol: http }`.
fn port(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<PortSpec> {
    match node {
        Yaml::Str(name) => Some(PortSpec::named(name)),
        Yaml::Map(_) => {
            let f = d.fields(path, node, PORT_KEYS)?;
            let mut port = PortSpec::named("");
            port.container_port = f.take(d, "container_port", Decoder::number);
            port.host_port = f.take(d, "host_port", Decoder::number);
            port.protocol = f
                .take(d, "protocol", |d, p, n| d.choice(p, n, NATIVE_PROTOCOLS))
                .unwrap_or_default();
            port.host_ip = f.take(d, "host_ip", Decoder::string);
            port.publish = f.take(d, "publish", Decoder::number);
            port.name = f.require(d, "name", Decoder::string)?;
            Some(port)
        }
        other => d.wrong_type(path, "a port name or a mapping with `name`", other),
    }
}

/// `- ./data:/data:ro`, or `- { source: ./data, target: /data, read_only: true }`.
fn volume(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<VolumeSpec> {
    match node {
        Yaml::Str(short) => short_volume(d, path, short),
        Yaml::Map(_) => {
            let f = d.fields(path, node, VOLUME_KEYS)?;
            let read_only = f.take(d, "read_only", Decoder::boolean).unwrap_or(false);
            let source = f.require(d, "source", Decoder::string);
            let target = f.require(d, "target", Decoder::string);
            Some(VolumeSpec {
                source: source?,
                target: target?,
                read_only,
            })
        }
        other => d.wrong_type(path, "\"source:target[:ro]\" or a mapping", other),
    }
}

fn short_volume(d: &mut Decoder, path: &Path, short: &str) -> Option<VolumeSpec> {
    let parts: Vec<&str> = short.split(':').collect();
    let read_only = match parts.get(2) {
        None | Some(&"rw") => false,
        Some(&"ro") => true,
        Some(mode) => {
            d.error(
                path,
                format!("{mode:?} is not a mount mode (use `ro` or `rw`)"),
            );
            return None;
        }
    };
    match parts.as_slice() {
        [source, target] | [source, target, _] => Some(VolumeSpec {
            source: source.to_string(),
            target: target.to_string(),
            read_only,
        }),
        _ => d.wrong_type(
            path,
            "\"source:target\" or \"source:target:ro\"",
            &Yaml::Str(short.into()),
        ),
    }
}

/// `restart: never`, or the full mapping with backoff settings.
fn restart(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<RestartSpec> {
    let mut spec = RestartSpec::default();
    if let Yaml::Str(_) = node {
        spec.policy = d.choice(path, node, POLICIES)?;
        return Some(spec);
    }
    let f = d.fields(path, node, RESTART_KEYS)?;
    spec.policy = f
        .take(d, "policy", |d, p, n| d.choice(p, n, POLICIES))
        .unwrap_or(spec.policy);
    let durations = [
        ("initial_backoff", &mut spec.initial_backoff),
        ("max_backoff", &mut spec.max_backoff),
        ("reset_after", &mut spec.reset_after),
    ];
    for (key, slot) in durations {
        if let Some(value) = f.take(d, key, Decoder::duration) {
            *slot = value;
        }
    }
    Some(spec)
}

/// One check (`http`, `tcp` or `exec`) plus timings, each defaulting as in [`ProbeSpec::new`].
fn probe(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<ProbeSpec> {
    let f = d.fields(path, node, PROBE_KEYS)?;
    let action = probe_action(d, path, &f);
    let mut spec = ProbeSpec::new(ProbeAction::Exec {
        command: Vec::new(),
    });
    let durations = [
        ("initial_delay", &mut spec.initial_delay),
        ("period", &mut spec.period),
        ("timeout", &mut spec.timeout),
    ];
    for (key, slot) in durations {
        if let Some(value) = f.take(d, key, Decoder::duration) {
            *slot = value;
        }
    }
    let thresholds = [
        ("failure_threshold", &mut spec.failure_threshold),
        ("success_threshold", &mut spec.success_threshold),
    ];
    for (key, slot) in thresholds {
        if let Some(value) = f.take(d, key, Decoder::number) {
            *slot = value;
        }
    }
    spec.action = action?;
    Some(spec)
}

fn probe_action(d: &mut Decoder, path: &Path, f: &Fields<'_>) -> Option<ProbeAction> {
    let present: Vec<&str> = PROBE_ACTIONS.iter().copied().filter(|k| f.has(k)).collect();
    match present.as_slice() {
        [] => {
            d.error(path, "needs a check: one of `http`, `tcp` or `exec`");
            None
        }
        [action] => f.take(d, action, |d, p, n| match *action {
            "http" => http_check(d, p, n),
            "tcp" => tcp_check(d, p, n),
            _ => Some(ProbeAction::Exec {
                command: d.argv(p, n)?,
            }),
        }),
        [first, second, ..] => {
            d.error(
                path,
                format!("has both `{first}` and `{second}`; a probe makes one check"),
            );
            None
        }
    }
}

/// `http: { path: /healthz, port: http }`; the path defaults to `/`.
fn http_check(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<ProbeAction> {
    let f = d.fields(path, node, &["path", "port"])?;
    let url_path = f
        .take(d, "path", Decoder::string)
        .unwrap_or_else(|| "/".to_string());
    Some(ProbeAction::Http {
        path: url_path,
        port: f.require(d, "port", port_ref)?,
    })
}

/// `tcp: { port: http }`: healthy when the port accepts a connection.
fn tcp_check(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<ProbeAction> {
    let f = d.fields(path, node, &["port"])?;
    Some(ProbeAction::Tcp {
        port: f.require(d, "port", port_ref)?,
    })
}

/// A declared port's name, or a port number.
pub(crate) fn port_ref(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<PortRef> {
    match node {
        Yaml::Int(_) => d.number(path, node).map(PortRef::Number),
        Yaml::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => match s.parse() {
            Ok(n) => Some(PortRef::Number(n)),
            Err(_) => {
                d.error(path, format!("{s} is not a port number (use 1 to 65535)"));
                None
            }
        },
        Yaml::Str(name) => Some(PortRef::Name(name.clone())),
        other => d.wrong_type(path, "a port name or number", other),
    }
}

fn resources(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Resources> {
    let f = d.fields(path, node, RESOURCE_KEYS)?;
    Some(Resources {
        requests: f.take(d, "requests", resource_list).unwrap_or_default(),
        limits: f.take(d, "limits", resource_list).unwrap_or_default(),
    })
}

fn resource_list(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<ResourceList> {
    let f = d.fields(path, node, RESOURCE_LIST_KEYS)?;
    Some(ResourceList {
        cpu: f.take(d, "cpu", Decoder::cpu),
        memory: f.take(d, "memory", Decoder::memory),
        pids: f.take(d, "pids", Decoder::number),
    })
}

#[cfg(test)]
pub(crate) mod tests;
