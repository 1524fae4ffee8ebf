//! Tables for people: pure functions from API records to text, kept apart from the calls that
//! fetch them.

use std::collections::BTreeMap;

use api::{Change, Event, Membership, Node, NodeInfo, ServerInfo, ServiceSummary, Task, Timestamp};
use comfy_table::{Table, presets};
use spec::ServiceSpec;

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_string()));
    t
}

pub fn trimmed(t: Table) -> String {
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `outpost images`: a row per node and image, the services using it (an image only kept for
/// rollback says so), then each node's whole store and the nodes that did not answer.
pub fn images(stored: &api::ClusterImages) -> String {
    let mut t = table(&["NODE", "IMAGE", "DIGEST", "SIZE", "USED BY"]);
    for node in &stored.nodes {
        for image in &node.images {
            let used = used_by(image);
            let digest = image.digest.get(..19).unwrap_or(&image.digest);
            let size = match image.missing_blobs {
                0 => memory(image.bytes),
                n => format!("{} ({n} blobs missing)", memory(image.bytes)),
            };
            t.add_row(vec![
                node.node.clone(),
                format!("{}:{}", image.name, image.tag),
                digest.to_string(),
                size,
                used,
            ]);
        }
    }
    let mut text = trimmed(t);
    for node in &stored.nodes {
        text.push_str(&format!(
            "
{}: {} blobs, {} in its store",
            node.node,
            node.blobs,
            memory(node.blob_bytes)
        ));
    }
    for u in &stored.unreachable {
        text.push_str(&format!(
            "
{}: no answer ({})",
            u.node, u.error
        ));
    }
    text
}

/// Who keeps a stored image: "web, api", "web (rollback only)", "web, api (rollback)", or "-".
fn used_by(image: &api::StoredImage) -> String {
    let rollback = image.rollback.join(", ");
    match (image.used_by.is_empty(), image.rollback.is_empty()) {
        (true, true) => "-".into(),
        (true, false) => format!("{rollback} (rollback only)"),
        (false, true) => image.used_by.join(", "),
        (false, false) => format!("{}, {rollback} (rollback)", image.used_by.join(", ")),
    }
}

/// `outpost image prune`: a row per node and image removed (or that would be), then each
/// node's totals and the nodes that did not answer (which collected nothing).
pub fn pruned(p: &api::ClusterPrune) -> String {
    let mut t = table(&["NODE", "IMAGE", "DIGEST", "SIZE"]);
    for node in &p.nodes {
        for image in &node.images {
            let digest = image.digest.get(..19).unwrap_or(&image.digest);
            t.add_row(vec![
                node.node.clone(),
                format!("{}:{}", image.name, image.tag),
                digest.to_string(),
                memory(image.bytes),
            ]);
        }
    }
    let mut text = match p.nodes.iter().any(|n| !n.images.is_empty()) {
        true => trimmed(t),
        false => "no image to remove".to_string(),
    };
    for node in &p.nodes {
        let verb = match node.dry_run {
            true => "would free",
            false => "freed",
        };
        text.push_str(&format!(
            "\n{}: {verb} {} in {} blobs, {} blobs kept",
            node.node,
            memory(node.bytes),
            node.blobs,
            node.kept_blobs
        ));
        if node.partial > 0 {
            text.push_str(&format!(", {} stale partial writes", node.partial));
        }
        if !node.engine_tags.is_empty() {
            text.push_str(&format!(
                "; removed from the Docker Engine: {}",
                node.engine_tags.join(", ")
            ));
        }
    }
    for u in &p.unreachable {
        text.push_str(&format!("\n{}: nothing collected ({})", u.node, u.error));
    }
    text
}

/// "3s", "5m", "2h", "4d": how long ago, coarsely.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let s = since.elapsed_at(now).as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn changes(changes: &[Change]) -> String {
    let mut t = table(&["SERVICE", "CHANGE", "FIELDS"]);
    for c in changes {
        t.add_row(vec![
            c.service.clone(),
            c.change.to_string(),
            c.fields.join(", "),
        ]);
    }
    trimmed(t)
}

pub fn spec_summary(specs: &[ServiceSpec]) -> String {
    let mut t = table(&["SERVICE", "DRIVER", "REPLICAS", "RUNS", "PORTS"]);
    for s in specs {
        let runs = match &s.image {
            Some(image) => format!("{image} {}", s.command.join(" "))
                .trim()
                .to_string(),
            None => s.command.join(" "),
        };
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| match (p.host_port, p.container_port) {
                (Some(h), Some(c)) => format!("{}:{h}->{c}", p.name),
                (None, Some(c)) => format!("{}:{c}", p.name),
                _ => p.name.clone(),
            })
            .collect();
        t.add_row(vec![
            s.name.clone(),
            s.driver.to_string(),
            s.replicas.to_string(),
            runs,
            ports.join(","),
        ]);
    }
    trimmed(t)
}

