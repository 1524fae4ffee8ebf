//! [`Directory`]: which nodes exist and whose certificate is whose, kept beside the state.
//!
//! Every API request asks it (the caller's certificate, then for an agent's call whether its
//! node is known): 10,000 a second from 5,000 agents. Asked of the state, each of those reads
//! waited while an apply held the state's lock (tens of milliseconds under a steady load of
//! reports), and the runtime worker serving it waited too, so one apply stalled the whole API,
//! an operator's `ps` included. The directory has a lock of its own, held for one lookup or
//! for the few rows an applied batch changed.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use crate::state::{CERT_PREFIX, State};

/// Nodes and certificates as the applied state holds them; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    rows: RwLock<Rows>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Rows {
    nodes: HashSet<String>,
    /// Fingerprint → role and node.
    certificates: HashMap<String, (String, String)>,
}

impl Rows {
    fn of(state: &State) -> Rows {
        let mut rows = Rows::default();
        rows.sync(state, state.nodes.keys(), state.trust.keys());
        rows
    }

    /// Takes in the rows of `nodes` and `trust` named, as `state` now holds them.
    fn sync<'a>(
        &mut self,
        state: &State,
        nodes: impl Iterator<Item = &'a String>,
        trust: impl Iterator<Item = &'a String>,
    ) {
        for name in nodes {
            if state.nodes.contains_key(name) {
                self.nodes.insert(name.clone());
            } else {
                self.nodes.remove(name);
            }
        }
        for key in trust {
            let Some(fingerprint) = key.strip_prefix(CERT_PREFIX) else {
                continue;
            };
            match state.certificate(fingerprint) {
                Some((role, node)) => {
                    let owner = (role.to_string(), node.to_string());
                    self.certificates.insert(fingerprint.to_string(), owner);
                }
                None => {
                    self.certificates.remove(fingerprint);
                }
            }
        }
    }
}

impl Directory {
    /// Matches `state` again, row by row: after a state was loaded or replaced.
    pub(crate) fn reset(&self, state: &State) {
        let rows = Rows::of(state);
        *self.rows.write().unwrap_or_else(PoisonError::into_inner) = rows;
    }

    /// Takes in the rows an applied batch changed (`State`'s maps record them until the
    /// store takes them for the tables): called under the state's lock, before that.
    pub(crate) fn apply(&self, state: &State) {
        let (nodes, trust) = (state.nodes.changed(), state.trust.changed());
        if nodes.len() + trust.len() == 0 {
            return;
        }
        let mut rows = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        rows.sync(state, nodes.iter(), trust.iter());
    }

    pub(crate) fn knows_node(&self, name: &str) -> bool {
        self.read().nodes.contains(name)
    }

    pub(crate) fn certificate(&self, fingerprint: &str) -> Option<(String, String)> {
        self.read().certificates.get(fingerprint).cloned()
    }

    pub(crate) fn knows_certificates(&self) -> bool {
        !self.read().certificates.is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rows> {
        self.rows.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::register;
    use api::Timestamp;

    /// Applies each command as one batch, as the state machine does, keeping a directory.
    fn run(state: &mut State, directory: &Directory, commands: Vec<Command>) {
        for command in commands {
            state.apply(state.index + 1, &command);
            directory.apply(state);
            for (_, map) in state.stored_maps() {
                map.forget_changes();
            }
        }
    }

    fn cert(fingerprint: &str, node: &str) -> Command {
        Command::AddCertificate {
            fingerprint: fingerprint.into(),
            role: "agent".into(),
            node: node.into(),
            time: Timestamp(1_700_000_000_000),
        }
    }

    #[test]
    fn it_follows_nodes_and_certificates_batch_by_batch() {
        let (mut state, directory) = (State::default(), Directory::default());
        assert!(!directory.knows_certificates());
        run(
            &mut state,
            &directory,
            vec![
                register("a"),
                register("b"),
                cert("f1", "a"),
                cert("f2", "b"),
            ],
        );
        assert!(directory.knows_node("a") && directory.knows_node("b"));
        assert_eq!(
            directory.certificate("f1"),
            Some(("agent".into(), "a".into()))
        );
        let rm = Command::RemoveNode {
            node: "a".into(),
            time: Timestamp(1_700_000_000_001),
        };
        run(&mut state, &directory, vec![rm]);
        assert!(!directory.knows_node("a"));
        assert_eq!(directory.certificate("f1"), None, "revoked with its node");
        assert!(directory.knows_certificates());
        assert_eq!(*directory.read(), Rows::of(&state));
    }

    #[test]
    fn a_reset_matches_a_replaced_state() {
        let (mut state, directory) = (State::default(), Directory::default());
        run(
            &mut state,
            &directory,
            vec![register("old"), cert("f0", "old")],
        );
        let mut other = State::default();
        run(
            &mut other,
            &Directory::default(),
            vec![register("new"), cert("f9", "new")],
        );
        directory.reset(&other);
        assert!(!directory.knows_node("old") && directory.knows_node("new"));
        assert_eq!(directory.certificate("f0"), None);
        assert_eq!(*directory.read(), Rows::of(&other));
    }
}
