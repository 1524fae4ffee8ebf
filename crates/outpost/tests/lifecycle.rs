//! Running and healing services on one node, through the real binary and real processes.

mod support;

use support::{Dev, alive, http_get, sigkill, wait_for};

const WEB: &str = r#"
name: web
replicas: 2
command: ["DEMO_APP", "--port", "${PORT}"]
env: { GREETING: hi }
ports: [{ name: http }]
liveness: { http: { path: /healthz, port: http }, period: 200ms, timeout: 2s, failure_threshold: 3 }
readiness: { tcp: { port: http }, period: 200ms }
stop_grace: 2s
"#;

fn pid(task: &serde_json::Value) -> u64 {
    task["pid"]
        .as_u64()
        .expect("a running process task has a pid")
}

fn port(task: &serde_json::Value) -> u64 {
    task["ports"]["http"]
        .as_u64()
        .expect("the task has an http port")
}

#[test]
fn deployed_replicas_answer_on_their_ports() {
    let dev = Dev::start(&[]);
    let out = dev.deploy("web.yaml", WEB);
    assert!(out.contains("web") && out.contains("create"), "{out}");
    let tasks = dev.wait_ready("web", 2);
    for t in &tasks {
        for key in [
            "id",
            "service",
            "node",
            "state",
            "ready",
            "restarts",
            "pid",
            "ports",
            "started_at",
        ] {
            assert!(!t[key].is_null(), "ps -o json lacks {key}: {t}");
        }
        assert_eq!(t["qos"], "BestEffort", "no requests or limits");
        let answer = http_get(port(t), "/").unwrap();
        assert!(
            answer.contains(&format!("hi from {}", t["id"].as_str().unwrap())),
            "{answer}"
        );
    }
    let table = dev.ok(&["ps", "web"]);
    assert!(
        table.contains("TASK") && table.contains("running"),
        "{table}"
    );
    let services = dev.ok(&["services"]);
    assert!(services.contains("2/2"), "{services}");
    assert_eq!(dev.node()["state"], "ready");
    // Deploying the same spec again changes nothing.
    let again = dev.deploy("web.yaml", WEB);
    assert!(again.contains("unchanged"), "{again}");
}

#[test]
fn scale_up_and_down_and_rm_leave_no_process() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    dev.wait_ready("web", 2);
    dev.ok(&["scale", "web", "4"]);
    let four = dev.wait_ready("web", 4);
    let pids: Vec<u64> = four.iter().map(pid).collect();
    dev.ok(&["scale", "web", "1"]);
    let one = dev.wait_ready("web", 1);
    assert_eq!(one[0]["slot"], 1);
    wait_for("scaled-down processes to exit", || {
        (pids.iter().filter(|p| alive(**p)).count() == 1).then_some(())
    });
    dev.ok(&["rm", "web"]);
    wait_for("the service to be forgotten", || {
        (dev.json(&["services"]).as_array().unwrap().is_empty()).then_some(())
    });
    wait_for("every process to exit", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    let err = dev.fails(&["ps", "web"]);
    assert!(err.contains("no service named \"web\""), "{err}");
}

#[test]
fn sigkilled_task_is_restarted_and_ready_again() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let before = dev.wait_ready("web", 2);
    let victim = &before[0];
    sigkill(pid(victim));
    let id = victim["id"].as_str().unwrap();
    let after = wait_for("the killed task to run again", || {
        dev.tasks("web")
            .into_iter()
            .find(|t| t["id"] == id && t["restarts"] == 1 && t["ready"] == true)
    });
    assert_ne!(pid(&after), pid(victim));
    assert_eq!(
        port(&after),
        port(victim),
        "a restarted task keeps its port"
    );
    assert!(
        http_get(port(&after), "/healthz")
            .unwrap()
            .contains("200 OK")
    );
    let exited = dev.wait_event(id, "exited");
    assert!(
        exited["message"].as_str().unwrap().contains("SIGKILL"),
        "{exited}"
    );
}

#[test]
fn failing_liveness_probe_restarts_the_task() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let before = dev.wait_ready("web", 2);
    let victim = &before[1];
    http_get(port(victim), "/fail").unwrap();
    let id = victim["id"].as_str().unwrap();
    let event = dev.wait_event(id, "unhealthy");
    assert!(
        event["message"].as_str().unwrap().contains("answered 503"),
        "{event}"
    );
    let after = wait_for(
        "the unhealthy task to be replaced by a healthy process",
        || {
            dev.tasks("web")
                .into_iter()
                .find(|t| t["id"] == id && t["restarts"] == 1 && t["ready"] == true)
        },
    );
    assert_ne!(pid(&after), pid(victim));
    assert!(!alive(pid(victim)));
}