fn service_status(s: &ServiceSummary) -> &'static str {
    if s.removing {
        "removing"
    } else if s.rollout == Some(api::RolloutState::Updating) {
        "updating"
    } else if s.rollout == Some(api::RolloutState::RollingBack) {
        "rolling back"
    } else if s.ready == s.replicas {
        "ok"
    } else {
        "degraded"
    }
}

/// A listing of more rows than a screenful: how many of each kind, and how to see the rows.
fn counted(
    what: &str,
    kinds: impl Iterator<Item = String>,
    screenful: usize,
    command: &str,
) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for kind in kinds {
        *counts.entry(kind).or_default() += 1;
        total += 1;
    }
    let mut t = table(&["STATUS", "COUNT"]);
    for (kind, n) in &counts {
        t.add_row(vec![kind.clone(), n.to_string()]);
    }
    format!(
        "{}\n\n{total} {what}, more than a screenful ({screenful}): counted by status above.\n\
         See every row with `outpost {command} --all`, or read it whole with `outpost -o json \
         {command}`.",
        trimmed(t)
    )
}

/// Services by status, for more services than a screenful.
pub fn service_summary(list: &[ServiceSummary], screenful: usize) -> String {
    let kinds = list.iter().map(|s| service_status(s).to_string());
    counted("services", kinds, screenful, "services")
}

/// Nodes by state, for more nodes than a screenful.
pub fn node_summary(list: &[NodeInfo], screenful: usize) -> String {
    let kinds = list.iter().map(|n| node_state(&n.node));
    counted("nodes", kinds, screenful, "nodes")
}

pub fn services(list: &[ServiceSummary]) -> String {
    let mut t = table(&["NAME", "DRIVER", "READY", "RUNNING", "VERSION", "STATUS"]);
    for s in list {
        let status = service_status(s);
        t.add_row(vec![
            s.name.clone(),
            s.driver.clone(),
            format!("{}/{}", s.ready, s.replicas),
            s.running.to_string(),
            s.version.to_string(),
            status.to_string(),
        ]);
    }
    trimmed(t)
}

/// A service's addresses, then each endpoint as every node's listeners see it: its state
/// there (`ready`, `ejected`, `draining`; `-` where a node has no listener of it yet) and the
/// requests it got from all of them.
pub fn traffic(t: &api::ServiceTraffic) -> String {
    let service = &t.service;
    let mut out = Vec::new();
    for port in &service.ports {
        let vip = (service.vip).zip(port.service_port());
        if let Some((ip, number)) = vip {
            out.push(format!(
                "{} {}: {ip}:{number} ({})",
                service.name,
                port.name,
                port_kind(port)
            ));
        }
        if let Some(publish) = port.publish {
            out.push(format!(
                "{} {}: port {publish} of every node",
                service.name, port.name
            ));
        }
    }
    let mut rows = table(&[
        "ENDPOINT", "NODE", "ADDRESS", "STATE", "REQUESTS", "ERRORS", "RETRIES",
    ]);
    for e in &service.endpoints {
        let seen: Vec<&api::EndpointTraffic> = (t.listeners.iter())
            .flat_map(|l| l.endpoints.iter())
            .filter(|x| x.task == e.task)
            .collect();
        let mut states: Vec<&str> = seen.iter().map(|x| x.health.as_str()).collect();
        states.sort();
        states.dedup();
        let sum = |f: fn(&api::Counters) -> u64| seen.iter().map(|x| f(&x.counters)).sum::<u64>();
        let ports: Vec<String> = e.ports.iter().map(|(n, p)| format!("{n}:{p}")).collect();
        rows.add_row(vec![
            e.task.clone(),
            e.node.clone(),
            format!("{} {}", e.host, ports.join(",")),
            if states.is_empty() {
                "-".to_string()
            } else {
                states.join(",")
            },
            sum(|c| c.requests).to_string(),
            sum(|c| c.errors).to_string(),
            sum(|c| c.retries).to_string(),
        ]);
    }
    out.push(trimmed(rows));
    out.extend(t.unanswered.iter().map(|why| format!("not counted: {why}")));
    out.join("\n")
}

fn port_kind(port: &spec::PortSpec) -> &'static str {
    match port.protocol {
        spec::Protocol::Http => "http",
        spec::Protocol::Tcp => "tcp",
        spec::Protocol::Udp => "udp",
    }
}

