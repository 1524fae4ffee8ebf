//! `outpost image save|load|push|keys`: images carried as signed bundle files, and the keys
//! bundles are checked against. Transfers show a progress bar on a terminal and one plain line
//! at the end otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commands::{connect, print_data};
use crate::output::{memory, table, trimmed};
use crate::{Connection, Format};

/// Read size of a bundle sent to a server.
const CHUNK: usize = 256 << 10;

/// A progress bar on a terminal (stderr), nothing otherwise.
fn progress(total: Option<u64>, what: String) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("a valid template"),
        ),
    };
    bar.set_message(what);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// `outpost image save IMAGE... -o FILE [--have X]... [--node N] [--force]`.
pub async fn save(
    conn: &Connection,
    images: Vec<String>,
    file: &Path,
    have: &[String],
    node: Option<String>,
    force: bool,
) -> Result<()> {
    if file.exists() && !force {
        bail!(
            "{} exists: give another file, or --force to replace it",
            file.display()
        );
    }
    let client = connect(conn).await?;
    let req = api::SaveRequest {
        images,
        node,
        have: what_target_has(&client, have).await?,
    };
    let (carried, mut stream) = client.save_images(&req).await?;
    let part = part_file(file);
    let mut out = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let bar = progress(None, format!("saving to {}", file.display()));
    let mut written = 0u64;
    let copied: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the bundle broke off before its end; nothing was saved")?;
            out.write_all(&chunk).await?;
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        out.sync_all().await?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, file).with_context(|| format!("cannot write {}", file.display()))?;
    let manifest = images::read_manifest(std::fs::File::open(file)?)?;
    if conn.output != Format::Table {
        return print_data(conn.output, &manifest);
    }
    let left_out: u64 = manifest.omitted.iter().map(|b| b.size).sum();
    println!(
        "{}: {} image(s), {} blob(s) of {} in {} bytes{}",
        file.display(),
        manifest.images.len(),
        manifest.blobs.len(),
        memory(carried.unwrap_or_default()),
        written,
        match manifest.omitted.len() {
            0 => String::new(),
            n => format!(
                "; {n} blob(s) of {} left out, the target has them",
                memory(left_out)
            ),
        }
    );
    Ok(())
}

/// `FILE.part` beside `file`: written whole, then renamed, so `file` is never half a bundle.
fn part_file(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// `--have` values: a bundle file given before (its blobs), a node (its store), an image the
/// target holds.
async fn what_target_has(client: &client::Client, have: &[String]) -> Result<api::Have> {
    let mut target = api::Have::default();
    if have.is_empty() {
        return Ok(target);
    }
    let nodes: Vec<String> = client
        .nodes()
        .await?
        .into_iter()
        .map(|n| n.node.name)
        .collect();
    for value in have {
        let path = Path::new(value);
        if path.is_file() {
            let file = std::fs::File::open(path)?;
            let manifest = images::read_manifest(file)
                .with_context(|| format!("--have {value}: cannot read it as a bundle"))?;
            let blobs = manifest.blobs.iter().chain(&manifest.omitted);
            target.blobs.extend(blobs.map(|b| b.digest.to_string()));
        } else if nodes.contains(value) {
            target.nodes.push(value.clone());
        } else {
            target.images.push(value.clone());
        }
    }
    Ok(target)
}

/// `outpost image load FILE [--node N]... [--unsigned]`: into each node's store in turn.
pub async fn load(
    conn: &Connection,
    file: &Path,
    nodes: Vec<String>,
    unsigned: bool,
) -> Result<()> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let client = connect(conn).await?;
    let mut loaded = Vec::new();
    for node in targets(nodes) {
        let what = format!("loading into {}", node.as_deref().unwrap_or("the node"));
        let bar = progress(Some(size), what);
        let body = file_body(file, bar.clone()).await?;
        let answer = client.load_images(node.as_deref(), unsigned, body).await;
        bar.finish_and_clear();
        let answer = answer.with_context(|| format!("{} was not loaded", file.display()))?;
        loaded.push(answer);
    }
    print_loaded(conn, &loaded)
}

