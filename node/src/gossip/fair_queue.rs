//! Received gossip messages waiting for the state machine, queued per peer and
//! served round robin: one message of each peer with something waiting, in turn.
//! A peer that sends faster than it is served fills only its own queue (and loses
//! its own newest messages); every other peer keeps its share. A global byte cap
//! bounds the whole.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// This peer's queue is full.
    Peer,
    /// Every queue together holds the byte cap.
    Total,
}

impl Full {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Peer => "peer_queue_full",
            Full::Total => "inbound_queue_full",
        }
    }
}

#[derive(Debug)]
struct Inner<T> {
    queues: HashMap<String, VecDeque<(T, usize)>>,
    turn: VecDeque<String>,
    bytes: usize,
}

/// The per-peer fair queue.
#[derive(Debug)]
pub struct FairQueue<T> {
    inner: Mutex<Inner<T>>,
    per_peer: usize,
    max_bytes: usize,
    ready: Notify,
}

impl<T> FairQueue<T> {
    /// A queue holding at most `per_peer` messages per peer and `max_bytes` in
    /// all.
    pub fn new(per_peer: usize, max_bytes: usize) -> Self {
        FairQueue {
            inner: Mutex::new(Inner {
                queues: HashMap::new(),
                turn: VecDeque::new(),
                bytes: 0,
            }),
            per_peer: per_peer.max(1),
            max_bytes,
            ready: Notify::new(),
        }
    }

    /// Queues `item` (`bytes` long) from `peer`.
    pub fn push(&self, peer: &str, item: T, bytes: usize) -> Result<(), Full> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.bytes + bytes > self.max_bytes {
            return Err(Full::Total);
        }
        let queue = inner.queues.entry(peer.to_string()).or_default();
        if queue.len() >= self.per_peer {
            return Err(Full::Peer);
        }
        let first = queue.is_empty();
        queue.push_back((item, bytes));
        inner.bytes += bytes;
        if first {
            inner.turn.push_back(peer.to_string());
        }
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// The next message, from the peer whose turn it is.
    pub fn pop(&self) -> Option<(String, T)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let peer = inner.turn.pop_front()?;
        let (item, bytes, more) = {
            let queue = inner.queues.get_mut(&peer)?;
            let (item, bytes) = queue.pop_front()?;
            (item, bytes, !queue.is_empty())
        };
        inner.bytes -= bytes;
        if more {
            inner.turn.push_back(peer.clone());
        } else {
            inner.queues.remove(&peer);
        }
        Some((peer, item))
    }

    /// Waits until something may be queued.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Messages waiting, in all.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.queues.values().map(VecDeque::len).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_served_in_turn_whatever_one_of_them_sends() {
        let q = FairQueue::new(4, 1 << 20);
        for i in 0..10 {
            let r = q.push("noisy", i, 1);
            assert_eq!(r.is_ok(), i < 4, "{i}");
        }
        assert_eq!(q.push("noisy", 99, 1), Err(Full::Peer));
        q.push("quiet", 100, 1).unwrap();
        let order: Vec<(String, i32)> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                ("noisy".to_string(), 0),
                ("quiet".to_string(), 100),
                ("noisy".to_string(), 1),
                ("noisy".to_string(), 2),
                ("noisy".to_string(), 3),
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn the_byte_cap_bounds_every_queue_together() {
        let q = FairQueue::new(100, 10);
        q.push("a", (), 6).unwrap();
        assert_eq!(q.push("b", (), 6), Err(Full::Total));
        q.push("b", (), 4).unwrap();
        assert_eq!(q.len(), 2);
        q.pop();
        q.push("c", (), 6).unwrap();
    }
}
