//! Per-task log files. A task writes its stdout and stderr straight into `<task>.log` (opened in
//! append mode), so its output survives an agent restart and costs the agent nothing per line.
//! Rotation is by size with copy-then-truncate: the task keeps its file descriptor, and because
//! it appends, its next write lands at the new end. Lines written between the copy and the
//! truncate can be lost; that window is one copy of the file. The agent checks sizes on a timer
//! (its `ROTATE_EVERY`), so a file can pass `max_bytes` by what the task writes between two
//! checks, and the copy is that much larger.
//!
//! Task output may hold secrets, so the log dir is 0700 and every file in it 0600.

use std::fs::Permissions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::Stream;

/// 10 MiB for the live file and each of 3 rotated copies (`.1` to `.3`): a chatty task keeps
/// ~40 MiB of history (plus what it writes between two size checks), bounded on a small disk.
const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// Rotated copies kept besides the live file.
const DEFAULT_KEEP: usize = 3;

/// How often `follow` looks for new output. 200 ms feels live without costing a wake-up storm.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Modes of the log dir and of the log files: this user's alone.
const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, Clone)]
pub struct TaskLogs {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl TaskLogs {
    /// The store of the log files in `dir`; makes `dir` private if it exists (the agent creates
    /// it first; an older version may have left it open).
    pub fn new(dir: PathBuf) -> TaskLogs {
        if let Err(e) = std::fs::set_permissions(&dir, Permissions::from_mode(DIR_MODE))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot make the log dir {} private: {e}", dir.display());
        }
        TaskLogs {
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }

    pub fn path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.log"))
    }

    fn rotated(&self, task: &str, n: usize) -> PathBuf {
        self.dir.join(format!("{task}.log.{n}"))
    }

    /// The output of the task's run before the current one: between the last two restart
    /// notices (or the start of what is kept and the last one), across the rotated copies.
    /// `None` when the task has not restarted within what is kept.
    pub fn previous(&self, task: &str) -> std::io::Result<Option<Vec<u8>>> {
        let mut all = Vec::new();
        let files = (1..=self.keep).rev().map(|n| self.rotated(task, n));
        for path in files.chain([self.path(task)]) {
            match std::fs::read(&path) {
                Ok(bytes) => all.extend(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(previous_run(&all).map(<[u8]>::to_vec))
    }

    /// Appends a line of the agent's own (restart notices), marked so it stands out.
    pub fn note(&self, task: &str, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(self.path(task))
        {
            let _ = writeln!(f, "--- outpost: {line} ---");
        }
    }

    /// Rotates the task's log if it grew past the limit. Returns whether it rotated.
    pub fn rotate_if_needed(&self, task: &str) -> std::io::Result<bool> {
        let path = self.path(task);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return Ok(false),
        };
        if size <= self.max_bytes {
            return Ok(false);
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated(task, n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(task, n + 1))?;
            }
        }
        std::fs::copy(&path, self.rotated(task, 1))?;
        std::fs::set_permissions(self.rotated(task, 1), Permissions::from_mode(FILE_MODE))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(0)?;
        Ok(true)
    }

    /// Deletes the files of tasks gone for good (not in `live`) but the `keep` written to last,
    /// so `outpost logs` still shows a finished or replaced task for a while.
    pub fn prune(&self, live: &std::collections::HashSet<String>, keep: usize) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut gone: std::collections::HashMap<String, std::time::SystemTime> = Default::default();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(task) = task_of_file(&name) else {
                continue;
            };
            if live.contains(task) {
                continue;
            }
            let written =
                (entry.metadata().and_then(|m| m.modified())).unwrap_or(std::time::UNIX_EPOCH);
            let latest = gone.entry(task.to_string()).or_insert(written);
            *latest = (*latest).max(written);
        }
        let mut gone: Vec<(std::time::SystemTime, String)> =
            gone.into_iter().map(|(task, t)| (t, task)).collect();
        gone.sort_by(|a, b| b.cmp(a));
        for (_, task) in gone.into_iter().skip(keep) {
            self.remove(&task);
            let _ = std::fs::remove_file(self.dir.join(format!("{task}.resolv.conf")));
        }
    }

    /// Deletes every file of a task that is gone for good.
    pub fn remove(&self, task: &str) {
        let _ = std::fs::remove_file(self.path(task));
        for n in 1..=self.keep {
            let _ = std::fs::remove_file(self.rotated(task, n));
        }
    }

    /// The last `n` lines of the current file (all of it for `None`), and the offset they end at.
    pub fn tail(&self, task: &str, n: Option<usize>) -> std::io::Result<(Vec<u8>, u64)> {
        let mut data = Vec::new();
        match std::fs::File::open(self.path(task)) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        }
        let end = data.len() as u64;
        let start = match n {
            None => 0,
            Some(n) => last_lines_start(&data, n),
        };
        Ok((data.split_off(start), end))
    }

    /// New output of the task's log from `offset` on, forever; restarts the reading at the top
    /// when the file was truncated by a rotation.
    pub fn follow(
        &self,
        task: &str,
        mut offset: u64,
    ) -> impl Stream<Item = Vec<u8>> + Send + 'static {
        let path = self.path(task);
        async_stream(move |tx| async move {
            loop {
                let chunk = read_from(&path, &mut offset);
                if !chunk.is_empty() && tx.send(chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        })
    }
}

/// The task a file of the log dir belongs to: `<task>.log`, `<task>.log.<n>`,
/// `<task>.resolv.conf`.
fn task_of_file(name: &str) -> Option<&str> {
    if let Some(task) = name
        .strip_suffix(".log")
        .or_else(|| name.strip_suffix(".resolv.conf"))
    {
        return Some(task);
    }
    let (rest, n) = name.rsplit_once('.')?;
    n.parse::<u32>().ok()?;
    rest.strip_suffix(".log")
}

