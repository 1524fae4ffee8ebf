//! A real server on loopback: every path the OpenAPI document lists is routed and guarded.

use std::time::Duration;

#[tokio::test]
async fn every_documented_path_is_served_behind_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = server::ServerConfig {
        data_dir: dir.path().into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        id: 1,
        reset: false,
    };
    let server = server::start(config).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://{}", server.addr);
    for (path, methods) in api::openapi::PATHS {
        let concrete = path.replace("{name}", "x").replace("{target}", "x");
        for method in *methods {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let status = http
                .request(method.clone(), format!("{base}{concrete}"))
                .send()
                .await
                .unwrap()
                .status();
            let expected = if *path == "/v1/openapi.json" {
                200
            } else {
                401
            };
            assert_eq!(status.as_u16(), expected, "{method} {path}");
        }
    }
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let status: api::ClusterStatus = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status.leader,
        Some(1),
        "a single server leads its one-member group"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("api"))
            .unwrap()
            .trim(),
        base
    );
    server.shutdown().await;
}
