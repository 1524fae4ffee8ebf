//! Secrets and configs from the operator's side: created from files, read by tasks as files
//! on a tmpfs, and never shown: not in any listing, dry run, event, log or API answer, and not
//! in clear in any data dir.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{Dev, http_get, request, wait_for};

/// A value no test output could hold by chance.
fn unique_value(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}-Zq8", std::process::id())
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

const WEB: &str = r#"
name: web
command: [DEMO_APP, --require-file, "${OUTPOST_SECRETS_DIR}/db-password"]
ports: [http]
readiness: { http: { path: /healthz, port: http }, period: 200ms }
secrets: [db-password]
configs: [{ source: settings, target: app/settings.conf }]
stop_grace: 2s
"#;

fn port(task: &Value) -> u64 {
    task["ports"]["http"].as_u64().unwrap()
}

/// The task's files on this agent's tmpfs root.
fn task_dir(dev: &Dev, task: &str) -> PathBuf {
    let id = dev.agent_id();
    ["/run", "/dev/shm"]
        .iter()
        .map(|p| Path::new(p).join(format!("outpost-{id}")))
        .find(|root| root.exists())
        .expect("the agent's tmpfs root")
        .join(task)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

fn assert_nowhere(value: &str, outputs: &[(String, String)], dirs: &[&Path]) {
    for needle in [value.to_string(), hex(value)] {
        for (what, text) in outputs {
            assert!(
                !text.contains(&needle),
                "the secret is in the output of {what}:\n{text}"
            );
        }
        for dir in dirs {
            for file in files_under(dir) {
                let bytes = std::fs::read(&file).unwrap_or_default();
                let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                assert!(!found, "the secret is in clear in {}", file.display());
            }
        }
    }
}

/// Everything an operator or a client can see: CLI listings in both formats, the dry run,
/// events, task logs, and the API's answers.
fn every_output(dev: &Dev, spec: &Path, service: &str) -> Vec<(String, String)> {
    let spec = spec.to_str().unwrap();
    let mut out = Vec::new();
    for args in [
        vec!["ps"],
        vec!["services"],
        vec!["events"],
        vec!["nodes"],
        vec!["secret", "ls"],
        vec!["config", "ls"],
        vec!["deploy", "--dry-run", "-f", spec],
        vec!["logs", service],
    ] {
        out.push((args.join(" "), dev.ok(&args)));
        let mut json = vec!["-o", "json"];
        json.extend(&args);
        out.push((json.join(" "), dev.ok(&json)));
    }
    let token = std::fs::read_to_string(dev.data_dir().join("token")).unwrap();
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    for path in [
        "/v1/services",
        "/v1/tasks",
        "/v1/events",
        "/v1/secrets",
        "/v1/nodes/local/assignments",
        "/v1/nodes/local/secrets/db-password",
        "/v1/nodes/local/configs/settings",
    ] {
        let (status, body) = request("GET", api.trim(), path, &[("Authorization", &auth)], None);
        out.push((format!("GET {path} ({status})"), body));
    }
    out.push(("the dev log".into(), dev.log()));
    out
}

#[test]
fn a_secret_reaches_its_process_task_as_a_file_and_nowhere_else() {
    let dev = Dev::start(&[]);
    let values = tempfile::tempdir().unwrap();
    let secret = unique_value("pw");
    let secret_file = values.path().join("pw.txt");
    std::fs::write(&secret_file, &secret).unwrap();
    let settings = values.path().join("settings.conf");
    std::fs::write(&settings, "greeting=hi\n").unwrap();
    dev.ok(&[
        "secret",
        "create",
        "db-password",
        "-f",
        secret_file.to_str().unwrap(),
    ]);
    dev.ok(&[
        "config",
        "create",
        "settings",
        "-f",
        settings.to_str().unwrap(),
    ]);
    let spec = dev.spec_file("web.yaml", WEB);
    dev.ok(&["deploy", "-f", spec.to_str().unwrap()]);
    let task = dev.wait_ready("web", 1).remove(0);
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(
        http_get(port(&task), "/file")
            .unwrap()
            .rsplit("\r\n\r\n")
            .next(),
        Some(secret.as_str())
    );

    let dir = task_dir(&dev, &id);
    let file = dir.join("secrets/db-password");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400, "a secret is its owner's alone");
    assert_eq!(
        std::fs::read_to_string(dir.join("configs/app/settings.conf")).unwrap(),
        "greeting=hi\n"
    );
    assert!(
        agent::objects::is_tmpfs(&dir),
        "{} is not on a tmpfs",
        dir.display()
    );

    let listed = dev.json(&["secret", "ls"]);
    assert_eq!(listed[0]["name"], "db-password");
    assert_eq!(listed[0]["size"], secret.len());
    assert_eq!(listed[0]["services"], serde_json::json!(["web"]));
    assert_nowhere(
        &secret,
        &every_output(&dev, &spec, "web"),
        &[dev.data_dir()],
    );

    let outputs = every_output(&dev, &spec, "web");
    let admin_read = outputs
        .iter()
        .find(|(what, _)| what.contains("/secrets/db-password"));
    assert!(
        admin_read.is_some_and(|(what, _)| what.ends_with("(403)")),
        "only the node's agent reads a value: {admin_read:?}"
    );
    let err = dev.fails(&["secret", "rm", "db-password"]);
    assert!(err.contains("used by service web"), "{err}");
    assert_eq!(dev.json(&["secret", "ls"]).as_array().unwrap().len(), 1);

    // A new value is a new version of the service: its task is replaced and reads it.
    let renewed = unique_value("pw2");
    std::fs::write(&secret_file, &renewed).unwrap();
    dev.ok(&[
        "secret",
        "create",
        "db-password",
        "-f",
        secret_file.to_str().unwrap(),
    ]);
    let task = wait_for("a version 2 task ready", || {
        dev.tasks("web")
            .into_iter()
            .find(|t| t["version"] == 2 && t["ready"] == true)
    });
    let body = http_get(port(&task), "/file").unwrap();
    assert!(body.ends_with(&renewed), "{body}");
    assert_nowhere(
        &renewed,
        &every_output(&dev, &spec, "web"),
        &[dev.data_dir()],
    );
    wait_for("the old task's files removed", || {
        (!dir.exists()).then_some(())
    });

    dev.ok(&["rm", "web"]);
    wait_for("web gone", || {
        dev.json(&["services"])
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    dev.ok(&["secret", "rm", "db-password"]);
    assert!(dev.json(&["secret", "ls"]).as_array().unwrap().is_empty());
}

#[test]
fn bad_secrets_and_references_are_refused_and_change_nothing() {
    let dev = Dev::start(&[]);
    let err = dev.fails(&["secret", "create", "pw", "-f", "/no/such/file"]);
    assert!(err.contains("/no/such/file"), "{err}");
    let values = tempfile::tempdir().unwrap();
    let big = values.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 500 * 1024 + 1]).unwrap();
    let err = dev.fails(&["secret", "create", "pw", "-f", big.to_str().unwrap()]);
    assert!(err.contains("big.bin") && err.contains("500 KiB"), "{err}");
    let err = dev.fails(&["secret", "create", "bad/name", "-f", "-"]);
    assert!(
        err.contains("not a valid name") || err.contains("bad/name"),
        "{err}"
    );

    let spec = dev.spec_file("web.yaml", WEB);
    let err = dev.fails(&["deploy", "-f", spec.to_str().unwrap()]);
    assert!(
        err.contains("web.secrets[0]") && err.contains("no secret named \"db-password\""),
        "{err}"
    );
    assert!(err.contains("web.configs[0]"), "{err}");
    assert!(dev.json(&["services"]).as_array().unwrap().is_empty());

    let undefined = "services:\n  db:\n    image: x\n    secrets: [db-password]\n";
    let compose = dev.spec_file("compose.yaml", undefined);
    let err = dev.fails(&["deploy", "-f", compose.to_str().unwrap()]);
    assert!(
        err.contains("db.secrets[0]") && err.contains("not defined"),
        "{err}"
    );

    let missing = "services:\n  db:\n    image: x\n    secrets: [db-password]\nsecrets:\n  db-password:\n    file: ./nowhere.txt\n";
    let compose = dev.spec_file("compose.yaml", missing);
    let err = dev.fails(&["deploy", "-f", compose.to_str().unwrap()]);
    assert!(err.contains("nowhere.txt"), "{err}");
    assert!(dev.json(&["services"]).as_array().unwrap().is_empty());
    assert!(dev.json(&["secret", "ls"]).as_array().unwrap().is_empty());
    let err = dev.fails(&["secret", "rm", "nothing"]);
    assert!(err.contains("no secret named \"nothing\""), "{err}");
}

