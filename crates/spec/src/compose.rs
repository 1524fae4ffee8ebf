//! Docker Compose files (the Compose Specification, as real projects write it) turned into
//! Outpost services. Variables are interpolated first, from the caller's environment and then the
//! `.env` text, as `docker compose` does. Every key Outpost cannot honour yet becomes a warning
//! naming the service and key — never a silent drop — and `x-*` extensions are accepted quietly
//! because they exist to hold YAML anchors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::container;
use crate::decode::{Decoder, Fields, Path, unknown_key};
use crate::dotenv;
use crate::error::{Problem, SpecError};
use crate::interpolate::interpolate;
use crate::native::{self, PROTOCOLS};
use crate::objects::{self, ObjectSource};
use crate::quantity::Memory;
use crate::stack::{check_stack_name, normalize_stack_name};
use crate::types::{
    Condition, DriverKind, ObjectKind, PortSpec, ProbeAction, ProbeSpec, Protocol, PullPolicy,
    ResourceList, RestartPolicy, RestartSpec, ServiceSpec, VolumeSpec, stack_service_name,
};
use crate::validate;
use crate::yaml::Yaml;
use crate::{Parsed, Stacking};

const TOP_IGNORED: &[&str] = &["volumes", "include", "models"];

/// Networks are not isolated yet: said once per file, for the top-level key or a service's.
const FLAT_NETWORK: &str = "networks are not isolated yet: every service reaches every other \
                            by name, as on one flat network";

#[rustfmt::skip]
const SERVICE_KEYS: &[&str] = &[
    "image", "command", "entrypoint", "environment", "ports", "volumes", "user", "working_dir",
    "healthcheck", "restart", "deploy", "stop_grace_period", "scale", "cpus", "mem_limit",
    "mem_reservation", "pids_limit", "cap_add", "cap_drop", "security_opt", "read_only",
    "privileged", "pull_policy", "stop_signal", "secrets", "configs", "depends_on", "expose",
    "networks", "x-outpost-pull-secret",
];
/// The rest of the Compose Specification's service keys: valid, but not honoured yet.
#[rustfmt::skip]
const SERVICE_IGNORED: &[&str] = &[
    "annotations", "attach", "build", "blkio_config", "cpu_count", "cpu_percent", "cpu_shares",
    "cpu_period", "cpu_quota", "cpu_rt_runtime", "cpu_rt_period", "cpuset", "cgroup",
    "cgroup_parent", "container_name", "credential_spec", "develop",
    "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "driver_opts",
    "env_file", "extends", "external_links", "extra_hosts", "gpus", "group_add",
    "hostname", "init", "ipc", "isolation", "labels", "label_file", "links", "logging",
    "mac_address", "mem_swappiness", "memswap_limit", "models", "network_mode",
    "oom_kill_disable", "oom_score_adj", "pid", "platform", "post_start", "pre_stop", "profiles",
    "provider", "runtime", "shm_size", "stdin_open", "storage_opt", "sysctls", "tmpfs",
    "tty", "ulimits", "use_api_socket", "userns_mode", "uts", "volumes_from",
];
#[rustfmt::skip]
const DEPLOY_KEYS: &[&str] = &[
    "replicas", "resources", "restart_policy", "mode", "update_config", "rollback_config",
];
const DEPLOY_IGNORED: &[&str] = &["labels", "placement", "endpoint_mode"];
const RESOURCES_KEYS: &[&str] = &["limits", "reservations"];
const LIMIT_KEYS: &[&str] = &["cpus", "memory", "pids"];
const RESERVATION_IGNORED: &[&str] = &["devices", "generic_resources"];
const RESTART_POLICY_KEYS: &[&str] = &["condition", "delay", "max_attempts", "window"];
#[rustfmt::skip]
const HEALTHCHECK_KEYS: &[&str] = &[
    "test", "interval", "timeout", "retries", "start_period", "disable",
];
const HEALTHCHECK_IGNORED: &[&str] = &["start_interval"];
#[rustfmt::skip]
const PORT_KEYS: &[&str] = &[
    "target", "published", "host_ip", "protocol", "name", "mode", "app_protocol",
];
/// `mode:` of a long-form port, as `docker stack deploy` takes it.
const PORT_MODES: &[(&str, bool)] = &[("ingress", true), ("host", false)];
const PORT_IGNORED: &[&str] = &[];
const VOLUME_KEYS: &[&str] = &["type", "source", "target", "read_only"];
const VOLUME_IGNORED: &[&str] = &["bind", "volume", "tmpfs", "image", "consistency"];
const DEPENDENCY_KEYS: &[&str] = &["condition"];
/// `restart: true` (restart the dependent when the dependency is updated) and `required:
/// false` (start even without it): valid, not honoured yet.
const DEPENDENCY_IGNORED: &[&str] = &["restart", "required"];

/// Docker's healthcheck defaults (`docker inspect` of any image): used when a field is absent,
/// or 0, which Docker also reads as "the default".
const HEALTHCHECK_INTERVAL: Duration = Duration::from_secs(30);
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTHCHECK_RETRIES: u32 = 3;

