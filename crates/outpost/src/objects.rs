//! `outpost secret|config create|ls|rm`, and reading the files a Compose file's top-level
//! `secrets:` and `configs:` name. A value goes from its file (or stdin) to the API and is
//! never printed.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use api::{ObjectInfo, ObjectKind, ObjectUpload};
use comfy_table::{Table, presets};

use crate::commands::{connect, print_data};
use crate::{Connection, Format};

/// A value read from `file` (`-` for stdin), refused past the size limit with the path.
pub fn read_value(file: &Path) -> Result<Vec<u8>> {
    let limit = spec::MAX_OBJECT_SIZE;
    let mut data = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin()
            .take(limit as u64 + 1)
            .read_to_end(&mut data)
            .context("cannot read the value from stdin")?
    } else {
        let f = std::fs::File::open(file)
            .with_context(|| format!("cannot read {}: check the path", file.display()))?;
        f.take(limit as u64 + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read {}", file.display()))?
    };
    if read > limit {
        let name = match file == Path::new("-") {
            true => "stdin".to_string(),
            false => file.display().to_string(),
        };
        bail!("{name} is larger than the limit of {limit} bytes (500 KiB) for a secret or config");
    }
    Ok(data)
}

/// The values a Compose file defines with `file:`, read relative to the Compose file.
pub fn read_sources(spec_file: &Path, sources: &[spec::ObjectSource]) -> Result<Vec<ObjectUpload>> {
    let dir = spec_file.parent().unwrap_or(Path::new("."));
    sources
        .iter()
        .map(|s| {
            let path: PathBuf = dir.join(&s.file);
            let data = read_value(&path)
                .with_context(|| format!("{}: {} {:?}", spec_file.display(), s.kind, s.name))?;
            Ok(ObjectUpload {
                kind: s.kind,
                name: s.name.clone(),
                data,
            })
        })
        .collect()
}

pub async fn create(conn: &Connection, kind: ObjectKind, name: &str, file: &Path) -> Result<()> {
    let data = read_value(file)?;
    let info = connect(conn)
        .await?
        .create_object(kind, name, &data)
        .await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &info)?,
        Format::Table => println!(
            "{kind} {} stored ({} bytes, digest {})",
            info.name, info.size, info.digest
        ),
    }
    Ok(())
}

pub async fn list(conn: &Connection, kind: ObjectKind) -> Result<()> {
    let list = connect(conn).await?.objects(kind).await?;
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, &list)?,
        Format::Table => println!("{}", table(&list, server::now())),
    }
    Ok(())
}

pub async fn remove(conn: &Connection, kind: ObjectKind, name: &str) -> Result<()> {
    connect(conn).await?.remove_object(kind, name).await?;
    println!("{kind} {name} removed");
    Ok(())
}

fn table(list: &[ObjectInfo], now: api::Timestamp) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(vec![
        "NAME", "SIZE", "DIGEST", "CREATED", "UPDATED", "SERVICES",
    ]);
    for o in list {
        t.add_row(vec![
            o.name.clone(),
            o.size.to_string(),
            o.digest.clone(),
            crate::output::age(o.created_at, now),
            crate::output::age(o.updated_at, now),
            o.services.join(", "),
        ]);
    }
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}
