//! Client commands: each resolves the API, makes one or a few calls, and prints a table or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::DeployRequest;
use client::{Client, EventFilter, TaskFilter};
use futures_util::StreamExt;
use spec::ServiceSpec;

use crate::output;
use crate::{Connection, Format};

/// Where `outpost dev` keeps its state when no data dir is given; client commands run in the
/// same directory find it there.
pub const DEV_DATA_DIR: &str = ".outpost-dev";

/// The data dir a client command should look in: given, or `./.outpost-dev` when it exists.
pub fn client_data_dir(conn: &Connection) -> Option<PathBuf> {
    conn.data_dir.clone().or_else(|| {
        Path::new(DEV_DATA_DIR)
            .join("api")
            .exists()
            .then(|| PathBuf::from(DEV_DATA_DIR))
    })
}

/// The file in a client's data dir where it keeps the group's servers as last learned, one
/// address a line: a later command reaches the group through them when the servers it was
/// given are dead.
pub const KNOWN_SERVERS: &str = "known-servers";

/// Builds a client from flags, environment, or a local data dir, with the servers that dir
/// remembers; with a data dir, asks the group for its servers and remembers them there.
pub async fn connect(conn: &Connection) -> Result<Client> {
    let client = client_of(conn)?;
    if let Some(dir) = client_data_dir(conn) {
        remember_servers(&client, &dir).await;
    }
    Ok(client)
}

/// Asks the group for its servers and writes them to `dir`'s [`KNOWN_SERVERS`] when they
/// changed. Best effort: a group that cannot be reached is the command's own error to report,
/// and a file that cannot be written only loses the failover it would give.
async fn remember_servers(client: &Client, dir: &Path) {
    let Ok(info) = client.learn_servers().await else {
        return;
    };
    let text: String = info
        .servers
        .iter()
        .map(|s| format!("{}\n", s.address))
        .collect();
    let path = dir.join(KNOWN_SERVERS);
    if text.is_empty() || std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return;
    }
    // Written aside and renamed, so a command running at the same time reads the old list or
    // the new one, never half of one.
    let aside = dir.join(format!(".{KNOWN_SERVERS}.{}", std::process::id()));
    let written = seal::files::write_private(&aside, text.as_bytes())
        .and_then(|()| std::fs::rename(&aside, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&aside);
        eprintln!(
            "warning: cannot remember the group's servers in {}: {e}",
            path.display()
        );
    }
}

/// The servers `dir` remembers, as one comma-separated list (empty when none).
fn known_servers(dir: Option<&Path>) -> Result<String> {
    let Some(dir) = dir else {
        return Ok(String::new());
    };
    let path = dir.join(KNOWN_SERVERS);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(",")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The client of [`connect`], before it learns anything: the servers given (or the data dir's
/// `api`) first, then those the data dir remembers.
fn client_of(conn: &Connection) -> Result<Client> {
    let dir = client_data_dir(conn);
    let read = |name: &str| -> Result<Option<String>> {
        let Some(dir) = &dir else { return Ok(None) };
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    let known = known_servers(dir.as_deref())?;
    let given = match (&conn.api, read("api")?) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => a,
        (None, None) if !known.is_empty() => String::new(),
        (None, None) => bail!(
            "no API to talk to: give --api (or OUTPOST_API), or --data-dir of a running `outpost dev`"
        ),
    };
    // The client skips empty entries and an address met twice.
    let api = format!("{given},{known}");
    let token = match &conn.token {
        Some(t) => t.clone(),
        None => read("token")?
            .context("no token: give --token (or OUTPOST_TOKEN), or --data-dir of the server")?,
    };
    if token.is_empty() {
        let file = dir.as_ref().map(|d| d.join("token").display().to_string());
        bail!(
            "the token is empty ({}): give the cluster token with --token or --token-file",
            file.unwrap_or_else(|| "--token".into())
        );
    }
    let ca = match &conn.ca {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the CA certificate {} (--ca)", path.display())
        })?),
        None => read(pki::files::CA)?,
    };
    let Some(ca) = ca else {
        if api.starts_with("https://") {
            bail!(
                "{api} speaks TLS: give the cluster CA certificate with --ca FILE (or OUTPOST_CA), \
                 or --data-dir of a server, which holds it as {}",
                pki::files::CA
            );
        }
        return Ok(Client::new(&api, &token));
    };
    let tls = pki::tls::client_config(&ca, None).map_err(|e| {
        anyhow::anyhow!(
            "the CA certificate (--ca, OUTPOST_CA or the data dir's {}): {e}",
            pki::files::CA
        )
    })?;
    Ok(Client::with_tls(&api, &token, tls))
}

