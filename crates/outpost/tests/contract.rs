//! The API contract as a user meets it through the CLI: an oversized deploy names the limit, an
//! unknown log target says what was not found, a token can come from a file, and the data dir
//! the binary keeps is private.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::{Dev, outpost_bin, wait_for};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_deploy_over_the_body_limit_is_refused_naming_the_limit() {
    let dev = Dev::start(&[]);
    // 12 MiB in one env value: over the default 8 MiB limit, valid otherwise.
    let big = "x".repeat(12 << 20);
    let file = dev.spec_file(
        "big.yaml",
        &format!("name: big\ncommand: [\"DEMO_APP\"]\nenv: {{ BIG: \"{big}\" }}\n"),
    );
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("larger than the server's limit of 8 MiB"),
        "{err}"
    );
    assert!(err.contains("--max-body-size"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn an_unknown_log_target_says_what_was_not_found() {
    let dev = Dev::start(&[]);
    for target in ["..", "nope"] {
        let err = dev.fails(&["logs", target]);
        assert!(
            err.contains(&format!("no service or task named \"{target}\"")),
            "{target}: {err}"
        );
        assert!(!err.contains("404 Not Found: \n"), "{err}");
    }
}

#[test]
fn the_token_can_come_from_a_file_and_an_empty_one_is_named() {
    let dev = Dev::start(&[]);
    let api = std::fs::read_to_string(dev.data_dir().join("api")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let token_file = elsewhere.path().join("token");
    std::fs::copy(dev.data_dir().join("token"), &token_file).unwrap();
    let run = |args: &[&str]| {
        Command::new(outpost_bin())
            .args(["--api", api.trim()])
            .args(args)
            .current_dir(elsewhere.path())
            .env("OUTPOST_CA", dev.data_dir().join("ca.pem"))
            .env_remove("OUTPOST_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(&["--token-file", token_file.to_str().unwrap(), "services"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&token_file, "\n").unwrap();
    let out = run(&["--token-file", token_file.to_str().unwrap(), "services"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "the token file {} (--token-file) is empty",
            token_file.display()
        )),
        "{err}"
    );

    // The data dir's own token file, emptied, is named too instead of sending no token.
    let data_token = dev.data_dir().join("token");
    std::fs::write(&data_token, "").unwrap();
    let err = dev.fails(&["services"]);
    assert!(
        err.contains(&format!("the token is empty ({})", data_token.display())),
        "{err}"
    );
}

#[test]
fn the_data_dir_and_state_files_are_private_even_when_left_open() {
    let mut dev = Dev::start(&[]);
    dev.deploy(
        "web.yaml",
        "name: web\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\nports: [http]\nenv: { API_KEY: s3cret }\n",
    );
    let task = dev.wait_ready("web", 1).remove(0);
    let dir = dev.data_dir().to_path_buf();
    let task_log = dir.join(format!("agent/logs/{}.log", task["id"].as_str().unwrap()));
    let check = |when: &str| {
        for private in [dir.clone(), dir.join("agent"), dir.join("agent/logs")] {
            wait_for(
                &format!("{} to be private {when}", private.display()),
                || (mode(&private) == 0o700).then_some(()),
            );
        }
        let files = [
            "state.redb",
            "token",
            "api",
            "agent/agent.redb",
            "agent/agent-id",
        ];
        // Each is tightened as the part that owns it starts: waited for, as the directories.
        for file in files {
            wait_for(&format!("{file} to be private {when}"), || {
                (mode(&dir.join(file)) == 0o600).then_some(())
            });
        }
        assert_eq!(mode(&task_log), 0o600, "the task's log {when}");
    };
    check("at first start");
    // Opened up, as an older version or a careless operator leaves them: a restart tightens.
    dev.stop();
    let open = std::fs::Permissions::from_mode(0o755);
    for path in [dir.clone(), dir.join("agent"), dir.join("agent/logs")] {
        std::fs::set_permissions(path, open.clone()).unwrap();
    }
    for file in ["state.redb", "token", "agent/agent.redb", "agent/agent-id"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dev.restart();
    check("after a restart");
}

#[test]
fn task_ports_come_from_the_range_the_operator_gives() {
    let dev = Dev::start_with_env(&[("OUTPOST_TASK_PORTS", "23100-23109")]);
    dev.deploy(
        "web.yaml",
        "name: web\nreplicas: 3\ncommand: [\"DEMO_APP\", \"--port\", \"${PORT}\"]\nports: [http]\n",
    );
    for t in dev.wait_ready("web", 3) {
        let port = t["ports"]["http"].as_u64().unwrap();
        assert!((23100..=23109).contains(&port), "{t}");
    }
    let out = std::process::Command::new(support::outpost_bin())
        .args(["dev", "--task-ports", "30000-20000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--task-ports \"30000-20000\" is not a port range"),
        "{err}"
    );
}
