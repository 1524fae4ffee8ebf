//! Images that only their upstream registry has, with Debian's `docker-registry` as that
//! registry on loopback: a node's store fills from it (the Engine then pulls from the node's
//! mirror, never from the registry), `outpost image pull` says where each node's copy came
//! from, credentials come from the node's Docker config or the service's pull secret, and with
//! the registry stopped a task whose image is in the store starts anyway, with an event saying
//! so.

mod support;

use std::process::Command;

use base64::Engine as _;
use serde_json::Value;
use support::registry::{Registry, have_registry};
use support::{Dev, wait_for};

/// The test image, when the Engine, skopeo and the registry are here (required under CI).
fn test_image() -> Option<&'static str> {
    let image = support::docker_image()?;
    let skopeo = Command::new("skopeo").arg("--version").output().is_ok();
    if !skopeo && std::env::var_os("CI").is_some() {
        panic!("skopeo must be installed under CI (.ci/run installs it)");
    }
    (skopeo && have_registry()).then_some(image)
}

/// A dev cluster whose Docker config dir is `config` (empty: no credentials).
fn dev_with_docker_config(config: &std::path::Path) -> (Dev, String) {
    let dev = Dev::start_with_env(&[("DOCKER_CONFIG", config.to_str().unwrap())]);
    // `image pull` asks the live nodes: the agent must have registered.
    dev.wait_node_state("local", "ready");
    let mirror = wait_for("the mirror to listen", || {
        std::fs::read_to_string(dev.data_dir().join("agent").join("mirror")).ok()
    });
    (dev, mirror)
}

/// Image tags removed from the Engine when dropped, before and after a test.
struct Untag(Vec<String>);

impl Untag {
    fn run(&self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

impl Drop for Untag {
    fn drop(&mut self) {
        self.run();
    }
}

fn spec(service: &str, image: &str, pull: &str) -> String {
    format!(
        "name: {service}\ndriver: docker\nimage: {image}\npull: {pull}\n\
         ports: [{{ name: http, container_port: 8080 }}]\n\
         readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
    )
}

/// The node's end of an `image pull -o json`.
fn pulled(dev: &Dev, image: &str) -> Value {
    let ends = dev.json(&["image", "pull", image]);
    assert_eq!(ends.as_array().map(Vec::len), Some(1), "{ends}");
    ends[0].clone()
}

#[test]
fn an_image_only_its_registry_has_comes_through_the_nodes_mirror() {
    let Some(image) = test_image() else {
        return;
    };
    let mut registry = Registry::start();
    let id = std::process::id();
    let first = registry.push(image, &format!("edge/upstream-{id}:1"));
    let second = registry.push(image, &format!("edge/upstream-{id}:2"));
    let config = tempfile::tempdir().unwrap();
    let (dev, mirror) = dev_with_docker_config(config.path());
    let untag = Untag(vec![
        first.clone(),
        second.clone(),
        format!("{mirror}/edge/upstream-{id}:1"),
        format!("{mirror}/edge/upstream-{id}:2"),
    ]);
    untag.run();

    // `image pull`: from the registry the first time, with its layers; then already held.
    let end = pulled(&dev, &first);
    assert_eq!(end["event"], "done", "{end}");
    assert_eq!(end["origin"]["kind"], "upstream", "{end}");
    assert_eq!(end["origin"]["registry"], registry.addr.as_str(), "{end}");
    assert!(
        end["bytes"].as_u64().unwrap() > 1_000_000,
        "the demo app's layer moved: {end}"
    );
    let plain = dev.ok(&["image", "pull", &first]);
    assert!(plain.contains("local: already held"), "{plain}");

    // A service whose image (tag 2) neither the Engine nor the store has starts: the store
    // fills from the registry and the Engine pulls from the mirror, not from the registry.
    dev.deploy("up.yaml", &spec("up", &second, "if-not-present"));
    dev.wait_ready("up", 1);
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &second,
        ])
        .output()
        .unwrap();
    let digests: Vec<String> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        digests.iter().any(|d| d.starts_with(&format!("{mirror}/"))),
        "the Engine pulled from the mirror: {digests:?}"
    );
    assert!(
        !digests
            .iter()
            .any(|d| d.starts_with(&format!("{}/", registry.addr))),
        "the Engine never pulled from the registry: {digests:?}"
    );

    // The registry is gone: `pull: always` cannot refresh, and the store's copy starts.
    registry.stop();
    dev.deploy("cutoff.yaml", &spec("cutoff", &second, "always"));
    let task = dev.wait_ready("cutoff", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let said = wait_for("an event saying the task started from the store", || {
        dev.events().into_iter().find(|e| {
            e["task"] == task.as_str()
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("image mirror"))
        })
    });
    let message = said["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("upstream {}", registry.addr)),
        "{said}"
    );
    assert_eq!(said["level"], "warning", "{said}");
}

#[test]
fn a_registry_asking_for_credentials_gets_those_of_the_nodes_docker_config() {
    let Some(image) = test_image() else {
        return;
    };
    let registry = Registry::start_on("127.0.0.1", Some(("edge", "s3cret")));
    let remote = registry.push(image, &format!("edge/private-{}:1", std::process::id()));
    let config = tempfile::tempdir().unwrap();
    let (dev, _mirror) = dev_with_docker_config(config.path());

    // No credentials: refused, saying by whom and what to do, and the command fails.
    let (ok, out, err) = dev.cli(&["image", "pull", &remote]);
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("local: failed"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&format!("upstream {}", registry.addr)),
        "{line}"
    );
    assert!(line.contains("401"), "{line}");
    assert!(line.contains("docker login"), "{line}");
    assert!(
        err.contains("could not be pulled on 1 of 1 node(s): local"),
        "{err}"
    );

    // Wrong ones: refused too, saying the credentials were.
    let node_config = config.path().join("config.json");
    let write = |pass: &str| docker_config(&node_config, &registry.addr, "edge", pass);
    write("wrong");
    let (ok, out, _) = dev.cli(&["image", "pull", &remote]);
    assert!(
        !ok && out.contains("credentials of the node's Docker config were refused"),
        "{out}"
    );

    write("s3cret");
    let end = pulled(&dev, &remote);
    assert_eq!(end["event"], "done", "{end}");
    assert_eq!(end["origin"]["kind"], "upstream", "{end}");
}

