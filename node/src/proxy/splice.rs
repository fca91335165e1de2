//! Moving bytes both ways between two ends of a proxied connection — a TCP
//! socket and a QUIC stream, or two TCP sockets (local short-cut) — with the
//! semantics an application expects of a TCP connection:
//!
//! - **Half-close**: when one side finishes writing, the other side's write half is
//!   finished too, and the opposite direction keeps flowing until it ends.
//! - **Resets**: a reset on either side resets the other (a QUIC `RESET_STREAM` /
//!   `STOP_SENDING`, or a TCP RST via `SO_LINGER` 0), instead of looking like a clean end.
//! - **Backpressure**: one chunk in hand per direction; nothing is read until the
//!   previous chunk is written, so a slow reader slows the writer. Chunks move
//!   without copies where the socket allows (QUIC chunks, TCP reads into a buffer
//!   that is handed on).
//! - **Idle timeout**: no byte either way for the configured time closes both.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Largest chunk read at once per direction.
pub const BUFFER: usize = 64 * 1024;
/// Smallest TCP read buffer.
const MIN_READ: usize = 4 * 1024;
/// Application error code carried by QUIC resets Shoal sends.
pub const RESET_CODE: VarInt = VarInt::from_u32(1);

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The reader reached a clean end; the writer was finished.
    Finished,
    /// One side reset or the connection broke.
    Reset,
}

/// What a spliced connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Bytes from the first end (`a`) to the second (`b`).
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    /// Whether it ended with a reset or an idle timeout rather than two clean ends.
    pub aborted: bool,
}

/// Live byte counters a caller can read while the splice runs, and metric
/// counters the splice adds to as bytes move (so long-lived connections show up
/// in the metrics while they run, not only when they close).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes `a` → `b` so far.
    pub a_to_b: AtomicU64,
    /// Bytes `b` → `a` so far.
    pub b_to_a: AtomicU64,
    /// Metric for `a` → `b`, if any.
    pub a_to_b_metric: Option<Counter>,
    /// Metric for `b` → `a`, if any.
    pub b_to_a_metric: Option<Counter>,
}

impl Progress {
    /// Progress that also feeds these two metric counters.
    pub fn counting(a_to_b: Counter, b_to_a: Counter) -> Progress {
        Progress {
            a_to_b_metric: Some(a_to_b),
            b_to_a_metric: Some(b_to_a),
            ..Progress::default()
        }
    }
}

/// The read side of an end.
#[derive(Debug)]
pub enum Reader {
    /// A TCP read half.
    Tcp(OwnedReadHalf),
    /// A QUIC receive stream.
    Quic(RecvStream),
}

/// The write side of an end.
#[derive(Debug)]
pub enum Writer {
    /// A TCP write half.
    Tcp(OwnedWriteHalf),
    /// A QUIC send stream.
    Quic(SendStream),
}

/// Chunks moved per read: QUIC delivers a stream as many small chunks (about one
/// packet each); gathering them lets the TCP side write them with one `writev`.
const MAX_CHUNKS: usize = 128;

/// Gathering space a direction keeps between reads (chunk handles, not bytes):
/// enough for request/response traffic. A read that gathered more lets it go
/// before waiting again, so an idle connection holds 128 bytes per direction,
/// not the 4 KiB of [`MAX_CHUNKS`] handles.
const KEPT_CHUNKS: usize = 4;

/// What a read found after the chunks it returned, for the next read to report.
type After = Option<Result<usize, ()>>;

