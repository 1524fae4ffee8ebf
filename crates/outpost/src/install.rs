//! `outpost install server|agent`: puts a node under systemd. Copies this binary to
//! `/usr/local/bin/outpost`, writes the role's unit (`packaging/systemd/`, embedded here) to
//! `/etc/systemd/system/`, its settings to `/etc/outpost/<role>.env` as the `OUTPOST_*`
//! variables the unit passes on, and makes the data dir; then says which `systemctl` command
//! starts it. It runs no `systemctl` itself.
//!
//! Everything is checked before anything is written, so a refused install leaves the machine as
//! it was. `--root` installs into another tree (an image being built, or a test's temp dir);
//! `--dry-run` shows what would be written.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::Connection;

const SERVER_UNIT: &str = include_str!("../../../packaging/systemd/outpost-server.service");
const AGENT_UNIT: &str = include_str!("../../../packaging/systemd/outpost-agent.service");

/// Where the units run the binary from, relative to the root.
const BINARY: &str = "usr/local/bin/outpost";
const UNIT_DIR: &str = "etc/systemd/system";
const SETTINGS_DIR: &str = "etc/outpost";
/// The units' data dirs are `/var/lib/outpost/<role>`.
const DATA_DIR: &str = "var/lib/outpost";

const BINARY_MODE: u32 = 0o755;
const UNIT_MODE: u32 = 0o644;
/// The settings file may hold a join token; it is root's alone whatever it holds, as a token
/// may be added to it by hand later.
const SETTINGS_MODE: u32 = 0o600;

/// Said when an install gives no --listen: the defaults serve this host alone.
const SERVER_ON_LOOPBACK: &str = "the API listens on 127.0.0.1:7400 only: give --listen \
                                  IP:PORT for agents and other servers to reach it";
const AGENT_ON_LOOPBACK: &str = "the agent's API listens on loopback only: servers reach it \
                                 (for `outpost logs` and probes) once it has --listen IP:PORT";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Role::Server => SERVER_UNIT,
            Role::Agent => AGENT_UNIT,
        }
    }

    /// The variable the unit splits into the arguments after the role: flags without a
    /// variable of their own.
    fn args_var(self) -> &'static str {
        match self {
            Role::Server => "OUTPOST_SERVER_ARGS",
            Role::Agent => "OUTPOST_AGENT_ARGS",
        }
    }
}

#[derive(clap::Args)]
pub struct Install {
    /// The role to install: `server` or `agent`.
    #[arg(value_enum)]
    role: Role,
    /// agent: the server to join (HOST:PORT, several separated by commas; default --api); it
    /// needs --token (an agent join token) too. server: a server of the group to join, with
    /// --token (the server join token); without it the server founds a new cluster.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// The node's name (an agent's default: the host name; a server's: server-ID).
    #[arg(long)]
    name: Option<String>,
    /// Where the server's API listens (default 127.0.0.1:7400), or the agent's own API, which
    /// servers call for logs and probes (default: loopback, a free port).
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// Where the others reach it, when not at the listen address.
    #[arg(long, value_name = "IP:PORT")]
    advertise: Option<String>,
    /// Show what would be written, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Install into the file system rooted here.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

/// What a file of the install is, for the summary.
enum Change {
    Write,
    Replace,
    Unchanged,
    /// An existing settings file left as the operator has it (no flag was given).
    Kept,
}

impl Change {
    fn word(&self) -> &'static str {
        match self {
            Change::Write => "write",
            Change::Replace => "replace",
            Change::Unchanged => "unchanged",
            Change::Kept => "keep",
        }
    }
}

/// Everything an install writes, worked out (and checked) before anything is.
struct Plan {
    role: Role,
    root: PathBuf,
    /// The binary to copy, or `None` when it runs from the target already.
    binary: Option<PathBuf>,
    binary_to: PathBuf,
    unit: PathBuf,
    unit_change: Change,
    settings: PathBuf,
    settings_text: String,
    settings_change: Change,
    data_dir: PathBuf,
    data_dir_exists: bool,
    notes: Vec<&'static str>,
}

