//! Listings through the real binary: server-side filters of `ps` and `events`, paging with a
//! continue token, and the summary `ps` prints in place of a table too long to read.

mod support;

use std::collections::BTreeSet;

use client::{Client, TaskFilter};
use support::{Dev, wait_for};

/// A service whose replicas fit on no node: its tasks wait, pending, with no process to start,
/// so a test can have hundreds of tasks cheaply.
fn unplaceable(name: &str, replicas: u32) -> String {
    format!(
        "name: {name}\nreplicas: {replicas}\ncommand: [\"DEMO_APP\"]\n\
         resources: {{ requests: {{ cpu: \"500\" }} }}\n"
    )
}

fn client(dev: &Dev) -> Client {
    support::api_client(dev.data_dir())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_tasks(dev: &Dev, service: &str, n: usize) {
    wait_for(&format!("{n} tasks of {service}"), || {
        (dev.tasks(service).len() == n).then_some(())
    });
}

#[test]
fn tasks_page_through_a_continue_token_without_gaps_or_repeats() {
    let dev = Dev::start(&[]);
    dev.deploy("big.yaml", &unplaceable("big", 30));
    // Names that sort right before and after `big`'s task ids: none of theirs may show up.
    dev.deploy("big-a.yaml", &unplaceable("big-a", 4));
    dev.deploy("bigger.yaml", &unplaceable("bigger", 4));
    wait_tasks(&dev, "big", 30);
    wait_tasks(&dev, "bigger", 4);
    let client = client(&dev);
    let filter = TaskFilter {
        service: Some("big".into()),
        ..TaskFilter::default()
    };
    let rt = runtime();
    let (mut seen, mut pages, mut token) = (Vec::new(), 0, None::<String>);
    loop {
        let page = rt
            .block_on(client.tasks_page(&filter, 7, token.as_deref()))
            .unwrap();
        assert!(page.items.len() <= 7, "a page holds at most its limit");
        seen.extend(page.items.into_iter().map(|t| t.id));
        pages += 1;
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 5, "30 tasks in pages of 7 are 5 pages");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 30, "every task once: {seen:?}");
    assert!(seen.iter().all(|id| id.starts_with("big.")), "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages follow task ids");
    let all = rt.block_on(client.tasks_where(&filter)).unwrap();
    assert_eq!(all.len(), 30, "the whole listing follows the tokens");
}

#[test]
fn ps_filters_by_service_node_and_state_on_the_server() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "web.yaml",
        "name: web\nreplicas: 2\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\n\
         ports: [{ name: http }]\nreadiness: { tcp: { port: http } }\n",
    );
    dev.deploy("big.yaml", &unplaceable("big", 3));
    dev.wait_ready("web", 2);
    wait_tasks(&dev, "big", 3);
    let node = dev.node()["name"].as_str().unwrap().to_string();

    let on_node = dev.json(&["ps", "--node", &node]);
    let services: BTreeSet<&str> = on_node
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
        BTreeSet::from(["web"]),
        "pending tasks have no node"
    );

    let pending = dev.json(&["ps", "--state", "pending"]);
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert!(pending.iter().all(|t| t["service"] == "big"));

    let none = dev.json(&["ps", "web", "--state", "pending"]);
    assert_eq!(none.as_array().unwrap().len(), 0, "filters combine");

    let err = dev.fails(&["ps", "--node", "n-nowhere"]);
    assert!(err.contains("no node named \"n-nowhere\""), "{err}");
    let err = dev.fails(&["ps", "ghost"]);
    assert!(err.contains("no service named \"ghost\""), "{err}");
    let err = dev.fails(&["ps", "--state", "sleeping"]);
    assert!(err.contains("sleeping"), "{err}");
}