#[test]
fn readiness_gates_the_ready_flag() {
    let dev = Dev::start(&[]);
    // The app binds its port 5 s after starting: running at once, ready only then (5 s leaves a
    // loaded machine time to read the starting state first).
    dev.deploy(
        "slow.yaml",
        r#"
name: slow
command: ["DEMO_APP", "--port", "${PORT}", "--delay-ready", "5000"]
ports: [http]
readiness: { http: { path: /healthz, port: http }, period: 100ms }
"#,
    );
    let starting = wait_for("the task to start", || {
        dev.tasks("slow").into_iter().find(|t| t["pid"].is_u64())
    });
    assert_eq!(starting["ready"], false, "{starting}");
    assert_eq!(starting["state"], "starting");
    let ready = dev.wait_ready("slow", 1);
    assert_eq!(ready[0]["restarts"], 0);
    // Readiness failing later takes the task out of rotation without restarting it.
    dev.deploy(
        "flaky.yaml",
        r#"
name: flaky
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [http]
readiness: { http: { path: /healthz, port: http }, period: 100ms, failure_threshold: 1 }
"#,
    );
    let t = dev.wait_ready("flaky", 1).remove(0);
    http_get(port(&t), "/fail").unwrap();
    let unready = wait_for("the task to turn unready", || {
        dev.tasks("flaky").into_iter().find(|x| x["ready"] == false)
    });
    assert_eq!(unready["restarts"], 0);
    assert_eq!(unready["state"], "running");
    assert_eq!(pid(&unready), pid(&t));
}

fn exiting(name: &str, policy: &str, code: i32) -> String {
    format!(
        r#"
name: {name}
command: ["DEMO_APP", "--port", "0", "--exit-after", "100", "--exit-code", "{code}"]
restart: {{ policy: {policy}, initial_backoff: 50ms, max_backoff: 200ms }}
"#
    )
}

#[test]
fn restart_policies_decide_what_comes_back() {
    let dev = Dev::start(&[]);
    dev.deploy("always.yaml", &exiting("always", "always", 0));
    dev.deploy("onfail-ok.yaml", &exiting("onfail-ok", "on-failure", 0));
    dev.deploy("onfail-bad.yaml", &exiting("onfail-bad", "on-failure", 3));
    dev.deploy("never.yaml", &exiting("never", "never", 3));
    wait_for("always to restart even after a clean exit", || {
        dev.tasks("always")
            .into_iter()
            .find(|t| t["restarts"].as_u64() >= Some(3))
    });
    wait_for("on-failure to restart a failing task", || {
        dev.tasks("onfail-bad")
            .into_iter()
            .find(|t| t["restarts"].as_u64() >= Some(3))
    });
    let ok = wait_for("on-failure to leave a clean exit alone", || {
        dev.tasks("onfail-ok")
            .into_iter()
            .find(|t| t["state"] == "exited")
    });
    let never = wait_for("never to leave a failed task down", || {
        dev.tasks("never")
            .into_iter()
            .find(|t| t["state"] == "failed")
    });
    assert_eq!(never["exit_code"], 3);
    assert_eq!(never["message"], "exited with status 3");
    // Both stay down: more restarts of `always` go by meanwhile.
    let later = dev.tasks("always")[0]["restarts"].as_u64().unwrap();
    wait_for("more restarts of always", || {
        (dev.tasks("always")[0]["restarts"].as_u64().unwrap() >= later + 2).then_some(())
    });
    assert_eq!(dev.tasks("onfail-ok")[0]["restarts"], ok["restarts"]);
    assert_eq!(dev.tasks("never")[0]["restarts"], 0);
}

#[test]
fn crash_loop_backoff_doubles() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "crashy.yaml",
        r#"
name: crashy
command: ["DEMO_APP", "--port", "0", "--exit-after", "0", "--exit-code", "1"]
restart: { policy: always, initial_backoff: 100ms, max_backoff: 800ms }
"#,
    );
    let delays: Vec<String> = wait_for("five restarts", || {
        let delays: Vec<String> = dev
            .events()
            .into_iter()
            .filter(|e| e["service"] == "crashy" && e["reason"] == "restarting")
            .map(|e| {
                e["message"]
                    .as_str()
                    .unwrap()
                    .split(" in ")
                    .nth(1)
                    .unwrap()
                    .to_string()
            })
            .collect();
        (delays.len() >= 5).then_some(delays)
    });
    assert_eq!(delays[..5], ["100ms", "200ms", "400ms", "800ms", "800ms"]);
}

#[test]
fn restarting_dev_keeps_services_and_their_tasks() {
    let mut dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let before = dev.wait_ready("web", 2);
    let ids: Vec<String> = before
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    // A clean stop stops every task: nothing outlives the agent.
    dev.stop();
    for t in &before {
        assert!(!alive(pid(t)), "task {} outlived outpost dev", t["id"]);
    }
    dev.restart();
    let after = dev.wait_ready("web", 2);
    let mut after_ids: Vec<String> = after
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    after_ids.sort();
    assert_eq!(after_ids, ids, "the same tasks come back, not new ones");
    for t in &after {
        assert!(http_get(port(t), "/healthz").unwrap().contains("200 OK"));
    }
}

