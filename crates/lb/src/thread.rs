//! The thread the proxies run on: one event loop of their own (a current-thread tokio
//! runtime), as an nginx or HAProxy worker is. A request's client connection, its endpoint
//! connection and its answer are then polled on one thread with no hand-over between threads,
//! and whatever else the process runs (the agent, in dev the server) never queues in front of
//! them. It also makes the comparison with one nginx worker a fair one. The README's Figures
//! give what a request costs this way and on a multi-threaded runtime.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::{Balancer, HttpOptions, TcpOptions};

/// How long the listeners still open when the thread is dropped have to close (each gives its
/// open connections `httpd`'s grace): then the thread ends whatever is left.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// The proxies' thread; dropping it stops the listeners it serves and ends the thread.
pub struct ProxyThread {
    handle: Handle,
    listeners: Mutex<JoinSet<()>>,
    stop: Option<oneshot::Sender<JoinSet<()>>>,
}

impl ProxyThread {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> std::io::Result<ProxyThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<JoinSet<()>>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async {
                    let Ok(mut listeners) = stopped.await else {
                        return;
                    };
                    let closed = async { while listeners.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(CLOSE_WITHIN, closed).await;
                });
            })?;
        Ok(ProxyThread {
            handle,
            listeners: Mutex::new(JoinSet::new()),
            stop: Some(stop),
        })
    }

    /// [`crate::serve_http`] on this thread. `listener` may belong to any runtime: it moves to
    /// this thread's.
    pub fn serve_http(
        &self,
        listener: TcpListener,
        balancer: Arc<Balancer>,
        options: HttpOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve(listener, move |listener| {
            crate::serve_http(listener, balancer, options, shutdown)
        })
    }

    /// [`crate::serve_tcp`] on this thread, as [`ProxyThread::serve_http`].
    pub fn serve_tcp(
        &self,
        listener: TcpListener,
        balancer: Arc<Balancer>,
        options: TcpOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve(listener, move |listener| {
            crate::serve_tcp(listener, balancer, options, shutdown)
        })
    }

    /// Moves `listener` to this thread's runtime and runs `serve` on it there.
    fn serve<F>(
        &self,
        listener: TcpListener,
        serve: impl FnOnce(TcpListener) -> F + Send + 'static,
    ) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = listener.into_std()?;
        self.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener).await,
                Err(e) => tracing::error!("the proxy thread cannot serve a listener: {e}"),
            }
        });
        Ok(())
    }

    fn spawn(&self, serve: impl Future<Output = ()> + Send + 'static) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        // Listeners that ended are reaped here, so a long-lived mesh keeps no record of them.
        while listeners.try_join_next().is_some() {}
        listeners.spawn_on(serve, &self.handle);
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        let listeners = std::mem::take(self.listeners.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let Some(stop) = self.stop.take() {
            // The thread waits for the listeners, whose shutdown futures the caller resolves.
            let _ = stop.send(listeners);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Endpoint};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn backend() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_listener_from_another_runtime_is_served_until_its_shutdown() {
        let backend = backend().await;
        let balancer = Balancer::new(Config::default(), &[Endpoint::ready("b", backend)]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = ProxyThread::start("test-proxy").unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let until = async move {
            let _ = stopped.await;
        };
        (thread.serve_http(listener, balancer, HttpOptions::default(), until)).unwrap();
        let answer = get(addr).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        drop(stop);
        drop(thread);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} still accepts after the thread was dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
