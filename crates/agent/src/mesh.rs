//! The node's share of the service mesh: every node serves every service.
//!
//! - **Virtual IPs.** Each service has one, from the cluster's service range (the servers'
//!   `--service-range`, 10.96.0.0/16 by default, learned from their first endpoint list), which
//!   [`route`] makes local to the host. The
//!   load balancer listens on `VIP:port` for each of the service's ports that has a number
//!   (`PortSpec::service_port`), so `db:5432` works from a process and from a container alike.
//! - **Published ports.** A port with `publish: N` is answered on port N of every address of
//!   every node (the routing mesh).
//! - **Names.** The node's DNS server (`lb::dns`) answers on the range's first address, port
//!   53: `<name>.outpost` and, in a stack, `<short>.<stack>.outpost` are the service's virtual
//!   IP; `tasks.<name>.outpost` its ready endpoints' node addresses, with SRV records
//!   `_<port>._tcp.<name>.outpost` for their ports. Names outside `outpost` are forwarded to the
//!   host's own resolvers. Containers get it as their resolver with the search domains
//!   `<stack>.outpost outpost`; every task gets `OUTPOST_SERVICE_<NAME>_ADDR` ([`MeshView`]).
//!
//! Endpoints come from the control plane's endpoint list (a blocking query, so a readiness
//! change arrives within one round trip); while it cannot be reached, the last list keeps being
//! served. The list is kept in the agent's data dir, so an agent that starts while cut off
//! from every server (a node rebooted offline) serves names and ports from it. HTTP ports (`protocol: http`) are proxied per request, with retries on another
//! endpoint; other TCP ports per connection.

pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api::{
    Counters, EndpointList, EndpointTraffic, ListenerTraffic, ServiceEndpoints, ServiceRange,
    TaskEndpoint,
};
use api::{Level, NewEvent};
use client::Client;
use lb::dns::{Dns, Record, Zone};
use lb::{Algorithm, Balancer, Config, Endpoint, EndpointState, HashKey};
use spec::{BalanceAlgorithm, HashOn, PortSpec, Protocol};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::retry::Retry;
use crate::supervisor::Update;

/// How long one endpoint query waits on the server before it answers unchanged.
const WATCH_WAIT: Duration = Duration::from_secs(25);

/// How long a replica has to accept a connection before the next one is tried: 300 ms, as the
/// nodes of a site answer within milliseconds and this is what a request pays when the node of
/// its first pick has just died (measured: a 1 s timeout showed as a 1 s answer).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// How often, at most, the endpoint list is written to the data dir: a change waits this long
/// to be kept.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The zone the node's DNS server answers for.
pub const DOMAIN: &str = "outpost";

/// Where the host's own resolvers are listed: names outside [`DOMAIN`] are forwarded to them.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What tasks started on this node are told of the mesh: its DNS server, and the services'
/// addresses at the time they start. Shared by the mesh (which writes it) and the supervisors,
/// which tell it at once when a task here stops serving ([`MeshView::note_local`]).
#[derive(Debug, Clone)]
pub struct MeshView {
    view: Arc<RwLock<View>>,
    /// Moves whenever a task here starts or stops serving.
    local_changes: Arc<watch::Sender<u64>>,
}

impl Default for MeshView {
    fn default() -> MeshView {
        MeshView {
            view: Arc::default(),
            local_changes: Arc::new(watch::channel(0).0),
        }
    }
}

#[derive(Debug, Default)]
struct View {
    /// The node's DNS server, once the service range is local and it listens.
    dns: Option<Ipv4Addr>,
    /// Each service's name, stack and `VIP:port` (of its first numbered port).
    services: Vec<(String, Option<String>, SocketAddr)>,
    /// Every listener: where, the service and port it serves, its balancer.
    listeners: Vec<(SocketAddr, Serves, Arc<Balancer>)>,
    /// Whether each task of this node serves (runs and is ready), as its supervisor last said:
    /// one that stops is taken out of every listener here at once, before the control plane
    /// has heard of it.
    local: HashMap<String, bool>,
    /// The tasks the control plane's last list sends new traffic to (ready, not draining).
    routed: std::collections::HashSet<String>,
}

impl MeshView {
    /// The resolver tasks should use, if the node serves one.
    pub fn dns(&self) -> Option<Ipv4Addr> {
        self.read().dns
    }