impl Reader {
    /// Reads the next chunks into `chunks` (empty on entry); returns how many
    /// (0: a clean end), or `Err` for a reset or a broken connection. QUIC
    /// chunks come without a copy: the first is awaited, then whatever else has
    /// already arrived is taken without waiting (an end found then is kept in
    /// `after` for the next call). A TCP read goes into a fresh buffer that is
    /// handed on whole, sized by the previous read (small for request/response
    /// traffic, [`BUFFER`] for bulk), and only taken once data is there: an
    /// idle connection holds no buffer.
    async fn read_chunks(
        &mut self,
        chunks: &mut Vec<Bytes>,
        size: &mut usize,
        after: &mut After,
    ) -> Result<usize, ()> {
        if let Some(result) = after.take() {
            return result;
        }
        if chunks.capacity() > KEPT_CHUNKS {
            *chunks = Vec::with_capacity(KEPT_CHUNKS);
        }
        match self {
            Reader::Tcp(r) => loop {
                r.readable().await.map_err(drop)?;
                let mut buf = BytesMut::with_capacity(*size);
                match r.try_read_buf(&mut buf) {
                    Ok(0) => return Ok(0),
                    Ok(n) => {
                        *size = if n == *size {
                            (*size * 4).min(BUFFER)
                        } else {
                            (n * 2).next_power_of_two().clamp(MIN_READ, BUFFER)
                        };
                        chunks.push(buf.freeze());
                        return Ok(1);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(()),
                }
            },
            Reader::Quic(r) => {
                match r.read_chunk(usize::MAX, true).await {
                    Ok(Some(c)) => chunks.push(c.bytes),
                    Ok(None) => return Ok(0),
                    Err(_) => return Err(()),
                }
                *after = gather_ready(r, chunks);
                Ok(chunks.len())
            }
        }
    }

    fn abort(&mut self) {
        if let Reader::Quic(r) = self {
            let _ = r.stop(RESET_CODE);
        }
    }
}

/// Takes the chunks `r` already holds, up to [`MAX_CHUNKS`] in `chunks`,
/// without waiting; returns the stream's end if it was reached.
fn gather_ready(r: &mut RecvStream, chunks: &mut Vec<Bytes>) -> After {
    use futures::FutureExt;
    while chunks.len() < MAX_CHUNKS {
        match r.read_chunk(usize::MAX, true).now_or_never() {
            None => return None,
            Some(Ok(Some(c))) => {
                if chunks.len() == KEPT_CHUNKS {
                    chunks.reserve_exact(MAX_CHUNKS - KEPT_CHUNKS);
                }
                chunks.push(c.bytes);
            }
            Some(Ok(None)) => return Some(Ok(0)),
            Some(Err(_)) => return Some(Err(())),
        }
    }
    None
}

impl Writer {
    /// Writes every chunk (consuming them).
    async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), ()> {
        match self {
            Writer::Tcp(w) => {
                let mut first = 0;
                while first < chunks.len() {
                    let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
                        .iter()
                        .map(|c| std::io::IoSlice::new(c))
                        .collect();
                    let mut written = w.write_vectored(&slices).await.map_err(drop)?;
                    if written == 0 {
                        return Err(());
                    }
                    while first < chunks.len() && written >= chunks[first].len() {
                        written -= chunks[first].len();
                        first += 1;
                    }
                    if first < chunks.len() {
                        bytes::Buf::advance(&mut chunks[first], written);
                    }
                }
                Ok(())
            }
            Writer::Quic(w) => w.write_all_chunks(chunks).await.map_err(drop),
        }
    }

    async fn finish(&mut self) {
        match self {
            Writer::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            Writer::Quic(w) => {
                let _ = w.finish();
            }
        }
    }

    fn abort(&mut self) {
        if let Writer::Quic(w) = self {
            let _ = w.reset(RESET_CODE);
        }
    }
}

/// One end of a connection: its read and write sides.
#[derive(Debug)]
pub struct Side {
    reader: Reader,
    writer: Writer,
}

impl Side {
    /// A TCP socket.
    pub fn tcp(stream: TcpStream) -> Side {
        let (r, w) = stream.into_split();
        Side {
            reader: Reader::Tcp(r),
            writer: Writer::Tcp(w),
        }
    }

    /// A QUIC bidirectional stream.
    pub fn quic(send: SendStream, recv: RecvStream) -> Side {
        Side {
            reader: Reader::Quic(recv),
            writer: Writer::Quic(send),
        }
    }

