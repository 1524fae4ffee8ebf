//! Multi-host tests: servers and agents as containers on a Docker network of the test's own
//! (see `support/hosts.rs`), and the faults of an edge site dealt to them: a crash, a freeze, a
//! cut cable, a cut uplink, a lossy link, a reboot while the servers are gone, and a partitioned
//! leader. Each checks what an operator sees: node states, replica counts, the tasks that answer
//! on the hosts, and that no acknowledged write is lost.
//!
//! Where no Docker Engine answers these tests print why and pass, except under CI.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::hosts::{API_PORT, HOST_PATIENCE, Proxy, Site, greeting, ready_on, task_port};
use support::wait_within;

/// Three replicas of the demo app, which an agent in a container runs as processes; replaced
/// 2 s after their node goes `down` (the default `on_node_lost`).
const WEB: &str = r#"
name: web
replicas: 3
command: ["/demo-app", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
stop_grace: 2s
"#;

/// A server `s1` and agents `a1`, `a2`, `a3`, running `web` one replica on each.
fn site_with_web(label: &str) -> Option<Site> {
    let mut site = Site::new(label, "s1")?;
    for name in ["a1", "a2", "a3"] {
        site.agent(name);
    }
    spread_web(&site);
    Some(site)
}

/// Deploys `web` and waits until a replica is ready on each of `a1`, `a2`, `a3`.
fn spread_web(site: &Site) {
    site.deploy(WEB);
    wait_within(
        HOST_PATIENCE,
        "web ready, one replica on each agent",
        || {
            let tasks = site.ps("web");
            let spread = ["a1", "a2", "a3"]
                .iter()
                .all(|n| ready_on(&tasks, n).len() == 1);
            spread.then_some(())
        },
    );
}

/// The ids of the demo apps answering on the hosts at the ports of `tasks`, each with the host
/// it answers on. A task's process answers on its own node's address only.
fn answering(site: &Site, tasks: &[Value]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for t in tasks {
        let (Some(node), Some(port), Some(id)) =
            (t["node"].as_str(), task_port(t, "http"), t["id"].as_str())
        else {
            continue;
        };
        if greeting(site.host(node).ip, port).is_some_and(|body| body.contains(id)) {
            out.insert((node.to_string(), id.to_string()));
        }
    }
    out
}

/// Waits until `web` has exactly `n` tasks wanted running, all ready, and exactly those answer
/// on the hosts: no task stopped by the control plane still serves anywhere.
fn wait_settled(site: &Site, n: usize, seen: &[Value]) -> Vec<Value> {
    wait_within(
        HOST_PATIENCE,
        &format!("web settled at {n} replicas"),
        || {
            let tasks = site.ps("web");
            let wanted: Vec<Value> = (tasks.iter())
                .filter(|t| t["desired"] == "running")
                .cloned()
                .collect();
            let ready = (wanted.iter())
                .filter(|t| t["ready"] == true && t["state"] == "running")
                .count();
            let mut all = tasks.clone();
            all.extend_from_slice(seen);
            let serving = answering(site, &all);
            let wanted_ids: BTreeSet<String> = (wanted.iter())
                .filter_map(|t| t["id"].as_str().map(str::to_string))
                .collect();
            let serving_ids: BTreeSet<String> = serving.iter().map(|(_, id)| id.clone()).collect();
            (wanted.len() == n && ready == n && serving_ids == wanted_ids).then_some(wanted)
        },
    )
}

/// Watches `services` until the tasks on `lost` are replaced and `web` is ready again on the
/// other agents; meanwhile a task on `lost` is never counted ready.
fn watch_replacement(site: &Site, lost: &str) {
    let others: Vec<&str> = ["a1", "a2", "a3"]
        .into_iter()
        .filter(|n| *n != lost)
        .collect();
    let mut seen_lost = false;
    wait_within(HOST_PATIENCE, "3 web replicas ready on the others", || {
        let state = site.node(lost)?["state"].clone();
        let (ready, _) = site.counts("web")?;
        let tasks = site.ps("web");
        let elsewhere: usize = others.iter().map(|n| ready_on(&tasks, n).len()).sum();
        if state == "down" {
            seen_lost = true;
            // The others' ready tasks only grow, so a true count never exceeds what they show
            // right after it.
            assert!(
                ready as usize <= elsewhere,
                "services counts {ready} ready while {lost} is down and the others have \
                 {elsewhere}:\n{tasks:#?}"
            );
            for t in tasks.iter().filter(|t| t["node"] == lost) {
                assert_eq!(t["ready"], false, "a task on a down node is not ready: {t}");
            }
        }
        (seen_lost && elsewhere == 3 && ready == 3).then_some(())
    });
}

#[test]
fn a_killed_agent_container_is_down_and_its_replicas_run_on_the_others() {
    let Some(site) = site_with_web("kill") else {
        return;
    };
    // Logs of a task on another host come through that agent's advertised address.
    let logs = site.ok(&["logs", "web"]);
    assert_eq!(
        logs.matches("demo-app: listening on port").count(),
        3,
        "each replica's output, from three hosts:\n{logs}"
    );
    let before = site.ps("web");

    site.host("a2").kill();
    let down = site.wait_node("a2", "down");
    assert!(down["phi"].as_f64().unwrap_or(0.0) >= 8.0, "{down}");
    watch_replacement(&site, "a2");
    for name in ["a1", "a3"] {
        assert_eq!(site.node(name).unwrap()["state"], "ready", "{name} is fine");
    }
    let settled = wait_settled(&site, 3, &before);
    assert!(settled.iter().all(|t| t["node"] != "a2"), "{settled:#?}");
    assert_eq!(site.counts("web"), Some((3, 3)));
    // The replicas elsewhere answer, and a2's tasks are gone with it.
    assert_eq!(answering(&site, &settled).len(), 3);
}

#[test]
fn a_paused_agent_is_down_and_once_thawed_stops_what_was_replaced() {
    let Some(site) = site_with_web("pause") else {
        return;
    };
    let before = site.ps("web");
    let a2 = site.host("a2");
    let frozen: Vec<Value> = ready_on(&before, "a2");

    a2.pause();
    site.wait_node("a2", "down");
    watch_replacement(&site, "a2");
    a2.unpause();

    // From here on three replicas are ready elsewhere; the thawed node must never take the
    // count below them while it reconciles, and its replaced task must stop.
    wait_within(HOST_PATIENCE, "a2 ready, its replaced task stopped", || {
        let (ready, replicas) = site.counts("web")?;
        assert!(ready >= replicas, "web fell to {ready}/{replicas} ready");
        let state = site.node("a2")?["state"].clone();
        let still = answering(&site, &frozen);
        (state == "ready" && still.is_empty()).then_some(())
    });
    let settled = wait_settled(&site, 3, &before);
    assert_eq!(answering(&site, &settled).len(), 3, "{settled:#?}");
    assert_eq!(site.counts("web"), Some((3, 3)), "the deployed count holds");
    let transitions = site.node_transitions("a2");
    assert!(
        transitions.iter().any(|m| m.contains("down")),
        "{transitions:?}"
    );
}

#[test]
fn a_disconnected_agent_follows_the_desired_state_once_reconnected() {
    let Some(site) = site_with_web("disconnect") else {
        return;
    };
    let before = site.ps("web");
    let a2 = site.host("a2");

    a2.disconnect();
    site.wait_node("a2", "down");
    watch_replacement(&site, "a2");
    // The operator changes the desired state while a2 is away.
    site.ok(&["scale", "web", "2"]);
    wait_settled(&site, 2, &before);

    a2.connect();
    site.wait_node("a2", "ready");
    // The control plane's state wins: two replicas, none of them a2's old one, which stops.
    let settled = wait_settled(&site, 2, &before);
    let old: Vec<String> = ready_on(&before, "a2")
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert!(
        settled.iter().all(|t| !old.iter().any(|id| t["id"] == *id)),
        "a2's old task was replaced while it was away: {settled:#?}"
    );
    assert_eq!(site.counts("web"), Some((2, 2)));
}

#[test]
fn an_agent_cut_off_from_the_servers_only_is_unreachable_and_keeps_serving() {
    let Some(site) = site_with_web("uplink") else {
        return;
    };
    let before = site.ps("web");
    let mine = ready_on(&before, "a2");
    let a2 = site.host("a2");
    for server in site.servers() {
        a2.block(server.ip);
    }
    site.wait_node("a2", "unreachable");
    // Edge autonomy: its task goes on serving, and stays wanted where it is (an unreachable
    // node's tasks are replaced only after minutes).
    let watched = Instant::now();
    wait_within(HOST_PATIENCE, "10 s of a2 unreachable", || {
        assert_eq!(
            answering(&site, &mine).len(),
            1,
            "a2's task serves while its node is cut off"
        );
        let node = site.node("a2")?;
        assert_eq!(node["state"], "unreachable", "{node}");
        (watched.elapsed() >= Duration::from_secs(10)).then_some(())
    });
    let tasks = site.ps("web");
    assert_eq!(
        (tasks.iter()).filter(|t| t["desired"] == "running").count(),
        3,
        "nothing replaced: {tasks:#?}"
    );
    assert!(
        tasks
            .iter()
            .any(|t| t["node"] == "a2" && t["desired"] == "running"),
        "{tasks:#?}"
    );

    a2.heal();
    site.wait_node("a2", "ready");
    let settled = wait_settled(&site, 3, &before);
    assert_eq!(ready_on(&settled, "a2").len(), 1, "{settled:#?}");
}

#[test]
fn twenty_percent_loss_and_jitter_on_an_agent_raise_no_down_verdict() {
    let Some(mut site) = Site::new("loss", "s1") else {
        return;
    };
    // a2 reaches the server through a proxy that holds each chunk up to 200 ms, and loses a
    // fifth of its packets, both ways, whoever it talks to.
    let server = SocketAddr::from((site.host("s1").ip, API_PORT));
    let jitter = Duration::from_millis(200);
    let proxy = Proxy::start(
        (site.net.gateway(), 0).into(),
        server,
        Duration::ZERO,
        jitter,
    );
    site.agent("a1");
    site.agent_through("a2", &proxy.addr.to_string());
    site.agent("a3");
    spread_web(&site);
    let a2 = site.host("a2");
    a2.loss(0.2);
    let started = Instant::now();
    let mut states = BTreeSet::new();
    wait_within(HOST_PATIENCE, "60 s of 20% loss on a2", || {
        if let Some(node) = site.node("a2") {
            states.insert(node["state"].as_str().unwrap_or_default().to_string());
        }
        (started.elapsed() >= Duration::from_secs(60)).then_some(())
    });
    a2.heal();
    let downs: Vec<String> = (site.node_transitions("a2").into_iter())
        .filter(|m| m.contains("down"))
        .collect();
    assert!(downs.is_empty(), "false down verdicts: {downs:?}");
    assert!(!states.contains("down"), "states seen: {states:?}");
    site.wait_node("a2", "ready");
    // Its task's own probes felt the loss too; once healed, every replica is ready again.
    wait_within(HOST_PATIENCE, "every replica of web ready again", || {
        (site.counts("web") == Some((3, 3))).then_some(())
    });
}

#[test]
fn an_agent_rebooted_while_every_server_is_stopped_restarts_its_tasks_and_reconciles() {
    let Some(mut site) = Site::new("reboot", "s1") else {
        return;
    };
    site.agent("a1");
    site.agent("a2");
    site.deploy(WEB);
    wait_within(HOST_PATIENCE, "3 web replicas ready", || {
        let tasks = site.ps("web");
        (ready_on(&tasks, "a1").len() + ready_on(&tasks, "a2").len() == 3).then_some(tasks)
    });
    let before = site.ps("web");
    let on_a1: BTreeSet<String> = (ready_on(&before, "a1").iter())
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert!(!on_a1.is_empty(), "{before:#?}");

    let s1 = site.host("s1");
    s1.kill();
    let a1 = site.host("a1");
    a1.reboot();
    // With no server to ask, a1 starts its tasks again from its own store.
    let serving = wait_within(HOST_PATIENCE, "a1's tasks serving after its reboot", || {
        let ids = scan_tasks(a1.ip);
        (ids == on_a1).then_some(ids)
    });
    assert_eq!(serving, on_a1);

    s1.start_again();
    site.wait_leader();
    site.wait_node("a1", "ready");
    site.wait_node("a2", "ready");
    let settled = wait_settled(&site, 3, &before);
    let mut now: Vec<String> = scan_tasks(a1.ip).into_iter().collect();
    now.extend(scan_tasks(site.host("a2").ip));
    assert_eq!(
        now.len(),
        3,
        "no duplicates after reconciling: {now:?} {settled:#?}"
    );
    assert_eq!(site.counts("web"), Some((3, 3)), "the deployed count holds");
}

/// Task ids of the demo apps answering at any of the agent's task ports on `ip`.
fn scan_tasks(ip: std::net::Ipv4Addr) -> BTreeSet<String> {
    let (first, last) = support::hosts::TASK_PORTS.split_once('-').unwrap();
    let ports = first.parse::<u16>().unwrap()..=last.parse::<u16>().unwrap();
    let mut ids = BTreeSet::new();
    for port in ports {
        let addr = std::net::SocketAddr::from((ip, port));
        // Nothing listening refuses at once; only a port in use is asked.
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
            continue;
        }
        if let Some(id) = greeting(ip, port).and_then(|body| task_id_in(&body)) {
            ids.insert(id);
        }
    }
    ids
}