pub fn run(conn: &Connection, how: &Install) -> Result<()> {
    let plan = plan(conn, how)?;
    if how.dry_run {
        show(&plan, true);
        return Ok(());
    }
    apply(&plan)?;
    show(&plan, false);
    Ok(())
}

/// The unit's data dir, as the installed system sees it.
fn unit_data_dir(role: Role) -> PathBuf {
    Path::new("/").join(DATA_DIR).join(role.name())
}

fn plan(conn: &Connection, how: &Install) -> Result<Plan> {
    let role = how.role;
    let meta = std::fs::metadata(&how.root);
    if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
        bail!(
            "--root {}: no such directory (give the root of the file system to install into)",
            how.root.display()
        );
    }
    if let Some(dir) = &conn.data_dir
        && dir != &unit_data_dir(role)
    {
        bail!(
            "outpost-{0} keeps its state in {1}, not in {2} (--data-dir or OUTPOST_DATA_DIR): \
             leave it out, or change the unit's ExecStart= after installing (`systemctl edit \
             outpost-{0}`)",
            role.name(),
            unit_data_dir(role).display(),
            dir.display()
        );
    }
    let root = how.root.clone();
    let data_dir = root.join(DATA_DIR).join(role.name());
    let settings = root.join(SETTINGS_DIR).join(format!("{}.env", role.name()));
    let existing = match std::fs::read_to_string(&settings) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", settings.display()),
    };
    let (vars, args) = match role {
        Role::Server => server_settings(conn, how)?,
        Role::Agent => {
            // A node that joined already, or whose settings are there, needs no --join.
            let joined = data_dir.join(pki::files::CERT).exists();
            agent_settings(conn, how, joined || existing.is_some())?
        }
    };
    let given = !vars.is_empty() || !args.is_empty();
    let wanted = settings_text(role, &vars, &args);
    let (settings_text, settings_change) = match existing {
        None => (wanted, Change::Write),
        Some(old) if old == wanted => (old, Change::Unchanged),
        Some(old) if !given => (old, Change::Kept),
        Some(_) => bail!(
            "{} already holds other settings than these: edit it by hand (then `systemctl \
             restart outpost-{}`), or remove it and run this install again",
            settings.display(),
            role.name()
        ),
    };
    let mut notes = Vec::new();
    if how.listen.is_none() && !matches!(settings_change, Change::Kept) {
        notes.push(match role {
            Role::Server => SERVER_ON_LOOPBACK,
            Role::Agent => AGENT_ON_LOOPBACK,
        });
    }
    let unit = root
        .join(UNIT_DIR)
        .join(format!("outpost-{}.service", role.name()));
    let unit_change = match std::fs::read_to_string(&unit) {
        Ok(old) if old == role.unit() => Change::Unchanged,
        Ok(_) => Change::Replace,
        Err(_) => Change::Write,
    };
    let binary_to = root.join(BINARY);
    let current = std::env::current_exe().context("cannot tell where this outpost binary is")?;
    let binary = (!same_file(&current, &binary_to)).then_some(current);
    Ok(Plan {
        role,
        root,
        binary,
        binary_to,
        unit,
        unit_change,
        settings,
        settings_text,
        settings_change,
        data_dir_exists: data_dir.is_dir(),
        data_dir,
        notes,
    })
}

/// Whether both paths name one file (the binary already runs from where it goes).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

