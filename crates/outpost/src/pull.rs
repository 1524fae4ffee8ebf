//! `outpost image pull`: nodes obtain an image into their stores, with progress bars on a
//! terminal (one per node) and plain lines otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{Result, bail};
use futures_util::StreamExt;

use crate::commands::connect;
use crate::{Connection, Format, output};

/// Asks the nodes (every live one when `nodes` is empty) to obtain `image`, shows their
/// progress, and fails when any node could not get it.
pub async fn pull(conn: &Connection, image: &str, nodes: &[String]) -> Result<()> {
    let client = connect(conn).await?;
    let mut stream = client.pull_image(image, nodes).await?;
    let mut shown = Shown::new(conn.output == Format::Table && std::io::stderr().is_terminal());
    let mut ends: BTreeMap<String, api::PullLine> = BTreeMap::new();
    let mut partial = Vec::new();
    while let Some(chunk) = stream.next().await {
        partial.extend_from_slice(&chunk?);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let Ok(line) = serde_json::from_slice::<api::PullLine>(&line) else {
                continue;
            };
            if conn.output == Format::Table {
                shown.line(&line);
            }
            if matches!(
                line,
                api::PullLine::Done { .. } | api::PullLine::Failed { .. }
            ) {
                ends.insert(line.node().to_string(), line);
            }
        }
    }
    shown.finish();
    let ends: Vec<api::PullLine> = ends.into_values().collect();
    if conn.output != Format::Table {
        crate::commands::print_data(conn.output, &ends)?;
    }
    let failed: Vec<&str> = (ends.iter())
        .filter(|l| matches!(l, api::PullLine::Failed { .. }))
        .map(api::PullLine::node)
        .collect();
    match (ends.is_empty(), failed.is_empty()) {
        (true, _) => bail!("no node answered: is any node up? (see `outpost nodes`)"),
        (false, true) => Ok(()),
        (false, false) => bail!(
            "{image} could not be pulled on {} of {} node(s): {}",
            failed.len(),
            ends.len(),
            failed.join(", ")
        ),
    }
}

/// One node's end as a line: `edge-1: from upstream registry-1.docker.io, 3.4Mi`.
fn end_text(line: &api::PullLine) -> Option<String> {
    match line {
        api::PullLine::Done {
            node,
            origin,
            bytes,
            warning,
        } => {
            let moved = match bytes {
                0 => String::new(),
                n => format!(", {}", output::memory(*n)),
            };
            let warned = warning
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            Some(format!("{node}: {origin}{moved}{warned}"))
        }
        api::PullLine::Failed { node, error } => Some(format!("{node}: failed: {error}")),
        _ => None,
    }
}

/// How progress is shown: bars on a terminal, plain lines otherwise.
enum Shown {
    Bars {
        all: indicatif::MultiProgress,
        bars: BTreeMap<String, indicatif::ProgressBar>,
    },
    Lines,
}

impl Shown {
    fn new(terminal: bool) -> Shown {
        match terminal {
            true => Shown::Bars {
                all: indicatif::MultiProgress::new(),
                bars: BTreeMap::new(),
            },
            false => Shown::Lines,
        }
    }

    fn line(&mut self, line: &api::PullLine) {
        match self {
            Shown::Lines => println!("{}", plain(line)),
            Shown::Bars { all, bars } => {
                let bar = (bars.entry(line.node().to_string()))
                    .or_insert_with(|| all.add(node_bar(line.node())));
                match line {
                    api::PullLine::Trying { source, .. } => bar.set_message(source.clone()),
                    api::PullLine::Blob {
                        digest,
                        done,
                        total,
                        ..
                    } => {
                        bar.set_length(total.unwrap_or(*done));
                        bar.set_position(*done);
                        bar.set_message(short(digest).to_string());
                    }
                    _ => bar.finish_with_message(end_text(line).unwrap_or_default()),
                }
            }
        }
    }

    fn finish(&self) {
        if let Shown::Bars { bars, .. } = self {
            for bar in bars.values().filter(|b| !b.is_finished()) {
                bar.abandon();
            }
        }
    }
}

fn node_bar(node: &str) -> indicatif::ProgressBar {
    let style =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    indicatif::ProgressBar::new(0)
        .with_style(style)
        .with_prefix(node.to_string())
}

/// A line as text, for a log or a pipe.
fn plain(line: &api::PullLine) -> String {
    match line {
        api::PullLine::Trying { node, source } => format!("{node}: trying {source}"),
        api::PullLine::Blob {
            node,
            digest,
            done,
            total,
        } => {
            let total = total
                .map(|t| format!(" of {}", output::memory(t)))
                .unwrap_or_default();
            format!("{node}: {} {}{total}", short(digest), output::memory(*done))
        }
        end => end_text(end).unwrap_or_default(),
    }
}

/// `sha256:` and the first 12 hex digits, as Docker shows layers.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}