    /// `OUTPOST_SERVICE_<NAME>_ADDR` for every service with a virtual IP: by short name for
    /// the services of `stack`, by full name for all.
    pub fn service_vars(&self, stack: Option<&str>) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        for (name, own_stack, addr) in &self.read().services {
            vars.insert(service_var(name), addr.to_string());
            if let (Some(mine), Some(theirs)) = (stack, own_stack.as_deref())
                && mine == theirs
            {
                let short = spec::stack_short_name(name, Some(theirs));
                vars.entry(service_var(short))
                    .or_insert_with(|| addr.to_string());
            }
        }
        vars
    }

    /// What a supervisor saw of its task: whether it serves now.
    pub fn note_local(&self, task: &str, serving: bool) {
        let before = self.write().local.insert(task.to_string(), serving);
        if before != Some(serving) {
            self.local_changes.send_modify(|n| *n += 1);
        }
    }

    /// Whether the control plane's last list still sends new traffic to `task`: once it says
    /// draining, every node's listeners leave the task (they all hold the same query).
    pub fn routed(&self, task: &str) -> bool {
        self.read().routed.contains(task)
    }

    fn serves_here(&self, task: &str) -> Option<bool> {
        self.read().local.get(task).copied()
    }

    /// The node's listeners of `service` (of every service without one) and their counters.
    pub fn traffic(&self, node: &str, service: Option<&str>) -> Vec<ListenerTraffic> {
        let view = self.read();
        let listeners = view.listeners.iter();
        (listeners.filter(|(_, serves, _)| service.is_none_or(|s| s == serves.service)))
            .map(|(addr, serves, balancer)| {
                let snapshot = balancer.snapshot();
                ListenerTraffic {
                    node: node.to_string(),
                    service: serves.service.clone(),
                    port: serves.port.clone(),
                    listen: addr.to_string(),
                    counters: counters(&snapshot.listener),
                    endpoints: (snapshot.endpoints.iter())
                        .map(|e| EndpointTraffic {
                            task: e.id.clone(),
                            addr: e.addr.to_string(),
                            health: health(e.health).to_string(),
                            counters: counters(&e.counters),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A task's search domains: its stack's, then every service's.
pub fn search_domains(stack: Option<&str>) -> Vec<String> {
    let own = stack.map(|stack| format!("{stack}.{DOMAIN}"));
    own.into_iter().chain([DOMAIN.to_string()]).collect()
}

fn counters(c: &lb::CountersSnapshot) -> Counters {
    Counters {
        requests: c.requests,
        errors: c.errors,
        retries: c.retries,
        ejections: c.ejections,
        in_flight: c.in_flight,
    }
}

fn health(health: lb::Health) -> &'static str {
    match health {
        lb::Health::Ready => "ready",
        lb::Health::Ejected => "ejected",
        lb::Health::Draining => "draining",
    }
}

/// `OUTPOST_SERVICE_SHOP_DB_ADDR` for `shop_db`: upper case, `-` as `_`.
fn service_var(name: &str) -> String {
    format!(
        "OUTPOST_SERVICE_{}_ADDR",
        name.to_uppercase().replace('-', "_")
    )
}

/// One listening socket and the balancer behind it.
struct Listener {
    /// What it serves, to tell when a new list needs it started afresh.
    serves: Serves,
    balancer: Arc<Balancer>,
    /// What the balancer was last given.
    endpoints: Vec<Endpoint>,
    stop: watch::Sender<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Serves {
    service: String,
    port: String,
    http: bool,
    balance: spec::LoadBalancerSpec,
}

/// The mesh of one node: its listeners and its DNS server.
pub struct Mesh {
    client: Client,
    node: String,
    /// Where the operator hears of a port that cannot be listened on (an event).
    updates: mpsc::UnboundedSender<Update>,
    /// The servers' service range, from the first list.
    range: Option<ServiceRange>,
    /// Where the last list is kept, for an agent that starts cut off.
    saved: PathBuf,
    view: MeshView,
    /// Whether the service range is local here (virtual IPs can be listened on).
    vips: bool,
    dns: Option<Arc<Dns>>,
    /// Where the listeners' proxies run, started with the first of them.
    proxies: Option<lb::ProxyThread>,
    listeners: HashMap<SocketAddr, Listener>,
    /// Addresses that could not be listened on, with why: said once, tried again each list.
    failed: HashMap<SocketAddr, String>,
    /// Whether the agent said the servers' range changed (once).
    told_range: bool,
}

impl Mesh {
    /// The mesh of node `node`, its list kept at `saved`.
    pub fn new(
        client: Client,
        saved: PathBuf,
        view: MeshView,
        node: String,
        updates: mpsc::UnboundedSender<Update>,
    ) -> Mesh {
        Mesh {
            client,
            node,
            updates,
            range: None,
            saved,
            view,
            vips: false,
            dns: None,
            proxies: None,
            listeners: HashMap::new(),
            failed: HashMap::new(),
            told_range: false,
        }
    }

    /// Serves the mesh until `stop` is set.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // The blocking query runs on its own, never cancelled by what happens here: a query
        // dropped mid-wait would cost its connection, and a new one may be what the node's
        // heartbeat needs when descriptors run short.
        let (answers_tx, mut answers) = mpsc::channel(1);
        let watcher = tokio::spawn(watch_endpoints(self.client.clone(), answers_tx));
        let mut local = self.view.local_changes.subscribe();
        // The whole list as this node knows it, brought up to date with each answer: at first
        // the one kept from before, until a server answers.
        let mut last = load(&self.saved);
        if let Some(list) = &last {
            tracing::info!("serving the endpoint list kept in {}", self.saved.display());
            self.apply(list);
        }
        let mut unsaved = false;
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                Some(answer) = answers.recv() => Event::Answer(answer),
                Ok(()) = local.changed() => Event::Local,
                _ = save.tick(), if unsaved => Event::Save,
                _ = stop.wait_for(|s| *s) => break,
            };
            match event {
                Event::Answer(answer) => {
                    let list = merge(last.take(), answer);
                    self.apply(&list);
                    last = Some(list);
                    unsaved = true;
                }
                Event::Save => {
                    unsaved = false;
                    if let Some(list) = &last {
                        keep(&self.saved, list);
                    }
                }
                // A task here stopped serving (or serves again): the last list, seen anew.
                Event::Local => {
                    if let Some(list) = &last {
                        self.apply(list);
                    }
                }
            }
        }
        watcher.abort();
        if let (true, Some(list)) = (unsaved, &last) {
            keep(&self.saved, list);
        }
        for listener in self.listeners.values() {
            listener.stop.send_replace(true);
        }
    }

    /// Makes `range` local and starts the DNS server on its first address.
    fn start_dns(&mut self, range: ServiceRange) {
        if let Err(e) = route::make_local(range) {
            tracing::warn!("{e}");
            return;
        }
        self.vips = true;
        let Some(ip) = range.addr(api::DNS_VIP) else {
            return;
        };
        let addr = SocketAddr::new(IpAddr::V4(ip), 53);
        let upstreams = std::fs::read_to_string(RESOLV_CONF)
            .map(|text| lb::dns::nameservers(&text))
            .unwrap_or_default();
        // Never our own address: a forward to it would loop until it timed out.
        let upstreams = (upstreams.into_iter())
            .filter(|u| !matches!(u.ip(), IpAddr::V4(v4) if range.contains(v4)))
            .collect();
        let (udp, tcp) = match (udp_shared(addr), listen(addr)) {
            (Ok(udp), Ok(tcp)) => (udp, tcp),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot serve names on {addr}: {e}; tasks get no DNS server");
                return;
            }
        };
        let dns = Dns::new(DOMAIN, upstreams);
        tokio::spawn(lb::dns::serve_udp(
            udp,
            Arc::clone(&dns),
            std::future::pending(),
        ));
        tokio::spawn(lb::dns::serve_tcp(
            tcp,
            Arc::clone(&dns),
            std::future::pending(),
        ));
        self.dns = Some(dns);
        self.view.write().dns = Some(ip);
    }

    /// Serves `list`: listeners for every port it names, none for ports it no longer does.
    fn apply(&mut self, list: &EndpointList) {
        match self.range {
            None => {
                self.range = Some(list.service_range);
                self.start_dns(list.service_range);
            }
            Some(range) if range != list.service_range && !self.told_range => {
                self.told_range = true;
                tracing::warn!(
                    "the servers now give virtual IPs from {} instead of {range}: restart this \
                     agent to serve them",
                    list.service_range
                );
            }
            Some(_) => {}
        }
        let mut wanted = HashMap::new();
        for service in &list.services {
            for port in service.ports.iter().filter(|p| !p.protocol.is_udp()) {
                for addr in self.addresses(service, port) {
                    wanted.insert(addr, (service, port));
                }
            }
        }
        self.listeners.retain(|addr, listener| {
            let keep = wanted.contains_key(addr);
            if !keep {
                listener.stop.send_replace(true);
            }
            keep
        });
        for (addr, (service, port)) in wanted {
            self.serve(addr, service, port);
        }
        if let Some(dns) = &self.dns {
            dns.update(zone(&list.services));
        }
        let listeners = (self.listeners.iter())
            .map(|(addr, l)| (*addr, l.serves.clone(), Arc::clone(&l.balancer)))
            .collect();
        let here: std::collections::HashSet<&str> = (list.services.iter())
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.node == self.node)
            .map(|e| e.task.as_str())
            .collect();
        let routed = (list.services.iter())
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| !e.draining)
            .map(|e| e.task.clone())
            .collect();
        let mut view = self.view.write();
        view.services = service_addrs(&list.services);
        view.listeners = listeners;
        view.routed = routed;
        // What the list no longer names needs no word from here.
        view.local.retain(|task, _| here.contains(task.as_str()));
    }

    /// Where a port is listened on here: its virtual IP, and every address when published.
    fn addresses(&self, service: &ServiceEndpoints, port: &PortSpec) -> Vec<SocketAddr> {
        let vip = (service.vip.filter(|_| self.vips))
            .zip(port.service_port())
            .map(|(ip, number)| SocketAddr::new(IpAddr::V4(ip), number));
        let published = (port.publish).map(|n| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), n));
        vip.into_iter().chain(published).collect()
    }

    /// Keeps a listener on `addr` for one port of a service, with its endpoints brought up to
    /// date; one serving something else is replaced.
    fn serve(&mut self, addr: SocketAddr, service: &ServiceEndpoints, port: &PortSpec) {
        let serves = Serves {
            service: service.name.clone(),
            port: port.name.clone(),
            http: port.protocol == Protocol::Http,
            balance: service.load_balancer.clone(),
        };
        let endpoints = endpoints(service, &port.name, &self.node, &self.view);
        if let Some(listener) = self.listeners.get_mut(&addr) {
            if listener.serves == serves {
                // Most lists change other services: rebuilding this one's set would be waste.
                if listener.endpoints != endpoints {
                    listener.balancer.update(&endpoints);
                    listener.endpoints = endpoints;
                }
                return;
            }
            listener.stop.send_replace(true);
            self.listeners.remove(&addr);
        }
        let socket = match listen(addr) {
            Ok(socket) => socket,
            Err(e) => {
                let why = format!(
                    "cannot listen on {addr} for port {:?} of {}: {e}; is another program \
                     using the port?",
                    port.name, service.name
                );
                self.cannot_serve(addr, &service.name, why);
                return;
            }
        };
        let balancer = Balancer::new(config(&serves.balance), &endpoints);
        let (stop, mut stopped) = watch::channel(false);
        let until = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let b = Arc::clone(&balancer);
        let served = self.proxies().and_then(|proxies| {
            if serves.http {
                let options = lb::HttpOptions {
                    connect_timeout: CONNECT_TIMEOUT,
                    ..lb::HttpOptions::default()
                };
                proxies.serve_http(socket, b, options, until)
            } else {
                let options = lb::TcpOptions {
                    proxy_protocol: serves.balance.proxy_protocol,
                    connect_timeout: CONNECT_TIMEOUT,
                    ..lb::TcpOptions::default()
                };
                proxies.serve_tcp(socket, b, options, until)
            }
        });
        if let Err(e) = served {
            let why = format!(
                "cannot serve {addr} for port {:?} of {}: {e}",
                port.name, service.name
            );
            self.cannot_serve(addr, &service.name, why);
            return;
        }
        self.failed.remove(&addr);
        tracing::info!("serving {}/{} on {addr}", serves.service, serves.port);
        let listener = Listener {
            serves,
            balancer,
            endpoints,
            stop,
        };
        self.listeners.insert(addr, listener);
    }

    /// The thread the proxies run on, started when first needed.
    fn proxies(&mut self) -> std::io::Result<&lb::ProxyThread> {
        let proxies = match self.proxies.take() {
            Some(proxies) => proxies,
            None => lb::ProxyThread::start("outpost-proxy")?,
        };
        Ok(self.proxies.insert(proxies))
    }

    /// Says why `addr` is not served, once for each reason; it is tried again with each list.
    fn cannot_serve(&mut self, addr: SocketAddr, service: &str, why: String) {
        if self.failed.insert(addr, why.clone()).as_ref() != Some(&why) {
            tracing::warn!("{why}");
            self.tell(service, why);
        }
    }
}

