//! A thin cgroup writer of our own, for the process driver: each task gets a cgroup under
//! `<root>/<prefix>/<task>` holding its limits (memory, CPU, pids). A task's process joins it at
//! spawn, before it can fork: the driver opens the `cgroup.procs` files ([`Cgroups::open_procs`])
//! and the child writes `0` to them before it execs. Its memory use and OOM kills are read back
//! from it, and whatever is left in it when the task ends is killed ([`Cgroups::kill_all`]).
//!
//! Both layouts are supported, because edge boxes run both:
//! - cgroup v2 (unified: `<root>/cgroup.controllers` exists): one directory per task, controllers
//!   enabled through each ancestor's `cgroup.subtree_control`.
//! - cgroup v1 (separate hierarchies `<root>/memory`, `<root>/cpu`, `<root>/pids`): one
//!   directory per task in each hierarchy.
//!
//! The root is a parameter so tests can point it at a fake tree; the agent always passes
//! [`DEFAULT_ROOT`]. [`Cgroups::detect`] decides the layout and proves it can create and remove
//! a cgroup before the agent relies on it; its error says why not, for `outpost nodes` to show.
//!
//! Besides files, it only ever touches processes inside a task's own cgroup (to kill them), and
//! it never decides what to do when cgroups are unavailable — that is the driver's call.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where cgroup filesystems are mounted on every mainstream distribution.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// 100 ms: the kernel's default CFS period, and the one Kubernetes uses.
const CPU_PERIOD_US: u64 = 100_000;
/// 1 ms: the smallest quota the kernel accepts (Kubernetes' `MinQuotaPeriod`); a `1m` CPU limit
/// would otherwise be rejected with EINVAL.
const CPU_MIN_QUOTA_US: u64 = 1_000;
/// Kubernetes' bounds on `cpu.shares` (`MinShares`, `MaxShares`), which are the kernel's.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

/// Makes each probe directory name unique within the process, so concurrent detections (tests,
/// or two agents sharing a prefix) never remove each other's probe.
static PROBES: AtomicU64 = AtomicU64::new(0);

/// The controllers we write limits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    Pids,
}

const CONTROLLERS: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

impl Controller {
    /// The name the kernel uses, both in `cgroup.controllers` and as the v1 mount directory.
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A task's limits, in the units the kernel files take (bytes, millicores, count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_request: Option<u64>,
    pub cpu_max_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub pids_max: Option<u64>,
}

impl Limits {
    /// Takes the spec's values as written: a request left out stays out (no defaulting to the
    /// limit here — that is a scheduling rule, not a cgroup one). A pids "request" means nothing
    /// to the kernel and is ignored.
    pub fn from_resources(resources: &spec::Resources) -> Limits {
        Limits {
            memory_max: resources.limits.memory.map(spec::Memory::bytes),
            memory_request: resources.requests.memory.map(spec::Memory::bytes),
            cpu_max_millis: resources.limits.cpu.map(spec::Cpu::millis),
            cpu_request_millis: resources.requests.cpu.map(spec::Cpu::millis),
            pids_max: resources.limits.pids,
        }
    }
}

/// The cgroups of this agent's tasks, under one root and prefix.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    prefix: PathBuf,
    version: Version,
    /// Controllers that proved usable; memory is always among them.
    controllers: Vec<Controller>,
    /// Why a wanted controller is missing, for the node's notes.
    notes: Vec<String>,
}

impl Cgroups {
    /// Decides between cgroup v2 and v1 under `root`, then creates and removes a probe cgroup
    /// under `<prefix>` to prove it may. The memory controller is required (without it neither
    /// limits nor eviction work); cpu and pids are used when present, and [`Cgroups::notes`]
    /// says when they are not.
    pub fn detect(root: &Path, prefix: &str) -> Result<Cgroups, String> {
        let prefix = relative_dir(prefix).ok_or_else(|| {
            format!("cgroup prefix {prefix:?} must be a relative path without '..'")
        })?;
        let v2_marker = root.join("cgroup.controllers");
        let v1_marker = root.join("memory").join("memory.limit_in_bytes");
        if v2_marker.is_file() {
            detect_v2(root, prefix)
        } else if v1_marker.is_file() {
            detect_v1(root, prefix)
        } else {
            Err(format!(
                "no cgroup filesystem under {}: neither {} (cgroup v2) nor {} (cgroup v1) exists",
                root.display(),
                v2_marker.display(),
                v1_marker.display()
            ))
        }
    }

    /// "cgroup v2" or "cgroup v1", for the node's notes and logs.
    pub fn mode(&self) -> &'static str {
        match self.version {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }

