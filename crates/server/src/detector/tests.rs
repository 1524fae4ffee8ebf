//! The detector alone (phi of histories), then the whole state machine on paused tokio time:
//! simulated agents beat over simulated links, the monitor ticks as the leader's loop does, and
//! probe rounds come back after the time real ones take, with what they would find.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const BEAT: Duration = Duration::from_millis(500);
const MS: Duration = Duration::from_millis(1);

/// A small seeded generator (splitmix64): the same seed gives the same link.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, max).
    fn below(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

/// A link: each beat is lost with `loss`, and the others are delayed by up to `2 * jitter`
/// (a delay of `jitter` ± `jitter`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Link {
    loss: f64,
    jitter: Duration,
}

const STEADY: Link = Link {
    loss: 0.0,
    jitter: Duration::ZERO,
};

/// The link of the target: 20% of packets lost, 200 ms of jitter.
const LOSSY: Link = Link {
    loss: 0.2,
    jitter: Duration::from_millis(200),
};

/// Arrival times of beats sent every [`BEAT`] from `from` for `span`, over `link`.
fn arrivals(from: Instant, span: Duration, link: Link, rng: &mut Rng) -> Vec<Instant> {
    let mut out = Vec::new();
    let mut sent = from;
    while sent < from + span {
        if rng.unit() >= link.loss {
            out.push(sent + rng.below(link.jitter * 2));
        }
        sent += BEAT;
    }
    out.sort();
    out
}

/// A node's history after `span` of beats over `link`, and its last beat.
fn history(span: Duration, link: Link, seed: u64) -> (Liveness, Instant) {
    let start = Instant::now();
    let mut live = Liveness::fresh(start);
    let beats = arrivals(start, span, link, &mut Rng(seed));
    for at in &beats {
        live.beat(*at);
    }
    (live, *beats.last().expect("some beats"))
}

/// How long after its last beat a node's phi first reaches `level`, to the millisecond.
fn silence_until(live: &Liveness, last: Instant, level: f64) -> Duration {
    let mut waited = Duration::ZERO;
    while live.phi(last + waited) < level {
        waited += MS;
    }
    waited
}

#[test]
fn steady_beats_keep_phi_low() {
    let (live, last) = history(Duration::from_secs(60), STEADY, 1);
    for late in [0, 100, 250, 500, 700] {
        let phi = live.phi(last + late * MS);
        assert!(phi < 1.0, "phi {phi} at {late} ms after a beat");
    }
    assert!(
        live.phi(last + BEAT) < 0.1,
        "the next beat is due, not late"
    );
}

#[test]
fn silence_raises_phi_monotonically_to_down_in_about_three_beats() {
    let (live, last) = history(Duration::from_secs(60), STEADY, 1);
    let mut before = live.phi(last);
    for ms in (0..6_000).step_by(10) {
        let phi = live.phi(last + ms * MS);
        assert!(phi >= before, "phi fell from {before} to {phi} at {ms} ms");
        assert!(phi.is_finite());
        before = phi;
    }
    let suspect = silence_until(&live, last, SUSPECT_PHI);
    let down = silence_until(&live, last, DOWN_PHI);
    println!("steady 500 ms beats: suspect after {suspect:?} of silence, down after {down:?}");
    assert!(suspect > 2 * BEAT, "one lost beat is no alarm: {suspect:?}");
    assert!(down <= 4 * BEAT, "{down:?}");
}

#[test]
fn a_jittery_lossy_history_tolerates_longer_gaps_than_a_steady_one() {
    let (steady, steady_last) = history(Duration::from_secs(60), STEADY, 1);
    let (lossy, lossy_last) = history(Duration::from_secs(60), LOSSY, 2);
    let steady_down = silence_until(&steady, steady_last, DOWN_PHI);
    let lossy_down = silence_until(&lossy, lossy_last, DOWN_PHI);
    let (mean, sd) = lossy.model();
    println!(
        "phi reaches {DOWN_PHI} after {steady_down:?} of silence on a steady link, \
         {lossy_down:?} on a lossy one (mean with pause {mean:?}, spread {sd:?})"
    );
    assert!(
        lossy_down > steady_down + BEAT,
        "{lossy_down:?} vs {steady_down:?}"
    );
    // The same gap that convicts on the steady link barely raises suspicion on the lossy one.
    assert!(lossy.phi(lossy_last + steady_down) < SUSPECT_PHI);
}

