//! What the agent reads from `/proc`: a process's state, process group and start time
//! (`/proc/PID/stat`), its environment (`/proc/PID/environ`), its resident memory, the kernel's
//! boot id, the node's memory (`/proc/meminfo`), and the TCP connections open to a task
//! (`/proc/PID/net/tcp`). Reads that fail for any reason other than "no such process" are errors, never
//! "gone": under file-descriptor exhaustion `/proc` is unreadable while every task still runs.

use std::io;

/// `/proc` counts CPU time in ticks of USER_HZ, which is 100 on every Linux ABI (whatever the
/// kernel's own tick rate): 10 ms.
const NS_PER_TICK: u64 = 10_000_000;

/// Where the kernel publishes a random id made at each boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The fields of `/proc/PID/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), … (field 3).
    pub state: char,
    /// Process group id (field 5).
    pub pgrp: u32,
    /// Start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
    /// CPU time used, user and system, in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
}

impl Stat {
    /// Exited, only waiting to be reaped (or already being torn down).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// Reads `/proc/PID/stat`. `Err` with [`is_gone`] true means there is no such process.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// Whether a failed `/proc` read means the process does not exist (ENOENT, or ESRCH when it
/// exited during the read) rather than that it could not be read.
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ESRCH)
}

/// Every pid in `/proc`.
fn pids() -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// The live (not zombie) processes of process group `pgid`. Processes that vanish while being
/// read (or leave a torn `stat` behind as they go) are skipped; any other read error is
/// returned, since the group may then not be empty.
pub fn group_members(pgid: u32) -> io::Result<Vec<u32>> {
    let mut members = Vec::new();
    for pid in pids()? {
        match stat(pid) {
            Ok(s) if s.pgrp == pgid && !s.is_dead() => members.push(pid),
            Ok(_) => {}
            Err(e) if is_gone(&e) || e.kind() == io::ErrorKind::InvalidData => {}
            Err(e) => return Err(e),
        }
    }
    Ok(members)
}

/// The value of `name` in the NUL-separated text of `/proc/PID/environ`.
pub fn env_value<'a>(environ: &'a [u8], name: &str) -> Option<&'a str> {
    environ.split(|b| *b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        std::str::from_utf8(rest).ok()
    })
}

/// Every live process whose environment has `name=value`, with its environment. Processes that
/// cannot be read (gone meanwhile, or kernel threads) are skipped.
pub fn marked(name: &str, value: &str) -> io::Result<Vec<(u32, Vec<u8>)>> {
    let mut out = Vec::new();
    for pid in pids()? {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env_value(&environ, name) == Some(value) {
            out.push((pid, environ));
        }
    }
    Ok(out)
}

/// Resident memory of a process in bytes (`VmRSS`); `None` when it cannot be read.
pub fn resident_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// How many TCP connections are open (established) to `ports` in the network namespace of
/// process `pid`: what a task still serves. A connection from the node to itself counts once,
/// by its accepted end.
pub fn connections_to(pid: u32, ports: &[u16]) -> io::Result<usize> {
    let mut open = 0;
    for table in ["tcp", "tcp6"] {
        match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(text) => open += established_to(&text, ports),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if table == "tcp6" && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(open)
}

/// The established connections to `ports` in the text of `/proc/net/tcp` or `tcp6`: lines of
/// `sl local_address rem_address st …`, addresses as `HEXIP:HEXPORT`, state `01` established.
fn established_to(text: &str, ports: &[u16]) -> usize {
    (text.lines().skip(1))
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            let port = local.rsplit_once(':').map(|(_, p)| p);
            let port = port.and_then(|p| u16::from_str_radix(p, 16).ok());
            state == "01" && port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

/// CPU time `pids` used (user and system, `/proc/PID/stat` fields 14 and 15), in nanoseconds;
/// processes gone meanwhile count nothing.
pub fn cpu_ns(pids: &[u32]) -> u64 {
    let ticks: u64 = (pids.iter())
        .filter_map(|pid| stat(*pid).ok())
        .map(|s| s.cpu_ticks)
        .sum();
    ticks.saturating_mul(NS_PER_TICK)
}

/// Bytes `pids` read from and wrote to storage (`read_bytes`, `write_bytes` of
/// `/proc/PID/io`), summed.
pub fn disk_bytes(pids: &[u32]) -> (u64, u64) {
    let texts = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok());
    texts.fold((0, 0), |(r, w), text| {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (r + field("read_bytes:"), w + field("write_bytes:"))
    })
}

/// The node's CPU time in use since boot (all but idle and iowait, `/proc/stat`), in
/// nanoseconds.
pub fn node_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest time (after) is counted in user.
    let busy: u64 = (values.iter().take(8).enumerate())
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy.saturating_mul(NS_PER_TICK))
}