    /// Tears the end down abruptly: QUIC streams are reset and stopped, a TCP
    /// socket is closed with RST.
    fn abort(self) {
        let Side {
            mut reader,
            mut writer,
        } = self;
        reader.abort();
        writer.abort();
        if let (Reader::Tcp(r), Writer::Tcp(w)) = (reader, writer)
            && let Ok(stream) = r.reunite(w)
        {
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = stream.set_zero_linger();
        }
    }
}

async fn pump(
    reader: &mut Reader,
    writer: &mut Writer,
    counter: &AtomicU64,
    metric: Option<&Counter>,
    last: &AtomicU64,
    epoch: Instant,
) -> End {
    let mut size = MIN_READ;
    let (mut chunks, mut after) = (Vec::with_capacity(KEPT_CHUNKS), None);
    loop {
        let count = match reader.read_chunks(&mut chunks, &mut size, &mut after).await {
            Ok(0) => {
                writer.finish().await;
                return End::Finished;
            }
            Ok(c) => c,
            Err(()) => return End::Reset,
        };
        let n: usize = chunks[..count].iter().map(Bytes::len).sum();
        if writer.write_chunks(&mut chunks[..count]).await.is_err() {
            return End::Reset;
        }
        // Written: let go of the buffers before waiting for more.
        chunks.clear();
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(m) = metric {
            m.inc_by(n as u64);
        }
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Returns once nothing has moved for `idle` (`last`: when something last
/// moved, in milliseconds since `epoch`).
async fn idle_for(idle: Duration, last: &AtomicU64, epoch: Instant) {
    loop {
        let quiet = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

/// Returns at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs both directions until both end cleanly (`true`), or one resets or
/// `stop` returns (`false`).
async fn both_directions(
    up: impl Future<Output = End>,
    down: impl Future<Output = End>,
    stop: impl Future<Output = ()>,
) -> bool {
    tokio::pin!(up, down, stop);
    let mut up_end = None;
    let mut down_end = None;
    loop {
        tokio::select! {
            e = &mut up, if up_end.is_none() => {
                up_end = Some(e);
                if e == End::Reset { return false; }
            }
            e = &mut down, if down_end.is_none() => {
                down_end = Some(e);
                if e == End::Reset { return false; }
            }
            () = &mut stop => return false,
        }
        if up_end.is_some() && down_end.is_some() {
            return true;
        }
    }
}

/// Splices `a` and `b` until both directions end, either side resets, nothing
/// moves for `idle`, or `deadline` passes (both sides are then reset).
/// `progress` is updated as bytes flow. Time is tokio's (a paused clock in
/// tests).
pub async fn splice(
    a: Side,
    b: Side,
    idle: Duration,
    deadline: Option<Instant>,
    progress: Arc<Progress>,
) -> Totals {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let Side {
        reader: mut a_r,
        writer: mut a_w,
    } = a;
    let Side {
        reader: mut b_r,
        writer: mut b_w,
    } = b;
    let clean = both_directions(
        pump(
            &mut a_r,
            &mut b_w,
            &progress.a_to_b,
            progress.a_to_b_metric.as_ref(),
            &last,
            epoch,
        ),
        pump(
            &mut b_r,
            &mut a_w,
            &progress.b_to_a,
            progress.b_to_a_metric.as_ref(),
            &last,
            epoch,
        ),
        async {
            tokio::select! {
                () = idle_for(idle, &last, epoch) => {}
                () = until(deadline) => {}
            }
        },
    )
    .await;
    let totals = Totals {
        a_to_b: progress.a_to_b.load(Ordering::Relaxed),
        b_to_a: progress.b_to_a.load(Ordering::Relaxed),
        aborted: !clean,
    };
    // After two clean ends, dropping is enough: quinn keeps delivering what a
    // finished stream has buffered while the connection lives.
    if !clean {
        Side {
            reader: a_r,
            writer: a_w,
        }
        .abort();
        Side {
            reader: b_r,
            writer: b_w,
        }
        .abort();
    }
    totals
}

#[cfg(test)]
mod tests;
