//! Who is calling, and what they may do. The caller is found from the TLS client certificate
//! (a node: known by its fingerprint in the replicated trust, so `node rm` revokes it) or the
//! bearer token (the admin credential); what each may do follows from that, whatever path it
//! calls:
//!
//! - the admin may do everything; so may a server (it forwards what it was asked);
//! - an agent may register, heartbeat, report, read assignments and the secrets and configs
//!   its tasks use (checked again by the handler) for its own node only,
//!   and read the group's servers (`GET /v1/cluster`), to carry on through another, and the
//!   endpoint list its load balancer serves (`GET /v1/endpoints`), and which nodes hold an
//!   image it lacks (`GET /v1/image-sources`), and which images the cluster keeps
//!   (`GET /v1/images/kept`), before it collects its store;
//! - only servers may call the Raft RPCs;
//! - joining (`POST /v1/join`) needs no caller: its secret is in the body.
//!
//! A refusal is 401 (no credential, a wrong or revoked one) or 403 (a credential that may not
//! do this), saying what was wrong and what to do, and nothing is changed.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use httpd::{Fail, PeerCertificate};

use crate::Server;

/// Who sent a request; put in its extensions for the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Server(String),
    Agent(String),
    /// No credential: only joining is open to it.
    Anonymous,
}

/// The header in which a server forwarding a request to the leader names the caller it
/// checked, so the leader decides by that caller and not by the forwarding server's own
/// certificate. Believed only from a server's certificate.
pub const ON_BEHALF: &str = "outpost-caller";

impl Caller {
    /// How [`ON_BEHALF`] says it.
    pub fn header(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Server(node) => format!("server:{node}"),
            Caller::Agent(node) => format!("agent:{node}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    fn parse(text: &str) -> Option<Caller> {
        match text.split_once(':') {
            Some(("server", node)) => Some(Caller::Server(node.into())),
            Some(("agent", node)) => Some(Caller::Agent(node.into())),
            None if text == "admin" => Some(Caller::Admin),
            None if text == "anonymous" => Some(Caller::Anonymous),
            _ => None,
        }
    }
}

/// The caller a forwarding server named, if the request carries one.
fn on_behalf(req: &Request) -> Option<Caller> {
    let value = req.headers().get(ON_BEHALF)?.to_str().ok()?;
    Caller::parse(value.trim())
}

/// What a request needs of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Nothing,
    Admin,
    /// Registering: an agent for the node its body names (checked by the handler).
    Register,
    /// A route of one node's agent.
    Node(String),
    /// Any node of the cluster: the group's servers, which an agent learns to fail over.
    Member,
    Server,
}

fn need(method: &Method, path: &str) -> Need {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "v1", "join"] => Need::Nothing,
        ["", "v1", "raft", ..] => Need::Server,
        ["", "v1", "nodes"] if method == Method::POST => Need::Register,
        ["", "v1", "cluster" | "endpoints" | "image-sources"] if method == Method::GET => {
            Need::Member
        }
        // Before it collects its image store: what the cluster keeps.
        ["", "v1", "images", "kept"] if method == Method::GET => Need::Member,
        [
            "",
            "v1",
            "nodes",
            name,
            "heartbeat" | "status" | "assignments",
        ] => Need::Node((*name).to_string()),
        // A value's read is checked again by its handler: a task on the node must use it.
        ["", "v1", "nodes", name, "secrets" | "configs", _] if method == Method::GET => {
            Need::Node((*name).to_string())
        }
        _ => Need::Admin,
    }
}

