//! The agent's own durable memory, in its own redb file: every task it was assigned, with the
//! spec it was given and how to find the running process again. With it a cut-off or rebooted
//! node keeps running and healing its work with no server reachable.
//!
//! Every record is sealed with a checksum (`seal`) and checked when the file is opened and when
//! it is read: a damaged file is refused with its path, table and key and what to do, never used
//! as if it were true, and never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::{Assignment, Timestamp};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::driver::Handle;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// Single values: [`REPORT_EPOCH`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The base of the last run's report sequence, in seconds (see [`LocalState::next_report_epoch`]).
const REPORT_EPOCH: &str = "report_epoch";

/// What an operator can do about a damaged agent state: the control plane has the assignments.
const REMEDY: &str = "move the file away to start this agent without local state; it then takes its assignments from the server again";

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
    /// The file is locked by another process: another agent, or, for a moment, a child of a
    /// killed one that has not exec'd yet.
    locked: bool,
}

impl LocalError {
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

pub struct LocalState {
    db: Database,
    path: PathBuf,
}

impl LocalState {
    /// Opens (or creates) the file and checks every record in it.
    pub fn open(path: &Path) -> Result<LocalState, LocalError> {
        let opened = seal::unpanicked(|| LocalState::open_checked(path));
        opened.unwrap_or_else(|detail| {
            Err(LocalError {
                path: path.to_path_buf(),
                message: format!("it is damaged and cannot be read ({detail}): {REMEDY}"),
                locked: false,
            })
        })
    }

    fn open_checked(path: &Path) -> Result<LocalState, LocalError> {
        let err = |e: String| LocalError {
            path: path.to_path_buf(),
            message: e,
            locked: false,
        };
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => LocalError {
                locked: true,
                ..err(format!(
                    "cannot open: {e} (is another agent using this data dir?)"
                ))
            },
            e => err(format!("it is damaged and cannot be read ({e}): {REMEDY}")),
        })?;
        let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
        txn.open_table(TASKS).map_err(|e| err(e.to_string()))?;
        txn.open_table(META).map_err(|e| err(e.to_string()))?;
        txn.commit().map_err(|e| err(e.to_string()))?;
        let local = LocalState {
            db,
            path: path.to_path_buf(),
        };
        local.verify()?;
        Ok(local)
    }

    fn err(&self, e: impl std::fmt::Display) -> LocalError {
        LocalError {
            path: self.path.clone(),
            message: e.to_string(),
            locked: false,
        }
    }

    /// The payload of a record, or an error naming the file, table and key.
    fn open_record<'a>(
        &self,
        table: &str,
        key: &str,
        bytes: &'a [u8],
    ) -> Result<&'a [u8], LocalError> {
        seal::open(bytes).map_err(|why| {
            self.err(format!(
                "record {key:?} of table {table} is damaged ({why}): {REMEDY}"
            ))
        })
    }

    /// Checks every record's seal, so damage is found when the agent starts.
    fn verify(&self) -> Result<(), LocalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        for table in [TASKS, META] {
            let opened = txn.open_table(table).map_err(|e| self.err(e))?;
            for row in opened.iter().map_err(|e| self.err(e))? {
                let (key, value) = row.map_err(|e| self.err(e))?;
                self.open_record(table.name(), key.value(), value.value())?;
            }
        }
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<LocalTask>, LocalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let payload = self.open_record(TASKS.name(), key.value(), value.value())?;
            match serde_json::from_slice::<LocalTask>(payload) {
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
        self.insert(TASKS, &task.assignment.task, &bytes)
    }

    fn insert(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        payload: &[u8],
    ) -> Result<(), LocalError> {
        let record = seal::seal(payload);
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(table).map_err(|e| self.err(e))?;
            table
                .insert(key, record.as_slice())
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

    /// The base of this run's report sequence: `now_secs`, or one more than the last run's if the
    /// clock says otherwise (a node without a real-time clock may boot in the past). Kept, so
    /// every run of the agent counts its reports above the runs before it.
    pub fn next_report_epoch(&self, now_secs: u64) -> Result<u64, LocalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(META).map_err(|e| self.err(e))?;
        let last = match table.get(REPORT_EPOCH).map_err(|e| self.err(e))? {
            Some(value) => {
                let payload = self.open_record(META.name(), REPORT_EPOCH, value.value())?;
                serde_json::from_slice::<u64>(payload).map_err(|e| self.err(e))?
            }
            None => 0,
        };
        drop((table, txn));
        let epoch = now_secs.max(last.saturating_add(1));
        let bytes = serde_json::to_vec(&epoch).map_err(|e| self.err(e))?;
        self.insert(META, REPORT_EPOCH, &bytes)?;
        Ok(epoch)
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

    fn assigned(id: &str) -> LocalTask {
        LocalTask::new(Assignment {
            task: id.into(),
            service: "web".into(),
            slot: 1,
            version: 1,
            desired: DesiredState::Running,
            spec: ServiceSpec::process("web", &["./serve", "--replicas-marker"]),
        })
    }

    /// A file with a few tasks in it, closed, then changed on disk by `damage`.
    fn damaged(
        damage: impl FnOnce(&Path),
    ) -> (tempfile::TempDir, Result<Vec<LocalTask>, LocalError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let local = LocalState::open(&path).unwrap();
            for id in ["web.1.1", "web.2.1", "web.3.1"] {
                local.put(&assigned(id)).unwrap();
            }
            local.next_report_epoch(1).unwrap();
        }
        damage(&path);
        let result = LocalState::open(&path).and_then(|local| local.all());
        (dir, result)
    }

    fn refused(result: Result<Vec<LocalTask>, LocalError>) -> String {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("agent.redb"), "{message}");
        assert!(message.contains("move the file away"), "{message}");
        assert!(!message.contains("panicked"), "{message}");
        message
    }

    #[test]
    fn a_file_truncated_to_half_is_refused_with_the_remedy_not_a_panic() {
        let (_dir, result) = damaged(|path| {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let size = file.metadata().unwrap().len();
            file.set_len(size / 2).unwrap();
        });
        let message = refused(result);
        assert!(message.contains("is damaged"), "{message}");
    }

    #[test]
    fn a_changed_byte_in_a_task_record_is_refused_naming_its_key() {
        let (_dir, result) = damaged(|path| {
            let mut bytes = std::fs::read(path).unwrap();
            let needle = b"--replicas-marker";
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("records are stored as JSON");
            bytes[at + 2] = b'R';
            std::fs::write(path, bytes).unwrap();
        });
        let message = refused(result);
        assert!(
            message.contains("of table tasks") && message.contains("checksum does not match"),
            "{message}"
        );
    }

    #[test]
    fn report_epochs_increase_across_runs_even_with_a_clock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let first = LocalState::open(&path)
            .unwrap()
            .next_report_epoch(1_000)
            .unwrap();
        assert_eq!(first, 1_000);
        let local = LocalState::open(&path).unwrap();
        assert_eq!(
            local.next_report_epoch(5).unwrap(),
            1_001,
            "clock went back"
        );
        assert_eq!(local.next_report_epoch(2_000).unwrap(), 2_000);
    }
}
