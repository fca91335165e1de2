//! Hedged opens: when the endpoint picked first has not accepted a tunnel
//! within a delay derived from recent setups (their p99, at least the
//! listener's `hedge_min_delay`) and its peer has said nothing since the open
//! began, for longer than a live peer may hold its acknowledgement
//! ([`SetupTimes::hedge_due`]), the same open starts on another endpoint and
//! the first to be accepted is used; the other is dropped, which resets its
//! stream (`CANCELLED`, see `upstream`). A TCP open carries nothing of the
//! caller's bytes; an HTTP open carries its request only when sending it
//! twice is harmless (`HttpListener::early`).
//!
//! [`race`] is the rule, [`SetupTimes`] the latency it derives the delay from,
//! and [`Heard`] tells an open on a silent connection (the peer sent nothing
//! since the open began: dead, paused or cut off) from one that is merely slow.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::routing::Endpoint;

use super::ProxyContext;
use crate::endpoint::{ACK_DELAY, ConnectError};
use crate::metrics::ListenerLabels;

/// Setups remembered for the p99.
const REMEMBERED: usize = 128;
/// Above this many opens in progress on the node, nothing is hedged: a burst
/// makes every setup slow — and can starve the node's own runtime so long that
/// a live peer's packets wait unread and its connection looks silent — and
/// hedging would double the burst.
pub const MAX_OPENS_TO_HEDGE: usize = 32;

/// The durations of this node's recent tunnel setups (all peers), and how many
/// are in progress.
#[derive(Debug, Default)]
pub struct SetupTimes {
    recent: Mutex<VecDeque<Duration>>,
    in_progress: Arc<AtomicUsize>,
}

/// One setup in progress, counted until dropped.
#[derive(Debug)]
pub struct Opening(Arc<AtomicUsize>);

impl Drop for Opening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SetupTimes {
    /// Counts a setup in progress until the guard is dropped.
    pub fn opening(&self) -> Opening {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        Opening(self.in_progress.clone())
    }

    /// Waits until a hedge is worth starting for an open that has not been
    /// accepted within the delay (`first`: what is heard from its peer), and
    /// says whether it is: the open has no connection yet (a dial to a peer
    /// that does not answer), or its connection has stayed silent long enough
    /// to mean the peer is dead, stopped or cut off ([`Silence::hedge_after`]);
    /// and the node is not in a burst of opens (then every setup is slow
    /// because the node is busy, and a hedge would only add to it). A peer
    /// that acknowledges the open meanwhile is alive and working on it: that
    /// open is not hedged.
    pub async fn hedge_due(&self, first: &Heard) -> bool {
        loop {
            match first.silence().hedge_after() {
                None => return false,
                Some(wait) if wait.is_zero() => break,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        self.in_progress.load(Ordering::Relaxed) <= MAX_OPENS_TO_HEDGE
    }

    /// Records one setup.
    pub fn record(&self, took: Duration) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    /// The p99 of the recent setups, if any.
    pub fn p99(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let rank = (sorted.len() * 99).div_ceil(100).max(1) - 1;
        Some(sorted[rank])
    }
}

/// How long the first open has before a hedge starts: the p99 of recent
/// setups, at least `min`, at most ten times `min` and at most `max` (the
/// connect timeout). The cap keeps a few slow setups (one slow peer's) from
/// turning hedging off for every peer; it costs nothing on a peer that is
/// merely slow, since only an open whose connection is silent is hedged.
pub fn delay(p99: Option<Duration>, min: Duration, max: Duration) -> Duration {
    p99.map_or(min, |p| p.max(min))
        .min(min * DELAY_CAP)
        .min(max)
}

/// The hedge delay is at most this many times `hedge_min_delay`.
const DELAY_CAP: u32 = 10;

impl Heard {
    /// How long the open has run since it had its connection (the stream's
    /// setup, without a handshake), if it got one.
    pub fn since_connected(&self) -> Option<Duration> {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            HeardState::On(_, _, since) => Some(since.elapsed()),
            _ => None,
        }
    }
}

/// What was heard from the peer of one open.
#[derive(Debug, Default)]
pub struct Heard {
    state: Mutex<HeardState>,
}

#[derive(Debug, Default)]
enum HeardState {
    /// No connection yet (a dial in progress), or a local endpoint.
    #[default]
    Nothing,
    /// The dial ended without a handshake (timed out, or refused).
    DialFailed,
    /// The connection used, how many frames it had received from the peer
    /// when the open began, and when that was.
    On(quinn::Connection, u64, tokio::time::Instant),
}

/// The frames received on `conn` that only a live peer sends: counted after
/// decryption, so a forged datagram or a stateless reset is not life.
fn frames_heard(conn: &quinn::Connection) -> u64 {
    let f = conn.stats().frame_rx;
    f.acks + f.ping + f.stream + f.max_data + f.max_stream_data + f.max_streams_bidi
}

/// How long past its start an open's connection must have stayed silent
/// before its peer is suspected: the peer may hold its acknowledgement for
/// the [`ACK_DELAY`] this node asks of it, and it then travels one round
/// trip; twice that is left as margin.
pub fn suspicion_silence(rtt: Duration) -> Duration {
    2 * (ACK_DELAY + rtt)
}

/// What an open's peer has said since the open began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// The open has no connection: a dial in progress or failed, or a local
    /// endpoint.
    NoConnection,
    /// The peer sent a frame since: it is alive.
    Heard,
    /// Nothing from the peer for `for_`, on a connection whose round trip is
    /// `rtt`.
    Silent { for_: Duration, rtt: Duration },
}

