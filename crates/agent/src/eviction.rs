//! Node-pressure eviction: when the node runs short of memory, which task to stop first.
//!
//! The policy is pure — the agent measures (available memory through [`crate::procfs::meminfo`], and each task's memory
//! through its driver: the task's cgroup usage, the resident memory of its whole process group
//! where it has no cgroup, the Engine's stats for a container) and passes numbers in — so it is
//! tested without a loaded machine. The order is Kubernetes'
//! (kubelet's memory-pressure ranking, simplified to one container per task):
//!
//! 1. BestEffort tasks (no requests, no limits), largest usage first;
//! 2. Burstable tasks, largest usage *above their request* first — the ones furthest beyond
//!    what they asked for;
//! 3. Guaranteed tasks only when nothing else is left, largest usage first.
//!
//! Ties go to the smaller task id, so every agent (and every test) picks the same victim.
//!
//! The agent calls [`next_victim`] once per pressure check and evicts just that one task: after
//! an eviction the kernel's numbers change in ways usage does not predict (page cache, shared
//! pages, the task's own exit), so re-measuring beats evicting a precomputed batch.

/// A task's QoS class, which ranks it for eviction (ordered: BestEffort first).
pub use spec::QosClass as Qos;

/// One running task as eviction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub task: String,
    pub qos: Qos,
    /// Memory in use, in bytes, as the task's driver measures it (its cgroup's count where it
    /// has one).
    pub usage: u64,
    /// Memory request in bytes, 0 if none.
    pub request: u64,
}

/// The task to evict now, or `None` when `available` is at or above `threshold` (no pressure)
/// or there is nothing to evict.
pub fn next_victim(available: u64, threshold: u64, candidates: &[Candidate]) -> Option<String> {
    if available >= threshold {
        return None;
    }
    let victim = candidates.iter().min_by(|a, b| rank(a).cmp(&rank(b)))?;
    Some(victim.task.clone())
}

