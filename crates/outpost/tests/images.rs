//! The node's image mirror through real clients: skopeo pushes to it and copies from it, the
//! Docker Engine pulls from it and runs what it pulled; and what the mirror refuses (a blob
//! whose bytes do not match its digest, a manifest whose blobs are missing, a bad name) leaves
//! nothing visible.

mod support;

use std::process::Command;

use serde_json::Value;
use sha2::Digest as _;
use support::{Dev, request, wait_for};

/// The address the dev node's mirror listens on, from its data dir.
fn mirror(dev: &Dev) -> String {
    wait_for("the mirror to listen", || {
        std::fs::read_to_string(dev.data_dir().join("agent").join("mirror")).ok()
    })
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

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

/// The test image, a dev cluster and its node's mirror address; `None` (the test skips) off
/// CI without a Docker Engine or skopeo.
fn with_mirror() -> Option<(&'static str, Dev, String)> {
    let image = support::docker_image()?;
    if !have_skopeo() {
        return None;
    }
    let dev = Dev::start(&[]);
    let mirror = mirror(&dev);
    Some((image, dev, mirror))
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

#[test]
fn skopeo_pushes_to_the_mirror_and_the_engine_pulls_and_runs_from_it() {
    let Some((image, _dev, mirror)) = with_mirror() else {
        return;
    };
    let remote = format!("{mirror}/edge/demo:{}", std::process::id());
    push(image, &remote);

    let (ok, out) = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{remote}"),
        ],
    );
    assert!(ok, "skopeo inspect: {out}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert!(!seen["Layers"].as_array().unwrap().is_empty(), "{seen}");

    // The Engine pulls it from the mirror (a loopback registry) and runs it.
    let _ = run("docker", &["rmi", "-f", &remote]);
    let (ok, out) = run("docker", &["pull", &remote]);
    assert!(ok, "docker pull from the mirror: {out}");
    let (_, status) = run(
        "sh",
        &[
            "-c",
            &format!(
                "docker run --rm {remote} --port 8080 --exit-after 10 --exit-code 7; echo status=$?"
            ),
        ],
    );
    let _ = run("docker", &["rmi", "-f", &remote]);
    assert!(
        status.contains("status=7"),
        "the pulled image runs: {status}"
    );

    // What it holds copies out whole (skopeo checks every digest as it reads).
    let out_dir = tempfile::tempdir().unwrap();
    let dir = format!("dir:{}", out_dir.path().join("copy").display());
    let (ok, out) = run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{remote}"),
            &dir,
        ],
    );
    assert!(ok, "skopeo copy from the mirror: {out}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(out_dir.path().join("copy").join("manifest.json")).unwrap(),
    )
    .unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let bytes = std::fs::read(out_dir.path().join("copy").join(hex)).unwrap();
        assert_eq!(digest(&bytes), layer["digest"].as_str().unwrap());
    }
}