#[test]
fn a_node_just_met_is_judged_by_the_prior_and_an_outage_is_not_learned() {
    let now = Instant::now();
    let mut live = Liveness::fresh(now);
    assert_eq!(live.age(now), None, "nothing heard yet");
    live.beat(now);
    // A 2 s heartbeat, the slowest allowed, is no alarm before its history has grown.
    assert!(live.phi(now + MAX_HEARTBEAT_FOR_TEST) < SUSPECT_PHI);
    for i in 1..=10 {
        live.beat(now + BEAT * i);
    }
    let model = live.model();
    // Ten seconds of silence, then a beat: the outage is not a sample.
    live.beat(now + BEAT * 10 + Duration::from_secs(10));
    assert_eq!(live.model(), model);
}

/// `agent::MAX_HEARTBEAT`, which the server does not depend on.
const MAX_HEARTBEAT_FOR_TEST: Duration = Duration::from_secs(2);

proptest! {
    #[test]
    fn phi_never_decreases_while_silent(
        intervals in prop::collection::vec(1u32..3_000, 0..150),
        a in 0u32..20_000,
        b in 0u32..20_000,
    ) {
        let start = Instant::now();
        let mut live = Liveness::fresh(start);
        let mut at = start;
        live.beat(at);
        for ms in intervals {
            at += ms * MS;
            live.beat(at);
        }
        let (early, late) = (a.min(b), a.max(b));
        let (p1, p2) = (live.phi(at + early * MS), live.phi(at + late * MS));
        prop_assert!(p1.is_finite() && p2.is_finite());
        prop_assert!(p1 <= p2, "phi {} at {} ms, {} at {} ms", p1, early, p2, late);
    }
}

#[test]
fn judgement_of_every_state() {
    use NodeState::*;
    use Probed::*;
    let calm = 1.0;
    let late = 5.0;
    let lost = 9.0;
    let cases = [
        // (current, heard, phi, probed) → next
        ((Ready, true, calm, NotYet), Ready),
        ((Ready, true, late, NotYet), Suspect),
        ((Ready, true, lost, NotYet), Suspect),
        ((Suspect, true, lost, NotYet), Suspect),
        ((Suspect, true, late, Missed), Suspect),
        ((Suspect, true, lost, Missed), Down),
        ((Suspect, true, lost, Reached), Unreachable),
        ((Unreachable, true, lost, Missed), Down),
        ((Down, true, lost, Reached), Unreachable),
        ((Down, true, calm, NotYet), Ready),
        ((Unreachable, true, calm, NotYet), Ready),
        // A grace period revives nobody: only a heartbeat does.
        ((Down, false, calm, NotYet), Down),
        ((Suspect, false, calm, NotYet), Suspect),
        ((Down, false, late, NotYet), Down),
    ];
    for ((current, heard, phi, probed), next) in cases {
        assert_eq!(
            judge(current, heard, phi, probed),
            next,
            "{current} heard {heard} phi {phi} probed {probed:?}"
        );
    }
}

#[test]
fn helpers_are_ready_nodes_after_the_target_in_name_order() {
    use NodeState::*;
    let nodes: Vec<(String, NodeState)> = [
        ("a", Ready),
        ("b", Ready),
        ("c", Suspect),
        ("d", Ready),
        ("e", Down),
        ("f", Ready),
        ("g", Ready),
    ]
    .map(|(n, s)| (n.to_string(), s))
    .to_vec();
    let ready = ready_by_name(&nodes);
    assert_eq!(ready, ["a", "b", "d", "f", "g"]);
    assert_eq!(helpers("c", &ready), ["d", "f", "g"]);
    assert_eq!(helpers("f", &ready), ["g", "a", "b"]);
    assert_eq!(helpers("a", &ready_by_name(&nodes[..2])), ["b"]);
    assert!(helpers("a", &ready_by_name(&nodes[..1])).is_empty());
}

