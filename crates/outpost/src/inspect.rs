//! `outpost inspect NAME`: the whole record of a service, a task or a node, put together from
//! what the control plane holds (and, for a service's endpoints, what its nodes' load balancers
//! count), as text or as one JSON or YAML document.

use anyhow::{Result, bail};
use api::{Event, NodeInfo, ServiceSummary, ServiceTraffic, Task};
use client::{Client, ClientError, EventFilter, TaskFilter};
use serde::Serialize;

use crate::commands::{connect, print_data};
use crate::{Connection, Format, output};

/// How many of a service's or node's latest events a record shows.
const RECENT_EVENTS: usize = 20;

/// What `inspect` shows of one name.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    Service {
        service: ServiceSummary,
        tasks: Vec<Task>,
        /// `None` when the nodes could not be asked (said in `endpoints_error`).
        endpoints: Option<ServiceTraffic>,
        #[serde(skip_serializing_if = "Option::is_none")]
        endpoints_error: Option<String>,
        events: Vec<Event>,
    },
    Task {
        task: Task,
        /// The spec the task runs, when it is the service's current revision.
        #[serde(skip_serializing_if = "Option::is_none")]
        spec: Option<spec::ServiceSpec>,
        /// Every event of the task: its history, with times and reasons.
        history: Vec<Event>,
    },
    Node {
        node: NodeInfo,
        tasks: Vec<Task>,
        events: Vec<Event>,
    },
}

pub async fn inspect(conn: &Connection, name: &str) -> Result<()> {
    let client = connect(conn).await?;
    let record = find(&client, name).await?;
    match conn.output {
        Format::Table => {
            println!("{}", describe(&record));
            Ok(())
        }
        format => print_data(format, &record),
    }
}

/// The record `name` names: a task (its id has dots: `web.1.7`), else a service, else a node.
async fn find(client: &Client, name: &str) -> Result<Record> {
    if let Some((service, _)) = name.split_once('.') {
        return task(client, service, name).await;
    }
    match client.service(name).await {
        Ok(service) => return service_record(client, service).await,
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    let nodes = client.nodes().await?;
    let Some(node) = nodes.into_iter().find(|n| n.node.name == name) else {
        bail!(
            "no service, task or node is named {name:?}: `outpost services`, `outpost ps` and \
             `outpost nodes` list them"
        );
    };
    let filter = TaskFilter {
        node: Some(name.to_string()),
        ..TaskFilter::default()
    };
    let tasks = client.tasks_where(&filter).await?;
    let events = latest(
        client,
        EventFilter {
            node: Some(name.to_string()),
            ..EventFilter::default()
        },
    )
    .await?;
    Ok(Record::Node {
        node,
        tasks,
        events,
    })
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status, .. } if status.as_u16() == 404)
}