/// Decodes and validates a Compose file's documents. `env` is the caller's environment and
/// `dotenv` the text of the `.env` file beside it, if any; `env` wins where both set a variable.
/// Fails with every problem found.
pub(crate) fn from_docs(
    source: &str,
    docs: &[Yaml],
    env: &BTreeMap<String, String>,
    dotenv: Option<&str>,
    stacking: &Stacking,
) -> Result<Parsed, SpecError> {
    let dotenv = match dotenv {
        Some(text) => {
            dotenv::parse(".env", text, env).map_err(|problems| SpecError { problems })?
        }
        None => BTreeMap::new(),
    };
    let [doc] = docs else {
        let message = format!(
            "a Compose file holds one YAML document, found {}",
            docs.len()
        );
        return Err(Problem::new(source, message).into());
    };
    let vars = Vars {
        env,
        dotenv: &dotenv,
    };
    let mut d = Decoder {
        scalars_from_text: true,
        ..Decoder::default()
    };
    let mut objects = Vec::new();
    let decoded = file(&mut d, &vars, source, doc, stacking, &mut objects);
    SpecError::check(validate::after_decoding(d.problems, &decoded))?;
    Ok(Parsed {
        services: decoded.into_iter().map(|(_, spec, _)| spec).collect(),
        warnings: d.warnings,
        objects,
    })
}

/// Where `${VAR}` and value-less `environment` entries look: the environment, then `.env`.
struct Vars<'a> {
    env: &'a BTreeMap<String, String>,
    dotenv: &'a BTreeMap<String, String>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .cloned()
    }
}

fn file(
    d: &mut Decoder,
    vars: &Vars<'_>,
    source: &str,
    doc: &Yaml,
    stacking: &Stacking,
    objects: &mut Vec<ObjectSource>,
) -> Vec<(Path, ServiceSpec, String)> {
    let top = Path::root(source);
    let Some(f) = d.any_fields(&top, doc) else {
        return Vec::new();
    };
    d.scope = source.to_string();
    let stack = stack_name(d, vars, &f, stacking);
    let mut defined = Vec::new();
    for (path, key, node) in f.entries() {
        match key {
            "services" | "name" => {}
            "secrets" | "configs" => {
                let kind = match key {
                    "secrets" => ObjectKind::Secret,
                    _ => ObjectKind::Config,
                };
                let (names, sources) = objects::definitions(d, kind, &path, node);
                defined.push((kind, names));
                objects.extend(sources);
            }
            "version" => d.warn(format_args!("key \"version\" is obsolete and was ignored")),
            "networks" => d.warn(FLAT_NETWORK),
            key if key.starts_with("x-") => {}
            key if TOP_IGNORED.contains(&key) => d.warn(format_args!(
                "key {key:?} is not supported yet and was ignored"
            )),
            key => {
                let known: Vec<&str> = ["services", "name", "version", "secrets", "configs"]
                    .iter()
                    .chain(&["networks"])
                    .chain(TOP_IGNORED)
                    .copied()
                    .collect();
                d.error(&path, unknown_key(key, &known));
            }
        }
    }
    let Some((path, services)) = f.get("services") else {
        d.error(
            &top.key("services"),
            "missing: a Compose file needs a `services` mapping",
        );
        return Vec::new();
    };
    let Some(services) = d.any_fields(&path, services) else {
        return Vec::new();
    };
    let mut decoded = Vec::new();
    let mut waits = Vec::new();
    let mut warned = BTreeSet::new();
    for (_, name, body) in services.entries() {
        let root = Path::root(name);
        d.scope = format!("{source}: service {name:?}");
        d.scope_root = name.to_string();
        let mut body = body.clone();
        interpolate_tree(d, vars, &root, &mut body, &mut warned);
        if let Some(mut spec) = service(d, vars, &root, name, &body) {
            spec.stack = stack.clone();
            spec.name = stack_service_name(stack.as_deref(), &spec.name);
            waits.push(Waits {
                name: name.to_string(),
                deps: dependencies(d, &root, &body).unwrap_or_default(),
                restarts_explicitly: restarts_explicitly(&body),
            });
            decoded.push((root, spec, format!("service {name:?}")));
        }
    }
    if decoded.is_empty() && d.problems.is_empty() {
        d.error(&path, "no services");
    }
    for (root, spec, _) in &decoded {
        undefined_refs(d, root, spec, &defined);
    }
    d.scope = source.to_string();
    resolve_dependencies(d, stack.as_deref(), &waits, &mut decoded);
    decoded
}

/// The stack, as `docker compose` names a project: `-p`, `COMPOSE_PROJECT_NAME` (both as
/// given, which must be a valid name), the file's `name:`, or the directory's name (both
/// normalised). `None` only when the caller gave no directory.
fn stack_name(
    d: &mut Decoder,
    vars: &Vars<'_>,
    f: &Fields<'_>,
    stacking: &Stacking,
) -> Option<String> {
    if let Some(project) = &stacking.project {
        return Some(project.clone());
    }
    if let Some(project) = vars
        .env
        .get("COMPOSE_PROJECT_NAME")
        .filter(|p| !p.is_empty())
    {
        if let Err(why) = check_stack_name(project) {
            d.error(&Path::root("COMPOSE_PROJECT_NAME"), why);
        }
        return Some(project.clone());
    }
    let (written, path) = match f.get("name") {
        Some((path, node)) => {
            let mut node = node.clone();
            interpolate_tree(d, vars, &path, &mut node, &mut BTreeSet::new());
            (d.string(&path, &node)?, path)
        }
        None => (
            stacking.directory.clone()?,
            Path::root("the directory name"),
        ),
    };
    let name = normalize_stack_name(&written);
    match check_stack_name(&name) {
        Ok(()) => Some(name),
        Err(why) => {
            let message = format!("{written:?} makes no stack name ({why}); deploy with -p NAME");
            d.error(&path, message);
            None
        }
    }
}

