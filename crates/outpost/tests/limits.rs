//! Hostile or careless specs, through the real binary: quantities that would wrap, settings
//! without a sane bound, probe paths that would split a request, variables Outpost sets or cannot
//! resolve. Each is refused whole, by the CLI and by the API, naming its field.

mod support;

use support::{Dev, request};

const HOSTILE: &str = r#"
name: web
command: ["DEMO_APP", "--port", "${PORT}", "${NOPE}"]
env: { PORT: "80", OUTPOST_NODE: elsewhere }
ports: [http]
liveness: { http: { path: "/healthz\r\nX-Injected: 1", port: http }, period: 1ns }
resources:
  requests: { cpu: 18446744073709451616m }
  limits: { memory: "18446744073709551615" }
restart: { policy: always, initial_backoff: 1ns, max_backoff: 5s }
stop_grace: 100000000000y
"#;

/// Every field of [`HOSTILE`] that must be named, with a word of why.
const EXPECTED: &[&str] = &[
    "web.resources.requests.cpu: 18446744073709451616m is more than the maximum of 1000000 cores",
    "web.resources.limits.memory: 18446744073709551615 is more than the maximum of 1Ei",
    "web.liveness.period: 1ns is shorter than the minimum of 100ms",
    "web.liveness.http.path:",
    "web.restart.initial_backoff: 1ns is shorter than the minimum of 10ms",
    "web.stop_grace: 100000000000years is longer than the maximum of 1h",
    "web.env.PORT: is set by Outpost",
    "web.env.OUTPOST_NODE: is set by Outpost",
    "web.command[3]: \"${NOPE}\" is not set",
];

fn services(dev: &Dev) -> Vec<serde_json::Value> {
    dev.json(&["services"]).as_array().unwrap().clone()
}

#[test]
fn hostile_settings_are_refused_by_the_cli_naming_each_field() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file("hostile.yaml", HOSTILE);
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    for needle in EXPECTED {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(services(&dev).is_empty(), "nothing was deployed");
}

#[test]
fn the_api_refuses_the_same_settings_sent_as_json() {
    let dev = Dev::start(&[]);
    let token = std::fs::read_to_string(dev.data_dir().join("token")).unwrap();
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let body = r#"{"services":[{"name":"web","replicas":1,"driver":"process",
        "command":["./web","${PORT}","${NOPE}"],"env":{"PORT":"80","OUTPOST_NODE":"x"},
        "ports":[{"name":"http"}],
        "liveness":{"http":{"path":"/healthz\r\nX-Injected: 1","port":"http"},"initial_delay":"0s",
            "period":"1ns","timeout":"1s","failure_threshold":3,"success_threshold":1},
        "resources":{"requests":{"cpu":"18446744073709451616m"},"limits":{"memory":"18446744073709551615"}},
        "restart":{"policy":"always","initial_backoff":"1ns","max_backoff":"5s","reset_after":"10s"},
        "stop_grace":"100000000000y"}]}"#;
    let auth = format!("Bearer {}", token.trim());
    let (status, text) = request(
        "POST",
        &api,
        "/v1/services",
        &[("Authorization", &auth)],
        Some(body),
    );
    assert_eq!(status, 400, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let paths: Vec<&str> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    for path in [
        "web.resources.requests.cpu",
        "web.resources.limits.memory",
        "web.liveness.period",
        "web.liveness.http.path",
        "web.restart.initial_backoff",
        "web.stop_grace",
        "web.env.PORT",
        "web.env.OUTPOST_NODE",
        "web.command[2]",
    ] {
        assert!(paths.contains(&path), "missing {path} in {paths:?}");
    }
    assert!(services(&dev).is_empty(), "nothing was deployed");
}

#[test]
fn exbibytes_are_a_memory_quantity() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file(
        "big.yaml",
        "name: big\ncommand: [\"DEMO_APP\"]\nresources: { limits: { memory: 1Ei } }\n",
    );
    let out = dev.ok(&["deploy", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(out.contains("big"), "{out}");
}
