//! Registries beyond the cluster: where an image name points (Docker's rules), how to reach its
//! registry (HTTPS, or plain HTTP for loopback and `--insecure-registry` hosts, as the Docker
//! Engine decides), and how to authenticate to it (anonymous first; on a 401, the challenge's
//! `Bearer` token service or `Basic`, with the node's Docker config credentials when it has
//! some).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use images::Digest;

/// Docker Hub as image names write it, and where its registry API answers.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A spec's image as the Docker Engine reads it: `alpine` is
/// `docker.io/library/alpine:latest`, `team/app:1` is `docker.io/team/app:1`,
/// `registry.example.com:5000/team/app@sha256:…` names its host and a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (and port) as written; `docker.io` when none is.
    pub host: String,
    /// The repository at that registry (`library/alpine`).
    pub repo: String,
    /// The tag, `latest` when none is given.
    pub tag: String,
    /// The manifest's digest, when the name pins one (`@sha256:…`).
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(image: &str) -> Result<Reference, String> {
        let (named, digest) = match image.split_once('@') {
            Some((named, digest)) => (
                named,
                Some(digest.parse::<Digest>().map_err(|e| e.to_string())?),
            ),
            None => (image, None),
        };
        let (path, tag) = images::split_tag(named);
        let (host, repo) = match path.split_once('/') {
            Some((host, rest)) if is_host(host) => (host.to_string(), rest.to_string()),
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        let host = match host.as_str() {
            "index.docker.io" => DOCKER_HUB.to_string(),
            _ => host,
        };
        let repo = match (host == DOCKER_HUB, repo.contains('/')) {
            (true, false) => format!("library/{repo}"),
            _ => repo,
        };
        images::check_name(&repo).map_err(|e| format!("{image:?}: {e}"))?;
        images::check_tag(tag).map_err(|e| format!("{image:?}: {e}"))?;
        Ok(Reference {
            host,
            repo,
            tag: tag.to_string(),
            digest,
        })
    }

    /// Where the registry's API answers (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        match self.host.as_str() {
            DOCKER_HUB => DOCKER_HUB_API,
            host => host,
        }
    }

    /// What to ask the registry's manifests for: the digest when pinned, else the tag.
    pub fn manifest(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => self.tag.clone(),
        }
    }
}

/// A first part of a name with a `.` or a `:`, or `localhost`, is a registry host (Docker's
/// rule: `team/app` is a repository of Docker Hub).
fn is_host(part: &str) -> bool {
    part.contains('.') || part.contains(':') || part == "localhost"
}

/// How this node reaches registries: its HTTP client, the hosts it speaks plain HTTP to, and
/// where its Docker config (credentials) is.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub http: reqwest::Client,
    /// `HOST[:PORT]`s reached over plain HTTP besides loopback ones (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// The Docker config file credentials come from, when there is one.
    pub docker_config: Option<PathBuf>,
}

impl Upstream {
    /// The client and settings of a node: the Docker config is `$DOCKER_CONFIG/config.json`,
    /// else `$HOME/.docker/config.json`, as the Docker CLI looks for it.
    pub fn new(http: reqwest::Client, insecure: Vec<String>) -> Upstream {
        let dir = (std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")));
        Upstream {
            http,
            insecure,
            docker_config: dir.map(|d| d.join("config.json")),
        }
    }

    /// The registry of `reference`, ready to be read from with the credentials for it of the
    /// service's pull secret, else of the node's Docker config. A pull secret that is no
    /// Docker config is an error naming it.
    pub fn remote(
        &self,
        reference: &Reference,
        secret: Option<&PullSecret>,
    ) -> Result<Remote, String> {
        let host = reference.api_host();
        let scheme = match self.plain_http(host) {
            true => "http",
            false => "https",
        };
        let credentials = match secret.map(|s| s.credentials(&reference.host)) {
            Some(Err(e)) => return Err(e),
            Some(Ok(Some(found))) => Some(found),
            _ => self.credentials(&reference.host),
        };
        Ok(Remote {
            http: self.http.clone(),
            base: format!("{scheme}://{host}"),
            repo: reference.repo.clone(),
            credentials,
            authorization: Mutex::new(None),
        })
    }

    /// Plain HTTP for a loopback registry or a listed host (`host:port` or the host alone), as
    /// the Docker Engine allows it; HTTPS for every other.
    fn plain_http(&self, host: &str) -> bool {
        let name = host_name(host);
        let loopback = name == "localhost"
            || (name.trim_matches(['[', ']']).parse::<std::net::IpAddr>())
                .is_ok_and(|ip| ip.is_loopback());
        loopback || self.insecure.iter().any(|i| i == host || i == name)
    }

    /// The credentials for `host` of the node's Docker config, if it has them; an unreadable
    /// file is logged and read as none, so anonymous pulls still work.
    fn credentials(&self, host: &str) -> Option<Credentials> {
        let path = self.docker_config.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        match docker_credentials(&text, host) {
            Ok(found) => found.map(|(user, pass)| Credentials {
                user,
                pass,
                from: "the node's Docker config".into(),
            }),
            Err(e) => {
                tracing::warn!("{}: {e}; pulling without credentials", path.display());
                None
            }
        }
    }
}

/// A service's pull secret (`pull_secret:`): its name and its value, a Docker config's text.
#[derive(Clone)]
pub struct PullSecret {
    pub name: String,
    pub config: String,
}

impl std::fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PullSecret({})", self.name)
    }
}