/// The task id the demo app's greeting names.
fn task_id_in(body: &str) -> Option<String> {
    let (_, rest) = body.split_once("\r\n\r\n")?;
    let (_, after) = rest.split_once(" from ")?;
    after.split_whitespace().next().map(str::to_string)
}

/// Writes `scale load N` with N growing, from a thread, while the test deals faults; records
/// each N whose write was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(site: &Site) -> Load {
        let api = site.api();
        let cli = site.client();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 1u64;
            while !stop2.load(Ordering::Relaxed) {
                let (ok, _, _) = cli.run(&api, &["scale", "load", &n.to_string()]);
                if ok {
                    acked2.lock().unwrap().push(n);
                }
                n += 1;
            }
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acked()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A service with no agent to run it: its replicas count is the register the load writes.
const LOAD: &str = r#"
name: load
replicas: 0
command: ["/demo-app", "--port", "${PORT}"]
ports: [{ name: http }]
"#;

/// The replica counts the events say `load` was scaled to, read through the server at `api`.
fn scaled_to(site: &Site, api: &str) -> Option<BTreeSet<u64>> {
    let (ok, out, _) = site.cli_at(api, &["-o", "json", "events", "--service", "load"]);
    let events: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let counts = (events.as_array()?.iter())
        .filter(|e| e["reason"] == "scaled")
        .filter_map(|e| {
            let m = e["message"].as_str()?;
            let (_, to) = m.split_once(" to ")?;
            to.split_whitespace().next()?.parse().ok()
        })
        .collect();
    Some(counts)
}

