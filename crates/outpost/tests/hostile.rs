//! The agent's task lifecycle under hostile use and careless operation, through the real binary
//! and real processes: an agent killed mid-deploy, tasks that fork and escape their process
//! group, probes that dump their environment, many replicas competing for ports.

mod support;

use std::collections::{BTreeMap, HashSet};

use support::{Dev, alive, http_get, sigkill, wait_for};

fn pid(task: &serde_json::Value) -> u64 {
    task["pid"]
        .as_u64()
        .expect("a running process task has a pid")
}

fn id(task: &serde_json::Value) -> String {
    task["id"].as_str().unwrap_or_default().to_string()
}

/// A demo app with no readiness probe: ready as soon as it runs.
const PLAIN: &str = r#"
name: plain
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
"#;

#[test]
fn a_readopted_task_without_readiness_probe_is_ready_again() {
    let mut dev = Dev::start(&[]);
    dev.deploy("plain.yaml", PLAIN);
    let before = dev.wait_ready("plain", 1);
    dev.restart_after_kill();
    let task = id(&before[0]);
    // The adoption's status goes out with its event: once the event is in, so is the status.
    dev.wait_event(&task, "adopted");
    let after = dev.wait_ready("plain", 1);
    assert_eq!(pid(&after[0]), pid(&before[0]), "re-adopted, not restarted");
    assert_eq!(after[0]["restarts"], 0);
}

#[test]
fn exec_probes_never_see_the_agents_environment() {
    let dev = Dev::start_with_env(&[("OPERATOR_SECRET", "hunter2")]);
    let dump = dev.data_dir().join("probe-env.txt");
    let spec = format!(
        r#"
name: nosy
command: ["DEMO_APP", "--port", "${{PORT}}"]
env: {{ MINE: "task-value" }}
ports: [{{ name: http }}]
readiness: {{ exec: ["sh", "-c", "env > {}"], period: 200ms }}
"#,
        dump.display()
    );
    dev.deploy("nosy.yaml", &spec);
    dev.wait_ready("nosy", 1);
    let env = wait_for("the probe's environment dump", || {
        std::fs::read_to_string(&dump)
            .ok()
            .filter(|t| t.contains("MINE="))
    });
    assert!(env.contains("MINE=task-value"), "{env}");
    assert!(env.contains("OUTPOST_TASK_ID=nosy."), "{env}");
    assert!(
        !env.contains("hunter2"),
        "the agent's secret reached a probe: {env}"
    );
    assert!(
        !env.contains("OUTPOST_TOKEN"),
        "the cluster token reached a probe"
    );
}

#[test]
fn many_replicas_get_distinct_ports_from_the_agents_range() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "many.yaml",
        &PLAIN.replace("name: plain", "name: many\nreplicas: 12"),
    );
    let tasks = dev.wait_ready("many", 12);
    let ports: HashSet<u64> = tasks
        .iter()
        .map(|t| t["ports"]["http"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 12, "two tasks share a port: {tasks:?}");
    for port in &ports {
        assert!(
            (20000..=29999).contains(port),
            "port {port} outside the agent's range"
        );
        assert!(http_get(*port, "/healthz").is_some_and(|r| r.contains("200 OK")));
    }
}

