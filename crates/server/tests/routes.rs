//! A real server on loopback: every path its OpenAPI document lists is routed and guarded, and
//! every refusal, down to an unknown path, is an `ApiError`.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Far above what any wait here needs on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

struct Running {
    server: server::ServerHandle,
    base: String,
    token: String,
    http: reqwest::Client,
    data_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(limits: server::ApiLimits) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = server::ServerConfig {
        limits,
        ..server::ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
    };
    let server = server::start(config).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    Running {
        base: format!("http://{}", server.addr),
        token: server.token.clone(),
        server,
        http,
        data_dir: dir.path().join("data"),
        _dir: dir,
    }
}

impl Running {
    async fn call(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text:?}"));
        (status, body)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
}

#[tokio::test]
async fn every_documented_path_is_served_behind_the_token() {
    let s = start(server::ApiLimits::default()).await;
    let (status, doc) = s
        .call(s.http.get(format!("{}/v1/openapi.json", s.base)))
        .await;
    assert_eq!(status, 200, "the document needs no token");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{:?}", paths.keys());
    for (path, item) in paths {
        let concrete = path.replace("{name}", "x").replace("{target}", "x");
        for method in item.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let req = s
                .http
                .request(method.clone(), format!("{}{concrete}", s.base));
            let (status, body) = s.call(req).await;
            if path == "/v1/openapi.json" {
                assert_eq!(status, 200);
            } else {
                assert_eq!(status, 401, "{method} {path}");
                assert!(body["error"].as_str().unwrap().contains("bearer"), "{body}");
            }
        }
    }
    // A one-member group elects itself, but only after its election timeout.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, status) = s.call(s.get("/v1/status")).await;
        if status["leader"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no leader: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api_file = std::fs::read_to_string(s.data_dir.join("api")).unwrap();
    assert_eq!(api_file.trim(), s.base);
    s.server.shutdown().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_a_wrong_token_refused() {
    let s = start(server::ApiLimits::default()).await;
    let url = format!("{}/v1/services", s.base);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = s
            .http
            .get(&url)
            .header("authorization", format!("{scheme} {}", s.token));
        assert_eq!(s.call(req).await.0, 200, "{scheme}");
    }
    let wrong = s.http.get(&url).bearer_auth(format!("{}x", s.token));
    let (status, body) = s.call(wrong).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("wrong bearer token")
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_an_api_error() {
    let s = start(server::ApiLimits::default()).await;
    let (status, body) = s
        .call(
            s.post("/v1/services")
                .header("content-type", "application/json")
                .body("{\"services\": [{\"name\": 7}]}"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["problems"][0]["path"], "services[0].name", "{body}");

    let (status, body) = s.call(s.post("/v1/services")).await;
    assert_eq!(status, 400, "a missing body: {body}");
    assert_eq!(body["error"], "the request has no body");

    let (status, body) = s
        .call(
            s.post("/v1/services")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(status, 415, "{body}");
    assert!(body["error"].as_str().unwrap().contains("application/json"));

    let (status, body) = s.call(s.get("/v1/events?after=minus")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["problems"][0]["path"], "after", "{body}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_naming_the_limit() {
    let mut limits = server::ApiLimits::default();
    limits.listener.body_limit = 1 << 20;
    let s = start(limits).await;
    // 20 MiB: far past the limit, as a careless `deploy` of a huge file would send.
    let huge = format!(r#"{{"services": [], "pad": "{}"}}"#, "x".repeat(20 << 20));
    let req = s
        .post("/v1/services")
        .header("content-type", "application/json")
        .body(huge);
    let (status, body) = s.call(req).await;
    assert_eq!(status, 413, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("limit of 1 MiB"), "{error}");
    assert!(error.contains("--max-body-size"), "{error}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_answered_with_an_api_error() {
    let s = start(server::ApiLimits::default()).await;
    let (status, body) = s.call(s.get("/v1/nope")).await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("GET /v1/nope"),
        "{body}"
    );
    let (status, body) = s.call(s.get("/v1/logs/nope")).await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("\"nope\""),
        "{body}"
    );
    let req = s
        .http
        .put(format!("{}/v1/services", s.base))
        .bearer_auth(&s.token);
    let (status, body) = s.call(req).await;
    assert_eq!(status, 405);
    assert!(body["error"].as_str().unwrap().contains("PUT"), "{body}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_blocking_queries() {
    let limits = server::ApiLimits {
        blocking_per_client: 2,
        ..server::ApiLimits::default()
    };
    let s = std::sync::Arc::new(start(limits).await);
    let (_, first) = s.call(s.get("/v1/events")).await;
    let after = first["index"].as_u64().unwrap();
    // Two queries that block (nothing new happens) hold both slots.
    let path = format!("/v1/events?after={after}&wait=25s");
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = s.clone();
        let path = path.clone();
        // Retried when the probe below holds the slot for a moment.
        held.push(tokio::spawn(async move {
            while s.call(s.get(&path)).await.0 == 429 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // The probe does not wait, so it answers at once while a slot is still free.
    let probe = format!("/v1/events?after={after}");
    let deadline = Instant::now() + PATIENCE;
    let (status, body) = loop {
        let answer = s.call(s.get(&probe)).await;
        if answer.0 == 429 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the third query was never refused: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 429);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2 blocking queries"),
        "{body}"
    );
    let (status, _) = s.call(s.get("/v1/services")).await;
    assert_eq!(status, 200, "prompt routes are not capped");
    for h in held {
        h.abort();
    }
}