/// What starts the line the agent writes before each restart ([`TaskLogs::note`]).
const RESTART_NOTE: &[u8] = b"--- outpost: restart ";

/// The run before the last restart notice in `log`: from the notice before it (or the start)
/// to it, without the notices.
fn previous_run(log: &[u8]) -> Option<&[u8]> {
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            log.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| log[i..].starts_with(RESTART_NOTE))
        .collect();
    let last = *starts.last()?;
    let from = match starts.len() {
        1 => 0,
        n => {
            let notice = starts[n - 2];
            log[notice..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(last, |end| notice + end + 1)
        }
    };
    Some(&log[from..last])
}

fn read_from(path: &Path, offset: &mut u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0;
    }
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(*offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
        *offset += buf.len() as u64;
    }
    buf
}

/// Byte offset where the last `n` lines of `data` start.
pub(crate) fn last_lines_start(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// A stream fed by a spawned producer; ends when the consumer drops it.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Vec<u8>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;

    /// The store in `dir`, rotating past `max_bytes` and keeping `keep` rotated copies.
    fn limited(dir: PathBuf, max_bytes: u64, keep: usize) -> TaskLogs {
        TaskLogs {
            max_bytes,
            keep,
            ..TaskLogs::new(dir)
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn files_of_tasks_gone_are_pruned_to_the_latest_written() {
        let dir = tempfile::tempdir().unwrap();
        let logs = TaskLogs::new(dir.path().to_path_buf());
        for (i, task) in ["web.1.1", "web.1.2", "web.1.3", "db.1.4"]
            .iter()
            .enumerate()
        {
            std::fs::write(logs.path(task), "out\n").unwrap();
            std::fs::write(logs.rotated(task, 1), "older\n").unwrap();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
            let f = std::fs::File::options()
                .write(true)
                .open(logs.path(task))
                .unwrap();
            f.set_modified(at).unwrap();
        }
        std::fs::write(
            dir.path().join("web.1.1.resolv.conf"),
            "nameserver 10.96.0.1\n",
        )
        .unwrap();
        let live = std::collections::HashSet::from(["db.1.4".to_string()]);
        logs.prune(&live, 1);
        let mut left: Vec<String> = (std::fs::read_dir(dir.path()).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["db.1.4.log", "db.1.4.log.1", "web.1.3.log", "web.1.3.log.1"],
            "the live task's and the last written of the others'"
        );
        assert_eq!(task_of_file("web.1.2.log.3"), Some("web.1.2"));
        assert_eq!(task_of_file("notes.txt"), None);
    }

    #[test]
    fn the_previous_run_is_between_the_last_two_restart_notices() {
        let log = b"one\n--- outpost: restart 1 of task t ---\ntwo\nthree\n--- outpost: restart 2 of task t ---\nfour\n";
        assert_eq!(previous_run(log), Some(&b"two\nthree\n"[..]));
        let first = b"one\n--- outpost: restart 1 of task t ---\ntwo\n";
        assert_eq!(previous_run(first), Some(&b"one\n"[..]));
        assert_eq!(previous_run(b"one\ntwo\n"), None);
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(last_lines_start(b"a\nb\nc\n", 2), 2);
        assert_eq!(last_lines_start(b"a\nb\nc", 1), 4);
        assert_eq!(last_lines_start(b"a\nb\n", 5), 0);
        assert_eq!(last_lines_start(b"a\nb\n", 0), 4);
    }

    #[test]
    fn rotation_keeps_a_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        let logs = limited(dir.path().into(), 10, 2);
        for round in 0..3 {
            append(&logs.path("t"), &format!("round {round} is long\n"));
            assert!(logs.rotate_if_needed("t").unwrap());
        }
        assert_eq!(std::fs::metadata(logs.path("t")).unwrap().len(), 0);
        assert_eq!(
            std::fs::read_to_string(logs.rotated("t", 1)).unwrap(),
            "round 2 is long\n"
        );
        assert_eq!(
            std::fs::read_to_string(logs.rotated("t", 2)).unwrap(),
            "round 1 is long\n"
        );
        assert!(!logs.rotated("t", 3).exists());
        append(&logs.path("t"), "short\n");
        assert!(!logs.rotate_if_needed("t").unwrap());
        logs.remove("t");
        assert!(!logs.path("t").exists() && !logs.rotated("t", 1).exists());
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_log_dir_and_its_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("logs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let logs = limited(dir.clone(), 4, 2);
        assert_eq!(mode(&dir), 0o700);
        logs.note("t", "started");
        assert_eq!(mode(&logs.path("t")), 0o600);
        // A file left open by an older version: its rotated copy is private all the same.
        std::fs::set_permissions(logs.path("t"), Permissions::from_mode(0o644)).unwrap();
        assert!(logs.rotate_if_needed("t").unwrap());
        assert_eq!(mode(&logs.rotated("t", 1)), 0o600);
    }

    #[tokio::test]
    async fn follow_sees_appends_and_survives_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let logs = TaskLogs::new(dir.path().into());
        append(&logs.path("t"), "one\n");
        let (head, offset) = logs.tail("t", Some(10)).unwrap();
        assert_eq!(head, b"one\n");
        let mut stream = Box::pin(logs.follow("t", offset));
        append(&logs.path("t"), "two\n");
        assert_eq!(stream.next().await.unwrap(), b"two\n");
        std::fs::OpenOptions::new()
            .write(true)
            .open(logs.path("t"))
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&logs.path("t"), "3\n");
        assert_eq!(stream.next().await.unwrap(), b"3\n");
    }
}
