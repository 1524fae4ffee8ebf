//! Debian's `docker-registry` (the CNCF distribution registry) as an image's upstream registry:
//! started by the test with a config file it writes, storage in a temp dir, on an address the
//! test gives (loopback, or a test network's gateway), optionally behind htpasswd Basic
//! authentication. Its access log (stderr) says which client asked for which blob.

use std::process::{Child, Command, Stdio};

use super::wait_for;

const BINARY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `HOST:PORT`, as image names write it.
    pub addr: String,
    child: Option<Child>,
    /// The htpasswd user and password, when it asks for them.
    pub login: Option<(String, String)>,
}

/// Whether the registry is installed; under CI it must be (`.ci/run` installs it).
pub fn have_registry() -> bool {
    let found = std::path::Path::new(BINARY).exists()
        && Command::new("htpasswd").arg("-h").output().is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!("docker-registry and htpasswd must be installed under CI (.ci/run installs them)");
    }
    if !found {
        eprintln!("skipping: {BINARY} or htpasswd (apache2-utils) is not installed");
    }
    found
}

/// A port free on `host` now, for the registry to bind.
fn free_port(host: &str) -> u16 {
    let listener = std::net::TcpListener::bind((host, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

impl Registry {
    /// A registry on loopback, open to anyone.
    pub fn start() -> Registry {
        Registry::start_on("127.0.0.1", None)
    }

    /// A registry on `host`, asking for `login` (htpasswd, bcrypt) when given.
    pub fn start_on(host: &str, login: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("{host}:{}", free_port(host));
        let auth = match login {
            Some((user, pass)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "htpasswd: {out:?}");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: outpost-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{auth}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = Registry {
            dir,
            addr,
            child: None,
            login: login.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        registry.run();
        registry
    }

    /// Starts the process on its config (again after [`Registry::stop`]), and waits until it
    /// answers.
    pub fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_for(&format!("the registry to answer on {addr}"), || {
            std::net::TcpStream::connect(&addr).ok()
        });
    }

    /// Stops the registry: from now on nothing answers at its address.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests for blobs in its access log, as (client address, request line).
    pub fn blob_requests(&self) -> Vec<(String, String)> {
        (self.log().lines())
            .filter(|l| l.contains("/blobs/sha256:") && l.contains("\"GET "))
            .filter_map(|l| {
                let client = l.split_whitespace().next()?.to_string();
                let request = l.split('"').nth(1)?.to_string();
                Some((client, request))
            })
            .collect()
    }

    /// Copies the Engine's `image` into the registry as `name:tag` with skopeo; returns the
    /// name as a spec writes it (`HOST:PORT/name:tag`).
    pub fn push(&self, image: &str, name: &str) -> String {
        let remote = format!("{}/{name}", self.addr);
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["copy", "--dest-tls-verify=false"]);
        if let Some((user, pass)) = &self.login {
            skopeo.arg(format!("--dest-creds={user}:{pass}"));
        }
        let out = (skopeo.arg(format!("docker-daemon:{image}")))
            .arg(format!("docker://{remote}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy to the registry: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        remote
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