/// A task whose real work is a child of its main process, as with shell wrappers.
const WRAPPED: &str = r#"
name: wrapped
command: ["sh", "-c", "DEMO_APP --port ${PORT} & wait"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
restart: { initial_backoff: 100ms }
"#;

#[test]
fn a_task_whose_main_process_dies_restarts_without_its_leftovers() {
    let dev = Dev::start(&[]);
    dev.deploy("wrapped.yaml", WRAPPED);
    let task = dev.wait_ready("wrapped", 1).remove(0);
    let leftovers: Vec<u64> = dev
        .task_processes()
        .into_iter()
        .filter(|p| p.task == id(&task) && p.pid != pid(&task))
        .map(|p| p.pid)
        .collect();
    assert!(!leftovers.is_empty(), "the wrapper's child was not found");
    // Only the wrapper dies; its child still holds the port until the agent kills it.
    sigkill(pid(&task));
    let again = wait_for("the task to be ready again after a restart", || {
        dev.tasks("wrapped")
            .into_iter()
            .find(|t| t["restarts"] == 1 && t["ready"] == true && t["state"] == "running")
    });
    assert_ne!(pid(&again), pid(&task));
    for p in leftovers {
        assert!(!alive(p), "process {p} of the previous run outlived it");
    }
    let port = again["ports"]["http"].as_u64().unwrap();
    assert!(http_get(port, "/healthz").is_some_and(|r| r.contains("200 OK")));
}

#[test]
fn a_clean_stop_leaves_nothing_the_tasks_forked() {
    let mut dev = Dev::start(&[]);
    // The fork leaves the task's process group: only its cgroup (or the stop's sweep) finds it.
    let spec = WRAPPED
        .replace("name: wrapped", "name: escaper")
        .replace("DEMO_APP --port", "setsid sleep 1000 & DEMO_APP --port");
    dev.deploy("escaper.yaml", &spec);
    dev.wait_ready("escaper", 1);
    wait_for("the escaped fork", || {
        (dev.task_processes().len() >= 3).then_some(())
    });
    let agent = dev.agent_id();
    dev.stop();
    let left = support::marked_processes(&agent);
    assert!(left.is_empty(), "processes outlived a clean stop: {left:?}");
}

#[test]
fn a_dev_killed_during_deploys_leaves_no_untracked_task() {
    let mut dev = Dev::start(&[]);
    let names: Vec<String> = (0..8).map(|i| format!("svc{i}")).collect();
    for attempt in 0..3 {
        let files: Vec<String> = names
            .iter()
            .map(|n| {
                let spec = PLAIN.replace("name: plain", &format!("name: {n}{attempt}"));
                dev.spec_file(&format!("{n}{attempt}.yaml"), &spec)
                    .display()
                    .to_string()
            })
            .collect();
        let mut args = vec!["deploy"];
        for f in &files {
            args.extend(["-f", f.as_str()]);
        }
        dev.ok(&args);
        // Kill the agent as soon as it starts spawning: the window where a process may exist
        // before its handle is saved.
        wait_for("a first task process", || {
            (!dev.task_processes().is_empty()).then_some(())
        });
        dev.restart_after_kill();
        let all: Vec<String> = (0..=attempt)
            .flat_map(|a| names.iter().map(move |n| format!("{n}{a}")))
            .collect();
        for service in &all {
            dev.wait_ready(service, 1);
        }
        check_every_process_is_tracked(&dev, &all);
    }
    for service in dev.json(&["services"]).as_array().unwrap() {
        dev.ok(&["rm", service["name"].as_str().unwrap()]);
    }
    wait_for("rm to leave no task process", || {
        dev.task_processes().is_empty().then_some(())
    });
}

/// A SIGKILL of `dev` while it starts a task leaves a forked child holding copies of its
/// descriptors, and so the locks of `state.redb` and `agent.redb`, until that child execs, which
/// its cgroup writes can delay on a loaded machine. The restarted `dev` waits the locks out
/// instead of refusing to start. `flock` stands in for that child: it takes both locks once the
/// killed `dev` is gone and keeps them until the restarted one says it is waiting.
#[test]
fn a_dev_restarted_while_its_files_are_still_locked_for_a_moment_waits_and_starts() {
    let mut dev = Dev::start(&[]);
    dev.deploy("plain.yaml", PLAIN);
    let before = dev.wait_ready("plain", 1);
    dev.kill();
    let dir = dev.data_dir();
    let mut holder = std::process::Command::new("flock")
        .arg(dir.join("state.redb"))
        .arg("flock")
        .arg(dir.join("agent").join("agent.redb"))
        .args(["sh", "-c", "echo held; cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut held,
    )
    .unwrap();
    assert_eq!(held.trim(), "held");

    dev.launch_again();
    wait_for(
        "the restarted dev to wait for the lock of state.redb",
        || {
            let log = dev.log();
            (log.contains("state.redb") && log.contains("waiting up to")).then_some(())
        },
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    dev.wait_started();
    let after = dev.wait_ready("plain", 1);
    assert_eq!(id(&after[0]), id(&before[0]), "the task was re-adopted");
}

/// Every marked process belongs to exactly one tracked task (as its main process, or in its
/// process group), every tracked task has its process, and no two tasks share a port.
fn check_every_process_is_tracked(dev: &Dev, services: &[String]) {
    let tasks: Vec<serde_json::Value> = services.iter().flat_map(|s| dev.tasks(s)).collect();
    let by_pid: BTreeMap<u64, String> = tasks.iter().map(|t| (pid(t), id(t))).collect();
    assert_eq!(
        by_pid.len(),
        tasks.len(),
        "two tasks share a pid: {tasks:?}"
    );
    let processes = dev.task_processes();
    for p in &processes {
        let owner = by_pid.get(&p.pgrp);
        assert_eq!(
            owner,
            Some(&p.task),
            "untracked task process {p:?}; tracked: {by_pid:?}"
        );
    }
    for (pid, task) in &by_pid {
        assert!(
            processes.iter().any(|p| p.pid == *pid),
            "task {task} has no process {pid}"
        );
    }
    let ports: HashSet<u64> = tasks
        .iter()
        .map(|t| t["ports"]["http"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports.len(),
        tasks.len(),
        "two tasks share a port: {tasks:?}"
    );
}

/// Sets the soft open-file limit of process `pid` with util-linux's `prlimit`.
fn set_nofile(pid: u32, soft: u64) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit --nofile={soft}: failed");
}

/// The soft open-file limit of process `pid`, from `/proc/PID/limits`.
fn nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn a_task_is_not_taken_for_dead_while_file_descriptors_run_out() {
    let dev = Dev::start(&[]);
    let spec = r#"
name: web
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
liveness: { http: { path: /healthz, port: http }, period: 200ms, timeout: 500ms, failure_threshold: 2 }
readiness: { tcp: { port: http }, period: 200ms }
stop_grace: 1s
"#;
    dev.deploy("web.yaml", spec);
    let before = dev.wait_ready("web", 1).remove(0);
    let normal = nofile(dev.pid());
    // No new descriptor at all, as when idle connections have used them up: a limit at the
    // lowest free number would let one through whenever a lower one closes.
    set_nofile(dev.pid(), 0);
    // Probes fail, the agent wants the task killed, and cannot read /proc to confirm it is
    // still the task: it must neither skip the signal and call it dead, nor start a second one.
    wait_for("the agent to hold the signal back", || {
        dev.log().contains("not signalled").then_some(())
    });
    set_nofile(dev.pid(), normal);
    let after = wait_for("the task to be replaced cleanly", || {
        dev.tasks("web")
            .into_iter()
            .find(|t| t["restarts"] == 1 && t["ready"] == true && t["state"] == "running")
    });
    assert!(!alive(pid(&before)), "the old process outlived its kill");
    let processes = dev.task_processes();
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0].pgrp, pid(&after));
    let port = after["ports"]["http"].as_u64().unwrap();
    assert!(http_get(port, "/healthz").is_some_and(|r| r.contains("200 OK")));
}
