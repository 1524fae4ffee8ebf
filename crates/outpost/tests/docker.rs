//! The Docker driver against the real Docker Engine, with an image built here `FROM scratch`.
//! Skipped with a printed reason where no engine answers, except under CI, where they must run.

mod support;

use support::{Dev, agent_containers, docker_image, docker_inspect, http_get, sigkill, wait_for};

fn boxed(image: &str) -> String {
    format!(
        r#"
name: box
driver: docker
image: {image}
replicas: 2
ports: [{{ name: http, container_port: 8080 }}]
liveness: {{ http: {{ path: /healthz, port: http }}, period: 200ms, timeout: 2s, failure_threshold: 3 }}
readiness: {{ tcp: {{ port: http }}, period: 200ms }}
resources: {{ requests: {{ cpu: 100m, memory: 16Mi }}, limits: {{ cpu: 500m, memory: 32Mi, pids: 64 }} }}
stop_grace: 2s
"#
    )
}

fn container(task: &serde_json::Value) -> String {
    task["container_id"]
        .as_str()
        .expect("a docker task has a container id")
        .to_string()
}

fn port(task: &serde_json::Value) -> u64 {
    task["ports"]["http"].as_u64().unwrap()
}

#[test]
fn containers_run_labelled_limited_and_locked_down() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    dev.deploy("box.yaml", &boxed(image));
    let tasks = dev.wait_ready("box", 2);
    for t in &tasks {
        let id = t["id"].as_str().unwrap();
        assert!(
            http_get(port(t), "/")
                .unwrap()
                .contains(&format!("hello from {id}"))
        );
        assert_eq!(t["qos"], "Burstable", "requests below limits");
        let c = docker_inspect(&container(t));
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["outpost.service"], "box");
        assert_eq!(labels["outpost.task"], id);
        assert_eq!(labels["outpost.revision"], "1");
        let host = &c["HostConfig"];
        assert_eq!(host["Memory"], 32 << 20);
        assert_eq!(host["MemoryReservation"], 16 << 20);
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(host["PidsLimit"], 64);
        assert_eq!(host["RestartPolicy"]["Name"], "no");
        assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
        assert!(
            host["SecurityOpt"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "no-new-privileges=true" || o == "no-new-privileges:true"),
            "{host}"
        );
        assert_eq!(host["Privileged"], false);
    }
    dev.ok(&["scale", "box", "1"]);
    dev.wait_ready("box", 1);
    wait_for("one container left", || {
        (agent_containers(&dev).len() == 1).then_some(())
    });
    dev.ok(&["rm", "box"]);
    wait_for("no container left", || {
        agent_containers(&dev).is_empty().then_some(())
    });
}

#[test]
fn a_killed_container_is_replaced_and_an_unhealthy_one_restarted() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    dev.deploy("box.yaml", &boxed(image));
    let tasks = dev.wait_ready("box", 2);
    let (killed, sick) = (&tasks[0], &tasks[1]);
    sigkill(killed["pid"].as_u64().unwrap());
    http_get(port(sick), "/fail").unwrap();
    for (t, reason) in [(killed, "exited"), (sick, "unhealthy")] {
        let id = t["id"].as_str().unwrap();
        dev.wait_event(id, reason);
        let back = wait_for("the task to be ready again", || {
            dev.tasks("box")
                .into_iter()
                .find(|x| x["id"] == id && x["restarts"] == 1 && x["ready"] == true)
        });
        assert_ne!(
            container(&back),
            container(t),
            "a restart is a new container"
        );
        assert!(
            http_get(port(&back), "/healthz")
                .unwrap()
                .contains("200 OK")
        );
    }
    let exited = dev.wait_event(killed["id"].as_str().unwrap(), "exited");
    assert!(
        exited["message"].as_str().unwrap().contains("SIGKILL"),
        "{exited}"
    );
    wait_for("old containers removed", || {
        (agent_containers(&dev).len() == 2).then_some(())
    });
}

