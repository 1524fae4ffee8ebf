//! Failure detection, pure: how late a node's heartbeat is, and what the leader concludes from
//! that and from indirect probes. No clock and no I/O in here: every time is passed in, and the
//! probes are run by the caller (`controller::nodes`), which hands their outcome back.
//!
//! - [`Liveness`]: one node's heartbeat history, a bounded window of inter-arrival intervals,
//!   judged by a phi-accrual detector ([`phi`]), as Akka and Cassandra do. Phi is
//!   -log10(P(a heartbeat arrives this late or later)) under a normal model of the intervals: a
//!   jittery, lossy link has a wide spread and so tolerates longer gaps than a steady one, with
//!   no threshold to tune per link.
//! - [`judge`]: the node's next state from its phi and the latest probe round:
//!   ready → suspect (phi ≥ [`SUSPECT_PHI`]) → unreachable | down (phi ≥ [`DOWN_PHI`], somebody
//!   reached its agent API or nobody did) → ready (a heartbeat).
//! - [`Monitor`]: every node's liveness and probe rounds; each [`Monitor::tick`] says which
//!   transitions to commit and which probe rounds to start.
//!
//! Why normal and not exponential (Cassandra's choice): the exponential model's spread is its
//! mean, so it cannot tell a steady link (where three missed beats mean a dead node) from a
//! jittery one (where they happen every few minutes); the normal model learns the spread, and
//! the minimum standard deviation and the acceptable pause keep a perfectly steady history from
//! making it hair-triggered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use api::NodeState;
use tokio::time::Instant;

/// 100 intervals: 50 s of beats at 500 ms. Long enough that one burst of loss does not set the
/// spread alone, short enough to follow a link whose quality changes within a minute; 800 bytes
/// per node.
pub const WINDOW: usize = 100;

/// 150 ms: the spread assumed at least. Beats over loopback or a quiet LAN arrive within a few
/// milliseconds of their time, and a detector that believed that would call a node lost after
/// one scheduling hiccup; 150 ms puts a steady 500 ms node's down threshold at about 1.5 s of
/// silence (three beats), inside the 2 s target with room for the probe round.
pub const MIN_STD_DEV: Duration = Duration::from_millis(150);

/// 250 ms: added to the mean interval. A pause this long is not evidence of failure: a stall of
/// the agent's process or a retransmitted packet (Linux's minimum retransmission timeout is
/// 200 ms) delays one beat by about as much.
pub const ACCEPTABLE_PAUSE: Duration = Duration::from_millis(250);

/// 3: a beat this late happens once in a thousand under the node's own history. The node is
/// suspect and gets probed; nothing is done to its work.
pub const SUSPECT_PHI: f64 = 3.0;

/// 8: once in a hundred million (Akka's and Cassandra's default conviction threshold). From
/// here the probe round decides: unreachable when somebody reached the node, down when nobody
/// did.
pub const DOWN_PHI: f64 = 8.0;

/// Fewer real intervals than this and the history says too little: the [`PRIOR_MEAN`] and
/// [`PRIOR_STD_DEV`] stand in for it (a node just registered, or a leader just took office).
/// Two intervals are a second of beats at the default pace; the spread they show is floored by
/// [`MIN_STD_DEV`] anyway.
pub const MIN_SAMPLES: usize = 2;

/// 1 s: what a node with too short a history is assumed to beat at. The slowest heartbeat an
/// agent may be given is 2 s (`agent::MAX_HEARTBEAT`); with [`PRIOR_STD_DEV`], its first 2 s gap
/// is no alarm, while a 500 ms node that dies within a second of registering is still down in
/// about 4 s.
pub const PRIOR_MEAN: Duration = Duration::from_secs(1);

/// 500 ms: the spread assumed of a node with too short a history; see [`PRIOR_MEAN`].
pub const PRIOR_STD_DEV: Duration = Duration::from_millis(500);

/// 5 s: a longer gap between two beats is an outage (a frozen agent, a cut link), not the
/// link's arrival pattern, and is not learned from: a node that comes back is judged as before.
pub const MAX_INTERVAL: Duration = Duration::from_secs(5);

/// 2 s: while a node stays silent past the suspect threshold its agent is probed again this
/// often, so an unreachable node that dies becomes down, and a down one that peers reach again
/// becomes unreachable. A round costs a few small requests.
pub const REPROBE: Duration = Duration::from_secs(2);

/// 10 s: a node already down is probed this seldom. It is most likely gone for good, and
/// every node that ever died would otherwise cost probes every [`REPROBE`]; a heartbeat still
/// brings it back at once.
pub const DOWN_REPROBE: Duration = Duration::from_secs(10);

/// Most agents asked to probe a node, besides the leader's own probe.
pub const HELPERS: usize = 3;

