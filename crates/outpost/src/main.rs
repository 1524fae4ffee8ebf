//! `outpost`: one binary for every role. This crate only wires roles together and talks to the
//! user: the control plane lives in `server`, the edge agent in `agent`, the API client in
//! `client`. It is the only crate that knows clap and anyhow.

mod backup;
mod commands;
mod exec;
mod image;
mod inspect;
mod install;
mod objects;
mod output;
mod pull;
mod roles;
mod rollouts;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// `outpost --version`: the version, the commit it was built from and the day (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OUTPOST_GIT_COMMIT"),
    ", built ",
    env!("OUTPOST_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "outpost",
    version = VERSION,
    about = "A self-healing container orchestrator for unreliable edge nodes"
)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

/// How client commands find the API. Precedence: flags, then environment, then the data dir of
/// a local `outpost dev` (`--data-dir`, `OUTPOST_DATA_DIR`, or `./.outpost-dev`).
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// API address, e.g. http://127.0.0.1:7400; several servers' addresses separated by commas, tried in
    /// turn while one cannot be reached.
    #[arg(long, global = true, env = "OUTPOST_API")]
    api: Option<String>,
    /// Bearer token for the API.
    #[arg(long, global = true, env = "OUTPOST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token, so it need not show in the process list.
    #[arg(
        long,
        global = true,
        env = "OUTPOST_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// The cluster CA certificate the server's is checked against (PEM).
    #[arg(long, global = true, env = "OUTPOST_CA")]
    ca: Option<PathBuf>,
    /// Data dir of a local server: its `api`, `token` and `ca.pem` files are used when not
    /// given.
    #[arg(long, global = true, env = "OUTPOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Output format of listings.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Settings of the node an agent runs on.
#[derive(clap::Args)]
pub struct NodeOptions {
    /// Evict tasks (BestEffort first, Guaranteed last) while available memory is below this.
    #[arg(long, default_value = "100Mi", env = "OUTPOST_EVICTION_THRESHOLD")]
    pub eviction_threshold: String,
    /// Host ports handed to tasks come from this range (FIRST-LAST), which the agent owns. Keep
    /// it clear of the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`).
    #[arg(long, default_value = "20000-29999", env = "OUTPOST_TASK_PORTS")]
    pub task_ports: String,
    /// Where the node's image mirror (a registry of its own images, for its Docker Engine,
    /// skopeo and `docker push`) listens: a loopback address (port 0 picks one; the address in
    /// use is in the data dir's `mirror` file), or `off`.
    #[arg(long, default_value = "127.0.0.1:0", env = "OUTPOST_MIRROR")]
    pub mirror: String,
    /// How often the node's image store is collected: images that no service's kept revisions
    /// (each service's last `revision_history`) name go, with the Docker Engine's copies
    /// pulled through the mirror; nothing is collected while no server answers. A duration
    /// like 10m, or `off` (only `outpost image prune` collects then).
    #[arg(long, default_value = "10m", env = "OUTPOST_IMAGE_GC_EVERY")]
    pub image_gc_every: String,
    /// A registry (`HOST[:PORT]`; a host alone at any port) the node's mirror pulls from over
    /// plain HTTP, as the Docker Engine's `insecure-registries`; loopback ones always are, every
    /// other is HTTPS. Repeat it for several (the variable takes a comma-separated list).
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "OUTPOST_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,
}

/// Where services' virtual IPs come from: servers give them out, agents listen on them.
#[derive(clap::Args)]
pub struct MeshOptions {
    /// The cluster's service range (an IPv4 block, /8 to /28): one virtual IP per service,
    /// made local on every node; the first address is each node's DNS server. Agents learn
    /// it from the servers; the servers of a cluster must say the same.
    #[arg(long, default_value = "10.96.0.0/16", env = "OUTPOST_SERVICE_RANGE")]
    pub service_range: String,
}

impl MeshOptions {
    pub fn range(&self) -> anyhow::Result<api::ServiceRange> {
        self.service_range
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--service-range: {e}"))
    }
}

/// What a server's API allows its clients, and how it commits agents' reports.
#[derive(clap::Args)]
struct ApiOptions {
    /// Largest request body the API reads (a deploy's JSON), e.g. 8Mi or 64Mi.
    #[arg(long, default_value = "8Mi", env = "OUTPOST_MAX_BODY_SIZE")]
    max_body_size: String,
    /// Most connections the API keeps open at once; more are refused.
    #[arg(long, default_value_t = server::DEFAULT_MAX_CONNECTIONS, env = "OUTPOST_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Most replicas one service may have, by deploy or by scale.
    #[arg(long, default_value_t = server::DEFAULT_MAX_REPLICAS, env = "OUTPOST_MAX_REPLICAS")]
    max_replicas: u32,
    /// Most services one deploy may hold.
    #[arg(
        long,
        default_value_t = server::DEFAULT_MAX_SERVICES_PER_DEPLOY,
        env = "OUTPOST_MAX_SERVICES_PER_DEPLOY"
    )]
    max_services_per_deploy: usize,
    /// Most task statuses and events one agent report may hold.
    #[arg(
        long,
        default_value_t = server::DEFAULT_MAX_REPORT_ITEMS,
        env = "OUTPOST_MAX_REPORT_ITEMS"
    )]
    max_report_items: usize,
    /// Agents' reports arriving within this long of each other are committed as one entry,
    /// e.g. 20ms; 0s commits at once whatever is waiting.
    #[arg(long, default_value = "20ms", env = "OUTPOST_REPORT_BATCH")]
    report_batch: String,
    /// Most statuses and events of agents' reports waiting to be committed; a report that would
    /// go past it is answered that the server is busy, and its agent sends it again shortly.
    #[arg(
        long,
        default_value_t = server::batch::DEFAULT_MAX_QUEUED_ITEMS,
        env = "OUTPOST_MAX_QUEUED_REPORT_ITEMS"
    )]
    max_queued_report_items: usize,
    /// Most events the history keeps; the oldest go first.
    #[arg(long, default_value_t = store::DEFAULT_MAX_EVENTS, env = "OUTPOST_EVENT_RETENTION")]
    event_retention: usize,
    /// Longest the history keeps an event, e.g. 7d or 12h.
    #[arg(long, default_value = "7d", env = "OUTPOST_EVENT_MAX_AGE")]
    event_max_age: String,
    /// Longest applied changes wait in memory before they are written to the state tables,
    /// e.g. 5s; they are already durable in the Raft log. Longer writes less to the disk (an SD
    /// card wears less), at the price of more entries to apply again after a crash; 0s writes
    /// every applied batch.
    #[arg(long, default_value = "5s", env = "OUTPOST_CHECKPOINT_EVERY")]
    checkpoint_every: String,
}