/// `outpost image push IMAGE [--node N]...`: the image from this machine's Docker Engine (as
/// `docker save` writes it) into each node's store. It carries no signature: the admin token
/// that sends it is the authority.
pub async fn push(conn: &Connection, image: &str, nodes: Vec<String>) -> Result<()> {
    let docker = bollard::Docker::connect_with_local_defaults().context(
        "cannot reach this machine's Docker Engine (DOCKER_HOST, or /var/run/docker.sock)",
    )?;
    let size = (docker.inspect_image(image).await)
        .with_context(|| {
            format!("{image} is not in this machine's Docker Engine (`docker images`)")
        })?
        .size
        .and_then(|s| u64::try_from(s).ok());
    let client = connect(conn).await?;
    let mut loaded = Vec::new();
    for node in targets(nodes) {
        let what = format!(
            "pushing {image} to {}",
            node.as_deref().unwrap_or("the node")
        );
        let bar = progress(size, what);
        let counted = bar.clone();
        let saved = docker.export_image(image).map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            counted.inc(chunk.len() as u64);
            Ok::<_, std::io::Error>(chunk)
        });
        let answer = client
            .load_images(node.as_deref(), true, reqwest::Body::wrap_stream(saved))
            .await;
        bar.finish_and_clear();
        loaded.push(answer.with_context(|| format!("{image} was not pushed"))?);
    }
    print_loaded(conn, &loaded)
}

/// The nodes asked for; none means the server picks the cluster's one node.
fn targets(nodes: Vec<String>) -> Vec<Option<String>> {
    match nodes.is_empty() {
        true => vec![None],
        false => nodes.into_iter().map(Some).collect(),
    }
}

fn print_loaded(conn: &Connection, loaded: &[api::LoadedBundle]) -> Result<()> {
    if conn.output != Format::Table {
        return print_data(conn.output, &loaded);
    }
    let mut t = table(&["NODE", "IMAGES", "NEW BLOBS", "SIGNED BY"]);
    for l in loaded {
        t.add_row(vec![
            l.node.clone(),
            l.images.join(", "),
            format!("{} ({})", l.blobs_added, memory(l.bytes_added)),
            (l.signed_by.clone()).unwrap_or_else(|| "unsigned".into()),
        ]);
    }
    println!("{}", trimmed(t));
    for (node, warning) in (loaded.iter()).flat_map(|l| l.warnings.iter().map(|w| (&l.node, w))) {
        eprintln!("warning: {node}: {warning}");
    }
    Ok(())
}

/// The file as a request body, read as it is sent; `bar` follows.
async fn file_body(file: &Path, bar: indicatif::ProgressBar) -> Result<reqwest::Body> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let chunks = futures_util::stream::try_unfold((f, bar), |(mut f, bar)| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        bar.inc(n as u64);
        Ok(Some((buf, (f, bar))))
    });
    Ok(reqwest::Body::wrap_stream(chunks))
}

/// `outpost image keys [add NAME KEY | revoke ID]`.
pub async fn keys(conn: &Connection, action: Option<crate::KeyAction>) -> Result<()> {
    let client = connect(conn).await?;
    let changed = match action {
        None => None,
        Some(crate::KeyAction::Add { name, public_key }) => {
            let req = api::TrustKeyRequest { name, public_key };
            Some(client.trust_key(&req).await?)
        }
        Some(crate::KeyAction::Revoke { id }) => Some(client.revoke_key(&id).await?),
    };
    if let Some(key) = changed {
        if conn.output != Format::Table {
            return print_data(conn.output, &key);
        }
        println!("{} ({}): {}", key.id, key.name, key.state);
        return Ok(());
    }
    let keys = client.image_keys().await?;
    if conn.output != Format::Table {
        return print_data(conn.output, &keys);
    }
    let mut t = table(&["ID", "NAME", "ORIGIN", "STATE", "PUBLIC KEY"]);
    for k in &keys {
        let public_key = match k.public_key.is_empty() {
            true => "-".to_string(),
            false => k.public_key.clone(),
        };
        let origin = match k.origin.is_empty() {
            true => "-".to_string(),
            false => k.origin.clone(),
        };
        t.add_row(vec![
            k.id.clone(),
            k.name.clone(),
            origin,
            k.state.clone(),
            public_key,
        ]);
    }
    println!("{}", trimmed(t));
    Ok(())
}