impl Silence {
    /// When a hedge of the open may start, from now: at once (`Some(ZERO)`)
    /// for an open without a connection, or whose peer has been silent for
    /// [`suspicion_silence`] — longer than a live peer may hold its
    /// acknowledgement and send it back; after the rest of that time for one
    /// silent for less (a live peer's acknowledgement may still be on its
    /// way: hedging it would send its request twice); never (`None`) for a
    /// peer that answered.
    pub fn hedge_after(self) -> Option<Duration> {
        match self {
            Silence::NoConnection => Some(Duration::ZERO),
            Silence::Heard => None,
            Silence::Silent { for_, rtt } => Some(suspicion_silence(rtt).saturating_sub(for_)),
        }
    }
}

impl Heard {
    /// The open uses `conn`.
    pub fn connection(&self, conn: &quinn::Connection) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = HeardState::On(
            conn.clone(),
            frames_heard(conn),
            tokio::time::Instant::now(),
        );
    }

    /// The open's dial ended without a handshake.
    pub fn dial_failed_now(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = HeardState::DialFailed;
    }

    /// Whether the open's dial ended without a handshake.
    pub fn dial_failed(&self) -> bool {
        matches!(
            &*self.state.lock().unwrap_or_else(|e| e.into_inner()),
            HeardState::DialFailed
        )
    }

    /// Whether the open got as far as a connection.
    pub fn connected(&self) -> bool {
        matches!(
            &*self.state.lock().unwrap_or_else(|e| e.into_inner()),
            HeardState::On(..)
        )
    }

    /// What the open's peer has said since the open began.
    pub fn silence(&self) -> Silence {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            HeardState::Nothing | HeardState::DialFailed => Silence::NoConnection,
            HeardState::On(conn, at_start, since) => {
                if frames_heard(conn) == *at_start {
                    Silence::Silent {
                        for_: since.elapsed(),
                        rtt: conn.rtt(),
                    }
                } else {
                    Silence::Heard
                }
            }
        }
    }

    /// If the open's connection has said nothing since the open began, waits
    /// until it has been silent for [`suspicion_silence`] and, if it still
    /// has not, makes its peer `node` suspect — in a task of its own, so the
    /// caller does not wait. A peer merely holding its acknowledgement (or on
    /// a longer path) answers within that time and is not suspected; until
    /// then it is only doubted ([`super::suspects::Suspects::doubt`]):
    /// avoided while others are usable, not counted, not logged.
    pub fn suspect_if_silent(&self, suspects: &Arc<super::suspects::Suspects>, node: &str) {
        let HeardState::On(conn, at_start, since) =
            &*self.state.lock().unwrap_or_else(|e| e.into_inner())
        else {
            return;
        };
        if frames_heard(conn) != *at_start {
            return;
        }
        let (conn, at_start, since) = (conn.clone(), *at_start, *since);
        let (suspects, node) = (suspects.clone(), node.to_string());
        let decide_at = since + suspicion_silence(conn.rtt());
        // Avoided meanwhile (a hedge already beat it), not yet suspected.
        suspects.doubt(&node, decide_at.into_std());
        tokio::spawn(async move {
            tokio::time::sleep_until(decide_at).await;
            if frames_heard(&conn) == at_start {
                suspects.no_answer(&node, "silent");
            } else {
                suspects.answered(&node);
            }
        });
    }
}

