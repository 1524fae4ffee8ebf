//! The agent's own durable memory, in its own redb file: every task it was assigned, with the
//! spec it was given and how to find the running process again. With it a cut-off or rebooted
//! node keeps running and healing its work with no server reachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::{Assignment, Timestamp};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::driver::Handle;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// What the agent remembers of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTask {
    pub assignment: Assignment,
    /// Host ports given to the task, kept across restarts so its address stays the same.
    pub ports: BTreeMap<String, u16>,
    pub handle: Option<Handle>,
    pub restarts: u32,
    pub started_at: Option<Timestamp>,
}

impl LocalTask {
    /// A task just assigned: no ports, never started.
    pub fn new(assignment: Assignment) -> LocalTask {
        LocalTask {
            assignment,
            ports: BTreeMap::new(),
            handle: None,
            restarts: 0,
            started_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("agent state {path}: {message}")]
pub struct LocalError {
    path: PathBuf,
    message: String,
}

pub struct LocalState {
    db: Database,
    path: PathBuf,
}

impl LocalState {
    pub fn open(path: &Path) -> Result<LocalState, LocalError> {
        let err = |e: String| LocalError {
            path: path.to_path_buf(),
            message: e,
        };
        let db = Database::create(path).map_err(|e| {
            err(format!(
                "cannot open: {e} (is another agent using this data dir?)"
            ))
        })?;
        let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
        txn.open_table(TASKS).map_err(|e| err(e.to_string()))?;
        txn.commit().map_err(|e| err(e.to_string()))?;
        Ok(LocalState {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> LocalError {
        LocalError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    pub fn all(&self) -> Result<Vec<LocalTask>, LocalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            match serde_json::from_slice::<LocalTask>(value.value()) {
                Ok(task) => out.push(task),
                Err(e) => tracing::warn!(
                    task = key.value(),
                    "skipping unreadable local task record: {e}"
                ),
            }
        }
        Ok(out)
    }

    pub fn put(&self, task: &LocalTask) -> Result<(), LocalError> {
        let bytes = serde_json::to_vec(task).map_err(|e| self.err(e))?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TASKS).map_err(|e| self.err(e))?;
            table
                .insert(task.assignment.task.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn remove(&self, task: &str) -> Result<(), LocalError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TASKS).map_err(|e| self.err(e))?;
            table.remove(task).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::DesiredState;
    use spec::ServiceSpec;

    #[test]
    fn tasks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let task = LocalTask {
            assignment: Assignment {
                task: "web.1.1".into(),
                service: "web".into(),
                slot: 1,
                version: 1,
                desired: DesiredState::Running,
                spec: ServiceSpec::process("web", &["app"]),
            },
            ports: BTreeMap::from([("http".into(), 8080)]),
            handle: Some(Handle {
                pid: Some(42),
                start_ticks: Some(7),
                boot_id: Some("boot".into()),
                container_id: None,
            }),
            restarts: 2,
            started_at: None,
        };
        {
            let local = LocalState::open(&path).unwrap();
            local.put(&task).unwrap();
        }
        let local = LocalState::open(&path).unwrap();
        assert_eq!(local.all().unwrap(), vec![task]);
        local.remove("web.1.1").unwrap();
        assert!(local.all().unwrap().is_empty());
    }
}
