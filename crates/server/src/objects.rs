//! `outpost secret|config create|ls|rm` and the agent's read of a value its node's task uses.
//!
//! A secret is sealed with the cluster key (`pki::Vault`, derived from the CA key, so every
//! server opens what another sealed) before it is proposed: the log, the tables and the
//! snapshots hold it sealed. It is opened again only to answer
//! `GET /v1/nodes/{node}/secrets/{name}`, to that node's agent, while a task placed on that
//! node uses it. Listings show names, sizes, digests and users, never a value.

use api::{ObjectInfo, ObjectKind, ObjectUpload, ObjectValue, Problem, StoredObject};
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use httpd::Path;
use serde::Deserialize;
use spec::ServiceSpec;
use store::{Command, Response as Applied};

use crate::access::Caller;
use crate::answer::{Answer, Fail, Json, unavailable};
use crate::{Server, now};

/// How many hex digits of a digest listings show.
const DIGEST_SHOWN: usize = 12;

/// The body of `POST /v1/secrets` and `/v1/configs`.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateObject {
    pub name: String,
    /// The value, hex-encoded.
    #[serde(with = "api::hex_bytes")]
    #[schema(value_type = String)]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for CreateObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CreateObject({}, {} bytes)", self.name, self.data.len())
    }
}

/// The cluster key: the CA's on a TLS server; a plain server (an embedder's, a test's) has
/// no CA, and derives it from its token, which every server of its group shares.
fn vault(ctx: &Server) -> pki::Vault {
    match &ctx.trust {
        Some(trust) => trust.ca.vault(),
        None => pki::Vault::from_key_material(ctx.token.as_bytes()),
    }
}

/// Every problem of the uploads: names, sizes, one name given twice.
pub(crate) fn check_uploads(uploads: &[ObjectUpload]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, up) in uploads.iter().enumerate() {
        let path = format!("objects[{i}]");
        if let Err(why) = spec::check_object_name(&up.name) {
            problems.push(problem(&path, format!("the {} name {why}", up.kind)));
        }
        if up.data.len() > spec::MAX_OBJECT_SIZE {
            problems.push(problem(&path, too_large(up.kind, &up.name, up.data.len())));
        }
        if !seen.insert((up.kind, up.name.as_str())) {
            problems.push(problem(
                &path,
                format!("{} {} is given twice", up.kind, up.name),
            ));
        }
    }
    problems
}

fn too_large(kind: ObjectKind, name: &str, size: usize) -> String {
    format!(
        "{kind} {name} is {size} bytes, over the limit of {} bytes (500 KiB)",
        spec::MAX_OBJECT_SIZE
    )
}

fn problem(path: &str, message: String) -> Problem {
    Problem {
        path: path.into(),
        message,
    }
}

/// The references of `services` to secrets and configs that are neither stored nor uploaded
/// with them, each located by field path.
pub(crate) fn unknown_refs(
    ctx: &Server,
    services: &[ServiceSpec],
    uploads: &[ObjectUpload],
) -> Vec<Problem> {
    ctx.state.read(|s| {
        let mut problems = Vec::new();
        for svc in services {
            for kind in ObjectKind::ALL {
                for (i, r) in svc.file_refs(kind).iter().enumerate() {
                    let uploaded = uploads
                        .iter()
                        .any(|u| u.kind == kind && u.name == r.source);
                    if uploaded || s.object(kind, &r.source).is_some() {
                        continue;
                    }
                    let path = format!("{}.{}[{i}]", svc.name, kind.field());
                    let message = format!(
                        "no {kind} named {:?}: create it first with `outpost {kind} create {} -f FILE`",
                        r.source, r.source
                    );
                    problems.push(problem(&path, message));
                }
            }
            if let Some(name) = &svc.pull_secret {
                let uploaded = (uploads.iter())
                    .any(|u| u.kind == ObjectKind::Secret && &u.name == name);
                if !uploaded && s.object(ObjectKind::Secret, name).is_none() {
                    let message = format!(
                        "no secret named {name:?}: create it first from a Docker config with \
                         `outpost secret create {name} -f ~/.docker/config.json`"
                    );
                    problems.push(problem(&format!("{}.pull_secret", svc.name), message));
                }
            }
        }
        problems
    })
}

