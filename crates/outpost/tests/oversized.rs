//! Requests over the server's size limits, through the real binary: a deploy of too many
//! services, a scale or a spec with too many replicas, a report with too many items. Each is
//! refused whole, naming the limit, the value and the flag that raises it; nothing of it is
//! applied. Raised with their flags, the same requests go through.

mod support;

use support::{Dev, outpost_bin, request};

/// One service per document, `count` of them, each with one replica.
fn many_services(count: usize) -> String {
    (0..count)
        .map(|i| format!("name: s{i:04}\ncommand: [\"DEMO_APP\"]\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `web` with `replicas` replicas.
fn web(replicas: u32) -> String {
    format!("name: web\nreplicas: {replicas}\ncommand: [\"DEMO_APP\"]\n")
}

/// A report from node `local` with `count` events of `reason`.
fn report(count: usize, reason: &str) -> String {
    let event = format!(
        r#"{{"time":"2026-05-01T12:00:00Z","level":"info","reason":"{reason}","message":"x"}}"#
    );
    let events = vec![event; count].join(",");
    format!(r#"{{"seq":0,"tasks":[],"events":[{events}]}}"#)
}

/// Posts `body` to the dev's API with its token; returns the status and the answer's text.
fn post(dev: &Dev, path: &str, body: &str) -> (u16, String) {
    let token = std::fs::read_to_string(dev.data_dir().join("token")).unwrap();
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    request("POST", &api, path, &[("Authorization", &auth)], Some(body))
}

fn events_of(dev: &Dev, reason: &str) -> usize {
    dev.events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .count()
}

#[test]
fn a_deploy_of_1001_services_is_refused_whole_naming_the_limit_and_its_flag() {
    let dev = Dev::start(&[]);
    let file = dev.spec_file("many.yaml", &many_services(1001));
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        err.contains(
            "a deploy of 1001 services: over the limit of 1000 services per deploy \
             (raise it with --max-services-per-deploy)"
        ),
        "{err}"
    );
    assert_eq!(dev.json(&["services"]), serde_json::json!([]));
    assert_eq!(events_of(&dev, "created"), 0);
}

#[test]
fn a_scale_or_a_spec_past_the_replica_limit_is_refused_and_the_count_stays() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web(1));
    let err = dev.fails(&["scale", "web", "100000"]);
    assert!(
        err.contains(
            "scale web to 100000 replicas: over the limit of 10000 replicas per service \
             (raise it with --max-replicas)"
        ),
        "{err}"
    );
    let file = dev.spec_file("big.yaml", &web(20_000));
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains(
            "web.replicas: 20000 replicas: over the limit of 10000 replicas per service \
             (raise it with --max-replicas)"
        ),
        "{err}"
    );
    assert_eq!(dev.json(&["services"])[0]["replicas"], 1);
    assert_eq!(events_of(&dev, "scaled"), 0);
    assert_eq!(events_of(&dev, "updated"), 0);
}

#[test]
fn a_report_over_the_item_limit_is_refused_whole_and_one_at_it_is_taken() {
    let dev = Dev::start(&[]);
    dev.node();
    let (status, text) = post(&dev, "/v1/nodes/local/status", &report(5001, "flood"));
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains(
            "a report of 5001 statuses and events from node local: over the limit of 5000 \
             items per report (raise it with --max-report-items); none of it was applied"
        ),
        "{text}"
    );
    assert_eq!(events_of(&dev, "flood"), 0);
    let (status, text) = post(&dev, "/v1/nodes/local/status", &report(5000, "fits"));
    assert_eq!(status, 204, "{text}");
    assert!(
        events_of(&dev, "fits") > 0,
        "a report at the limit is applied"
    );
}

#[test]
fn raised_limits_let_the_same_requests_through() {
    let dev = Dev::start_with_flags(&[
        "--max-services-per-deploy",
        "2000",
        "--max-replicas",
        "200000",
        "--max-report-items",
        "6000",
        "--report-batch",
        "5ms",
    ]);
    let many = dev.spec_file("many.yaml", &many_services(1001));
    let planned = dev.json(&["deploy", "--dry-run", "-f", many.to_str().unwrap()]);
    assert_eq!(planned["changes"].as_array().unwrap().len(), 1001);
    let big = dev.spec_file("big.yaml", &web(100_000));
    let planned = dev.json(&["deploy", "--dry-run", "-f", big.to_str().unwrap()]);
    assert_eq!(planned["services"][0]["replicas"], 100_000);
    assert_eq!(dev.json(&["services"]), serde_json::json!([]), "dry runs");
    dev.node();
    let (status, text) = post(&dev, "/v1/nodes/local/status", &report(5001, "flood"));
    assert_eq!(status, 204, "{text}");
}

#[test]
fn a_limit_flag_out_of_its_range_is_refused_at_start_saying_why() {
    for (flags, needle) in [
        (
            ["--max-report-items", "10"],
            "--max-report-items must be at least 1000",
        ),
        (
            ["--max-replicas", "0"],
            "--max-replicas must be between 1 and 1000000",
        ),
        (
            ["--report-batch", "5s"],
            "--report-batch \"5s\" is longer than the maximum of 1s",
        ),
        (
            ["--report-batch", "soon"],
            "--report-batch \"soon\" is not a duration",
        ),
        (
            ["--event-retention", "0"],
            "--event-retention must be at least 1 event",
        ),
        (
            ["--event-max-age", "forever"],
            "--event-max-age \"forever\" is not a duration",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--api", "127.0.0.1:0", "server"])
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{flags:?}: {err}"
        );
        assert!(
            !dir.path().join("token").exists(),
            "{flags:?}: refused before anything was made"
        );
    }
}