/// Which open a race used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The one started first.
    First,
    /// The hedge.
    Second,
}

/// How a race ended.
#[derive(Debug)]
pub struct Raced<T, E> {
    /// The open whose result is `result`: the first to succeed, or (both
    /// failed, or no hedge) the first.
    pub leg: Leg,
    /// Its result.
    pub result: Result<T, E>,
    /// The other open's failure, if it ended in one before the race did.
    pub other_failed: Option<E>,
    /// A hedge was started.
    pub hedged: bool,
}

/// Runs `first` and, alongside, `hedge`, which waits for the hedge to be due
/// and gives it (or `None`: no other endpoint, no room in the retry budget, a
/// peer that answered); takes whichever leg succeeds first, dropping the
/// other. If one fails, the other is awaited. `first` is always polled
/// before the hedge: an open that is ready at once (a stream on a live
/// connection) wins without the hedge's wait ever being started (no timer
/// registered), and a tie goes to `first`.
///
/// Both legs are `Unpin` so that neither is stored in the race's own state:
/// the caller pins `first` where it lives (`std::pin::pin!`) and boxes the
/// rarely started hedge. Every request awaits a race, and a leg held by value
/// would be copied into it (kilobytes per request).
pub async fn race<T, E, F1, F2>(
    mut first: F1,
    hedge: impl Future<Output = Option<F2>>,
) -> Raced<T, E>
where
    F1: Future<Output = Result<T, E>> + Unpin,
    F2: Future<Output = Result<T, E>> + Unpin,
{
    let alone = |result| Raced {
        leg: Leg::First,
        result,
        other_failed: None,
        hedged: false,
    };
    let hedge = tokio::select! {
        biased;
        r = &mut first => return alone(r),
        hedge = hedge => hedge,
    };
    let Some(mut second) = hedge else {
        return alone(first.await);
    };
    let (leg, result) = tokio::select! {
        r = &mut first => (Leg::First, r),
        r = &mut second => (Leg::Second, r),
    };
    let Err(failed) = result else {
        return Raced {
            leg,
            result,
            other_failed: None,
            hedged: true,
        };
    };
    let (other_leg, other) = match leg {
        Leg::First => (Leg::Second, second.await),
        Leg::Second => (Leg::First, first.await),
    };
    match other {
        Ok(v) => Raced {
            leg: other_leg,
            result: Ok(v),
            other_failed: Some(failed),
            hedged: true,
        },
        Err(e) => {
            let (first_err, second_err) = match leg {
                Leg::First => (failed, e),
                Leg::Second => (e, failed),
            };
            Raced {
                leg: Leg::First,
                result: Err(first_err),
                other_failed: Some(second_err),
                hedged: true,
            }
        }
    }
}

/// Waits the hedge `delay`, then until a hedge of the open that `first`
/// hears is due ([`SetupTimes::hedge_due`]); says whether it is.
pub async fn due(ctx: &ProxyContext, delay: Duration, first: &Heard) -> bool {
    tokio::time::sleep(delay).await;
    ctx.setup_times.hedge_due(first).await
}