/// The header `name` of an answer's head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_mirror_takes_only_what_matches_and_resumes_reads() {
    let dev = Dev::start(&[]);
    let base = format!("http://{}", mirror(&dev));
    let (status, _) = request("GET", &base, "/v2/", &[], None);
    assert_eq!(status, 200);

    // Bytes that are not what their digest says are refused and never served.
    let claimed = digest(b"what was announced");
    let path = format!("/v2/edge/app/blobs/uploads/?digest={claimed}");
    let (status, body) = request("POST", &base, &path, &[], Some("something else"));
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "DIGEST_INVALID"),
        "{body}"
    );
    assert!(
        body.contains(&claimed),
        "the error names the digest: {body}"
    );
    let (status, _) = request(
        "GET",
        &base,
        &format!("/v2/edge/app/blobs/{claimed}"),
        &[],
        None,
    );
    assert_eq!(status, 404);

    // A blob in two requests, then read from an offset, as a resumed pull does.
    let (status, head, _) = support::request_as(
        None,
        "POST",
        &base,
        "/v2/edge/app/blobs/uploads/",
        &[],
        None,
    );
    assert_eq!(status, 202);
    let location = header(&head, "location").unwrap().to_string();
    let (status, head, _) =
        support::request_as(None, "PATCH", &base, &location, &[], Some("hello "));
    assert_eq!((status, header(&head, "range")), (202, Some("0-5")));
    let hello = digest(b"hello world");
    let (status, _) = request(
        "PUT",
        &base,
        &format!("{location}?digest={hello}"),
        &[],
        Some("world"),
    );
    assert_eq!(status, 201);
    let blob = format!("/v2/edge/app/blobs/{hello}");
    let (status, head, body) =
        support::request_as(None, "GET", &base, &blob, &[("Range", "bytes=6-")], None);
    assert_eq!((status, body.as_str()), (206, "world"));
    assert_eq!(header(&head, "content-range"), Some("bytes 6-10/11"));

    // A manifest whose layer is missing is refused, and its tag never appears.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": hello, "size": 11 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": claimed, "size": 18 }],
    })
    .to_string();
    let (status, body) = request(
        "PUT",
        &base,
        "/v2/edge/app/manifests/1",
        &[],
        Some(&manifest),
    );
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN"),
        "{body}"
    );
    assert!(
        body.contains(&claimed),
        "the error names the missing blob: {body}"
    );
    let (status, _) = request("GET", &base, "/v2/edge/app/manifests/1", &[], None);
    assert_eq!(status, 404);

    // With its blobs there it is taken, by tag and by digest.
    let whole = manifest
        .replace(&claimed, &hello)
        .replace("\"size\":18", "\"size\":11");
    let (status, head, _) = support::request_as(
        None,
        "PUT",
        &base,
        "/v2/edge/app/manifests/1",
        &[],
        Some(&whole),
    );
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(digest(whole.as_bytes()).as_str())
    );
    let (status, body) = request("GET", &base, "/v2/edge/app/manifests/1", &[], None);
    assert_eq!((status, body.as_str()), (200, whole.as_str()));
    let (status, body) = request("GET", &base, "/v2/edge/app/tags/list", &[], None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["tags"],
        serde_json::json!(["1"])
    );

    let (status, body) = request("GET", &base, "/v2/Edge/App/manifests/1", &[], None);
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "NAME_INVALID"),
        "{body}"
    );
}

#[test]
fn a_service_starts_from_its_nodes_mirror_when_no_registry_has_its_image() {
    let Some((image, dev, mirror)) = with_mirror() else {
        return;
    };
    let name = format!("edge/mirrored-{}", std::process::id());
    push(image, &format!("{mirror}/{name}:1"));
    let gone = format!("registry.invalid/{name}:1");
    let untag = Untag(vec![
        format!("{name}:1"),
        gone.clone(),
        format!("{mirror}/{name}:1"),
    ]);
    untag.run();

    // Missing from the Engine, it comes from the node's mirror.
    let spec = |service: &str, image: &str, pull: &str| {
        format!(
            "name: {service}\ndriver: docker\nimage: {image}\npull: {pull}\n\
             ports: [{{ name: http, container_port: 8080 }}]\n\
             readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
        )
    };
    dev.deploy(
        "present.yaml",
        &spec("present", &format!("{name}:1"), "if-not-present"),
    );
    dev.wait_ready("present", 1);

    // Its registry cannot be reached: the mirror's copy starts, and an event says so.
    dev.deploy("cutoff.yaml", &spec("cutoff", &gone, "always"));
    let task = dev.wait_ready("cutoff", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let said = wait_for(
        "an event saying the task started from the node's image mirror",
        || {
            dev.events().into_iter().find(|e| {
                e["task"] == task.as_str()
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("image mirror"))
            })
        },
    );
    assert!(said["message"].as_str().unwrap().contains(&gone), "{said}");
    assert_eq!(said["level"], "warning", "{said}");

    // `outpost images` lists it with its size and both services that run it.
    let listed = dev.json(&["images"]);
    let node = &listed["nodes"][0];
    let stored = (node["images"].as_array().unwrap().iter())
        .find(|i| i["name"] == name.as_str() && i["tag"] == "1")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(stored["missing_blobs"], 0, "{stored}");
    let bytes = stored["bytes"].as_u64().unwrap();
    assert!(bytes > 1_000_000, "the demo app's layer is in it: {stored}");
    assert!(node["blob_bytes"].as_u64().unwrap() >= bytes, "{listed}");
    let table = dev.ok(&["images"]);
    let row = table
        .lines()
        .find(|l| l.contains(&format!("{name}:1")))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("cutoff, present"), "{table}");
    assert!(
        dev.fails(&["images", "no-such-node"])
            .contains("no-such-node")
    );
}