/// `outpost token show ROLE`: the token alone on stdout, for `$(...)`.
pub async fn show_token(conn: &Connection, role: &str) -> Result<()> {
    let answer = connect(conn).await?.token(role).await?;
    println!("{}", answer.token);
    Ok(())
}

/// `outpost token rotate ROLE`: the new token alone on stdout; the old one no longer joins.
pub async fn rotate_token(conn: &Connection, role: &str) -> Result<()> {
    let answer = connect(conn).await?.rotate_token(role).await?;
    println!("{}", answer.token);
    Ok(())
}

/// `outpost node rm NAME`.
pub async fn remove_node(conn: &Connection, name: &str) -> Result<()> {
    connect(conn).await?.remove_node(name).await?;
    println!("node {name} removed; its tasks are placed elsewhere and its certificate revoked");
    Ok(())
}

/// What spec files deploy: services, and the secrets and configs Compose files define with
/// `file:` (their values read).
pub struct Specs {
    pub services: Vec<ServiceSpec>,
    pub objects: Vec<api::ObjectUpload>,
}

/// Reads and parses spec files; every problem of every file is reported before giving up.
/// `project` is the stack `-p` names; a Compose file without one is a stack named by its
/// `name:` or its directory.
pub fn read_specs(files: &[PathBuf], project: Option<&str>) -> Result<Specs> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut specs = Vec::new();
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        // `-` is standard input, read as if it were a file in the working directory.
        let stdin = file.as_os_str() == "-";
        let text = match stdin {
            true => std::io::read_to_string(std::io::stdin())
                .context("cannot read the spec from standard input (-f -)")?,
            false => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?,
        };
        let file = if stdin {
            Path::new("./-")
        } else {
            file.as_path()
        };
        let dotenv_path = file.parent().unwrap_or(Path::new(".")).join(".env");
        let dotenv = std::fs::read_to_string(&dotenv_path).ok();
        let stacking = spec::Stacking {
            project: project.map(str::to_string),
            directory: directory_name(file),
        };
        let source = match stdin {
            true => "<stdin>".to_string(),
            false => file.display().to_string(),
        };
        match spec::parse_file_in(&source, &text, &env, dotenv.as_deref(), &stacking) {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    eprintln!("warning: {w}");
                }
                specs.extend(parsed.services);
                match crate::objects::read_sources(file, &parsed.objects) {
                    Ok(read) => objects.extend(read),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!("invalid spec; nothing was deployed:\n{}", errors.join("\n"));
    }
    Ok(Specs {
        services: specs,
        objects,
    })
}

/// The name of the directory `file` is in, as `docker compose` takes a project's name from it.
fn directory_name(file: &Path) -> Option<String> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = match dir {
        Some(dir) => dir.canonicalize().ok()?,
        None => std::env::current_dir().ok()?,
    };
    Some(dir.file_name()?.to_string_lossy().into_owned())
}

/// How `outpost deploy` deploys.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub project: Option<String>,
    pub dry_run: bool,
    pub force: bool,
}

pub async fn deploy(conn: &Connection, files: &[PathBuf], how: &DeployOptions) -> Result<()> {
    let specs = read_specs(files, how.project.as_deref())?;
    let client = connect(conn).await?;
    apply(&client, specs, how, conn.output).await
}