/// 1 min: past that, a crash leaves thousands of entries to apply again before the server
/// answers, for little saving on the disk.
const MAX_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// 1 s: every report waits up to one tick before it commits; a longer tick only delays what
/// `outpost ps` shows, and comes close to the agent's request timeout.
const MAX_REPORT_BATCH: std::time::Duration = std::time::Duration::from_secs(1);

/// How a server is set up from the flags of `outpost server` and `outpost dev`.
pub struct ServerSettings {
    pub limits: server::ApiLimits,
    pub report_batch: server::batch::BatchConfig,
    pub store: store::StoreOptions,
    pub service_range: api::ServiceRange,
}

/// A server to run, from `outpost server` or `outpost server join`.
pub struct ServerRole {
    pub reset: bool,
    pub addr: ServerAddr,
    pub name: Option<String>,
    pub join: Option<String>,
    pub settings: ServerSettings,
}

impl ServerRun {
    fn role(self, join: Option<String>) -> anyhow::Result<ServerRole> {
        Ok(ServerRole {
            reset: self.reset,
            addr: self.addr,
            name: self.name,
            join,
            settings: self.api.settings(self.mesh.range()?)?,
        })
    }
}

impl ApiOptions {
    fn settings(&self, service_range: api::ServiceRange) -> anyhow::Result<ServerSettings> {
        Ok(ServerSettings {
            service_range,
            limits: self.limits()?,
            report_batch: server::batch::BatchConfig {
                tick: self.report_batch()?,
                max_queued_items: self.max_queued_report_items,
                ..server::batch::BatchConfig::default()
            },
            store: self.store()?,
        })
    }

    fn store(&self) -> anyhow::Result<store::StoreOptions> {
        anyhow::ensure!(
            self.event_retention >= 1,
            "--event-retention must be at least 1 event"
        );
        let max_age = humantime::parse_duration(&self.event_max_age).map_err(|e| {
            anyhow::anyhow!(
                "--event-max-age {:?} is not a duration like 7d or 12h: {e}",
                self.event_max_age
            )
        })?;
        anyhow::ensure!(!max_age.is_zero(), "--event-max-age must be longer than 0s");
        let every = humantime::parse_duration(&self.checkpoint_every).map_err(|e| {
            anyhow::anyhow!(
                "--checkpoint-every {:?} is not a duration like 5s: {e}",
                self.checkpoint_every
            )
        })?;
        anyhow::ensure!(
            every <= MAX_CHECKPOINT_EVERY,
            "--checkpoint-every {} is longer than {}, the most allowed",
            humantime::format_duration(every),
            humantime::format_duration(MAX_CHECKPOINT_EVERY)
        );
        Ok(store::StoreOptions {
            retention: store::Retention {
                max_events: self.event_retention,
                max_age,
            },
            checkpoint: store::Checkpoint {
                every,
                ..store::Checkpoint::default()
            },
        })
    }

    fn report_batch(&self) -> anyhow::Result<std::time::Duration> {
        let tick = humantime::parse_duration(&self.report_batch).map_err(|e| {
            anyhow::anyhow!(
                "--report-batch {:?} is not a duration like 20ms: {e}",
                self.report_batch
            )
        })?;
        anyhow::ensure!(
            tick <= MAX_REPORT_BATCH,
            "--report-batch {:?} is longer than the maximum of 1s",
            self.report_batch
        );
        Ok(tick)
    }

    fn limits(&self) -> anyhow::Result<server::ApiLimits> {
        let body = self
            .max_body_size
            .parse::<spec::Memory>()
            .map_err(|e| anyhow::anyhow!("--max-body-size: {e}"))?;
        let body_limit = usize::try_from(body.bytes())
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| anyhow::anyhow!("--max-body-size must be above 0 and fit in memory"))?;
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be above 0"
        );
        anyhow::ensure!(
            (1..=spec::MAX_REPLICAS).contains(&self.max_replicas),
            "--max-replicas must be between 1 and {}",
            spec::MAX_REPLICAS
        );
        anyhow::ensure!(
            self.max_services_per_deploy > 0,
            "--max-services-per-deploy must be above 0"
        );
        anyhow::ensure!(
            self.max_report_items >= api::REPORT_ITEMS,
            "--max-report-items must be at least {}, the most an agent puts in one report",
            api::REPORT_ITEMS
        );
        let mut limits = server::ApiLimits {
            max_replicas: self.max_replicas,
            max_services_per_deploy: self.max_services_per_deploy,
            max_report_items: self.max_report_items,
            ..server::ApiLimits::default()
        };
        limits.listener.body_limit = body_limit;
        limits.listener.max_connections = self.max_connections;
        Ok(limits)
    }
}

/// Where a server listens and is reached.
#[derive(clap::Args, Clone)]
pub struct ServerAddr {
    /// Address to listen on, e.g. 127.0.0.1:7400 (default: --api, then 127.0.0.1:7400).
    #[arg(long, env = "OUTPOST_LISTEN")]
    listen: Option<String>,
    /// Address the other servers, agents and clients reach this one at, host:port (default:
    /// the address listened on); its IP is written into the server's certificate.
    #[arg(long, env = "OUTPOST_ADVERTISE")]
    advertise: Option<String>,
}

