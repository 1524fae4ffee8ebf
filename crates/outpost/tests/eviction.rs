//! Node-pressure eviction, with the threshold set far above the memory this machine has.

mod support;

use support::{Dev, wait_for};

fn service(name: &str, resources: &str) -> String {
    format!(
        "name: {name}\ncommand: [\"DEMO_APP\", \"--port\", \"${{PORT}}\"]\nports: [http]\nreadiness: {{ tcp: {{ port: http }} }}\nresources: {resources}\n"
    )
}

#[test]
fn pressure_evicts_besteffort_then_burstable_and_guaranteed_last() {
    let mut dev = Dev::start(&[]);
    dev.deploy("be.yaml", &service("be", "{}"));
    dev.deploy(
        "burst.yaml",
        &service("burst", "{ requests: { cpu: 10m, memory: 8Mi } }"),
    );
    dev.deploy(
        "guar.yaml",
        &service(
            "guar",
            "{ requests: { cpu: 10m, memory: 64Mi }, limits: { cpu: 10m, memory: 64Mi } }",
        ),
    );
    let guaranteed = dev.wait_ready("guar", 1).remove(0);
    dev.wait_ready("be", 1);
    dev.wait_ready("burst", 1);
    assert_eq!(guaranteed["qos"], "Guaranteed");
    // Tasks keep running through the agent's restart; the new threshold puts the node under
    // pressure at once.
    dev.restart_after_kill_with(&[("OUTPOST_EVICTION_THRESHOLD", "1000Gi")]);
    let evicted = wait_for("three evictions", || {
        let order: Vec<String> = dev
            .events()
            .into_iter()
            .filter(|e| e["reason"] == "evicted")
            .map(|e| e["service"].as_str().unwrap_or_default().to_string())
            .collect();
        (order.len() >= 3).then_some(order)
    });
    // Under pressure that never lifts, the Guaranteed task goes too, but only once no other is
    // left: replacements are not placed on a node under pressure, so they cannot jump the queue.
    assert_eq!(
        evicted[..3],
        ["be", "burst", "guar"],
        "BestEffort, then Burstable, Guaranteed last: {:#?}",
        dev.events()
            .iter()
            .filter(|e| e["reason"] != "ready")
            .map(|e| format!("{} {} {}", e["reason"], e["task"], e["message"]))
            .collect::<Vec<_>>()
    );
    let node = &dev.json(&["nodes"])[0];
    assert_eq!(node["memory_pressure"], true, "{node}");
    // Evicted replicas are replaced, but nothing new lands on a node under pressure.
    let waiting = wait_for("the evicted replica to wait for room", || {
        dev.tasks("be")
            .into_iter()
            .find(|t| t["node"].is_null() && t["state"] == "pending")
    });
    assert!(
        waiting["message"]
            .as_str()
            .unwrap()
            .contains("memory pressure"),
        "{waiting}"
    );
    let message = dev
        .events()
        .into_iter()
        .find(|e| e["reason"] == "evicted")
        .unwrap()["message"]
        .clone();
    assert!(
        message.as_str().unwrap().contains("threshold 1000Gi"),
        "{message}"
    );
}
