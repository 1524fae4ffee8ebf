//! Stacks, fixed host ports and start order, through the real binary: a Compose file deployed
//! as a stack and removed as one, a service of another stack never replaced without `--force`,
//! replicas that need one host port on a one-node cluster, and a dependent that starts only
//! once its dependency is ready.

mod support;

use serde_json::Value;
use support::{Dev, wait_for};

/// A Compose file written into `dir` (under the data dir), as a project directory would be.
fn compose_in(dev: &Dev, dir: &str, text: &str) -> String {
    let dir = dev.data_dir().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("compose.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn names(list: &Value) -> Vec<String> {
    (list.as_array().unwrap().iter())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

const SHOP: &str = r#"
services:
  web:
    image: example.invalid/web
    depends_on: [db]
  db:
    image: example.invalid/db
"#;

#[test]
fn a_compose_file_deploys_as_a_stack_listed_and_removed_with_stack() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "web.yaml",
        "name: web\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\nports: [http]\n",
    );
    let file = compose_in(&dev, "shop", SHOP);
    // The directory names the stack, as `docker compose` names its project.
    let out = dev.ok(&["deploy", "-f", &file]);
    assert!(out.contains("shop_web") && out.contains("shop_db"), "{out}");
    let blue = dev.ok(&["deploy", "-p", "blue", "-f", &file]);
    assert!(blue.contains("blue_web"), "{blue}");
    let shop = dev.json(&["services", "--stack", "shop"]);
    assert_eq!(names(&shop), ["shop_db", "shop_web"]);
    let web = shop
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "shop_web")
        .unwrap();
    assert_eq!(web["spec"]["stack"], "shop");
    assert_eq!(web["spec"]["depends_on"]["shop_db"], "service_started");
    let table = dev.ok(&["services", "--stack", "shop"]);
    assert!(
        table.contains("shop_web") && !table.contains("blue_"),
        "{table}"
    );

    let removed = dev.ok(&["rm", "--stack", "shop"]);
    assert!(removed.contains("shop_db, shop_web"), "{removed}");
    wait_for("the shop stack gone", || {
        names(&dev.json(&["services"]))
            .iter()
            .all(|n| !n.starts_with("shop_"))
            .then_some(())
    });
    let left = names(&dev.json(&["services"]));
    assert_eq!(
        left,
        ["blue_db", "blue_web", "web"],
        "nothing else went with it"
    );
    let err = dev.fails(&["rm", "--stack", "shop"]);
    assert!(err.contains("no service is in stack \"shop\""), "{err}");
}

#[test]
fn a_service_of_another_stack_is_never_replaced_without_force() {
    let dev = Dev::start(&[]);
    // A service named as `docker stack deploy` would name one, deployed by hand.
    dev.deploy(
        "web.yaml",
        "name: shop_web\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\nports: [http]\n",
    );
    let file = compose_in(&dev, "shop", SHOP);
    for dry_run in [true, false] {
        let mut args = vec!["deploy", "-f", &file];
        if dry_run {
            args.push("--dry-run");
        }
        let err = dev.fails(&args);
        assert!(
            err.contains("\"shop_web\" is already a service of no stack")
                && err.contains("would replace it")
                && err.contains("--force")
                && err.contains("-p NAME"),
            "{err}"
        );
    }
    let services = dev.json(&["services"]);
    assert_eq!(names(&services), ["shop_web"], "nothing changed");
    assert!(services[0]["spec"]["stack"].is_null());
    // Another stack name deploys beside it; --force takes it over.
    dev.ok(&["deploy", "-p", "other", "-f", &file]);
    dev.ok(&["deploy", "--force", "-f", &file]);
    let shop = dev.json(&["services", "--stack", "shop"]);
    assert_eq!(names(&shop), ["shop_db", "shop_web"]);

    // A node's name and the reserved names cannot be a service's.
    let local = dev.spec_file("local.yaml", "name: local\ncommand: [\"DEMO_APP\"]\n");
    let err = dev.fails(&["deploy", "-f", local.to_str().unwrap()]);
    assert!(err.contains("\"local\" is the name of a node"), "{err}");
    let tasks = dev.spec_file("tasks.yaml", "name: tasks\ncommand: [\"DEMO_APP\"]\n");
    let err = dev.fails(&["deploy", "-f", tasks.to_str().unwrap()]);
    assert!(err.contains("\"tasks\" is reserved"), "{err}");
}

