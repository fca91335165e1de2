//! The UDP socket under the QUIC endpoint: hands quinn's batches of packets
//! (GSO sends of up to ten packets) to the kernel in sends it accepts.
//!
//! A single UDP send carries at most 65,507 bytes; quinn asks for up to ten
//! packets of the connection's current size in one send, so packets larger than
//! a tenth of that would make the kernel refuse the whole batch (`EMSGSIZE`,
//! which quinn-udp drops silently). [`SplitSends`] cuts such a batch into
//! several sends of whole packets, so packet size and batch size are chosen
//! apart.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most bytes one UDP send carries (IPv4: 65,535 less the IP and UDP headers).
pub const MAX_SEND: usize = 65_507;

/// An [`AsyncUdpSocket`] that splits a batch of packets larger than one UDP
/// send into sends of whole packets; everything else goes through unchanged.
pub struct SplitSends {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitSends {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<Self> {
        Arc::new(Self { inner })
    }
}

impl fmt::Debug for SplitSends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitSends")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The pieces `len` bytes of `segment`-byte packets go out in: each piece at
/// most [`MAX_SEND`] bytes and a whole number of packets (at least one).
pub fn pieces(len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let step = (MAX_SEND / segment.max(1)).max(1) * segment.max(1);
    (0..len)
        .step_by(step)
        .map(move |start| start..(start + step).min(len))
}

impl AsyncUdpSocket for SplitSends {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment = match transmit.segment_size {
            Some(s) if transmit.contents.len() > MAX_SEND => s,
            _ => return self.inner.try_send(transmit),
        };
        let mut sent_any = false;
        for range in pieces(transmit.contents.len(), segment) {
            let contents = &transmit.contents[range];
            let piece = Transmit {
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                ..*transmit
            };
            match self.inner.try_send(&piece) {
                Ok(()) => sent_any = true,
                // Once part of the batch is out, the rest is as good as lost on
                // the wire: QUIC's loss recovery resends it. Reporting it as not
                // sent would make quinn send the first part twice.
                Err(_) if sent_any => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A socket that records the sends it is handed (length, segment size) and
    /// reports `WouldBlock` from the `block_at`-th send on.
    #[derive(Debug, Default)]
    struct Recorder {
        sends: Mutex<Vec<(usize, Option<usize>)>>,
        block_at: Option<usize>,
    }

    #[derive(Debug)]
    struct Writable;

    impl UdpPoller for Writable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Recorder {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(Writable)
        }

        fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
            let mut sends = self.sends.lock().unwrap();
            if self.block_at == Some(sends.len()) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            assert!(
                transmit.contents.len() <= MAX_SEND,
                "the kernel refuses this"
            );
            sends.push((transmit.contents.len(), transmit.segment_size));
            Ok(())
        }

        fn poll_recv(
            &self,
            _: &mut Context,
            _: &mut [IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 4433)))
        }

        fn max_transmit_segments(&self) -> usize {
            10
        }
    }

    fn send(
        block_at: Option<usize>,
        len: usize,
        segment: Option<usize>,
    ) -> (io::Result<()>, Vec<(usize, Option<usize>)>) {
        let inner = Arc::new(Recorder {
            block_at,
            ..Recorder::default()
        });
        let socket = SplitSends::new(inner.clone());
        let contents = vec![7u8; len];
        let result = socket.try_send(&Transmit {
            destination: SocketAddr::from(([127, 0, 0, 2], 4433)),
            ecn: None,
            contents: &contents,
            segment_size: segment,
            src_ip: None,
        });
        let sends = inner.sends.lock().unwrap().clone();
        (result, sends)
    }

    #[test]
    fn ten_large_packets_go_out_in_sends_of_whole_packets_each_within_one_udp_send() {
        let (result, sends) = send(None, 10 * 16_000, Some(16_000));
        assert!(result.is_ok());
        assert_eq!(
            sends,
            [
                (64_000, Some(16_000)),
                (64_000, Some(16_000)),
                (32_000, Some(16_000))
            ]
        );
        // A short last packet stays in its piece; a piece of one packet is a
        // plain datagram.
        let (_, sends) = send(None, 8 * 16_000 + 500, Some(16_000));
        assert_eq!(
            sends,
            [(64_000, Some(16_000)), (64_000, Some(16_000)), (500, None)]
        );
        let (_, sends) = send(None, 5 * 13_000 + 12_000, Some(13_000));
        assert_eq!(sends, [(65_000, Some(13_000)), (12_000, None)]);
    }

    #[test]
    fn a_batch_that_fits_one_send_is_handed_on_unchanged() {
        let (_, sends) = send(None, 10 * 6_500, Some(6_500));
        assert_eq!(sends, [(65_000, Some(6_500))]);
        let (_, sends) = send(None, 16_000, None);
        assert_eq!(sends, [(16_000, None)]);
    }

    #[test]
    fn a_full_socket_before_the_first_piece_is_reported_and_after_it_is_not() {
        // Nothing sent: quinn must keep the batch and wait until writable.
        let (result, sends) = send(Some(0), 10 * 16_000, Some(16_000));
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(sends.is_empty());
        // Part sent: reporting the batch unsent would send that part twice; the
        // rest is left to QUIC's loss recovery.
        let (result, sends) = send(Some(1), 10 * 16_000, Some(16_000));
        assert!(result.is_ok());
        assert_eq!(sends, [(64_000, Some(16_000))]);
    }

    #[test]
    fn pieces_cover_the_batch_in_whole_packets() {
        for (len, segment) in [
            (160_000, 16_000),
            (65_507, 1),
            (70_000, 65_507),
            (1, 16_000),
        ] {
            let ranges: Vec<_> = pieces(len, segment).collect();
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(len));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].len() % segment, 0, "{len} {segment}: {ranges:?}");
            }
            assert!(ranges.iter().all(|r| r.len() <= MAX_SEND.max(segment)));
        }
    }
}
