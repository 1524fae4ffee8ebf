//! A cap on the blocking queries one client holds open at once: each ties up a task and a
//! connection for up to the longest wait, so a client (one remote address) gets a bounded share.
//! The first query over the cap is answered 429.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::answer::Fail;

/// 16: an agent holds one assignment watch, a person a few `events -f`; far more from one
/// address is a leak or an attack.
pub const DEFAULT_PER_CLIENT: usize = 16;

/// Blocking queries open per client address.
#[derive(Debug, Clone)]
pub struct Clients {
    per_client: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Clients {
    pub fn new(per_client: usize) -> Clients {
        Clients {
            per_client,
            open: Arc::default(),
        }
    }

    /// A slot for `client`, held until dropped; `None` when it holds all of its own already.
    fn take(&self, client: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(Slot {
            clients: self.clone(),
            client,
        })
    }
}

struct Slot {
    clients: Clients,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Middleware for the blocking routes.
pub async fn limit(State(clients): State<Clients>, req: Request, next: Next) -> Response {
    // Requests not served by `httpd::serve` (none in production) share one bucket.
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let Some(_slot) = clients.take(client) else {
        return Fail::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{client} has {} blocking queries open, the most one client may; close one or retry later",
                clients.per_client
            ),
        )
        .into_response();
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_own_bounded_share() {
        let clients = Clients::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = clients.take(a).unwrap();
        let _second = clients.take(a).unwrap();
        assert!(clients.take(a).is_none(), "a third of the same client");
        assert!(clients.take(b).is_some(), "another client is not affected");
        drop(first);
        assert!(clients.take(a).is_some(), "a finished query frees its slot");
    }

    #[test]
    fn finished_clients_are_forgotten() {
        let clients = Clients::new(1);
        drop(clients.take("10.0.0.1".parse().unwrap()));
        assert!(clients.open.lock().unwrap().is_empty());
    }
}