/// docker/awesome-compose's database reads its password from the file
/// `POSTGRES_PASSWORD_FILE` names; the stand-in refuses to start without it.
#[test]
fn a_compose_database_starts_with_its_password_file_from_secrets() {
    let Some(image) = support::docker_image() else {
        return;
    };
    let dev = Dev::start(&[]);
    let password = unique_value("db");
    std::fs::create_dir_all(dev.data_dir().join("db")).unwrap();
    let values = tempfile::tempdir().unwrap();
    std::fs::write(values.path().join("password.txt"), &password).unwrap();
    let compose = format!(
        r#"
name: app
services:
  db:
    image: {image}
    command: ["--port", "8080", "--require-file-env", "POSTGRES_PASSWORD_FILE"]
    environment:
      - POSTGRES_PASSWORD_FILE=/run/secrets/db-password
    secrets:
      - db-password
    ports: ["8080"]
    healthcheck:
      test: ["CMD", "/demo-app", "probe", "8080"]
      interval: 300ms
secrets:
  db-password:
    file: {}/password.txt
"#,
        values.path().display()
    );
    let path = dev.spec_file("compose.yaml", &compose);
    dev.ok(&["deploy", "-f", path.to_str().unwrap()]);
    let task = dev.wait_ready("app_db", 1).remove(0);
    let port = task["ports"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_u64()
        .unwrap();
    let body = http_get(port, "/file").unwrap();
    assert!(body.ends_with(&password), "the container read {body}");
    let c = support::docker_inspect(task["container_id"].as_str().unwrap());
    let mounts = c["Mounts"].to_string();
    assert!(mounts.contains("/run/secrets/db-password"), "{mounts}");
    let env = c["Config"]["Env"].to_string();
    assert!(!env.contains("OUTPOST_SECRETS_DIR"), "{env}");
    let secrets = dev.json(&["secret", "ls"]);
    assert_eq!(secrets[0]["services"], serde_json::json!(["app_db"]));
    assert_nowhere(
        &password,
        &every_output(&dev, &path, "app_db"),
        &[dev.data_dir()],
    );
    dev.ok(&["rm", "--stack", "app"]);
}