impl Mesh {
    /// An event for the operator, sent with the node's next report.
    fn tell(&self, service: &str, message: String) {
        let event = NewEvent {
            time: crate::supervisor::now(),
            level: Level::Warning,
            reason: "not-listening".into(),
            service: Some(service.to_string()),
            task: None,
            node: Some(self.node.clone()),
            message,
        };
        let _ = self.updates.send(Update {
            status: None,
            events: vec![event],
            memory_pressure: None,
        });
    }
}

/// What wakes the mesh.
enum Event {
    Answer(EndpointList),
    Local,
    /// Time to keep the list that changed.
    Save,
}

/// The list kept at `path`, if there is one that reads.
fn load(path: &std::path::Path) -> Option<EndpointList> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(list) => Some(list),
        Err(e) => {
            tracing::warn!(
                "ignoring {}: {e}; waiting for a server's list",
                path.display()
            );
            None
        }
    }
}

/// Keeps `list` at `path`, whole or not at all (written aside, then renamed over).
fn keep(path: &std::path::Path, list: &EndpointList) {
    let aside = path.with_extension("json.new");
    let written = serde_json::to_vec(list)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&aside, bytes))
        .and_then(|()| std::fs::rename(&aside, path));
    if let Err(e) = written {
        tracing::warn!("cannot keep the endpoint list in {}: {e}", path.display());
    }
}