/// A Compose service's `depends_on` as written, before its names are resolved.
struct Waits {
    name: String,
    /// Where each is written, the Compose name it gives, and its condition.
    deps: Vec<(Path, String, Condition)>,
    restarts_explicitly: bool,
}

/// The service's `depends_on`, by Compose service name as written.
fn dependencies(
    d: &mut Decoder,
    root: &Path,
    body: &Yaml,
) -> Option<Vec<(Path, String, Condition)>> {
    let (path, node) = (root.key("depends_on"), body.get("depends_on")?);
    match node {
        Yaml::Null => None,
        Yaml::Seq(items) => Some(
            (items.iter().enumerate())
                .filter_map(|(i, item)| {
                    let at = path.index(i);
                    let name = d.string(&at, item)?;
                    Some((at, name, Condition::ServiceStarted))
                })
                .collect(),
        ),
        Yaml::Map(entries) => {
            let mut out = Vec::new();
            for (name, dep) in entries {
                let at = path.key(name);
                let Some(c) = compose_fields(d, &at, dep, DEPENDENCY_KEYS, DEPENDENCY_IGNORED)
                else {
                    continue;
                };
                let condition = match c.has("condition") {
                    true => c.take(d, "condition", |d, p, n| d.choice(p, n, &Condition::ALL)),
                    false => Some(Condition::ServiceStarted),
                };
                // A condition that failed to decode was reported; the name is left alone.
                out.extend(condition.map(|condition| (at, name.clone(), condition)));
            }
            Some(out)
        }
        other => d.wrong_type(
            &path,
            "a list of service names, or a mapping of them",
            other,
        ),
    }
}

/// Whether the service sets its restart policy itself (`restart` or `deploy.restart_policy`).
fn restarts_explicitly(body: &Yaml) -> bool {
    let policy = body.get("deploy").and_then(|d| d.get("restart_policy"));
    body.get("restart").is_some_and(|r| *r != Yaml::Null) || policy.is_some()
}

/// Turns each service's `depends_on` into full service names, refusing a name the file does
/// not define (as Compose does). A service another waits on to complete, and whose restart
/// policy is not its own choice, restarts on failure only: Compose's default is `no`, and
/// Outpost's `always` would never let it complete.
fn resolve_dependencies(
    d: &mut Decoder,
    stack: Option<&str>,
    waits: &[Waits],
    decoded: &mut [(Path, ServiceSpec, String)],
) {
    let full = |name: &str| stack_service_name(stack, &renamed(name));
    let mut jobs = BTreeSet::new();
    for (w, (_, spec, _)) in waits.iter().zip(decoded.iter_mut()) {
        for (at, dep, condition) in &w.deps {
            if !waits.iter().any(|other| other.name == *dep) {
                let message = format!("service {dep:?} is not defined in this file");
                d.error(at, message);
                continue;
            }
            if *condition == Condition::ServiceCompletedSuccessfully {
                jobs.insert(dep.clone());
            }
            spec.depends_on.insert(full(dep), *condition);
        }
    }
    for (w, (_, spec, _)) in waits.iter().zip(decoded.iter_mut()) {
        let name = &w.name;
        if jobs.contains(name)
            && !w.restarts_explicitly
            && spec.restart.policy == RestartPolicy::Always
        {
            spec.restart.policy = RestartPolicy::OnFailure;
            d.warn(format_args!(
                "service {name:?} restarts on failure only, since another service waits for it \
                 to complete"
            ));
        }
    }
}

/// A service may only use the secrets and configs its file defines at the top level, as
/// Compose requires.
fn undefined_refs(
    d: &mut Decoder,
    root: &Path,
    spec: &ServiceSpec,
    defined: &[(ObjectKind, BTreeSet<String>)],
) {
    for kind in ObjectKind::ALL {
        let names = defined.iter().find(|(k, _)| *k == kind).map(|(_, n)| n);
        for (i, r) in spec.file_refs(kind).iter().enumerate() {
            if names.is_some_and(|n| n.contains(&r.source)) {
                continue;
            }
            let field = kind.field();
            let message = format!(
                "{kind} {:?} is not defined: add it to the top-level `{field}:` with `file:` \
                 (or `external: true` for one made with `outpost {kind} create`)",
                r.source
            );
            d.error(&root.key(field).index(i), message);
        }
    }
    let secrets = defined.iter().find(|(k, _)| *k == ObjectKind::Secret);
    if let Some(name) = &spec.pull_secret
        && !secrets.is_some_and(|(_, n)| n.contains(name))
    {
        let message = format!(
            "secret {name:?} is not defined: add it to the top-level `secrets:` with `file:` \
             (a Docker config, such as ~/.docker/config.json) or `external: true`"
        );
        d.error(&root.key("x-outpost-pull-secret"), message);
    }
}