pub async fn apply(
    client: &Client,
    specs: Specs,
    how: &DeployOptions,
    format: Format,
) -> Result<()> {
    let Specs {
        services: specs,
        objects,
    } = specs;
    let request = DeployRequest {
        services: specs.clone(),
        dry_run: how.dry_run,
        objects,
        force: how.force,
    };
    let response = client.deploy(&request).await?;
    if format != Format::Table {
        let shown = serde_json::json!({
            "dry_run": how.dry_run,
            "changes": response.changes,
            "waiting": response.waiting,
            "services": specs,
        });
        return print_data(format, &shown);
    }
    println!("{}", output::changes(&response.changes));
    if how.dry_run {
        println!("\n{}", output::spec_summary(&specs));
        for w in &response.waiting {
            println!("would wait: {}: {}", w.service, w.reason);
        }
        println!("dry run: nothing was changed");
    }
    Ok(())
}

/// `value` as JSON or YAML, as `-o` asks.
pub(crate) fn print_data<T: serde::Serialize>(format: Format, value: &T) -> Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// The most rows a table shows, about a screenful; past it a listing is summarised.
const SCREENFUL: usize = 200;

pub async fn ps(conn: &Connection, filter: &TaskFilter, all: bool) -> Result<()> {
    let client = connect(conn).await?;
    if conn.output != Format::Table {
        return print_data(conn.output, &client.tasks_where(filter).await?);
    }
    let first = client.tasks_page(filter, SCREENFUL, None).await?;
    if all || first.next.is_some() {
        let tasks = client.tasks_where(filter).await?;
        if all {
            println!("{}", output::tasks(&tasks, server::now()));
        } else {
            println!("{}", output::task_summary(&tasks, SCREENFUL));
        }
    } else {
        println!("{}", output::tasks(&first.items, server::now()));
    }
    Ok(())
}

pub async fn services(conn: &Connection, all: bool, stack: Option<&str>) -> Result<()> {
    let client = connect(conn).await?;
    let list = match stack {
        Some(stack) => client.services_in(stack).await?,
        None => client.services().await?,
    };
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &list),
        Format::Table if all || list.len() <= SCREENFUL => {
            println!("{}", output::services(&list));
            Ok(())
        }
        Format::Table => {
            println!("{}", output::service_summary(&list, SCREENFUL));
            Ok(())
        }
    }
}

/// `outpost services NAME`: where the service answers and how its endpoints stand.
pub async fn traffic(conn: &Connection, service: &str) -> Result<()> {
    let traffic = connect(conn).await?.traffic(service).await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &traffic),
        Format::Table => {
            println!("{}", output::traffic(&traffic));
            Ok(())
        }
    }
}

pub async fn nodes(conn: &Connection, all: bool) -> Result<()> {
    let client = connect(conn).await?;
    let nodes = client.nodes().await?;
    let cluster = client.cluster().await?;
    match conn.output {
        Format::Json | Format::Yaml => {
            print_data(conn.output, &output::node_rows(&nodes, &cluster.servers))
        }
        Format::Table if all || nodes.len() <= SCREENFUL => {
            // What the nodes use now, beside what they offer; a node that does not answer
            // shows none.
            let readings = client.stats(None, None).await.unwrap_or_default();
            let used = (readings.nodes.iter())
                .filter_map(|n| Some((n.node.clone(), n.usage.memory_bytes?)))
                .collect();
            println!("{}", output::nodes(&nodes, &cluster.servers, &used));
            Ok(())
        }
        Format::Table => {
            println!("{}", output::node_summary(&nodes, SCREENFUL));
            println!("{}", output::servers(&cluster.servers));
            Ok(())
        }
    }
}

/// `outpost server leave ID`: removes a server from the group.
pub async fn server_leave(conn: &Connection, id: u64) -> Result<()> {
    let cluster = connect(conn).await?.remove_server(id).await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &cluster),
        Format::Table => {
            println!("server {id} left the group");
            println!("{}", output::servers(&cluster.servers));
            Ok(())
        }
    }
}

/// How long one `events -f` request waits for news.
const FOLLOW_WAIT: Duration = Duration::from_secs(25);

/// An error when the service or node the events are asked of does not exist (and never had
/// an event): a typo must not look like a quiet cluster.
async fn unknown_subject(client: &Client, filter: &EventFilter) -> Result<()> {
    if let Some(service) = &filter.service {
        match client.service(service).await {
            Err(client::ClientError::Api { status, .. }) if status.as_u16() == 404 => {
                bail!("no service named {service:?}, nor any event of one (see `outpost services`)")
            }
            _ => {}
        }
    }
    if let Some(node) = &filter.node
        && !client.nodes().await?.iter().any(|n| &n.node.name == node)
    {
        bail!("no node named {node:?}, nor any event of one (see `outpost nodes`)");
    }
    Ok(())
}

