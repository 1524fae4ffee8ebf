//! Tables for people. Pure functions from API records to text, so they are snapshot-tested.

use api::{Change, Event, Node, ServiceSummary, Task, Timestamp};
use comfy_table::{Table, presets};
use spec::ServiceSpec;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_string()));
    t
}

fn trimmed(t: Table) -> String {
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
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

pub fn services(list: &[ServiceSummary]) -> String {
    let mut t = table(&["NAME", "DRIVER", "READY", "RUNNING", "VERSION", "STATUS"]);
    for s in list {
        let status = if s.removing {
            "removing"
        } else if s.ready == s.replicas {
            "ok"
        } else {
            "degraded"
        };
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

pub fn tasks(list: &[Task], now: Timestamp) -> String {
    let mut t = table(&[
        "TASK", "NODE", "STATE", "READY", "RESTARTS", "PID", "PORTS", "AGE", "MESSAGE",
    ]);
    for task in list {
        let state = match task.desired {
            api::DesiredState::Shutdown => format!("{} (stopping)", task.state),
            api::DesiredState::Running => task.state.to_string(),
        };
        let ports: Vec<String> = task.ports.iter().map(|(n, p)| format!("{n}:{p}")).collect();
        t.add_row(vec![
            task.id.clone(),
            task.node.clone().unwrap_or_else(|| "-".into()),
            state,
            if task.ready { "yes" } else { "no" }.to_string(),
            task.restarts.to_string(),
            task.pid.map_or("-".into(), |p| p.to_string()),
            ports.join(","),
            task.started_at.map_or("-".into(), |s| age(s, now)),
            task.message.clone().unwrap_or_default(),
        ]);
    }
    trimmed(t)
}

pub fn nodes(list: &[Node]) -> String {
    let mut t = table(&[
        "NAME", "STATE", "ADDRESS", "CPU", "MEMORY", "DRIVERS", "VERSION",
    ]);
    for n in list {
        t.add_row(vec![
            n.name.clone(),
            n.state.to_string(),
            n.address.clone(),
            spec::Cpu(n.capacity.cpu_millis).to_string(),
            spec::Memory(n.capacity.memory_bytes).to_string(),
            n.drivers.join(","),
            n.version.clone(),
        ]);
    }
    trimmed(t)
}

pub fn event_line(e: &Event) -> String {
    let e2 = &e.event;
    let subject = e2
        .task
        .as_deref()
        .or(e2.service.as_deref())
        .or(e2.node.as_deref())
        .unwrap_or("-");
    format!(
        "{}  {:<7}  {:<16}  {:<14}  {}",
        e2.time, e2.level, subject, e2.reason, e2.message
    )
}