/// What a simulated node does from some moment on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    /// Beats over its link; its agent API answers probes (over the same link).
    Alive(Link),
    /// The process is gone: no beats, and every probe times out.
    Crashed,
    /// Its beats do not reach the server, but its agent API answers.
    CutOff,
}

/// How long a probe round takes: a dead target's attempts time out (`PROBE_TIMEOUT`), and the
/// helpers answer a little after.
const ROUND: Duration = Duration::from_millis(520);

/// One simulated node: its fates from given moments, its beats still on the wire.
struct SimNode {
    fates: Vec<(Instant, Fate)>,
    next_send: Instant,
    on_wire: Vec<Instant>,
    rng: Rng,
}

impl SimNode {
    fn fate(&self, now: Instant) -> Fate {
        (self.fates.iter())
            .rev()
            .find(|(from, _)| *from <= now)
            .map_or(Fate::Alive(STEADY), |(_, f)| *f)
    }
}

/// The leader's loop over simulated nodes, on paused tokio time.
struct Sim {
    monitor: Monitor,
    nodes: BTreeMap<String, SimNode>,
    states: BTreeMap<String, NodeState>,
    /// Probe rounds under way: when they end, of which node, which round.
    rounds: Vec<(Instant, String, u64)>,
    /// Every transition committed, when.
    log: Vec<(Instant, String, NodeState)>,
    next_tick: Instant,
}

const STEP: Duration = Duration::from_millis(5);

impl Sim {
    fn new(names: &[&str], seed: u64) -> Sim {
        let now = Instant::now();
        let mut monitor = Monitor::default();
        let nodes = (names.iter().enumerate())
            .map(|(i, n)| {
                monitor.beat(n, now);
                let node = SimNode {
                    fates: vec![],
                    // Nodes beat out of phase with each other and with the ticks.
                    next_send: now + BEAT.mul_f64(i as f64 / names.len() as f64),
                    on_wire: vec![],
                    rng: Rng(seed * 1_000 + i as u64),
                };
                (n.to_string(), node)
            })
            .collect();
        let states = (names.iter())
            .map(|n| (n.to_string(), NodeState::Ready))
            .collect();
        Sim {
            monitor,
            nodes,
            states,
            rounds: vec![],
            log: vec![],
            next_tick: now + crate::controller::NODE_CHECK,
        }
    }

    /// From `at` on, `node` meets `fate`.
    fn at(&mut self, at: Instant, node: &str, fate: Fate) {
        let n = self.nodes.get_mut(node).expect("a simulated node");
        n.fates.push((at, fate));
        n.fates.sort_by_key(|(t, _)| *t);
    }

    /// Runs until `end`, one [`STEP`] of paused time after another.
    async fn run_until(&mut self, end: Instant) {
        while Instant::now() < end {
            tokio::time::advance(STEP).await;
            let now = Instant::now();
            self.send_and_deliver(now);
            self.finish_rounds(now);
            if now >= self.next_tick {
                self.next_tick += crate::controller::NODE_CHECK;
                self.tick(now);
            }
        }
    }

    fn send_and_deliver(&mut self, now: Instant) {
        for (name, node) in &mut self.nodes {
            while node.next_send <= now {
                let sent = node.next_send;
                node.next_send += BEAT;
                if let Fate::Alive(link) = node.fate(sent)
                    && node.rng.unit() >= link.loss
                {
                    let delay = node.rng.below(link.jitter * 2);
                    node.on_wire.push(sent + delay);
                }
            }
            node.on_wire.sort();
            let due = node.on_wire.partition_point(|t| *t <= now);
            for _ in node.on_wire.drain(..due) {
                self.monitor.beat(name, now);
            }
        }
    }