/// The eviction order as a sort key: smallest goes first.
fn rank(c: &Candidate) -> (Qos, std::cmp::Reverse<i128>, &str) {
    let by = match c.qos {
        // How far usage is over the request; negative when under it (such a task still ranks,
        // behind every task that is over). BestEffort has no request, so this is its usage.
        Qos::BestEffort | Qos::Burstable => i128::from(c.usage) - i128::from(c.request),
        // Never over its request (which is its limit): the largest frees the most.
        Qos::Guaranteed => i128::from(c.usage),
    };
    (c.qos, std::cmp::Reverse(by), c.task.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn best_effort(task: &str, usage_mi: u64) -> Candidate {
        Candidate {
            task: task.into(),
            qos: Qos::BestEffort,
            usage: usage_mi * MI,
            request: 0,
        }
    }

    fn burstable(task: &str, usage_mi: u64, request_mi: u64) -> Candidate {
        Candidate {
            task: task.into(),
            qos: Qos::Burstable,
            usage: usage_mi * MI,
            request: request_mi * MI,
        }
    }

    fn guaranteed(task: &str, usage_mi: u64, request_mi: u64) -> Candidate {
        Candidate {
            task: task.into(),
            qos: Qos::Guaranteed,
            usage: usage_mi * MI,
            request: request_mi * MI,
        }
    }

    /// Every task to evict, in order, as the agent's pressure loop would pick them one check
    /// at a time, assuming each victim's usage is freed before the next check.
    fn victims(available: u64, threshold: u64, candidates: &[Candidate]) -> Vec<String> {
        let mut left = candidates.to_vec();
        let mut available = available;
        let mut chosen = Vec::new();
        while let Some(victim) = next_victim(available, threshold, &left) {
            let at = left.iter().position(|c| c.task == victim).unwrap();
            available = available.saturating_add(left.remove(at).usage);
            chosen.push(victim);
        }
        chosen
    }

    /// Available and threshold in MiB; the expected victims in order.
    fn check(available_mi: u64, threshold_mi: u64, candidates: &[Candidate], expect: &[&str]) {
        let got = victims(available_mi * MI, threshold_mi * MI, candidates);
        assert_eq!(got, expect, "victims");
        let next = next_victim(available_mi * MI, threshold_mi * MI, candidates);
        assert_eq!(next.as_deref(), expect.first().copied(), "next victim");
    }

    #[test]
    fn eviction_order_and_amount() {
        let mixed = [
            guaranteed("g", 300, 300),
            burstable("b-small-over", 120, 100),
            best_effort("be-small", 10),
            burstable("b-big-over", 400, 100),
            best_effort("be-big", 50),
        ];
        // (what is checked, available MiB, threshold MiB, expected victims)
        let table: &[(&str, u64, u64, &[&str])] = &[
            ("no pressure: nothing", 200, 100, &[]),
            ("exactly at the threshold is not pressure", 100, 100, &[]),
            ("largest best-effort alone is enough", 90, 100, &["be-big"]),
            (
                "then the next best-effort",
                45,
                100,
                &["be-big", "be-small"],
            ),
            (
                "burstable by usage over request, largest first",
                30,
                300,
                &["be-big", "be-small", "b-big-over"],
            ),
            (
                "guaranteed only once nothing else is left",
                0,
                800,
                &["be-big", "be-small", "b-big-over", "b-small-over", "g"],
            ),
            (
                "everything when even that is not enough",
                0,
                10_000,
                &["be-big", "be-small", "b-big-over", "b-small-over", "g"],
            ),
        ];
        for (what, available, threshold, expect) in table {
            eprintln!("{what}");
            check(*available, *threshold, &mixed, expect);
        }
    }

    #[test]
    fn burstable_over_request_goes_before_larger_one_under_it() {
        let tasks = [burstable("under", 900, 1000), burstable("over", 200, 100)];
        check(0, 1, &tasks, &["over"]);
        check(0, 1001, &tasks, &["over", "under"]);
    }

    #[test]
    fn burstable_under_request_ranks_by_how_close_to_it() {
        let tasks = [burstable("far", 100, 1000), burstable("near", 90, 100)];
        check(0, 1, &tasks, &["near"]);
    }

    #[test]
    fn only_guaranteed_left_are_evicted_largest_first() {
        // Not by how far under their requests they are: that would pick "a-small".
        let tasks = [
            guaranteed("a-small", 64, 64),
            guaranteed("b-large", 256, 512),
        ];
        check(10, 100, &tasks, &["b-large"]);
        check(10, 300, &tasks, &["b-large", "a-small"]);
    }

    #[test]
    fn ties_go_to_the_smaller_task_id() {
        let tasks = [
            best_effort("web-3", 50),
            best_effort("web-1", 50),
            best_effort("web-2", 50),
        ];
        check(0, 120, &tasks, &["web-1", "web-2", "web-3"]);
        // The same whatever order the agent lists them in.
        let mut reversed = tasks.clone();
        reversed.reverse();
        check(0, 120, &reversed, &["web-1", "web-2", "web-3"]);
    }

    #[test]
    fn nothing_to_evict_is_nothing() {
        check(0, 100, &[], &[]);
    }

    #[test]
    fn zero_threshold_never_evicts() {
        check(0, 0, &[best_effort("a", 10)], &[]);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let tasks = [
            Candidate {
                task: "a".into(),
                qos: Qos::BestEffort,
                usage: u64::MAX,
                request: 0,
            },
            Candidate {
                task: "b".into(),
                qos: Qos::Burstable,
                usage: 0,
                request: u64::MAX,
            },
        ];
        assert_eq!(victims(u64::MAX - 1, u64::MAX, &tasks), ["a"]);
    }

    #[test]
    fn qos_follows_kubernetes() {
        use spec::{Cpu, Memory, ResourceList, Resources};
        let list = |cpu: Option<u64>, memory: Option<u64>| ResourceList {
            cpu: cpu.map(Cpu),
            memory: memory.map(Memory),
            pids: None,
        };
        // (requests, limits, class)
        let table = [
            (list(None, None), list(None, None), Qos::BestEffort),
            (list(Some(100), None), list(None, None), Qos::Burstable),
            (list(None, None), list(None, Some(MI)), Qos::Burstable),
            (list(None, None), list(Some(500), Some(MI)), Qos::Guaranteed),
            (
                list(Some(500), Some(MI)),
                list(Some(500), Some(MI)),
                Qos::Guaranteed,
            ),
            (
                list(Some(100), Some(MI)),
                list(Some(500), Some(MI)),
                Qos::Burstable,
            ),
        ];
        for (requests, limits, class) in table {
            let resources = Resources {
                requests: requests.clone(),
                limits: limits.clone(),
            };
            assert_eq!(resources.qos(), class, "{requests:?} / {limits:?}");
        }
        // Pids alone do not lift a task out of BestEffort.
        let pids_only = Resources {
            requests: ResourceList::default(),
            limits: ResourceList {
                pids: Some(10),
                ..ResourceList::default()
            },
        };
        assert_eq!(pids_only.qos(), Qos::BestEffort);
    }
}
