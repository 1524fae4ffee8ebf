//! Stacks and start order: how a stack is named (as `docker compose` names a project), the
//! rules for a service's name within one, names no service may take, and the checks of
//! `depends_on` over a set of services (every dependency known, no cycle).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Problem;
use crate::types::{Condition, RestartPolicy, ServiceSpec};
use crate::validate::{MAX_NAME_LEN, dns_label};

/// Names no service may have, alone or inside a stack: tasks find services as `<name>.outpost`
/// and their endpoints as `tasks.<name>`.
pub const RESERVED_NAMES: &[&str] = &["outpost", "tasks"];

/// The longest stack name: a service of it still needs `_` and a one-letter name.
pub const MAX_STACK_LEN: usize = MAX_NAME_LEN - 2;

/// `docker compose`'s normal form of a project name (compose-go's `NormalizeProjectName`):
/// lower-cased, every character but `a-z`, `0-9`, `_` and `-` dropped, then leading `_` and `-`
/// trimmed. Used for a Compose file's `name:` and its directory's name.
pub fn normalize_stack_name(name: &str) -> String {
    let kept: String = (name.to_lowercase().chars())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

/// Whether `name` may name a stack: what `docker compose -p` accepts (lowercase letters,
/// digits, `-` and `_`, starting with a letter or digit), at most [`MAX_STACK_LEN`] long.
pub fn check_stack_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a stack name cannot be empty".to_string());
    }
    if name.len() > MAX_STACK_LEN {
        return Err(format!(
            "stack name {name:?} is longer than {MAX_STACK_LEN} characters"
        ));
    }
    let chars_ok = (name.bytes())
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let starts_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !chars_ok || !starts_ok {
        return Err(format!(
            "{name:?} is not a valid stack name: use lowercase letters, digits, '-' and '_', \
             starting with a letter or digit (as `docker compose -p` does)"
        ));
    }
    Ok(())
}

/// A service's name: `<stack>_<short>` with `short` a DNS label in a stack; outside one, DNS
/// labels joined by `_` (so a name `docker stack deploy` made, `shop_web`, is accepted).
pub(crate) fn check_service_name(name: &str, stack: Option<&str>) -> Result<(), String> {
    if name.is_empty() {
        return Err("\"\" is empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{name:?} is longer than {MAX_NAME_LEN} characters"));
    }
    let short = match stack {
        Some(stack) => {
            let prefix = format!("{stack}_");
            let Some(short) = name.strip_prefix(&prefix) else {
                return Err(format!(
                    "{name:?} is not a name of stack {stack:?}: its services are named \
                     \"{stack}_<name>\""
                ));
            };
            dns_label(short).map_err(|why| format!("{short:?} {why}"))?;
            short
        }
        None => {
            // An empty part (`a__b`, `_a`) fails as `-a` would: not a valid name.
            for part in name.split('_') {
                let why = match part.is_empty() {
                    true => dns_label("-").err(),
                    false => dns_label(part).err(),
                };
                if let Some(why) = why {
                    return Err(format!("{name:?} {why}"));
                }
            }
            name
        }
    };
    if RESERVED_NAMES.contains(&short) || RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "{short:?} is reserved: tasks find services as `<name>.outpost` and their \
             endpoints as `tasks.<name>`; choose another name"
        ));
    }
    Ok(())
}