/// How a server runs: where it listens and is reached, and what its API allows.
#[derive(clap::Args)]
struct ServerRun {
    /// Begin a new, empty cluster even though the data dir held one whose state file is
    /// missing or empty (otherwise such a start is refused).
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    addr: ServerAddr,
    /// This server's name; an agent of the same name shows as the same node (default:
    /// server-ID).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    api: ApiOptions,
    #[command(flatten)]
    mesh: MeshOptions,
}

#[derive(Subcommand)]
enum ImageAction {
    /// Write IMAGE... from a node's store to FILE as one bundle: a zstd-compressed tar that
    /// is an OCI image layout, with a manifest of every blob (digest and size) signed by the
    /// cluster's key. With --have, a delta: the blobs the target holds are left out.
    #[command(
        after_help = "Examples:\n  outpost image save shop/web:1.4 shop/api:2.0 -f site.bundle\n  outpost image save shop/web:1.5 -f web-1.5.delta --have shop/web:1.4\n  outpost image save shop/web:1.5 -f web-1.5.delta --have site.bundle\n  outpost image save shop/web:1.5 -f for-edge-7.bundle --have edge-7"
    )]
    Save {
        /// Images as specs name them.
        #[arg(required = true)]
        images: Vec<String>,
        /// The bundle file to write; refused if it exists, unless --force. (`-o` is the output
        /// format, as for every command: `-o json` prints the bundle's manifest.)
        #[arg(short, long)]
        file: PathBuf,
        /// What the target holds already: an image, a node (its whole store), or a bundle
        /// file it was given before. Repeat for more.
        #[arg(long)]
        have: Vec<String>,
        /// The node whose store to read (by default one that holds all the images).
        #[arg(long)]
        node: Option<String>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Load a bundle into a node's store (and from there its Docker Engine, when a task needs
    /// it): its signature and every blob are checked before any of it is visible.
    #[command(
        after_help = "Examples:\n  outpost image load site.bundle\n  outpost image load web-1.5.delta --node edge-7 --node edge-8\n  docker save shop/web:1.4 -o web.tar && outpost image load web.tar --unsigned"
    )]
    Load {
        /// The bundle, as `outpost image save` wrote it (or a `docker save` archive, with
        /// --unsigned).
        file: PathBuf,
        /// A node to load into; repeat for more. May be left out when the cluster has one.
        #[arg(long)]
        node: Vec<String>,
        /// Accept an archive that carries no signature (`docker save`).
        #[arg(long)]
        unsigned: bool,
    },
    /// Has nodes obtain an image into their stores, from another node that holds it or else
    /// from its registry, and says where each got it from and how many bytes it moved.
    #[command(
        after_help = "Examples:\n  outpost image pull alpine:3.20\n  outpost image pull registry.example.com/team/app:1 --node edge-1 --node edge-2"
    )]
    Pull {
        /// The image as a spec names it.
        image: String,
        /// Only this node (repeatable); every live node without it.
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Copy IMAGE from this machine's Docker Engine into a node's store, where its tasks
    /// start from without a registry. Needs no signature: the admin token is the authority.
    #[command(
        after_help = "Examples:\n  outpost image push shop/web:1.4\n  outpost image push shop/web:1.4 --node edge-7 --node edge-8"
    )]
    Push {
        /// The image as `docker images` shows it (`name:tag`).
        image: String,
        /// A node to push to; repeat for more. May be left out when the cluster has one.
        #[arg(long)]
        node: Vec<String>,
    },
    /// Collect the nodes' image stores now: the images no service's kept revisions name (each
    /// service keeps its last `revision_history` for `rollout undo`), their blobs that no kept
    /// image shares, stale partial writes, and the Docker Engine's copies pulled through the
    /// mirror that no container uses. Says per node what went. Agents also collect on their
    /// own, every `--image-gc-every`.
    #[command(
        after_help = "Examples:\n  outpost image prune --dry-run\n  outpost image prune --node edge-1\n  outpost image prune -o json"
    )]
    Prune {
        /// Only this node's store.
        #[arg(long)]
        node: Option<String>,
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the keys bundles are checked against; `add` trusts another cluster's, `revoke`
    /// stops trusting one (this cluster's own too: the servers then sign with a new one).
    #[command(
        after_help = "Examples:\n  outpost image keys\n  outpost image keys add factory-build 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29\n  outpost image keys revoke ed25519:5d1f0c3e8a9b2c71"
    )]
    Keys {
        #[command(subcommand)]
        action: Option<KeyAction>,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Trust bundles signed by this public key (`outpost image keys` on the cluster that signs).
    #[command(
        after_help = "Examples:\n  outpost image keys add factory-build 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    )]
    Add {
        /// What to call it.
        name: String,
        /// The ed25519 public key, 64 hex digits.
        public_key: String,
    },
    /// Refuse bundles this key signs from now on.
    #[command(after_help = "Examples:\n  outpost image keys revoke ed25519:5d1f0c3e8a9b2c71")]
    Revoke {
        /// The key's id, as `outpost image keys` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
enum ServerAction {
    /// Create a cluster in `--data-dir`: its CA, this server's certificate, the admin token
    /// and a join token each for servers and agents. Then start it with `outpost server`.
    #[command(
        after_help = "Examples:\n  outpost --data-dir /var/lib/outpost/server server init --listen 10.0.0.5:7400"
    )]
    Init {
        #[command(flatten)]
        addr: ServerAddr,
    },
    /// Add a server to the group of the server at ADDR (any of its servers), with the server
    /// join token (--token or OUTPOST_TOKEN; `outpost token show server` on a server). It keeps
    /// its id and certificate in --data-dir: restart it with `outpost server --data-dir D`, or
    /// with this same command, which on a data dir that joined starts it without joining again.
    #[command(
        after_help = "Examples:\n  outpost --data-dir /var/lib/outpost/server server join 10.0.0.5:7400 --listen 10.0.0.6:7400 --token $(cat server.token)"
    )]
    Join {
        /// Address of a server of the group, host:port.
        addr: String,
        #[command(flatten)]
        run: Box<ServerRun>,
    },
    /// Write a consistent backup of the running cluster's state to FILE: services, revisions,
    /// tasks, nodes, secrets (sealed), configs and events, at or after the last write
    /// acknowledged, with the cluster CA and the admin token (FILE is 0600 and as secret as a
    /// server's data dir). Asks the leader through any server, with the admin token.
    #[command(
        after_help = "Examples:\n  outpost --data-dir /var/lib/outpost/server server backup /backup/outpost-$(date +%F).backup\n  outpost --api https://10.0.0.5:7400 --ca ca.pem --token-file admin.token server backup site.backup --force"
    )]
    Backup {
        /// The file to write; refused if it exists, unless --force.
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Make --data-dir DIR (absent or empty) from a backup, offline, for a server that then
    /// starts alone as a new one-server group with the backed-up state: `outpost --data-dir DIR
    /// server`. Its agents and join tokens keep working, since the backup carries the CA.
    #[command(
        after_help = "Examples:\n  outpost --data-dir /var/lib/outpost/server server restore /backup/outpost-2025-01-31.backup --listen 10.0.0.5:7400\n  outpost --data-dir ./restored server restore site.backup --listen 127.0.0.1:7400 --name server-1"
    )]
    Restore {
        /// The backup file, as `outpost server backup` wrote it.
        file: PathBuf,
        #[command(flatten)]
        addr: ServerAddr,
        /// The restored server's name (default: server-1).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove the server with this Raft id from the group (see `outpost nodes`); a dead server
    /// is replaced by removing it and joining a new one.
    #[command(after_help = "Examples:\n  outpost server leave 3")]
    Leave {
        /// The server's Raft id, as `outpost nodes` shows it.
        id: u64,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print the token of `server`, `agent` (join tokens) or `admin` (the CLI's), alone; the
    /// current join token, through any server.
    #[command(
        after_help = "Examples:\n  outpost token show agent\n  outpost token show admin > admin.token"
    )]
    Show {
        /// `server`, `agent` or `admin`.
        role: String,
    },
    /// Replace the join token of `server` or `agent` and print the new one; the old one no
    /// longer joins.
    #[command(after_help = "Examples:\n  outpost token rotate agent")]
    Rotate {
        /// `server` or `agent`.
        role: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a server and an agent in one process on loopback, deploying the given spec files.
    /// `--api` is where the API listens (default 127.0.0.1:7400), `--data-dir` where state is
    /// kept (default ./.outpost-dev). Its log goes to `outpost.log` in the data dir, apart from
    /// what it prints of the replicas, unless `-v` puts it on stderr.
    #[command(
        after_help = "Examples:\n  outpost dev examples/web.yaml\n  outpost dev -v --api 127.0.0.1:7500 compose.yaml"
    )]
    Dev {
        /// Spec files (native YAML or Compose) to deploy at start.
        files: Vec<PathBuf>,
        /// Write the log on stderr, among what dev prints, instead of to its file.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        node: NodeOptions,
        /// Begin a new, empty cluster even though the data dir held one whose state file is
        /// missing or empty (otherwise such a start is refused).
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        api: ApiOptions,
        #[command(flatten)]
        mesh: MeshOptions,
    },
    /// Run a control-plane server: `--listen` (or `--api`) is where it listens, `--data-dir`
    /// where it keeps state. The first server founds a group (a data dir without a cluster CA
    /// gets one, as with `outpost server init`); `server join` adds others.
    #[command(args_conflicts_with_subcommands = true)]
    #[command(
        after_help = "Examples:\n  outpost --data-dir /var/lib/outpost/server server --listen 10.0.0.5:7400\n  outpost server init --listen 10.0.0.5:7400"
    )]
    Server {
        #[command(subcommand)]
        action: Option<ServerAction>,
        #[command(flatten)]
        run: Box<ServerRun>,
    },
    /// Run an edge agent. The first start joins the server at `--join` with `--token` (an
    /// agent join token); later starts reconnect with the certificate kept in `--data-dir`.
    #[command(
        after_help = "Examples:\n  outpost --data-dir /var/lib/outpost/agent agent --join 10.0.0.5:7400 --token $(cat agent.token) --listen 0.0.0.0:7401 --advertise 10.0.0.21:7401"
    )]
    Agent {
        /// This node's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// The server to join (HOST:PORT); remembered in the data dir.
        #[arg(long)]
        join: Option<String>,
        /// Address of the agent's own API (logs); port 0 picks a free one.
        #[arg(long, visible_alias = "listen", default_value = "127.0.0.1:0")]
        agent_listen: String,
        /// How often to tell the server this node is alive, from 100ms to 2s.
        #[arg(long, default_value = "500ms", env = "OUTPOST_HEARTBEAT")]
        heartbeat: String,
        /// The address servers reach the agent's API at, when not the listen address.
        #[arg(long)]
        advertise: Option<String>,
        #[command(flatten)]
        node: NodeOptions,
    },
    /// Show or rotate the cluster's tokens.
    #[command(after_help = "Examples:\n  outpost token show agent\n  outpost token rotate server")]
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Deploy services from spec files (native YAML or Docker Compose, detected).
    #[command(
        after_help = "Examples:\n  outpost deploy -f web.yaml\n  outpost deploy --dry-run -f compose.yaml -p shop\n  cat web.yaml | outpost deploy -f -"
    )]
    Deploy {
        /// A spec file (native YAML or Compose); `-` reads standard input. Give it again for
        /// more files.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// The stack to deploy into (as `docker compose -p`): a Compose file's services become
        /// `<stack>_<service>`; without it, the file's `name:` or its directory's name.
        #[arg(short = 'p', long = "project-name", value_name = "NAME")]
        project: Option<String>,
        /// Validate and show what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Replace services of the same name that belong to another stack, or to none.
        #[arg(long)]
        force: bool,
    },
    /// List services; more than a screenful are counted by status unless `--all`.
    #[command(
        after_help = "Examples:\n  outpost services\n  outpost services web -o json\n  outpost services --stack shop"
    )]
    Services {
        /// One service: its address, and each endpoint with its state and request counts as
        /// the nodes' load balancers see them.
        service: Option<String>,
        /// Show every service, however many.
        #[arg(long)]
        all: bool,
        /// Only the services of this stack.
        #[arg(long, value_name = "STACK")]
        stack: Option<String>,
    },
    /// List tasks, of one service or all; more than a screenful are summarised (counts by
    /// service and state) unless `--all`.
    #[command(
        after_help = "Examples:\n  outpost ps\n  outpost ps web --state failed\n  outpost ps --node edge-1 -o json"
    )]
    Ps {
        /// Only the tasks of this service.
        service: Option<String>,
        /// Only tasks placed on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only tasks in this state: pending, starting, running, exited, failed or lost.
        #[arg(long, value_parser = wire_value::<api::TaskState>)]
        state: Option<api::TaskState>,
        /// Every task, however many, with those that finished or were replaced (the latest ten
        /// of each service, with their final state and reason).
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// List nodes; more than a screenful are counted by state unless `--all`.
    #[command(after_help = "Examples:\n  outpost nodes\n  outpost nodes -o json")]
    Nodes {
        /// Show every node, however many.
        #[arg(long)]
        all: bool,
    },
    /// Show events; -f keeps following.
    #[command(
        after_help = "Examples:\n  outpost events -f\n  outpost events --service web --since 10m --level warning"
    )]
    Events {
        /// Keep following: print new events as they happen, until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events at or after this: a duration back from now (`10m`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only events of this node.
        #[arg(long)]
        node: Option<String>,
        /// Only events at this level or above: info, warning or error.
        #[arg(long, value_parser = wire_value::<api::Level>)]
        level: Option<api::Level>,
    },
    /// Show the output of a service's tasks (or of one task).
    #[command(
        after_help = "Examples:\n  outpost logs web\n  outpost logs web.1.4 -f --tail 100\n  outpost logs web.1.4 --previous\n  outpost logs web --since 10m --timestamps\n  outpost logs web --since 2026-05-01T12:00:00Z --grep ERROR -o json"
    )]
    Logs {
        /// A service (the output of each of its tasks) or a task id (`web.1.4`).
        target: String,
        /// Keep following: print new output as it is written, until Ctrl-C.
        #[arg(short = 'f', long, conflicts_with = "previous")]
        follow: bool,
        /// Only the last N lines of each task.
        #[arg(long)]
        tail: Option<usize>,
        /// The output of the run before the last restart (why it crashed).
        #[arg(short = 'p', long)]
        previous: bool,
        /// Only the lines that contain this text.
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
        /// Only lines written since: a duration back from now (`10m`, `2h`; each node reads it
        /// on its own clock) or an RFC 3339 time. Reaches back into rotated files.
        #[arg(long, value_name = "DURATION|TIME")]
        since: Option<String>,
        /// Start each line with the time it was written (RFC 3339, UTC; within a quarter
        /// second, as its node saw the file grow).
        #[arg(short = 't', long)]
        timestamps: bool,
    },
    /// Restart a service's tasks by its update rules (a rollout of the same spec, followed by
    /// `outpost rollout status`), or one task (stopped, and a new one started in its slot).
    #[command(after_help = "Examples:\n  outpost restart web\n  outpost restart web.2.7")]
    Restart {
        /// A service, or a task id (`web.2.7`, as `outpost ps` shows it).
        target: String,
    },
    /// Stop a service (scaled to 0 replicas; `outpost scale` starts it again) or one task (it
    /// stops, and a new one takes its slot, as a restart).
    #[command(after_help = "Examples:\n  outpost stop web\n  outpost stop web.2.7")]
    Stop {
        /// A service, or a task id (`web.2.7`, as `outpost ps` shows it).
        target: String,
    },
    /// Run a command beside a running task, from any node's CLI: inside its container (the
    /// Engine's exec), or for a process task with its environment, working directory, cgroup
    /// and resolver. Its output streams back; its exit status is this command's. With `-it`,
    /// an interactive shell, as `docker exec -it`.
    #[command(
        after_help = "Examples:\n  outpost exec web.1.4 -- ls -l /data\n  outpost exec -it web.1.4 -- sh\n  outpost exec db.1.2 -- sh -c 'pg_isready; echo $?'\n  printf 'a\\nb\\n' | outpost exec -i web.1.4 -- wc -l"
    )]
    Exec {
        /// Pass this command's stdin to the command (its end closes the command's stdin).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Give the command a terminal (a pty, or the container's tty) the size of this one,
        /// resized with it, its stdout and stderr one stream; with `-i`, this terminal is in
        /// raw mode for the session (Ctrl-C goes to the command). Stdin must be a terminal:
        /// otherwise an error, "the input device is not a TTY".
        #[arg(short = 't', long)]
        tty: bool,
        /// The task, as `outpost ps` shows it (`web.1.4`).
        task: String,
        /// The command and its arguments, after `--`; run without a shell.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Live CPU, memory, network and disk of each running task and node (of one service or
    /// one node), refreshed until Ctrl-C like `docker stats`. CPU % is of one CPU for a task
    /// and of the whole node for a node; network and disk are totals since start.
    #[command(
        after_help = "Examples:\n  outpost stats\n  outpost stats web --no-stream\n  outpost stats edge-1 -o json"
    )]
    Stats {
        /// A service or a node; every task and node without it.
        target: Option<String>,
        /// Print one reading and end.
        #[arg(long)]
        no_stream: bool,
    },
    /// The images each node keeps in its store and serves from its mirror, with their sizes
    /// and the services that run them.
    #[command(after_help = "Examples:\n  outpost images\n  outpost images edge-1 -o json")]
    Images {
        /// Only this node.
        node: Option<String>,
    },
    /// Work on the nodes' image stores: fill them from other nodes or registries (`pull`),
    /// carry images without a registry as signed bundle files (`save`, `load`), from this
    /// machine's Engine (`push`), collect them (`prune`), and manage the keys bundles are
    /// checked against (`keys`).
    #[command(
        after_help = "Examples:\n  outpost image pull alpine:3.20\n  outpost image save shop/web:1.5 -f web.delta --have shop/web:1.4\n  outpost image load web.delta --node edge-7\n  outpost image prune --dry-run"
    )]
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Print a shell completion script: source it, or put it where your shell looks.
    #[command(
        after_help = "Examples:\n  outpost completion bash > /etc/bash_completion.d/outpost\n  outpost completion zsh > \"${fpath[1]}/_outpost\"\n  outpost completion fish > ~/.config/fish/completions/outpost.fish"
    )]
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Show the whole record of a service (spec, tasks, endpoints, recent events), a task
    /// (state, last exit, restarts, pid or container, ports, limits, its history) or a node
    /// (capacity, allocatable, notes, tasks, recent events); `-o json` or `-o yaml` for all of
    /// it as one document.
    #[command(
        after_help = "Examples:\n  outpost inspect web\n  outpost inspect web.1.4 -o yaml\n  outpost inspect edge-1 -o json"
    )]
    Inspect {
        /// A service name, a task id (`web.1.4`, as `outpost ps` shows) or a node name.
        name: String,
    },
    /// Set the number of replicas of a service, or of several at once.
    #[command(after_help = "Examples:\n  outpost scale web 4\n  outpost scale web=4 api=2")]
    Scale {
        /// `SERVICE REPLICAS`, or `SERVICE=REPLICAS` for each service to scale.
        #[arg(required = true, num_args = 1.., value_name = "SERVICE=REPLICAS")]
        targets: Vec<String>,
    },
    /// Remove a service and stop its tasks.
    #[command(after_help = "Examples:\n  outpost rm web\n  outpost rm --stack shop")]
    Rm {
        /// The service to remove.
        #[arg(required_unless_present = "stack", conflicts_with = "stack")]
        service: Option<String>,
        /// Remove every service of this stack instead.
        #[arg(long, value_name = "STACK")]
        stack: Option<String>,
    },
    /// Act on one node.
    #[command(after_help = "Examples:\n  outpost node drain edge-1\n  outpost node rm edge-7")]
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Follow, pause or undo the rollout of a service's new revision.
    #[command(
        after_help = "Examples:\n  outpost rollout status web -w\n  outpost rollout undo web"
    )]
    Rollout {
        #[command(subcommand)]
        action: RolloutCommand,
    },
    /// Store, list or remove secrets: values tasks read as files, sealed at rest, never shown.
    #[command(
        after_help = "Examples:\n  outpost secret create db-password -f ./pw.txt\n  outpost secret ls"
    )]
    Secret {
        #[command(subcommand)]
        action: ObjectAction,
    },
    /// Store, list or remove configs: files for tasks, stored as they are.
    #[command(
        after_help = "Examples:\n  outpost config create nginx.conf -f ./nginx.conf\n  outpost config ls"
    )]
    Config {
        #[command(subcommand)]
        action: ObjectAction,
    },
    /// Put this node under systemd as a `server` or an `agent`: copy this binary to
    /// /usr/local/bin/outpost, write the role's unit to /etc/systemd/system/ and its settings
    /// to /etc/outpost/<role>.env, make its data dir (/var/lib/outpost/<role>), then print the
    /// systemctl command that starts it.
    #[command(
        after_help = "Examples:\n  outpost install agent --join 10.0.0.5:7400 --token $(cat agent.token) --name edge-1\n  outpost install server --listen 10.0.0.5:7400\n  outpost install agent --dry-run --join 10.0.0.5:7400 --token T"
    )]
    Install(install::Install),
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Where the rollout stands. With -w, waits until it ends: the exit code is 0 once
    /// completed (or undone as asked), 1 once rolled back after a failure, 2 while paused or
    /// held as a canary.
    #[command(
        after_help = "Examples:\n  outpost rollout status web\n  outpost rollout status web -w"
    )]
    Status {
        /// The service whose rollout this is.
        service: String,
        /// Wait until the rollout ends, printing each step.
        #[arg(short = 'w', long)]
        wait: bool,
    },
    /// The revisions kept, with what each changed.
    #[command(after_help = "Examples:\n  outpost rollout history web")]
    History {
        /// The service whose rollout this is.
        service: String,
    },
    /// Go back to the revision before the current, or to `--to-revision N`.
    #[command(
        after_help = "Examples:\n  outpost rollout undo web\n  outpost rollout undo web --to-revision 3"
    )]
    Undo {
        /// The service whose rollout this is.
        service: String,
        /// The revision to go back to, as `outpost rollout history` lists them.
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Start no new task until `resume`.
    #[command(after_help = "Examples:\n  outpost rollout pause web")]
    Pause {
        /// The service whose rollout this is.
        service: String,
    },
    /// Let a paused rollout go on.
    #[command(after_help = "Examples:\n  outpost rollout resume web")]
    Resume {
        /// The service whose rollout this is.
        service: String,
    },
    /// Let a canary held at its count go on to every slot.
    #[command(after_help = "Examples:\n  outpost rollout promote web")]
    Promote {
        /// The service whose rollout this is.
        service: String,
    },
}