/// Interpolates every string value (never keys) under `node`. `warned` holds the unset
/// variables already warned about, so each is reported once per file, as compose does.
fn interpolate_tree(
    d: &mut Decoder,
    vars: &Vars<'_>,
    path: &Path,
    node: &mut Yaml,
    warned: &mut BTreeSet<String>,
) {
    match node {
        Yaml::Str(text) => {
            let mut unset = Vec::new();
            match interpolate(text, &|name| vars.get(name), &mut unset) {
                Ok(expanded) => *text = expanded,
                Err(message) => d.error(path, message),
            }
            for name in unset {
                if warned.insert(name.clone()) {
                    d.warn(format_args!(
                        "variable {name:?} is not set, so {path} uses an empty string"
                    ));
                }
            }
        }
        Yaml::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(d, vars, &path.index(i), item, warned);
            }
        }
        Yaml::Map(entries) => {
            for (key, value) in entries.iter_mut().filter(|(k, _)| !k.starts_with("x-")) {
                interpolate_tree(d, vars, &path.key(key), value, warned);
            }
        }
        Yaml::Null | Yaml::Bool(_) | Yaml::Int(_) | Yaml::Float(_) => {}
    }
}

/// A mapping's fields, sorting its keys three ways: `supported` are decoded by the caller,
/// `ignored` (valid Compose that Outpost cannot honour yet) become warnings, anything else is a
/// problem with a did-you-mean. `x-*` extension keys are allowed anywhere.
fn compose_fields<'a>(
    d: &mut Decoder,
    path: &'a Path,
    node: &'a Yaml,
    supported: &[&str],
    ignored: &[&str],
) -> Option<Fields<'a>> {
    let fields = d.any_fields(path, node)?;
    for (key_path, key, _) in fields.entries() {
        if key.starts_with("x-") || supported.contains(&key) {
            continue;
        }
        if ignored.contains(&key) {
            d.ignored(&key_path);
            continue;
        }
        let known: Vec<&str> = supported.iter().chain(ignored).copied().collect();
        d.error(&key_path, unknown_key(key, &known));
    }
    Some(fields)
}

fn service(
    d: &mut Decoder,
    vars: &Vars<'_>,
    root: &Path,
    name: &str,
    body: &Yaml,
) -> Option<ServiceSpec> {
    let f = compose_fields(d, root, body, SERVICE_KEYS, SERVICE_IGNORED)?;
    let mut spec = ServiceSpec::process(&outpost_name(d, name), &[]);
    spec.driver = DriverKind::Docker;
    spec.image = f.take(d, "image", Decoder::string);
    if spec.image.is_none() {
        let message = match f.has("build") {
            true => "missing: an image is needed, building one (`build`) is not supported yet",
            false => "missing: Compose services need an image here",
        };
        d.error(&root.key("image"), message);
    }
    spec.command = f.take(d, "command", Decoder::argv).unwrap_or_default();
    spec.entrypoint = f.take(d, "entrypoint", Decoder::argv).unwrap_or_default();
    spec.env = f
        .take(d, "environment", |d, p, n| Some(environment(d, vars, p, n)))
        .unwrap_or_default();
    spec.user = f.take(d, "user", Decoder::string);
    spec.workdir = f.take(d, "working_dir", Decoder::string);
    let mut ports = (f.take(d, "ports", |d, p, n| d.list(p, n, port))).unwrap_or_default();
    let exposed = (f.take(d, "expose", |d, p, n| d.list(p, n, expose))).unwrap_or_default();
    // A port both published and exposed is one port.
    let exposed: Vec<PortSpec> = (exposed.into_iter())
        .filter(|e| {
            let same =
                |p: &PortSpec| p.container_port == e.container_port && p.protocol == e.protocol;
            !ports.iter().any(same)
        })
        .collect();
    ports.extend(exposed);
    spec.ports = name_ports(ports);
    if f.has("networks") && !d.warnings.iter().any(|w| w.ends_with(FLAT_NETWORK)) {
        d.warn(FLAT_NETWORK);
    }
    let volumes = f
        .take(d, "volumes", |d, p, n| d.list(p, n, volume))
        .unwrap_or_default();
    spec.volumes = volumes.into_iter().flatten().collect();
    spec.stop_grace = f
        .take(d, "stop_grace_period", go_duration)
        .unwrap_or(spec.stop_grace);
    spec.secrets = f.take(d, "secrets", objects::file_refs).unwrap_or_default();
    spec.configs = f.take(d, "configs", objects::file_refs).unwrap_or_default();
    spec.replicas = f.take(d, "scale", Decoder::number).unwrap_or(spec.replicas);
    legacy_resources(
        d,
        &f,
        &mut spec.resources.limits,
        &mut spec.resources.requests,
    );
    // Swarm semantics: an unhealthy task is restarted, and `restart` defaults to "always"
    // because Outpost exists to keep services up.
    if let Some(policy) = f.take(d, "restart", restart_word) {
        spec.restart.policy = policy;
    }
    if let Some((probe_path, node)) = f.get("healthcheck")
        && let Some(probe) = healthcheck(d, &probe_path, node)
    {
        spec.readiness = Some(ProbeSpec {
            initial_delay: Duration::ZERO,
            ..probe.clone()
        });
        spec.liveness = Some(probe);
    }
    if let Some((deploy_path, node)) = f.get("deploy") {
        deploy(d, &deploy_path, node, &mut spec);
    }
    // Compose has no such setting: Outpost's own extension key carries it.
    spec.on_node_lost = f
        .take(d, "x-outpost-on-node-lost", native::on_node_lost)
        .unwrap_or_default();
    spec.load_balancer = f
        .take(d, "x-outpost-load-balancer", crate::balance::decode)
        .unwrap_or_default();
    container_settings(d, &f, &mut spec);
    Some(spec)
}

