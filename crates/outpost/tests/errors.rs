//! Bad input gets a clear error and changes nothing.

mod support;

use support::{Dev, request, wait_for};

fn services(dev: &Dev) -> Vec<String> {
    dev.json(&["services"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_invalid_spec_is_refused_whole_with_every_problem() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file(
        "bad.yaml",
        r#"
name: good
command: ["DEMO_APP"]
---
name: web
replicas: three
command: ["DEMO_APP"]
liveness: { http: { path: /healthz, port: http }, period: 1x }
readines: { tcp: { port: 80 } }
resources: { requests: { memory: 64MB } }
"#,
    );
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    for needle in [
        "web.replicas",
        "web.liveness.period: \"1x\" is not a duration",
        "web.readines",
        "did you mean `readiness`?",
        "web.resources.requests.memory",
        "web.liveness.http.port",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("nothing was deployed"), "{err}");
    assert!(
        services(&dev).is_empty(),
        "the valid document of a bad file must not be deployed either"
    );
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file("broken.yaml", "name: web\ncommand: [\"a\"\nreplicas: 2\n");
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("broken.yaml:3:"),
        "file:line:column of the syntax error: {err}"
    );
}

#[test]
fn the_api_refuses_what_the_cli_would_not_send() {
    let dev = Dev::start(&[]);
    let token = std::fs::read_to_string(dev.data_dir().join("token")).unwrap();
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let body = r#"{"services":[{"name":"Bad_Name","replicas":50000,"driver":"process","command":[],"restart":{"policy":"always","initial_backoff":"1s","max_backoff":"10ms","reset_after":"10s"},"stop_grace":"5s"}]}"#;
    let auth = format!("Bearer {}", token.trim());
    let (status, text) = request(
        "POST",
        &api,
        "/v1/services",
        &[("Authorization", &auth)],
        Some(body),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    for needle in [
        "Bad_Name.name",
        "Bad_Name.replicas",
        "Bad_Name.command",
        "Bad_Name.restart",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
    assert!(services(&dev).is_empty());
}

#[test]
fn a_bad_token_is_401_and_says_what_to_do() {
    let dev = Dev::start(&[]);
    let (ok, _, err) = dev.cli(&["--token", "wrong", "services"]);
    assert!(!ok);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let (status, text) = request("GET", &api, "/v1/services", &[], None);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("missing bearer token"), "{text}");
    let (status, _) = request(
        "GET",
        &api,
        "/v1/services",
        &[("Authorization", "Bearer nope")],
        None,
    );
    assert_eq!(status, 401);
    // The OpenAPI document is public and lists the routes.
    let (status, text) = request("GET", &api, "/v1/openapi.json", &[], None);
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/nodes/{name}/assignments"]["get"].is_object());
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dev.data_dir().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_missing_binary_shows_as_a_failed_task_with_the_reason() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "missing.yaml",
        "name: ghost\ncommand: [\"./no/such/binary\"]\nrestart: { policy: on-failure, initial_backoff: 1s, max_backoff: 5s }\n",
    );
    let task = wait_for("the task to fail", || {
        dev.tasks("ghost")
            .into_iter()
            .find(|t| t["state"] == "failed")
    });
    let message = task["message"].as_str().unwrap();
    assert!(
        message.contains("./no/such/binary") && message.contains("no such file"),
        "{message}"
    );
    let events = dev.ok(&["events", "--service", "ghost"]);
    assert!(events.contains("start-failed"), "{events}");
    assert!(dev.log().contains("no such file"), "dev log shows it too");
}

#[test]
fn unknown_services_are_reported_not_ignored() {
    let dev = Dev::start(&[]);
    for args in [
        &["scale", "nope", "2"][..],
        &["rm", "nope"],
        &["ps", "nope"],
        &["logs", "nope"],
        &["services", "nope"],
        &["inspect", "nope"],
        &["rollout", "status", "nope"],
        &["events", "--service", "nope"],
        &["events", "--node", "nope"],
        &["ps", "--node", "nope"],
    ] {
        let err = dev.fails(args);
        assert!(err.contains("nope"), "{args:?}: {err}");
    }
    let err = dev.fails(&["deploy", "-f", "/no/such/file.yaml"]);
    assert!(err.contains("/no/such/file.yaml"), "{err}");
}

#[test]
fn dry_run_shows_changes_and_changes_nothing() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file(
        "web.yaml",
        "name: web\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\nports: [http]\n",
    );
    let out = dev.ok(&["deploy", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(
        out.contains("create") && out.contains("nothing was changed"),
        "{out}"
    );
    assert!(services(&dev).is_empty());
    dev.ok(&["deploy", "-f", file.to_str().unwrap()]);
    let file2 = dev.spec_file(
        "web2.yaml",
        "name: web\nreplicas: 3\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\nports: [http]\n",
    );
    let out = dev.ok(&["deploy", "--dry-run", "-f", file2.to_str().unwrap()]);
    assert!(out.contains("update") && out.contains("replicas"), "{out}");
    assert_eq!(dev.json(&["services"])[0]["replicas"], 1);
}

#[test]
fn compose_dry_run_shows_the_mapping_and_warns_about_ignored_keys() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file(
        "compose.yaml",
        r#"
services:
  web:
    image: nginx:${NGINX_TAG:-1.27}
    ports: ["8080:80"]
    environment: [MODE=edge]
    build: .
    deploy: { replicas: 2 }
"#,
    );
    let (ok, out, err) = dev.cli(&["deploy", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("nginx:1.27") && out.contains("docker") && out.contains("create"),
        "{out}"
    );
    assert!(
        err.contains("\"build\" is not supported yet"),
        "unsupported keys are warned about: {err}"
    );
    assert!(services(&dev).is_empty());
}

#[test]
fn a_service_that_cannot_fit_waits_in_ps_with_the_reason() {
    let dev = Dev::start(&[]);
    dev.deploy("big.yaml", "name: big\nreplicas: 2\ncommand: [\"DEMO_APP\"]\nresources: { requests: { cpu: \"500\" } }\n");
    let waiting = |t: &serde_json::Value| {
        t["state"] == "pending"
            && t["node"].is_null()
            && t["message"]
                .as_str()
                .is_some_and(|m| m.contains("insufficient resources"))
    };
    let tasks = wait_for("two tasks waiting for room", || {
        let tasks = dev.tasks("big");
        (tasks.len() == 2 && tasks.iter().all(waiting)).then_some(tasks)
    });
    let message = tasks[0]["message"].as_str().unwrap();
    assert!(
        message.contains("each replica requests 500 CPU"),
        "{message}"
    );
    let events = dev.ok(&["events", "--service", "big"]);
    assert!(events.contains("unschedulable"), "{events}");
    let table = dev.ok(&["ps", "big"]);
    assert!(
        table.contains("pending") && table.contains("waiting for a node"),
        "{table}"
    );
}
