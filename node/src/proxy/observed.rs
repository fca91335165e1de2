//! I/O that reports what moves through it: a wrapper around any async stream
//! that tells an [`Observer`] the size of every read and write, and every
//! failed read. HTTP proxying uses it to count bytes (the serving end of a
//! tunnelled request), to notice idle connections ([`Activity`]: client
//! connections, upgraded tunnels) and to read a backend's TLS refusal
//! (`backend_tls::Watched`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Which way bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Read from the stream.
    Read,
    /// Written to it.
    Write,
}

/// What an [`Observed`] stream reports to. A closure `Fn(Dir, usize)` is one
/// that only counts bytes.
pub trait Observer {
    /// A read or write moved `n` (> 0) bytes.
    fn moved(&self, dir: Dir, n: usize);

    /// A read failed with `e`.
    fn read_failed(&self, _e: &std::io::Error) {}
}

impl<F: Fn(Dir, usize)> Observer for F {
    fn moved(&self, dir: Dir, n: usize) {
        self(dir, n)
    }
}

/// A stream that tells its [`Observer`] of every read and write that moved
/// bytes, and of every failed read.
#[derive(Debug)]
pub struct Observed<T, F> {
    inner: T,
    observe: F,
}

impl<T, F: Observer> Observed<T, F> {
    /// Wraps `inner`.
    pub fn new(inner: T, observe: F) -> Self {
        Self { inner, observe }
    }

    /// Its observer.
    pub fn observer(&self) -> &F {
        &self.observe
    }
}

impl<T: AsyncRead + Unpin, F: Observer + Unpin> AsyncRead for Observed<T, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.observe.moved(Dir::Read, n);
                }
            }
            Poll::Ready(Err(e)) => self.observe.read_failed(e),
            Poll::Pending => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, F: Observer + Unpin> AsyncWrite for Observed<T, F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.observe.moved(Dir::Write, n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.observe.moved(Dir::Write, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When a connection last moved a byte, for idle timeouts.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    /// Milliseconds since `born` of the last read or write.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Self {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records that bytes moved now.
    pub fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When bytes last moved (the start, if none has).
    pub fn last(&self) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When it started.
    pub fn born(&self) -> Instant {
        self.born
    }

    /// `stream`, touching this activity on every read and write.
    pub fn watch<T>(
        self: &Arc<Self>,
        stream: T,
    ) -> Observed<T, impl Fn(Dir, usize) + Unpin + Send + Sync + 'static + use<T>> {
        let me = self.clone();
        Observed::new(stream, move |_, _| me.touch())
    }
}

/// Copies between the two sides of an upgraded exchange (WebSocket, `CONNECT`)
/// until both have closed, or until no byte has moved either way for `idle`.
pub async fn splice_idle<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::new());
    let mut a = activity.watch(a);
    let mut b = activity.watch(b);
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            () = tokio::time::sleep_until(activity.last() + idle) => {
                if activity.last() + idle <= Instant::now() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn observed_streams_report_reads_and_writes_and_idle_splices_end() {
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let splice = tokio::spawn(splice_idle(a, b, Duration::from_secs(10)));
        a_peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // Nothing moves for 10 s (virtual time): the splice ends and closes both.
        tokio::time::sleep(Duration::from_secs(11)).await;
        splice.await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(b_peer.read_to_end(&mut rest).await.unwrap(), 0);

        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let (x, mut x_peer) = tokio::io::duplex(64);
        let mut x = Observed::new(x, move |d, n| log.lock().unwrap().push((d, n)));
        x.write_all(b"abc").await.unwrap();
        x_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        x.read_exact(&mut buf).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], (Dir::Write, 3));
        assert_eq!(
            seen.iter()
                .filter(|(d, _)| *d == Dir::Read)
                .map(|(_, n)| n)
                .sum::<usize>(),
            5
        );
    }

    /// An observer that keeps what it is told.
    #[derive(Default)]
    struct Log(std::sync::Mutex<Vec<String>>);

    impl Observer for Log {
        fn moved(&self, dir: Dir, n: usize) {
            self.0.lock().unwrap().push(format!("{dir:?} {n}"));
        }

        fn read_failed(&self, e: &std::io::Error) {
            self.0.lock().unwrap().push(format!("failed: {e}"));
        }
    }

    /// A reader whose every read fails.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Err(std::io::Error::other("received fatal alert: X")))
        }
    }

    #[tokio::test]
    async fn a_failed_read_is_reported_and_still_returned() {
        let mut failing = Observed::new(Failing, Log::default());
        let mut buf = [0u8; 4];
        let err = failing.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "received fatal alert: X");
        assert_eq!(
            *failing.observer().0.lock().unwrap(),
            ["failed: received fatal alert: X"]
        );
        // A read that ends the stream (0 bytes) is neither moved bytes nor a failure.
        let (x, x_peer) = tokio::io::duplex(8);
        drop(x_peer);
        let mut ended = Observed::new(x, Log::default());
        assert_eq!(ended.read(&mut buf).await.unwrap(), 0);
        assert!(ended.observer().0.lock().unwrap().is_empty());
    }
}