/// `cap_add`, `cap_drop`, `security_opt`, `read_only`, `privileged`, `pull_policy` and
/// `stop_signal`, stored in Outpost's normal form (`NET_ADMIN`, `seccomp=...`, `SIGTERM`).
fn container_settings(d: &mut Decoder, f: &Fields<'_>, spec: &mut ServiceSpec) {
    spec.cap_add = f
        .take(d, "cap_add", Decoder::capabilities)
        .unwrap_or_default();
    spec.cap_drop = f
        .take(d, "cap_drop", Decoder::capabilities)
        .unwrap_or_default();
    let options = f.take(d, "security_opt", |d, p, n| d.list(p, n, Decoder::string));
    spec.security_opt = options
        .unwrap_or_default()
        .iter()
        .map(|o| container::normalize_compose_security_opt(o))
        .collect();
    spec.read_only = f.take(d, "read_only", Decoder::boolean).unwrap_or(false);
    spec.privileged = f.take(d, "privileged", Decoder::boolean).unwrap_or(false);
    spec.pull = f.take(d, "pull_policy", pull_policy).unwrap_or_default();
    spec.pull_secret = f.take(d, "x-outpost-pull-secret", Decoder::string);
    spec.stop_signal = f.take(d, "stop_signal", Decoder::signal);
}

/// `pull_policy`. Compose's default, `missing`, is Outpost's `if-not-present`; policies Outpost
/// cannot follow fall back to it with a warning, because valid Compose should still deploy.
fn pull_policy(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<PullPolicy> {
    let word = d.string(path, node)?;
    match word.as_str() {
        "always" => Some(PullPolicy::Always),
        "never" => Some(PullPolicy::Never),
        "missing" | "if_not_present" => Some(PullPolicy::IfNotPresent),
        "build" => {
            d.warn("pull_policy \"build\" is not supported yet (Outpost does not build images); the image is pulled if missing");
            Some(PullPolicy::IfNotPresent)
        }
        refresh if refresh == "daily" || refresh == "weekly" || refresh.starts_with("every_") => {
            d.warn(format_args!(
                "pull_policy {refresh:?} is not supported yet; the image is pulled if missing"
            ));
            Some(PullPolicy::IfNotPresent)
        }
        other => {
            let message = format!(
                "{other:?} is not one of `always`, `never`, `missing`, `if_not_present`, `build`"
            );
            d.error(path, message);
            None
        }
    }
}

/// Compose allows `_`, `.` and capitals in service names; Outpost names are DNS labels (`_`
/// separates a stack's name from a service's).
fn outpost_name(d: &mut Decoder, name: &str) -> String {
    let renamed = renamed(name);
    if renamed != name {
        d.warn(format_args!(
            "renamed to {renamed:?} (Outpost service names are lowercase letters, digits and '-')"
        ));
    }
    renamed
}

fn renamed(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// `environment` as a list (`KEY=value`, or `KEY` to pass the variable through) or a mapping
/// (a null value passes through too). A pass-through variable that is not set is left out, as
/// compose does, with a warning.
fn environment(
    d: &mut Decoder,
    vars: &Vars<'_>,
    path: &Path,
    node: &Yaml,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let pass_through = |d: &mut Decoder, key: &str| match vars.get(key) {
        Some(value) => Some(value),
        None => {
            d.warn(format_args!(
                "environment variable {key:?} is not set and was left out"
            ));
            None
        }
    };
    match node {
        Yaml::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let Some(entry) = d.string(&path.index(i), item) else {
                    continue;
                };
                let (key, value) = match entry.split_once('=') {
                    Some((key, value)) => (key.to_string(), Some(value.to_string())),
                    None => (entry.clone(), pass_through(d, &entry)),
                };
                out.extend(value.map(|v| (key, v)));
            }
        }
        Yaml::Map(entries) => {
            for (key, value) in entries {
                let value = match value {
                    Yaml::Null => pass_through(d, key),
                    value => d.string(&path.key(key), value),
                };
                out.extend(value.map(|v| (key.clone(), v)));
            }
        }
        other => {
            d.wrong_type::<()>(path, "a list of KEY=value or a mapping", other);
        }
    }
    out
}

