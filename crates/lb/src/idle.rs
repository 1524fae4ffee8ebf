//! The idle timeout: a stream wrapper that counts reads and writes that moved bytes, and a
//! watchdog that resolves once a whole timeout has passed without one. Counting costs one
//! relaxed increment per read or write and no clock read; the price is that an idle
//! connection is cut between one and two timeouts after its last byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much a connection has moved, shared by its streams and its watchdog.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Resolves once `timeout` has passed with nothing moved.
    pub async fn idle(&self, timeout: Duration) {
        let mut seen = self.0.load(Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let now = self.0.load(Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    pub fn watch<IO>(&self, io: IO) -> Watched<IO> {
        Watched {
            io,
            activity: self.clone(),
        }
    }

    fn note(&self) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// A stream whose traffic counts as its connection's [`Activity`].
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    activity: Activity,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.note();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.note();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.note();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_a_quiet_timeout() {
        let activity = Activity::default();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = activity.watch(a);
        let timeout = Duration::from_secs(10);
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(timeout).await }
        });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            a.write_all(b"x").await.unwrap();
            let mut byte = [0];
            b.read_exact(&mut byte).await.unwrap();
            assert!(!watchdog.is_finished(), "traffic every 6 s keeps it open");
        }
        let quiet_from = tokio::time::Instant::now();
        watchdog.await.unwrap();
        let quiet = quiet_from.elapsed();
        assert!(quiet >= timeout && quiet <= 2 * timeout, "{quiet:?}");
    }
}