pub fn tasks(list: &[Task], now: Timestamp) -> String {
    let mut t = table(&[
        "TASK",
        "NODE",
        "STATE",
        "READY",
        "RESTARTS",
        "LAST EXIT",
        "QOS",
        "PID",
        "PORTS",
        "AGE",
        "MESSAGE",
    ]);
    for task in list {
        let state = match (task.desired, task.next_start) {
            // Lost is final: nothing is stopping it that anyone can see.
            // A task that ended (or is lost, which is final) is not stopping: it is done.
            (api::DesiredState::Shutdown, _)
                if matches!(
                    task.state,
                    api::TaskState::Pending | api::TaskState::Starting | api::TaskState::Running
                ) =>
            {
                format!("{} (stopping)", task.state)
            }
            (api::DesiredState::Running, Some(next)) => {
                format!("backoff (next try in {})", age(now, next))
            }
            _ => task.state.to_string(),
        };
        let last_exit = (task.last_exit.as_ref()).map_or("-".into(), |e| {
            format!("{}, {} ago", e.summary, age(e.at, now))
        });
        let ports: Vec<String> = task.ports.iter().map(|(n, p)| format!("{n}:{p}")).collect();
        t.add_row(vec![
            task.id.clone(),
            task.node.clone().unwrap_or_else(|| "-".into()),
            state,
            ready(task),
            task.restarts.to_string(),
            last_exit,
            task.qos.to_string(),
            task.pid.map_or("-".into(), |p| p.to_string()),
            ports.join(","),
            task.started_at.map_or("-".into(), |s| age(s, now)),
            task.message.clone().unwrap_or_default(),
        ]);
    }
    trimmed(t)
}

/// `yes` or `no`, and why not when its node is lost: it may still say it was ready.
fn ready(task: &Task) -> String {
    match task.node_state {
        Some(state) if state.is_lost() => format!("no (node {state})"),
        _ if task.ready => "yes".to_string(),
        _ => "no".to_string(),
    }
}

/// Counts of `list` by service and state, for a listing too long to read row by row, and how to
/// see the rows.
pub fn task_summary(list: &[Task], screenful: usize) -> String {
    use api::TaskState::*;
    let states = [Pending, Starting, Running, Exited, Failed, Lost];
    let mut counts: BTreeMap<&str, [usize; 7]> = BTreeMap::new();
    for task in list {
        let row = counts.entry(task.service.as_str()).or_default();
        row[states.iter().position(|s| *s == task.state).unwrap_or(0)] += 1;
        row[6] += usize::from(task.ready);
    }
    let mut t = table(&[
        "SERVICE", "TASKS", "PENDING", "STARTING", "RUNNING", "EXITED", "FAILED", "LOST", "READY",
    ]);
    for (service, row) in &counts {
        let mut cells = vec![
            service.to_string(),
            row[..6].iter().sum::<usize>().to_string(),
        ];
        cells.extend(row.iter().map(usize::to_string));
        t.add_row(cells);
    }
    format!(
        "{}\n\n{} tasks, more than a screenful ({screenful}): counted by service and state \
         above.\nSee every row with `outpost ps --all`, narrow the list with `outpost ps SERVICE \
         --node NODE --state STATE`, or read it whole with `outpost -o json ps`.",
        trimmed(t),
        list.len()
    )
}

