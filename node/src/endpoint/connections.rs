//! What `GET /connections` shows of every open QUIC connection: the peer, its
//! use and direction, quinn's path figures (RTT, congestion window, packet
//! size, losses, MTU black holes) and the streams stopped or reset on it —
//! what an operator reads when a tunnel is slow.

use serde::{Deserialize, Serialize};

use super::Tracked;

/// One open QUIC connection of this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionView {
    /// The peer's node name from its certificate.
    pub peer: Option<String>,
    /// The peer's address.
    pub addr: String,
    /// `gossip` or `tunnel`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Whether this node dialled it (`false`: accepted).
    pub dialled: bool,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Lowest round-trip time seen, microseconds.
    pub min_rtt_us: u64,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// The largest UDP payload the path is known to carry now, bytes.
    pub mtu: u16,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Congestion events (a loss that shrank the window).
    pub congestion_events: u64,
    /// Packet-size probes sent, and lost.
    pub mtu_probes_sent: u64,
    /// Packet-size probes lost.
    pub mtu_probes_lost: u64,
    /// Times losses of large packets sent the packet size back to the minimum.
    pub black_holes_detected: u64,
    /// UDP datagrams sent (a GSO batch counts each datagram).
    pub datagrams_sent: u64,
    /// UDP bytes sent.
    pub bytes_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// UDP bytes received.
    pub bytes_received: u64,
    /// `STOP_SENDING` frames sent: streams whose rest this node refused (a
    /// caller gone, a request not forwarded).
    pub stop_sending_sent: u64,
    /// `STOP_SENDING` frames received.
    pub stop_sending_received: u64,
    /// `RESET_STREAM` frames sent: streams this node abandoned (a hedge lost,
    /// a backend that failed after taking the request).
    pub reset_stream_sent: u64,
    /// `RESET_STREAM` frames received.
    pub reset_stream_received: u64,
}

/// `t`'s view, or `None` once it closed.
pub(super) fn view(t: &Tracked) -> Option<ConnectionView> {
    if t.conn.close_reason().is_some() {
        return None;
    }
    let stats = t.conn.stats();
    let path = stats.path;
    Some(ConnectionView {
        peer: t.peer_node.clone(),
        addr: t.conn.remote_address().to_string(),
        use_: if t.gossip { "gossip" } else { "tunnel" }.to_string(),
        dialled: t.pooled_as.is_some(),
        rtt_us: micros(path.rtt),
        min_rtt_us: micros(path.min_rtt),
        cwnd: path.cwnd,
        mtu: path.current_mtu,
        sent_packets: path.sent_packets,
        lost_packets: path.lost_packets,
        congestion_events: path.congestion_events,
        mtu_probes_sent: path.sent_plpmtud_probes,
        mtu_probes_lost: path.lost_plpmtud_probes,
        black_holes_detected: path.black_holes_detected,
        datagrams_sent: stats.udp_tx.datagrams,
        bytes_sent: stats.udp_tx.bytes,
        datagrams_received: stats.udp_rx.datagrams,
        bytes_received: stats.udp_rx.bytes,
        stop_sending_sent: stats.frame_tx.stop_sending,
        stop_sending_received: stats.frame_rx.stop_sending,
        reset_stream_sent: stats.frame_tx.reset_stream,
        reset_stream_received: stats.frame_rx.reset_stream,
    })
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