impl PullSecret {
    /// Its credentials for `host`, if it has some.
    pub fn credentials(&self, host: &str) -> Result<Option<Credentials>, String> {
        let found = (docker_credentials(&self.config, host))
            .map_err(|e| format!("pull secret {:?}: {e}", self.name))?;
        Ok(found.map(|(user, pass)| Credentials {
            user,
            pass,
            from: format!("pull secret {:?}", self.name),
        }))
    }
}

/// A user and password for one registry, and where they came from, for the errors that
/// name them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub pass: String,
    pub from: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.user, self.from)
    }
}

/// A host without its port (`[::1]:5000` is `[::1]`).
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    }
}

/// The `auths` entry for `host` of a Docker config's text (`auth`: base64 of `user:pass`).
/// Docker Hub's is kept under `https://index.docker.io/v1/`; other keys may carry a scheme.
pub fn docker_credentials(text: &str, host: &str) -> Result<Option<(String, String)>, String> {
    let config: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a Docker config: {e}"))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let wanted = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let key = key.split_once('/').map_or(key, |(h, _)| h);
        match host {
            DOCKER_HUB => matches!(key, "index.docker.io" | "docker.io" | DOCKER_HUB_API),
            _ => key == host,
        }
    };
    let Some((key, entry)) = auths.iter().find(|(k, _)| wanted(k)) else {
        return Ok(None);
    };
    let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
        return Ok(None);
    };
    let decoded = (base64::engine::general_purpose::STANDARD.decode(auth.trim()))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| format!("auths.{key}.auth is not base64 of user:password"))?;
    let (user, pass) = (decoded.split_once(':'))
        .ok_or_else(|| format!("auths.{key}.auth is not base64 of user:password"))?;
    Ok(Some((user.to_string(), pass.to_string())))
}

/// One registry repository to read from: another node's store (`/v1/agent/registry`) or an
/// upstream registry, with the authorization its challenge asked for, once learnt.
#[derive(Debug)]
pub struct Remote {
    http: reqwest::Client,
    /// `https://registry-1.docker.io`, `https://10.0.0.2:7001/v1/agent/registry`.
    base: String,
    /// The repository there (`library/alpine`).
    pub repo: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value a 401 led to, sent with every later request.
    authorization: Mutex<Option<String>>,
}

impl Remote {
    /// Another node's store, over the cluster's client.
    pub fn peer(http: &reqwest::Client, address: &str, repo: &str) -> Remote {
        Remote::at(http, &format!("{address}/v1/agent/registry"), repo)
    }

    /// The registry whose API is under `base` (`/v2/` is added), without credentials.
    pub fn at(http: &reqwest::Client, base: &str, repo: &str) -> Remote {
        Remote {
            http: http.clone(),
            base: base.to_string(),
            repo: repo.to_string(),
            credentials: None,
            authorization: Mutex::new(None),
        }
    }

