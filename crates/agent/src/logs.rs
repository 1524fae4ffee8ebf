//! Per-task log files. A task writes its stdout and stderr straight into `<task>.log` (opened in
//! append mode), so its output survives an agent restart and costs the agent nothing per line.
//! Rotation is by size with copy-then-truncate: the task keeps its file descriptor, and because
//! it appends, its next write lands at the new end. Lines written between the copy and the
//! truncate can be lost; that window is one copy of the file. The agent checks sizes on a timer
//! (every 2 s), so a file can pass `max_bytes` by what the task writes between two
//! checks, and the copy is that much larger.
//!
//! When each line was written is kept beside the file, in `<task>.times`: the agent samples
//! every task's log size on a short timer ([`TaskLogs::stamp`]) and, when it grew, appends one
//! line `END MILLIS`: the bytes up to `END` were written by `MILLIS` (the file's modification
//! time at the sample). A line's time is therefore the end of the sample period it was written
//! in, at most one period late; output the agent has not sampled yet (written just now, or while
//! the agent was down) gets the file's modification time. The index rotates with its log.
//!
//! Task output may hold secrets, so the log dir is 0700 and every file in it 0600.

use std::fs::Permissions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::Timestamp;
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

    /// The time index of the live file (`n` 0) or of rotated copy `n`.
    fn times(&self, task: &str, n: usize) -> PathBuf {
        match n {
            0 => self.dir.join(format!("{task}.times")),
            n => self.dir.join(format!("{task}.times.{n}")),
        }
    }

    /// Log file `n`: the live one for 0, else rotated copy `n`.
    fn file(&self, task: &str, n: usize) -> PathBuf {
        match n {
            0 => self.path(task),
            n => self.rotated(task, n),
        }
    }

    /// What `select` asks of the task's log, and the offset in the live file where following it
    /// goes on. `None` when `select.previous` asks for a run before a restart the task never had.
    ///
    /// Without `since` or `previous` only the live file is read; with either, the rotated
    /// copies too, oldest first.
    pub fn read(&self, task: &str, select: Select) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        let oldest = match select.since.is_some() || select.previous {
            true => self.keep,
            false => 0,
        };
        let mut log = Stamped::default();
        for n in (0..=oldest).rev() {
            log.extend(self.load(task, n)?);
        }
        let live_end = log.live_len;
        let range = match select.previous {
            true => match previous_run(&log.bytes) {
                Some(range) => range,
                None => return Ok(None),
            },
            false => 0..log.bytes.len(),
        };
        let mut lines: Vec<(std::ops::Range<usize>, Timestamp)> = log
            .lines(range)
            .filter(|(_, at)| select.since.is_none_or(|since| *at >= since))
            .collect();
        if let Some(n) = select.tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        let mut out = Vec::new();
        for (line, at) in lines {
            if select.timestamps {
                out.extend_from_slice(format!("{at} ").as_bytes());
            }
            out.extend_from_slice(&log.bytes[line]);
        }
        Ok(Some((out, live_end)))
    }

    /// Log file `n` with its time index; empty when the file is missing.
    fn load(&self, task: &str, n: usize) -> std::io::Result<Stamped> {
        let bytes = match std::fs::read(self.file(task, n)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stamped::default()),
            Err(e) => return Err(e),
        };
        let written = std::fs::metadata(self.file(task, n))
            .and_then(|m| m.modified())
            .map_or(Timestamp(0), Timestamp::from_system_time);
        let index = std::fs::read_to_string(self.times(task, n)).unwrap_or_default();
        Ok(Stamped::new(bytes, &index, written, n == 0))
    }

    /// Notes in the task's time index how far its log has grown, if it grew since `seen` (the
    /// size noted last; 0 for none yet, a restarted agent takes the index's last line). A file
    /// smaller than `seen` was rotated: it starts over.
    pub fn stamp(&self, task: &str, seen: &mut Option<u64>) {
        let Ok(meta) = std::fs::metadata(self.path(task)) else {
            return;
        };
        let last = *seen.get_or_insert_with(|| {
            let index = std::fs::read_to_string(self.times(task, 0)).unwrap_or_default();
            parse_index(&index).last().map_or(0, |(end, _)| *end)
        });
        let size = meta.len();
        if size == last {
            return;
        }
        *seen = Some(size);
        if size < last {
            return;
        }
        let at = meta
            .modified()
            .map_or(Timestamp(0), Timestamp::from_system_time);
        use std::io::Write;
        let noted = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(self.times(task, 0))
            .and_then(|mut f| writeln!(f, "{size} {}", at.0));
        if let Err(e) = noted {
            tracing::debug!(task, "cannot note the log's times: {e}");
        }
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
        // The index grows by a line per sample: a task writing a short line every sample would
        // otherwise grow it past its log.
        let index = std::fs::metadata(self.times(task, 0)).map_or(0, |m| m.len());
        if size <= self.max_bytes && index <= self.max_bytes / 4 {
            return Ok(false);
        }
        for n in (1..self.keep).rev() {
            for file in [Self::rotated, Self::times] {
                let from = file(self, task, n);
                if from.exists() {
                    std::fs::rename(&from, file(self, task, n + 1))?;
                }
            }
        }
        std::fs::copy(&path, self.rotated(task, 1))?;
        std::fs::set_permissions(self.rotated(task, 1), Permissions::from_mode(FILE_MODE))?;
        match std::fs::rename(self.times(task, 0), self.times(task, 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
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
        for n in 0..=self.keep {
            let _ = std::fs::remove_file(self.file(task, n));
            let _ = std::fs::remove_file(self.times(task, n));
        }
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

/// The task a file of the log dir belongs to: `<task>.log`, `<task>.log.<n>`, `<task>.times`,
/// `<task>.times.<n>`, `<task>.resolv.conf`.
fn task_of_file(name: &str) -> Option<&str> {
    let kinds = [".log", ".times", ".resolv.conf"];
    if let Some(task) = kinds.iter().find_map(|kind| name.strip_suffix(kind)) {
        return Some(task);
    }
    let (rest, n) = name.rsplit_once('.')?;
    n.parse::<u32>().ok()?;
    rest.strip_suffix(".log")
        .or_else(|| rest.strip_suffix(".times"))
}

/// What to read of a task's log ([`TaskLogs::read`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Select {
    /// Only the last N lines (of what the other fields select).
    pub tail: Option<usize>,
    /// Only lines written at or after this.
    pub since: Option<Timestamp>,
    /// Each line starts with its time (RFC 3339) and a space.
    pub timestamps: bool,
    /// The run before the last restart instead of all output.
    pub previous: bool,
}

/// Log bytes, and when each part of them was written: `(end, time)` in order, the last ending at
/// the bytes' end.
#[derive(Debug, Default)]
struct Stamped {
    bytes: Vec<u8>,
    stamps: Vec<(usize, Timestamp)>,
    /// The length of the live file, where following goes on.
    live_len: u64,
}

impl Stamped {
    /// A file's bytes with its index; bytes past the index's last line were written by
    /// `written`, the file's modification time.
    fn new(bytes: Vec<u8>, index: &str, written: Timestamp, live: bool) -> Stamped {
        let len = bytes.len();
        let mut stamps: Vec<(usize, Timestamp)> = Vec::new();
        for (end, at) in parse_index(index) {
            let end = usize::try_from(end).unwrap_or(usize::MAX);
            // A torn or stale line (a file truncated under its index) is ignored.
            if end <= len && stamps.last().is_none_or(|(last, _)| end > *last) {
                stamps.push((end, at));
            }
        }
        if stamps.last().is_none_or(|(end, _)| *end < len) {
            stamps.push((len, written));
        }
        Stamped {
            bytes,
            stamps,
            live_len: if live { len as u64 } else { 0 },
        }
    }

    /// Appends the next (newer) file.
    fn extend(&mut self, next: Stamped) {
        let base = self.bytes.len();
        self.bytes.extend(next.bytes);
        (self.stamps).extend(next.stamps.into_iter().map(|(end, at)| (base + end, at)));
        self.live_len = next.live_len;
    }

    /// The lines that start within `range` (each with its newline), with their times.
    fn lines(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (std::ops::Range<usize>, Timestamp)> + '_ {
        let mut stamp = 0;
        let mut start = range.start;
        std::iter::from_fn(move || {
            if start >= range.end {
                return None;
            }
            let end = (self.bytes[start..range.end].iter())
                .position(|b| *b == b'\n')
                .map_or(range.end, |i| start + i + 1);
            while self.stamps.get(stamp).is_some_and(|(e, _)| *e <= start) {
                stamp += 1;
            }
            let at = self.stamps.get(stamp).map_or(Timestamp(0), |(_, at)| *at);
            let line = start..end;
            start = end;
            Some((line, at))
        })
    }
}

/// The `END MILLIS` lines of a time index, skipping any that does not parse (a torn write).
fn parse_index(index: &str) -> Vec<(u64, Timestamp)> {
    index
        .lines()
        .filter_map(|line| {
            let (end, at) = line.split_once(' ')?;
            Some((end.parse().ok()?, Timestamp(at.parse().ok()?)))
        })
        .collect()
}

/// What starts the line the agent writes before each restart ([`TaskLogs::note`]).
const RESTART_NOTE: &[u8] = b"--- outpost: restart ";

/// The run before the last restart notice in `log`: from the notice before it (or the start)
/// to it, without the notices.
fn previous_run(log: &[u8]) -> Option<std::ops::Range<usize>> {
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
    Some(from..last)
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
        // Every file of a task is given the task's age: files written now would tie or not
        // with each other depending on the clock's tick, and the test flaked.
        let age = |path: &std::path::Path, secs: u64| {
            let f = std::fs::File::options().write(true).open(path).unwrap();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            f.set_modified(at).unwrap();
        };
        for (i, task) in ["web.1.1", "web.1.2", "web.1.3", "db.1.4"]
            .iter()
            .enumerate()
        {
            std::fs::write(logs.path(task), "out\n").unwrap();
            std::fs::write(logs.rotated(task, 1), "older\n").unwrap();
            for path in [logs.path(task), logs.rotated(task, 1)] {
                age(&path, 1_000 + i as u64);
            }
        }
        let resolv = dir.path().join("web.1.1.resolv.conf");
        std::fs::write(&resolv, "nameserver 10.96.0.1\n").unwrap();
        age(&resolv, 1_000);
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
        assert_eq!(task_of_file("web.1.2.times.1"), Some("web.1.2"));
        assert_eq!(task_of_file("web.1.2.times"), Some("web.1.2"));
        assert_eq!(task_of_file("notes.txt"), None);
    }

    #[test]
    fn the_previous_run_is_between_the_last_two_restart_notices() {
        let log = b"one\n--- outpost: restart 1 of task t ---\ntwo\nthree\n--- outpost: restart 2 of task t ---\nfour\n";
        assert_eq!(
            previous_run(log).map(|r| &log[r]),
            Some(&b"two\nthree\n"[..])
        );
        let first = b"one\n--- outpost: restart 1 of task t ---\ntwo\n";
        assert_eq!(previous_run(first).map(|r| &first[r]), Some(&b"one\n"[..]));
        assert_eq!(previous_run(b"one\ntwo\n"), None);
    }

    /// Appends `text` to the task's log and dates the file `at` (ms since the epoch).
    fn write_at(logs: &TaskLogs, text: &str, at: u64) {
        append(&logs.path("t"), text);
        let f = std::fs::File::options()
            .write(true)
            .open(logs.path("t"))
            .unwrap();
        f.set_modified(Timestamp(at).to_system_time()).unwrap();
    }

    fn read(logs: &TaskLogs, select: Select) -> String {
        String::from_utf8(logs.read("t", select).unwrap().unwrap().0).unwrap()
    }

    #[test]
    fn lines_carry_the_time_of_the_sample_that_saw_them() {
        let dir = tempfile::tempdir().unwrap();
        let logs = limited(dir.path().into(), 1 << 20, 2);
        let mut seen = None;
        write_at(&logs, "one\n", 1_000);
        logs.stamp("t", &mut seen);
        write_at(&logs, "two\nthree\n", 5_000);
        logs.stamp("t", &mut seen);
        logs.stamp("t", &mut seen);
        write_at(&logs, "four", 9_000);
        let stamped = Select {
            timestamps: true,
            ..Select::default()
        };
        assert_eq!(
            read(&logs, stamped),
            "1970-01-01T00:00:01.000Z one\n1970-01-01T00:00:05.000Z two\n\
             1970-01-01T00:00:05.000Z three\n1970-01-01T00:00:09.000Z four",
            "the last line, not sampled yet, has the file's time"
        );
        let since = |ms, tail| Select {
            since: Some(Timestamp(ms)),
            tail,
            ..Select::default()
        };
        assert_eq!(read(&logs, since(5_000, None)), "two\nthree\nfour");
        assert_eq!(read(&logs, since(5_001, None)), "four");
        assert_eq!(read(&logs, since(1_000, Some(2))), "three\nfour");
        assert_eq!(read(&logs, since(10_000, None)), "");
        let index = std::fs::read_to_string(logs.times("t", 0)).unwrap();
        assert_eq!(index, "4 1000\n14 5000\n", "one line per growth seen");

        // A restarted agent takes up where the index ends: no line twice.
        let mut restarted = None;
        logs.stamp("t", &mut restarted);
        logs.stamp("t", &mut restarted);
        let index = std::fs::read_to_string(logs.times("t", 0)).unwrap();
        assert_eq!(index, "4 1000\n14 5000\n18 9000\n");
    }

    #[test]
    fn since_reads_across_rotated_copies_with_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let logs = limited(dir.path().into(), 8, 2);
        let mut seen = None;
        write_at(&logs, "old line\n", 1_000);
        logs.stamp("t", &mut seen);
        assert!(logs.rotate_if_needed("t").unwrap());
        assert!(logs.times("t", 1).exists() && !logs.times("t", 0).exists());
        write_at(&logs, "new\n", 7_000);
        logs.stamp("t", &mut seen);
        let all = Select {
            since: Some(Timestamp(0)),
            timestamps: true,
            ..Select::default()
        };
        assert_eq!(
            read(&logs, all),
            "1970-01-01T00:00:01.000Z old line\n1970-01-01T00:00:07.000Z new\n"
        );
        let recent = Select {
            since: Some(Timestamp(2_000)),
            ..Select::default()
        };
        assert_eq!(read(&logs, recent), "new\n");
        assert_eq!(
            read(&logs, Select::default()),
            "new\n",
            "plain reads see the live file"
        );
        let (_, end) = logs.read("t", all).unwrap().unwrap();
        assert_eq!(end, 4, "following goes on at the live file's end");
        logs.remove("t");
        assert!(!logs.times("t", 1).exists());
    }

    #[test]
    fn tail_and_previous_take_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = TaskLogs::new(dir.path().into());
        append(&logs.path("t"), "a\nb\nc\n");
        let tail = |n| Select {
            tail: Some(n),
            ..Select::default()
        };
        assert_eq!(read(&logs, tail(2)), "b\nc\n");
        assert_eq!(read(&logs, tail(0)), "");
        assert_eq!(read(&logs, tail(9)), "a\nb\nc\n");
        let previous = Select {
            previous: true,
            ..Select::default()
        };
        assert!(
            logs.read("t", previous).unwrap().is_none(),
            "no restart yet"
        );
        logs.note("t", "restart 1 of task t");
        append(&logs.path("t"), "d\n");
        assert_eq!(read(&logs, previous), "a\nb\nc\n");
        let last = Select {
            tail: Some(1),
            ..previous
        };
        assert_eq!(read(&logs, last), "c\n");
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
        let (head, offset) = logs.read("t", Select::default()).unwrap().unwrap();
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