/// Holds the endpoint query, sending each answer on, until `answers` closes. While no server
/// answers it tries again with the agent's backoff; the mesh serves its last list meanwhile.
async fn watch_endpoints(client: Client, answers: mpsc::Sender<EndpointList>) {
    let mut index = 0;
    let mut retry = Retry::default();
    loop {
        match client.endpoints(index, WATCH_WAIT).await {
            Ok(answer) => {
                retry.reset();
                index = answer.index;
                if answers.send(answer).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!("endpoint list: {e}; serving the last one meanwhile");
                tokio::time::sleep(retry.next_delay()).await;
            }
        }
    }
}

/// The list `known` brought up to date with `answer`: replaced by a whole list, or changed by
/// the services it names and removes.
fn merge(known: Option<EndpointList>, answer: EndpointList) -> EndpointList {
    let Some(mut list) = known.filter(|_| !answer.full) else {
        return answer;
    };
    let changed: HashMap<&str, &ServiceEndpoints> = (answer.services.iter())
        .map(|s| (s.name.as_str(), s))
        .collect();
    list.services
        .retain(|s| !changed.contains_key(s.name.as_str()) && !answer.removed.contains(&s.name));
    list.services.extend(answer.services.iter().cloned());
    list.services.sort_by(|a, b| a.name.cmp(&b.name));
    list.index = answer.index;
    list.service_range = answer.service_range;
    list
}

