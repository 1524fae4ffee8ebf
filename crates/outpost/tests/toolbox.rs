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

    // What the run before printed as it died, apart from the current run's output.
    let previous = dev.ok(&["logs", &id, "--previous"]);
    assert!(
        previous.contains("exiting with status 3 as asked"),
        "{previous}"
    );
    assert_eq!(
        previous.matches("listening on port").count(),
        1,
        "one run: {previous}"
    );
    assert!(!previous.contains("--- outpost: restart"), "{previous}");
    let lines = dev.ok(&["logs", &id, "--grep", "exiting"]);
    assert!(
        !lines.is_empty() && lines.lines().all(|l| l.contains("exiting")),
        "{lines}"
    );
    let json = dev.ok(&["-o", "json", "logs", "crasher"]);
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["task"], id.as_str(), "{json}");
    assert!(first["line"].is_string(), "{json}");
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
    let err = dev.fails(&["logs", &id, "--previous"]);
    assert!(err.contains("has not restarted"), "{err}");
}

#[test]
fn dev_prints_its_replicas_and_keeps_its_log_in_a_file() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("web.yaml");
    let text = WEB.replace("DEMO_APP", &support::demo_app().display().to_string());
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("stdout");
    let data = dir.path().join("data");
    let mut child = Command::new(support::outpost_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["--api", "127.0.0.1:0", "dev"])
        .arg(&spec)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let printed = wait_for("dev to print where both replicas answer", || {
        let text = std::fs::read_to_string(&out).ok()?;
        (text.matches("ready").count() >= 2).then_some(text)
    });
    support::stop_child(&mut child);
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    let log = std::fs::read_to_string(data.join("outpost.log")).unwrap();
    assert!(printed.contains("log: "), "{printed}");
    assert!(
        !printed.contains(" INFO "),
        "log lines among the replicas:\n{printed}"
    );
    assert!(!stderr.contains(" INFO "), "log lines on stderr:\n{stderr}");
    assert!(log.contains("API listening on"), "{log}");
    support::remove_cgroups(&data);
}

/// A service that fits no node, so it costs no process: its replica count is all there is.
fn unplaceable(name: &str) -> String {
    format!(
        "name: {name}\ncommand: [\"DEMO_APP\"]\nresources: {{ requests: {{ cpu: \"500\" }} }}\n"
    )
}

fn replicas(dev: &Dev, service: &str) -> u64 {
    let services = dev.json(&["services"]);
    (services.as_array().unwrap().iter())
        .find(|s| s["name"] == service)
        .and_then(|s| s["replicas"].as_u64())
        .unwrap()
}