#[derive(Subcommand)]
enum ObjectAction {
    /// Store a value (a new value for an existing name is a new version of each service
    /// that uses it).
    #[command(
        after_help = "Examples:\n  outpost secret create db-password -f ./pw.txt\n  echo -n s3cret | outpost secret create api-key -f -"
    )]
    Create {
        /// The name services refer to it by (`secrets:` / `configs:` in a spec).
        name: String,
        /// The file holding the value; `-` reads stdin. At most 500 KiB.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List names, sizes, digests and the services using each; never a value.
    #[command(after_help = "Examples:\n  outpost secret ls\n  outpost config ls -o json")]
    Ls,
    /// Remove one; refused while a service uses it.
    #[command(after_help = "Examples:\n  outpost secret rm db-password")]
    Rm {
        /// The name it was created with.
        name: String,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Move work off a node gracefully: nothing new is placed on it, and each of its tasks
    /// stops once its replacement elsewhere is ready.
    #[command(after_help = "Examples:\n  outpost node drain edge-1")]
    Drain {
        /// The node's name, as `outpost nodes` shows it.
        node: String,
    },
    /// Let a drained node take work again.
    #[command(after_help = "Examples:\n  outpost node undrain edge-1")]
    Undrain {
        /// The node's name, as `outpost nodes` shows it.
        node: String,
    },
    /// Remove a node: its tasks are placed elsewhere and its certificate is revoked.
    #[command(after_help = "Examples:\n  outpost node rm edge-7")]
    Rm {
        /// The node's name, as `outpost nodes` shows it.
        node: String,
    },
}

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Dev { .. } | Command::Server { .. } | Command::Agent { .. }
    ) {
        end_quietly_on_a_closed_pipe();
    }
    pki::install_default();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<rollouts::Ended>() {
            Some(ended) => {
                if !ended.message.is_empty() {
                    eprintln!("{ended}");
                }
                std::process::ExitCode::from(ended.code)
            }
            None => {
                eprintln!("error: {}", error_text(&e));
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// An error and its causes on one line, each cause said once: a library error that already
/// names its cause in its own message (`cannot join …: the token is wrong`) would otherwise
/// repeat it as the next link of the chain.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// One malloc arena for the whole process instead of glibc's one per thread (up to eight per
/// core): each arena keeps its own free memory, and a server's few threads each held several
/// MB. With 100 agents, a server's peak RSS went from 43.6 to 38.4 MB. Small allocations still
/// take each thread's own cache first, so the one lock is seldom contended.
#[allow(unsafe_code)]
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; it runs first in `main`, before
    // any other thread exists, and its answer (whether the value was taken) changes nothing.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// A client command whose reader went away (`outpost ps | head`) ends at once, silently, as
/// other Unix tools do: Rust ignores SIGPIPE, so each print would fail (and `println!` panic).
/// Roles keep ignoring it: a peer that hangs up must never end a server or an agent.
#[allow(unsafe_code)]
fn end_quietly_on_a_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: it runs first in `main`, before any other thread exists, and the default
    // action needs no handler of ours.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("warning: cannot restore SIGPIPE's default action: {e}");
    }
}

