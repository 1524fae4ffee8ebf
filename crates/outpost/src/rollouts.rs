//! `outpost rollout status|history|undo|pause|resume|promote`.

use std::time::Duration;

use anyhow::Result;
use api::{RolloutState, RolloutStatus};

use crate::commands::{connect, print_data};
use crate::{Connection, Format};

/// An end of `rollout status -w` other than success: the process exits with `code`.
#[derive(Debug)]
pub struct Ended {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Ended {}

/// How often `-w` looks again.
const POLL: Duration = Duration::from_millis(500);

pub async fn status(conn: &Connection, service: &str, wait: bool) -> Result<()> {
    let client = connect(conn).await?;
    let mut last = String::new();
    loop {
        let status = client.rollout(service).await?;
        let line = describe(&status);
        if conn.output == Format::Table && line != last {
            println!("{line}");
            last = line;
        }
        let active = status.rollout.as_ref().is_some_and(|r| r.active());
        let stuck = status.held || status.rollout.as_ref().is_some_and(|r| r.paused);
        if !wait || !active || stuck {
            if conn.output != Format::Table {
                print_data(conn.output, &status)?;
            }
            return outcome(&status, wait);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// With `-w`, an ending other than success is an exit code of its own.
fn outcome(status: &RolloutStatus, wait: bool) -> Result<()> {
    let Some(rollout) = status.rollout.as_ref().filter(|_| wait) else {
        return Ok(());
    };
    let ended = |code, what: &str| Ended {
        code,
        message: format!("the rollout of {} {what}", status.service),
    };
    match rollout.state {
        RolloutState::Completed => Ok(()),
        // A rollback carries the failure that caused it; an undo asked for has none.
        RolloutState::RolledBack if rollout.message.is_none() => Ok(()),
        RolloutState::RolledBack => Err(ended(1, "was rolled back").into()),
        _ if status.held => Err(ended(2, "holds at its canary: `outpost rollout promote`").into()),
        _ => Err(ended(2, "is paused: `outpost rollout resume`").into()),
    }
}

/// One line on where a rollout stands.
fn describe(s: &RolloutStatus) -> String {
    let Some(r) = &s.rollout else {
        return format!("{}: version {}, no rollout yet", s.service, s.version);
    };
    let mut line = format!(
        "{}: {} version {} over {}: {}/{} updated",
        s.service, r.state, r.to, r.from, s.updated, s.replicas
    );
    if s.old > 0 {
        line.push_str(&format!(", {} old left", s.old));
    }
    if !r.failed.is_empty() {
        line.push_str(&format!(", {} failed", r.failed.len()));
    }
    if s.held {
        line.push_str("; held at its canary (`outpost rollout promote`)");
    } else if r.paused {
        line.push_str("; paused (`outpost rollout resume`)");
    }
    if let Some(why) = &r.message {
        line.push_str(&format!(" ({why})"));
    }
    line
}

pub async fn history(conn: &Connection, service: &str) -> Result<()> {
    let status = connect(conn).await?.rollout(service).await?;
    if conn.output != Format::Table {
        return print_data(conn.output, &status.revisions);
    }
    println!("{:<10} {:<26} CHANGED", "REVISION", "CREATED");
    for r in &status.revisions {
        let mark = if r.current { " (current)" } else { "" };
        let changed = if r.changed.is_empty() {
            "-".to_string()
        } else {
            r.changed.join(", ")
        };
        let revision = format!("{}{mark}", r.version);
        println!("{revision:<10} {:<26} {changed}", r.created_at.to_string());
    }
    Ok(())
}

pub async fn undo(conn: &Connection, service: &str, to: Option<u64>) -> Result<()> {
    let status = connect(conn).await?.rollout_undo(service, to).await?;
    report(conn, &status)
}

pub async fn act(conn: &Connection, service: &str, action: &str) -> Result<()> {
    let status = connect(conn).await?.rollout_action(service, action).await?;
    report(conn, &status)
}

fn report(conn: &Connection, status: &RolloutStatus) -> Result<()> {
    match conn.output {
        Format::Json | Format::Yaml => print_data(conn.output, status),
        Format::Table => {
            println!("{}", describe(status));
            Ok(())
        }
    }
}