#[test]
fn a_killed_dev_readopts_running_tasks() {
    let mut dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let before = dev.wait_ready("web", 2);
    dev.restart_after_kill();
    for t in &before {
        assert!(alive(pid(t)), "task {} died with the agent", t["id"]);
    }
    let after = dev.wait_ready("web", 2);
    let mut pids_before: Vec<u64> = before.iter().map(pid).collect();
    let mut pids_after: Vec<u64> = after.iter().map(pid).collect();
    pids_before.sort();
    pids_after.sort();
    assert_eq!(pids_before, pids_after, "re-adopted, not restarted");
    assert!(after.iter().all(|t| t["restarts"] == 0));
    dev.wait_event(before[0]["id"].as_str().unwrap(), "adopted");
    // An adopted task is still supervised: killing it brings it back.
    sigkill(pid(&before[0]));
    let id = before[0]["id"].as_str().unwrap();
    wait_for("the adopted task to be restarted", || {
        dev.tasks("web")
            .into_iter()
            .find(|t| t["id"] == id && t["restarts"] == 1 && t["ready"] == true)
    });
}

#[test]
fn logs_show_task_output_and_follow_across_restarts() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let tasks = dev.wait_ready("web", 2);
    // The app prints its line just after binding, which readiness may beat.
    wait_for("every task's listening line in the logs", || {
        let all = dev.ok(&["logs", "web"]);
        tasks
            .iter()
            .all(|t| {
                let id = t["id"].as_str().unwrap();
                all.contains(&format!("{id} | demo-app: listening on port {}", port(t)))
            })
            .then_some(())
    });
    let id = tasks[0]["id"].as_str().unwrap();
    let one = dev.ok(&["logs", id, "--tail", "1"]);
    assert_eq!(one.lines().count(), 1, "{one}");
    // Follow one task while it crashes and comes back.
    let mut follow = std::process::Command::new(support::outpost_bin())
        .arg("--data-dir")
        .arg(dev.data_dir())
        .args(["logs", "-f", id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.matches("listening on port").count() >= 2 {
                break;
            }
        }
        let _ = seen_tx.send(seen);
    });
    let _ = http_get(port(&tasks[0]), "/crash");
    let seen = seen_rx
        .recv_timeout(support::PATIENCE)
        .expect("logs -f showed the restart within the deadline");
    follow.kill().unwrap();
    let _ = follow.wait();
    assert!(seen.contains("crashing as asked"), "{seen}");
    assert!(seen.contains("--- outpost: restart 1 of task"), "{seen}");
}

#[test]
fn events_record_what_happened() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let tasks = dev.wait_ready("web", 2);
    let reasons: Vec<String> = dev
        .events()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    for expected in ["node-registered", "created", "placed", "started", "ready"] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "no {expected} event in {reasons:?}"
        );
    }
    let table = dev.ok(&["events", "--service", "web"]);
    assert!(table.contains(tasks[0]["id"].as_str().unwrap()), "{table}");
    assert!(
        !table.contains("node-registered"),
        "filtered by service: {table}"
    );
}

/// Pids of every process in process group `pgid`.
fn group(pgid: u64) -> Vec<u64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // After the command name: state, ppid, pgrp.
        if fields.get(2).and_then(|g| g.parse::<u64>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn stopping_a_task_stops_everything_it_forked() {
    let dev = Dev::start(&[]);
    // A shell that leaves a background child behind and then becomes the app.
    dev.deploy(
        "forky.yaml",
        r#"
name: forky
replicas: 2
command: ["sh", "-c", "sleep 3000 & exec DEMO_APP --port ${PORT}"]
ports: [http]
readiness: { tcp: { port: http } }
stop_grace: 1s
"#,
    );
    let tasks = dev.wait_ready("forky", 2);
    let groups: Vec<u64> = tasks.iter().map(pid).collect();
    for g in &groups {
        wait_for("the forked sleep to appear", || {
            (group(*g).len() == 2).then_some(())
        });
    }
    // Scale-down stops slot 2's whole group; rm stops the other.
    let slot2 = tasks.iter().find(|t| t["slot"] == 2).map(pid).unwrap();
    dev.ok(&["scale", "forky", "1"]);
    wait_for("the scaled-down group to be empty", || {
        group(slot2).is_empty().then_some(())
    });
    dev.ok(&["rm", "forky"]);
    wait_for("every group to be empty", || {
        groups.iter().all(|g| group(*g).is_empty()).then_some(())
    });
}

#[test]
fn a_process_over_its_memory_limit_is_stopped_and_reported() {
    let dev = Dev::start(&[]);
    let notes = dev.node()["notes"].to_string();
    dev.deploy(
        "hog.yaml",
        r#"
name: hog
command: ["DEMO_APP", "--port", "0", "--alloc-mb", "200"]
restart: { policy: never }
resources: { limits: { memory: 32Mi } }
"#,
    );
    let t = wait_for("the task to fail", || {
        dev.tasks("hog")
            .into_iter()
            .find(|t| t["state"] == "failed")
    });
    if notes.contains("cgroup") {
        assert_eq!(
            t["message"], "killed: out of memory (over its memory limit)",
            "{t}"
        );
    } else {
        // The address-space rlimit makes the allocation itself fail.
        assert_ne!(t["exit_code"], 0, "{t}");
    }
}