#[test]
fn exec_probes_and_compose_healthchecks_run_inside_the_container() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    // /demo-app exists only inside the image: passing proves the probe ran in the container.
    let compose = format!(
        r#"
name: probes
services:
  checked:
    image: {image}
    command: ["--port", "8080"]
    ports: ["8080"]
    healthcheck:
      test: ["CMD", "/demo-app", "probe", "8080"]
      interval: 300ms
      timeout: 2s
      retries: 2
"#
    );
    let path = dev.spec_file("compose.yaml", &compose);
    dev.ok(&["deploy", "-f", path.to_str().unwrap()]);
    let t = dev.wait_ready("probes_checked", 1).remove(0);
    let host_port = t["ports"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_u64()
        .unwrap();
    http_get(host_port, "/fail").unwrap();
    let id = t["id"].as_str().unwrap();
    let e = dev.wait_event(id, "unhealthy");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("/demo-app probe 8080 exited with status 1"),
        "{e}"
    );
}

#[test]
fn an_agent_restart_never_restarts_a_healthy_container() {
    let Some(image) = docker_image() else { return };
    let mut dev = Dev::start(&[]);
    dev.deploy("box.yaml", &boxed(image));
    let before = dev.wait_ready("box", 2);
    let ids: Vec<String> = before.iter().map(container).collect();
    // Killed outright, and then stopped cleanly: containers stay up both times.
    dev.restart_after_kill();
    dev.restart();
    let after = dev.wait_ready("box", 2);
    for t in &after {
        assert!(
            ids.contains(&container(t)),
            "container {} was replaced",
            container(t)
        );
        assert_eq!(t["restarts"], 0);
        assert!(http_get(port(t), "/healthz").unwrap().contains("200 OK"));
    }
    dev.wait_event(after[0]["id"].as_str().unwrap(), "adopted");
    // Re-adopted containers are still supervised: killed, the task's container is replaced and
    // the task is ready again. (Its liveness probe may add a restart on a loaded machine, so
    // the count is at least one.)
    sigkill(after[0]["pid"].as_u64().unwrap());
    let id = after[0]["id"].as_str().unwrap();
    let killed = container(&after[0]);
    let mut seen = None;
    let replaced = support::poll_within(std::time::Duration::from_secs(30), || {
        seen = (dev.tasks("box").into_iter()).find(|x| x["id"] == id);
        let t = seen.as_ref()?;
        let now = t["container_id"].as_str();
        (t["restarts"].as_u64() >= Some(1)
            && t["ready"] == true
            && now.is_some_and(|c| c != killed))
        .then_some(())
    });
    assert!(
        replaced.is_some(),
        "the adopted container was not replaced within 30 s: {seen:?}; events: {:?}",
        dev.events()
    );
}

#[test]
fn only_this_agents_stray_containers_are_removed() {
    let Some(image) = docker_image() else { return };
    let mut dev = Dev::start(&[]);
    dev.stop();
    let agent = std::fs::read_to_string(dev.data_dir().join("agent").join("agent-id")).unwrap();
    let start = |labels: &[String]| {
        let mut cmd = std::process::Command::new("docker");
        cmd.args(["run", "-d"]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        let out = cmd.arg(image).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let stray = start(&[
        format!("outpost.agent={}", agent.trim()),
        "outpost.task=gone.1.1".into(),
    ]);
    let unlabelled = start(&[]);
    let foreign = start(&[
        "outpost.agent=someone-else".into(),
        "outpost.task=x.1.1".into(),
    ]);
    dev.restart();
    wait_for("the stray container to be removed", || {
        (!agent_containers(&dev).contains(&stray)).then_some(())
    });
    for other in [&unlabelled, &foreign] {
        assert_eq!(
            docker_inspect(other)["State"]["Running"],
            true,
            "container {other} was touched"
        );
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", other])
            .output();
    }
}

#[test]
fn an_oom_killed_container_is_reported_as_such() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    dev.deploy(
        "hog.yaml",
        &format!(
            r#"
name: hog
driver: docker
image: {image}
command: ["--port", "8080", "--alloc-mb", "200"]
ports: [{{ name: http, container_port: 8080 }}]
restart: {{ policy: never }}
resources: {{ limits: {{ memory: 32Mi }} }}
"#
        ),
    );
    let t = wait_for("the task to be killed", || {
        dev.tasks("hog")
            .into_iter()
            .find(|t| t["state"] == "failed")
    });
    assert_eq!(
        t["message"], "killed: out of memory (over its memory limit)",
        "{t}"
    );
    assert_eq!(t["exit_code"], 137);
}

#[test]
fn a_missing_image_that_cannot_be_pulled_fails_the_task_with_the_reason() {
    if docker_image().is_none() {
        return;
    }
    let dev = Dev::start(&[]);
    dev.deploy(
        "ghost.yaml",
        "name: ghost\nimage: outpost-no-such-image:1\nports: [{ name: http, container_port: 80 }]\n",
    );
    let t = wait_for("the task to fail", || {
        dev.tasks("ghost")
            .into_iter()
            .find(|t| t["state"] == "failed")
    });
    let message = t["message"].as_str().unwrap();
    assert!(
        message.contains("outpost-no-such-image:1") && message.contains("no source could give it"),
        "{message}"
    );
}

#[test]
fn a_local_image_starts_when_the_registry_is_unreachable() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    let mut spec = boxed(image).replace("replicas: 2", "replicas: 1");
    spec.push_str("pull: always\n");
    dev.deploy("box.yaml", &spec);
    let t = dev.wait_ready("box", 1).remove(0);
    let warning = wait_for("the fallback event", || {
        dev.events()
            .into_iter()
            .find(|e| e["task"] == t["id"] && e["reason"] == "warning")
    });
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("starting from the Engine's local image"),
        "{warning}"
    );
}

