//! Host ports for tasks, from a range the agent owns. A port stays held by its task from the
//! moment it is handed out until the task is gone for good (kept across restarts, so the task's
//! address stays the same, and across agent restarts through the task records), so no two live
//! tasks ever get the same one. Before a port is handed out it is bound once, to skip ports some
//! other program already listens on.
//!
//! Asking the kernel for port 0 and closing the socket again, as this agent once did, lets two
//! tasks get the same port: the port is free again the moment the socket closes.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::sync::Mutex;

/// 20000–29999: below Linux's default ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`,
/// 32768–60999), so the ports the kernel picks for outgoing connections never take a task's,
/// and above the registered ports most services default to.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 20000..=29999;

/// Where Linux says which local ports it picks for outgoing connections.
const EPHEMERAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error(
        "no free host port left in the agent's range {first}-{last} ({held} held by tasks, the \
         rest in use by other programs): stop some tasks or free ports in that range"
    )]
    Exhausted { first: u16, last: u16, held: usize },
}

pub struct Ports {
    range: RangeInclusive<u16>,
    state: Mutex<State>,
}

struct State {
    held: HashSet<u16>,
    /// Where the next search starts: handing ports out in turn, rather than lowest first, keeps
    /// a port just released (whose old connections may linger) out of use for longest. It starts
    /// at a random place, so that agents sharing a machine (test clusters) rarely race for one.
    next: u16,
}

impl Ports {
    pub fn new(range: RangeInclusive<u16>) -> Ports {
        let size = u64::from(range.end() - range.start()) + 1;
        let offset = random() % size;
        let next = range.start() + offset as u16;
        Ports {
            range,
            state: Mutex::new(State {
                held: HashSet::new(),
                next,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks ports as held (a restored task's, or a fixed `host_port` from a spec).
    pub fn hold(&self, ports: impl IntoIterator<Item = u16>) {
        self.state().held.extend(ports);
    }

    /// Gives ports back once their task is gone for good.
    pub fn release(&self, ports: impl IntoIterator<Item = u16>) {
        let mut state = self.state();
        for port in ports {
            state.held.remove(&port);
        }
    }

    /// A port of the range that no task holds and nothing listens on, now held.
    pub fn allocate(&self) -> Result<u16, PortError> {
        let mut state = self.state();
        let (first, last) = (*self.range.start(), *self.range.end());
        let size = usize::from(last - first) + 1;
        for _ in 0..size {
            let port = state.next;
            state.next = if port >= last { first } else { port + 1 };
            if !state.held.contains(&port) && bindable(port) {
                state.held.insert(port);
                return Ok(port);
            }
        }
        Err(PortError::Exhausted {
            first,
            last,
            held: state.held.len(),
        })
    }

    /// A note for the operator when the range overlaps the kernel's ephemeral range, where an
    /// outgoing connection may take a task's port between its restarts.
    pub fn overlap_note(&self) -> Option<String> {
        let text = std::fs::read_to_string(EPHEMERAL_RANGE).ok()?;
        let (low, high) = parse_range(&text)?;
        let (first, last) = (*self.range.start(), *self.range.end());
        (first <= high && low <= last).then(|| {
            format!(
                "task ports {first}-{last} overlap the kernel's ephemeral ports {low}-{high} \
                 ({EPHEMERAL_RANGE}): a task may lose its port to an outgoing connection"
            )
        })
    }
}

/// A random number from the standard library's per-process hash keys: enough to spread
/// starting points, with no dependency.
fn random() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Whether a listener could take `port` now, on every address.
fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// The two numbers of `ip_local_port_range`.
fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A run of `n` ports nothing listens on now, found by asking the kernel for one and using
    /// the ports above it; retried where one of them is taken.
    fn free_run(n: u16) -> (RangeInclusive<u16>, TcpListener) {
        loop {
            let probe = TcpListener::bind("0.0.0.0:0").unwrap();
            let first = probe.local_addr().unwrap().port();
            let Some(last) = first.checked_add(n - 1) else {
                continue;
            };
            if (first + 1..=last).all(bindable) {
                // The probe still holds `first`: the range's first port is known to be taken.
                return (first..=last, probe);
            }
        }
    }

    #[test]
    fn never_hands_out_a_held_or_listened_on_port() {
        let (range, taken) = free_run(4);
        let first = *range.start();
        let ports = Ports::new(range);
        let mut got = [0; 3].map(|_| ports.allocate().unwrap());
        got.sort();
        let [_, b, _] = got;
        assert_eq!(got, [first + 1, first + 2, first + 3]);
        assert_eq!(
            ports.allocate(),
            Err(PortError::Exhausted {
                first,
                last: first + 3,
                held: 3
            })
        );
        // A released port comes back; the one something listens on never does.
        ports.release([b]);
        assert_eq!(ports.allocate(), Ok(b));
        drop(taken);
        assert_eq!(ports.allocate(), Ok(first));
    }

    #[test]
    fn held_ports_of_restored_tasks_are_skipped() {
        let (range, _taken) = free_run(3);
        let first = *range.start();
        let ports = Ports::new(range);
        ports.hold([first + 1]);
        assert_eq!(ports.allocate(), Ok(first + 2));
        assert!(ports.allocate().is_err());
    }

    #[test]
    fn the_default_range_is_outside_the_ephemeral_range() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(Ports::new(DEFAULT_RANGE).overlap_note(), None);
        let note = Ports::new(30000..=40000).overlap_note();
        assert!(note.is_some_and(|n| n.contains("overlap")));
    }
}