/// `- "8080:80"`, `- 80`, or the long form with `target`, `published`, `host_ip`, `protocol`.
/// Names are filled in afterwards by [`name_ports`].
fn port(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<PortSpec> {
    match node {
        Yaml::Int(_) => {
            let mut port = PortSpec::named("");
            port.container_port = Some(d.number(path, node)?);
            Some(port)
        }
        Yaml::Str(short) => short_port(d, path, short),
        Yaml::Map(_) => {
            let f = compose_fields(d, path, node, PORT_KEYS, PORT_IGNORED)?;
            let mut port = PortSpec::named("");
            port.name = f.take(d, "name", Decoder::string).unwrap_or_default();
            // An empty `published` means "any host port", like leaving it out.
            port.host_port = f.take(d, "published", |d, p, n| {
                let text = d.string(p, n)?;
                if text.is_empty() {
                    None
                } else {
                    port_number(d, p, &text)
                }
            });
            port.host_ip = f.take(d, "host_ip", Decoder::string);
            port.protocol = f
                .take(d, "protocol", |d, p, n| d.choice(p, n, PROTOCOLS))
                .unwrap_or_default();
            let http = f.take(d, "app_protocol", Decoder::string);
            if http.is_some_and(|p| p.eq_ignore_ascii_case("http")) && !port.protocol.is_udp() {
                port.protocol = Protocol::Http;
            }
            let ingress = (f.take(d, "mode", |d, p, n| d.choice(p, n, PORT_MODES))).unwrap_or(true);
            port.container_port = Some(f.require(d, "target", Decoder::number)?);
            Some(if ingress { to_mesh(port) } else { port })
        }
        other => d.wrong_type(
            path,
            "\"HOST:CONTAINER\", a port number, or a mapping",
            other,
        ),
    }
}

/// `- 5432` or `- "5432/tcp"`: a port the service answers on by name, published nowhere.
fn expose(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<PortSpec> {
    let text = d.string(path, node)?;
    let (number, protocol) = match text.rsplit_once('/') {
        Some((number, word)) => (number, d.choice(path, &Yaml::Str(word.into()), PROTOCOLS)?),
        None => (text.as_str(), Protocol::Tcp),
    };
    Some(PortSpec {
        container_port: Some(port_number(d, path, number)?),
        protocol,
        ..PortSpec::named("")
    })
}

/// `[[IP:]HOST:]CONTAINER[/PROTOCOL]`, IPv6 addresses in brackets: `"[::1]:8080:80"`.
fn short_port(d: &mut Decoder, path: &Path, short: &str) -> Option<PortSpec> {
    let (mapping, protocol) = match short.rsplit_once('/') {
        Some((mapping, word)) => (mapping, d.choice(path, &Yaml::Str(word.into()), PROTOCOLS)?),
        None => (short, Protocol::Tcp),
    };
    let (bracketed_ip, mapping) = match mapping.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        Some((ip, rest)) => (Some(ip), rest),
        None => (None, mapping),
    };
    let parts: Vec<&str> = mapping.split(':').collect();
    let (ip, host, container) = match (bracketed_ip, parts.as_slice()) {
        (_, [container]) => (bracketed_ip, "", *container),
        (_, [host, container]) => (bracketed_ip, *host, *container),
        (None, [ip, host, container]) => (Some(*ip), *host, *container),
        _ => {
            let message =
                format!("{short:?} is not a port mapping (write [IP:]HOST:CONTAINER[/tcp|udp])");
            d.error(path, message);
            return None;
        }
    };
    let host_port = if host.is_empty() {
        None
    } else {
        Some(port_number(d, path, host)?)
    };
    Some(to_mesh(PortSpec {
        name: String::new(),
        container_port: Some(port_number(d, path, container)?),
        host_port,
        protocol,
        host_ip: ip.map(str::to_string),
        publish: None,
    }))
}

/// A published TCP port goes on the routing mesh, as `docker stack deploy` does by default
/// (`mode: ingress`): every node answers on it. One bound to a host address, a UDP port and
/// `mode: host` stay fixed host ports of the nodes their tasks run on.
fn to_mesh(mut port: PortSpec) -> PortSpec {
    if port.host_ip.is_none() && !port.protocol.is_udp() {
        port.publish = port.host_port.take();
    }
    port
}

fn port_number(d: &mut Decoder, path: &Path, text: &str) -> Option<u16> {
    if text.contains('-') {
        let message = format!("port ranges like {text:?} are not supported yet; list each port");
        d.error(path, message);
        return None;
    }
    match text.parse::<u16>() {
        Ok(n) => Some(n),
        Err(_) => {
            d.error(
                path,
                format!("{text:?} is not a port number (use 1 to 65535)"),
            );
            None
        }
    }
}

/// Compose ports have no names; Outpost's do. An unnamed port is called `p<container port>`
/// (`p53-udp` for UDP), with `-2`, `-3`… when a container port is published twice.
fn name_ports(mut ports: Vec<PortSpec>) -> Vec<PortSpec> {
    let mut taken: BTreeSet<String> = ports
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    for port in ports.iter_mut().filter(|p| p.name.is_empty()) {
        let udp = if port.protocol == Protocol::Udp {
            "-udp"
        } else {
            ""
        };
        let base = format!("p{}{udp}", port.container_port.unwrap_or(0));
        let name = (1..)
            .map(|n| {
                if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or(base);
        taken.insert(name.clone());
        port.name = name;
    }
    ports
}

/// `- ./data:/data:ro`, `- pgdata:/var/lib/postgresql/data`, or the long form. Relative host
/// paths are kept as written: the caller knows the Compose file's directory, this crate does not.
/// `Some(None)` is a mount that was left out with a warning.
fn volume(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Option<VolumeSpec>> {
    match node {
        Yaml::Str(short) => short_volume(d, path, short).map(Some),
        Yaml::Map(_) => long_volume(d, path, node),
        other => d.wrong_type(path, "\"SOURCE:TARGET[:ro]\" or a mapping", other),
    }
}

fn short_volume(d: &mut Decoder, path: &Path, short: &str) -> Option<VolumeSpec> {
    let parts: Vec<&str> = short.splitn(3, ':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => return anonymous_volume(d, path, target),
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => return d.wrong_type(path, "\"SOURCE:TARGET[:ro]\"", &Yaml::Str(short.into())),
    };
    let mut read_only = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => d.warn(format_args!(
                "volume option {other:?} in {path} is not supported yet and was ignored"
            )),
        }
    }
    Some(VolumeSpec {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

fn long_volume(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Option<VolumeSpec>> {
    let f = compose_fields(d, path, node, VOLUME_KEYS, VOLUME_IGNORED)?;
    let kind = f
        .take(d, "type", Decoder::string)
        .unwrap_or_else(|| "volume".to_string());
    if kind != "bind" && kind != "volume" {
        d.warn(format_args!(
            "volume type {kind:?} in {path} is not supported yet; the mount was left out"
        ));
        return Some(None);
    }
    let read_only = f.take(d, "read_only", Decoder::boolean).unwrap_or(false);
    let target = f.require(d, "target", Decoder::string)?;
    match f.take(d, "source", Decoder::string) {
        Some(source) => Some(Some(VolumeSpec {
            source,
            target,
            read_only,
        })),
        None => anonymous_volume(d, path, &target),
    }
}

fn anonymous_volume<T>(d: &mut Decoder, path: &Path, target: &str) -> Option<T> {
    let message =
        format!("anonymous volumes are not supported yet; name it, like \"data:{target}\"");
    d.error(path, message);
    None
}

/// `restart: no | always | on-failure[:N] | unless-stopped`.
fn restart_word(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<RestartPolicy> {
    let word = d.string(path, node)?;
    match word.as_str() {
        "no" => Some(RestartPolicy::Never),
        // Outpost has no "stopped by the user" state a restart could respect.
        "always" | "unless-stopped" => Some(RestartPolicy::Always),
        "on-failure" => Some(RestartPolicy::OnFailure),
        other if other.starts_with("on-failure:") => {
            d.warn(format_args!(
                "a restart limit ({other:?}) is not supported yet; restarts are unlimited"
            ));
            Some(RestartPolicy::OnFailure)
        }
        other => {
            let message =
                format!("{other:?} is not one of `no`, `always`, `on-failure`, `unless-stopped`");
            d.error(path, message);
            None
        }
    }
}

/// `test` (`[CMD, ...]`, `[CMD-SHELL, "..."]`, a string, or `[NONE]`) with Docker's timings,
/// as one probe. The caller uses it for liveness (an unhealthy task is restarted, as in Swarm)
/// and, without the start period, for readiness. `None` when disabled or unusable.
fn healthcheck(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<ProbeSpec> {
    let f = compose_fields(d, path, node, HEALTHCHECK_KEYS, HEALTHCHECK_IGNORED)?;
    if f.take(d, "disable", Decoder::boolean) == Some(true) {
        return None;
    }
    let command = match f.get("test") {
        Some((test_path, test)) => health_test(d, &test_path, test),
        None => {
            d.warn("healthcheck has no `test`, and the image's own HEALTHCHECK is not used yet; no probe was set up");
            None
        }
    };
    // Timings are decoded even without a usable test, so their problems are reported too.
    let or_default =
        |value: Option<Duration>, default| value.filter(|v| !v.is_zero()).unwrap_or(default);
    let retries = f
        .take(d, "retries", Decoder::number)
        .filter(|&n: &u32| n > 0);
    let initial_delay = f
        .take(d, "start_period", go_duration)
        .unwrap_or(Duration::ZERO);
    let period = or_default(f.take(d, "interval", go_duration), HEALTHCHECK_INTERVAL);
    let timeout = or_default(f.take(d, "timeout", go_duration), HEALTHCHECK_TIMEOUT);
    Some(ProbeSpec {
        action: ProbeAction::Exec { command: command? },
        initial_delay,
        period,
        timeout,
        failure_threshold: retries.unwrap_or(HEALTHCHECK_RETRIES),
        success_threshold: 1,
    })
}

/// The argv of a healthcheck `test`; `None` for `[NONE]` (checks off) and after a problem.
fn health_test(d: &mut Decoder, path: &Path, test: &Yaml) -> Option<Vec<String>> {
    let shell = |script: String| vec!["/bin/sh".to_string(), "-c".to_string(), script];
    if let Yaml::Str(script) = test {
        return Some(shell(script.clone()));
    }
    let argv = d.argv(path, test)?;
    match argv.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            Some(shell(rest.join(" ")))
        }
        Some((kind, _)) if kind == "NONE" => None,
        Some((kind, _)) if kind == "CMD" || kind == "CMD-SHELL" => {
            d.error(path, format!("`{kind}` needs a command after it"));
            None
        }
        _ => {
            let first = argv
                .first()
                .map_or("nothing".to_string(), |s| format!("{s:?}"));
            d.error(
                path,
                format!("expected \"CMD\", \"CMD-SHELL\" or \"NONE\" first, got {first}"),
            );
            None
        }
    }
}

fn deploy(d: &mut Decoder, path: &Path, node: &Yaml, spec: &mut ServiceSpec) {
    let Some(f) = compose_fields(d, path, node, DEPLOY_KEYS, DEPLOY_IGNORED) else {
        return;
    };
    spec.replicas = f
        .take(d, "replicas", Decoder::number)
        .unwrap_or(spec.replicas);
    if let Some(mode) = f.take(d, "mode", |d, p, n| {
        d.choice(p, n, &[("replicated", false), ("global", true)])
    }) && mode
    {
        d.warn("deploy.mode \"global\" is not supported yet; the service runs `replicas` tasks");
    }
    if let Some((resources_path, node)) = f.get("resources")
        && let Some(r) = compose_fields(d, &resources_path, node, RESOURCES_KEYS, &[])
    {
        if let Some((p, n)) = r.get("limits") {
            resource_list(d, &p, n, &[], &mut spec.resources.limits);
        }
        if let Some((p, n)) = r.get("reservations") {
            resource_list(d, &p, n, RESERVATION_IGNORED, &mut spec.resources.requests);
        }
    }
    if let Some(restart) = f.take(d, "restart_policy", |d, p, n| {
        restart_policy(d, p, n, &spec.restart)
    }) {
        spec.restart = restart;
    }
    // Swarm's keys and meanings are Outpost's own `update:` and `rollback:`.
    let (update, rollback) = (spec.update, spec.rollback);
    spec.update = (f.take(d, "update_config", |d, p, n| {
        native::update(d, p, n, update)
    }))
    .unwrap_or(update);
    spec.rollback = (f.take(d, "rollback_config", |d, p, n| {
        native::update(d, p, n, rollback)
    }))
    .unwrap_or(rollback);
}

/// `cpus: "0.5"`, `memory: 50M` (Docker's binary units), `pids: 100` into `list`.
fn resource_list(
    d: &mut Decoder,
    path: &Path,
    node: &Yaml,
    ignored: &[&str],
    list: &mut ResourceList,
) {
    let Some(f) = compose_fields(d, path, node, LIMIT_KEYS, ignored) else {
        return;
    };
    if let Some(cpu) = f.take(d, "cpus", Decoder::cpu) {
        list.cpu = Some(cpu);
    }
    if let Some(memory) = f.take(d, "memory", docker_memory) {
        list.memory = Some(memory);
    }
    if let Some(pids) = f.take(d, "pids", pids) {
        list.pids = pids;
    }
}

/// The pre-`deploy` keys `cpus`, `mem_limit`, `mem_reservation` and `pids_limit`; `deploy`, read
/// later, overrides them, as docker compose does.
fn legacy_resources(
    d: &mut Decoder,
    f: &Fields<'_>,
    limits: &mut ResourceList,
    requests: &mut ResourceList,
) {
    limits.cpu = f.take(d, "cpus", Decoder::cpu);
    limits.memory = f.take(d, "mem_limit", docker_memory);
    requests.memory = f.take(d, "mem_reservation", docker_memory);
    limits.pids = f.take(d, "pids_limit", pids).flatten();
}

/// A pids limit; Docker reads `-1` and `0` as "no limit".
fn pids(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Option<u64>> {
    let text = node.scalar_text().unwrap_or_default();
    if matches!(text.trim(), "-1" | "0") {
        return Some(None);
    }
    d.number(path, node).map(Some)
}

/// Swarm's `restart_policy`. Its fixed `delay` becomes the first backoff (Outpost doubles it up to
/// `max_backoff`), and `window` becomes `reset_after`.
fn restart_policy(
    d: &mut Decoder,
    path: &Path,
    node: &Yaml,
    base: &RestartSpec,
) -> Option<RestartSpec> {
    let f = compose_fields(d, path, node, RESTART_POLICY_KEYS, &[])?;
    let conditions = [
        ("none", RestartPolicy::Never),
        ("on-failure", RestartPolicy::OnFailure),
        ("any", RestartPolicy::Always),
    ];
    let mut spec = base.clone();
    spec.policy = f
        .take(d, "condition", |d, p, n| d.choice(p, n, &conditions))
        .unwrap_or(spec.policy);
    match f.take(d, "delay", go_duration) {
        Some(delay) if delay.is_zero() => d.warn(format_args!(
            "{}.delay 0s was raised to {} so a crash loop cannot spin a core",
            path_key(path),
            humantime::format_duration(spec.initial_backoff)
        )),
        Some(delay) => {
            spec.initial_backoff = delay;
            spec.max_backoff = spec.max_backoff.max(delay);
        }
        None => {}
    }
    if f.has("max_attempts") {
        d.warn(format_args!(
            "{}.max_attempts is not supported yet; restarts are unlimited",
            path_key(path)
        ));
    }
    spec.reset_after = f.take(d, "window", go_duration).unwrap_or(spec.reset_after);
    Some(spec)
}

/// `deploy.restart_policy` out of `web.deploy.restart_policy`.
fn path_key(path: &Path) -> String {
    let full = path.to_string();
    full.split_once('.')
        .map_or(full.clone(), |(_, rest)| rest.to_string())
}

/// A Go duration, as Compose writes them: `1m30s`, `1.5s`, `500ms`, `10us`, `0`.
fn go_duration(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Duration> {
    d.parsed(path, node, |text| {
        parse_go_duration(text).ok_or_else(|| {
            format!("{text:?} is not a duration (write a number and a unit, like \"30s\", \"1m30s\" or \"500ms\")")
        })
    })
}

fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        seconds += number * scale;
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|_| !text.is_empty())
}

/// Docker's memory sizes: a number, an optional space, then an optional `b`, `k`, `m`, `g`, `t`
/// or `p` (any case, optionally followed by `i` and/or `b`), all powers of 1024: `50M` is 50 MiB.
fn docker_memory(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Memory> {
    d.parsed(path, node, |text| {
        parse_docker_memory(text).ok_or_else(|| {
            format!("{text:?} is not a memory size (write bytes or a number with b, k, m or g, like \"512m\")")
        })
    })
}

fn parse_docker_memory(text: &str) -> Option<Memory> {
    let lower = text.trim().to_ascii_lowercase();
    let number_len = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_len);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    let scale = 1024u64.pow(power);
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(scale).map(Memory);
    }
    let value: f64 = number.parse().ok()?;
    let bytes = value * scale as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then(|| Memory(bytes.round() as u64))
}

#[cfg(test)]
mod tests;