#[test]
fn ps_summarises_more_tasks_than_a_screenful_and_says_how_to_see_them() {
    let dev = Dev::start(&[]);
    dev.deploy("big.yaml", &unplaceable("big", 240));
    dev.deploy("small.yaml", &unplaceable("small", 3));
    wait_tasks(&dev, "big", 240);
    wait_tasks(&dev, "small", 3);

    let table = dev.ok(&["ps"]);
    let big = table.lines().find(|l| l.trim_start().starts_with("big"));
    let big = big.unwrap_or_else(|| panic!("no row of big: {table}"));
    let cells: Vec<&str> = big.split_whitespace().collect();
    assert_eq!(cells[..3], ["big", "240", "240"], "{table}");
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("small")),
        "{table}"
    );
    assert!(table.contains("243 tasks"), "{table}");
    let hint = table.lines().find(|l| l.starts_with("See every row"));
    let hint = hint.unwrap_or_else(|| panic!("no hint on a line of its own: {table}"));
    assert!(
        hint.contains("--all") && hint.contains("-o json"),
        "{table}"
    );
    assert!(
        table.lines().count() < 20,
        "a summary, not the rows: {table}"
    );

    let all = dev.ok(&["ps", "--all"]);
    assert_eq!(
        all.lines()
            .filter(|l| l.trim_start().starts_with("big."))
            .count(),
        240
    );
    let json = dev.json(&["ps"]);
    assert_eq!(
        json.as_array().unwrap().len(),
        243,
        "json pages through all"
    );

    let small = dev.ok(&["ps", "small"]);
    assert_eq!(
        small
            .lines()
            .filter(|l| l.trim_start().starts_with("small."))
            .count(),
        3,
        "a short listing is still a table: {small}"
    );
}

/// A GET of the API with the dev's token: (status, the `outpost-continue` header, body).
fn get(dev: &Dev, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let read = |f: &str| std::fs::read_to_string(dev.data_dir().join(f)).unwrap();
    let (api, token) = (read("api"), read("token"));
    let auth = format!("Bearer {}", token.trim());
    let (status, head, body) =
        support::request_as(None, "GET", &api, path, &[("Authorization", &auth)], None);
    let token = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("outpost-continue")
            .then(|| value.trim().to_string())
    });
    (status, token, serde_json::from_str(&body).unwrap())
}

fn names(list: &serde_json::Value) -> Vec<&str> {
    let list = list.as_array().unwrap().iter();
    list.map(|s| s["name"].as_str().unwrap()).collect()
}

#[test]
fn services_and_nodes_page_with_a_limit_and_the_cli_lists_every_page() {
    let dev = Dev::start(&[]);
    for name in ["s0", "s1", "s2"] {
        dev.deploy(&format!("{name}.yaml"), &unplaceable(name, 1));
    }
    let (status, token, first) = get(&dev, "/v1/services?limit=2");
    assert_eq!((status, names(&first)), (200, vec!["s0", "s1"]));
    assert_eq!(token.as_deref(), Some("s1"));
    let (_, token, rest) = get(&dev, "/v1/services?limit=2&continue=s1");
    assert_eq!((names(&rest), token), (vec!["s2"], None), "the last page");
    assert_eq!(names(&dev.json(&["services"])), ["s0", "s1", "s2"]);

    dev.node();
    let (status, token, nodes) = get(&dev, "/v1/nodes?limit=1");
    assert_eq!(
        (status, token, nodes.as_array().unwrap().len()),
        (200, None, 1)
    );
    let (status, _, error) = get(&dev, "/v1/nodes?limit=0");
    assert_eq!(status, 400);
    assert_eq!(error["problems"][0]["path"], "limit", "{error}");
}

#[test]
fn events_filter_by_service_level_node_and_since_on_the_server() {
    let dev = Dev::start(&[]);
    dev.deploy("big.yaml", &unplaceable("big", 1));
    dev.deploy(
        "web.yaml",
        "name: web\nreplicas: 1\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\n\
         ports: [{ name: http }]\nreadiness: { tcp: { port: http } }\n",
    );
    dev.wait_ready("web", 1);
    let node = dev.node()["name"].as_str().unwrap().to_string();
    let events = |args: &[&str]| {
        let mut full = vec!["events"];
        full.extend_from_slice(args);
        dev.json(&full).as_array().unwrap().clone()
    };
    wait_for("events of both services", || {
        let all = events(&[]);
        let of = |s: &str| all.iter().any(|e| e["service"] == s);
        (of("web") && of("big")).then_some(())
    });

    let web = events(&["--service", "web"]);
    assert!(
        !web.is_empty() && web.iter().all(|e| e["service"] == "web"),
        "{web:?}"
    );

    let warnings = events(&["--level", "warning"]);
    assert!(
        warnings.iter().any(|e| e["service"] == "big"),
        "an unschedulable service is a warning: {warnings:?}"
    );
    assert!(
        warnings.iter().all(|e| e["level"] != "info"),
        "{warnings:?}"
    );

    let on_node = events(&["--node", &node]);
    assert!(!on_node.is_empty(), "the agent's events name its node");
    assert!(
        on_node.iter().all(|e| e["node"] == node.as_str()),
        "{on_node:?}"
    );

    assert!(
        !events(&["--since", "10m"]).is_empty(),
        "recent events are shown"
    );
    assert!(
        events(&["--since", "2999-01-01T00:00:00Z"]).is_empty(),
        "nothing happened after a future time"
    );
    let err = dev.fails(&["events", "--since", "yesterday"]);
    assert!(err.contains("since") && err.contains("RFC 3339"), "{err}");
}

