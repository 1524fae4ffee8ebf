//! Work moving off lost nodes, as an operator sees it: one `outpost server` and two
//! `outpost agent` processes on loopback, a node crashed with `kill -9` (its agent and its
//! tasks' processes), and what `services` and `ps` say meanwhile and after it comes back.
//!
//! Nothing here depends on how fast the failure detector is: every wait polls for what the
//! operator would look for, with a generous deadline.

mod support;

use serde_json::Value;
use support::{AgentNode, Dev, wait_for};

/// Four replicas, replaced 2 s after their node goes down (the default `on_node_lost`).
const WEB: &str = r#"
name: web
replicas: 4
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
stop_grace: 2s
"#;

/// Two replicas that stay on their node whatever happens to it.
const DB: &str = r#"
name: db
replicas: 2
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
stop_grace: 2s
on_node_lost: keep
"#;

/// A server and agents `n1` and `n2`, each handing out ports of its own.
fn cluster() -> (Dev, AgentNode, AgentNode) {
    let server = Dev::start_server();
    let n1 = AgentNode::start(&server, "n1", "21000-21999");
    let n2 = AgentNode::start(&server, "n2", "22000-22999");
    (server, n1, n2)
}

/// `ps -o json` of a service: every task the control plane holds.
fn ps(server: &Dev, service: &str) -> Vec<Value> {
    server.json(&["ps", service]).as_array().unwrap().clone()
}

/// Tasks wanted running, ready and running, on `node`.
fn ready_on(tasks: &[Value], node: &str) -> Vec<Value> {
    (tasks.iter())
        .filter(|t| t["node"] == node && t["desired"] == "running")
        .filter(|t| t["ready"] == true && t["state"] == "running")
        .cloned()
        .collect()
}

/// What `services -o json` says of a service: (ready, replicas).
fn counts(server: &Dev, service: &str) -> Option<(u64, u64)> {
    let services = server.json(&["services"]);
    let s = services.as_array()?.iter().find(|s| s["name"] == service)?;
    Some((s["ready"].as_u64()?, s["replicas"].as_u64()?))
}

fn ids(tasks: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().into())
        .collect();
    ids.sort();
    ids
}

fn pids(tasks: &[Value]) -> Vec<u64> {
    let mut pids: Vec<u64> = tasks.iter().map(|t| t["pid"].as_u64().unwrap()).collect();
    pids.sort();
    pids
}