/// Checks the `depends_on` of `specs`, services deployed together, against each other and the
/// services `deployed` already (a spec replaces the deployed service of its name): every
/// dependency is one of them, none is completed while it restarts always, and no cycle goes
/// through `specs`. With `unknown_ok`, a dependency on a service not in either is let through
/// (a native file may depend on a service deployed later; the server checks again).
pub fn check_dependencies(
    specs: &[ServiceSpec],
    deployed: &BTreeMap<&str, &ServiceSpec>,
    unknown_ok: bool,
) -> Vec<Problem> {
    let mut all: BTreeMap<&str, &ServiceSpec> = deployed.clone();
    all.extend(specs.iter().map(|s| (s.name.as_str(), s)));
    let mut problems = Vec::new();
    for spec in specs {
        for (dep, condition) in &spec.depends_on {
            let at = format!("{}.depends_on.{}", spec.name, short_in(spec, dep));
            match all.get(dep.as_str()) {
                None if unknown_ok => {}
                None => problems.push(Problem::new(
                    at,
                    format!(
                        "{} depends on {dep:?}, which is not deployed and not in this deploy: \
                         deploy it too, or remove the dependency",
                        spec.name
                    ),
                )),
                Some(target)
                    if *condition == Condition::ServiceCompletedSuccessfully
                        && target.restart.policy == RestartPolicy::Always =>
                {
                    problems.push(Problem::new(
                        at,
                        format!(
                            "{} waits for {dep:?} to complete, but {dep:?} restarts always and \
                             so never completes: give it `restart: on-failure` (or `no`)",
                            spec.name
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    problems.extend(cycles(specs, &all));
    problems
}

/// The name `dep` is written as in `spec`'s `depends_on`: short inside a stack.
fn short_in<'a>(spec: &ServiceSpec, dep: &'a str) -> &'a str {
    crate::types::stack_short_name(dep, spec.stack.as_deref())
}

/// One problem per dependency cycle through `specs`, naming its services in order.
fn cycles(specs: &[ServiceSpec], all: &BTreeMap<&str, &ServiceSpec>) -> Vec<Problem> {
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut problems = Vec::new();
    for spec in specs {
        let mut path = vec![spec.name.clone()];
        let Some(cycle) = find_cycle(&spec.name, all, &mut path, &mut BTreeSet::new()) else {
            continue;
        };
        // The same cycle found from another of its services is reported once.
        let mut key = cycle[..cycle.len() - 1].to_vec();
        key.sort();
        if reported.insert(key) {
            problems.push(Problem::new(
                format!("{}.depends_on", cycle[0]),
                format!(
                    "a dependency cycle: {}; no service of it could ever start",
                    cycle.join(" → ")
                ),
            ));
        }
    }
    problems
}

/// A cycle back to `path[0]`, as the names along it (first and last the same); depth-first,
/// each service expanded once.
fn find_cycle(
    at: &str,
    all: &BTreeMap<&str, &ServiceSpec>,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let spec = all.get(at)?;
    for dep in spec.depends_on.keys() {
        if *dep == path[0] {
            let mut cycle = path.clone();
            cycle.push(dep.clone());
            return Some(cycle);
        }
        if !seen.insert(dep.clone()) {
            continue;
        }
        path.push(dep.clone());
        if let Some(cycle) = find_cycle(dep, all, path, seen) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, deps: &[(&str, Condition)]) -> ServiceSpec {
        let mut s = ServiceSpec::process(name, &["app"]);
        s.depends_on = deps.iter().map(|(d, c)| (d.to_string(), *c)).collect();
        s
    }

    fn messages(problems: Vec<Problem>) -> Vec<String> {
        problems.iter().map(Problem::to_string).collect()
    }

    #[test]
    fn names_are_normalised_as_docker_compose_does() {
        assert_eq!(normalize_stack_name("My App_2"), "myapp_2");
        assert_eq!(normalize_stack_name("_-shop.v2"), "shopv2");
        assert_eq!(normalize_stack_name("ÄÖ"), "");
        assert!(check_stack_name("shop_2-a").is_ok());
        assert!(check_stack_name("9lives").is_ok());
        for bad in [
            "",
            "Shop",
            "-shop",
            "shop.v2",
            &"s".repeat(MAX_STACK_LEN + 1),
        ] {
            assert!(check_stack_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stack_service_is_the_stack_an_underscore_and_a_dns_label() {
        assert!(check_service_name("shop_web", Some("shop")).is_ok());
        assert!(check_service_name("my_shop_web", Some("my_shop")).is_ok());
        assert!(
            check_service_name("shop_web", None).is_ok(),
            "stack-less, by hand"
        );
        let wrong = check_service_name("web", Some("shop")).unwrap_err();
        assert!(wrong.contains("\"shop_<name>\""), "{wrong}");
        assert!(check_service_name("shop_we_b", Some("shop")).is_err());
        assert!(check_service_name("shop__web", None).is_err());
        assert!(check_service_name("Web", None).is_err());
    }

    #[test]
    fn reserved_names_are_refused_alone_and_in_a_stack() {
        for (name, stack) in [
            ("tasks", None),
            ("outpost", None),
            ("shop_tasks", Some("shop")),
        ] {
            let why = check_service_name(name, stack).unwrap_err();
            assert!(why.contains("is reserved"), "{name}: {why}");
        }
    }

    #[test]
    fn an_unknown_dependency_is_named_unless_allowed() {
        let specs = [svc("web", &[("db", Condition::ServiceHealthy)])];
        assert_eq!(
            messages(check_dependencies(&specs, &BTreeMap::new(), false)),
            [
                "web.depends_on.db: web depends on \"db\", which is not deployed and not in this \
                 deploy: deploy it too, or remove the dependency"
            ]
        );
        assert!(check_dependencies(&specs, &BTreeMap::new(), true).is_empty());
        let db = svc("db", &[]);
        let deployed = BTreeMap::from([("db", &db)]);
        assert!(check_dependencies(&specs, &deployed, false).is_empty());
    }

    #[test]
    fn a_cycle_is_reported_once_with_its_services_in_order() {
        let started = Condition::ServiceStarted;
        let specs = [
            svc("a", &[("b", started)]),
            svc("b", &[("c", started)]),
            svc("c", &[("a", started)]),
            svc("d", &[("a", started)]),
        ];
        assert_eq!(
            messages(check_dependencies(&specs, &BTreeMap::new(), false)),
            ["a.depends_on: a dependency cycle: a → b → c → a; no service of it could ever start"]
        );
        let own = [svc("a", &[("a", started)])];
        assert_eq!(
            messages(check_dependencies(&own, &BTreeMap::new(), false)),
            ["a.depends_on: a dependency cycle: a → a; no service of it could ever start"]
        );
    }

    #[test]
    fn a_cycle_through_a_deployed_service_counts() {
        let started = Condition::ServiceStarted;
        let old_b = svc("b", &[("a", started)]);
        let deployed = BTreeMap::from([("b", &old_b)]);
        let specs = [svc("a", &[("b", started)])];
        let got = messages(check_dependencies(&specs, &deployed, false));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("a → b → a"), "{got:?}");
        // The deploy's own b replaces the deployed one, which breaks the cycle.
        let specs = [svc("a", &[("b", started)]), svc("b", &[])];
        assert!(check_dependencies(&specs, &deployed, false).is_empty());
    }

    #[test]
    fn completion_of_a_service_that_always_restarts_is_refused() {
        let mut job = svc("migrate", &[]);
        let app = svc(
            "app",
            &[("migrate", Condition::ServiceCompletedSuccessfully)],
        );
        let got = messages(check_dependencies(
            &[app.clone(), job.clone()],
            &BTreeMap::new(),
            false,
        ));
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("restarts always"), "{got:?}");
        job.restart.policy = RestartPolicy::OnFailure;
        assert!(check_dependencies(&[app, job], &BTreeMap::new(), false).is_empty());
    }
}