    /// `GET /v2/<repo>/<path>` with `headers`; on a 401, authenticates as the challenge says
    /// and asks once more. A 401 or 403 after that, or any other error status, is an error
    /// naming the status and the registry's own words.
    pub async fn get(&self, path: &str, headers: HeaderMap) -> Result<reqwest::Response, String> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repo);
        let answer = self.send(&url, &headers).await?;
        let answer = match answer.status() {
            StatusCode::UNAUTHORIZED => {
                let challenge = (answer.headers().get(header::WWW_AUTHENTICATE))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let authorization = self.authorize(&challenge).await?;
                *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(authorization);
                self.send(&url, &headers).await?
            }
            _ => answer,
        };
        match answer.status() {
            s if s.is_success() => Ok(answer),
            s => Err(refusal(s, answer, self.credentials.as_ref()).await),
        }
    }

    async fn send(&self, url: &str, headers: &HeaderMap) -> Result<reqwest::Response, String> {
        let mut request = self.http.get(url).headers(headers.clone());
        let authorization = self
            .authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        (request.send().await).map_err(|e| format!("cannot reach {url}: {}", chain(&e)))
    }

    /// The `Authorization` value that answers `challenge` (a `WWW-Authenticate` header).
    async fn authorize(&self, challenge: &str) -> Result<String, String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let params = challenge_params(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match &self.credentials {
                Some(c) => Ok(basic(&c.user, &c.pass)),
                None => Err(format!(
                    "401: {} asks for credentials and {NO_CREDENTIALS}",
                    self.base
                )),
            },
            "bearer" => self.token(&params).await.map(|t| format!("Bearer {t}")),
            _ => Err(format!(
                "401: {} asks for an authentication Outpost does not speak ({challenge:?})",
                self.base
            )),
        }
    }

    /// A token from the challenge's `realm` for its `service` and `scope` (this repository's
    /// pull when none is named), sending the node's credentials when it has some.
    async fn token(&self, params: &[(String, String)]) -> Result<String, String> {
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = param("realm")
            .ok_or_else(|| format!("401: {} asks for a token but names no realm", self.base))?;
        let scope = param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let mut url = reqwest::Url::parse(&realm).map_err(|e| {
            format!(
                "401: {} names a token realm {realm:?} that is no URL: {e}",
                self.base
            )
        })?;
        url.query_pairs_mut().append_pair("scope", &scope);
        if let Some(service) = param("service") {
            url.query_pairs_mut().append_pair("service", &service);
        }
        let mut request = self.http.get(url);
        if let Some(c) = &self.credentials {
            request = request.header(header::AUTHORIZATION, basic(&c.user, &c.pass));
        }
        let answer = (request.send().await)
            .map_err(|e| format!("cannot reach the token service {realm}: {}", chain(&e)))?;
        if !answer.status().is_success() {
            let why = refusal(answer.status(), answer, self.credentials.as_ref()).await;
            return Err(format!("the token service {realm}: {why}"));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = (answer.json().await)
            .map_err(|e| format!("the token service {realm} answered no token: {e}"))?;
        (token.token.or(token.access_token))
            .ok_or_else(|| format!("the token service {realm} answered no token"))
    }
}

fn basic(user: &str, pass: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {encoded}")
}

/// What to do when a registry wants credentials and none were sent.
const NO_CREDENTIALS: &str = "none are known for it: give the service a pull_secret \
    (`outpost secret create NAME -f ~/.docker/config.json`), or docker login on the node";

/// A refused request: its status, the registry's message, and what to do about a 401 or 403.
async fn refusal(
    status: StatusCode,
    answer: reqwest::Response,
    sent: Option<&Credentials>,
) -> String {
    let body = answer.text().await.unwrap_or_default();
    let message = (serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().chars().take(200).collect());
    let advice = match (status, sent) {
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(c)) => {
            format!(" (the credentials of {} were refused)", c.from)
        }
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => {
            format!(" (it needs credentials and {NO_CREDENTIALS})")
        }
        _ => String::new(),
    };
    match message.is_empty() {
        true => format!("{status}{advice}"),
        false => format!("{status}: {message}{advice}"),
    }
}

/// `realm="…",service="…"` as (name, value) pairs; values may be quoted, with `\` escapes.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let name = name
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            }
            None => {
                let (value, after) = after.split_once(',').unwrap_or((after, ""));
                (value.trim().to_string(), after)
            }
        };
        params.push((name, value));
        rest = after.trim_start_matches([',', ' ']);
    }
    params
}

