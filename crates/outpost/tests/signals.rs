//! Stopping `outpost dev` by signal at any moment: a Ctrl-C (or SIGTERM from a service manager)
//! while replicas are still starting stops every task and exits cleanly; a second Ctrl-C does not
//! wait out the tasks' grace periods.

mod support;

use nix::sys::signal::Signal;
use support::{Dev, alive, wait_for};

/// Three replicas that bind their port only after a minute: they are still starting, and dev is
/// still waiting for them inside its start-up, when the signal arrives.
const SLOW: &str = r#"
name: slow
replicas: 3
command: ["DEMO_APP", "--port", "${PORT}", "--delay-ready", "60000"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
stop_grace: 2s
"#;

fn started_pids(dev: &Dev) -> Vec<u64> {
    wait_for("three started replicas", || {
        let pids: Vec<u64> = dev
            .tasks("slow")
            .iter()
            .filter_map(|t| t["pid"].as_u64())
            .collect();
        (pids.len() == 3).then_some(pids)
    })
}

fn stops_cleanly_during_start_up(sig: Signal) {
    let mut dev = Dev::start_with_spec("slow.yaml", SLOW);
    let pids = started_pids(&dev);
    assert!(
        dev.signal_and_wait(sig),
        "dev should exit with success after {sig}:\n{}",
        dev.log()
    );
    let log = dev.log();
    assert!(log.contains("stopping tasks"), "{log}");
    for pid in pids {
        assert!(!alive(pid), "task process {pid} outlived dev after {sig}");
    }
}

#[test]
fn ctrl_c_while_replicas_start_stops_every_task() {
    stops_cleanly_during_start_up(Signal::SIGINT);
}

#[test]
fn sigterm_while_replicas_start_stops_every_task() {
    stops_cleanly_during_start_up(Signal::SIGTERM);
}

/// A task that ignores SIGTERM (ignored signals stay ignored across `exec`) with a grace far
/// longer than the test's patience: only a forced stop ends it in time.
const STUBBORN: &str = r#"
name: stubborn
command: ["sh", "-c", "trap '' TERM; exec sleep 600"]
stop_grace: 300s
"#;

#[test]
fn a_second_ctrl_c_kills_tasks_without_waiting_out_their_grace() {
    let mut dev = Dev::start_with_spec("stubborn.yaml", STUBBORN);
    let pid = wait_for("the task to start", || {
        dev.tasks("stubborn").first()?["pid"].as_u64()
    });
    dev.signal(Signal::SIGINT);
    wait_for("dev to start stopping", || {
        dev.log().contains("stopping tasks").then_some(())
    });
    assert!(
        alive(pid),
        "SIGTERM is ignored: the task waits out its grace"
    );
    assert!(
        dev.signal_and_wait(Signal::SIGINT),
        "a forced stop still exits cleanly:\n{}",
        dev.log()
    );
    assert!(dev.log().contains("forced stop"), "{}", dev.log());
    assert!(!alive(pid), "the forced stop killed the task");
}
