//! Stacks and start order at deploy: what a deploy may not do to the services already there
//! (take over another stack's service without `force`, take a node's name, depend on a service
//! that is nowhere, close a dependency cycle), `DELETE /v1/stacks/{stack}`, and the dry run's
//! word on which replicas would wait.

use std::collections::{BTreeMap, BTreeSet};

use api::{ApiError, DeployRequest, Problem, ServiceSummary, Waiting};
use axum::extract::State;
use axum::http::StatusCode;
use httpd::Path;
use spec::ServiceSpec;
use store::{Command, Response as Applied};

use crate::answer::{Answer, Fail, Json, unavailable};
use crate::{Server, now};

/// Every problem `req` has with the services and nodes there are, as a refusal: 409 when a
/// service would replace one of another stack (which `force` allows), 400 otherwise.
pub(crate) fn check(s: &store::State, req: &DeployRequest) -> Result<(), Fail> {
    let clashes = if req.force {
        Vec::new()
    } else {
        other_owners(s, &req.services)
    };
    let mut problems = node_names(s, &req.services);
    problems.extend(published_clashes(s, &req.services));
    let deployed: BTreeMap<&str, &ServiceSpec> = (s.services.iter())
        .filter(|(_, svc)| !svc.removing)
        .map(|(name, svc)| (name.as_str(), &svc.spec))
        .collect();
    let dependencies = spec::check_dependencies(&req.services, &deployed, false);
    problems.extend(dependencies.into_iter().map(|p| Problem {
        path: p.path,
        message: p.message,
    }));
    if !problems.is_empty() {
        problems.extend(clashes);
        return Err(Fail::invalid(
            "the deploy was refused; nothing was changed",
            problems,
        ));
    }
    if !clashes.is_empty() {
        return Err(Fail(
            StatusCode::CONFLICT,
            ApiError {
                error: "the deploy would replace services of another stack; nothing was \
                        changed (deploy with --force to replace them, or with -p NAME under \
                        another stack name)"
                    .into(),
                problems: clashes,
            },
        ));
    }
    Ok(())
}

/// Ports the routing mesh takes on every node that another service takes too: a published port
/// published again or bound as a fixed TCP host port (the mesh's listener on every address
/// would take it from the task), either way round.
fn published_clashes(s: &store::State, specs: &[ServiceSpec]) -> Vec<Problem> {
    let replaced: BTreeSet<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    let deployed = (s.services.values())
        .filter(|svc| !svc.removing && !replaced.contains(svc.spec.name.as_str()))
        .map(|svc| &svc.spec);
    let everyone: Vec<&ServiceSpec> = deployed.chain(specs).collect();
    let mut problems = Vec::new();
    for spec in specs {
        let others = || everyone.iter().filter(|other| other.name != spec.name);
        for (i, port) in spec.ports.iter().enumerate() {
            if let Some(publish) = port.publish {
                let taken = others().find_map(|other| {
                    let how = other.ports.iter().find_map(|p| takes(p, publish))?;
                    Some((other.name.clone(), how))
                });
                if let Some((other, how)) = taken {
                    problems.push(Problem {
                        path: format!("{}.ports[{i}].publish", spec.name),
                        message: format!(
                            "port {publish} is published on every node, and service {other:?} \
                             {how}: publish another port"
                        ),
                    });
                }
            }
            // The other way round: a fixed host port that another service publishes.
            if let Some(host) = port.host_port.filter(|_| !port.protocol.is_udp()) {
                let by = others().find_map(|other| {
                    let p = other.ports.iter().find(|p| p.publish == Some(host))?;
                    Some((other.name.clone(), p.name.clone()))
                });
                if let Some((other, name)) = by {
                    problems.push(Problem {
                        path: format!("{}.ports[{i}].host_port", spec.name),
                        message: format!(
                            "port {host} is published on every node by service {other:?} (port \
                             {name:?}): give this one another host port"
                        ),
                    });
                }
            }
        }
    }
    problems
}

/// How `port` takes the port number `publish` on every node, if it does.
fn takes(port: &spec::PortSpec, publish: u16) -> Option<String> {
    if port.publish == Some(publish) {
        Some(format!("publishes it too (port {:?})", port.name))
    } else if !port.protocol.is_udp() && port.host_port == Some(publish) {
        Some(format!(
            "binds it as a fixed host port (port {:?})",
            port.name
        ))
    } else {
        None
    }
}

/// The specs that would replace a service of the same name deployed in another stack, or in
/// none: a Compose `web` never silently takes the place of a native one.
fn other_owners(s: &store::State, specs: &[ServiceSpec]) -> Vec<Problem> {
    let owner = |stack: &Option<String>| match stack {
        Some(stack) => format!("stack {stack:?}"),
        None => "no stack".to_string(),
    };
    (specs.iter())
        .filter_map(|spec| {
            let there = s.services.get(&spec.name).filter(|svc| !svc.removing)?;
            (there.spec.stack != spec.stack).then(|| Problem {
                path: spec.name.clone(),
                message: format!(
                    "{:?} is already a service of {}; this deploy, of {}, would replace it",
                    spec.name,
                    owner(&there.spec.stack),
                    owner(&spec.stack)
                ),
            })
        })
        .collect()
}

/// A service named as a node (whole or by its name in its stack) could not be told apart from
/// it by the tasks that look either up by name.
fn node_names(s: &store::State, specs: &[ServiceSpec]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for spec in specs {
        let names: BTreeSet<&str> = [spec.name.as_str(), spec.short_name()].into();
        for name in names.into_iter().filter(|n| s.nodes.contains_key(*n)) {
            problems.push(Problem {
                path: format!("{}.name", spec.name),
                message: format!(
                    "{name:?} is the name of a node: tasks find services and nodes by name and \
                     could not tell them apart; choose another name"
                ),
            });
        }
    }
    problems
}

/// What the scheduler would say, right after the deploy, of the deployed services' replicas
/// that cannot be placed: a fixed host port no node has free, no room, a dependency not ready.
/// `copy` is the state the deploy was applied to (services only); tasks and nodes are `s`'s.
pub(crate) fn waiting(
    s: &store::State,
    copy: &store::State,
    deployed: &BTreeSet<String>,
) -> Vec<Waiting> {
    let plan = scheduler::plan_services(&copy.services, &s.tasks, &s.nodes, deployed, now());
    (plan.pending.into_iter())
        .map(|(service, reason)| Waiting { service, reason })
        .collect()
}

/// Remove every service of a stack: stop their tasks, then forget them.
#[utoipa::path(delete, path = "/v1/stacks/{stack}",
    params(("stack" = String, Path, description = "Stack name")),
    responses(
        (status = 200, description = "The stack's services, now removing", body = Vec<ServiceSummary>),
        (status = 404, description = "No service is in the stack", body = ApiError)))]
pub(crate) async fn remove_stack(
    State(ctx): State<Server>,
    Path(stack): Path<String>,
) -> Answer<Vec<ServiceSummary>> {
    let before = ctx
        .state
        .read(|s| crate::routes::stack_summaries(s, &stack));
    if before.is_empty() {
        return Err(no_stack(&stack));
    }
    let command = Command::RemoveStack {
        stack: stack.clone(),
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::NotFound(_) => Err(no_stack(&stack)),
        _ => Ok(Json(
            before
                .into_iter()
                .map(|svc| ServiceSummary {
                    removing: true,
                    ..svc
                })
                .collect(),
        )),
    }
}

fn no_stack(stack: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no service is in stack {stack:?} (see `outpost services`)"),
    )
}
