//! Services finding each other, through the real binary: a service answers by name on its
//! virtual IP and on its published port on the node, from every ready replica; a process task
//! resolves it with glibc; traffic follows readiness and scale-down; a replica SIGKILLed under
//! a steady load costs no request; three containers of a Compose file call each other by name;
//! a taken published port is refused or reported; a consistent hash keeps a user on a replica;
//! a replica scaled away finishes its requests in flight; round robin spreads evenly and a
//! canary gets its revision's weight; least connections and p2c pick the idle replica; a
//! replica learns its client from `X-Forwarded-For` and from a PROXY protocol v2 header.
//!
//! Each test gives its cluster a service range of its own: the node's listeners share their
//! ports (SO_REUSEPORT) with those of another cluster on the same host and range.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{AgentNode, Dev, docker_image, wait_for};

/// Dev with the service range `10.201.N.0/24`.
fn dev_in_range(n: u8) -> (Dev, Ipv4Addr) {
    let range = format!("10.201.{n}.0/24");
    let dev = Dev::start_with_env(&[("OUTPOST_SERVICE_RANGE", &range)]);
    (dev, Ipv4Addr::new(10, 201, n, 1))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn web(replicas: u32, publish: u16) -> String {
    format!(
        "name: web\nreplicas: {replicas}\ncommand: [\"DEMO_APP\", \"--port\", \"${{PORT}}\"]\n\
         ports: [{{ name: http, container_port: 80, publish: {publish}, protocol: http }}]\n\
         readiness: {{ http: {{ path: /healthz, port: http }}, period: 200ms }}\n"
    )
}

/// `GET path` on `addr`: the status code and body; `None` when the connection fails.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_with(addr, path, "")
}

/// `GET path` with extra header lines (each ending in `\r\n`).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    request(
        addr,
        &format!("GET {path}"),
        headers,
        Duration::from_secs(10),
    )
}

/// `POST path` with an empty body: never sent again by the proxy once it reached a replica,
/// so a replica that dies under it fails it.
fn post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let headers = "Content-Length: 0\r\n";
    request(
        addr,
        &format!("POST {path}"),
        headers,
        Duration::from_secs(20),
    )
}

/// One HTTP/1.1 request (`METHOD PATH`, extra header lines) on its own connection, answered
/// within `patience`: the status code and body; `None` when the connection fails.
fn request(
    addr: SocketAddr,
    line: &str,
    headers: &str,
    patience: Duration,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(patience)).ok()?;
    write!(
        s,
        "{line} HTTP/1.1\r\nHost: web\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_string()))
}

/// The requests in flight through the node's listeners of `service`, as `outpost services`
/// shows them.
fn in_flight(dev: &Dev, service: &str) -> u64 {
    let traffic = dev.json(&["services", service]);
    (traffic["listeners"].as_array().into_iter().flatten())
        .filter_map(|l| l["counters"]["in_flight"].as_u64())
        .sum()
}

/// The task that answered: `web.1.1` of "hello from web.1.1 (pid 7)".
fn answered_by(body: &str) -> Option<String> {
    body.split_whitespace().nth(2).map(str::to_string)
}

/// The tasks that answer `n` requests in a row on `addr`.
fn answering(addr: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| get(addr, "/"))
        .filter(|(code, _)| *code == 200)
        .filter_map(|(_, body)| answered_by(&body))
        .collect()
}

/// An A record of `name`, asked of `server` over UDP with a hand-built query.
fn resolve(server: Ipv4Addr, name: &str) -> Option<Ipv4Addr> {
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(&query, (server, 53)).ok()?;
    let mut answer = [0u8; 512];
    let n = socket.recv(&mut answer).ok()?;
    let answer = &answer[..n];
    // One answer, its name a pointer to the question: type, class, TTL, length, then the IP.
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    let at = query.len() + 2 + 10;
    (count >= 1 && answer.len() >= at + 4)
        .then(|| Ipv4Addr::new(answer[at], answer[at + 1], answer[at + 2], answer[at + 3]))
}