/// A flag value in its wire form (`running`, `warning`): the API's own names, one parser.
fn wire_value<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| e.to_string())
}

/// Raises the soft limit on open files to the hard one: every connection, log file and task
/// pipe costs a descriptor, and the default soft limit (1024) is the first to run out.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("warning: cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// The token from `--token-file`, when that is how it was given.
fn read_token_file(conn: &mut Connection) -> anyhow::Result<()> {
    let Some(path) = &conn.token_file else {
        return Ok(());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the token file {} (--token-file): {e}",
            path.display()
        )
    })?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} (--token-file) is empty: write the cluster token into it (the server \
         keeps it in its data dir's `token` file)",
        path.display()
    );
    conn.token = Some(token.to_string());
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut conn = cli.conn;
    read_token_file(&mut conn)?;
    match cli.command {
        Command::Dev {
            files,
            verbose,
            node,
            reset,
            api,
            mesh,
        } => {
            let settings = api.settings(mesh.range()?)?;
            roles::dev(&conn, &files, &node, reset, verbose, settings).await
        }
        Command::Server { action, run } => match action {
            None => roles::server(&conn, run.role(None)?).await,
            Some(ServerAction::Init { addr }) => roles::server_init(&conn, &addr),
            Some(ServerAction::Join { addr, run }) => {
                roles::server(&conn, run.role(Some(addr))?).await
            }
            Some(ServerAction::Leave { id }) => commands::server_leave(&conn, id).await,
            Some(ServerAction::Backup { file, force }) => backup::backup(&conn, &file, force).await,
            Some(ServerAction::Restore { file, addr, name }) => {
                backup::restore(&conn, &file, &addr, name.as_deref()).await
            }
        },
        Command::Agent {
            name,
            join,
            agent_listen,
            heartbeat,
            advertise,
            node,
        } => {
            let listen = roles::AgentAddr {
                join,
                listen: agent_listen,
                advertise,
            };
            roles::agent(&conn, name, &listen, &heartbeat, &node).await
        }
        Command::Token {
            action: TokenAction::Show { role },
        } => commands::show_token(&conn, &role).await,
        Command::Token {
            action: TokenAction::Rotate { role },
        } => commands::rotate_token(&conn, &role).await,
        Command::Deploy {
            files,
            project,
            dry_run,
            force,
        } => {
            let how = commands::DeployOptions {
                project,
                dry_run,
                force,
            };
            commands::deploy(&conn, &files, &how).await
        }
        Command::Services {
            service: Some(service),
            ..
        } => commands::traffic(&conn, &service).await,
        Command::Services {
            service: None,
            all,
            stack,
        } => commands::services(&conn, all, stack.as_deref()).await,
        Command::Ps {
            service,
            node,
            state,
            all,
        } => {
            let filter = client::TaskFilter {
                service,
                node,
                state,
                finished: all,
            };
            commands::ps(&conn, &filter, all).await
        }
        Command::Nodes { all } => commands::nodes(&conn, all).await,
        Command::Events {
            follow,
            since,
            service,
            node,
            level,
        } => {
            let filter = client::EventFilter {
                since,
                service,
                node,
                level,
            };
            commands::events(&conn, follow, &filter).await
        }
        Command::Logs {
            target,
            follow,
            tail,
            previous,
            grep,
            since,
            timestamps,
        } => {
            let options = client::LogOptions {
                tail,
                follow,
                previous,
                since,
                // `-o json` gives each line's time as a field of its own.
                timestamps: timestamps || conn.output != Format::Table,
            };
            commands::logs(&conn, &target, options, grep.as_deref()).await
        }
        Command::Inspect { name } => inspect::inspect(&conn, &name).await,
        Command::Stats { target, no_stream } => {
            stats::stats(&conn, target.as_deref(), no_stream).await
        }
        Command::Images { node } => commands::images(&conn, node.as_deref()).await,
        Command::Image { action } => match action {
            ImageAction::Save {
                images,
                file,
                have,
                node,
                force,
            } => image::save(&conn, images, &file, &have, node, force).await,
            ImageAction::Load {
                file,
                node,
                unsigned,
            } => image::load(&conn, &file, node, unsigned).await,
            ImageAction::Pull { image, nodes } => pull::pull(&conn, &image, &nodes).await,
            ImageAction::Push { image, node } => image::push(&conn, &image, node).await,
            ImageAction::Prune { node, dry_run } => {
                commands::prune_images(&conn, node.as_deref(), dry_run).await
            }
            ImageAction::Keys { action } => image::keys(&conn, action).await,
        },
        Command::Restart { target } => commands::restart(&conn, &target, false).await,
        Command::Stop { target } => commands::restart(&conn, &target, true).await,
        Command::Exec {
            interactive,
            tty,
            task,
            command,
        } => {
            let args = exec::ExecArgs {
                task: &task,
                argv: &command,
                interactive,
                tty,
            };
            exec::exec(&conn, args).await
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "outpost",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Scale { targets } => {
            let targets = commands::scale_targets(&targets)?;
            commands::scale(&conn, &targets).await
        }
        Command::Rm { service, stack } => match (service, stack) {
            (_, Some(stack)) => commands::rm_stack(&conn, &stack).await,
            (Some(service), None) => commands::rm(&conn, &service).await,
            // clap requires one of them.
            (None, None) => Err(anyhow::anyhow!("name a service, or a stack with --stack")),
        },
        Command::Node { action } => match action {
            NodeAction::Drain { node } => commands::drain(&conn, &node, true).await,
            NodeAction::Undrain { node } => commands::drain(&conn, &node, false).await,
            NodeAction::Rm { node } => commands::remove_node(&conn, &node).await,
        },
        Command::Rollout { action } => match action {
            RolloutCommand::Status { service, wait } => {
                rollouts::status(&conn, &service, wait).await
            }
            RolloutCommand::History { service } => rollouts::history(&conn, &service).await,
            RolloutCommand::Undo {
                service,
                to_revision,
            } => rollouts::undo(&conn, &service, to_revision).await,
            RolloutCommand::Pause { service } => rollouts::act(&conn, &service, "pause").await,
            RolloutCommand::Resume { service } => rollouts::act(&conn, &service, "resume").await,
            RolloutCommand::Promote { service } => rollouts::act(&conn, &service, "promote").await,
        },
        Command::Secret { action } => object_command(&conn, api::ObjectKind::Secret, action).await,
        Command::Config { action } => object_command(&conn, api::ObjectKind::Config, action).await,
        Command::Install(how) => install::run(&conn, &how),
    }
}

