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
        for range in pieces(transmit.contents.len(), segment) {
            let contents = &transmit.contents[range];
            let piece = Transmit {
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                ..*transmit
            };
            // A full socket midway (`WouldBlock`) is reported as it is: quinn
            // keeps the batch and sends it whole once the socket is writable,
            // and the peer drops the copies of the pieces already out by their
            // packet numbers. Reporting the batch sent would turn its tail
            // into lost packets, each loss a congestion-window cut. (quinn-udp
            // reports no other error: it logs and drops a datagram the kernel
            // refuses.)
            self.inner.try_send(&piece)?;
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
    use std::net::IpAddr;
    use std::sync::Mutex;

    use quinn::udp::EcnCodepoint;

    use super::*;

    /// What one send handed the socket.
    #[derive(Debug, Clone, PartialEq)]
    struct Sent {
        contents: Vec<u8>,
        segment_size: Option<usize>,
        destination: SocketAddr,
        ecn: Option<EcnCodepoint>,
        src_ip: Option<IpAddr>,
    }

    /// A socket that records the sends it is handed and reports `WouldBlock`
    /// for the send numbered `block_at` (counting recorded sends).
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<Sent>>,
        block_at: Mutex<Option<usize>>,
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

        fn try_send(&self, t: &Transmit) -> io::Result<()> {
            let mut sent = self.sent.lock().unwrap();
            if *self.block_at.lock().unwrap() == Some(sent.len()) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            sent.push(Sent {
                contents: t.contents.to_vec(),
                segment_size: t.segment_size,
                destination: t.destination,
                ecn: t.ecn,
                src_ip: t.src_ip,
            });
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

    const DESTINATION: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        4433,
    ));
    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    /// A batch of `len` bytes whose every byte differs from its neighbours', so
    /// a piece sent from the wrong place shows.
    fn batch(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn send_through(
        socket: &SplitSends,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        socket.try_send(&Transmit {
            destination: DESTINATION,
            ecn: Some(EcnCodepoint::Ect0),
            contents,
            segment_size: segment,
            src_ip: Some(SOURCE),
        })
    }

    /// Sends one batch through a fresh [`SplitSends`]; returns what reached the
    /// socket underneath as (length, segment size), after checking that every
    /// piece carries the batch's addresses and ECN and that the pieces, in
    /// order, are the batch.
    fn split(len: usize, segment: Option<usize>) -> Vec<(usize, Option<usize>)> {
        let inner = Arc::new(Recorder::default());
        let socket = SplitSends::new(inner.clone());
        let contents = batch(len);
        send_through(&socket, &contents, segment).expect("nothing blocks");
        let sent = inner.sent.lock().unwrap().clone();
        assert_eq!(
            joined(&sent),
            contents,
            "the pieces are the batch, in order"
        );
        for s in &sent {
            assert!(
                s.contents.len() <= MAX_SEND,
                "the kernel refuses {}",
                s.contents.len()
            );
            assert_eq!(
                (s.destination, s.ecn, s.src_ip),
                (DESTINATION, Some(EcnCodepoint::Ect0), Some(SOURCE))
            );
        }
        sent.iter()
            .map(|s| (s.contents.len(), s.segment_size))
            .collect()
    }

    /// The bytes of `sent`, one send after another.
    fn joined(sent: &[Sent]) -> Vec<u8> {
        sent.iter()
            .flat_map(|s| s.contents.iter().copied())
            .collect()
    }

    #[test]
    fn ten_large_packets_go_out_in_sends_of_whole_packets_each_within_one_udp_send() {
        assert_eq!(
            split(10 * 16_000, Some(16_000)),
            [
                (64_000, Some(16_000)),
                (64_000, Some(16_000)),
                (32_000, Some(16_000))
            ]
        );
        // A short last packet stays in its piece; a piece of one packet is a
        // plain datagram.
        assert_eq!(
            split(8 * 16_000 + 500, Some(16_000)),
            [(64_000, Some(16_000)), (64_000, Some(16_000)), (500, None)]
        );
        assert_eq!(
            split(5 * 13_000 + 12_000, Some(13_000)),
            [(65_000, Some(13_000)), (12_000, None)]
        );
    }

    #[test]
    fn a_batch_that_fits_one_send_is_handed_on_unchanged() {
        assert_eq!(split(10 * 6_500, Some(6_500)), [(65_000, Some(6_500))]);
        assert_eq!(split(16_000, None), [(16_000, None)]);
    }

    #[test]
    fn a_full_socket_midway_keeps_the_whole_batch_for_quinn_to_send_again() {
        let inner = Arc::new(Recorder::default());
        let socket = SplitSends::new(inner.clone());
        let contents = batch(10 * 16_000);
        // Nothing out: reported, nothing sent.
        *inner.block_at.lock().unwrap() = Some(0);
        let result = send_through(&socket, &contents, Some(16_000));
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(inner.sent.lock().unwrap().is_empty());
        // The first piece out, then full: reported too, so quinn keeps the
        // batch rather than count its tail as lost.
        *inner.block_at.lock().unwrap() = Some(1);
        let result = send_through(&socket, &contents, Some(16_000));
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(inner.sent.lock().unwrap().len(), 1);
        // quinn's retry once writable sends the batch whole: the first piece
        // goes out twice (the peer drops the copy by packet number).
        *inner.block_at.lock().unwrap() = None;
        send_through(&socket, &contents, Some(16_000)).unwrap();
        let sent = inner.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[0], sent[1]);
        assert_eq!(joined(&sent[1..]), contents);
    }

    #[test]
    fn pieces_cover_the_batch_in_whole_packets_within_one_send() {
        // QUIC packets are at least 1,200 bytes, so a piece holds at most 54
        // of them: under the kernel's 64 segments per send.
        for (len, segment) in [
            (160_000, 16_000),
            (65_507, 1_200),
            (120_000, 65_000),
            (1, 16_000),
        ] {
            let ranges: Vec<_> = pieces(len, segment).collect();
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(len));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].len() % segment, 0, "{len} {segment}: {ranges:?}");
            }
            for r in &ranges {
                assert!(
                    r.len() <= MAX_SEND && r.len().div_ceil(segment) <= 64,
                    "{r:?}"
                );
            }
        }
    }
}