#[test]
fn a_service_answers_by_name_on_its_virtual_ip_and_its_published_port_from_every_replica() {
    let (dev, dns) = dev_in_range(1);
    let publish = free_port();
    dev.deploy("web.yaml", &web(2, publish));
    dev.wait_ready("web", 2);
    let vip = wait_for("web.outpost to resolve", || resolve(dns, "web.outpost"));
    assert_eq!(
        vip,
        Ipv4Addr::new(10, 201, 1, 2),
        "the range's first free offset"
    );
    assert_eq!(resolve(dns, "nothing.outpost"), None);

    let both = BTreeSet::from(["web.1.1".to_string(), "web.2.2".to_string()]);
    for addr in [
        SocketAddr::from((vip, 80)),
        SocketAddr::from(([127, 0, 0, 1], publish)),
    ] {
        let seen = wait_for(&format!("both replicas to answer on {addr}"), || {
            let seen = answering(addr, 6);
            (seen == both).then_some(seen)
        });
        assert_eq!(seen, both);
    }

    // What the operator sees: where it answers, and each endpoint with its requests.
    let traffic = dev.json(&["services", "web"]);
    let listeners = traffic["listeners"].as_array().unwrap();
    let listens: BTreeSet<&str> = listeners
        .iter()
        .map(|l| l["listen"].as_str().unwrap())
        .collect();
    let expected = BTreeSet::from(["10.201.1.2:80".to_string(), format!("0.0.0.0:{publish}")]);
    assert_eq!(listens, expected.iter().map(String::as_str).collect());
    for listener in listeners {
        for endpoint in listener["endpoints"].as_array().unwrap() {
            assert_eq!(endpoint["health"], "ready", "{listener}");
            assert!(
                endpoint["counters"]["requests"].as_u64().unwrap() >= 1,
                "{listener}"
            );
        }
    }
    let table = dev.ok(&["services", "web"]);
    assert!(table.contains("web http: 10.201.1.2:80 (http)"), "{table}");
    assert!(
        table.contains(&format!("port {publish} of every node")),
        "{table}"
    );
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("ready")).collect();
    assert_eq!(rows.len(), 2, "{table}");

    // Another service comes and goes: the node serves it, then no more (the node is told
    // only what changed since the list it has).
    let api_port = free_port();
    dev.deploy(
        "api.yaml",
        &web(1, api_port).replace("name: web", "name: api"),
    );
    let api_vip = wait_for("api.outpost to resolve", || resolve(dns, "api.outpost"));
    assert_eq!(api_vip, Ipv4Addr::new(10, 201, 1, 3));
    let api = SocketAddr::from(([127, 0, 0, 1], api_port));
    wait_for("api to answer on its published port", || get(api, "/"));
    dev.ok(&["rm", "api"]);
    wait_for("api's name and port to be gone", || {
        let gone = resolve(dns, "api.outpost").is_none() && TcpStream::connect(api).is_err();
        gone.then_some(())
    });
    assert_eq!(resolve(dns, "web.outpost"), Some(vip), "web stays");
    assert_eq!(answering(SocketAddr::from((vip, 80)), 4).len(), 2);
}

#[test]
fn a_process_task_finds_a_service_by_name_with_its_own_resolver() {
    if !support::root_with_unshare() {
        return;
    }
    let (dev, dns) = dev_in_range(2);
    dev.deploy("web.yaml", &web(1, free_port()));
    dev.wait_ready("web", 1);
    // Once the node serves the name, it gives tasks the variable too.
    wait_for("web.outpost to resolve", || resolve(dns, "web.outpost"));
    // glibc's own resolver, in the task's mount namespace, through the node's DNS server.
    let client = "name: client\ncommand: [sh, -c, 'getent hosts web; getent hosts web.outpost; \
                  echo ADDR=$OUTPOST_SERVICE_WEB_ADDR; exec sleep 600']\n";
    dev.deploy("client.yaml", client);
    let log = wait_for("the client's lookups", || {
        let log = dev.ok(&["logs", "client"]);
        log.contains("ADDR=").then_some(log)
    });
    let lines: Vec<&str> = log.lines().collect();
    let has = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(has("10.201.2.2") && has("web.outpost"), "{log}");
    assert!(has("ADDR=10.201.2.2:80"), "{log}");
    // Each line of the log is `TASK | LINE`; getent prints the name it found.
    let lookups = (lines.iter())
        .filter(|l| l.contains("| 10.201.2.2 ") && l.ends_with(" web.outpost"))
        .count();
    assert_eq!(lookups, 2, "the short name and the full one: {log}");
}