fn leader_name(site: &Site) -> Option<String> {
    let nodes = site.try_json(&["nodes"])?;
    let leader = nodes.as_array()?.iter().find(|n| n["leader"] == true)?;
    leader["name"].as_str().map(str::to_string)
}

#[test]
fn a_partitioned_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let Some(mut site) = Site::new("leader", "s1") else {
        return;
    };
    site.join_server("s2");
    site.join_server("s3");
    site.deploy(LOAD);
    let load = Load::start(&site);
    // Printed with a failure: how long each step took.
    let began = Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", began.elapsed().as_secs_f64());
    wait_within(HOST_PATIENCE, "writes acknowledged", || {
        (load.acked().len() >= 5).then_some(())
    });

    let old = leader_name(&site).expect("a leader");
    let cut = site.host(&old);
    cut.disconnect();
    let acked_at_cut = load.acked().len();
    let new = wait_within(HOST_PATIENCE, "a new leader taking writes", || {
        let new = leader_name(&site).filter(|n| *n != old)?;
        (load.acked().len() >= acked_at_cut + 5).then_some(new)
    });
    assert_ne!(new, old);
    step("a new leader takes writes");

    cut.connect();
    let api_of = |h: &support::hosts::Host| format!("https://{}:{}", h.ip, API_PORT);
    wait_within(HOST_PATIENCE, "the old leader back, following", || {
        let (ok, out, _) = site.cli_at(&api_of(cut), &["-o", "json", "nodes"]);
        let nodes: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let leaders: Vec<&Value> = (nodes.as_array()?.iter())
            .filter(|n| n["leader"] == true)
            .collect();
        (leaders.len() == 1 && leaders[0]["name"] != old.as_str()).then_some(())
    });
    step("the old leader follows");

    // A leader cut from its peers but not from the operator soon stops answering: a write
    // sent to it alone fails, says why, and is never applied. A CLI that knows the other
    // servers too goes on to them, where the majority has elected a new leader.
    let leader = leader_name(&site).expect("a leader");
    let lonely = site.host(&leader);
    let others: Vec<&support::hosts::Host> = (site.servers().into_iter())
        .filter(|h| h.name != leader)
        .collect();
    for peer in &others {
        lonely.block(peer.ip);
    }
    let acked_at_block = load.acked().len();
    let (ok, _, err) = site.cli_at(&api_of(lonely), &["scale", "load", "9000"]);
    assert!(!ok, "a leader cut from its group took a write");
    assert!(err.contains("majority"), "a refused write says why: {err}");
    let lonely_first: Vec<String> = (std::iter::once(lonely).chain(others.iter().copied()))
        .map(api_of)
        .collect();
    let (ok, _, err) = site.cli_at(&lonely_first.join(","), &["scale", "load", "9001"]);
    assert!(
        ok,
        "a CLI that knows a leader elsewhere did not go on to it: {err}"
    );
    wait_within(HOST_PATIENCE, "the majority taking writes", || {
        (load.acked().len() >= acked_at_block + 5).then_some(())
    });
    step("the majority takes writes");
    lonely.heal();

    let acked = load.finish();
    assert!(acked.len() > acked_at_cut, "writes went on after the cut");
    // Every server, the old leader too, holds every acknowledged write, and never the one the
    // minority refused.
    for server in site.servers() {
        let api = api_of(server);
        let seen = wait_within(
            HOST_PATIENCE,
            "every acknowledged write on each server",
            || {
                (scaled_to(&site, &api))
                    .filter(|s| s.contains(&9_001) && acked.iter().all(|n| s.contains(n)))
            },
        );
        assert!(!seen.contains(&9_000), "the refused write was applied");
    }
}

