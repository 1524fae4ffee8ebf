//! The data dir a real server leaves: private modes, and a clear refusal of an empty token file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn config(dir: &Path) -> server::ServerConfig {
    server::ServerConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap())
}

#[tokio::test]
async fn the_data_dir_and_its_files_are_private_also_when_made_by_an_older_version() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let server = server::start(config(&dir)).await.unwrap();
    assert_eq!(mode(&dir), 0o700);
    for file in ["state.redb", "token", "api"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    server.shutdown().await;

    // Open them up, as an older version left them; the next start tightens them again.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["state.redb", "token", "api"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = server::start(config(&dir)).await.unwrap();
    assert_eq!(mode(&dir), 0o700);
    for file in ["state.redb", "token", "api"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file} after a restart");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_empty_token_file_is_refused_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let token = root.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let err = match server::start(config(root.path())).await {
        Ok(_) => panic!("a server started with an empty token file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&token.display().to_string()), "{err}");
    assert!(err.contains("is empty"), "{err}");
    assert!(!err.contains("os error"), "{err}");
}
