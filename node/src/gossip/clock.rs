//! Asking a node for its clock over gossip ([`Body::Time`]), to measure the
//! skew between two machines as NTP does: the answer is compared with the
//! middle of the round trip. `shoal check --pre` asks each seed before the
//! node starts; members' clocks must agree within `gossip.max_clock_skew`
//! for their signed records to be accepted and their refutations to count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::codec::{decode_exact, encode};
use mesh_proto::membership::GossipMessage;
use mesh_proto::membership::wire::{Body, TimeIs};
use tokio::sync::mpsc;

use super::transport::MAX_MESSAGE_BYTES;
use super::wall_ms;
use crate::endpoint::{Inbound, MeshEndpoint, Use};

/// One measurement: the node's clock and this machine's around it, in
/// milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSample {
    /// When the question was sent, by this machine's clock.
    pub sent_ms: u64,
    /// The node's clock, as it answered.
    pub theirs_ms: u64,
    /// When the answer arrived, by this machine's clock.
    pub received_ms: u64,
}

impl TimeSample {
    /// How far the node's clock is ahead of this machine's (negative: behind),
    /// taking the answer as given at the middle of the round trip.
    pub fn skew_ms(&self) -> i64 {
        let middle = self.sent_ms + self.received_ms.saturating_sub(self.sent_ms) / 2;
        i128::from(self.theirs_ms)
            .saturating_sub(i128::from(middle))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// How wrong [`TimeSample::skew_ms`] may be: half the round trip.
    pub fn uncertainty_ms(&self) -> u64 {
        self.received_ms.saturating_sub(self.sent_ms).div_ceil(2)
    }
}

/// Why a node's clock could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// No gossip connection to the node.
    #[error("no gossip connection: {0}")]
    Connect(String),
    /// The question could not be sent.
    #[error("sending the question failed: {0}")]
    Send(String),
    /// No answer in time.
    #[error(
        "no answer within {0:?} (a Shoal node older than 2026-12-05 does not tell its time; otherwise check that UDP from it reaches this machine)"
    )]
    Timeout(Duration),
    /// Something other than the answer came back.
    #[error("an unexpected answer: {0}")]
    Unexpected(String),
}

/// Asks the node at `addr` for its clock, over a gossip connection of
/// `endpoint` (whose certificate the node checks, as for any member), within
/// `timeout`. The node answers on the connection it was asked on, or dials
/// this endpoint back: `accepted` is where the endpoint hands such
/// connections.
pub async fn ask_time(
    endpoint: &Arc<MeshEndpoint>,
    accepted: &mut mpsc::Receiver<Inbound>,
    addr: SocketAddr,
    cluster: &str,
    timeout: Duration,
) -> Result<TimeSample, ClockError> {
    // Not a secret (the connection is authenticated): only told apart from
    // other messages on it.
    let nonce = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let question = encode(&GossipMessage {
        cluster: cluster.to_string(),
        sender_generation: 0,
        body: Body::Time(nonce),
    })
    .map_err(|e| ClockError::Send(e.to_string()))?;
    let work = async {
        let conn = endpoint
            .connect(addr, Use::Gossip, None)
            .await
            .map_err(|e| ClockError::Connect(e.to_string()))?;
        let sent_ms = wall_ms();
        let mut stream = conn
            .open_uni()
            .await
            .map_err(|e| ClockError::Send(e.to_string()))?;
        stream
            .write_all(&question)
            .await
            .map_err(|e| ClockError::Send(e.to_string()))?;
        stream
            .finish()
            .map_err(|e| ClockError::Send(e.to_string()))?;
        let answer = answer(&conn, accepted, nonce).await?;
        Ok(TimeSample {
            sent_ms,
            theirs_ms: answer.wall_ms,
            received_ms: wall_ms(),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ClockError::Timeout(timeout)))
}

/// The first [`Body::TimeIs`] with `nonce` on `conn` or on a connection the
/// node dialled back.
async fn answer(
    conn: &quinn::Connection,
    accepted: &mut mpsc::Receiver<Inbound>,
    nonce: u64,
) -> Result<TimeIs, ClockError> {
    loop {
        let mut stream = tokio::select! {
            s = conn.accept_uni() => s.map_err(|e| ClockError::Unexpected(e.to_string()))?,
            Some(back) = accepted.recv() => match back.conn.accept_uni().await {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let bytes = stream
            .read_to_end(MAX_MESSAGE_BYTES)
            .await
            .map_err(|e| ClockError::Unexpected(e.to_string()))?;
        let message = decode_exact::<GossipMessage>(&bytes)
            .map_err(|e| ClockError::Unexpected(e.to_string()))?;
        match message.body {
            Body::TimeIs(t) if t.nonce == nonce => return Ok(t),
            // A seed may send other gossip to a connection it holds; skip it.
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TimeSample;

    #[test]
    fn the_skew_is_measured_against_the_middle_of_the_round_trip() {
        let s = TimeSample {
            sent_ms: 1_000,
            theirs_ms: 6_010,
            received_ms: 1_020,
        };
        assert_eq!(s.skew_ms(), 5_000);
        assert_eq!(s.uncertainty_ms(), 10);
        let behind = TimeSample { theirs_ms: 0, ..s };
        assert_eq!(behind.skew_ms(), -1_010);
        let odd = TimeSample {
            sent_ms: 1,
            theirs_ms: 2,
            received_ms: 2,
        };
        assert_eq!((odd.skew_ms(), odd.uncertainty_ms()), (1, 1));
        let extreme = TimeSample {
            sent_ms: u64::MAX,
            theirs_ms: 0,
            received_ms: u64::MAX,
        };
        assert_eq!(extreme.skew_ms(), i64::MIN);
    }
}