#[test]
fn a_crashed_nodes_replicas_are_replaced_and_it_stops_only_what_was_replaced_when_back() {
    let (server, n1, mut n2) = cluster();
    server.deploy("web.yaml", WEB);
    server.deploy("db.yaml", DB);
    wait_for("web spread 2 and 2, db 1 and 1, all ready", || {
        let (web, db) = (ps(&server, "web"), ps(&server, "db"));
        let spread = [(&web, 2), (&db, 1)].iter().all(|(tasks, n)| {
            ready_on(tasks, "n1").len() == *n && ready_on(tasks, "n2").len() == *n
        });
        spread.then_some(())
    });
    let web_on_n2 = ids(&ready_on(&ps(&server, "web"), "n2"));
    let db_on_n2 = ids(&ready_on(&ps(&server, "db"), "n2"));

    let killed = n2.crash();
    assert_eq!(
        killed.len(),
        3,
        "n2 ran two web tasks and one db task: {killed:?}"
    );

    // Until the replacements are ready on n1, `services` must never count n2's tasks. Read in
    // this order: a node that is down stays down (its agent is dead), and n1's ready tasks only
    // grow, so a true count never exceeds what n1 shows right after it.
    let mut seen_down = false;
    let replaced = wait_for("4 ready web replicas on n1", || {
        let n2_state = server.node_named("n2")?["state"].clone();
        let (ready, replicas) = counts(&server, "web")?;
        let web = ps(&server, "web");
        let on_n1 = ready_on(&web, "n1");
        if n2_state == "down" {
            seen_down = true;
            assert!(
                ready as usize <= on_n1.len(),
                "services counts {ready}/{replicas} ready while n2 is down and n1 has {} ready",
                on_n1.len()
            );
            for t in web.iter().filter(|t| t["node"] == "n2") {
                assert_eq!(t["ready"], false, "a task on a down node is not ready: {t}");
                assert_eq!(t["node_state"], "down", "{t}");
            }
        }
        (on_n1.len() == 4 && ready == 4).then_some(on_n1)
    });
    assert!(
        seen_down,
        "n2 was seen down before its replicas were replaced"
    );

    // The lost tasks say so, and why; db's task is kept where it is, not ready.
    let web = ps(&server, "web");
    let lost: Vec<&Value> = web.iter().filter(|t| t["state"] == "lost").collect();
    assert_eq!(
        ids(&lost.iter().map(|t| (*t).clone()).collect::<Vec<_>>()),
        web_on_n2
    );
    let table = server.ok(&["ps", "web", "--node", "n2"]);
    assert!(
        table.contains("lost") && table.contains("no (node down)"),
        "{table}"
    );
    let db = ps(&server, "db");
    let db_n2: Vec<&Value> = db.iter().filter(|t| t["node"] == "n2").collect();
    assert_eq!(db_n2.len(), 1, "a kept task is not replaced: {db:?}");
    assert_eq!(db_n2[0]["desired"], "running");
    assert_eq!(db_n2[0]["ready"], false);
    assert_eq!(counts(&server, "db"), Some((1, 2)));
    let events = server.events();
    let lost_events = events.iter().filter(|e| e["reason"] == "lost").count();
    assert_eq!(lost_events, 2, "one event per lost task");

    // n2 comes back on the same data dir. It stops what was replaced, keeps db's task, and
    // nothing of the replaced ones runs again once it has reconciled.
    let n1_pids = pids(&replaced);
    n2.restart(&server);
    wait_for("n2 to run only db's kept task again, ready", || {
        let running: Vec<String> = n2.task_processes().into_iter().map(|p| p.task).collect();
        let db_ready = ids(&ready_on(&ps(&server, "db"), "n2"));
        (running == db_on_n2 && db_ready == db_on_n2).then_some(())
    });
    let web = ps(&server, "web");
    assert_eq!(
        web.len(),
        4,
        "the lost tasks are forgotten once n2 is back: {web:?}"
    );
    assert_eq!(
        pids(&ready_on(&web, "n1")),
        n1_pids,
        "n1's replicas were left alone"
    );
    assert!(web.iter().all(|t| t["node"] == "n1" && t["ready"] == true));
    assert_eq!(counts(&server, "web"), Some((4, 4)));
    assert_eq!(counts(&server, "db"), Some((2, 2)));
    let stray: Vec<String> = (n1.task_processes().into_iter())
        .map(|p| p.task)
        .filter(|t| web_on_n2.contains(t))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn rm_completes_while_a_node_of_the_service_is_down() {
    let (server, n1, mut n2) = cluster();
    // Kept, so nothing is placed anew while the node is down: only the removal is at work.
    server.deploy("db.yaml", DB);
    wait_for("db ready on both nodes", || {
        let db = ps(&server, "db");
        (ready_on(&db, "n1").len() == 1 && ready_on(&db, "n2").len() == 1).then_some(())
    });
    n2.crash();
    server.wait_node_state("n2", "down");
    server.ok(&["rm", "db"]);
    wait_for("db to be gone from services", || {
        let services = server.json(&["services"]);
        services.as_array()?.is_empty().then_some(())
    });
    wait_for("n1 to have stopped its task", || {
        n1.task_processes().is_empty().then_some(())
    });
    // Back, n2 stops whatever of it the reboot started again: nobody lists it any more.
    n2.restart(&server);
    wait_for("n2 to run nothing", || {
        n2.task_processes().is_empty().then_some(())
    });
    assert!(server.json(&["ps"]).as_array().unwrap().is_empty());
}

#[test]
fn a_drained_node_ends_empty_without_its_service_ever_dropping_below_its_replicas() {
    let (server, n1, n2) = cluster();
    server.deploy("web.yaml", WEB);
    wait_for("web spread 2 and 2, all ready", || {
        let web = ps(&server, "web");
        (ready_on(&web, "n1").len() == 2 && ready_on(&web, "n2").len() == 2).then_some(())
    });
    assert_eq!(counts(&server, "web"), Some((4, 4)));

    let out = server.ok(&["node", "drain", "n1"]);
    assert!(out.contains("n1 is draining"), "{out}");
    let nodes = server.ok(&["nodes"]);
    assert!(nodes.contains("ready (draining)"), "{nodes}");
    assert_eq!(server.node_named("n1").unwrap()["draining"], true);
    // All along the move, every replica is ready somewhere: each old task stops only once its
    // replacement is ready.
    let mut lowest = 4;
    wait_for("n1 to be empty, with 4 ready web replicas on n2", || {
        let (ready, replicas) = counts(&server, "web")?;
        lowest = lowest.min(ready);
        assert!(
            ready >= replicas,
            "web dropped to {ready}/{replicas} ready during the drain"
        );
        let web = ps(&server, "web");
        let on_n1 = web.iter().filter(|t| t["node"] == "n1").count();
        let empty = on_n1 == 0 && n1.task_processes().is_empty();
        (empty && ready_on(&web, "n2").len() == 4).then_some(())
    });
    assert_eq!(lowest, 4);
    assert_eq!(n2.task_processes().len(), 4, "no duplicate left behind");

    // Undrained, n1 takes new work again: a scale-up spreads onto it.
    server.ok(&["node", "undrain", "n1"]);
    assert_eq!(server.node_named("n1").unwrap()["draining"], false);
    server.ok(&["scale", "web", "6"]);
    wait_for("the new replicas on n1", || {
        let web = ps(&server, "web");
        (ready_on(&web, "n1").len() == 2 && ready_on(&web, "n2").len() == 4).then_some(())
    });
    let err = server.fails(&["node", "drain", "nope"]);
    assert!(err.contains("nope"), "{err}");
}
