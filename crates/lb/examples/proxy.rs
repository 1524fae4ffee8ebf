//! `proxy LISTEN BACKEND...`: the HTTP load balancer alone, round robin over fixed backends with
//! the default config, until Ctrl-C or SIGTERM. `bench/lb` measures it this way beside the
//! agent's published port: the proxy without the agent and server that share its runtime
//! there, and passive ejection without the control plane's endpoint updates.
//!
//! The proxy runs on a [`lb::ProxyThread`], as the agent's proxies do: one thread. It prints
//! the address it listens on once it does.
//!
//! ```text
//! cargo run --release -p lb --example proxy -- 127.0.0.1:8000 127.0.0.1:8081 127.0.0.1:8082
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use lb::{Balancer, Config, Endpoint, HttpOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Result<Vec<SocketAddr>, _> = args.iter().map(|a| a.parse()).collect();
    let addrs = match parsed {
        Ok(addrs) if addrs.len() >= 2 => addrs,
        _ => {
            eprintln!("usage: proxy LISTEN BACKEND... (addresses as IP:PORT)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(addrs[0], &addrs[1..])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: cannot listen on {}: {e}", addrs[0]);
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr, backends: &[SocketAddr]) -> std::io::Result<()> {
    let endpoints: Vec<Endpoint> = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| Endpoint::ready(format!("backend-{i}"), *addr))
        .collect();
    let balancer = Balancer::new(Config::default(), &endpoints);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "proxy: listening on {} with 1 proxy thread",
        listener.local_addr()?
    );
    let proxies = lb::ProxyThread::start("proxy")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let until = async move {
        let _ = stopped.await;
    };
    proxies.serve_http(listener, balancer, HttpOptions::default(), until)?;
    shutdown().await;
    drop(stop);
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; if the handlers cannot be set, never (the default action
/// of both signals then ends the process anyway).
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