pub async fn events(conn: &Connection, follow: bool, filter: &EventFilter) -> Result<()> {
    let client = connect(conn).await?;
    let mut after = 0;
    let mut first = true;
    loop {
        let wait = (follow && !first).then_some(FOLLOW_WAIT);
        let batch = client.events(after, wait, filter).await?;
        if first && batch.events.is_empty() {
            unknown_subject(&client, filter).await?;
        }
        after = batch.index.max(after);
        match conn.output {
            Format::Json | Format::Yaml if follow => {
                for e in &batch.events {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
            Format::Json | Format::Yaml => print_data(conn.output, &batch.events)?,
            Format::Table => {
                if first {
                    println!("{}", output::event_header());
                }
                for e in &batch.events {
                    println!("{}", output::event_line(e));
                }
            }
        }
        std::io::stdout().flush()?;
        if !follow {
            return Ok(());
        }
        first = false;
    }
}

/// `outpost logs`: the output as it comes, or line by line when `--grep` or `-o json` asks
/// for lines.
pub async fn logs(
    conn: &Connection,
    target: &str,
    options: client::LogOptions,
    grep: Option<&str>,
) -> Result<()> {
    let client = connect(conn).await?;
    let stamped = options.timestamps;
    let mut stream = Box::pin(client.logs(target, options).await?);
    let mut out = std::io::stdout();
    let by_line = grep.is_some() || conn.output != Format::Table;
    let mut partial = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if !by_line {
            out.write_all(&chunk)?;
            out.flush()?;
            continue;
        }
        partial.extend_from_slice(&chunk);
        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let rest = partial.split_off(end + 1);
        let lines = std::mem::replace(&mut partial, rest);
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            log_line(&mut out, conn.output, (target, stamped), line, grep)?;
        }
        out.flush()?;
    }
    if by_line && !partial.is_empty() {
        log_line(&mut out, conn.output, (target, stamped), &partial, grep)?;
    }
    Ok(())
}

/// One line of a log, if it holds `grep`: as it is, or as `{"task": …, "time": …, "line": …}`
/// (a service's lines name their task before ` | `; a `stamped` line starts with its time).
fn log_line(
    out: &mut impl Write,
    format: Format,
    (target, stamped): (&str, bool),
    line: &[u8],
    grep: Option<&str>,
) -> Result<()> {
    let text = String::from_utf8_lossy(line);
    if grep.is_some_and(|g| !text.contains(g)) {
        return Ok(());
    }
    if format == Format::Table {
        return Ok(writeln!(out, "{text}")?);
    }
    let (task, line) = match text.split_once(" | ") {
        Some((task, line)) if task.starts_with(target) && !target.contains('.') => (task, line),
        _ => (target, text.as_ref()),
    };
    let (time, line) = match line.split_once(' ') {
        Some((time, line)) if stamped => (Some(time), line),
        _ => (None, line),
    };
    let row = match time {
        Some(time) => serde_json::json!({ "task": task, "time": time, "line": line }),
        None => serde_json::json!({ "task": task, "line": line }),
    };
    Ok(writeln!(out, "{row}")?)
}

/// `images`: each node's stored images, with the services using each (the servers fill them
/// in) and those keeping it for rollback only.
pub async fn images(conn: &Connection, node: Option<&str>) -> Result<()> {
    let client = connect(conn).await?;
    let stored = client.images(node).await?;
    if conn.output != Format::Table {
        return print_data(conn.output, &stored);
    }
    println!("{}", crate::output::images(&stored));
    Ok(())
}

/// `image prune`: each node's collection, what went (or would go).
pub async fn prune_images(conn: &Connection, node: Option<&str>, dry_run: bool) -> Result<()> {
    let client = connect(conn).await?;
    let pruned = client.prune_images(node, dry_run).await?;
    if conn.output != Format::Table {
        return print_data(conn.output, &pruned);
    }
    println!("{}", crate::output::pruned(&pruned));
    Ok(())
}