#[test]
fn the_cli_scales_several_services_reads_stdin_and_keeps_quiet_on_a_closed_pipe() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dev = Dev::start(&[]);

    // `-f -` reads the spec from standard input.
    let mut deploy = Command::new(support::outpost_bin())
        .arg("--data-dir")
        .arg(dev.data_dir())
        .args(["deploy", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = format!("{}---\n{}", unplaceable("web"), unplaceable("api"))
        .replace("DEMO_APP", &support::demo_app().display().to_string());
    deploy
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = deploy.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((replicas(&dev, "web"), replicas(&dev, "api")), (1, 1));

    dev.ok(&["scale", "web=3", "api=2"]);
    assert_eq!((replicas(&dev, "web"), replicas(&dev, "api")), (3, 2));
    dev.ok(&["scale", "web", "4"]);
    assert_eq!(replicas(&dev, "web"), 4);
    // One bad target refuses them all.
    let err = dev.fails(&["scale", "web=1", "nope=1"]);
    assert!(
        err.contains("\"nope\"") && err.contains("nothing was scaled"),
        "{err}"
    );
    let err = dev.fails(&["scale", "web=many"]);
    assert!(
        err.contains("web=many") && err.contains("whole number"),
        "{err}"
    );
    assert_eq!(replicas(&dev, "web"), 4);

    // A reader that goes away ends the listing without a word.
    let mut ps = Command::new(support::outpost_bin())
        .arg("--data-dir")
        .arg(dev.data_dir())
        .args(["ps", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(ps.stdout.take());
    let out = ps.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");

    let events = dev.ok(&["events"]);
    let header: Vec<&str> = events.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["TIME", "LEVEL", "SUBJECT", "REASON", "MESSAGE"]);
}

/// `outpost exec TASK -- ARGV`: (exit success, stdout, stderr) and the exit code.
fn exec(dev: &Dev, task: &str, argv: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["exec", task, "--"];
    args.extend_from_slice(argv);
    let out = dev.try_cli(&args).expect("cannot run outpost");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn exec_runs_beside_a_process_task_and_a_container_and_passes_the_exit_status_on() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "web.yaml",
        &WEB.replace("replicas: 2", "replicas: 1\nenv: { GREETING: hi }"),
    );
    let task = dev.wait_ready("web", 1)[0].clone();
    let (id, port) = (
        task["id"].as_str().unwrap(),
        task["ports"]["http"].as_u64().unwrap(),
    );

    // A process task's command gets the task's environment and cgroup.
    let script = "echo $GREETING $PORT; grep -c outpost /proc/self/cgroup >&2; exit 7";
    let (code, out, err) = exec(&dev, id, &["/bin/sh", "-c", script]);
    assert_eq!(code, Some(7), "{out}{err}");
    assert_eq!(out, format!("hi {port}\n"));
    assert!(
        err.trim().parse::<u32>().is_ok_and(|n| n > 0),
        "not in the task's cgroup: {err}"
    );
    let (code, out, _) = exec(&dev, id, &["/bin/true"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    let (code, _, err) = exec(&dev, id, &["/no/such/program"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot start \"/no/such/program\""), "{err}");
    let (code, _, err) = exec(&dev, "web.9.999", &["/bin/true"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no task named \"web.9.999\""), "{err}");

    let Some(image) = support::docker_image() else {
        return;
    };
    dev.deploy(
        "box.yaml",
        &format!(
            "name: box\ndriver: docker\nimage: {image}\n\
             ports: [{{ name: http, container_port: 8080 }}]\n\
             readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
        ),
    );
    let boxed = dev.wait_ready("box", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The image has nothing but demo-app: its probe client answers by its exit status.
    let (code, out, err) = exec(&dev, &boxed, &["/demo-app", "probe", "8080", "/"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, _) = exec(&dev, &boxed, &["/demo-app", "probe", "1"]);
    assert_eq!(code, Some(1));
}

#[test]
fn stats_show_a_busy_task_using_cpu_and_memory_and_the_node_beside_it() {
    let dev = Dev::start(&[]);
    dev.deploy(
        "busy.yaml",
        "name: busy\ncommand: [\"/bin/sh\", \"-c\", \"while :; do :; done\"]\n",
    );
    dev.deploy("web.yaml", &WEB.replace("replicas: 2", "replicas: 1"));
    wait_for("busy to run", || {
        (dev.tasks("busy").first()?["state"] == "running").then_some(())
    });
    dev.wait_ready("web", 1);

    let reading = dev.json(&["stats", "busy", "--no-stream"]);
    let tasks = reading["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "only the service asked for: {reading}");
    let busy = &tasks[0];
    let cpu = busy["cpu_percent"].as_f64().unwrap();
    // A shell spinning on one CPU of a loaded two-core machine: well over a tenth of it.
    assert!(cpu > 10.0, "{busy}");
    assert!(busy["memory_bytes"].as_u64().unwrap() > 0, "{busy}");
    let node = &reading["nodes"][0];
    assert!(node["cpu_percent"].as_f64().unwrap() > 0.0, "{node}");
    assert!(node["memory_total"].as_u64().unwrap() > node["memory_bytes"].as_u64().unwrap());

    let all = dev.json(&["stats", "--no-stream"]);
    let names: Vec<&str> = (all["tasks"].as_array().unwrap().iter())
        .filter_map(|t| t["service"].as_str())
        .collect();
    assert!(names.contains(&"busy") && names.contains(&"web"), "{all}");
    let web = (all["tasks"].as_array().unwrap().iter())
        .find(|t| t["service"] == "web")
        .unwrap();
    assert_eq!(web["memory_limit"], 64 << 20, "{web}");
    let table = dev.ok(&["stats", "--no-stream"]);
    assert!(
        table.contains("CPU %") && table.contains("MEM USAGE / LIMIT"),
        "{table}"
    );
    assert!(table.contains(" / 64Mi"), "{table}");
    let nodes = dev.ok(&["nodes"]);
    let header = nodes.lines().next().unwrap();
    assert!(header.contains("MEMORY USED"), "{nodes}");
    let row = nodes.lines().nth(1).unwrap();
    assert!(
        row.contains("Mi") || row.contains("Gi"),
        "a real figure: {nodes}"
    );
    let err = dev.fails(&["stats", "nowhere"]);
    assert!(
        err.contains("no service or node named \"nowhere\""),
        "{err}"
    );
}

#[test]
fn ps_a_keeps_a_replaced_task_with_its_end_and_its_logs() {
    let dev = Dev::start(&[]);
    let one = WEB.replace("replicas: 2", "replicas: 1\nenv: { GREETING: one }");
    dev.deploy("web.yaml", &one);
    let old = dev.wait_ready("web", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    dev.deploy("web.yaml", &one.replace("GREETING: one", "GREETING: two"));
    let replaced = wait_for("the old task to be replaced and kept", || {
        let all = dev.json(&["ps", "-a", "web"]);
        let old = all
            .as_array()?
            .iter()
            .find(|t| t["id"] == old.as_str())?
            .clone();
        (old["state"] != "running").then_some(old)
    });
    assert_eq!(replaced["desired"], "shutdown", "{replaced}");
    assert_eq!(replaced["message"], "stopped", "{replaced}");
    let current: Vec<String> = (dev.json(&["ps", "web"]).as_array().unwrap().iter())
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !current.contains(&old),
        "ps without -a shows only current tasks: {current:?}"
    );
    let table = dev.ok(&["ps", "-a", "web"]);
    let row = table.lines().find(|l| l.contains(&old)).unwrap();
    assert!(
        row.contains("exited") && !row.contains("stopping"),
        "{table}"
    );

    // Its output and record outlive it.
    let log = dev.ok(&["logs", &old]);
    assert!(log.contains("listening on port"), "{log}");
    let record = dev.json(&["inspect", &old]);
    assert_eq!(record["task"]["id"], old.as_str());
}

fn ids(tasks: &[Value]) -> std::collections::BTreeSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn restart_and_stop_replace_tasks_by_the_update_rules() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", WEB);
    let before = ids(&dev.wait_ready("web", 2));

    // A rolling restart: every task replaced by one of a new revision of the same spec.
    let out = dev.ok(&["restart", "web"]);
    assert!(out.contains("by its update rules"), "{out}");
    let after = wait_for("every task of web to be replaced", || {
        let ready = dev.wait_ready("web", 2);
        let now = ids(&ready);
        (now.is_disjoint(&before) && ready.iter().all(|t| t["version"] == 2)).then_some(now)
    });
    let history = dev.ok(&["rollout", "history", "web"]);
    assert!(history.contains("restart"), "{history}");

    // One task: stopped, and another takes its slot.
    let one = after.iter().next().unwrap().clone();
    let out = dev.ok(&["restart", &one]);
    assert!(out.contains("is stopping; a new task takes slot"), "{out}");
    wait_for("the task to be replaced", || {
        let now = ids(&dev.wait_ready("web", 2));
        (!now.contains(&one)).then_some(())
    });

    // A stopped service keeps its spec and starts again with a scale.
    let out = dev.ok(&["stop", "web"]);
    assert!(
        out.contains("`outpost scale web 2` starts it again"),
        "{out}"
    );
    wait_for("web to stop", || dev.tasks("web").is_empty().then_some(()));
    dev.ok(&["scale", "web", "2"]);
    dev.wait_ready("web", 2);

    let err = dev.fails(&["restart", "nope"]);
    assert!(err.contains("no service named \"nope\""), "{err}");
    let err = dev.fails(&["restart", "web.9.999"]);
    assert!(err.contains("no running task named \"web.9.999\""), "{err}");
}

/// `TIME TEXT` lines of `logs --timestamps` as (time, text).
fn stamped_lines(text: &str) -> Vec<(std::time::SystemTime, String)> {
    text.lines()
        .map(|line| {
            let (time, rest) = line.split_once(' ').expect("a time and a line");
            let time = humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{line}: {e}"));
            (time, rest.to_string())
        })
        .collect()
}

#[test]
fn logs_tell_when_each_line_was_written_and_select_lines_by_time() {
    let dev = Dev::start(&[]);
    let go = tempfile::tempdir().unwrap();
    let go = go.path().join("go");
    let spec = format!(
        r#"
name: ticker
command: ["sh", "-c", "echo one; sleep 3; echo two; while [ ! -e {} ]; do sleep 0.1; done; echo three; exec sleep 600"]
"#,
        go.display()
    );
    let before = std::time::SystemTime::now();
    dev.deploy("ticker.yaml", &spec);
    let id = wait_for("the ticker's task", || {
        Some(dev.tasks("ticker").first()?["id"].as_str()?.to_string())
    });
    let out = wait_for("both lines", || {
        let out = dev.ok(&["logs", &id, "--timestamps"]);
        out.contains(" two\n").then_some(out)
    });
    let lines = stamped_lines(&out);
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["one", "two"], "{out}");
    let (one, two) = (lines[0].0, lines[1].0);
    let apart = two.duration_since(one).unwrap_or_default();
    assert!(
        apart >= std::time::Duration::from_millis(2_700),
        "lines written 3 s apart are stamped {apart:?} apart: {out}"
    );
    assert!(
        one >= before - std::time::Duration::from_secs(1) && two <= std::time::SystemTime::now(),
        "{out}"
    );

    // An instant between the two lines selects the later one, for the task and its service.
    let between = humantime::format_rfc3339_millis(one + std::time::Duration::from_secs(1));
    let recent = dev.ok(&["logs", &id, "--since", &between.to_string()]);
    assert_eq!(recent, "two\n");
    let service = dev.ok(&["logs", "ticker", "-t", "--since", &between.to_string()]);
    let two_stamp = out.lines().nth(1).unwrap();
    assert_eq!(service, format!("{id} | {two_stamp}\n"));
    assert_eq!(dev.ok(&["logs", &id, "--since", "1h"]), "one\ntwo\n");
    assert_eq!(
        dev.ok(&["logs", &id, "--since", "1h", "--tail", "1"]),
        "two\n"
    );
    let json = dev.ok(&["-o", "json", "logs", &id]);
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["line"], "one", "{json}");
    assert_eq!(
        first["time"].as_str(),
        out.split_once(' ').map(|(t, _)| t),
        "{json}"
    );
    let err = dev.fails(&["logs", &id, "--since", "yesterday"]);
    assert!(err.contains("since") && err.contains("RFC 3339"), "{err}");

    // Followed, a new line comes with the time it was read at.
    let mut follow = std::process::Command::new(support::outpost_bin())
        .arg("--data-dir")
        .arg(dev.data_dir())
        .args(["logs", &id, "-f", "-t"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = || {
        rx.recv_timeout(support::PATIENCE)
            .expect("a line from `logs -f`")
    };
    assert!(next_line().ends_with(" one"));
    assert!(next_line().ends_with(" two"));
    let asked = std::time::SystemTime::now();
    std::fs::write(&go, "").unwrap();
    let three = stamped_lines(&next_line());
    support::stop_child(&mut follow);
    assert_eq!(three[0].1, "three");
    assert!(
        three[0].0 >= asked - std::time::Duration::from_millis(1)
            && three[0].0 <= std::time::SystemTime::now(),
        "a line written after {asked:?} is stamped {:?}",
        three[0].0
    );
}

/// A terminal the test owns, as an operator's: a pty whose slave end is the CLI's stdin,
/// stdout and stderr (and controlling terminal, so a resize reaches it as SIGWINCH), and whose
/// master end the test types into and reads what the CLI prints from.
struct Terminal {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    fn open(rows: u16, cols: u16) -> Terminal {
        use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, unlockpt};
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = openpt(flags).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave = ioctl_tiocgptpeer(&master, flags).unwrap();
        let term = Terminal {
            master: std::fs::File::from(master),
            slave,
            screen: Default::default(),
        };
        term.resize(rows, cols);
        let (mut reader, screen) = (term.master.try_clone().unwrap(), term.screen.clone());
        // Ends once no process holds the slave end (the read fails with EIO).
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        term
    }

    /// Sets its size, as a terminal window resized: the kernel sends SIGWINCH to the
    /// processes in its foreground.
    fn resize(&self, rows: u16, cols: u16) {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, size).unwrap();
    }

    /// `outpost ARGS` on this terminal, leading a session of its own whose controlling
    /// terminal this is (`setsid --ctty`), as a login shell's command would.
    fn spawn(&self, dev: &Dev, args: &[&str]) -> std::process::Child {
        let stdio = || std::process::Stdio::from(self.slave.try_clone().unwrap());
        std::process::Command::new("setsid")
            .args(["--wait", "--ctty"])
            .arg(support::outpost_bin())
            .arg("--data-dir")
            .arg(dev.data_dir())
            .args(args)
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .unwrap()
    }

    fn modes(&self) -> rustix::termios::Termios {
        rustix::termios::tcgetattr(&self.slave).unwrap()
    }

    fn type_in(&self, keys: &str) {
        use std::io::Write;
        (&self.master).write_all(keys.as_bytes()).unwrap();
    }

    /// Everything printed on it so far.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until what was printed after `from` (a length of [`Terminal::screen`]) contains
    /// `text`; the screen then.
    fn wait_for_text(&self, from: usize, text: &str) -> String {
        wait_for(&format!("{text:?} on the terminal"), || {
            let screen = self.screen();
            screen.get(from..)?.contains(text).then_some(screen)
        })
    }

    /// Types `line` (with Enter) until what it prints shows `text`: a resize reaches the
    /// command a moment after the terminal's own, and nothing on the screen tells when.
    fn retype_until(&self, line: &str, text: &str) -> String {
        use std::time::{Duration, Instant};
        let deadline = Instant::now() + support::PATIENCE;
        loop {
            let from = self.screen().len();
            self.type_in(&format!("{line}\r"));
            let answer_by = Instant::now() + Duration::from_secs(1);
            while Instant::now() < answer_by {
                let screen = self.screen();
                if screen.get(from..).is_some_and(|s| s.contains(text)) {
                    return screen;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} after typing {line:?}: {}",
                self.screen()
            );
        }
    }
}

/// The exit status of `child`, which ends within the usual patience.
fn exit_code(child: &mut std::process::Child) -> Option<i32> {
    wait_for("outpost exec to exit", || child.try_wait().unwrap()).code()
}

/// The modes of a terminal that can differ after a session: all of them but the speeds.
fn mode_flags(t: &rustix::termios::Termios) -> impl PartialEq + std::fmt::Debug {
    use rustix::termios::SpecialCodeIndex as Code;
    let codes = [
        Code::VMIN,
        Code::VTIME,
        Code::VINTR,
        Code::VEOF,
        Code::VERASE,
    ];
    (
        t.input_modes,
        t.output_modes,
        t.control_modes,
        t.local_modes,
        codes.map(|c| t.special_codes[c]),
    )
}

#[test]
fn exec_it_gives_a_shell_a_terminal_the_size_of_the_operators_resized_with_it() {
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &WEB.replace("replicas: 2", "replicas: 1"));
    let id = dev.wait_ready("web", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let term = Terminal::open(37, 101);
    let before = term.modes();
    let mut cli = term.spawn(&dev, &["exec", "-it", &id, "--", "sh"]);
    wait_for("the shell's prompt", || {
        let screen = term.screen();
        (screen.contains("$ ") || screen.contains("# ")).then_some(())
    });

    // An operator who looks away: idle past the listeners' 5 s header-read (and keep-alive)
    // timeout, which must not cut a session whose request body is still open.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let from = term.screen().len();
    term.type_in("stty size; tty\r");
    let screen = term.wait_for_text(from, "37 101\r\n/dev/pts/");
    // The shell's terminal echoes the line; this one, in raw mode, does not echo it again.
    let typed = &screen[from..];
    assert_eq!(typed.matches("stty size; tty").count(), 1, "{typed:?}");

    // Ctrl-C is a byte for the command's terminal to turn into SIGINT, not this CLI's end.
    let from = term.screen().len();
    term.type_in("sleep 600\r");
    term.wait_for_text(from, "sleep 600");
    term.type_in("\x03");
    let from = term.screen().len();
    term.type_in("echo $((6 * 7))done\r");
    term.wait_for_text(from, "42done");

    term.resize(45, 132);
    term.retype_until("stty size", "45 132");

    term.type_in("exit 7\r");
    assert_eq!(exit_code(&mut cli), Some(7), "{}", term.screen());
    assert_eq!(mode_flags(&term.modes()), mode_flags(&before));
    let mut raw = before.clone();
    raw.make_raw();
    assert_ne!(mode_flags(&raw), mode_flags(&before), "it starts cooked");
}

#[test]
fn exec_i_pipes_stdin_to_the_command_and_t_without_a_terminal_is_refused() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dev = Dev::start(&[]);
    dev.deploy("web.yaml", &WEB.replace("replicas: 2", "replicas: 1"));
    let id = dev.wait_ready("web", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let piped = |input: &str, argv: &[&str]| {
        let mut cli = Command::new(support::outpost_bin())
            .arg("--data-dir")
            .arg(dev.data_dir())
            .args(["exec", "-i", &id, "--"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        cli.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = cli.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = piped("a\nb\n", &["wc", "-l"]);
    assert_eq!((code, out.trim()), (Some(0), "2"), "{err}");
    // The end of stdin is the command's: `cat` ends, and the script's status comes back.
    let (code, out, err) = piped("one\ntwo\n", &["sh", "-c", "cat; echo end >&2; exit 5"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(5), "one\ntwo\n", "end\n")
    );
    // Without -i the command reads nothing.
    let (code, out, _) = exec(&dev, &id, &["wc", "-c"]);
    assert_eq!((code, out.trim()), (Some(0), "0"));

    // An older client's request, a lone JSON document, still runs (with no stdin).
    let (api, token) = dev.api_and_token();
    let bearer = format!("Bearer {token}");
    let (status, body) = support::request(
        "POST",
        &api,
        &format!("/v1/tasks/{id}/exec"),
        &[("Authorization", &bearer)],
        Some(r#"{"argv": ["/bin/sh", "-c", "echo from-json $(wc -c)"]}"#),
    );
    assert_eq!(status, 200, "{body}");
    // Frames in a chunked body: the output, then how it ended.
    assert!(body.contains("from-json 0\n"), "stdin is empty: {body:?}");
    assert!(body.contains(r#"{"code":0}"#), "{body:?}");

    let out = dev
        .try_cli(&["exec", "-it", &id, "--", "sh"])
        .expect("cannot run outpost");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the input device is not a TTY"), "{err}");
}

#[test]
fn exec_it_reaches_a_containers_tty_with_its_size_and_stdin() {
    let Some(image) = support::docker_image() else {
        return;
    };
    let dev = Dev::start(&[]);
    dev.deploy(
        "box.yaml",
        &format!(
            "name: box\ndriver: docker\nimage: {image}\n\
             ports: [{{ name: http, container_port: 8080 }}]\n\
             readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
        ),
    );
    let boxed = dev.wait_ready("box", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let term = Terminal::open(33, 77);
    let before = term.modes();
    let mut cli = term.spawn(
        &dev,
        &["exec", "-it", &boxed, "--", "/demo-app", "tty-report"],
    );
    term.type_in("hello\r");
    term.wait_for_text(0, "tty-report: hello tty=yes size=33x77");
    term.resize(40, 100);
    term.retype_until("again", "tty-report: again tty=yes size=40x100");
    // ^D, passed through raw, is the end of input on the container's terminal.
    term.type_in("\x04");
    assert_eq!(exit_code(&mut cli), Some(3), "{}", term.screen());
    assert!(term.screen().contains("tty-report: end of input"));
    assert_eq!(mode_flags(&term.modes()), mode_flags(&before));

    // -i alone: piped stdin, no terminal.
    let mut cli = std::process::Command::new(support::outpost_bin())
        .arg("--data-dir")
        .arg(dev.data_dir())
        .args(["exec", "-i", &boxed, "--", "/demo-app", "tty-report"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    cli.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = cli.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert_eq!(
        text,
        "tty-report: piped tty=no size=none\ntty-report: end of input\n"
    );
}
