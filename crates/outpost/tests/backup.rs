//! Backups and restores as an operator runs them: `outpost server backup FILE` against a
//! running server (which goes on taking writes), then, the server gone, `outpost server restore
//! FILE --data-dir DIR` and a server started from DIR, with the agents of the old cluster.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{AgentNode, ClientCert, Dev, request, request_as, wait_for};

const WEB: &str = r#"
name: web
command: [DEMO_APP, --require-file, "${OUTPOST_SECRETS_DIR}/db-password"]
ports: [http]
readiness: { http: { path: /healthz, port: http }, period: 200ms }
secrets: [db-password]
stop_grace: 2s
"#;

/// `outpost` run with no server to talk to: restores are offline.
fn outpost(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(support::outpost_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn restore(file: &Path, dir: &Path, listen: &str) -> (bool, String, String) {
    outpost(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "server",
        "restore",
        file.to_str().unwrap(),
        "--listen",
        listen,
    ])
}

fn listen_addr(server: &Dev) -> String {
    let (api, _) = server.api_and_token();
    api.trim_start_matches("https://").to_string()
}

fn names(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = (listing.as_array().unwrap().iter())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_server_restored_from_a_backup_has_the_services_revisions_secrets_and_agents_of_the_old() {
    let mut server = Dev::start_server();
    let agent = AgentNode::start(&server, "edge-1", "23400-23449");
    let agent_token = server.ok(&["token", "show", "agent"]).trim().to_string();
    let secret = server.data_dir().join("pw.txt");
    std::fs::write(&secret, "s3cret-value").unwrap();
    server.ok(&[
        "secret",
        "create",
        "db-password",
        "-f",
        secret.to_str().unwrap(),
    ]);
    server.deploy("web.yaml", WEB);
    server.deploy("web.yaml", &WEB.replace("stop_grace: 2s", "stop_grace: 3s"));
    server.wait_ready("web", 1);
    server.deploy(
        "idle.yaml",
        "name: idle\ncommand: [DEMO_APP]\nreplicas: 0\n",
    );
    let spec_before = server.json(&["inspect", "web"]);

    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("site.backup");
    let said = server.ok(&["server", "backup", file.to_str().unwrap()]);
    assert!(
        said.contains("2 services") && said.contains("1 nodes") && said.contains("1 secrets"),
        "{said}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup holds the CA key");
    let taken = std::fs::read(&file).unwrap();
    let refused = server.fails(&["server", "backup", file.to_str().unwrap()]);
    assert!(
        refused.contains("exists already") && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        taken,
        "a refusal leaves FILE as it was"
    );
    server.ok(&["server", "backup", file.to_str().unwrap(), "--force"]);

    // The server is lost; a new one is made from the backup on the same address.
    let listen = listen_addr(&server);
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = restore(&file, dir.path(), &listen);
    assert!(ok, "restore failed: {err}");
    assert!(
        out.contains("2 services") && out.contains("start it"),
        "{out}"
    );
    let restored = Dev::start_server_in(dir, &["--listen", &listen]);

    assert_eq!(names(&restored.json(&["services"])), ["idle", "web"]);
    assert_eq!(
        restored.json(&["inspect", "web"])["spec"],
        spec_before["spec"]
    );
    let history = restored.ok(&["rollout", "history", "web"]);
    assert!(history.contains("2 (current)"), "{history}");
    assert_eq!(names(&restored.json(&["secret", "ls"])), ["db-password"]);
    // The old cluster's agent reconnects with its certificate, and its task serves again.
    restored.wait_node_state("edge-1", "ready");
    restored.wait_ready("web", 1);
    // The join token of the old cluster is the restored one's, and a new node joins with it.
    assert_eq!(restored.ok(&["token", "show", "agent"]).trim(), agent_token);
    let second = AgentNode::start(&restored, "edge-2", "23450-23499");
    // The restored cluster opens the secrets it sealed: a replica on the new node reads it.
    restored.ok(&["scale", "web", "2"]);
    let tasks = restored.wait_ready("web", 2);
    let on_new = (tasks.iter())
        .find(|t| t["node"] == "edge-2")
        .unwrap_or_else(|| panic!("no replica on edge-2: {tasks:?}"));
    let port = on_new["ports"]["http"].as_u64().unwrap();
    let read = wait_for("the new replica to serve its secret", || {
        support::http_get(port, "/file")
    });
    assert!(read.contains("s3cret-value"), "{read}");
    drop((second, agent));
}

#[test]
fn backup_needs_the_admin_token_and_restore_refuses_bad_files_and_dirs_with_state() {
    let server = Dev::start_server();
    let agent = AgentNode::start(&server, "edge-1", "23500-23549");
    server.deploy(
        "idle.yaml",
        "name: idle\ncommand: [DEMO_APP]\nreplicas: 0\n",
    );
    let (api, token) = server.api_and_token();
    let (status, body) = request("GET", &api, "/v1/backup", &[], None);
    assert_eq!(status, 401, "{body}");
    let wrong = "Bearer not-the-token";
    let (status, body) = request("GET", &api, "/v1/backup", &[("Authorization", wrong)], None);
    assert_eq!(status, 401, "{body}");
    let cert = ClientCert {
        cert: &agent.dir.path().join("node.pem"),
        key: &agent.dir.path().join("node-key.pem"),
    };
    let (status, _, body) = request_as(Some(&cert), "GET", &api, "/v1/backup", &[], None);
    assert_eq!(status, 403, "an agent's certificate: {body}");
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("site.backup");
    let (ok, _, err) = outpost(&[
        "--api",
        &api,
        "--ca",
        server.data_dir().join("ca.pem").to_str().unwrap(),
        "--token",
        "wrong",
        "server",
        "backup",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && !file.exists(), "without the admin token: {err}");
    let auth = format!("Bearer {token}");
    let (status, _) = request("GET", &api, "/v1/backup", &[("Authorization", &auth)], None);
    assert_eq!(status, 200);
    server.ok(&["server", "backup", file.to_str().unwrap()]);
    let good = std::fs::read(&file).unwrap();

    let bad = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = backups.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut changed = good.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    let mut newer = good.clone();
    newer[14..16].copy_from_slice(&99u16.to_be_bytes());
    let cases = [
        (bad("truncated", &good[..good.len() - 100]), "damaged"),
        (bad("changed", &changed), "damaged"),
        (
            bad("notes.txt", b"not a backup at all"),
            "not an outpost backup",
        ),
        (bad("empty", b""), "not an outpost backup"),
        (bad("newer", &newer), "newer than this outpost reads"),
    ];
    for (path, why) in &cases {
        let target = backups.path().join("restored");
        let (ok, out, err) = restore(path, &target, "127.0.0.1:7400");
        assert!(!ok, "{} was restored: {out}", path.display());
        assert!(
            err.contains(why) && err.contains(path.to_str().unwrap()),
            "{err}"
        );
        assert!(
            !target.exists(),
            "a refused restore wrote {}",
            target.display()
        );
        let empty = tempfile::tempdir().unwrap();
        let (ok, _, _) = restore(path, empty.path(), "127.0.0.1:7400");
        assert!(
            !ok && entries(empty.path()).is_empty(),
            "an empty dir stays empty"
        );
    }
    // A data dir with a state, even a running server's, is refused by name.
    let (ok, _, err) = restore(&file, server.data_dir(), "127.0.0.1:7400");
    assert!(!ok, "restored over a running server's data dir");
    assert!(
        err.contains("not empty") && err.contains("state.redb"),
        "{err}"
    );
    let held = tempfile::tempdir().unwrap();
    std::fs::write(held.path().join("notes"), "keep").unwrap();
    let (ok, _, err) = restore(&file, held.path(), "127.0.0.1:7400");
    assert!(!ok && err.contains("notes"), "{err}");
    assert_eq!(entries(held.path()), ["notes"]);
    // The good file restores.
    let target = backups.path().join("restored");
    let (ok, _, err) = restore(&file, &target, "127.0.0.1:7400");
    assert!(ok, "{err}");
    assert!(entries(&target).contains(&"state.redb".to_string()));
}

#[test]
fn a_backup_taken_while_services_are_deployed_restores_every_service_acknowledged_before_it_and_no_gap()
 {
    let mut server = Dev::start_server();
    let spec = |n: usize| format!("name: svc-{n:03}\ncommand: [DEMO_APP]\nreplicas: 0\n");
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("busy.backup");
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (before, after) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 400 {
                n += 1;
                server.deploy(&format!("svc-{n}.yaml"), &spec(n));
                acknowledged.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        });
        wait_for("a few deploys", || {
            (acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= 5).then_some(())
        });
        let before = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        server.ok(&["server", "backup", file.to_str().unwrap()]);
        // The deploy in flight when the backup returned may be in it too.
        let after = acknowledged.load(std::sync::atomic::Ordering::SeqCst) + 1;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (before, after)
    });
    let listen = listen_addr(&server);
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = restore(&file, dir.path(), &listen);
    assert!(ok, "{err}");
    let restored = Dev::start_server_in(dir, &["--listen", &listen]);
    let got = names(&restored.json(&["services"]));
    let m = got.len();
    let prefix: Vec<String> = (1..=m).map(|n| format!("svc-{n:03}")).collect();
    assert_eq!(
        got, prefix,
        "the services of one moment: a prefix of the deploys"
    );
    assert!(
        (before..=after).contains(&m),
        "{m} services restored; {before} were acknowledged before the backup, {after} at most after"
    );
}