#[test]
fn traffic_follows_readiness_and_leaves_a_replica_scaled_away() {
    let (dev, _) = dev_in_range(3);
    let publish = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    dev.deploy("web.yaml", &web(3, publish));
    let tasks = dev.wait_ready("web", 3);
    wait_for("all three replicas to answer", || {
        (answering(addr, 9).len() == 3).then_some(())
    });

    // One replica's readiness fails: it gets no more requests, and none fails. The last slot,
    // which the scale-down below takes away.
    let sick = tasks[2]["id"].as_str().unwrap().to_string();
    let port = tasks[2]["ports"]["http"].as_u64().unwrap();
    assert_eq!(
        get(([127, 0, 0, 1], port as u16).into(), "/fail")
            .unwrap()
            .0,
        200
    );
    wait_for("the unready replica to get no requests", || {
        let seen = answering(addr, 9);
        (seen.len() == 2 && !seen.contains(&sick)).then_some(())
    });

    // Scale down: the replicas stopped get no more requests either.
    dev.ok(&["scale", "web", "1"]);
    wait_for("one replica left answering", || {
        (answering(addr, 6).len() == 1).then_some(())
    });
    let failed: Vec<u16> = (0..20)
        .filter_map(|_| get(addr, "/"))
        .map(|(code, _)| code)
        .filter(|code| *code != 200)
        .collect();
    assert_eq!(failed, Vec::<u16>::new());
}

#[test]
fn a_replica_scaled_away_finishes_the_requests_it_has_in_flight() {
    let (dev, _) = dev_in_range(8);
    let publish = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    dev.deploy("web.yaml", &(web(2, publish) + "stop_grace: 20s\n"));
    let tasks = dev.wait_ready("web", 2);
    wait_for("both replicas to answer", || {
        (answering(addr, 6).len() == 2).then_some(())
    });
    let leaving = tasks[1]["id"].as_str().unwrap().to_string();

    // Four slow POSTs, two on each replica: a POST that reached a replica is never sent again,
    // so one cut off by its replica's end fails.
    let slow: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || post(addr, "/slow/3000")))
        .collect();
    wait_for("four requests in flight", || {
        (in_flight(&dev, "web") == 4).then_some(())
    });
    let asked = Instant::now();
    dev.ok(&["scale", "web", "1"]);
    let draining = dev.wait_event(&leaving, "draining");
    assert!(
        draining["message"]
            .as_str()
            .unwrap()
            .contains("connection(s) open"),
        "{draining}"
    );
    // No new request reaches the replica that drains.
    let seen = answering(addr, 6);
    assert!(
        !seen.contains(&leaving),
        "{leaving} still got requests: {seen:?}"
    );

    let answers: Vec<_> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    let served: BTreeSet<String> = (answers.iter().flatten())
        .filter_map(|(_, body)| answered_by(body))
        .collect();
    assert!(
        answers.iter().all(|a| matches!(a, Some((200, _)))),
        "every request in flight finished: {answers:?}"
    );
    assert!(served.contains(&leaving), "{served:?}");
    dev.wait_event(&leaving, "stopped");
    let drained_in = asked.elapsed();
    let events = dev.events();
    let gave_up = (events.iter())
        .filter(|e| e["task"] == leaving.as_str())
        .find(|e| e["reason"] == "drain-timeout" || e["reason"] == "killed");
    assert!(gave_up.is_none(), "{gave_up:?}");
    println!("the replica drained and stopped {drained_in:?} after the scale-down");
}

