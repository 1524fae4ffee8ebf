//! A property-based fuzzer (schemathesis) against a real server and the server's own OpenAPI
//! document: every answer must be documented (status, content type, schema, headers), none may
//! be a server error, schema-invalid input must be refused, and the token must be checked.
//! Skipped with the reason where schemathesis is not installed; required under CI, where
//! `.ci/run` installs it.

use std::process::Command;
use std::time::Duration;

/// The fuzzer, pinned by `.ci/run`; `st` is its short name.
const FUZZER: &str = "schemathesis";

/// Examples per operation: a few hundred requests over the 14 operations, well under two
/// minutes on a loaded 2-core machine.
const EXAMPLES: &str = "25";

/// Whether the fuzzer runs here; panics under CI when it does not.
fn fuzzer_available() -> bool {
    let found = Command::new(FUZZER)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{FUZZER} must run under CI: `.ci/run` installs it with pip"
        );
        eprintln!("skipping the API fuzz test: {FUZZER} is not installed (pip install {FUZZER})");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_own_openapi_document_under_fuzzing() {
    if !fuzzer_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limits = server::ApiLimits {
        // Blocking queries the fuzzer happens to make answer within a second.
        max_wait: Duration::from_secs(1),
        ..server::ApiLimits::default()
    };
    let config = server::ServerConfig {
        limits,
        ..server::ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
    };
    let server = server::start(config).await.unwrap();
    let url = format!("http://{}/v1/openapi.json", server.addr);
    let auth = format!("Authorization: Bearer {}", server.token);
    let work = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(FUZZER)
            .args(["run", &url, "--header", &auth, "--max-examples", EXAMPLES])
            // Every check but "schema-valid input is accepted": the spec's validation (ranges,
            // references between fields) is richer than a JSON schema can say.
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            // A fixed seed makes a failure reproducible; its output names the request.
            .args(["--seed", "20250101", "--no-shrink"])
            .args(["--request-timeout", "40", "--suppress-health-check", "all"])
            .current_dir(&work)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{FUZZER} found non-conforming answers:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "nothing was tested:\n{stdout}");
    server.shutdown().await;
}
