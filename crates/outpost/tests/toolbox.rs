//! The operator's everyday questions, through the real binary: why a task restarted and when it
//! tries again (`ps`, `inspect`), and the whole record of a service, a task and a node
//! (`inspect`, as text, JSON and YAML).

mod support;

use serde_json::Value;
use support::{Dev, wait_for};

/// A replica that answers, so the service has endpoints and events.
const WEB: &str = r#"
name: web
replicas: 2
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
resources: { limits: { memory: 64Mi } }
"#;

/// A replica that exits with status 3 after 300 ms, restarted after 3 s the first time: long
/// enough to be seen waiting.
const CRASHER: &str = r#"
name: crasher
command: ["DEMO_APP", "--port", "${PORT}", "--exit-after", "300", "--exit-code", "3"]
ports: [{ name: http }]
restart: { policy: always, initial_backoff: 3s, max_backoff: 3s }
"#;

#[test]
fn a_crashing_task_shows_its_backoff_and_last_exit_in_ps_and_inspect() {
    let dev = Dev::start(&[]);
    dev.deploy("crasher.yaml", CRASHER);
    let waiting = wait_for("the task to wait out its backoff", || {
        let tasks = dev.tasks("crasher");
        let task = tasks.first()?.clone();
        task.get("next_start")?;
        Some(task)
    });
    assert_eq!(waiting["last_exit"]["summary"], "exit 3", "{waiting}");
    assert_eq!(waiting["last_exit"]["code"], 3, "{waiting}");
    assert!(
        waiting.get("pid").is_none(),
        "a stale pid is shown: {waiting}"
    );
    let table = dev.ok(&["ps", "crasher"]);
    assert!(table.contains("LAST EXIT"), "{table}");
    assert!(table.contains("backoff (next try in"), "{table}");
    assert!(table.contains("exit 3, "), "{table}");

    // Started again, it keeps its last exit (why it restarted) until the next one.
    let id = waiting["id"].as_str().unwrap().to_string();
    let running = wait_for("the task to run again", || {
        let task = dev.tasks("crasher").first()?.clone();
        (task["state"] == "running" && task["restarts"].as_u64()? >= 1).then_some(task)
    });
    assert_eq!(running["last_exit"]["summary"], "exit 3", "{running}");
    assert!(running.get("next_start").is_none(), "{running}");
    let text = dev.ok(&["inspect", &id]);
    assert!(
        text.contains("Last exit:   exited with status 3 at "),
        "{text}"
    );
    assert!(
        text.contains("restarting"),
        "its history says it restarted: {text}"
    );
}

#[test]
fn inspect_shows_a_service_a_task_and_a_node_whole() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let tasks = dev.wait_ready("web", 2);
    let id = tasks[0]["id"].as_str().unwrap().to_string();

    let service = dev.json(&["inspect", "web"]);
    assert_eq!(service["kind"], "service");
    assert_eq!(service["service"]["spec"]["name"], "web");
    assert_eq!(service["tasks"].as_array().unwrap().len(), 2, "{service}");
    let endpoints = &service["endpoints"]["service"];
    assert_eq!(endpoints["name"], "web", "{service}");
    assert_eq!(
        endpoints["endpoints"].as_array().unwrap().len(),
        2,
        "{service}"
    );
    assert!(
        !service["events"].as_array().unwrap().is_empty(),
        "{service}"
    );

    // YAML holds the same record.
    let yaml = dev.ok(&["-o", "yaml", "inspect", &id]);
    let task: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(task["kind"], "task");
    assert_eq!(task["task"]["id"], id.as_str());
    assert_eq!(
        task["spec"]["resources"]["limits"]["memory"], "64Mi",
        "{yaml}"
    );
    let history: Vec<&str> = (task["history"].as_array().unwrap().iter())
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        history.contains(&"placed") && history.contains(&"started"),
        "{history:?}"
    );
    let pid = task["task"]["pid"].as_u64().unwrap();
    let text = dev.ok(&["inspect", &id]);
    for line in [format!("Task:        {id}"), format!("Pid:         {pid}")] {
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    assert!(
        text.contains("History:") && text.contains("memory: 64Mi"),
        "{text}"
    );

    let node_name = tasks[0]["node"].as_str().unwrap();
    let node = dev.json(&["inspect", node_name]);
    assert_eq!(node["kind"], "node");
    assert!(node["node"]["capacity"]["memory_bytes"].as_u64().unwrap() > 0);
    let on_node: Vec<&str> = (node["tasks"].as_array().unwrap().iter())
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(on_node.contains(&id.as_str()), "{on_node:?}");

    let err = dev.fails(&["inspect", "nothing-here"]);
    assert!(
        err.contains("no service, task or node is named \"nothing-here\""),
        "{err}"
    );
    let err = dev.fails(&["inspect", "web.9.999"]);
    assert!(err.contains("no task \"web.9.999\""), "{err}");
    let err = dev.fails(&["inspect", "ghost.1.1"]);
    assert!(err.contains("ghost"), "{err}");
}