    /// Ends the rounds whose time is up with what they would find: a live agent is reached
    /// unless every attempt (three from here, three through each helper) is lost on its link.
    fn finish_rounds(&mut self, now: Instant) {
        let (done, running): (Vec<_>, Vec<_>) =
            self.rounds.drain(..).partition(|(end, _, _)| *end <= now);
        self.rounds = running;
        for (_, name, round) in done {
            let node = self.nodes.get_mut(&name).expect("a simulated node");
            let attempts = 3 * (1 + HELPERS.min(self.states.len() - 1));
            let reached = match node.fate(now) {
                Fate::Crashed => false,
                Fate::CutOff => true,
                // An attempt needs its request and its answer through the lossy link.
                Fate::Alive(link) => {
                    let through = (1.0 - link.loss).powi(2);
                    (0..attempts).any(|_| node.rng.unit() < through)
                }
            };
            self.monitor.probed(&name, round, reached, now);
        }
    }

    /// The leader's tick: judge, start rounds, commit transitions.
    fn tick(&mut self, now: Instant) {
        let nodes: Vec<(String, NodeState)> =
            self.states.iter().map(|(n, s)| (n.clone(), *s)).collect();
        let tick = self.monitor.tick(&nodes, now);
        for order in tick.probes {
            self.rounds.push((now + ROUND, order.node, order.round));
        }
        for (name, state) in tick.transitions {
            self.states.insert(name.clone(), state);
            self.log.push((now, name, state));
        }
    }

    /// The states `node` went through, in order.
    fn path(&self, node: &str) -> Vec<NodeState> {
        (self.log.iter())
            .filter(|(_, n, _)| n == node)
            .map(|(_, _, s)| *s)
            .collect()
    }

    /// When `node` first entered `state` at or after `from`.
    fn entered(&self, node: &str, state: NodeState, from: Instant) -> Option<Instant> {
        (self.log.iter())
            .find(|(at, n, s)| n == node && *s == state && *at >= from)
            .map(|(at, _, _)| *at)
    }
}

/// min, median, p90 and max, in milliseconds.
fn distribution(mut times: Vec<Duration>) -> [u128; 4] {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_millis();
    [at(0.0), at(0.5), at(0.9), at(1.0)]
}