/// Phi of a silence of `elapsed` under a normal model of mean `mean` and standard deviation
/// `std_dev`: -log10(1 - F(elapsed)), with the logistic approximation of the normal CDF that
/// Akka uses (F(y) ≈ 1 / (1 + e^-(1.5976 y + 0.070566 y³)), error below 0.00014). Computed as
/// log10(1 + e^z) in a form that neither overflows nor rounds to infinity, so phi is finite and
/// never decreases as `elapsed` grows.
pub fn phi(elapsed: Duration, mean: Duration, std_dev: Duration) -> f64 {
    let sd = std_dev.as_secs_f64().max(1e-3);
    let y = (elapsed.as_secs_f64() - mean.as_secs_f64()) / sd;
    let z = y * (1.5976 + 0.070566 * y * y);
    softplus(z) / std::f64::consts::LN_10
}

/// ln(1 + e^z), exact in floating point for any z.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// One node's heartbeats as this server saw them.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Seconds between consecutive beats, oldest first, at most [`WINDOW`].
    intervals: VecDeque<f64>,
    /// The last beat, or when watching began (a grace period) while none was heard.
    last: Instant,
    /// Whether a beat arrived since watching began.
    heard: bool,
    /// The mean (with the acceptable pause) and spread of `intervals`, kept up to date by
    /// [`Liveness::beat`]: a node is judged ten times a second but beats only twice.
    model: (Duration, Duration),
}

impl Liveness {
    /// A node not heard from yet, watched from `now`: its silence counts from here.
    pub fn fresh(now: Instant) -> Liveness {
        let intervals = VecDeque::with_capacity(WINDOW);
        let model = model(&intervals);
        Liveness {
            intervals,
            last: now,
            heard: false,
            model,
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn beat(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last);
        if self.heard && gap <= MAX_INTERVAL {
            if self.intervals.len() == WINDOW {
                self.intervals.pop_front();
            }
            self.intervals.push_back(gap.as_secs_f64());
            self.model = model(&self.intervals);
        }
        self.last = now;
        self.heard = true;
    }

    /// A beat at `now` that ends an outage (a silence nobody could reach the node through):
    /// the gap says nothing of the link's pattern, so it is not learned. Learning it would
    /// widen the model, and a node that crashes and restarts within [`MAX_INTERVAL`] would be
    /// judged more slowly the next time it dies.
    pub fn resume(&mut self, now: Instant) {
        self.last = now;
        self.heard = true;
    }

    pub fn heard(&self) -> bool {
        self.heard
    }

    /// Time since the last beat, when one was heard.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.heard.then(|| now.saturating_duration_since(self.last))
    }

    /// The mean interval (with the acceptable pause) and spread the node is judged by.
    pub fn model(&self) -> (Duration, Duration) {
        self.model
    }

    /// How suspicious the silence since the last beat is at `now`.
    pub fn phi(&self, now: Instant) -> f64 {
        let (mean, sd) = self.model;
        phi(now.saturating_duration_since(self.last), mean, sd)
    }
}

/// The mean (with the acceptable pause) and spread to judge by, from intervals in seconds.
fn model(intervals: &VecDeque<f64>) -> (Duration, Duration) {
    let n = intervals.len();
    let (mean, sd) = if n < MIN_SAMPLES {
        (PRIOR_MEAN, PRIOR_STD_DEV)
    } else {
        let mean = intervals.iter().sum::<f64>() / n as f64;
        let var = intervals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let sd = Duration::from_secs_f64(var.sqrt()).max(MIN_STD_DEV);
        (Duration::from_secs_f64(mean), sd)
    };
    (mean + ACCEPTABLE_PAUSE, sd)
}

/// What the latest probe round of a silent node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// No round has finished since the node fell silent.
    NotYet,
    /// The leader or another agent reached the node's agent API.
    Reached,
    /// Nobody did.
    Missed,
}

/// The state a node should be in, from the state it is in, whether a beat was heard since
/// watching began (a node is never brought back by a grace period alone), its phi and the
/// latest probe round.
pub fn judge(current: NodeState, heard: bool, phi: f64, probed: Probed) -> NodeState {
    if phi < SUSPECT_PHI {
        return if heard { NodeState::Ready } else { current };
    }
    let worse = if current == NodeState::Ready {
        NodeState::Suspect
    } else {
        current
    };
    if phi < DOWN_PHI {
        return worse;
    }
    match probed {
        Probed::NotYet => worse,
        Probed::Reached => NodeState::Unreachable,
        Probed::Missed => NodeState::Down,
    }
}

/// The probe rounds of one silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Idle,
    Running { id: u64 },
    Done { found: Probed, at: Instant },
}

#[derive(Debug, Clone)]
struct Watched {
    live: Liveness,
    round: Round,
}

/// A probe round to run: probe `node` directly and through `helpers`, then report the outcome
/// with [`Monitor::probed`] under `round`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOrder {
    pub node: String,
    pub round: u64,
    pub helpers: Vec<String>,
}

/// What one tick asks of the caller.
#[derive(Debug, Default, PartialEq)]
pub struct Tick {
    /// Node state changes to commit, one entry each.
    pub transitions: Vec<(String, NodeState)>,
    pub probes: Vec<ProbeOrder>,
}

/// What this server knows of every node's liveness. Kept in memory only.
#[derive(Debug, Default)]
pub struct Monitor {
    nodes: HashMap<String, Watched>,
    /// Numbers probe rounds, so the outcome of one that a heartbeat overtook is dropped.
    rounds: u64,
}

