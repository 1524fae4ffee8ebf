//! What every node has left to give, indexed so that picking the next node for a replica costs
//! O(log nodes) rather than a scan of every node.
//!
//! The placement rule is: among the nodes that fit, the fewest tasks of this service, then the
//! fewest tasks overall, then the name. Nodes that run nothing of the service tie on the first
//! key, so one ordered set of every schedulable node by (tasks overall, name) serves all
//! services; only the nodes that already run the service need a set of their own, and it is
//! as large as the service is.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use api::{Node, NodeState};
use spec::ServiceSpec;

use crate::ports::{self, HostPort};
use crate::requests;

/// What one node has left to give, as placement goes on.
pub(crate) struct Room<'a> {
    pub node: &'a Node,
    pub cpu_free: u64,
    pub memory_free: u64,
    /// The fixed host ports its tasks hold.
    pub claimed: Vec<HostPort>,
    total: u32,
}

impl Room<'_> {
    /// Takes a replica's requests out of the room left; a node that runs more than it has (its
    /// allocatable shrank, say) simply has none left.
    fn take(&mut self, (cpu, mem): (u64, u64)) {
        self.cpu_free = self.cpu_free.saturating_sub(cpu);
        self.memory_free = self.memory_free.saturating_sub(mem);
    }

    /// Ready, calm and not draining: the node may be given new work at all.
    fn schedulable(&self) -> bool {
        self.node.state == NodeState::Ready && !self.node.memory_pressure && !self.node.draining
    }
}

/// Every node's room, in name order, while the tasks that stay are charged to it. A room's
/// index is its rank by name, so index order is the name tie-break (nodes that share a name
/// keep their map order, as a stable sort leaves them).
pub(crate) struct Rooms<'a> {
    rooms: Vec<Room<'a>>,
    /// Node name → the indexes of its rooms: one lookup per task instead of a search.
    by_name: HashMap<&'a str, Range<usize>>,
}

impl<'a> Rooms<'a> {
    pub fn new(nodes: impl Iterator<Item = &'a Node>) -> Self {
        let mut rooms: Vec<Room> = nodes
            .map(|node| Room {
                node,
                cpu_free: node.allocatable.cpu_millis,
                memory_free: node.allocatable.memory_bytes,
                claimed: Vec::new(),
                total: 0,
            })
            .collect();
        rooms.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        let mut by_name: HashMap<&str, Range<usize>> = HashMap::with_capacity(rooms.len());
        for (i, room) in rooms.iter().enumerate() {
            by_name
                .entry(room.node.name.as_str())
                .and_modify(|r| r.end = i + 1)
                .or_insert(i..i + 1);
        }
        Rooms { rooms, by_name }
    }

    /// Charges a task that stays on `node` (one that never registered has no room) for its
    /// requests, if its service is known, and its fixed host ports, and returns the rooms
    /// charged.
    pub fn charge(
        &mut self,
        node: &str,
        need: Option<(u64, u64)>,
        ports: &[HostPort],
    ) -> Range<usize> {
        let Some(range) = self.by_name.get(node).cloned() else {
            return 0..0;
        };
        for room in &mut self.rooms[range.clone()] {
            if let Some(need) = need {
                room.take(need);
            }
            room.claimed.extend_from_slice(ports);
            room.total += 1;
        }
        range
    }

    /// Every task charged: index the schedulable rooms by load.
    pub fn index(self) -> Cluster<'a> {
        let by_load = (self.rooms.iter().enumerate())
            .filter(|(_, r)| r.schedulable())
            .map(|(i, r)| (r.total, i))
            .collect();
        Cluster {
            rooms: self.rooms,
            by_load,
        }
    }
}

/// Every node's room with the schedulable ones ordered by load, as placement goes on.
pub(crate) struct Cluster<'a> {
    pub rooms: Vec<Room<'a>>,
    /// Schedulable rooms by (tasks overall, index).
    by_load: BTreeSet<(u32, usize)>,
}

/// One service's placement in progress.
pub(crate) struct Placing {
    requests: (u64, u64),
    driver: String,
    /// The fixed host ports each replica binds.
    ports: Vec<HostPort>,
    /// Rooms running this service: index → its tasks there.
    counts: HashMap<usize, u32>,
    /// Rooms running this service that may still fit, by (its tasks there, tasks overall, index).
    crowded: BTreeSet<(u32, u32, usize)>,
    /// The last key of `by_load` visited for a room without this service. Those rooms keep
    /// their keys while this service is placed (a picked room joins `crowded`), and one that
    /// does not fit never will until the next service, so the scan only moves forward.
    cursor: Option<(u32, usize)>,
}

impl<'a> Cluster<'a> {
    /// Starts placing replicas of `spec`, whose kept tasks run in the rooms of `counts`.
    pub fn start(&self, spec: &ServiceSpec, counts: HashMap<usize, u32>) -> Placing {
        let crowded = counts
            .iter()
            .filter(|(i, _)| self.rooms[**i].schedulable())
            .map(|(i, c)| (*c, self.rooms[*i].total, *i))
            .collect();
        Placing {
            requests: requests(spec),
            driver: spec.driver.to_string(),
            ports: ports::fixed(spec).collect(),
            counts,
            crowded,
            cursor: None,
        }
    }

    /// The best room for one more replica, charged for it.
    pub fn pick(&mut self, p: &mut Placing) -> Option<&'a Node> {
        let i = self.next_uncrowded(p).or_else(|| self.next_crowded(p))?;
        let room = &mut self.rooms[i];
        let before = room.total;
        room.take(p.requests);
        room.claimed.extend_from_slice(&p.ports);
        room.total = room.total.saturating_add(1);
        self.by_load.remove(&(before, i));
        self.by_load.insert((room.total, i));
        let count = p.counts.entry(i).or_default();
        p.crowded.remove(&(*count, before, i));
        *count += 1;
        p.crowded.insert((*count, room.total, i));
        Some(room.node)
    }

    /// The least loaded room that runs nothing of this service and fits a replica.
    fn next_uncrowded(&self, p: &mut Placing) -> Option<usize> {
        use std::ops::Bound::{Excluded, Unbounded};
        loop {
            let next = match p.cursor {
                None => self.by_load.first(),
                Some(after) => self.by_load.range((Excluded(after), Unbounded)).next(),
            };
            let key @ (_, i) = *next?;
            p.cursor = Some(key);
            if !p.counts.contains_key(&i) && self.fits(i, p) {
                return Some(i);
            }
        }
    }

    /// The room with the fewest tasks of this service, then overall, that fits a replica.
    /// A room that does not fit leaves the set: it only loses room (and ports) while this
    /// service is placed.
    fn next_crowded(&self, p: &mut Placing) -> Option<usize> {
        while let Some(&(_, _, i)) = p.crowded.first() {
            if self.fits(i, p) {
                return Some(i);
            }
            p.crowded.pop_first();
        }
        None
    }

    fn fits(&self, i: usize, p: &Placing) -> bool {
        let room = &self.rooms[i];
        let (cpu, mem) = p.requests;
        room.schedulable()
            && room.node.drivers.contains(&p.driver)
            && room.cpu_free >= cpu
            && room.memory_free >= mem
            && ports::free(&room.claimed, &p.ports)
    }
}