/// What `scale` was asked: `SERVICE N`, or `SERVICE=N` once or more.
pub fn scale_targets(args: &[String]) -> Result<Vec<(String, u32)>> {
    let number = |service: &str, n: &str| {
        n.parse::<u32>().with_context(|| {
            format!("{service}={n}: the replica count must be a whole number, like {service}=3")
        })
    };
    match args {
        [service, n] if !service.contains('=') && !n.contains('=') => {
            Ok(vec![(service.clone(), number(service, n)?)])
        }
        _ => (args.iter())
            .map(|arg| match arg.split_once('=') {
                Some((service, n)) if !service.is_empty() => {
                    Ok((service.to_string(), number(service, n)?))
                }
                _ => bail!("{arg:?}: give SERVICE=REPLICAS (like web=3), or one SERVICE REPLICAS"),
            })
            .collect(),
    }
}

/// Scales each service, after checking every one exists when there are several: a typo in
/// the last changes nothing. One is checked by the server as it scales it.
pub async fn scale(conn: &Connection, targets: &[(String, u32)]) -> Result<()> {
    let client = connect(conn).await?;
    if targets.len() > 1 {
        let known = client.services().await?;
        for (service, _) in targets {
            if !known.iter().any(|s| &s.name == service) {
                bail!("no service named {service:?} (see `outpost services`); nothing was scaled");
            }
        }
    }
    let mut summaries = Vec::new();
    for (service, replicas) in targets {
        summaries.push(client.scale(service, *replicas).await?);
        if conn.output == Format::Table {
            println!("{service} scaled to {replicas} replicas");
        }
    }
    match (conn.output, summaries.as_slice()) {
        (Format::Table, _) => Ok(()),
        (format, [one]) => print_data(format, one),
        (format, all) => print_data(format, &all),
    }
}

pub async fn drain(conn: &Connection, node: &str, drain: bool) -> Result<()> {
    let answer = connect(conn).await?.drain(node, drain).await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &answer),
        Format::Table => {
            if drain {
                println!("{node} is draining: its tasks move once their replacements are ready");
            } else {
                println!("{node} takes new work again");
            }
            Ok(())
        }
    }
}

/// `outpost rm --stack STACK`: every service of the stack, in one change.
pub async fn rm_stack(conn: &Connection, stack: &str) -> Result<()> {
    let removed = connect(conn).await?.remove_stack(stack).await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &removed),
        Format::Table => {
            let names: Vec<&str> = removed.iter().map(|s| s.name.as_str()).collect();
            println!(
                "stack {stack} removed ({}); their tasks are stopping",
                names.join(", ")
            );
            Ok(())
        }
    }
}

pub async fn rm(conn: &Connection, service: &str) -> Result<()> {
    let summary = connect(conn).await?.remove(service).await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &summary),
        Format::Table => {
            println!("{service} removed; its tasks are stopping");
            Ok(())
        }
    }
}

/// `restart` and `stop`: of one task (`web.2.7`: replaced in its slot), or of a service (a
/// rolling restart, or for `stop` a scale to 0).
pub async fn restart(conn: &Connection, target: &str, stop: bool) -> Result<()> {
    let client = connect(conn).await?;
    if target.contains('.') {
        let task = client.restart_task(target).await?;
        return match conn.output {
            Format::Table => {
                println!(
                    "{target} is stopping; a new task takes slot {} of {}",
                    task.slot, task.service
                );
                Ok(())
            }
            format => print_data(format, &task),
        };
    }
    let summary = match stop {
        true => {
            let before = client.service(target).await?.replicas;
            let summary = client.scale(target, 0).await?;
            if conn.output == Format::Table {
                println!(
                    "{target} is stopping (0 replicas); `outpost scale {target} {before}` starts it again"
                );
            }
            summary
        }
        false => {
            let summary = client.restart_service(target).await?;
            if conn.output == Format::Table {
                println!(
                    "{target} restarts its {} tasks by its update rules (revision {}); \
                     `outpost rollout status {target} -w` follows it",
                    summary.replicas, summary.version
                );
            }
            summary
        }
    };
    match conn.output {
        Format::Table => Ok(()),
        format => print_data(format, &summary),
    }
}
