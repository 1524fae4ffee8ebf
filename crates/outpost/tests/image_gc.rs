//! Image garbage collection as an operator meets it: four revisions of a service, each with
//! its own image pushed to the node's mirror, a history that keeps two; `outpost image prune`
//! then leaves exactly the images of the kept revisions (on disk and in `outpost images`),
//! their shared layer, and an upload under way; a dry run says the same and removes nothing;
//! `rollout undo` starts the previous revision from the store with no registry anywhere.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use sha2::Digest as _;
use support::{Dev, request, wait_for};

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Whether skopeo is here; under CI it must be (`.ci/run` installs it).
fn have_skopeo() -> bool {
    let found = Command::new("skopeo").arg("--version").output().is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!("skopeo must be installed under CI (.ci/run installs it)");
    }
    if !found {
        eprintln!("skipping: skopeo is not installed");
    }
    found
}

/// Tags removed from the Engine when dropped, before and after a test.
struct Untag(Vec<String>);

impl Drop for Untag {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = run("docker", &["rmi", "-f", tag]);
        }
    }
}

/// Builds `tag` from the test image with one more layer, a file holding `revision`: images
/// that share the demo app's layer and differ by one.
fn build_revision(base: &str, tag: &str, revision: u32) {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("revision"), revision.to_string()).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY revision /revision\n"),
    )
    .unwrap();
    let dir = context.path().to_str().unwrap();
    let (ok, out) = run("docker", &["build", "-q", "-t", tag, dir]);
    assert!(ok, "docker build {tag}: {out}");
}

/// Copies the Engine's `image` to `remote` (`MIRROR/name:tag`) with skopeo.
fn push(image: &str, remote: &str) {
    let (from, to) = (
        format!("docker-daemon:{image}"),
        format!("docker://{remote}"),
    );
    let (ok, out) = run("skopeo", &["copy", "--dest-tls-verify=false", &from, &to]);
    assert!(ok, "skopeo copy to the mirror: {out}");
}

/// The blobs `name:tag` consists of, as the mirror serves it: its manifest, config and layers.
fn blobs_of(mirror: &str, name: &str, tag: &str) -> (BTreeSet<String>, Vec<String>) {
    let base = format!("http://{mirror}");
    let path = format!("/v2/{name}/manifests/{tag}");
    let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json");
    let (status, body) = request("GET", &base, &path, &[accept], None);
    assert_eq!(status, 200, "{name}:{tag}: {body}");
    let manifest: Value = serde_json::from_str(&body).unwrap();
    let layers: Vec<String> = (manifest["layers"].as_array().unwrap().iter())
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let mut all: BTreeSet<String> = layers.iter().cloned().collect();
    all.insert(manifest["config"]["digest"].as_str().unwrap().to_string());
    all.insert(format!(
        "sha256:{:x}",
        sha2::Sha256::digest(body.as_bytes())
    ));
    (all, layers)
}

/// The blobs in the node's store, by digest.
fn stored_blobs(dev: &Dev) -> BTreeSet<String> {
    let dir = dev.data_dir().join("agent/images/blobs/sha256");
    (std::fs::read_dir(dir).unwrap().flatten())
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect()
}

fn engine_has(image: &str) -> bool {
    run("docker", &["image", "inspect", image]).0
}

/// The service at `revision`: its image from a registry that does not exist, so every start
/// comes from the node's store, and two revisions kept.
fn spec(name: &str, revision: u32) -> String {
    format!(
        "name: gc\ndriver: docker\nimage: registry.invalid/{name}:{revision}\n\
         revision_history: 2\n\
         ports: [{{ name: http, container_port: 8080 }}]\n\
         readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n\
         update: {{ monitor: 200ms }}\n"
    )
}

/// Waits until every task of `gc` wanted running is ready on `revision`, and the rollout done.
fn wait_revision(dev: &Dev, revision: u32) {
    wait_for(&format!("gc to run revision {revision} alone"), || {
        let wanted = dev.tasks("gc");
        let all = dev.json(&["ps", "gc"]);
        let others_run = (all.as_array().unwrap().iter())
            .any(|t| t["version"] != revision && t["state"] == "running");
        let (_, status, _) = dev.cli(&["-o", "json", "rollout", "status", "gc"]);
        let state = serde_json::from_str::<Value>(&status).unwrap_or_default()["state"].clone();
        let moving = state == "updating" || state == "rolling-back";
        let ours =
            wanted.len() == 1 && wanted[0]["version"] == revision && wanted[0]["ready"] == true;
        (ours && !others_run && !moving).then_some(())
    });
}

/// (image, used_by, rollback) of every image `outpost images` lists of `prefix`.
fn listed(dev: &Dev, prefix: &str) -> Vec<(String, Value, Value)> {
    let all = dev.json(&["images"]);
    (all["nodes"][0]["images"].as_array().unwrap().iter())
        .filter(|i| i["name"].as_str().unwrap().starts_with(prefix))
        .map(|i| {
            let name = format!(
                "{}:{}",
                i["name"].as_str().unwrap(),
                i["tag"].as_str().unwrap()
            );
            (name, i["used_by"].clone(), i["rollback"].clone())
        })
        .collect()
}