    /// The controllers in use, by kernel name ("memory", "cpu", "pids").
    pub fn controllers(&self) -> Vec<&'static str> {
        self.controllers.iter().map(|c| c.name()).collect()
    }

    /// Why a controller we would use is missing (empty when all are present).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Creates the task's cgroup (reusing it if it exists, as after an agent restart) and writes
    /// the limits that are set. Returns warnings for limits that cannot be enforced because their
    /// controller is missing — a limit silently dropped would surprise the operator.
    pub fn create(&self, task: &str, limits: &Limits) -> io::Result<Vec<String>> {
        check_task(task)?;
        if self.version == Version::V2 {
            // Done again here, not only in detect: someone may have removed the prefix since.
            self.enable_v2()?;
        }
        for dir in self.dirs(task) {
            match self.version {
                Version::V2 => mkdir(&dir)?,
                // v1 hierarchies need no enabling, so the prefix can simply be made on the way.
                Version::V1 => fs::create_dir_all(&dir)
                    .map_err(|e| with_path(e, "cannot create cgroup", &dir))?,
            }
        }
        let mut warnings = Vec::new();
        for (controller, file, value) in self.settings(limits) {
            if self.controllers.contains(&controller) {
                write(&self.dir(controller, task).join(file), &value)?;
            } else {
                let warning = format!(
                    "{} limits not enforced: no usable {} controller under {}",
                    controller.name(),
                    controller.name(),
                    self.root.display()
                );
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
        Ok(warnings)
    }

    /// The task's `cgroup.procs` files (one per hierarchy on v1), open for writing: a process
    /// that writes `0` to each joins the cgroup itself. Opened before a spawn, they let the child
    /// join between fork and exec, so nothing it forks can escape. They are close-on-exec, so
    /// the task never inherits them.
    pub fn open_procs(&self, task: &str) -> io::Result<Vec<fs::File>> {
        check_task(task)?;
        self.dirs(task)
            .into_iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| with_path(e, "cannot open", &path))
            })
            .collect()
    }

    /// SIGKILLs every process in the task's cgroup (`cgroup.kill` where the kernel has it, on
    /// v2 since Linux 5.14; otherwise each pid in `cgroup.procs`, which only lists live members,
    /// so a pid read there is ours). Returns how many processes were there; call again until it
    /// is 0, since a process may fork while being killed. A missing cgroup holds none.
    pub fn kill_all(&self, task: &str) -> io::Result<usize> {
        let pids = match self.pids(task) {
            Ok(pids) => pids,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if pids.is_empty() {
            return Ok(0);
        }
        let kill_file = self.dir(Controller::Memory, task).join("cgroup.kill");
        if self.version == Version::V2 && kill_file.is_file() {
            write(&kill_file, "1")?;
        } else {
            for &pid in &pids {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                // ESRCH: it died meanwhile, which is what we want.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        Ok(pids.len())
    }

    /// The names of every task cgroup under the prefix (in any hierarchy in use), for the sweep
    /// that finds cgroups no task record owns. Detection's own probes are not tasks.
    pub fn tasks(&self) -> io::Result<Vec<String>> {
        let mut names = std::collections::BTreeSet::new();
        for parent in self.prefix_dirs() {
            let entries = match fs::read_dir(&parent) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, "cannot list", &parent)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| with_path(e, "cannot list", &parent))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !name.starts_with(".probe-") {
                    names.insert(name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Removes the (empty) prefix directories: a test's own prefix is its to remove.
    #[cfg(test)]
    pub(crate) fn remove_prefix(&self) -> io::Result<()> {
        self.prefix_dirs().iter().try_for_each(fs::remove_dir)
    }

    /// The prefix directory in every hierarchy in use.
    fn prefix_dirs(&self) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![self.root.join(&self.prefix)],
            Version::V1 => self
                .controllers
                .iter()
                .map(|c| self.root.join(c.name()).join(&self.prefix))
                .collect(),
        }
    }

    /// The processes in the task's cgroup: after a stop, any left are ones that escaped its
    /// process group.
    pub fn pids(&self, task: &str) -> io::Result<Vec<u32>> {
        check_task(task)?;
        let path = self.dir(Controller::Memory, task).join("cgroup.procs");
        Ok(read(&path)?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// The task's memory use in bytes (page cache included, as the kernel counts it against the
    /// limit); `None` when it cannot be read.
    pub fn memory_usage(&self, task: &str) -> Option<u64> {
        check_task(task).ok()?;
        let file = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        let text = read(&self.dir(Controller::Memory, task).join(file)).ok()?;
        text.trim().parse().ok()
    }

    /// CPU time the task used, in nanoseconds; `None` without the cpu controller (or, on v1,
    /// cpuacct mounted beside it).
    pub fn cpu_ns(&self, task: &str) -> Option<u64> {
        check_task(task).ok()?;
        if !self.controllers.contains(&Controller::Cpu) {
            return None;
        }
        let dir = self.dir(Controller::Cpu, task);
        match self.version {
            Version::V2 => {
                keyed(&read(&dir.join("cpu.stat")).ok()?, "usage_usec").map(|us| us * 1000)
            }
            Version::V1 => read(&dir.join("cpuacct.usage")).ok()?.trim().parse().ok(),
        }
    }

    /// Bytes the task read from and wrote to block devices (v2 `io.stat`); `None` on v1, where
    /// the blkio controller is not used.
    pub fn disk_bytes(&self, task: &str) -> Option<(u64, u64)> {
        check_task(task).ok()?;
        if self.version != Version::V2 {
            return None;
        }
        let text = read(&self.dir(Controller::Memory, task).join("io.stat")).ok()?;
        Some(io_bytes(&text))
    }

    /// How many of the task's processes the kernel OOM-killed; `None` when it cannot be read.
    /// On v1 this needs `oom_kill` in `memory.oom_control` (Linux 4.13+); `memory.failcnt` is not
    /// used instead, because it counts every time usage hit the limit — reclaim usually resolves
    /// that without any kill, so it would report OOM kills that never happened.
    pub fn oom_kills(&self, task: &str) -> Option<u64> {
        check_task(task).ok()?;
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let text = read(&self.dir(Controller::Memory, task).join(file)).ok()?;
        keyed(&text, "oom_kill")
    }

    /// Removes the task's cgroup (every hierarchy's, on v1). Gone already is fine. The kernel
    /// refuses while processes live in it; the error then lists them. Every directory is tried,
    /// and the first error is returned.
    pub fn remove(&self, task: &str) -> io::Result<()> {
        check_task(task)?;
        let mut first = None;
        for dir in self.dirs(task) {
            let result = match fs::remove_dir(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                    let procs = read(&dir.join("cgroup.procs"))
                        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    Err(io::Error::new(
                        e.kind(),
                        format!(
                            "cannot remove cgroup {}: it still has processes ({procs}) or child \
                             cgroups",
                            dir.display()
                        ),
                    ))
                }
                Err(e) => Err(with_path(e, "cannot remove cgroup", &dir)),
            };
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The task's cgroup directory for one controller: the same directory for all on v2.
    fn dir(&self, controller: Controller, task: &str) -> PathBuf {
        match self.version {
            Version::V2 => self.root.join(&self.prefix).join(task),
            Version::V1 => self
                .root
                .join(controller.name())
                .join(&self.prefix)
                .join(task),
        }
    }

    /// Every directory that makes up the task's cgroup.
    fn dirs(&self, task: &str) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![self.dir(Controller::Memory, task)],
            Version::V1 => self
                .controllers
                .iter()
                .map(|&c| self.dir(c, task))
                .collect(),
        }
    }

    /// The files to write for `limits`, in the order the kernel accepts them (on v1 the period
    /// before the quota it is a fraction of).
    fn settings(&self, limits: &Limits) -> Vec<(Controller, &'static str, String)> {
        use Controller::{Cpu, Memory, Pids};
        let mut out = Vec::new();
        let mut set = |c, file, value: Option<String>| {
            if let Some(v) = value {
                out.push((c, file, v));
            }
        };
        let quota = limits.cpu_max_millis.map(cpu_quota);
        let shares = limits.cpu_request_millis.map(cpu_shares);
        match self.version {
            Version::V2 => {
                set(
                    Memory,
                    "memory.max",
                    limits.memory_max.map(|b| b.to_string()),
                );
                set(
                    Memory,
                    "memory.low",
                    limits.memory_request.map(|b| b.to_string()),
                );
                set(
                    Cpu,
                    "cpu.max",
                    quota.map(|q| format!("{q} {CPU_PERIOD_US}")),
                );
                set(Cpu, "cpu.weight", shares.map(|s| cpu_weight(s).to_string()));
                set(Pids, "pids.max", limits.pids_max.map(|n| n.to_string()));
            }
            Version::V1 => {
                set(
                    Memory,
                    "memory.limit_in_bytes",
                    limits.memory_max.map(|b| b.to_string()),
                );
                set(
                    Memory,
                    "memory.soft_limit_in_bytes",
                    limits.memory_request.map(|b| b.to_string()),
                );
                set(
                    Cpu,
                    "cpu.cfs_period_us",
                    quota.map(|_| CPU_PERIOD_US.to_string()),
                );
                set(Cpu, "cpu.cfs_quota_us", quota.map(|q| q.to_string()));
                set(Cpu, "cpu.shares", shares.map(|s| s.to_string()));
                set(Pids, "pids.max", limits.pids_max.map(|n| n.to_string()));
            }
        }
        out
    }

    /// On v2 a cgroup only gets a controller's files if every ancestor below the root lists the
    /// controller in its `cgroup.subtree_control`: makes the prefix and enables ours along it.
    /// Only missing ones are written, so an already-set-up tree is left untouched.
    fn enable_v2(&self) -> io::Result<()> {
        let prefix_dir = self.root.join(&self.prefix);
        fs::create_dir_all(&prefix_dir)
            .map_err(|e| with_path(e, "cannot create cgroup", &prefix_dir))?;
        let mut dir = self.root.clone();
        let mut parents = vec![dir.clone()];
        for part in self.prefix.components() {
            dir.push(part);
            parents.push(dir.clone());
        }
        for parent in parents {
            let path = parent.join("cgroup.subtree_control");
            let enabled = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(with_path(e, "cannot read", &path)),
            };
            let missing: Vec<String> = self
                .controllers
                .iter()
                .filter(|c| !enabled.split_whitespace().any(|w| w == c.name()))
                .map(|c| format!("+{}", c.name()))
                .collect();
            if missing.is_empty() {
                continue;
            }
            write(&path, &missing.join(" ")).map_err(|e| {
                if e.kind() == io::ErrorKind::ResourceBusy {
                    // cgroup v2's "no internal processes" rule.
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e} (a cgroup holding processes of its own cannot hand controllers \
                             to children: point the cgroup root at an empty cgroup)"
                        ),
                    )
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }

    /// Creates and removes a probe cgroup in every hierarchy in use, and drops an optional
    /// controller whose hierarchy refuses (with a note); fails if memory's refuses.
    fn probe(mut self) -> Result<Cgroups, String> {
        let name = format!(
            ".probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        );
        let refused = |e: io::Error| {
            format!(
                "no writable memory controller under {}: {e}",
                self.root.display()
            )
        };
        match self.version {
            // One directory holds every controller: one probe says it all.
            Version::V2 => self
                .try_probe(&self.dir(Controller::Memory, &name))
                .map_err(refused)?,
            Version::V1 => {
                let mut usable = Vec::new();
                for &controller in &self.controllers {
                    match self.try_probe(&self.dir(controller, &name)) {
                        Ok(()) => usable.push(controller),
                        Err(e) if controller == Controller::Memory => return Err(refused(e)),
                        Err(e) => self.notes.push(format!(
                            "{} controller unusable, its limits are not enforced: {e}",
                            controller.name()
                        )),
                    }
                }
                self.controllers = usable;
            }
        }
        Ok(self)
    }

    fn try_probe(&self, dir: &Path) -> io::Result<()> {
        match self.version {
            Version::V2 => mkdir(dir)?,
            Version::V1 => {
                fs::create_dir_all(dir).map_err(|e| with_path(e, "cannot create cgroup", dir))?
            }
        }
        // On v2 the probe must also show the controllers its parents enabled. A real cgroupfs
        // always has this file; an imitation in a test may not.
        let mut result = Ok(());
        if self.version == Version::V2
            && let Ok(listed) = fs::read_to_string(dir.join("cgroup.controllers"))
        {
            let absent: Vec<&str> = self
                .controllers
                .iter()
                .map(|c| c.name())
                .filter(|n| !listed.split_whitespace().any(|w| w == *n))
                .collect();
            if !absent.is_empty() {
                result = Err(io::Error::other(format!(
                    "{} lacks {} although its parents enable it",
                    dir.display(),
                    absent.join(", ")
                )));
            }
        }
        let removed = fs::remove_dir(dir).map_err(|e| with_path(e, "cannot remove cgroup", dir));
        result.and(removed)
    }
}

fn detect_v2(root: &Path, prefix: PathBuf) -> Result<Cgroups, String> {
    let path = root.join("cgroup.controllers");
    let available =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (controllers, notes) = wanted(|c| available.split_whitespace().any(|w| w == c.name()));
    if !controllers.contains(&Controller::Memory) {
        return Err(format!(
            "no memory controller under {}: {} lists only {:?}",
            root.display(),
            path.display(),
            available.trim()
        ));
    }
    let cgroups = Cgroups {
        root: root.to_path_buf(),
        prefix,
        version: Version::V2,
        controllers,
        notes,
    };
    cgroups.enable_v2().map_err(|e| {
        format!(
            "no writable memory controller under {}: {e}",
            root.display()
        )
    })?;
    cgroups.probe()
}

fn detect_v1(root: &Path, prefix: PathBuf) -> Result<Cgroups, String> {
    // Each hierarchy is recognised by a file only its controller's root has (pids' root has none
    // of its own, so any cgroup directory will do there).
    let (controllers, notes) = wanted(|c| {
        let marker = match c {
            Controller::Memory => "memory.limit_in_bytes",
            Controller::Cpu => "cpu.shares",
            Controller::Pids => "cgroup.procs",
        };
        root.join(c.name()).join(marker).is_file()
    });
    Cgroups {
        root: root.to_path_buf(),
        prefix,
        version: Version::V1,
        controllers,
        notes,
    }
    .probe()
}

/// Splits our controllers into those `present` accepts and notes for the rest.
fn wanted(present: impl Fn(Controller) -> bool) -> (Vec<Controller>, Vec<String>) {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for c in CONTROLLERS {
        if present(c) {
            found.push(c);
        } else {
            notes.push(format!(
                "no {} controller: {} limits are not enforced",
                c.name(),
                c.name()
            ));
        }
    }
    (found, notes)
}

/// Kubernetes' `MilliCPUToQuota` for our fixed period, floored at the kernel's minimum.
fn cpu_quota(millis: u64) -> u64 {
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(CPU_MIN_QUOTA_US)
}

/// Kubernetes' `MilliCPUToShares`: one core of request is 1024 shares.
fn cpu_shares(millis: u64) -> u64 {
    (millis.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// The v1 shares → v2 weight mapping runc, crun and Kubernetes share: [2, 262144] onto
/// [1, 10000], so a task gets the same relative CPU under either version.
fn cpu_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(MIN_SHARES, MAX_SHARES) - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// The value of a `key value` line, as in `memory.events` and `memory.oom_control`.
/// The `rbytes` and `wbytes` of every device in a v2 `io.stat`, summed.
fn io_bytes(text: &str) -> (u64, u64) {
    let field = |word: &str, key: &str| word.strip_prefix(key)?.parse::<u64>().ok();
    let words = text.split_whitespace();
    words.fold((0, 0), |(r, w), word| {
        (
            r + field(word, "rbytes=").unwrap_or(0),
            w + field(word, "wbytes=").unwrap_or(0),
        )
    })
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// A task id becomes a directory name: refuse anything that would step outside the prefix.
fn check_task(task: &str) -> io::Result<()> {
    let bad = task.is_empty() || task == "." || task == ".." || task.contains(['/', '\n', '\0']);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{task:?} cannot name a cgroup"),
        ));
    }
    Ok(())
}

/// The prefix as a relative path of plain names, or `None`.
fn relative_dir(prefix: &str) -> Option<PathBuf> {
    let path = PathBuf::from(prefix);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && path.components().next().is_some()).then_some(path)
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(with_path(e, "cannot create cgroup", path))
        }
        _ => Ok(()),
    }
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| with_path(e, "cannot read", path))
}