/// Image tags removed from the Engine when dropped, before and after a test.
struct Untag(Vec<String>);

impl Untag {
    fn run(&self) {
        for tag in &self.0 {
            let _ = run("docker", &["rmi", "-f", tag]);
        }
    }
}

impl Drop for Untag {
    fn drop(&mut self) {
        self.run();
    }
}

#[test]
fn a_node_without_the_image_gets_it_from_another_nodes_store() {
    let Some((image, dev, mirror)) = with_mirror() else {
        return;
    };
    let _second = support::AgentNode::start(&dev, "edge-2", "24100-24199");
    let name = format!("edge/shared-{}", std::process::id());
    push(image, &format!("{mirror}/{name}:1"));
    // Both nodes share this host's Engine: with `pull: always` from a registry that does not
    // exist, each node starts its replica from its own mirror, and the second's store must be
    // filled from the first's.
    let gone = format!("registry.invalid/{name}:1");
    let untag = Untag(vec![gone.clone(), format!("{mirror}/{name}:1")]);
    untag.run();
    dev.deploy(
        "shared.yaml",
        &format!(
            "name: shared\nreplicas: 2\ndriver: docker\nimage: {gone}\npull: always\n\
             ports: [{{ name: http, container_port: 8080 }}]\n\
             readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
        ),
    );
    let ready = dev.wait_ready("shared", 2);
    let nodes: std::collections::BTreeSet<&str> =
        ready.iter().map(|t| t["node"].as_str().unwrap()).collect();
    assert_eq!(
        nodes,
        ["edge-2", "local"].into(),
        "one replica per node: {ready:?}"
    );

    let listed = dev.json(&["images", "edge-2"]);
    let stored = (listed["nodes"][0]["images"].as_array().unwrap().iter())
        .find(|i| i["name"] == name.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("edge-2's store lacks {name}: {listed}"));
    assert_eq!(stored["missing_blobs"], 0, "{stored}");
    let first = dev.json(&["images", "local"]);
    let original = (first["nodes"][0]["images"].as_array().unwrap().iter())
        .find(|i| i["name"] == name.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        stored["digest"], original["digest"],
        "the same image, whole"
    );
    assert_eq!(stored["bytes"], original["bytes"]);
}

/// An image of the test image's layers and one more, `bytes` of random data: a new version
/// that shares every layer but one with the old.
fn image_with_one_more_layer(base: &str, tag: &str, bytes: usize) -> Untag {
    let dir = tempfile::tempdir().unwrap();
    // xorshift: bytes that do not compress, as a real changed layer's mostly do not.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.path().join("blob"), data).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY blob /blob\n"),
    )
    .unwrap();
    let context = dir.path().to_str().unwrap();
    let (ok, out) = run("docker", &["build", "-q", "-t", tag, context]);
    assert!(ok, "docker build: {out}");
    Untag(vec![tag.to_string()])
}

/// The images `node`'s store lists, as `name:tag` → whether it is whole.
fn stored(dev: &Dev, node: &str) -> std::collections::BTreeMap<String, bool> {
    let listed = dev.json(&["images", node]);
    (listed["nodes"][0]["images"].as_array().unwrap().iter())
        .map(|i| {
            let name = format!(
                "{}:{}",
                i["name"].as_str().unwrap(),
                i["tag"].as_str().unwrap()
            );
            (name, i["missing_blobs"] == 0)
        })
        .collect()
}

