//! Rolling updates as an operator runs them through the real binary: a deploy that changes a
//! service replaces its tasks a slot at a time, a bad revision rolls itself back, a canary
//! holds until promoted, a rollout pauses and resumes, and undo works after a restart.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::{Dev, wait_within};

/// A rollout of four slots with a 1 s monitor takes several seconds; a loaded machine more.
const ROLLOUT_PATIENCE: Duration = Duration::from_secs(90);

/// Four replicas whose `GREETING` is `VERSION`, ready once their port answers, replaced one
/// at a time, start-first, each watched for a second.
fn web(version: &str, extra: &str) -> String {
    format!(
        r#"
name: web
replicas: 4
command: ["DEMO_APP", "--port", "${{PORT}}"{extra}]
env: {{ GREETING: "{version}" }}
ports: [{{ name: http }}]
readiness: {{ tcp: {{ port: http }}, period: 100ms }}
restart: {{ policy: always, initial_backoff: 100ms, max_backoff: 1s }}
update: {{ parallelism: 1, monitor: 1s }}
"#
    )
}

/// Tasks wanted running, and how many replicas are ready: as `ps` shows the tasks, and no
/// more than `services` says (both must hold the line during a rollout).
fn counts(dev: &Dev) -> (Vec<Value>, usize) {
    let tasks = dev.tasks("web");
    let ready = (tasks.iter())
        .filter(|t| t["ready"] == true && t["state"] == "running")
        .count();
    let services = dev.json(&["services"]);
    let listed = (services.as_array().into_iter().flatten())
        .find(|s| s["name"] == "web")
        .and_then(|s| s["ready"].as_u64())
        .unwrap_or(0) as usize;
    (tasks, ready.min(listed))
}

fn versions(tasks: &[Value]) -> BTreeSet<u64> {
    tasks.iter().filter_map(|t| t["version"].as_u64()).collect()
}

/// Polls the tasks until `done` holds, checking at each look that at least four are ready and
/// at most five are wanted (replicas + parallelism).
fn watch_rollout(dev: &Dev, what: &str, done: impl Fn(&[Value]) -> bool) -> (usize, usize) {
    let (mut fewest_ready, mut most_wanted) = (usize::MAX, 0);
    wait_within(ROLLOUT_PATIENCE, what, || {
        let (tasks, ready) = counts(dev);
        fewest_ready = fewest_ready.min(ready);
        most_wanted = most_wanted.max(tasks.len());
        done(&tasks).then_some(())
    });
    (fewest_ready, most_wanted)
}

/// Waits until every task runs `version`, checking start-first's bounds all along: never
/// fewer than 4 ready, never more than 5 wanted (replicas + parallelism).
fn rolls_to(dev: &Dev, version: u64) {
    let what = format!("every task at version {version}");
    let (fewest_ready, most_wanted) = watch_rollout(dev, &what, |t| {
        t.len() == 4 && versions(t) == BTreeSet::from([version])
    });
    assert!(
        fewest_ready >= 4,
        "ready replicas dropped to {fewest_ready}"
    );
    assert!(
        most_wanted <= 5,
        "{most_wanted} tasks at once, over replicas + parallelism"
    );
}

fn rollout(dev: &Dev) -> Value {
    dev.json(&["rollout", "status", "web"])
}

#[test]
fn a_start_first_update_never_drops_below_the_wanted_ready_replicas() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web("one", ""));
    dev.wait_ready("web", 4);
    dev.deploy("web.yaml", &web("two", ""));
    rolls_to(&dev, 2);
    let (ok, out, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("completed version 2 over 1: 4/4 updated"),
        "{out}"
    );
    let history = dev.ok(&["rollout", "history", "web"]);
    assert!(
        history.contains("2 (current)") && history.contains("env"),
        "{history}"
    );
    // Each step is an event.
    let reasons: BTreeSet<String> = (dev.events().iter())
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    for reason in [
        "rollout-started",
        "rollout-task-updated",
        "rollout-completed",
    ] {
        assert!(reasons.contains(reason), "no {reason} event: {reasons:?}");
    }
}