#[test]
fn followed_events_show_only_what_matches_the_filters() {
    let dev = Dev::start(&[]);
    let mut follow = std::process::Command::new(support::outpost_bin())
        .args(["--data-dir", dev.data_dir().to_str().unwrap()])
        .args(["-o", "json", "events", "-f", "--service", "web"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let started = event["reason"] == "started";
            seen.push(event);
            if started {
                break;
            }
        }
        seen
    });
    dev.deploy("big.yaml", &unplaceable("big", 1));
    dev.deploy(
        "web.yaml",
        "name: web\nreplicas: 1\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\n\
         ports: [{ name: http }]\n",
    );
    dev.wait_ready("web", 1);
    wait_for("the follower to see web start", || {
        lines.is_finished().then_some(())
    });
    let seen = lines.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.iter().all(|e| e["service"] == "web"), "{seen:?}");
}

#[test]
fn services_and_nodes_past_a_screenful_are_counted_unless_all() {
    let dev = Dev::start(&[]);
    dev.node();
    let many: Vec<String> = (0..201).map(|i| unplaceable(&format!("s{i}"), 1)).collect();
    dev.deploy("many.yaml", &many.join("---\n"));
    let read = |f: &str| std::fs::read_to_string(dev.data_dir().join(f)).unwrap();
    let auth = format!("Bearer {}", read("token").trim());
    for i in 0..201 {
        let body = format!(
            r#"{{"name":"n{i}","address":"http://127.0.0.1:9","capacity":{{"cpu_millis":1000,
            "memory_bytes":1000000}},"allocatable":{{"cpu_millis":1000,"memory_bytes":1000000}},
            "drivers":["process"],"version":"0"}}"#
        );
        let headers = [("Authorization", auth.as_str())];
        let (status, text) =
            support::request("POST", &read("api"), "/v1/nodes", &headers, Some(&body));
        assert_eq!(status, 200, "{text}");
    }

    let services = dev.ok(&["services"]);
    assert!(services.contains("201 services"), "{services}");
    let degraded = services
        .lines()
        .find(|l| l.trim_start().starts_with("degraded"));
    assert!(degraded.is_some_and(|l| l.contains("201")), "{services}");
    assert!(services.contains("outpost services --all"), "{services}");
    let all = dev.ok(&["services", "--all"]);
    assert_eq!(all.lines().count(), 202, "a header and every service");
    assert_eq!(dev.json(&["services"]).as_array().unwrap().len(), 201);

    let nodes = dev.ok(&["nodes"]);
    assert!(
        nodes.contains("202 nodes"),
        "the agent's and the 201 registered: {nodes}"
    );
    assert!(nodes.contains("outpost nodes --all"), "{nodes}");
    assert_eq!(dev.ok(&["nodes", "--all"]).lines().count(), 203);
}

/// An operator keeps a short history with `--event-retention`: the oldest events go, the newest
/// stay, numbered as they were, and a restart keeps the same bounded history from the disk.
#[test]
fn the_event_history_keeps_the_newest_events_up_to_its_retention_across_a_restart() {
    let mut dev = Dev::start_with_flags(&["--event-retention", "10"]);
    dev.deploy("big.yaml", &unplaceable("big", 3));
    // Each scale is an event; twenty of them push the first ones out.
    for replicas in 1..=20 {
        dev.ok(&["scale", "big", &replicas.to_string()]);
    }
    let seqs = |dev: &Dev| -> Vec<u64> {
        dev.events()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let kept = seqs(&dev);
    assert_eq!(kept.len(), 10, "{kept:?}");
    assert!(kept[0] > 20, "the oldest went first: {kept:?}");
    assert!(
        kept.windows(2).all(|w| w[0] + 1 == w[1]),
        "the newest ten, without gaps: {kept:?}"
    );
    let scaled: Vec<String> = dev
        .events()
        .iter()
        .filter(|e| e["reason"] == "scaled")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        scaled.last().map(String::as_str),
        Some("scaled from 19 to 20 replicas")
    );
    assert!(
        !scaled.contains(&"scaled from 3 to 1 replicas".to_string()),
        "{scaled:?}"
    );
    dev.restart_with_flags(&["--event-retention", "10"]);
    let after = seqs(&dev);
    assert!(after.len() <= 10, "{after:?}");
    assert!(
        after.contains(kept.last().unwrap()),
        "{after:?} has {kept:?}'s newest"
    );
}
