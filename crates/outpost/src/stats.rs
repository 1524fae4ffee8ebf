//! `outpost stats [SERVICE|NODE]`: live CPU, memory, network and disk of each running task and
//! each node, refreshed like `docker stats` (or once with `--no-stream`). CPU is a rate, so
//! every figure comes from two readings of the agents' counters a moment apart.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Result, bail};
use api::{ClusterUsage, NodeUsage, Usage};
use client::Client;
use serde::Serialize;

use crate::commands::{connect, print_data};
use crate::{Connection, Format, output};

/// Between the two readings of `--no-stream`, and between refreshes.
const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct TaskRow {
    task: String,
    service: String,
    node: String,
    /// Of one CPU: a task busy on two shows 200.
    cpu_percent: Option<f64>,
    memory_bytes: Option<u64>,
    memory_limit: Option<u64>,
    #[serde(flatten)]
    io: Io,
}

#[derive(Serialize)]
struct NodeRow {
    node: String,
    /// Of the whole node: every CPU busy is 100.
    cpu_percent: Option<f64>,
    memory_bytes: Option<u64>,
    memory_total: Option<u64>,
    #[serde(flatten)]
    io: Io,
}

/// Counters since the task (or the node) started.
#[derive(Serialize)]
struct Io {
    net_rx_bytes: Option<u64>,
    net_tx_bytes: Option<u64>,
    disk_read_bytes: Option<u64>,
    disk_write_bytes: Option<u64>,
}

#[derive(Serialize)]
struct Rows {
    tasks: Vec<TaskRow>,
    nodes: Vec<NodeRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreachable: Vec<api::Unreachable>,
}

pub async fn stats(conn: &Connection, target: Option<&str>, once: bool) -> Result<()> {
    let client = connect(conn).await?;
    let (service, node) = resolve(&client, target).await?;
    let read = || client.stats(service.as_deref(), node.as_deref());
    let mut before = read().await?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        tokio::time::sleep(INTERVAL).await;
        let now = read().await?;
        let rows = rows(&before, &now);
        match conn.output {
            Format::Table => {
                let mut out = std::io::stdout();
                if terminal && !once {
                    // Like `docker stats`: the screen redrawn in place.
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                writeln!(out, "{}", table(&rows))?;
                out.flush()?;
            }
            Format::Json if !once => println!("{}", serde_json::to_string(&rows)?),
            format => print_data(format, &rows)?,
        }
        if once {
            return Ok(());
        }
        before = now;
    }
}

/// A service's tasks, or a node's, or everything.
async fn resolve(
    client: &Client,
    target: Option<&str>,
) -> Result<(Option<String>, Option<String>)> {
    let Some(name) = target else {
        return Ok((None, None));
    };
    if client.services().await?.iter().any(|s| s.name == name) {
        return Ok((Some(name.to_string()), None));
    }
    if client.nodes().await?.iter().any(|n| n.node.name == name) {
        return Ok((None, Some(name.to_string())));
    }
    bail!("no service or node named {name:?}: `outpost services` and `outpost nodes` list them")
}

/// Rates between two readings, and the latest counters.
fn rows(before: &ClusterUsage, now: &ClusterUsage) -> Rows {
    let earlier: HashMap<&str, &NodeUsage> =
        before.nodes.iter().map(|n| (n.node.as_str(), n)).collect();
    let mut rows = Rows {
        tasks: Vec::new(),
        nodes: Vec::new(),
        unreachable: now.unreachable.clone(),
    };
    for node in &now.nodes {
        let then = earlier.get(node.node.as_str());
        let elapsed_ns = then.map_or(0, |t| node.at_ms.saturating_sub(t.at_ms) * 1_000_000);
        let share = |now: &Usage, then: Option<&Usage>, cpus: u32| {
            let used = now.cpu_ns?.checked_sub(then?.cpu_ns?)?;
            (elapsed_ns > 0)
                .then(|| used as f64 * 100.0 / elapsed_ns as f64 / f64::from(cpus.max(1)))
        };
        let tasks_then: HashMap<&str, &Usage> = (then.into_iter().flat_map(|t| &t.tasks))
            .map(|t| (t.task.as_str(), &t.usage))
            .collect();
        for task in &node.tasks {
            rows.tasks.push(TaskRow {
                task: task.task.clone(),
                service: task.service.clone(),
                node: node.node.clone(),
                cpu_percent: share(&task.usage, tasks_then.get(task.task.as_str()).copied(), 1),
                memory_bytes: task.usage.memory_bytes,
                memory_limit: task.memory_limit,
                io: io(&task.usage),
            });
        }
        rows.nodes.push(NodeRow {
            node: node.node.clone(),
            cpu_percent: share(&node.usage, then.map(|t| &t.usage), node.cpus),
            memory_bytes: node.usage.memory_bytes,
            memory_total: node.memory_total,
            io: io(&node.usage),
        });
    }
    rows.tasks.sort_by(|a, b| a.task.cmp(&b.task));
    rows.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

fn io(u: &Usage) -> Io {
    Io {
        net_rx_bytes: u.net_rx_bytes,
        net_tx_bytes: u.net_tx_bytes,
        disk_read_bytes: u.disk_read_bytes,
        disk_write_bytes: u.disk_write_bytes,
    }
}

fn table(rows: &Rows) -> String {
    let mut tasks = output::table(&[
        "TASK",
        "NODE",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
    ]);
    for t in &rows.tasks {
        tasks.add_row(vec![
            t.task.clone(),
            t.node.clone(),
            percent(t.cpu_percent),
            format!("{} / {}", bytes(t.memory_bytes), bytes(t.memory_limit)),
            percent(ratio(t.memory_bytes, t.memory_limit)),
            pair(t.io.net_rx_bytes, t.io.net_tx_bytes),
            pair(t.io.disk_read_bytes, t.io.disk_write_bytes),
        ]);
    }
    let mut nodes = output::table(&["NODE", "CPU %", "MEM USED / TOTAL", "MEM %", "NET I/O"]);
    for n in &rows.nodes {
        nodes.add_row(vec![
            n.node.clone(),
            percent(n.cpu_percent),
            format!("{} / {}", bytes(n.memory_bytes), bytes(n.memory_total)),
            percent(ratio(n.memory_bytes, n.memory_total)),
            pair(n.io.net_rx_bytes, n.io.net_tx_bytes),
        ]);
    }
    let mut text = format!("{}\n\n{}", output::trimmed(tasks), output::trimmed(nodes));
    for u in &rows.unreachable {
        text.push_str(&format!("\n{}: no reading ({})", u.node, u.error));
    }
    text
}

fn ratio(part: Option<u64>, whole: Option<u64>) -> Option<f64> {
    let whole = whole.filter(|w| *w > 0)?;
    Some(part? as f64 * 100.0 / whole as f64)
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}%"))
}

fn bytes(value: Option<u64>) -> String {
    value.map_or("-".into(), output::memory)
}

fn pair(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (None, None) => "-".into(),
        _ => format!("{} / {}", bytes(a), bytes(b)),
    }
}