impl Monitor {
    /// A heartbeat (or a registration) of `node` arrived at `now`: it ends any silence, and the
    /// probe round of that silence no longer counts. A silence that the last probe round found
    /// nobody could reach the node through was an outage, and its length is not learned.
    pub fn beat(&mut self, node: &str, now: Instant) {
        match self.nodes.get_mut(node) {
            Some(w) => {
                match w.round {
                    Round::Done {
                        found: Probed::Missed,
                        ..
                    } => w.live.resume(now),
                    _ => w.live.beat(now),
                }
                w.round = Round::Idle;
            }
            None => {
                let mut live = Liveness::fresh(now);
                live.beat(now);
                let round = Round::Idle;
                self.nodes.insert(node.to_string(), Watched { live, round });
            }
        }
    }

    /// Forgets every history and watches `nodes` afresh from `now`: what a new leader does,
    /// since it cannot know how long the nodes were silent before.
    pub fn restart<'a>(&mut self, nodes: impl IntoIterator<Item = &'a str>, now: Instant) {
        self.nodes = (nodes.into_iter())
            .map(|n| {
                let live = Liveness::fresh(now);
                (
                    n.to_string(),
                    Watched {
                        live,
                        round: Round::Idle,
                    },
                )
            })
            .collect();
    }

    /// How long `node` has been silent at `now`: since its last beat, or since watching began
    /// when none was heard (a new leader knows nothing earlier).
    pub fn silent_for(&self, node: &str, now: Instant) -> Option<Duration> {
        let w = self.nodes.get(node)?;
        Some(now.saturating_duration_since(w.live.last))
    }

    /// The time since `node`'s last beat (when one was heard) and its phi at `now`.
    pub fn seen(&self, node: &str, now: Instant) -> (Option<Duration>, Option<f64>) {
        match self.nodes.get(node) {
            Some(w) => (w.live.age(now), Some(w.live.phi(now))),
            None => (None, None),
        }
    }

    /// Judges every node of `nodes` (name and committed state) at `now`: the transitions to
    /// commit and the probe rounds to start. A node not watched yet is watched from `now`;
    /// nodes no longer listed are forgotten.
    pub fn tick(&mut self, nodes: &[(String, NodeState)], now: Instant) -> Tick {
        let listed: HashSet<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
        self.nodes.retain(|name, _| listed.contains(name.as_str()));
        // Sorted once per tick, and only when some node is to be probed.
        let mut ready: Option<Vec<&str>> = None;
        let mut tick = Tick::default();
        for (name, current) in nodes {
            let w = (self.nodes.entry(name.clone())).or_insert_with(|| Watched {
                live: Liveness::fresh(now),
                round: Round::Idle,
            });
            let phi = w.live.phi(now);
            let probed = match w.round {
                Round::Done { found, .. } => found,
                _ => Probed::NotYet,
            };
            let next = judge(*current, w.live.heard(), phi, probed);
            if next != *current {
                tick.transitions.push((name.clone(), next));
            }
            let again = if *current == NodeState::Down {
                DOWN_REPROBE
            } else {
                REPROBE
            };
            let due = match w.round {
                Round::Idle => true,
                Round::Running { .. } => false,
                Round::Done { at, .. } => now >= at + again,
            };
            if phi >= SUSPECT_PHI && due {
                self.rounds += 1;
                w.round = Round::Running { id: self.rounds };
                let ready = ready.get_or_insert_with(|| ready_by_name(nodes));
                tick.probes.push(ProbeOrder {
                    node: name.clone(),
                    round: self.rounds,
                    helpers: helpers(name, ready),
                });
            }
        }
        tick
    }

    /// The outcome of probe round `round` of `node`, finished at `now`: whether anybody
    /// reached it. Dropped when a beat came in the meantime.
    pub fn probed(&mut self, node: &str, round: u64, reached: bool, now: Instant) {
        if let Some(w) = self.nodes.get_mut(node)
            && w.round == (Round::Running { id: round })
        {
            let found = if reached {
                Probed::Reached
            } else {
                Probed::Missed
            };
            w.round = Round::Done { found, at: now };
        }
    }
}

/// The names of the ready nodes, sorted.
pub fn ready_by_name(nodes: &[(String, NodeState)]) -> Vec<&str> {
    let mut ready: Vec<&str> = (nodes.iter())
        .filter(|(_, s)| *s == NodeState::Ready)
        .map(|(n, _)| n.as_str())
        .collect();
    ready.sort_unstable();
    ready
}

/// Up to [`HELPERS`] of the ready nodes (sorted by name) other than `target` to probe it: the
/// first ones after it in name order, wrapping around, so that the probes of different nodes
/// fall on different agents.
pub fn helpers(target: &str, ready: &[&str]) -> Vec<String> {
    let split = ready.partition_point(|n| *n <= target);
    let (before, after) = ready.split_at(split);
    (after.iter().chain(before))
        .filter(|n| **n != target)
        .take(HELPERS)
        .map(|n| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests;