async fn object_command(
    conn: &Connection,
    kind: api::ObjectKind,
    action: ObjectAction,
) -> anyhow::Result<()> {
    match action {
        ObjectAction::Create { name, file } => objects::create(conn, kind, &name, &file).await,
        ObjectAction::Ls => objects::list(conn, kind).await,
        ObjectAction::Rm { name } => objects::remove(conn, kind, &name).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// A library error that names its cause in its message and gives it as its source too.
    #[derive(Debug)]
    struct Join {
        source: std::io::Error,
    }

    impl std::fmt::Display for Join {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot join the cluster at s1: {}", self.source)
        }
    }

    impl std::error::Error for Join {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let token = std::io::Error::other("the agent join token is wrong or was rotated");
        let e = anyhow::Error::new(Join { source: token });
        assert_eq!(
            super::error_text(&e),
            "cannot join the cluster at s1: the agent join token is wrong or was rotated"
        );
        let e = anyhow::anyhow!("no such file").context("cannot read web.yaml");
        assert_eq!(super::error_text(&e), "cannot read web.yaml: no such file");
    }

    /// Every flag and argument says what it is for, and every command's help ends with
    /// examples: `outpost CMD --help` is where an operator looks first.
    #[test]
    fn every_flag_is_described_and_every_command_shows_examples() {
        let mut missing = Vec::new();
        for sub in super::Cli::command().get_subcommands() {
            audit(sub, &format!("outpost {}", sub.get_name()), &mut missing);
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// `docker exec -it`'s habit is where an operator starts: the help shows it.
    #[test]
    fn exec_help_shows_an_interactive_shell() {
        let cli = super::Cli::command();
        let exec = cli.find_subcommand("exec").unwrap();
        let after = exec.get_after_help().unwrap().to_string();
        assert!(after.contains("outpost exec -it web.1.4 -- sh"), "{after}");
        for flag in ["interactive", "tty"] {
            let arg = exec.get_arguments().find(|a| a.get_id() == flag);
            assert!(arg.and_then(|a| a.get_help()).is_some(), "{flag}");
        }
    }

    fn audit(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = ["help", "version"].contains(&arg.get_id().as_str());
            if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                missing.push(format!("{path}: {} has no description", arg.get_id()));
            }
        }
        let after = cmd
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        if !after.starts_with("Example") {
            missing.push(format!("{path}: its help ends with no examples"));
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            audit(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
}
