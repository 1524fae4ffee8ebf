//! Secrets and configs in the state: stored as they arrive (a secret already sealed by the
//! server that took it), listed without values, and never removed while a service uses them.
//! A changed value is a new version of each service that uses it, as a template change is,
//! so its tasks are replaced and read the new value.

use api::{Level, StoredObject, Timestamp};
use spec::ObjectKind;

use super::{Response, State};

impl State {
    pub(super) fn put_objects(&mut self, objects: &[StoredObject], time: Timestamp) -> Response {
        for object in objects {
            self.put_object(object, time);
        }
        Response::Ok
    }

    fn put_object(&mut self, object: &StoredObject, time: Timestamp) {
        let key = StoredObject::key(object.kind, &object.name);
        let before = self.objects.get(&key);
        if before.is_some_and(|b| b.digest == object.digest) {
            return;
        }
        let created_at = before.map_or(time, |b| b.created_at);
        let updated = before.is_some();
        self.objects.insert(
            key,
            StoredObject {
                created_at,
                updated_at: time,
                ..object.clone()
            },
        );
        let (kind, name) = (object.kind, object.name.as_str());
        let (reason, verb) = match updated {
            true => (format!("{kind}-updated"), "updated"),
            false => (format!("{kind}-created"), "created"),
        };
        let message = format!("{kind} {name} {verb} ({} bytes)", object.size);
        self.event(time, Level::Info, &reason, None, None, None, message);
        if updated {
            self.new_versions_using(kind, name, time);
        }
    }

    /// Every service that uses the object gets a new version, as a template change gives.
    fn new_versions_using(&mut self, kind: ObjectKind, name: &str, time: Timestamp) {
        for service in self.object_users(kind, name) {
            let Some(svc) = self.services.get_mut(&service) else {
                continue;
            };
            svc.updated_at = time;
            // The same spec with a new value is a new revision, rolled out as any other.
            let spec = svc.spec.clone();
            let changed = [format!("{kind} {name}")];
            self.new_revision(&service, spec, &changed, time);
            let version = self.services.get(&service).map_or(0, |s| s.version);
            self.placement_moved(&service);
            let message = format!("service updated to version {version} ({kind} {name} changed)");
            self.event(
                time,
                Level::Info,
                "updated",
                Some(&service),
                None,
                None,
                message,
            );
        }
    }

    pub(super) fn remove_object(
        &mut self,
        kind: ObjectKind,
        name: &str,
        time: Timestamp,
    ) -> Response {
        let key = StoredObject::key(kind, name);
        if !self.objects.contains_key(&key) {
            return Response::NotFound(format!("{kind} {name}"));
        }
        let users = self.object_users(kind, name);
        if !users.is_empty() {
            return Response::Refused(format!(
                "{kind} {name} is used by service {}: remove it from their {} (or remove the \
                 services) first",
                users.join(", "),
                kind.field()
            ));
        }
        self.objects.remove(&key);
        let message = format!("{kind} {name} removed");
        self.event(
            time,
            Level::Info,
            &format!("{kind}-removed"),
            None,
            None,
            None,
            message,
        );
        Response::Ok
    }

    /// The services (also those being removed, whose tasks may still start) that use it.
    pub fn object_users(&self, kind: ObjectKind, name: &str) -> Vec<String> {
        self.services
            .values()
            .filter(|svc| svc.spec.uses(kind, name))
            .map(|svc| svc.spec.name.clone())
            .collect()
    }

    pub fn object(&self, kind: ObjectKind, name: &str) -> Option<&StoredObject> {
        self.objects.get(&StoredObject::key(kind, name))
    }

    /// Whether a task placed on `node` and not lost uses it: what lets that node's agent read it.
    pub fn node_uses(&self, node: &str, kind: ObjectKind, name: &str) -> bool {
        self.tasks_on(node)
            .filter(|t| t.state != api::TaskState::Lost)
            .filter_map(|t| self.services.get(&t.service))
            .any(|svc| svc.spec.uses(kind, name))
    }
}

#[cfg(test)]
mod tests {
    use api::ChangeKind;
    use spec::{FileRef, ServiceSpec};

    use super::*;
    use crate::Command;

    const T: Timestamp = Timestamp(1_000);

    fn object(name: &str, value: &str) -> StoredObject {
        StoredObject {
            kind: ObjectKind::Secret,
            name: name.into(),
            data: value.as_bytes().to_vec(),
            size: value.len() as u64,
            digest: format!("d-{value}"),
            created_at: T,
            updated_at: T,
        }
    }

    fn apply(state: &mut State, command: Command) -> Response {
        let answer = state.apply(state.index + 1, &command);
        assert_eq!(state.check(), Ok(()));
        answer
    }

    fn put(state: &mut State, name: &str, value: &str) {
        let objects = vec![object(name, value)];
        apply(state, Command::PutObjects { objects, time: T });
    }

    fn web_using(secret: &str) -> Command {
        let mut spec = ServiceSpec::process("web", &["demo-app"]);
        spec.secrets = vec![FileRef::named(secret)];
        Command::Deploy {
            services: vec![spec],
            time: T,
        }
    }

    #[test]
    fn a_changed_value_is_a_new_version_of_its_users_and_the_same_value_is_nothing() {
        let mut state = State::default();
        put(&mut state, "pw", "one");
        let Response::Deployed(changes) = apply(&mut state, web_using("pw")) else {
            panic!("not deployed");
        };
        assert_eq!(changes[0].change, ChangeKind::Create);
        let events = state.events.len();
        put(&mut state, "pw", "one");
        assert_eq!(state.services["web"].version, 1);
        assert_eq!(
            state.events.len(),
            events,
            "the same value again changes nothing"
        );
        put(&mut state, "pw", "two");
        assert_eq!(state.services["web"].version, 2);
        put(&mut state, "other", "x");
        assert_eq!(state.services["web"].version, 2);
        let messages: Vec<&str> = state
            .events
            .iter()
            .map(|e| e.event.message.as_str())
            .collect();
        assert!(
            messages.contains(&"service updated to version 2 (secret pw changed)"),
            "{messages:?}"
        );
        assert!(
            !messages
                .iter()
                .any(|m| m.contains("one") || m.contains("two"))
        );
    }

    #[test]
    fn a_secret_in_use_is_not_removed_and_names_its_service() {
        let mut state = State::default();
        put(&mut state, "pw", "one");
        apply(&mut state, web_using("pw"));
        let remove = || Command::RemoveObject {
            kind: ObjectKind::Secret,
            name: "pw".into(),
            time: T,
        };
        let Response::Refused(why) = apply(&mut state, remove()) else {
            panic!("removed while in use");
        };
        assert!(why.contains("service web"), "{why}");
        assert!(state.object(ObjectKind::Secret, "pw").is_some());
        apply(&mut state, web_using("other"));
        assert_eq!(apply(&mut state, remove()), Response::Ok);
        assert!(state.object(ObjectKind::Secret, "pw").is_none());
        assert!(matches!(apply(&mut state, remove()), Response::NotFound(_)));
    }
}