type Settings = (Vec<(&'static str, String)>, Vec<String>);

/// A server's settings: `OUTPOST_LISTEN`, `OUTPOST_ADVERTISE`, and to join a group the server
/// join token with `join ADDR` first among the arguments, as `outpost server join` takes them.
fn server_settings(conn: &Connection, how: &Install) -> Result<Settings> {
    let mut vars = Vec::new();
    let mut args = Vec::new();
    match (&how.join, &conn.token) {
        (Some(addr), Some(token)) => {
            check_servers(addr, "--join")?;
            check_token(token)?;
            args.extend(["join".to_string(), addr.clone()]);
            vars.push(("OUTPOST_TOKEN", token.clone()));
        }
        (Some(_), None) => bail!(
            "joining a group needs its server join token: --token or OUTPOST_TOKEN (`outpost \
             token show server` on a server of the group prints it)"
        ),
        (None, Some(_)) => bail!(
            "a token was given (--token, --token-file or OUTPOST_TOKEN) but no --join: a server \
             joins a group with the server join token and --join ADDR, and founds a new cluster \
             with neither"
        ),
        (None, None) => {}
    }
    if let Some(name) = &how.name {
        check_name(name)?;
        args.extend(["--name".to_string(), name.clone()]);
    }
    if let Some(listen) = &how.listen {
        vars.push(("OUTPOST_LISTEN", address(listen, "--listen")?.to_string()));
    }
    if let Some(advertise) = &how.advertise {
        vars.push((
            "OUTPOST_ADVERTISE",
            address(advertise, "--advertise")?.to_string(),
        ));
    }
    Ok((vars, args))
}

/// An agent's settings, as `outpost agent` takes them: the server to join (`--join`, else
/// `--api`) as `OUTPOST_API`, the join token as `OUTPOST_TOKEN`; the name and its API's
/// addresses as arguments. Without `configured` (a certificate in the data dir, or settings
/// there already) the first start needs both the server and the token.
fn agent_settings(conn: &Connection, how: &Install, configured: bool) -> Result<Settings> {
    let mut vars = Vec::new();
    let mut args = Vec::new();
    let (flag, join) = match (&how.join, &conn.api) {
        (Some(join), _) => ("--join", Some(join)),
        (None, api) => ("--api", api.as_ref()),
    };
    match join {
        Some(join) => {
            check_servers(join, flag)?;
            vars.push(("OUTPOST_API", join.clone()));
        }
        None if !configured => bail!(
            "an agent's first start joins a server: give --join HOST:PORT (a server of the \
             cluster) and --token TOKEN (`outpost token show agent` on a server prints it)"
        ),
        None => {}
    }
    match &conn.token {
        Some(token) => {
            check_token(token)?;
            vars.push(("OUTPOST_TOKEN", token.clone()));
        }
        None if !configured => bail!(
            "an agent's first start needs the agent join token: --token or OUTPOST_TOKEN \
             (`outpost token show agent` on a server prints it)"
        ),
        None => {}
    }
    if let Some(name) = &how.name {
        check_name(name)?;
        args.extend(["--name".to_string(), name.clone()]);
    }
    let listen = how
        .listen
        .as_deref()
        .map(|l| address(l, "--listen"))
        .transpose()?;
    let advertise = how
        .advertise
        .as_deref()
        .map(|a| address(a, "--advertise"))
        .transpose()?;
    if let Some(listen) = listen {
        if listen.ip().is_unspecified() && advertise.is_none() {
            bail!(
                "the agent would listen on {listen}: give the address servers reach it at with \
                 --advertise"
            );
        }
        args.extend(["--listen".to_string(), listen.to_string()]);
    }
    if let Some(advertise) = advertise {
        args.extend(["--advertise".to_string(), advertise.to_string()]);
    }
    Ok((vars, args))
}

/// The settings file: a line per variable, the arguments last. Every value was checked to
/// hold no space, quote, `$` or backslash, so none needs quoting but the arguments' list.
fn settings_text(role: Role, vars: &[(&str, String)], args: &[String]) -> String {
    let mut text = format!(
        "# Settings of outpost-{0}.service, written by `outpost install {0}`.\n# The variables \
         `outpost {0}` reads (the unit lists them), then {1}: the\n# arguments after `{0}` \
         that have no variable. `systemctl restart outpost-{0}` applies them.\n",
        role.name(),
        role.args_var()
    );
    for (name, value) in vars {
        if *name == "OUTPOST_TOKEN" && role == Role::Agent {
            text.push_str(
                "# Needed by the first start only: it may go once the node has joined.\n",
            );
        }
        text.push_str(&format!("{name}={value}\n"));
    }
    if !args.is_empty() {
        text.push_str(&format!("{}=\"{}\"\n", role.args_var(), args.join(" ")));
    }
    text
}

/// An address to listen on or be reached at, as the roles parse it.
fn address(text: &str, flag: &str) -> Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("{flag} {text:?} is not an address (like 10.0.0.1:7400)"))
}