/// Counts a hedge for `listener` as it starts: a try that times out drops its
/// race before [`note_race`] could count it.
pub fn started(ctx: &ProxyContext, listener: &ListenerLabels) {
    ctx.metrics
        .proxy
        .hedged_attempts
        .get_or_create(listener)
        .inc();
}

/// Counts a hedge's win for `listener`, and, when the hedge won
/// while the first open's connection was silent, makes that peer suspect for
/// the whole node if it stays silent ([`Heard::suspect_if_silent`]), or
/// follows its unfinished dial to its end (`first`: the first open's
/// endpoint; `heard`: what each leg heard). A hedge dropped because the first
/// open won says nothing about its peer: it had less time.
pub fn note_race<T, E>(
    ctx: &ProxyContext,
    (listener, service): (&ListenerLabels, &str),
    raced: &Raced<T, E>,
    heard: &[Heard; 2],
    first: &Endpoint,
) {
    if !raced.hedged {
        return;
    }
    if raced.leg == Leg::Second && raced.result.is_ok() {
        ctx.metrics
            .proxy
            .hedged_attempts_won
            .get_or_create(listener)
            .inc();
    }
    // The first open, dropped mid-open because the hedge was accepted: its
    // connection's silence, or its dial's end, tells about its peer.
    if raced.leg == Leg::Second && raced.other_failed.is_none() && first.node != ctx.node_name {
        if heard[0].connected() {
            heard[0].suspect_if_silent(&ctx.suspects, &first.node);
        } else if !heard[0].dial_failed() {
            // A dial unanswered while a whole open elsewhere succeeded: the
            // peer is avoided until its dial ends, which then decides.
            ctx.suspects.no_answer(&first.node, "dial_unanswered");
            follow_dial(ctx, first, service);
        }
    }
}