#[test]
fn risky_settings_are_warned_about() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    let spec = boxed(image).replace(
        "replicas: 2",
        "replicas: 1\nuser: \"0\"\ncap_add: [NET_ADMIN]",
    );
    dev.deploy("box.yaml", &spec);
    let t = dev.wait_ready("box", 1).remove(0);
    let warnings: Vec<String> = dev
        .events()
        .into_iter()
        .filter(|e| e["task"] == t["id"] && e["reason"] == "warning")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("runs as root")),
        "{warnings:?}"
    );
    let caps = docker_inspect(&container(&t))["HostConfig"]["CapAdd"].clone();
    assert!(
        caps.as_array().unwrap().iter().any(|c| c == "NET_ADMIN"),
        "{caps}"
    );
}

#[test]
fn privileged_only_when_asked_and_then_with_a_warning() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    let spec = boxed(image)
        .replace("name: box", "name: priv")
        .replace("replicas: 2", "replicas: 1\nprivileged: true");
    dev.deploy("priv.yaml", &spec);
    let t = dev.wait_ready("priv", 1).remove(0);
    assert_eq!(
        docker_inspect(&container(&t))["HostConfig"]["Privileged"],
        true
    );
    wait_for("the privileged warning", || {
        dev.events().into_iter().find(|e| {
            e["task"] == t["id"]
                && e["reason"] == "warning"
                && e["message"].as_str().unwrap().contains("privileged")
        })
    });
}

#[test]
fn container_output_and_volumes_work_like_the_spec_says() {
    let Some(image) = docker_image() else { return };
    let dev = Dev::start(&[]);
    let host = dev.data_dir().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    let spec = boxed(image)
        .replace("replicas: 2", "replicas: 1")
        .replace("name: box", "name: vol")
        + &format!(
            "volumes: [\"{}:/data:ro\", \"outpost-test-cache:/cache\"]\n",
            host.display()
        );
    dev.deploy("vol.yaml", &spec);
    let t = dev.wait_ready("vol", 1).remove(0);
    let mounts = docker_inspect(&container(&t))["Mounts"].clone();
    let read_only_bind = mounts
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["Destination"] == "/data" && m["RW"] == false);
    let named = mounts
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["Destination"] == "/cache" && m["Name"] == "outpost-test-cache");
    assert!(read_only_bind && named, "{mounts}");
    // The Engine's log stream lands in the same per-task log as a process's output.
    let logs = wait_for("the container's output in outpost logs", || {
        let out = dev.ok(&["logs", "vol"]);
        out.contains("listening on port 8080").then_some(out)
    });
    assert!(
        logs.contains(&format!("{} | demo-app", t["id"].as_str().unwrap())),
        "{logs}"
    );
    dev.ok(&["rm", "vol"]);
    wait_for("no container left", || {
        agent_containers(&dev).is_empty().then_some(())
    });
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", "outpost-test-cache"])
        .output();
}