/// Servers given as `outpost agent --join` and `server join` take them: HOST:PORT, or
/// `https://HOST:PORT`, several separated by commas.
fn check_servers(text: &str, flag: &str) -> Result<()> {
    for one in text.split(',') {
        let bare = one.trim();
        let bare = bare.strip_prefix("https://").unwrap_or(bare);
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        let ok = bare.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            bail!(
                "{flag} {one:?} is not a server's address: give HOST:PORT (like 10.0.0.1:7400), \
                 several separated by commas"
            );
        }
    }
    Ok(())
}

fn check_token(token: &str) -> Result<()> {
    pki::JoinToken::parse(token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    Ok(())
}

/// The servers' rule for node names (checked again when the node joins).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !ok {
        bail!(
            "--name {name:?} is not a valid node name (letters, digits, '-', '.', '_'; at most 63)"
        );
    }
    Ok(())
}

fn apply(plan: &Plan) -> Result<()> {
    if let Some(from) = &plan.binary {
        let bytes = std::fs::read(from)
            .with_context(|| format!("cannot read this binary, {}", from.display()))?;
        write(&plan.binary_to, &bytes, BINARY_MODE)?;
    }
    if !matches!(plan.unit_change, Change::Unchanged) {
        write(&plan.unit, plan.role.unit().as_bytes(), UNIT_MODE)?;
    }
    if matches!(plan.settings_change, Change::Write) {
        write(&plan.settings, plan.settings_text.as_bytes(), SETTINGS_MODE)?;
    }
    if let Some(parent) = plan.data_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| cannot("create", parent, &e))?;
    }
    seal::files::private_dir(&plan.data_dir).map_err(|e| cannot("create", &plan.data_dir, &e))
}

/// Writes `bytes` beside `path` and renames it over: a running binary is replaced, not
/// rewritten under its process (which Linux refuses), and no reader sees half a file.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cannot("create", dir, &e))?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let aside = path.with_file_name(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&aside)
        .and_then(|mut f| {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&aside, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&aside);
        return Err(cannot("write", path, &e));
    }
    Ok(())
}

fn cannot(what: &str, path: &Path, e: &std::io::Error) -> anyhow::Error {
    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (run the install as root, or give --root DIR)"
    } else {
        ""
    };
    anyhow::anyhow!("cannot {what} {}: {e}{hint}", path.display())
}

fn show(plan: &Plan, dry_run: bool) {
    let role = plan.role.name();
    let into = plan.root.display();
    if dry_run {
        println!("outpost install {role} --dry-run: nothing written; into {into} it would");
    } else {
        println!("outpost install {role}: into {into}");
    }
    match &plan.binary {
        Some(from) => println!(
            "  {:<9} {} (0755), a copy of {}",
            "copy",
            plan.binary_to.display(),
            from.display()
        ),
        None => println!(
            "  {:<9} {} (this binary)",
            "unchanged",
            plan.binary_to.display()
        ),
    }
    println!(
        "  {:<9} {} (0644)",
        plan.unit_change.word(),
        plan.unit.display()
    );
    println!(
        "  {:<9} {} (0600)",
        plan.settings_change.word(),
        plan.settings.display()
    );
    for line in plan.settings_text.lines().filter(|l| !l.starts_with('#')) {
        match line.split_once('=') {
            Some(("OUTPOST_TOKEN", _)) => println!("{:12}OUTPOST_TOKEN=(not shown)", ""),
            _ => println!("{:12}{line}", ""),
        }
    }
    let dir = if plan.data_dir_exists {
        "keep"
    } else {
        "create"
    };
    println!("  {dir:<9} {} (0700)", plan.data_dir.display());
    for note in &plan.notes {
        println!("  note: {note}");
    }
    let start = format!("systemctl daemon-reload && systemctl enable --now outpost-{role}");
    if plan.root == Path::new("/") {
        println!("  start it: {start}");
    } else {
        println!("  on the system rooted at {into}, start it with: {start}");
        println!(
            "  (or enable it for that system's next boot: systemctl --root={into} enable \
             outpost-{role})"
        );
    }
    if plan.role == Role::Server && !dry_run {
        println!(
            "  then the agent join token: outpost --data-dir {} token show agent",
            unit_data_dir(plan.role).display()
        );
    }
}