/// Two replicas behind a published HTTP port, one per agent.
const PUBLISHED_WEB: &str = r#"
name: web
replicas: 2
command: ["/demo-app", "--port", "${PORT}"]
ports: [{ name: http, publish: 8080, protocol: http }]
readiness: { tcp: { port: http }, period: 200ms }
"#;

#[test]
fn a_node_killed_under_steady_load_through_the_mesh_costs_no_failed_request() {
    let Some(mut site) = Site::new("mesh", "s1") else {
        return;
    };
    site.agent("a1");
    site.agent("a2");
    site.deploy(PUBLISHED_WEB);
    let a1 = site.host("a1").ip;
    wait_within(
        HOST_PATIENCE,
        "a replica on each node, both answering on a1",
        || {
            let tasks = site.ps("web");
            let spread = ready_on(&tasks, "a1").len() == 1 && ready_on(&tasks, "a2").len() == 1;
            let answering: BTreeSet<String> = (0..6)
                .filter_map(|_| greeting(a1, 8080))
                .filter_map(|g| {
                    g.split_whitespace()
                        .find(|w| w.starts_with("web."))
                        .map(str::to_string)
                })
                .collect();
            (spread && answering.len() == 2).then_some(())
        },
    );

    // A steady load on a1's published port, one request every 10 ms, while a2 dies.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<(Instant, bool)>::new()));
    let load = {
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let ok = greeting(a1, 8080).is_some();
                outcomes.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let count = || outcomes.lock().unwrap().len();
    wait_within(HOST_PATIENCE, "requests before the kill", || {
        (count() >= 50).then_some(())
    });
    site.host("a2").kill();
    let killed = Instant::now();
    site.wait_node("a2", "down");
    let down_after = killed.elapsed();
    let at_down = count();
    wait_within(HOST_PATIENCE, "requests after a2 is down", || {
        (count() >= at_down + 100).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let outcomes = outcomes.lock().unwrap();
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    let slowest = (outcomes.windows(2))
        .filter(|w| w[0].0 >= killed)
        .map(|w| w[1].0 - w[0].0)
        .max();
    println!(
        "{} requests, {failed} failed; a2 down {down_after:?} after the kill; longest gap \
         between answers after it {slowest:?}",
        outcomes.len()
    );
    assert_eq!(failed, 0, "no request failed while a2 died");
}