/// An error with its causes (reqwest's own text hides why a connection failed).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(image: &str) -> (String, String, String, String) {
        let r = Reference::parse(image).unwrap();
        (
            r.api_host().to_string(),
            r.repo.clone(),
            r.tag.clone(),
            r.manifest(),
        )
    }

    #[test]
    fn names_are_read_as_docker_reads_them() {
        let hub = |repo: &str, tag: &str| {
            let s = |x: &str| x.to_string();
            (s(DOCKER_HUB_API), s(repo), s(tag), s(tag))
        };
        assert_eq!(parsed("alpine"), hub("library/alpine", "latest"));
        assert_eq!(parsed("alpine:3.20"), hub("library/alpine", "3.20"));
        assert_eq!(parsed("team/app:1"), hub("team/app", "1"));
        assert_eq!(parsed("docker.io/alpine"), hub("library/alpine", "latest"));
        assert_eq!(
            parsed("index.docker.io/team/app"),
            hub("team/app", "latest")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let (host, repo, tag, manifest) =
            parsed(&format!("registry.example.com:5000/team/app@{digest}"));
        assert_eq!(
            (
                host.as_str(),
                repo.as_str(),
                tag.as_str(),
                manifest.as_str()
            ),
            (
                "registry.example.com:5000",
                "team/app",
                "latest",
                digest.as_str()
            )
        );
        assert_eq!(parsed("localhost/app:2").0, "localhost");
        assert_eq!(
            parsed("127.0.0.1:5000/app:2").1,
            "app",
            "no library/ off Docker Hub"
        );
        assert!(
            Reference::parse("Team/App")
                .unwrap_err()
                .contains("Team/App")
        );
        assert!(Reference::parse("app@sha256:zz").is_err());
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        pki::install_default();
        let upstream = Upstream {
            http: reqwest::Client::new(),
            insecure: vec!["registry.lan:5000".into(), "10.0.0.9".into()],
            docker_config: None,
        };
        let scheme = |image: &str| {
            let remote = upstream
                .remote(&Reference::parse(image).unwrap(), None)
                .unwrap();
            remote.base.split_once("://").unwrap().0.to_string()
        };
        assert_eq!(scheme("127.0.0.1:5000/app"), "http");
        assert_eq!(scheme("localhost:5000/app"), "http");
        assert_eq!(scheme("[::1]:5000/app"), "http");
        assert_eq!(scheme("registry.lan:5000/app"), "http");
        assert_eq!(
            scheme("10.0.0.9:443/app"),
            "http",
            "a listed host at any port"
        );
        assert_eq!(
            scheme("registry.lan/app"),
            "https",
            "listed at another port only"
        );
        assert_eq!(scheme("alpine"), "https");
        assert_eq!(scheme("ghcr.io/team/app"), "https");
    }

    #[test]
    fn credentials_come_from_the_docker_config_entry_of_the_host() {
        let auth = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = serde_json::json!({ "auths": {
            "https://index.docker.io/v1/": { "auth": auth("hub:secret") },
            "registry.lan:5000": { "auth": auth("lan:pa:ss") },
            "broken.example": { "auth": "???" },
        }})
        .to_string();
        let found = |host| docker_credentials(&text, host);
        let pair = |u: &str, p: &str| Ok(Some((u.to_string(), p.to_string())));
        assert_eq!(found("docker.io"), pair("hub", "secret"));
        assert_eq!(found("registry.lan:5000"), pair("lan", "pa:ss"));
        assert_eq!(found("registry.lan"), Ok(None));
        assert!(
            found("broken.example")
                .unwrap_err()
                .contains("auths.broken.example.auth")
        );
        assert_eq!(docker_credentials("{}", "docker.io"), Ok(None));
    }

    #[test]
    fn challenges_are_read_with_quoted_values() {
        let params = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            params,
            vec![
                s("realm", "https://auth.docker.io/token"),
                s("service", "registry.docker.io"),
                s("scope", "repository:library/alpine:pull"),
            ]
        );
        assert_eq!(
            challenge_params(r#"realm="a\"b", x=1"#),
            vec![s("realm", "a\"b"), s("x", "1")]
        );
    }
}