#[test]
fn a_replica_killed_under_steady_load_costs_no_failed_request() {
    let (dev, _) = dev_in_range(4);
    let publish = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    dev.deploy("web.yaml", &web(2, publish));
    let tasks = dev.wait_ready("web", 2);
    wait_for("both replicas to answer", || {
        (answering(addr, 6).len() == 2).then_some(())
    });
    let victim = tasks[0]["id"].as_str().unwrap().to_string();
    let pid = tasks[0]["pid"].as_u64().unwrap();

    // A steady load of idempotent requests, one every 5 ms, across the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let last_on_victim = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let last_on_victim = last_on_victim.clone();
        let victim = victim.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                match get(addr, "/") {
                    Some((200, body)) => {
                        if answered_by(&body).as_deref() == Some(victim.as_str()) {
                            *last_on_victim.lock().unwrap() = Some(Instant::now());
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    wait_for("some requests before the kill", || {
        (sent.load(Ordering::SeqCst) >= 50).then_some(())
    });
    support::sigkill(pid);
    let killed = Instant::now();
    let before = sent.load(Ordering::SeqCst);
    wait_for("the load to go on past the kill", || {
        (sent.load(Ordering::SeqCst) >= before + 200).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let answered_after = last_on_victim
        .lock()
        .unwrap()
        .map(|at| at.saturating_duration_since(killed));
    println!(
        "requests: {} sent, {} failed; the killed replica answered last {:?} after the kill",
        sent.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        answered_after
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
}

#[test]
fn three_containers_of_a_compose_file_call_each_other_by_name() {
    let Some(image) = docker_image() else {
        return;
    };
    let (dev, _) = dev_in_range(5);
    let publish = free_port();
    let compose = format!(
        r#"
services:
  proxy:
    image: {image}
    command: ["--port", "8080", "--upstream", "api:8080"]
    ports: ["{publish}:8080"]
  api:
    image: {image}
    command: ["--port", "8080", "--upstream", "db:5432"]
    expose: ["8080"]
    depends_on: [db]
  db:
    image: {image}
    command: ["--port", "5432"]
    expose: ["5432"]
"#
    );
    let dir = dev.data_dir().join("shop");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(&file, compose).unwrap();
    dev.ok(&["deploy", "-f", file.to_str().unwrap()]);
    for service in ["shop_proxy", "shop_api", "shop_db"] {
        dev.wait_ready(service, 1);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    let body = wait_for("the chain to answer end to end", || {
        get(addr, "/")
            .filter(|(code, _)| *code == 200)
            .map(|(_, b)| b)
    });
    let hops: Vec<String> = (body.split(" -> "))
        .filter_map(answered_by)
        .filter_map(|task| Some(task.split_once('.')?.0.to_string()))
        .collect();
    assert_eq!(hops, ["shop_proxy", "shop_api", "shop_db"], "{body}");
}

#[test]
fn a_published_port_that_is_taken_is_refused_at_deploy_or_told_by_the_node() {
    let (dev, _) = dev_in_range(6);
    let publish = free_port();
    dev.deploy("web.yaml", &web(1, publish));
    // Another service publishing the same port: refused whole, naming both.
    let api = format!(
        "name: api\ncommand: [\"DEMO_APP\"]\nports: [{{ name: http, publish: {publish} }}]\n"
    );
    let path = dev.spec_file("api.yaml", &api);
    let err = dev.fails(&["deploy", "-f", path.to_str().unwrap()]);
    assert!(
        err.contains("api.ports[0].publish") && err.contains("\"web\" publishes it too"),
        "{err}"
    );
    assert_eq!(dev.json(&["services"]).as_array().unwrap().len(), 1);
    // Nor may another service bind it as a fixed host port, which the mesh holds on every node.
    let fixed = format!(
        "name: fixed\ncommand: [\"DEMO_APP\"]\nports: [{{ name: http, host_port: {publish} }}]\n"
    );
    let path = dev.spec_file("fixed.yaml", &fixed);
    let err = dev.fails(&["deploy", "-f", path.to_str().unwrap()]);
    assert!(
        err.contains("fixed.ports[0].host_port") && err.contains("by service \"web\""),
        "{err}"
    );
    assert_eq!(dev.json(&["services"]).as_array().unwrap().len(), 1);

    // Another program listening on the port: the node says it cannot serve it.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let api = format!(
        "name: api\ncommand: [\"DEMO_APP\", \"--port\", \"${{PORT}}\"]\n\
         ports: [{{ name: http, publish: {port} }}]\n"
    );
    dev.deploy("api.yaml", &api);
    // (Its virtual IP's listener on the same port cannot be had beside that program's either.)
    let published = format!("0.0.0.0:{port}");
    let event = wait_for("the node to say it cannot listen", || {
        (dev.events().into_iter()).find(|e| {
            e["reason"] == "not-listening"
                && e["service"] == "api"
                && e["message"].as_str().unwrap().contains(&published)
        })
    });
    let message = event["message"].as_str().unwrap();
    assert!(message.contains("another program"), "{message}");
    assert_eq!(event["node"], "local");
}

#[test]
fn a_consistent_hash_on_a_header_keeps_each_user_on_one_replica() {
    let (dev, _) = dev_in_range(7);
    let publish = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    let spec =
        web(3, publish) + "load_balancer: { algorithm: consistent_hash, hash_on: header:X-User }\n";
    dev.deploy("web.yaml", &spec);
    dev.wait_ready("web", 3);
    let served = |user: &str| -> BTreeSet<String> {
        (0..8)
            .filter_map(|_| get_with(addr, "/", &format!("X-User: {user}\r\n")))
            .filter_map(|(code, body)| (code == 200).then(|| answered_by(&body)).flatten())
            .collect()
    };
    // Every replica in the listener first, so the users' places are settled.
    let published = format!("0.0.0.0:{publish}");
    wait_for("the published listener to hold all three replicas", || {
        let traffic = dev.json(&["services", "web"]);
        let listeners = traffic["listeners"].as_array()?.clone();
        let mine = listeners
            .iter()
            .find(|l| l["listen"] == published.as_str())?;
        (mine["endpoints"].as_array()?.len() == 3).then_some(())
    });
    let mut places = BTreeSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let replicas = served(user);
        assert_eq!(replicas.len(), 1, "{user} went to {replicas:?}");
        places.extend(replicas);
    }
    assert!(places.len() >= 2, "six users on one replica: {places:?}");
}

/// How many of `n` requests on `addr` each task answered.
fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (code, body) in (0..n).filter_map(|_| get(addr, "/")) {
        assert_eq!(code, 200, "{body}");
        *counts.entry(answered_by(&body).unwrap()).or_default() += 1;
    }
    counts
}

/// Waits until the node's published listener of `web` holds `n` endpoints, none draining:
/// the balancer's set is settled.
fn wait_listener(dev: &Dev, publish: u16, n: usize) {
    let published = format!("0.0.0.0:{publish}");
    wait_for(
        &format!("the published listener to hold {n} ready replicas"),
        || {
            let traffic = dev.json(&["services", "web"]);
            let listeners = traffic["listeners"].as_array()?.clone();
            let mine = listeners
                .iter()
                .find(|l| l["listen"] == published.as_str())?;
            let endpoints = mine["endpoints"].as_array()?;
            let ready = endpoints.iter().filter(|e| e["health"] == "ready").count();
            (endpoints.len() == n && ready == n).then_some(())
        },
    );
}

#[test]
fn round_robin_spreads_evenly_and_a_canary_gets_the_weight_of_its_revision() {
    let (dev, _) = dev_in_range(9);
    let publish = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    dev.deploy("web.yaml", &web(3, publish));
    dev.wait_ready("web", 3);
    wait_listener(&dev, publish, 3);
    let even = spread(addr, 30);
    assert_eq!(
        even.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{even:?}"
    );

    // A canary of revision 2, weighted three to one against each replica of revision 1.
    let canary = web(3, publish)
        + "env: { GREETING: two }\n\
           update: { canary: 1, monitor: 1s }\n\
           load_balancer: { algorithm: weighted_round_robin, revision_weights: { 2: 3 } }\n";
    dev.deploy("web.yaml", &canary);
    let tasks = wait_for("one canary beside two replicas of revision 1", || {
        let tasks = dev.tasks("web");
        let ready = |v: u64| {
            (tasks.iter())
                .filter(|t| t["version"] == v && t["ready"] == true && t["state"] == "running")
                .count()
        };
        (tasks.len() == 3 && ready(1) == 2 && ready(2) == 1).then_some(tasks)
    });
    wait_listener(&dev, publish, 3);
    let version_of = |task: &str| {
        (tasks.iter())
            .find(|t| t["id"] == task)
            .and_then(|t| t["version"].as_u64())
    };
    let weighted = spread(addr, 50);
    let on = |v: u64| -> Vec<usize> {
        (weighted.iter())
            .filter(|(task, _)| version_of(task) == Some(v))
            .map(|(_, n)| *n)
            .collect()
    };
    // Smooth weighted round robin gives 3 of every 5 to the canary, the rest in turn.
    assert!(
        on(2).len() == 1 && on(2)[0].abs_diff(30) <= 1,
        "{weighted:?}"
    );
    assert!(
        on(1).len() == 2 && on(1).iter().all(|n| n.abs_diff(10) <= 1),
        "{weighted:?}"
    );
}

#[test]
fn least_connections_and_p2c_send_new_requests_to_the_idle_replica() {
    for (n, algorithm) in [(10, "least_connections"), (11, "p2c")] {
        let (dev, _) = dev_in_range(n);
        let publish = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], publish));
        let spec = web(2, publish) + &format!("load_balancer: {{ algorithm: {algorithm} }}\n");
        dev.deploy("web.yaml", &spec);
        dev.wait_ready("web", 2);
        wait_listener(&dev, publish, 2);

        // One slow request holds a replica busy; every request meanwhile goes to the other.
        let slow = std::thread::spawn(move || get(addr, "/slow/4000"));
        let busy = wait_for("one request in flight on one replica", || {
            let traffic = dev.json(&["services", "web"]);
            let endpoints = (traffic["listeners"].as_array()?.iter())
                .flat_map(|l| l["endpoints"].as_array().cloned().unwrap_or_default())
                .collect::<Vec<_>>();
            let busy = endpoints.iter().find(|e| e["counters"]["in_flight"] == 1)?;
            Some(busy["task"].as_str()?.to_string())
        });
        let meanwhile = spread(addr, 10);
        assert_eq!(meanwhile.len(), 1, "{algorithm}: {meanwhile:?}");
        assert!(
            !meanwhile.contains_key(&busy),
            "{algorithm}: {meanwhile:?} ({busy} busy)"
        );
        let (code, body) = slow.join().unwrap().expect("the slow request answered");
        assert_eq!(code, 200, "{body}");
        assert_eq!(answered_by(&body).as_deref(), Some(busy.as_str()));
    }
}

#[test]
fn a_replica_learns_its_client_from_forwarded_headers_and_from_the_proxy_protocol() {
    use std::io::{Read, Write};
    let (dev, _) = dev_in_range(12);
    let (http, tcp) = (free_port(), free_port());
    dev.deploy("web.yaml", &web(1, http));
    let raw = format!(
        "name: raw\ncommand: [\"DEMO_APP\", \"--port\", \"${{PORT}}\", \"--proxy-protocol\"]\n\
         ports: [{{ name: app, container_port: 80, publish: {tcp}, protocol: tcp }}]\n\
         readiness: {{ tcp: {{ port: app }}, period: 200ms }}\n\
         load_balancer: {{ proxy_protocol: true }}\n"
    );
    dev.deploy("raw.yaml", &raw);
    dev.wait_ready("web", 1);
    dev.wait_ready("raw", 1);

    let (code, body) = wait_for("web to answer on its published port", || {
        get(([127, 0, 0, 1], http).into(), "/client")
    });
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-forwarded-for 127.0.0.1\n"), "{body}");
    assert!(body.contains("proxy-protocol -\n"), "{body}");

    // Over TCP the replica is told the client's own address and port, not the proxy's.
    let (local, body) = wait_for("raw to answer on its published port", || {
        let mut s = TcpStream::connect(("127.0.0.1", tcp)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /client HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.1 200")
            .then(|| (s.local_addr().unwrap(), out))
    });
    assert!(
        body.contains(&format!("proxy-protocol {local}\n")),
        "{local}: {body}"
    );
    assert!(!body.contains(&format!("peer {local}\n")), "{body}");
}

#[test]
fn a_node_rebooted_cut_off_serves_names_and_published_ports_from_the_list_it_kept() {
    // The agent is given no range: it learns the servers'.
    let mut server = Dev::start_server_with_env(&[("OUTPOST_SERVICE_RANGE", "10.201.13.0/24")]);
    let (dns, vip) = (Ipv4Addr::new(10, 201, 13, 1), Ipv4Addr::new(10, 201, 13, 2));
    let mut node = AgentNode::start(&server, "n1", "23000-23999");
    let publish = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], publish));
    server.deploy("web.yaml", &web(2, publish));
    let tasks = server.wait_ready("web", 2);
    let last = tasks[1]["id"].as_str().unwrap().to_string();
    wait_for("both replicas to answer on the published port", || {
        (answering(addr, 6).len() == 2).then_some(())
    });
    wait_for("web to resolve on the node's DNS server", || {
        (resolve(dns, "web.outpost") == Some(vip)).then_some(())
    });
    let kept = node.dir.path().join("endpoints.json");
    wait_for("the node to keep its endpoint list", || {
        let text = std::fs::read_to_string(&kept).ok()?;
        text.contains(&last).then_some(())
    });

    // The control plane goes away, then the node reboots: its agent and tasks die with it.
    server.kill();
    node.crash();
    assert!(
        get(addr, "/").is_none(),
        "nothing answers while the node is down"
    );
    node.restart_cut_off();
    wait_for(
        "the rebooted node to answer on the published port, no server up",
        || (answering(addr, 6).len() == 2).then_some(()),
    );
    assert_eq!(resolve(dns, "web.outpost"), Some(vip));
    let log = node.log();
    assert!(log.contains("serving the endpoint list kept in"), "{log}");
}