/// The uploads as the store keeps them: secrets sealed, digests made.
pub(crate) fn seal(ctx: &Server, uploads: Vec<ObjectUpload>) -> Result<Vec<StoredObject>, Fail> {
    let vault = vault(ctx);
    let time = now();
    uploads
        .into_iter()
        .map(|up| {
            let key = StoredObject::key(up.kind, &up.name);
            let (data, digest) = match up.kind {
                ObjectKind::Secret => {
                    let sealed = vault.seal(&key, &up.data).map_err(internal)?;
                    (sealed, vault.digest(&up.data))
                }
                ObjectKind::Config => {
                    let digest = pki::token::sha256_hex(&up.data);
                    (up.data, digest)
                }
            };
            Ok(StoredObject {
                kind: up.kind,
                name: up.name,
                size: u64::try_from(data_len(up.kind, &data)).unwrap_or(u64::MAX),
                data,
                digest,
                created_at: time,
                updated_at: time,
            })
        })
        .collect()
}

/// The plain value's length: a sealed one carries a nonce and a tag besides.
fn data_len(kind: ObjectKind, data: &[u8]) -> usize {
    match kind {
        ObjectKind::Secret => data.len().saturating_sub(12 + 16),
        ObjectKind::Config => data.len(),
    }
}

fn internal(e: pki::PkiError) -> Fail {
    Fail::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn info(s: &store::State, o: &StoredObject) -> ObjectInfo {
    ObjectInfo {
        kind: o.kind,
        name: o.name.clone(),
        size: o.size,
        digest: o.digest.chars().take(DIGEST_SHOWN).collect(),
        created_at: o.created_at,
        updated_at: o.updated_at,
        services: s.object_users(o.kind, &o.name),
    }
}

fn no_object(kind: ObjectKind, name: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no {kind} named {name:?} (see `outpost {kind} ls`)"),
    )
}

fn list(ctx: &Server, kind: ObjectKind) -> Json<Vec<ObjectInfo>> {
    Json(ctx.state.read(|s| {
        let prefix = StoredObject::key(kind, "");
        s.objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| info(s, o))
            .collect()
    }))
}

async fn create(ctx: &Server, kind: ObjectKind, req: CreateObject) -> Answer<ObjectInfo> {
    let upload = ObjectUpload {
        kind,
        name: req.name,
        data: req.data,
    };
    let problems = check_uploads(std::slice::from_ref(&upload));
    if !problems.is_empty() {
        let message = format!("the {kind} was refused; nothing was changed");
        return Err(Fail::invalid(message, problems));
    }
    let name = upload.name.clone();
    let objects = seal(ctx, vec![upload])?;
    let command = Command::PutObjects {
        objects,
        time: now(),
    };
    ctx.propose(command).await.map_err(unavailable)?;
    ctx.state
        .read(|s| s.object(kind, &name).map(|o| info(s, o)))
        .map(Json)
        .ok_or_else(|| no_object(kind, &name))
}

async fn remove(ctx: &Server, kind: ObjectKind, name: String) -> Answer<ObjectInfo> {
    let before = ctx
        .state
        .read(|s| s.object(kind, &name).map(|o| info(s, o)))
        .ok_or_else(|| no_object(kind, &name))?;
    let command = Command::RemoveObject {
        kind,
        name: name.clone(),
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::Ok => Ok(Json(before)),
        Applied::NotFound(_) => Err(no_object(kind, &name)),
        Applied::Refused(why) => Err(Fail::new(StatusCode::CONFLICT, why)),
        other => Err(Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected store answer {other:?}"),
        )),
    }
}

/// A value, to the agent of `node` only, and only while a task placed there uses it.
fn read_value(
    ctx: &Server,
    caller: &Caller,
    node: &str,
    kind: ObjectKind,
    name: &str,
) -> Answer<ObjectValue> {
    let plain = ctx.trust.is_none();
    if !plain && *caller != Caller::Agent(node.to_string()) {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            format!(
                "only the agent of node {node}, with its certificate, reads the values its tasks use"
            ),
        ));
    }
    let stored = ctx.state.read(|s| {
        let used = s.node_uses(node, kind, name);
        (used, s.object(kind, name).cloned())
    });
    let object = match stored {
        (false, _) => {
            return Err(Fail::new(
                StatusCode::FORBIDDEN,
                format!("no task on node {node} uses {kind} {name}, so the node may not read it"),
            ));
        }
        (true, None) => return Err(no_object(kind, name)),
        (true, Some(o)) => o,
    };
    let data = match kind {
        ObjectKind::Secret => vault(ctx)
            .open(&StoredObject::key(kind, name), &object.data)
            .map_err(internal)?,
        ObjectKind::Config => object.data,
    };
    Ok(Json(ObjectValue {
        kind,
        name: name.to_string(),
        digest: object.digest,
        data,
    }))
}