#[test]
fn a_revision_that_crashes_at_start_rolls_back_while_the_old_one_serves() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web("one", ""));
    dev.wait_ready("web", 4);
    dev.deploy(
        "web.yaml",
        &web("two", r#", "--exit-after", "300", "--exit-code", "3""#),
    );
    let (fewest_ready, _) = watch_rollout(&dev, "the rollback to version 1", |t| {
        t.len() == 4
            && versions(t) == BTreeSet::from([1])
            && rollout(&dev)["rollout"]["state"] == "rolled-back"
    });
    assert!(
        fewest_ready >= 4,
        "the old revision stopped serving: {fewest_ready} ready"
    );
    let (ok, out, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(!ok, "a rolled back rollout passed: {out}");
    assert!(err.contains("was rolled back"), "{err}");
    let status = rollout(&dev);
    let why = status["rollout"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("exited with code 3"), "{status}");
    assert_eq!(status["version"], 1);
}

#[test]
fn a_canary_holds_until_promoted() {
    let dev = Dev::start(&[]);
    let canary = |v: &str| web(v, "").replace("monitor: 1s", "monitor: 1s, canary: 1");
    dev.deploy("web.yaml", &canary("one"));
    dev.wait_ready("web", 4);
    dev.deploy("web.yaml", &canary("two"));
    wait_within(ROLLOUT_PATIENCE, "the canary held", || {
        (rollout(&dev)["held"] == true).then_some(())
    });
    let (ok, _, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(!ok && err.contains("canary"), "{err}");
    let (tasks, _) = counts(&dev);
    let new: Vec<&Value> = tasks.iter().filter(|t| t["version"] == 2).collect();
    assert_eq!(new.len(), 1, "one canary task: {tasks:?}");
    dev.ok(&["rollout", "promote", "web"]);
    let (ok, out, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(ok, "{out}{err}");
    assert_eq!(versions(&counts(&dev).0), BTreeSet::from([2]));
}

#[test]
fn a_paused_rollout_starts_nothing_new_until_resumed() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web("one", ""));
    dev.wait_ready("web", 4);
    dev.deploy("web.yaml", &web("two", ""));
    dev.ok(&["rollout", "pause", "web"]);
    let (ok, _, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(!ok && err.contains("paused"), "{err}");
    // What was in flight when it paused finishes; nothing more starts, for several monitors.
    let started = |dev: &Dev| counts(dev).0.iter().filter(|t| t["version"] == 2).count();
    let at_pause = started(&dev);
    // On a slow machine a first slot may be done before the pause lands; the whole is not.
    assert!(at_pause < 4, "the rollout ended before it was paused");
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        assert_eq!(started(&dev), at_pause, "a paused rollout started a task");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every task runs its own revision's spec: an old task that crashes mid-rollout comes
    // back as the old revision, while the new one answers as the new.
    let greeting = |t: &Value| {
        let port = t["ports"]["http"].as_u64()?;
        support::http_get(port, "/").filter(|body| body.contains("one") || body.contains("two"))
    };
    let (tasks, _) = counts(&dev);
    let old = tasks
        .iter()
        .find(|t| t["version"] == 1)
        .expect("an old task")
        .clone();
    let _ = support::http_get(old["ports"]["http"].as_u64().unwrap(), "/crash");
    wait_within(
        ROLLOUT_PATIENCE,
        "the old task back after its crash",
        || {
            let (tasks, _) = counts(&dev);
            let back = tasks.iter().find(|t| t["id"] == old["id"])?;
            (back["restarts"].as_u64() > Some(0) && back["ready"] == true).then(|| back.clone())
        },
    );
    for t in counts(&dev).0 {
        let answer = wait_within(ROLLOUT_PATIENCE, "a greeting", || greeting(&t));
        let expected = if t["version"] == 1 { "one" } else { "two" };
        assert!(
            answer.contains(expected),
            "{} of version {} said {answer}",
            t["id"],
            t["version"]
        );
    }
    dev.ok(&["rollout", "resume", "web"]);
    let (ok, out, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(ok, "{out}{err}");
    assert_eq!(versions(&counts(&dev).0), BTreeSet::from([2]));
}

#[test]
fn undo_goes_back_a_revision_after_a_restart_and_bad_requests_change_nothing() {
    let mut dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web("one", ""));
    dev.wait_ready("web", 4);
    dev.deploy("web.yaml", &web("two", ""));
    let (ok, out, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(ok, "{out}{err}");
    dev.restart();
    let err = dev.fails(&["rollout", "undo", "web", "--to-revision", "7"]);
    assert!(
        err.contains("revision 7 of web is not kept (kept: 1, 2)"),
        "{err}"
    );
    let err = dev.fails(&["rollout", "promote", "web"]);
    assert!(err.contains("no rollout under way"), "{err}");
    assert_eq!(
        rollout(&dev)["version"],
        2,
        "a refused request changed the version"
    );
    dev.ok(&["rollout", "undo", "web"]);
    let (ok, out, err) = dev.cli(&["rollout", "status", "web", "-w"]);
    assert!(ok, "an undo asked for is a success: {out}{err}");
    let (tasks, _) = counts(&dev);
    assert_eq!(versions(&tasks), BTreeSet::from([1]), "{tasks:?}");
    assert_eq!(tasks.len(), 4);
}

#[test]
fn a_deploy_during_a_rollout_supersedes_it() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web("one", ""));
    dev.wait_ready("web", 4);
    dev.deploy("web.yaml", &web("two", ""));
    wait_within(ROLLOUT_PATIENCE, "a task of version 2 ready", || {
        let (tasks, _) = counts(&dev);
        tasks
            .iter()
            .any(|t| t["version"] == 2 && t["ready"] == true)
            .then_some(())
    });
    dev.deploy("web.yaml", &web("three", ""));
    rolls_to(&dev, 3);
    let status = rollout(&dev);
    assert_eq!(
        (
            status["rollout"]["from"].as_u64(),
            status["rollout"]["to"].as_u64()
        ),
        (Some(2), Some(3))
    );
}

#[test]
fn a_revision_that_never_becomes_ready_rolls_back() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &web("one", ""));
    dev.wait_ready("web", 4);
    // Its port opens only after ten minutes: running, never ready.
    dev.deploy("web.yaml", &web("two", r#", "--delay-ready", "600000""#));
    let (fewest_ready, _) = watch_rollout(&dev, "the rollback to version 1", |t| {
        t.len() == 4
            && versions(t) == BTreeSet::from([1])
            && rollout(&dev)["rollout"]["state"] == "rolled-back"
    });
    assert!(
        fewest_ready >= 4,
        "the old revision stopped serving: {fewest_ready} ready"
    );
    let why = rollout(&dev)["rollout"]["message"].clone();
    assert!(
        why.as_str()
            .unwrap_or_default()
            .contains("did not become ready in time"),
        "{why}"
    );
}