/// A port nothing listens on now: the kernel's pick, above the agent's own range.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn two_replicas_needing_one_host_port_on_one_node_leave_one_pending_with_the_reason() {
    let dev = Dev::start(&[]);
    dev.wait_node_state("local", "ready");
    let port = free_port();
    let spec = format!(
        "name: web\nreplicas: 2\ncommand: [\"DEMO_APP\", \"--port\", \"${{PORT}}\"]\n\
         ports: [{{ name: http, host_port: {port} }}]\nreadiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
    );
    let reason = format!("host port {port}/tcp already taken on the one node");
    // The dry run says so before anything runs.
    let file = dev.spec_file("web.yaml", &spec);
    let dry = dev.ok(&["deploy", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(
        dry.contains("would wait: web: 1 of 2 replicas") && dry.contains(&reason),
        "{dry}"
    );
    dev.ok(&["deploy", "-f", file.to_str().unwrap()]);
    let (running, waiting) = wait_for("one replica ready and one waiting", || {
        let tasks = dev.tasks("web");
        let running = tasks.iter().find(|t| t["ready"] == true)?.clone();
        let waiting = tasks.iter().find(|t| t["state"] == "pending")?.clone();
        (tasks.len() == 2).then_some((running, waiting))
    });
    assert_eq!(running["ports"]["http"], port);
    assert!(waiting["node"].is_null(), "{waiting}");
    let message = waiting["message"].as_str().unwrap();
    assert!(message.contains(&reason), "{message}");
    let ps = dev.ok(&["ps", "web"]);
    assert!(ps.contains("pending"), "{ps}");
    // Scaled to one, nothing waits.
    dev.ok(&["scale", "web", "1"]);
    dev.wait_ready("web", 1);
}

#[test]
fn a_dependent_starts_only_once_its_dependency_is_ready() {
    let dev = Dev::start(&[]);
    // db binds its port late, so it is running but not ready for a while.
    let chain = r#"
name: db
stack: app
command: ["DEMO_APP", "--port", "${PORT}", "--delay-ready", "1500"]
ports: [http]
readiness: { tcp: { port: http }, period: 100ms }
---
name: api
stack: app
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [http]
readiness: { tcp: { port: http }, period: 100ms }
depends_on: { db: { condition: service_healthy } }
---
name: web
stack: app
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [http]
depends_on: [api]
"#;
    dev.wait_node_state("local", "ready");
    let file = dev.spec_file("app.yaml", chain);
    let dry = dev.ok(&["deploy", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(
        dry.contains("would wait: app_api: held until app_db is ready (service_healthy)"),
        "{dry}"
    );
    dev.ok(&["deploy", "-f", file.to_str().unwrap()]);
    let held = wait_for("api held while db starts", || {
        let api = dev.tasks("app_api");
        let db = dev.tasks("app_db");
        let db_unready = db.first().is_some_and(|t| t["ready"] == false);
        let held = api
            .first()
            .filter(|t| t["state"] == "pending" && t["node"].is_null())?;
        db_unready.then(|| held.clone())
    });
    let message = held["message"].as_str().unwrap();
    assert!(
        message.starts_with("held until app_db is ready"),
        "{message}"
    );
    let web = dev.tasks("app_web");
    assert!(
        web.iter().all(|t| t["node"].is_null()),
        "web waits for api: {web:?}"
    );
    let api = dev.wait_ready("app_api", 1).remove(0);
    let db = dev.wait_ready("app_db", 1).remove(0);
    let time = |v: &Value| {
        serde_json::from_value::<api::Timestamp>(v.clone())
            .unwrap()
            .0
    };
    let ready_at = time(&db["ready_since"]);
    let started_at = time(&api["started_at"]);
    assert!(
        started_at >= ready_at,
        "api started at {started_at}, db ready at {ready_at}"
    );
    dev.wait_ready("app_web", 1);

    // A cycle, or a dependency on nothing, is refused naming the services.
    let cycle = "name: a\ncommand: [\"DEMO_APP\"]\ndepends_on: [b]\n---\nname: b\ncommand: [\"DEMO_APP\"]\ndepends_on: [a]\n";
    let file = dev.spec_file("cycle.yaml", cycle);
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(err.contains("a dependency cycle: a → b → a"), "{err}");
    let lonely = "name: c\ncommand: [\"DEMO_APP\"]\ndepends_on: [nowhere]\n";
    let file = dev.spec_file("lonely.yaml", lonely);
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("c depends on \"nowhere\", which is not deployed"),
        "{err}"
    );
}