/// The caller of a request: its certificate if it sent one, else its bearer token.
fn caller(ctx: &Server, req: &Request) -> Result<Caller, Fail> {
    let cert = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|c| c.0.as_ref());
    if let Some(cert) = cert {
        let fingerprint = pki::tls::fingerprint(cert);
        let known = ctx.state.certificate(&fingerprint);
        return match known {
            Some((role, node)) if role == "server" => {
                Ok(on_behalf(req).unwrap_or(Caller::Server(node)))
            }
            Some((_, node)) => Ok(Caller::Agent(node)),
            None => Err(Fail::new(
                StatusCode::UNAUTHORIZED,
                "this node's certificate is not one the cluster knows: it was revoked (`outpost \
                 node rm`) or issued by another cluster; remove the node's certificate \
                 (node.pem) from its data dir and join again with a join token",
            )),
        };
    }
    if req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_none()
    {
        return Ok(Caller::Anonymous);
    }
    let admin = ctx
        .state
        .read(|s| s.token_digest("admin").map(str::to_string));
    // This server's own copy of the admin credential counts too, before its digest committed.
    let local = httpd::check_bearer(req.headers(), &ctx.token);
    let replicated = admin.as_deref().is_some_and(|digest| {
        bearer(req).is_some_and(|secret| pki::secret_matches(secret, digest))
    });
    match local {
        Ok(()) => Ok(Caller::Admin),
        Err(_) if replicated => Ok(Caller::Admin),
        Err(e) => Err(Fail::new(StatusCode::UNAUTHORIZED, e.to_string())),
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `caller` may do what `need` asks; the refusal says why and what to do. `plain`: a
/// server without TLS (an embedder's, or a test's), where the one token is every credential.
fn allow(caller: &Caller, need: &Need, plain: bool) -> Result<(), Fail> {
    let forbidden = |message: String| Err(Fail::new(StatusCode::FORBIDDEN, message));
    match (caller, need) {
        (Caller::Admin, Need::Server) if !plain => forbidden(
            "only servers may call the Raft RPCs, with their certificates; the admin token may not"
                .into(),
        ),
        (_, Need::Nothing) | (Caller::Admin | Caller::Server(_), _) => Ok(()),
        (Caller::Agent(_), Need::Register | Need::Member) => Ok(()),
        (Caller::Agent(me), Need::Node(node)) if me == node => Ok(()),
        (Caller::Agent(me), Need::Node(node)) => forbidden(format!(
            "the certificate of node {me} may not act for node {node}: an agent registers, \
             heartbeats, reports and reads assignments only for itself"
        )),
        (Caller::Agent(me), Need::Server) => forbidden(format!(
            "only servers may call the Raft RPCs; this is the certificate of agent {me}"
        )),
        (Caller::Agent(me), Need::Admin) => forbidden(format!(
            "the certificate of agent {me} may not do this: it needs the admin token (--token \
             or OUTPOST_TOKEN; `outpost token show admin` on a server)"
        )),
        (Caller::Anonymous, Need::Server) => Err(Fail::new(
            StatusCode::UNAUTHORIZED,
            "only servers may call the Raft RPCs: connect with a server's certificate",
        )),
        (Caller::Anonymous, _) => Err(Fail::new(
            StatusCode::UNAUTHORIZED,
            httpd::BearerError::Missing.to_string(),
        )),
    }
}

/// How a server is named that calls the Raft RPCs of one still catching up.
const CATCHING_UP: &str = "a server of the group";

/// A server that joined a moment ago has applied none of the group's log, so it knows no
/// certificate, not even the leader's that is to send it that log. Until it learns the first,
/// a server certificate of the cluster's CA (the TLS handshake checked the chain) may call its
/// Raft RPCs; every other route still needs a known certificate.
fn catching_up(ctx: &Server, req: &Request) -> bool {
    let server_cert = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|c| c.0.as_ref())
        .is_some_and(|cert| pki::tls::has_role(cert, pki::NodeRole::Server));
    server_cert && !ctx.state.knows_certificates()
}

/// Middleware: finds the caller, refuses what it may not do, and hands it to the handler.
pub async fn check(State(ctx): State<Server>, mut req: Request, next: Next) -> Response {
    let plain = ctx.trust.is_none();
    let need = match need(req.method(), req.uri().path()) {
        // A plain server issues no certificates: joining it is behind the token like the rest.
        Need::Nothing if plain => Need::Admin,
        need => need,
    };
    let caller = match caller(&ctx, &req) {
        Ok(c) => c,
        Err(fail) if need == Need::Nothing => {
            // A stale certificate does not stop a node from joining again.
            drop(fail);
            Caller::Anonymous
        }
        Err(_) if need == Need::Server && catching_up(&ctx, &req) => {
            Caller::Server(CATCHING_UP.into())
        }
        Err(fail) => return fail.into_response(),
    };
    if let Err(fail) = allow(&caller, &need, plain) {
        return fail.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_route_needs() {
        assert_eq!(need(&Method::POST, "/v1/join"), Need::Nothing);
        assert_eq!(need(&Method::POST, "/v1/raft/vote"), Need::Server);
        assert_eq!(need(&Method::POST, "/v1/nodes"), Need::Register);
        assert_eq!(need(&Method::GET, "/v1/nodes"), Need::Admin);
        assert_eq!(need(&Method::GET, "/v1/cluster"), Need::Member);
        assert_eq!(need(&Method::DELETE, "/v1/nodes/a"), Need::Admin);
        for route in ["heartbeat", "status", "assignments"] {
            let path = format!("/v1/nodes/a/{route}");
            assert_eq!(need(&Method::POST, &path), Need::Node("a".into()));
        }
        assert_eq!(need(&Method::POST, "/v1/services"), Need::Admin);
        assert_eq!(
            need(&Method::GET, "/v1/nodes/a/secrets/pw"),
            Need::Node("a".into())
        );
        assert_eq!(
            need(&Method::GET, "/v1/nodes/a/configs/c"),
            Need::Node("a".into())
        );
        assert_eq!(need(&Method::DELETE, "/v1/nodes/a/secrets/pw"), Need::Admin);
        assert_eq!(need(&Method::GET, "/v1/secrets"), Need::Admin);
        assert_eq!(need(&Method::GET, "/v1/tokens/agent"), Need::Admin);
    }

    #[test]
    fn an_agent_acts_only_for_itself() {
        let a = Caller::Agent("a".into());
        assert!(allow(&a, &Need::Node("a".into()), false).is_ok());
        assert!(allow(&a, &Need::Register, false).is_ok());
        assert!(allow(&a, &Need::Member, false).is_ok());
        for need in [Need::Node("b".into()), Need::Server, Need::Admin] {
            assert_eq!(
                allow(&a, &need, false).unwrap_err().0,
                StatusCode::FORBIDDEN
            );
        }
        assert!(allow(&Caller::Admin, &Need::Node("b".into()), false).is_ok());
        assert!(allow(&Caller::Server("s".into()), &Need::Server, false).is_ok());
        assert!(allow(&Caller::Admin, &Need::Server, false).is_err());
        assert!(allow(&Caller::Admin, &Need::Server, true).is_ok());
        assert_eq!(
            allow(&Caller::Anonymous, &Need::Server, false)
                .unwrap_err()
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert!(allow(&Caller::Anonymous, &Need::Nothing, false).is_ok());
    }
}