/// Memory in the largest binary unit that keeps it readable: `23.5Gi`, `256Mi`.
pub fn memory(bytes: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if value.fract() < 0.05 {
                format!("{value:.0}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

fn node_state(n: &Node) -> String {
    let notes: Vec<&str> = [
        (n.draining, "draining"),
        (n.memory_pressure, "memory pressure"),
    ]
    .into_iter()
    .filter_map(|(on, note)| on.then_some(note))
    .collect();
    if notes.is_empty() {
        n.state.to_string()
    } else {
        format!("{} ({})", n.state, notes.join(", "))
    }
}

/// How long ago the answering server heard the node, `-` where it keeps no liveness.
fn heartbeat_age(n: &NodeInfo) -> String {
    match n.last_heartbeat_age_ms {
        Some(ms) if ms < 60_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
        Some(ms) => format!("{}m ago", ms / 60_000),
        None => "-".into(),
    }
}

/// One node's role: `agent`, `server`, or `both` when a server has the agent's name.
fn role_of<'a>(name: &str, servers: &'a [ServerInfo]) -> (&'static str, Option<&'a ServerInfo>) {
    match servers.iter().find(|s| s.name == name) {
        Some(server) => ("both", Some(server)),
        None => ("agent", None),
    }
}

/// The rows of `outpost -o json nodes`: each agent's node with its `id` (a node is known by its
/// name, which its certificate carries), `role` and `leader`, and a
/// row for each server that is not also an agent (`role: server`). A server's row also has its
/// Raft id (`server_id`) and `membership` (voter or learner).
pub fn node_rows(list: &[NodeInfo], servers: &[ServerInfo]) -> Vec<serde_json::Value> {
    let server_fields = |row: &mut serde_json::Map<String, serde_json::Value>, s: &ServerInfo| {
        row.insert("server_id".into(), s.id.into());
        row.insert("membership".into(), serde_json::json!(s.membership));
        row.insert("server_address".into(), s.address.clone().into());
    };
    let mut rows = Vec::new();
    for info in list {
        let n = &info.node;
        let (role, server) = role_of(&n.name, servers);
        let mut row = match serde_json::to_value(info) {
            Ok(serde_json::Value::Object(row)) => row,
            _ => serde_json::Map::new(),
        };
        row.insert("id".into(), n.name.clone().into());
        row.insert("role".into(), role.into());
        row.insert("leader".into(), server.is_some_and(|s| s.leader).into());
        if let Some(s) = server {
            server_fields(&mut row, s);
        }
        rows.push(serde_json::Value::Object(row));
    }
    for s in servers
        .iter()
        .filter(|s| !list.iter().any(|n| n.node.name == s.name))
    {
        let mut row = serde_json::Map::new();
        row.insert("id".into(), s.name.clone().into());
        row.insert("name".into(), s.name.clone().into());
        row.insert("role".into(), "server".into());
        row.insert("tasks".into(), 0.into());
        row.insert("leader".into(), s.leader.into());
        row.insert("address".into(), s.address.clone().into());
        server_fields(&mut row, s);
        rows.push(serde_json::Value::Object(row));
    }
    rows
}

/// What a server row shows in the ROLE column: `server (leader)`, `both (learner)`, ….
fn role_text(role: &str, server: Option<&ServerInfo>) -> String {
    match server {
        Some(s) if s.leader => format!("{role} (leader)"),
        Some(s) if s.membership == Membership::Learner => format!("{role} (learner)"),
        _ => role.to_string(),
    }
}

/// The nodes as a table; `used` is each node's memory in use now, by name, where it was read.
pub fn nodes(
    list: &[NodeInfo],
    servers: &[ServerInfo],
    used: &std::collections::HashMap<String, u64>,
) -> String {
    let mut t = table(&[
        "NAME",
        "ROLE",
        "STATE",
        "HEARTBEAT",
        "ADDRESS",
        "CPU (ALLOC/CAP)",
        "MEMORY (ALLOC/CAP)",
        "MEMORY USED",
        "DRIVERS",
        "NOTES",
    ]);
    for info in list {
        let n = &info.node;
        let (role, server) = role_of(&n.name, servers);
        let in_use = used.get(&n.name).map_or("-".into(), |b| memory(*b));
        t.add_row(vec![
            n.name.clone(),
            role_text(role, server),
            node_state(n),
            heartbeat_age(info),
            n.address.clone(),
            format!(
                "{}/{}",
                spec::Cpu(n.allocatable.cpu_millis),
                spec::Cpu(n.capacity.cpu_millis)
            ),
            format!(
                "{}/{}",
                memory(n.allocatable.memory_bytes),
                memory(n.capacity.memory_bytes)
            ),
            in_use,
            n.drivers.join(","),
            n.notes.join("; "),
        ]);
    }
    for s in servers
        .iter()
        .filter(|s| !list.iter().any(|n| n.node.name == s.name))
    {
        t.add_row(vec![
            s.name.clone(),
            role_text("server", Some(s)),
            "-".into(),
            "-".into(),
            s.address.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            String::new(),
            String::new(),
        ]);
    }
    trimmed(t)
}

/// The group's servers, for when the nodes are summarised.
pub fn servers(servers: &[ServerInfo]) -> String {
    let mut t = table(&["SERVER", "NAME", "ADDRESS", "MEMBERSHIP", "LEADER"]);
    for s in servers {
        t.add_row(vec![
            s.id.to_string(),
            s.name.clone(),
            s.address.clone(),
            serde_json::to_value(s.membership)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            if s.leader { "yes" } else { "" }.to_string(),
        ]);
    }
    trimmed(t)
}

/// The header over [`event_line`]s.
pub fn event_header() -> String {
    event_columns("TIME", "LEVEL", "SUBJECT", "REASON", "MESSAGE")
}

/// One event in fixed columns, so a followed stream stays aligned: a longer subject or reason
/// pushes only its own line's message on.
pub fn event_line(e: &Event) -> String {
    let e2 = &e.event;
    let subject = e2
        .task
        .as_deref()
        .or(e2.service.as_deref())
        .or(e2.node.as_deref())
        .unwrap_or("-");
    let (time, level) = (e2.time.to_string(), e2.level.to_string());
    event_columns(&time, &level, subject, &e2.reason, &e2.message)
}

fn event_columns(time: &str, level: &str, subject: &str, reason: &str, message: &str) -> String {
    format!("{time:<24}  {level:<7}  {subject:<20}  {reason:<16}  {message}")
}