/// Waits, in a task of its own, for the end of the dial to `endpoint` that an
/// open gave up on (it runs on in the endpoint's pool: see
/// `MeshEndpoint::connect_for_service`), and takes its outcome as evidence: a
/// handshake clears a suspicion of the peer, a dial that failed or timed out
/// makes it suspect.
pub fn follow_dial(ctx: &ProxyContext, endpoint: &Endpoint, service: &str) {
    let (mesh, suspects) = (ctx.endpoint.clone(), ctx.suspects.clone());
    let (addr, node, service) = (endpoint.addr, endpoint.node.clone(), service.to_string());
    tokio::spawn(async move {
        match mesh.connect_for_service(addr, &node, &service).await {
            Ok(_) | Err(ConnectError::ServiceNotAllowed { .. }) => suspects.answered(&node),
            Err(ConnectError::Timeout { .. } | ConnectError::Handshake { .. }) => {
                suspects.no_answer(&node, "connect_failed");
            }
            Err(_) => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    async fn after(
        d: Duration,
        r: Result<&'static str, &'static str>,
    ) -> Result<&'static str, &'static str> {
        tokio::time::sleep(d).await;
        r
    }

    /// A hedge offered after `delay`.
    async fn hedge_after<F>(delay: Duration, second: impl FnOnce() -> Option<F>) -> Option<F> {
        tokio::time::sleep(delay).await;
        second()
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_first_open_starts_no_hedge() {
        let mut asked = false;
        let r = race(Box::pin(after(ms(5), Ok("a"))), async {
            tokio::time::sleep(ms(25)).await;
            asked = true;
            Some(Box::pin(after(ms(1), Ok("b"))))
        })
        .await;
        assert_eq!(
            (r.leg, r.result, r.hedged, asked),
            (Leg::First, Ok("a"), false, false)
        );
    }

    #[tokio::test]
    async fn an_open_ready_at_once_never_starts_the_hedges_wait() {
        // Twenty races: an unbiased choice of which leg to poll first would
        // start the wait in about half of them.
        for _ in 0..20 {
            let mut polled = false;
            let r = race(Box::pin(async { Ok::<_, &str>("a") }), async {
                polled = true;
                None::<std::pin::Pin<Box<dyn Future<Output = Result<&str, &str>> + Send>>>
            })
            .await;
            assert_eq!((r.leg, r.result, polled), (Leg::First, Ok("a"), false));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_first_open_loses_to_the_hedge() {
        let started = tokio::time::Instant::now();
        let r = race(
            Box::pin(after(ms(1000), Ok("a"))),
            hedge_after(ms(25), || Some(Box::pin(after(ms(3), Ok("b"))))),
        )
        .await;
        assert_eq!((r.leg, r.result, r.hedged), (Leg::Second, Ok("b"), true));
        assert_eq!(
            started.elapsed(),
            ms(28),
            "the delay plus the hedge's own setup"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_leg_waits_for_the_other_and_both_failing_gives_the_first_error() {
        let r = race(
            Box::pin(after(ms(30), Err("a"))),
            hedge_after(ms(25), || Some(Box::pin(after(ms(50), Ok("b"))))),
        )
        .await;
        assert_eq!(
            (r.leg, r.result, r.other_failed),
            (Leg::Second, Ok("b"), Some("a"))
        );
        let r = race(
            Box::pin(after(ms(100), Err("a"))),
            hedge_after(ms(25), || Some(Box::pin(after(ms(1), Err("b"))))),
        )
        .await;
        assert_eq!(
            (r.leg, r.result, r.other_failed),
            (Leg::First, Err("a"), Some("b"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_offered_means_waiting_for_the_first() {
        let r = race(
            Box::pin(after(ms(100), Ok("a"))),
            hedge_after(ms(25), || None::<std::future::Ready<_>>),
        )
        .await;
        assert_eq!((r.leg, r.result, r.hedged), (Leg::First, Ok("a"), false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_not_answered_is_hedged_unless_the_node_is_in_a_burst_of_opens() {
        let times = SetupTimes::default();
        let dialling = Heard::default();
        assert!(times.hedge_due(&dialling).await);
        let burst: Vec<Opening> = (0..=MAX_OPENS_TO_HEDGE).map(|_| times.opening()).collect();
        assert!(!times.hedge_due(&dialling).await, "the node is busy");
        drop(burst);
        assert!(times.hedge_due(&dialling).await, "the burst is over");
    }

    #[test]
    fn a_silent_peer_is_hedged_only_once_a_live_one_would_have_acknowledged() {
        let rtt = ms(1);
        // A live peer may hold its acknowledgement 5 ms (what this node asks
        // of it), and it then takes a round trip: silent for 5 ms means
        // nothing yet.
        let early = Silence::Silent { for_: ms(5), rtt };
        assert_eq!(early.hedge_after(), Some(ms(7)), "2 × (5 ms + 1 ms) in all");
        let long = Silence::Silent { for_: ms(12), rtt };
        assert_eq!(long.hedge_after(), Some(Duration::ZERO));
        let longer = Silence::Silent { for_: ms(500), rtt };
        assert_eq!(longer.hedge_after(), Some(Duration::ZERO));
        assert_eq!(Silence::Heard.hedge_after(), None, "an acknowledged open");
        assert_eq!(Silence::NoConnection.hedge_after(), Some(Duration::ZERO));
    }

    #[test]
    fn the_delay_follows_the_p99_within_its_bounds() {
        let times = SetupTimes::default();
        assert_eq!(times.p99(), None);
        assert_eq!(delay(times.p99(), ms(25), ms(1000)), ms(25));
        for n in 1..=100 {
            times.record(ms(n));
        }
        assert_eq!(times.p99(), Some(ms(99)));
        assert_eq!(delay(times.p99(), ms(25), ms(1000)), ms(99));
        assert_eq!(delay(times.p99(), ms(25), ms(50)), ms(50));
        assert_eq!(
            delay(Some(ms(900)), ms(25), ms(1000)),
            ms(250),
            "capped at ten times the least delay"
        );
        assert_eq!(delay(Some(ms(2)), ms(25), ms(1000)), ms(25));
        // Only the last ones count.
        for _ in 0..REMEMBERED {
            times.record(ms(1));
        }
        assert_eq!(times.p99(), Some(ms(1)));
    }
}