/// Writes `path`, a Docker config giving `user:pass` for `host` as `docker login` does; returns
/// the path.
fn docker_config(path: &std::path::Path, host: &str, user: &str, pass: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let text = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(path, text.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_service_pulls_a_private_image_with_its_pull_secret_and_a_wrong_one_says_so() {
    let Some(image) = test_image() else {
        return;
    };
    let registry = Registry::start_on("127.0.0.1", Some(("edge", "s3cret")));
    let remote = registry.push(image, &format!("edge/pulled-{}:1", std::process::id()));
    // The node itself has no credentials: only the services' secrets do.
    let config = tempfile::tempdir().unwrap();
    let (dev, mirror) = dev_with_docker_config(config.path());
    let (_, repo_tag) = remote.split_once('/').unwrap();
    let _untag = Untag(vec![remote.clone(), format!("{mirror}/{repo_tag}")]);
    let files = tempfile::tempdir().unwrap();
    let at = |name: &str| files.path().join(name);
    let wrong = docker_config(&at("wrong.json"), &registry.addr, "edge", "wrong");
    let right = docker_config(&at("right.json"), &registry.addr, "edge", "s3cret");
    dev.ok(&["secret", "create", "registry-wrong", "-f", &wrong]);
    dev.ok(&["secret", "create", "registry", "-f", &right]);

    // A secret that does not exist is refused at deploy, naming the field and what to do.
    let with_secret = |service: &str, secret: &str| {
        format!(
            "{}pull_secret: {secret}\n",
            spec(service, &remote, "if-not-present")
        )
    };
    let file = dev.spec_file("ghost.yaml", &with_secret("ghost", "no-such"));
    let err = dev.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("ghost.pull_secret") && err.contains("outpost secret create no-such"),
        "{err}"
    );

    // Wrong credentials: the task fails, saying whose credentials the registry refused.
    dev.deploy("refused.yaml", &with_secret("refused", "registry-wrong"));
    let failed = wait_for("the task to fail", || {
        (dev.tasks("refused").into_iter()).find(|t| t["state"] == "failed")
    });
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("credentials of pull secret \"registry-wrong\" were refused"),
        "{message}"
    );

    // The right ones: the store fills from the registry and the task starts.
    let before = registry.blob_requests().len();
    dev.deploy("private.yaml", &with_secret("private", "registry"));
    dev.wait_ready("private", 1);
    assert!(
        registry.blob_requests().len() > before,
        "the blobs came from the registry: {}",
        registry.log()
    );

    // The secret cannot be removed while the service pulls with it.
    let err = dev.fails(&["secret", "rm", "registry"]);
    assert!(err.contains("private"), "{err}");

    // Its value never reached a disk: nothing in the data dirs holds the credentials.
    let auth = base64::engine::general_purpose::STANDARD.encode("edge:s3cret");
    let mut found = Vec::new();
    let mut dirs = vec![dev.data_dir().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(auth.len()).any(|w| w == auth.as_bytes())
            {
                found.push(path);
            }
        }
    }
    assert!(found.is_empty(), "the credentials are in {found:?}");
}

#[test]
fn a_node_cut_off_from_the_registry_gets_the_image_from_the_node_that_pulled_it() {
    let Some(image) = test_image() else {
        return;
    };
    let Some(mut site) = support::hosts::Site::new("upstream", "s1") else {
        return;
    };
    // The registry listens on the network's gateway, which is not loopback to the nodes: they
    // reach it over plain HTTP because it is listed.
    let registry = Registry::start_on(&site.net.gateway().to_string(), None);
    let remote = registry.push(image, &format!("edge/sited-{}:1", std::process::id()));
    let flags = ["--insecure-registry", registry.addr.as_str()];
    let first = site.agent_with("a1", &flags).ip;
    let second = site.agent_with("a2", &flags).ip;

    let out = site.ok(&["image", "pull", &remote, "--node", "a1"]);
    let done = format!("a1: from upstream {}", registry.addr);
    assert!(out.contains(&done), "{out}");
    let from_first = registry.blob_requests();
    assert!(
        !from_first.is_empty() && from_first.iter().all(|(c, _)| *c == first.to_string()),
        "a1 fetched the blobs: {}",
        registry.log()
    );

    // a2's path to the registry is cut: it gets the image from a1's store, asking no registry.
    site.host("a2").block(site.net.gateway());
    let out = site.ok(&["image", "pull", &remote, "--node", "a2"]);
    assert!(out.contains("a2: from node a1"), "{out}");
    assert!(!out.contains("a2: trying upstream"), "{out}");
    let requests = registry.blob_requests();
    assert!(
        !requests.iter().any(|(c, _)| *c == second.to_string()),
        "no blob request from a2: {}",
        registry.log()
    );
    let listed = site.json(&["images", "a2"]);
    let stored = &listed["nodes"][0]["images"][0];
    assert_eq!(stored["missing_blobs"], 0, "{listed}");
}