#[tokio::test(start_paused = true)]
async fn a_crashed_node_goes_suspect_then_down_within_the_budget() {
    let names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sim = Sim::new(&names, 7);
    let warm = Instant::now() + Duration::from_secs(30);
    let mut rng = Rng(99);
    // Half the nodes crash, each at its own moment of its beat cycle; the rest stay.
    let crashes: Vec<(String, Instant)> = (names.iter().step_by(2))
        .map(|n| (n.to_string(), warm + rng.below(Duration::from_secs(5))))
        .collect();
    for (name, at) in &crashes {
        sim.at(*at, name, Fate::Crashed);
    }
    sim.run_until(warm + Duration::from_secs(15)).await;
    let mut times = Vec::new();
    for (name, at) in &crashes {
        assert_eq!(
            sim.path(name),
            [NodeState::Suspect, NodeState::Down],
            "{name}"
        );
        let down = sim.entered(name, NodeState::Down, *at).expect("down");
        times.push(down - *at);
    }
    let [min, median, p90, max] = distribution(times);
    println!(
        "simulated crash → down over {} crashes (500 ms beats, probe rounds of {ROUND:?}): \
         min {min} ms, median {median} ms, p90 {p90} ms, max {max} ms",
        crashes.len()
    );
    assert!(median <= 2_000, "median {median} ms over the 2 s target");
    assert!(max <= 2_500, "max {max} ms");
    for name in names.iter().skip(1).step_by(2) {
        assert!(sim.path(name).is_empty(), "{name} never left ready");
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_cut_off_but_reachable_is_unreachable_then_ready_when_it_beats_again() {
    let mut sim = Sim::new(&["a", "b", "c"], 3);
    let cut = Instant::now() + Duration::from_secs(20);
    let healed = cut + Duration::from_secs(10);
    sim.at(cut, "b", Fate::CutOff);
    sim.at(healed, "b", Fate::Alive(STEADY));
    sim.run_until(healed + Duration::from_secs(5)).await;
    use NodeState::*;
    assert_eq!(sim.path("b"), [Suspect, Unreachable, Ready]);
    let unreachable = sim.entered("b", Unreachable, cut).expect("unreachable");
    let ready = sim.entered("b", Ready, healed).expect("ready again");
    println!(
        "cut off → unreachable in {:?}; first beat → ready in {:?}",
        unreachable - cut,
        ready - healed
    );
    assert!(ready - healed <= BEAT + crate::controller::NODE_CHECK * 2);
    assert!(sim.path("a").is_empty() && sim.path("c").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_node_that_restarts_is_ready_again_and_judged_as_before() {
    let mut sim = Sim::new(&["a", "b"], 5);
    let crash = Instant::now() + Duration::from_secs(20);
    let back = crash + Duration::from_secs(30);
    sim.at(crash, "a", Fate::Crashed);
    sim.at(back, "a", Fate::Alive(STEADY));
    let crash2 = back + Duration::from_secs(20);
    sim.at(crash2, "a", Fate::Crashed);
    sim.run_until(crash2 + Duration::from_secs(5)).await;
    use NodeState::*;
    assert_eq!(sim.path("a"), [Suspect, Down, Ready, Suspect, Down]);
    let first = sim.entered("a", Down, crash).expect("down") - crash;
    let second = sim.entered("a", Down, crash2).expect("down again") - crash2;
    // The 30 s outage taught the detector nothing: the second crash is caught as fast.
    assert!(second <= first + BEAT, "{first:?} then {second:?}");
}

#[tokio::test(start_paused = true)]
async fn five_minutes_of_a_lossy_jittery_link_give_no_down() {
    let mut suspects = 0;
    let mut unreachables = 0;
    let seeds = 6;
    for seed in 0..seeds {
        let mut sim = Sim::new(&["lossy", "b", "c", "d"], 100 + seed);
        let start = Instant::now();
        sim.at(start, "lossy", Fate::Alive(LOSSY));
        sim.run_until(start + Duration::from_secs(300)).await;
        let path = sim.path("lossy");
        assert!(
            !path.contains(&NodeState::Down),
            "seed {seed}: a false down: {path:?}"
        );
        suspects += path.iter().filter(|s| **s == NodeState::Suspect).count();
        unreachables += path
            .iter()
            .filter(|s| **s == NodeState::Unreachable)
            .count();
        for other in ["b", "c", "d"] {
            assert!(
                sim.path(other).is_empty(),
                "seed {seed}: {other} stays ready"
            );
        }
    }
    println!(
        "{seeds} runs of 5 simulated minutes at 20% loss and 200 ms jitter: 0 down, \
         {suspects} suspect, {unreachables} unreachable"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_is_probed_again_and_a_down_one_more_seldom() {
    let mut sim = Sim::new(&["a", "b"], 9);
    let crash = Instant::now() + Duration::from_secs(10);
    sim.at(crash, "a", Fate::Crashed);
    let mut started = Vec::new();
    let end = crash + Duration::from_secs(40);
    while Instant::now() < end {
        let before = sim.rounds.len();
        sim.run_until(Instant::now() + STEP).await;
        if sim.rounds.len() > before {
            started.push(Instant::now() - crash);
        }
    }
    // One round on the way down (suspect), then one every DOWN_REPROBE after the last ended.
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(started[0] < Duration::from_secs(2), "{started:?}");
    for gap in started.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= DOWN_REPROBE && gap <= DOWN_REPROBE + Duration::from_secs(1),
            "{started:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_every_node_a_grace_period_and_revives_none() {
    let now = Instant::now();
    let mut monitor = Monitor::default();
    let nodes = vec![
        ("up".to_string(), NodeState::Ready),
        ("gone".to_string(), NodeState::Down),
    ];
    monitor.restart(["up", "gone"], now);
    assert_eq!(monitor.seen("up", now).0, None, "no beat heard yet");
    let first = monitor.tick(&nodes, now + BEAT);
    assert_eq!(first, Tick::default(), "a grace period: nothing judged yet");
    for _ in 0..10 {
        tokio::time::advance(BEAT).await;
        monitor.beat("up", Instant::now());
    }
    // Long after, the silent one is probed, and nothing brought it back.
    let later = monitor.tick(&nodes, Instant::now());
    assert_eq!(later.transitions, []);
    assert_eq!(later.probes.len(), 1);
    assert_eq!(later.probes[0].node, "gone");
    assert_eq!(later.probes[0].helpers, ["up"]);
}

#[test]
fn silence_counts_from_the_last_beat_or_from_when_watching_began() {
    let start = Instant::now();
    let mut monitor = Monitor::default();
    monitor.beat("a", start);
    monitor.beat("a", start + BEAT);
    let later = start + BEAT + Duration::from_millis(1_300);
    assert_eq!(
        monitor.silent_for("a", later),
        Some(Duration::from_millis(1_300))
    );
    // A node a new leader never heard: silent since the leader began to watch it.
    monitor.restart(["b"], start);
    assert_eq!(monitor.silent_for("b", later), Some(BEAT + 1_300 * MS));
    assert_eq!(monitor.silent_for("c", later), None);
}

/// Beats `node` every [`BEAT`] from `from` for `beats` beats; the last beat's time.
fn beat_steadily(monitor: &mut Monitor, node: &str, from: Instant, beats: u32) -> Instant {
    for i in 0..beats {
        monitor.beat(node, from + BEAT * i);
    }
    from + BEAT * (beats - 1)
}

/// Ticks every 100 ms from `from` until `node` is judged `down`, answering each probe round
/// with `reached`; when that happened.
fn ticks_until_down(monitor: &mut Monitor, node: &str, from: Instant, reached: bool) -> Instant {
    let mut state = NodeState::Ready;
    let mut now = from;
    while state != NodeState::Down {
        now += 100 * MS;
        assert!(now < from + Duration::from_secs(30), "never down");
        let tick = monitor.tick(&[(node.to_string(), state)], now);
        for (_, next) in tick.transitions {
            state = next;
        }
        for order in tick.probes {
            monitor.probed(node, order.round, reached, now + 500 * MS);
        }
        if state == NodeState::Unreachable {
            return now;
        }
    }
    now
}

#[test]
fn a_crash_and_quick_restart_does_not_slow_the_next_detection() {
    let mut monitor = Monitor::default();
    let start = Instant::now();
    let last = beat_steadily(&mut monitor, "a", start, 60);
    let first = ticks_until_down(&mut monitor, "a", last, false) - last;
    // Back 4 s after its last beat (under `MAX_INTERVAL`): the outage is not learned.
    let back = last + Duration::from_secs(4);
    let last = beat_steadily(&mut monitor, "a", back, 6);
    let second = ticks_until_down(&mut monitor, "a", last, false) - last;
    assert_eq!(second, first, "judged as fast the second time");
    assert!(first <= Duration::from_millis(2_000), "{first:?}");
}

#[test]
fn a_silence_that_peers_could_reach_through_is_learned() {
    let mut monitor = Monitor::default();
    let start = Instant::now();
    let last = beat_steadily(&mut monitor, "a", start, 60);
    let (_, before) = monitor.nodes["a"].live.model();
    // Heartbeats lost for 1.8 s while probes reach the node: that is the link, learned.
    let tick = monitor.tick(&[("a".into(), NodeState::Ready)], last + 1_500 * MS);
    for order in tick.probes {
        monitor.probed("a", order.round, true, last + 1_600 * MS);
    }
    monitor.beat("a", last + 1_800 * MS);
    let (_, after) = monitor.nodes["a"].live.model();
    assert!(after > before, "the spread grew: {before:?} → {after:?}");
}