#[test]
fn a_delta_bundle_carries_only_the_changed_layer_and_a_damaged_one_loads_nothing() {
    let Some((image, dev, mirror)) = with_mirror() else {
        return;
    };
    let _second = support::AgentNode::start(&dev, "edge-2", "24200-24299");
    let name = format!("edge/delta-{}", std::process::id());
    let v2 = format!("outpost-delta:{}", std::process::id());
    let _v2 = image_with_one_more_layer(image, &v2, 300_000);
    // Uncompressed, a layer's digest is its content's: both versions name the shared ones
    // alike, whatever skopeo's compression does.
    for (from, tag) in [(image, 1), (v2.as_str(), 2)] {
        let (from, to) = (
            format!("docker-daemon:{from}"),
            format!("docker://{mirror}/{name}:{tag}"),
        );
        let args = [
            "copy",
            "--dest-decompress",
            "--dest-tls-verify=false",
            &from,
            &to,
        ];
        let (ok, out) = run("skopeo", &args);
        assert!(ok, "skopeo copy to the mirror: {out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();

    // The whole first version to edge-2, then the second as a delta for it.
    let full = dev.json(&["image", "save", &format!("{name}:1"), "-f", &path("full")]);
    assert!(full["omitted"].as_array().unwrap().is_empty(), "{full}");
    let loaded = dev.json(&["image", "load", &path("full"), "--node", "edge-2"]);
    assert_eq!(loaded[0]["images"][0], format!("{name}:1"), "{loaded}");
    let plan = dev.json(&[
        "image",
        "save",
        &format!("{name}:2"),
        "-f",
        &path("delta"),
        "--have",
        "edge-2",
    ]);
    let carried = plan["blobs"].as_array().unwrap();
    assert_eq!(
        carried.len(),
        3,
        "manifest, config, the new layer: {plan}\nwhole: {full}"
    );
    let base_layers = full["blobs"].as_array().unwrap().len() - 2;
    assert_eq!(
        plan["omitted"].as_array().unwrap().len(),
        base_layers,
        "{plan}"
    );
    let layer: u64 = (carried.iter())
        .map(|b| b["size"].as_u64().unwrap())
        .max()
        .unwrap();
    let delta = std::fs::metadata(path("delta")).unwrap().len();
    eprintln!("delta bundle: {delta} bytes for a changed layer of {layer} bytes");
    assert!(
        delta < layer + layer / 50 + 8192,
        "{delta} bytes for a {layer}-byte layer"
    );
    // Delta and whole agree: what a bundle file held can stand for the target, too.
    let again = dev.json(&[
        "image",
        "save",
        &format!("{name}:2"),
        "-f",
        &path("delta2"),
        "--have",
        &path("full"),
    ]);
    assert_eq!(again["blobs"], plan["blobs"]);

    // Damaged copies are refused and leave edge-2's store as it was.
    let bytes = std::fs::read(path("delta")).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(path("flipped"), flipped).unwrap();
    std::fs::write(path("truncated"), &bytes[..bytes.len() / 2]).unwrap();
    let before = stored(&dev, "edge-2");
    for damaged in ["flipped", "truncated"] {
        let err = dev.fails(&["image", "load", &path(damaged), "--node", "edge-2"]);
        assert!(err.contains("nothing was loaded"), "{damaged}: {err}");
        assert_eq!(stored(&dev, "edge-2"), before, "{damaged}");
    }
    // The delta itself completes the second version there.
    dev.ok(&["image", "load", &path("delta"), "--node", "edge-2"]);
    assert_eq!(
        stored(&dev, "edge-2").get(&format!("{name}:2")),
        Some(&true)
    );

    // A `docker save` archive carries no signature: loaded only when asked for.
    let (ok, out) = run("docker", &["save", &v2, "-o", &path("saved.tar")]);
    assert!(ok, "docker save: {out}");
    let err = dev.fails(&["image", "load", &path("saved.tar"), "--node", "edge-2"]);
    assert!(err.contains("--unsigned"), "{err}");
    let loaded = dev.json(&[
        "image",
        "load",
        &path("saved.tar"),
        "--node",
        "edge-2",
        "--unsigned",
    ]);
    assert_eq!(loaded[0]["signed_by"], Value::Null, "{loaded}");
    assert_eq!(stored(&dev, "edge-2").get(&v2), Some(&true), "{loaded}");
    // `image push` takes the same from this machine's Engine, with no file between.
    assert!(!stored(&dev, "local").contains_key(&v2));
    let pushed = dev.json(&["image", "push", &v2, "--node", "local"]);
    assert_eq!(pushed[0]["images"][0], v2.as_str(), "{pushed}");
    assert_eq!(stored(&dev, "local").get(&v2), Some(&true));
    let err = dev.fails(&["image", "push", "outpost-absent:0", "--node", "local"]);
    assert!(
        err.contains("is not in this machine's Docker Engine"),
        "{err}"
    );

    // Revoking the cluster's own key refuses what it signed; new bundles carry the next key.
    let keys = dev.json(&["image", "keys"]);
    let own = keys[0]["id"].as_str().unwrap().to_string();
    dev.ok(&["image", "keys", "revoke", &own]);
    let err = dev.fails(&["image", "load", &path("full"), "--node", "edge-2"]);
    assert!(err.contains("does not trust"), "{err}");
    dev.ok(&[
        "image",
        "save",
        &format!("{name}:1"),
        "-f",
        &path("resigned"),
    ]);
    let loaded = dev.json(&["image", "load", &path("resigned"), "--node", "edge-2"]);
    let signer = loaded[0]["signed_by"].as_str().unwrap();
    assert_ne!(signer, own);
    assert_eq!(dev.json(&["image", "keys"])[0]["id"], signer);
}

#[test]
fn a_bundle_from_a_build_cluster_starts_a_service_at_a_site_that_trusts_its_key() {
    let Some((image, build, build_mirror)) = with_mirror() else {
        return;
    };
    let site = Dev::start(&[]);
    let name = format!("edge/bundled-{}", std::process::id());
    push(image, &format!("{build_mirror}/{name}:1"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.bundle");
    let file = file.to_str().unwrap();
    let out = build.ok(&["image", "save", &format!("{name}:1"), "-f", file]);
    assert!(out.contains("1 image(s)"), "{out}");

    // The site does not know the build cluster's key.
    let err = site.fails(&["image", "load", file]);
    assert!(err.contains("does not trust"), "{err}");
    assert!(!stored(&site, "local").contains_key(&format!("{name}:1")));
    let err = site.fails(&["image", "keys", "add", "build", "not-a-key"]);
    assert!(err.contains("public_key"), "{err}");

    let key = build.json(&["image", "keys"])[0].clone();
    assert_eq!(key["origin"], "cluster", "{key}");
    site.ok(&[
        "image",
        "keys",
        "add",
        "build",
        key["public_key"].as_str().unwrap(),
    ]);
    let gone = format!("registry.invalid/{name}:1");
    let site_mirror = mirror(&site);
    let _untag = Untag(vec![
        gone.clone(),
        format!("{name}:1"),
        format!("{site_mirror}/{name}:1"),
    ]);
    let loaded = site.json(&["image", "load", file]);
    assert_eq!(loaded[0]["signed_by"], key["id"], "{loaded}");
    assert_eq!(loaded[0]["images"][0], format!("{name}:1"));
    assert!(loaded[0].get("warnings").is_none(), "{loaded}");
    // The node's Engine has it too, under its name: `docker run` there finds it.
    let inspected = Command::new("docker")
        .args(["image", "inspect", &format!("{name}:1")])
        .output()
        .unwrap();
    assert!(inspected.status.success(), "the Engine holds {name}:1");

    // With no registry anywhere, the site runs it from its store.
    site.deploy(
        "bundled.yaml",
        &format!(
            "name: bundled\ndriver: docker\nimage: {gone}\n\
             ports: [{{ name: http, container_port: 8080 }}]\n\
             readiness: {{ tcp: {{ port: http }}, period: 200ms }}\n"
        ),
    );
    site.wait_ready("bundled", 1);

    // Revoked, the build cluster's bundles are refused again, and it cannot come back.
    site.ok(&["image", "keys", "revoke", key["id"].as_str().unwrap()]);
    let err = site.fails(&["image", "load", file]);
    assert!(err.contains("does not trust"), "{err}");
    let err = site.fails(&[
        "image",
        "keys",
        "add",
        "build",
        key["public_key"].as_str().unwrap(),
    ]);
    assert!(err.contains("cannot be trusted again"), "{err}");
    let keys = site.json(&["image", "keys"]);
    let revoked = (keys.as_array().unwrap().iter())
        .find(|k| k["id"] == key["id"])
        .unwrap();
    assert_eq!(revoked["state"], "revoked", "{keys}");
}