/// A listening socket that may share its port with a listener on another address of it: a
/// published port on every address and a service's virtual IP on the same port number.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // Linux refuses a specific address beside a listening wildcard on the same port unless
    // both sockets allow port reuse; it still sends each connection to the most specific one.
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A UDP socket on `addr` that shares it as [`listen`] does. Two agents on one host with the
/// same service range (test clusters) then share its addresses instead of failing.
fn udp_shared(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other(
            "the node's DNS server listens on IPv4 only",
        ));
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket(AddressFamily::Inet, SockType::Datagram, flags, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// The balancer's endpoints for one port of a service: each task that has the port, draining
/// when the control plane says so or, for a task of this node (`node`), when its supervisor
/// says it stopped serving: it knows first.
fn endpoints(service: &ServiceEndpoints, port: &str, node: &str, view: &MeshView) -> Vec<Endpoint> {
    (service.endpoints.iter())
        .filter_map(|e: &TaskEndpoint| {
            let number = *e.ports.get(port)?;
            let stopped_here = e.node == node && view.serves_here(&e.task) == Some(false);
            Some(Endpoint {
                id: e.task.clone(),
                addr: SocketAddr::new(e.host, number),
                weight: service.load_balancer.weight(&e.node, e.version),
                state: if e.draining || stopped_here {
                    EndpointState::Draining
                } else {
                    EndpointState::Ready
                },
            })
        })
        .collect()
}

/// The balancer's settings from the service's.
fn config(spec: &spec::LoadBalancerSpec) -> Config {
    let algorithm = match spec.algorithm {
        BalanceAlgorithm::RoundRobin => Algorithm::RoundRobin,
        BalanceAlgorithm::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        BalanceAlgorithm::LeastConnections => Algorithm::LeastConnections,
        BalanceAlgorithm::P2c => Algorithm::P2c,
        BalanceAlgorithm::ConsistentHash => Algorithm::ConsistentHash(match &spec.hash_on {
            HashOn::ClientIp => HashKey::ClientIp,
            // Validated as a header name when the spec was accepted.
            HashOn::Header(name) => name
                .parse()
                .map(HashKey::Header)
                .unwrap_or(HashKey::ClientIp),
            HashOn::Cookie(name) => HashKey::Cookie(name.clone()),
        }),
    };
    Config {
        algorithm,
        ..Config::default()
    }
}

/// The names of the services' zone (see the module's documentation).
fn zone(services: &[ServiceEndpoints]) -> Zone {
    let mut zone = Zone::new();
    for service in services {
        let mut names = vec![format!("{}.{DOMAIN}", service.name)];
        if let Some(stack) = &service.stack {
            let short = spec::stack_short_name(&service.name, Some(stack));
            names.push(format!("{short}.{stack}.{DOMAIN}"));
        }
        for name in &names {
            if let Some(vip) = service.vip {
                zone.insert(name, Record::A(vip));
            }
            tasks_records(&mut zone, service, name);
        }
    }
    zone
}

/// `tasks.<name>`: the ready endpoints' addresses, and SRV records of their named ports.
fn tasks_records(zone: &mut Zone, service: &ServiceEndpoints, name: &str) {
    for e in service.endpoints.iter().filter(|e| !e.draining) {
        let address = match e.host {
            IpAddr::V4(v4) => Record::A(v4),
            IpAddr::V6(v6) => Record::Aaaa(v6),
        };
        zone.insert(&format!("tasks.{name}"), address.clone());
        let target = format!("{}.tasks.{name}", e.task.replace('.', "-"));
        zone.insert(&target, address);
        for port in service.ports.iter() {
            let Some(&number) = e.ports.get(&port.name) else {
                continue;
            };
            let transport = if port.protocol.is_udp() { "udp" } else { "tcp" };
            let srv = Record::Srv {
                priority: 0,
                weight: 1,
                port: number,
                target: target.clone(),
            };
            zone.insert(&format!("_{}._{transport}.{name}", port.name), srv);
        }
    }
}

/// Each service's name, stack and first numbered `VIP:port`, for tasks' variables.
fn service_addrs(services: &[ServiceEndpoints]) -> Vec<(String, Option<String>, SocketAddr)> {
    (services.iter())
        .filter_map(|s| {
            let vip = s.vip?;
            let port = s.ports.iter().find_map(PortSpec::service_port)?;
            let addr = SocketAddr::new(IpAddr::V4(vip), port);
            Some((s.name.clone(), s.stack.clone(), addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, stack: Option<&str>) -> ServiceEndpoints {
        ServiceEndpoints {
            name: name.into(),
            stack: stack.map(str::to_string),
            vip: Some(Ipv4Addr::new(10, 96, 0, 2)),
            ports: vec![PortSpec {
                container_port: Some(5432),
                ..PortSpec::named("pg")
            }],
            load_balancer: spec::LoadBalancerSpec::default(),
            drain_ms: 10_000,
            endpoints: vec![
                TaskEndpoint {
                    task: format!("{name}.1.1"),
                    node: "a".into(),
                    host: "10.0.0.1".parse().unwrap(),
                    ports: BTreeMap::from([("pg".into(), 20001)]),
                    version: 1,
                    draining: false,
                },
                TaskEndpoint {
                    task: format!("{name}.2.1"),
                    node: "b".into(),
                    host: "10.0.0.2".parse().unwrap(),
                    ports: BTreeMap::from([("pg".into(), 20002)]),
                    version: 1,
                    draining: true,
                },
            ],
        }
    }

    #[test]
    fn a_stack_service_is_named_in_full_and_inside_its_stack() {
        let zone = zone(&[service("shop_db", Some("shop"))]);
        let vip = [Record::A(Ipv4Addr::new(10, 96, 0, 2))];
        assert_eq!(zone.lookup("shop_db.outpost"), Some(&vip[..]));
        assert_eq!(zone.lookup("db.shop.outpost"), Some(&vip[..]));
        let tasks = [Record::A(Ipv4Addr::new(10, 0, 0, 1))];
        assert_eq!(
            zone.lookup("tasks.db.shop.outpost"),
            Some(&tasks[..]),
            "the draining endpoint is left out"
        );
        let srv = zone.lookup("_pg._tcp.shop_db.outpost").unwrap();
        assert_eq!(
            srv,
            [Record::Srv {
                priority: 0,
                weight: 1,
                port: 20001,
                target: "shop_db-1-1.tasks.shop_db.outpost".into()
            }]
        );
        assert_eq!(
            zone.lookup("shop_db-1-1.tasks.shop_db.outpost"),
            Some(&tasks[..])
        );
    }

    #[test]
    fn endpoints_carry_the_ports_host_port_and_drain_while_stopping() {
        let view = MeshView::default();
        let got = endpoints(&service("db", None), "pg", "a", &view);
        let summary: Vec<(String, EndpointState)> =
            got.iter().map(|e| (e.addr.to_string(), e.state)).collect();
        assert_eq!(
            summary,
            [
                ("10.0.0.1:20001".to_string(), EndpointState::Ready),
                ("10.0.0.2:20002".to_string(), EndpointState::Draining),
            ]
        );
        assert!(endpoints(&service("db", None), "other", "a", &view).is_empty());
    }

    #[test]
    fn a_task_here_that_stops_serving_leaves_at_once_and_one_elsewhere_waits_for_the_list() {
        let view = MeshView::default();
        let mut changed = view.local_changes.subscribe();
        let db = service("db", None);
        view.note_local("db.1.1", false);
        assert!(changed.has_changed().unwrap());
        changed.mark_unchanged();
        let states = |node: &str| -> Vec<(String, EndpointState)> {
            (endpoints(&db, "pg", node, &view).into_iter())
                .map(|e| (e.id, e.state))
                .collect()
        };
        let draining = EndpointState::Draining;
        assert_eq!(
            states("a"),
            [("db.1.1".into(), draining), ("db.2.1".into(), draining)],
            "db.1.1 runs here and its supervisor said so; db.2.1 drains by the list"
        );
        assert_eq!(
            states("b")[0],
            ("db.1.1".into(), EndpointState::Ready),
            "a node's word counts for its own tasks only"
        );
        view.note_local("db.1.1", false);
        assert!(!changed.has_changed().unwrap(), "no news, no wake");
        view.note_local("db.1.1", true);
        assert_eq!(states("a")[0], ("db.1.1".into(), EndpointState::Ready));
    }

    #[test]
    fn a_partial_answer_changes_only_what_it_names() {
        let list = |full, services: Vec<ServiceEndpoints>, removed: Vec<&str>| EndpointList {
            index: 1,
            service_range: ServiceRange::DEFAULT,
            full,
            services,
            removed: removed.into_iter().map(str::to_string).collect(),
        };
        let known = list(true, vec![service("a", None), service("b", None)], vec![]);
        let mut changed = service("b", None);
        changed.endpoints.clear();
        let answer = list(false, vec![changed.clone(), service("c", None)], vec!["a"]);
        let merged = merge(Some(known.clone()), answer);
        let names: Vec<&str> = merged.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(merged.services[0], changed);
        let whole = merge(Some(known), list(true, vec![service("z", None)], vec![]));
        assert_eq!(
            whole.services.len(),
            1,
            "a whole list replaces what was known"
        );
    }

    #[test]
    fn tasks_get_every_services_address_and_their_stacks_by_short_name() {
        let view = MeshView::default();
        view.write().services =
            service_addrs(&[service("shop_db", Some("shop")), service("cache", None)]);
        let vars = view.service_vars(Some("shop"));
        assert_eq!(vars["OUTPOST_SERVICE_SHOP_DB_ADDR"], "10.96.0.2:5432");
        assert_eq!(vars["OUTPOST_SERVICE_DB_ADDR"], "10.96.0.2:5432");
        assert_eq!(vars["OUTPOST_SERVICE_CACHE_ADDR"], "10.96.0.2:5432");
        assert!(
            !view
                .service_vars(None)
                .contains_key("OUTPOST_SERVICE_DB_ADDR")
        );
    }
}