/// List secrets: names, sizes, digests and the services using each; never a value.
#[utoipa::path(get, path = "/v1/secrets", responses(
    (status = 200, description = "Every secret, by name", body = Vec<ObjectInfo>)))]
pub(crate) async fn list_secrets(State(ctx): State<Server>) -> Json<Vec<ObjectInfo>> {
    list(&ctx, ObjectKind::Secret)
}

/// Create a secret, or give it a new value (a new version of every service using it).
#[utoipa::path(post, path = "/v1/secrets", request_body = CreateObject, responses(
    (status = 200, description = "The secret, without its value", body = ObjectInfo)))]
pub(crate) async fn create_secret(
    State(ctx): State<Server>,
    httpd::Json(req): httpd::Json<CreateObject>,
) -> Answer<ObjectInfo> {
    create(&ctx, ObjectKind::Secret, req).await
}

/// Remove a secret; refused while a service uses it.
#[utoipa::path(delete, path = "/v1/secrets/{name}",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 200, description = "The secret removed", body = ObjectInfo),
        (status = 409, description = "A service still uses it", body = api::ApiError)))]
pub(crate) async fn remove_secret(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Answer<ObjectInfo> {
    remove(&ctx, ObjectKind::Secret, name).await
}

/// List configs.
#[utoipa::path(get, path = "/v1/configs", responses(
    (status = 200, description = "Every config, by name", body = Vec<ObjectInfo>)))]
pub(crate) async fn list_configs(State(ctx): State<Server>) -> Json<Vec<ObjectInfo>> {
    list(&ctx, ObjectKind::Config)
}

/// Create a config, or give it a new value (a new version of every service using it).
#[utoipa::path(post, path = "/v1/configs", request_body = CreateObject, responses(
    (status = 200, description = "The config, without its value", body = ObjectInfo)))]
pub(crate) async fn create_config(
    State(ctx): State<Server>,
    httpd::Json(req): httpd::Json<CreateObject>,
) -> Answer<ObjectInfo> {
    create(&ctx, ObjectKind::Config, req).await
}

/// Remove a config; refused while a service uses it.
#[utoipa::path(delete, path = "/v1/configs/{name}",
    params(("name" = String, Path, description = "Config name")),
    responses((status = 200, description = "The config removed", body = ObjectInfo),
        (status = 409, description = "A service still uses it", body = api::ApiError)))]
pub(crate) async fn remove_config(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Answer<ObjectInfo> {
    remove(&ctx, ObjectKind::Config, name).await
}

/// A secret's value, for the agent of a node whose task uses it.
#[utoipa::path(get, path = "/v1/nodes/{node}/secrets/{name}",
    params(("node" = String, Path, description = "Node name"), ("name" = String, Path, description = "Secret name")),
    responses((status = 200, description = "The value", body = ObjectValue),
        (status = 403, description = "No task on the node uses it", body = api::ApiError)))]
pub(crate) async fn node_secret(
    State(ctx): State<Server>,
    Extension(caller): Extension<Caller>,
    Path((node, name)): Path<(String, String)>,
) -> Answer<ObjectValue> {
    read_value(&ctx, &caller, &node, ObjectKind::Secret, &name)
}

/// A config's value, for the agent of a node whose task uses it.
#[utoipa::path(get, path = "/v1/nodes/{node}/configs/{name}",
    params(("node" = String, Path, description = "Node name"), ("name" = String, Path, description = "Config name")),
    responses((status = 200, description = "The value", body = ObjectValue),
        (status = 403, description = "No task on the node uses it", body = api::ApiError)))]
pub(crate) async fn node_config(
    State(ctx): State<Server>,
    Extension(caller): Extension<Caller>,
    Path((node, name)): Path<(String, String)>,
) -> Answer<ObjectValue> {
    read_value(&ctx, &caller, &node, ObjectKind::Config, &name)
}