#[test]
fn prune_keeps_exactly_the_kept_revisions_images_and_undo_starts_from_the_store() {
    let Some(base) = support::docker_image() else {
        return;
    };
    if !have_skopeo() {
        return;
    }
    let dev = Dev::start(&[]);
    let mirror = wait_for("the mirror to listen", || {
        std::fs::read_to_string(dev.data_dir().join("agent").join("mirror")).ok()
    });
    let pid = std::process::id();
    let name = format!("edge/gc-{pid}");
    let unused = format!("edge/unused-{pid}");
    let mut untag = Untag(Vec::new());
    for revision in 1..=4 {
        let built = format!("outpost-gc-{pid}:{revision}");
        untag.0.extend([
            built.clone(),
            format!("registry.invalid/{name}:{revision}"),
            format!("{mirror}/{name}:{revision}"),
        ]);
        build_revision(base, &built, revision);
        push(&built, &format!("{mirror}/{name}:{revision}"));
        let _ = run("docker", &["rmi", "-f", &built]);
    }
    push(base, &format!("{mirror}/{unused}:1"));
    let images: Vec<(BTreeSet<String>, Vec<String>)> = (1..=4)
        .map(|r| blobs_of(&mirror, &name, &r.to_string()))
        .collect();
    let shared = &images[0].1[0];
    assert!(
        images.iter().all(|(_, l)| &l[0] == shared),
        "one base layer"
    );

    for revision in 1..=4 {
        dev.deploy("gc.yaml", &spec(&name, revision));
        wait_revision(&dev, revision);
    }
    // An upload under way (a push that has not sent its digest yet) must survive.
    let registry = format!("http://{mirror}");
    let (status, head, _) = support::request_as(
        None,
        "POST",
        &registry,
        "/v2/edge/pushing/blobs/uploads/",
        &[],
        None,
    );
    assert_eq!(status, 202, "{head}");
    let location = (head.lines())
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or(l.strip_prefix("Location: "))
        })
        .unwrap()
        .trim()
        .to_string();
    let (status, _) = request("PATCH", &registry, &location, &[], Some("half a layer"));
    assert_eq!(status, 202);

    let before = stored_blobs(&dev);
    let dry = dev.json(&["image", "prune", "--dry-run"]);
    assert_eq!(stored_blobs(&dev), before, "a dry run removes nothing");
    assert_eq!(listed(&dev, "edge/gc-").len(), 4);
    let real = dev.json(&["image", "prune"]);
    let node = |v: &Value| v["nodes"][0].clone();
    let went = |v: &Value| -> BTreeSet<String> {
        (node(v)["images"].as_array().unwrap().iter())
            .map(|i| {
                format!(
                    "{}:{}",
                    i["name"].as_str().unwrap(),
                    i["tag"].as_str().unwrap()
                )
            })
            .collect()
    };
    let expected: BTreeSet<String> = [
        format!("{name}:1"),
        format!("{name}:2"),
        format!("{unused}:1"),
    ]
    .into();
    assert_eq!(went(&real), expected, "{real}");
    assert_eq!(went(&dry), went(&real), "the dry run said the same: {dry}");
    assert_eq!(node(&dry)["bytes"], node(&real)["bytes"], "{dry} {real}");
    assert_eq!(node(&dry)["dry_run"], true);
    assert!(node(&real)["bytes"].as_u64().unwrap() > 0, "{real}");

    // Exactly the kept revisions' blobs are left, the shared layer among them.
    let kept: BTreeSet<String> = images[2].0.union(&images[3].0).cloned().collect();
    assert_eq!(stored_blobs(&dev), kept);
    assert!(kept.contains(shared));
    assert_eq!(
        listed(&dev, "edge/gc-"),
        [
            (format!("{name}:3"), Value::Null, serde_json::json!(["gc"])),
            (format!("{name}:4"), serde_json::json!(["gc"]), Value::Null),
        ]
    );
    let table = dev.ok(&["images"]);
    let row = |tag: &str| {
        (table.lines())
            .find(|l| l.contains(&format!("{name}:{tag}")))
            .unwrap_or_else(|| panic!("{table}"))
            .to_string()
    };
    assert!(row("3").contains("gc (rollback only)"), "{table}");
    assert!(row("4").trim_end().ends_with("gc"), "{table}");
    let (status, _) = request("GET", &registry, &location, &[], None);
    assert_eq!(status, 204, "the upload under way is still there");

    // One event says what went; the Engine's copies of the removed images went too (no
    // container uses them), those of the kept ones stay.
    let event = wait_for("an image-collected event", || {
        (dev.events().into_iter()).find(|e| e["reason"] == "image-collected")
    });
    let said = event["message"].as_str().unwrap();
    assert!(
        said.contains(&format!("{name}:1")) && said.contains(&format!("{unused}:1")),
        "{said}"
    );
    assert_eq!(event["node"], "local", "{event}");
    assert!(!engine_has(&format!("registry.invalid/{name}:1")), "{real}");
    assert!(!engine_has(&format!("{mirror}/{name}:2")), "{real}");
    assert!(engine_has(&format!("registry.invalid/{name}:4")));

    // Undo brings revision 3 back from the store alone: the Engine's copy is gone too.
    for tag in [
        format!("registry.invalid/{name}:3"),
        format!("{mirror}/{name}:3"),
    ] {
        let _ = run("docker", &["rmi", "-f", &tag]);
    }
    dev.ok(&["rollout", "undo", "gc"]);
    wait_revision(&dev, 3);
    dev.ok(&["rm", "gc"]);
}