/// Bytes received and sent on the node's interfaces but loopback (`/proc/net/dev`).
pub fn node_net_bytes() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    let mut totals = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let values: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        totals.0 += values.first().copied().unwrap_or(0);
        totals.1 += values.get(8).copied().unwrap_or(0);
    }
    Some(totals)
}

/// This boot's id; `None` where the kernel does not publish one.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// A field of `/proc/meminfo` in bytes (`MemTotal`, `MemAvailable`, …); `None` where the file
/// cannot be read or lacks the field (`MemAvailable` came with Linux 3.14).
pub fn meminfo(field: &str) -> Option<u64> {
    meminfo_field(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

/// `field` from the text of `/proc/meminfo`, in bytes.
pub fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        // The kernel always says kB, and means KiB.
        Some("kB") => Some(value.saturating_mul(1024)),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let text = "4242 (my (odd) app) S 1 4240 4240 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                pgrp: 4240,
                start_ticks: 987654,
                cpu_ticks: 0
            })
        );
        assert!(parse_stat("4242 (app) Z 1 4240").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn only_missing_processes_count_as_gone() {
        assert!(is_gone(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(is_gone(&io::Error::from_raw_os_error(nix::libc::ESRCH)));
        assert!(!is_gone(&io::Error::from_raw_os_error(nix::libc::EMFILE)));
        assert!(!is_gone(&io::Error::from_raw_os_error(nix::libc::EACCES)));
    }

    #[test]
    fn this_process_is_readable() {
        let me = stat(std::process::id()).unwrap();
        assert!(!me.is_dead());
        assert!(is_gone(&stat(u32::MAX).unwrap_err()));
        assert!(resident_memory(std::process::id()).unwrap() > 0);
        assert!(boot_id().is_some());
    }

    #[test]
    fn environ_values_are_found_by_exact_name() {
        let environ = b"PATH=/bin\0OUTPOST_AGENT_ID=ab12\0OUTPOST_AGENT_ID_X=no\0";
        assert_eq!(env_value(environ, "OUTPOST_AGENT_ID"), Some("ab12"));
        assert_eq!(env_value(environ, "PATH"), Some("/bin"));
        assert_eq!(env_value(environ, "OUTPOST"), None);
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24684052 kB\n\
                    MemFree:        23983040 kB\n\
                    MemAvailable:   24103948 kB\n\
                    Buffers:           45660 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable"), Some(24_103_948 * 1024));
        assert_eq!(meminfo_field(text, "MemTotal"), Some(24_684_052 * 1024));
        assert_eq!(meminfo_field("MemTotal: 1 kB\n", "MemAvailable"), None);
        assert_eq!(
            meminfo_field("MemAvailable: lots kB\n", "MemAvailable"),
            None
        );
        assert_eq!(meminfo_field("MemAvailable: 1 MB\n", "MemAvailable"), None);
        assert_eq!(
            meminfo_field("MemAvailable: 4096\n", "MemAvailable"),
            Some(4096)
        );
    }

    #[test]
    fn only_established_connections_to_the_ports_count() {
        // A listener on 8080, a connection accepted on it, the client's end of one, one in
        // TIME_WAIT (06), and an accepted one on another port.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
           1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2\n\
           2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3\n\
           3: 0100007F:1F90 0100007F:D432 06 00000000:00000000 00:00000000 00000000     0        0 0\n\
           4: 0100007F:0050 0100007F:D433 01 00000000:00000000 00:00000000 00000000     0        0 4\n";
        assert_eq!(established_to(text, &[8080]), 1);
        assert_eq!(established_to(text, &[8080, 80]), 2);
        assert_eq!(established_to(text, &[9]), 0);
        assert_eq!(established_to("", &[8080]), 0);
    }

    #[test]
    fn a_connection_to_this_process_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        assert_eq!(connections_to(me, &[port]).unwrap(), 0);
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(connections_to(me, &[port]).unwrap(), 1);
        drop(accepted);
        assert!(connections_to(u32::MAX, &[port]).is_err_and(|e| is_gone(&e)));
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let text = "4242 (my (odd) app) S 1 4240 4240 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(text).map(|s| s.cpu_ticks), Some(300));
        // This process is busy until its first tick of CPU time shows (ticks are 10 ms).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spins = 0u64;
        while cpu_ns(&[std::process::id()]) == 0 && std::time::Instant::now() < deadline {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        assert!(cpu_ns(&[std::process::id()]) > 0);
        assert!(node_cpu_ns().is_some_and(|ns| ns > 0));
        assert!(node_net_bytes().is_some());
    }

    #[test]
    fn this_node_has_memory() {
        assert!(meminfo("MemTotal").is_some_and(|m| m > 0));
        assert!(meminfo("MemAvailable").is_some_and(|m| m > 0));
    }
}