async fn service_record(client: &Client, service: ServiceSummary) -> Result<Record> {
    let tasks = client.tasks(Some(&service.name)).await?;
    let (endpoints, endpoints_error) = match client.traffic(&service.name).await {
        Ok(traffic) => (Some(traffic), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let events = latest(
        client,
        EventFilter {
            service: Some(service.name.clone()),
            ..EventFilter::default()
        },
    )
    .await?;
    Ok(Record::Service {
        service,
        tasks,
        endpoints,
        endpoints_error,
        events,
    })
}

async fn task(client: &Client, service: &str, id: &str) -> Result<Record> {
    let filter = TaskFilter {
        service: Some(service.to_string()),
        finished: true,
        ..TaskFilter::default()
    };
    let tasks = client.tasks_where(&filter).await?;
    let Some(task) = tasks.into_iter().find(|t| t.id == id) else {
        bail!(
            "no task {id:?}: `outpost ps -a {service}` lists the tasks of {service:?} (the \
             latest finished ones too)"
        );
    };
    let current = client.service(service).await?;
    let spec = (current.version == task.version).then_some(current.spec);
    let filter = EventFilter {
        service: Some(service.to_string()),
        ..EventFilter::default()
    };
    let all = client.events(0, None, &filter).await?.events;
    let history = all
        .into_iter()
        .filter(|e| e.event.task.as_deref() == Some(id))
        .collect();
    Ok(Record::Task {
        task,
        spec,
        history,
    })
}

/// The latest events that match `filter`.
async fn latest(client: &Client, filter: EventFilter) -> Result<Vec<Event>> {
    let mut events = client.events(0, None, &filter).await?.events;
    let skip = events.len().saturating_sub(RECENT_EVENTS);
    Ok(events.split_off(skip))
}

/// A record as text: its fields, line by line, then its tasks and events as `ps` and `events`
/// show them.
fn describe(record: &Record) -> String {
    let now = server::now();
    let mut out = String::new();
    let mut field =
        |name: &str, value: String| out.push_str(&format!("{:<13}{value}\n", format!("{name}:")));
    match record {
        Record::Service {
            service,
            tasks,
            endpoints,
            endpoints_error,
            events,
        } => {
            field("Service", format!("{} ({})", service.name, service.driver));
            field("Revision", service.version.to_string());
            field(
                "Replicas",
                format!(
                    "{} wanted, {} running, {} ready{}",
                    service.replicas,
                    service.running,
                    service.ready,
                    if service.removing {
                        ", being removed"
                    } else {
                        ""
                    }
                ),
            );
            field("Updated", service.updated_at.to_string());
            if let Some(rollout) = &service.rollout {
                field(
                    "Rollout",
                    serde_json::to_string(rollout).unwrap_or_default(),
                );
            }
            out.push_str(&section("Spec", &yaml(&service.spec)));
            out.push_str(&section("Tasks", &output::tasks(tasks, now)));
            let endpoints = match (endpoints, endpoints_error) {
                (Some(traffic), _) => output::traffic(traffic),
                (None, Some(e)) => format!("cannot ask the nodes: {e}"),
                (None, None) => String::new(),
            };
            out.push_str(&section("Endpoints", &endpoints));
            out.push_str(&section("Events", &event_lines(events)));
        }
        Record::Task {
            task,
            spec,
            history,
        } => {
            field("Task", task.id.clone());
            field(
                "Service",
                format!(
                    "{} (slot {}, revision {})",
                    task.service, task.slot, task.version
                ),
            );
            field("Node", task.node.clone().unwrap_or_else(|| "-".into()));
            field(
                "State",
                format!("{} (wanted {:?})", task.state, task.desired).to_lowercase(),
            );
            let ready = match task.ready_since {
                Some(since) if task.ready => format!("yes, since {since}"),
                _ => "no".into(),
            };
            field("Ready", ready);
            field("Restarts", task.restarts.to_string());
            if let Some(last) = &task.last_exit {
                field("Last exit", format!("{} at {}", last.reason, last.at));
            }
            if let Some(next) = task.next_start {
                field("Next try", format!("{next} (restart backoff)"));
            }
            if let Some(message) = &task.message {
                field("Message", message.clone());
            }
            if let Some(pid) = task.pid {
                field("Pid", pid.to_string());
            }
            if let Some(id) = &task.container_id {
                field("Container", id.clone());
            }
            let ports: Vec<String> = task.ports.iter().map(|(n, p)| format!("{n}:{p}")).collect();
            field(
                "Ports",
                if ports.is_empty() {
                    "-".into()
                } else {
                    ports.join(", ")
                },
            );
            field("QoS", task.qos.to_string());
            if let Some(started) = task.started_at {
                field("Started", started.to_string());
            }
            field("Created", task.created_at.to_string());
            match spec {
                Some(spec) => out.push_str(&section("Resources", &yaml(&spec.resources))),
                None => out.push_str(&section(
                    "Resources",
                    "the task runs an earlier revision than the service's: `outpost rollout history` lists it",
                )),
            }
            out.push_str(&section("History", &event_lines(history)));
        }
        Record::Node {
            node,
            tasks,
            events,
        } => {
            let n = &node.node;
            field("Node", format!("{} ({})", n.name, n.address));
            field("State", format!("{} since {}", n.state, n.state_since));
            field("Draining", if n.draining { "yes" } else { "no" }.into());
            field(
                "Memory",
                if n.memory_pressure {
                    "under pressure"
                } else {
                    "ok"
                }
                .into(),
            );
            let capacity = |c: &api::Capacity| {
                format!(
                    "cpu {}m, memory {}",
                    c.cpu_millis,
                    output::memory(c.memory_bytes)
                )
            };
            field("Capacity", capacity(&n.capacity));
            field("Allocatable", capacity(&n.allocatable));
            field("Drivers", n.drivers.join(", "));
            field("Version", n.version.clone());
            field("Registered", n.registered_at.to_string());
            if let Some(age) = node.last_heartbeat_age_ms {
                field("Heartbeat", format!("{age} ms ago"));
            }
            if !n.notes.is_empty() {
                out.push_str(&section("Notes", &n.notes.join("\n")));
            }
            out.push_str(&section("Tasks", &output::tasks(tasks, now)));
            out.push_str(&section("Events", &event_lines(events)));
        }
    }
    out.trim_end().to_string()
}

/// A titled block, its lines indented; `(none)` when empty.
fn section(title: &str, body: &str) -> String {
    let body = if body.trim().is_empty() {
        "(none)"
    } else {
        body.trim_end()
    };
    let indented: Vec<String> = body.lines().map(|l| format!("  {l}")).collect();
    format!("{title}:\n{}\n", indented.join("\n"))
}

fn yaml<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("(cannot show: {e})"))
}

fn event_lines(events: &[Event]) -> String {
    if events.is_empty() {
        return String::new();
    }
    let lines = events.iter().map(output::event_line);
    let all: Vec<String> = std::iter::once(output::event_header())
        .chain(lines)
        .collect();
    all.join("\n")
}