/// Writes a control file in one write, as the kernel wants. A missing control file means its
/// controller is not enabled for that cgroup; the kernel's own answer (EACCES, because cgroupfs
/// cannot create files) would not say so.
fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        let hint = if path.exists() {
            ""
        } else {
            " (no such control file: is its controller enabled for this cgroup?)"
        };
        io::Error::new(
            e.kind(),
            format!("cannot write {value:?} to {}: {e}{hint}", path.display()),
        )
    })
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a kernel's cgroup mount, with the files detection looks at.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn v2(controllers: &str, subtree_control: &str) -> Fake {
            let fake = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            fake.put("cgroup.controllers", controllers);
            fake.put("cgroup.subtree_control", subtree_control);
            fake.put("cgroup.procs", "1\n");
            fake
        }

        fn v1(hierarchies: &[&str]) -> Fake {
            let fake = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            for h in hierarchies {
                fake.put(&format!("{h}/cgroup.procs"), "1\n");
                match *h {
                    "memory" => fake.put("memory/memory.limit_in_bytes", "9223372036854771712\n"),
                    "cpu" => fake.put("cpu/cpu.shares", "1024\n"),
                    _ => {}
                }
            }
            fake
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn put(&self, rel: &str, text: &str) {
            let path = self.root().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn get(&self, rel: &str) -> Option<String> {
            fs::read_to_string(self.root().join(rel)).ok()
        }

        fn has(&self, rel: &str) -> bool {
            self.root().join(rel).exists()
        }
    }

    /// Moves `pid` into the task's cgroup through the files a spawn would use (made first in
    /// an imitation, where the kernel would not provide them).
    fn add(cg: &Cgroups, task: &str, pid: u32) {
        use std::io::Write;
        for dir in cg.dirs(task) {
            let procs = dir.join("cgroup.procs");
            if !procs.exists() {
                fs::write(procs, "").unwrap();
            }
        }
        for mut file in cg.open_procs(task).unwrap() {
            file.write_all(pid.to_string().as_bytes()).unwrap();
        }
    }

    fn all_limits() -> Limits {
        Limits {
            memory_max: Some(64 << 20),
            memory_request: Some(32 << 20),
            cpu_max_millis: Some(500),
            cpu_request_millis: Some(250),
            pids_max: Some(100),
        }
    }

    #[test]
    fn v2_is_detected_and_enables_controllers_down_the_prefix() {
        let fake = Fake::v2("cpuset cpu io memory hugetlb pids rdma\n", "");
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        assert_eq!(cg.mode(), "cgroup v2");
        assert_eq!(cg.controllers(), ["memory", "cpu", "pids"]);
        assert!(cg.notes().is_empty());
        assert_eq!(
            fake.get("cgroup.subtree_control").unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(
            fake.get("outpost/cgroup.subtree_control").unwrap(),
            "+memory +cpu +pids"
        );
        // The probe is gone; only the prefix stays.
        let left: Vec<_> = fs::read_dir(fake.root().join("outpost"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["cgroup.subtree_control"]);
    }

    #[test]
    fn v2_leaves_already_enabled_controllers_alone() {
        let fake = Fake::v2("cpu memory pids\n", "cpu memory pids\n");
        fake.put("outpost/cgroup.subtree_control", "memory pids\n");
        Cgroups::detect(fake.root(), "outpost").unwrap();
        assert_eq!(
            fake.get("cgroup.subtree_control").unwrap(),
            "cpu memory pids\n"
        );
        assert_eq!(fake.get("outpost/cgroup.subtree_control").unwrap(), "+cpu");
    }

    #[test]
    fn v2_enables_every_level_of_a_nested_prefix() {
        let fake = Fake::v2("memory\n", "");
        Cgroups::detect(fake.root(), "edge/outpost").unwrap();
        assert_eq!(fake.get("cgroup.subtree_control").unwrap(), "+memory");
        assert_eq!(fake.get("edge/cgroup.subtree_control").unwrap(), "+memory");
        assert_eq!(
            fake.get("edge/outpost/cgroup.subtree_control").unwrap(),
            "+memory"
        );
    }

    #[test]
    fn v2_writes_every_limit_to_the_task_cgroup() {
        let fake = Fake::v2("cpu memory pids\n", "");
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        let warnings = cg.create("web-1", &all_limits()).unwrap();
        assert!(warnings.is_empty());
        let expect = [
            ("memory.max", "67108864"),
            ("memory.low", "33554432"),
            ("cpu.max", "50000 100000"),
            // 250m → 256 shares → 1 + 254 * 9999 / 262142.
            ("cpu.weight", "10"),
            ("pids.max", "100"),
        ];
        for (file, value) in expect {
            assert_eq!(
                fake.get(&format!("outpost/web-1/{file}")).as_deref(),
                Some(value),
                "{file}"
            );
        }
    }

    #[test]
    fn v2_writes_only_the_limits_that_are_set() {
        let fake = Fake::v2("cpu memory pids\n", "");
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        let limits = Limits {
            memory_max: Some(1 << 30),
            ..Limits::default()
        };
        cg.create("web-1", &limits).unwrap();
        assert_eq!(
            fake.get("outpost/web-1/memory.max").as_deref(),
            Some("1073741824")
        );
        for file in ["memory.low", "cpu.max", "cpu.weight", "pids.max"] {
            assert!(!fake.has(&format!("outpost/web-1/{file}")), "{file}");
        }
    }

    #[test]
    fn v2_warns_about_limits_whose_controller_is_missing() {
        let fake = Fake::v2("memory io\n", "");
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        assert_eq!(cg.controllers(), ["memory"]);
        assert_eq!(cg.notes().len(), 2);
        assert_eq!(fake.get("cgroup.subtree_control").unwrap(), "+memory");
        let warnings = cg.create("web-1", &all_limits()).unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("cpu limits not enforced"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("pids limits not enforced"),
            "{warnings:?}"
        );
        assert!(!fake.has("outpost/web-1/cpu.max"));
        assert!(fake.has("outpost/web-1/memory.max"));
    }

    #[test]
    fn v2_without_memory_controller_says_so() {
        let fake = Fake::v2("hugetlb\n", "");
        let err = Cgroups::detect(fake.root(), "outpost").unwrap_err();
        assert!(err.starts_with("no memory controller under "), "{err}");
        assert!(err.contains("\"hugetlb\""), "{err}");
    }

    #[test]
    fn v2_adds_pids_and_reads_usage_and_oom_kills() {
        let fake = Fake::v2("memory\n", "");
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        cg.create("web-1", &Limits::default()).unwrap();
        add(&cg, "web-1", 4242);
        assert_eq!(fake.get("outpost/web-1/cgroup.procs").unwrap(), "4242");
        assert_eq!(cg.pids("web-1").unwrap(), [4242]);
        fake.put("outpost/web-1/memory.current", "123456\n");
        fake.put(
            "outpost/web-1/memory.events",
            "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        assert_eq!(cg.memory_usage("web-1"), Some(123456));
        assert_eq!(cg.oom_kills("web-1"), Some(1));
        assert_eq!(cg.memory_usage("other"), None);
        assert_eq!(cg.oom_kills("other"), None);
    }

    #[test]
    fn v1_is_detected_with_one_directory_per_hierarchy() {
        let fake = Fake::v1(&["memory", "cpu", "pids"]);
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        assert_eq!(cg.mode(), "cgroup v1");
        assert_eq!(cg.controllers(), ["memory", "cpu", "pids"]);
        let warnings = cg.create("web-1", &all_limits()).unwrap();
        assert!(warnings.is_empty());
        let expect = [
            ("memory/outpost/web-1/memory.limit_in_bytes", "67108864"),
            (
                "memory/outpost/web-1/memory.soft_limit_in_bytes",
                "33554432",
            ),
            ("cpu/outpost/web-1/cpu.cfs_period_us", "100000"),
            ("cpu/outpost/web-1/cpu.cfs_quota_us", "50000"),
            ("cpu/outpost/web-1/cpu.shares", "256"),
            ("pids/outpost/web-1/pids.max", "100"),
        ];
        for (file, value) in expect {
            assert_eq!(fake.get(file).as_deref(), Some(value), "{file}");
        }
        // v1 has no subtree_control to write.
        assert!(!fake.has("cgroup.subtree_control"));
    }

    #[test]
    fn v1_adds_the_pid_in_every_hierarchy() {
        let fake = Fake::v1(&["memory", "cpu", "pids"]);
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        cg.create("web-1", &Limits::default()).unwrap();
        add(&cg, "web-1", 77);
        for h in ["memory", "cpu", "pids"] {
            assert_eq!(
                fake.get(&format!("{h}/outpost/web-1/cgroup.procs"))
                    .as_deref(),
                Some("77"),
                "{h}"
            );
        }
    }

    #[test]
    fn v1_reads_usage_and_oom_kills_from_the_memory_hierarchy() {
        let fake = Fake::v1(&["memory"]);
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        cg.create("web-1", &Limits::default()).unwrap();
        fake.put("memory/outpost/web-1/memory.usage_in_bytes", "4096\n");
        fake.put(
            "memory/outpost/web-1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        assert_eq!(cg.memory_usage("web-1"), Some(4096));
        assert_eq!(cg.oom_kills("web-1"), Some(3));
        // Before Linux 4.13 there is no oom_kill line: unknown, not zero.
        fake.put(
            "memory/outpost/web-1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\n",
        );
        assert_eq!(cg.oom_kills("web-1"), None);
    }

    #[test]
    fn v1_without_pids_hierarchy_still_works_and_warns() {
        let fake = Fake::v1(&["memory", "cpu"]);
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        assert_eq!(cg.controllers(), ["memory", "cpu"]);
        assert_eq!(cg.notes().len(), 1, "{:?}", cg.notes());
        let warnings = cg.create("web-1", &all_limits()).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("pids limits not enforced"));
        assert!(!fake.has("pids"));
    }

    #[test]
    fn neither_layout_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::detect(dir.path(), "outpost").unwrap_err();
        assert!(err.starts_with("no cgroup filesystem under "), "{err}");
        assert!(err.contains("cgroup.controllers"), "{err}");
        assert!(err.contains("memory.limit_in_bytes"), "{err}");
    }

    #[test]
    fn unwritable_memory_hierarchy_is_explained() {
        let fake = Fake::v1(&["memory", "cpu"]);
        // A file where the prefix directory should go: creating under it fails for anyone,
        // root included, the way a read-only mount would.
        fake.put("memory/outpost", "");
        let err = Cgroups::detect(fake.root(), "outpost").unwrap_err();
        assert!(
            err.starts_with(&format!(
                "no writable memory controller under {}: cannot create cgroup",
                fake.root().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn bad_prefixes_and_task_names_are_refused() {
        let fake = Fake::v2("memory\n", "");
        for prefix in ["", "/abs", "../up", "a/../b"] {
            assert!(Cgroups::detect(fake.root(), prefix).is_err(), "{prefix:?}");
        }
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        for task in ["", ".", "..", "a/b", "a\nb"] {
            let err = cg.create(task, &Limits::default()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{task:?}");
        }
    }

    #[test]
    fn removing_a_missing_cgroup_is_fine() {
        let fake = Fake::v1(&["memory", "cpu", "pids"]);
        let cg = Cgroups::detect(fake.root(), "outpost").unwrap();
        cg.remove("never-made").unwrap();
        // An empty one (as the kernel would see it) goes away in every hierarchy.
        for h in ["memory", "cpu", "pids"] {
            fs::create_dir_all(fake.root().join(h).join("outpost/web-1")).unwrap();
        }
        cg.remove("web-1").unwrap();
        for h in ["memory", "cpu", "pids"] {
            assert!(!fake.has(&format!("{h}/outpost/web-1")), "{h}");
        }
    }

    #[test]
    fn cpu_conversions_follow_kubernetes() {
        // (millicores, cfs quota at a 100 ms period, shares, v2 weight)
        let table = [
            (1, 1_000, 2, 1),
            (10, 1_000, 10, 1),
            (100, 10_000, 102, 4),
            (250, 25_000, 256, 10),
            (1000, 100_000, 1024, 39),
            (2000, 200_000, 2048, 79),
            (256_000, 25_600_000, 262_144, 10_000),
            (1_000_000, 100_000_000, 262_144, 10_000),
        ];
        for (millis, quota, shares, weight) in table {
            assert_eq!(cpu_quota(millis), quota, "quota of {millis}m");
            assert_eq!(cpu_shares(millis), shares, "shares of {millis}m");
            assert_eq!(cpu_weight(shares), weight, "weight of {shares} shares");
        }
    }

    #[test]
    fn limits_come_from_the_spec_resources() {
        let resources = spec::Resources {
            requests: spec::ResourceList {
                cpu: Some(spec::Cpu(100)),
                memory: Some(spec::Memory(16 << 20)),
                pids: Some(5),
            },
            limits: spec::ResourceList {
                cpu: Some(spec::Cpu(1500)),
                memory: Some(spec::Memory(64 << 20)),
                pids: Some(50),
            },
        };
        assert_eq!(
            Limits::from_resources(&resources),
            Limits {
                memory_max: Some(64 << 20),
                memory_request: Some(16 << 20),
                cpu_max_millis: Some(1500),
                cpu_request_millis: Some(100),
                pids_max: Some(50),
            }
        );
        assert_eq!(
            Limits::from_resources(&spec::Resources::default()),
            Limits::default()
        );
    }

    /// Against this machine's real cgroups: skipped, with the reason printed, where the agent
    /// could not use them either (not root, read-only /sys, no memory controller).
    #[test]
    fn real_cgroup_limits_and_accounts_a_child_process() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};

        let prefix = format!("outpost-test-{}", std::process::id());
        let cg = match Cgroups::detect(Path::new(DEFAULT_ROOT), &prefix) {
            Ok(cg) => cg,
            Err(reason) => {
                eprintln!("skipped: cgroups unusable here: {reason}");
                return;
            }
        };
        eprintln!(
            "using {} with {:?} (notes: {:?})",
            cg.mode(),
            cg.controllers(),
            cg.notes()
        );
        let limits = Limits {
            memory_max: Some(32 << 20),
            memory_request: Some(8 << 20),
            cpu_max_millis: Some(500),
            cpu_request_millis: Some(100),
            pids_max: Some(32),
        };
        assert_eq!(cg.create("task", &limits).unwrap(), Vec::<String>::new());
        // The kernel took every value as written (these are page-aligned, so none is rounded).
        for (controller, file, value) in cg.settings(&limits) {
            let path = cg.dir(controller, "task").join(file);
            assert_eq!(fs::read_to_string(&path).unwrap().trim(), value, "{path:?}");
        }
        let memory_dir = cg.dir(Controller::Memory, "task");

        // The shell waits for a line, so it is in the cgroup before it allocates; then it
        // builds a string of ~64 MB in its own memory, twice the limit, and must be OOM-killed.
        let mut child = Command::new("sh")
            .args(["-c", "read go; x=$(yes | head -c 64000000); echo survived"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        add(&cg, "task", pid);
        assert_eq!(cg.pids("task").unwrap(), [pid]);
        assert!(cg.memory_usage("task").is_some());
        assert_eq!(cg.oom_kills("task"), Some(0));

        let err = cg.remove("task").unwrap_err();
        assert!(err.to_string().contains("still has processes"), "{err}");

        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the child was not OOM-killed");
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!(
            "child ended: {status:?}; oom kills {:?}; usage {:?}",
            cg.oom_kills("task"),
            cg.memory_usage("task")
        );
        assert!(cg.oom_kills("task").unwrap() >= 1);

        // Children the kernel killed may take a moment to leave the cgroup.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = cg.remove("task") {
            assert!(Instant::now() < deadline, "{e}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!memory_dir.exists());
        cg.remove_prefix().unwrap();
    }
}
