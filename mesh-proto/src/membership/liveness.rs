//! Who is alive, decided so that no member can forge it.
//!
//! A member is alive until accused. An accusation is a [`Suspicion`] signed by
//! the accuser (a member whose probe went unanswered), naming the highest version
//! of the target it held. Each node that accepts an accusation starts its *own*
//! timer — the Lifeguard timeout, shorter the more distinct accusers agree — and
//! declares the target dead when it expires. Nobody's "dead" is ever taken from a
//! peer.
//!
//! The target cancels every accusation by signing a newer record (a refutation):
//! a record with a higher version than the accused one, signed no earlier than
//! the accusation minus the allowed clock skew. Only the target can sign it, so:
//!
//! - a hostile member can accuse, but its accusations are refuted by the live
//!   target, and its budget (a token bucket per accuser) bounds how often;
//! - a hostile member cannot keep a dead node alive: it cannot sign for it, an
//!   accusation naming a version this node never saw is refused (so nobody can
//!   make an accusation that cannot be refuted), and old records it may have held
//!   back are too old to refute a recent accusation;
//! - a dead member that comes back (a healed partition) refutes and is alive
//!   again.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

use super::config::{Limits, Timing};
use super::records::{Origin, RecordStore};
use super::refusal::Refusal;
use super::signing::{Crypto, suspicion_payload};
use super::wire::{NameRange, Suspicion, SuspicionId};

/// A member's liveness, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not accused (or every accusation refuted).
    Alive,
    /// Accused; declared dead at `deadline` unless refuted.
    Suspect {
        /// When this node will declare it dead.
        deadline: Instant,
    },
    /// Declared dead by this node's own timer.
    Dead {
        /// Since when.
        since: Instant,
    },
}

impl Health {
    /// Whether the member should be treated as reachable (alive or suspect).
    pub fn is_up(self) -> bool {
        !matches!(self, Health::Dead { .. })
    }

    /// The lowercase name used in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspect { .. } => "suspect",
            Health::Dead { .. } => "dead",
        }
    }
}

#[derive(Debug, Clone)]
struct Accusation {
    suspicion: Suspicion,
    received: Instant,
    /// When the first copy held of this accusation (same accuser, same
    /// version) was issued: what a refutation must answer. A refresh (the
    /// same accusation issued again later) replaces the copy handed on, never
    /// this bar, so a refutation signed after the first copy clears it
    /// whatever later copies arrived before it.
    first_issued_ms: u64,
}

impl Accusation {
    fn refuted_by(&self, max_version: u64, signed_at_ms: u64, skew_ms: u64) -> bool {
        max_version > self.suspicion.target_version
            && signed_at_ms.saturating_add(skew_ms) >= self.first_issued_ms
    }
}

#[derive(Debug, Clone, Default)]
struct Target {
    generation: u64,
    accusations: BTreeMap<String, Accusation>,
    dead_since: Option<Instant>,
}

impl Target {
    fn first_received(&self) -> Option<Instant> {
        self.accusations.values().map(|a| a.received).min()
    }
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: f64,
    at: Instant,
}

/// What a change of liveness was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Declared dead by this node's timer.
    Died {
        /// The member.
        name: String,
        /// Its generation.
        generation: u64,
        /// Who accused it.
        accusers: Vec<String>,
    },
    /// Came back (every accusation refuted after it was declared dead).
    Revived {
        /// The member.
        name: String,
    },
}

/// Accusations, timers and verdicts.
#[derive(Debug, Default)]
pub struct Liveness {
    targets: BTreeMap<String, Target>,
    budgets: BTreeMap<String, Budget>,
    open: usize,
    /// [`Liveness::next_deadline`], until the accusations held change: the
    /// driver asks after every message, and a node cut off from most of the
    /// mesh holds thousands.
    next: Cell<Option<Option<Instant>>>,
}

/// An accused member, as [`Liveness::accused_in`] lists it.
#[derive(Debug, Clone, Copy)]
pub struct Accused<'a> {
    /// Its name.
    pub name: &'a str,
    /// The generation accused.
    pub generation: u64,
    /// Whether this node declared it dead.
    pub dead: bool,
    accusations: &'a BTreeMap<String, Accusation>,
}

impl<'a> Accused<'a> {
    /// How many accusations are held.
    pub fn count(&self) -> usize {
        self.accusations.len()
    }

    /// The accusations held, by accuser.
    pub fn suspicions(&self) -> impl Iterator<Item = &'a Suspicion> + use<'a> {
        self.accusations.values().map(|a| &a.suspicion)
    }
}

/// Whether `s` is still accepted at `wall_ms`: not from the future, and not
/// older than [`Timing::suspicion_ttl`].
pub fn is_timely(s: &Suspicion, timing: &Timing, wall_ms: u64) -> bool {
    check_timely(s, timing, wall_ms).is_ok()
}

/// What accepting a suspicion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New: relay it.
    New,
    /// The same accusation issued later replaced the copy held (see
    /// [`Liveness::accept`]): checked and paid for, not relayed.
    Refreshed,
    /// Already held, or already refuted.
    Stale,
}

impl Liveness {
    /// The liveness of `name` (generation `generation`).
    pub fn health(&self, name: &str, generation: u64, timing: &Timing) -> Health {
        let Some(t) = self
            .targets
            .get(name)
            .filter(|t| t.generation == generation)
        else {
            return Health::Alive;
        };
        if let Some(since) = t.dead_since {
            return Health::Dead { since };
        }
        match t.first_received() {
            Some(first) => Health::Suspect {
                deadline: first + timing.suspicion_timeout(t.accusations.len()),
            },
            None => Health::Alive,
        }
    }

    /// The members declared dead, with the generation each was declared dead in.
    pub fn dead(&self) -> impl Iterator<Item = (&str, u64)> {
        self.targets
            .iter()
            .filter(|(_, t)| t.dead_since.is_some())
            .map(|(name, t)| (name.as_str(), t.generation))
    }

    /// Whether `accuser` holds an accusation of `name`.
    pub fn is_accused_by(&self, name: &str, accuser: &str) -> bool {
        self.targets
            .get(name)
            .is_some_and(|t| t.accusations.contains_key(accuser))
    }

    /// The accusers of `name`, if accused.
    pub fn accusers(&self, name: &str) -> Vec<String> {
        self.targets
            .get(name)
            .map(|t| t.accusations.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many distinct members accuse `name`.
    pub fn accusation_count(&self, name: &str) -> usize {
        self.targets.get(name).map_or(0, |t| t.accusations.len())
    }

    /// The accusations held of `name`.
    pub fn accusations_of(&self, name: &str) -> impl Iterator<Item = &Suspicion> {
        self.targets
            .get(name)
            .into_iter()
            .flat_map(|t| t.accusations.values().map(|a| &a.suspicion))
    }

    /// The accused members whose names fall in `range`, in name order.
    pub fn accused_in<'a>(&'a self, range: &'a NameRange) -> impl Iterator<Item = Accused<'a>> {
        let from = (Bound::Included(range.from.as_str()), Bound::Unbounded);
        self.targets
            .range::<str, _>(from)
            .take_while(move |(name, _)| range.to.as_deref().is_none_or(|to| name.as_str() < to))
            .filter(|(_, t)| !t.accusations.is_empty())
            .map(|(name, t)| Accused {
                name,
                generation: t.generation,
                dead: t.dead_since.is_some(),
                accusations: &t.accusations,
            })
    }

    /// Every suspicion held.
    pub fn suspicions(&self) -> impl Iterator<Item = &Suspicion> {
        self.targets
            .values()
            .flat_map(|t| t.accusations.values().map(|a| &a.suspicion))
    }

    /// Whether a suspicion with this id is held.
    pub fn holds(&self, id: &SuspicionId) -> bool {
        self.targets
            .get(&id.target)
            .and_then(|t| t.accusations.get(&id.accuser))
            .is_some_and(|a| a.suspicion.target_version >= id.target_version)
    }

    /// How many suspicions are held.
    pub fn len(&self) -> usize {
        self.open
    }

    /// Whether no suspicion is held.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Judges a suspicion (from a peer, or this node's own with `own = true`,
    /// which skips the signature check) and holds it if it passes. A suspicion
    /// about this node itself is not held: the caller refutes it.
    #[allow(clippy::too_many_arguments)]
    pub fn accept<C: Crypto>(
        &mut self,
        s: Suspicion,
        records: &RecordStore<C::PublicKey>,
        crypto: &C,
        cluster: &str,
        timing: &Timing,
        limits: &Limits,
        now: Instant,
        wall_ms: u64,
        own: bool,
    ) -> Result<Accepted, Refusal> {
        if s.accuser == s.target {
            return Err(Refusal::SelfAccusation);
        }
        check_timely(&s, timing, wall_ms)?;
        let (accuser, target) = parties(&s, records)?;
        let skew = millis(timing.max_clock_skew);
        if refutes(target.max_version, target.max_signed_at_ms, &s, skew) {
            return Ok(Accepted::Stale);
        }
        let held = self
            .targets
            .get(&s.target)
            .filter(|t| t.generation == s.target_generation)
            .and_then(|t| t.accusations.get(&s.accuser));
        // One accusation per accuser and accused version: the same accuser
        // accusing again (its next probe failed too) changes nothing — in
        // particular it does not restart anyone's timer. Only an accusation of a
        // newer version (the target refuted, then went silent again) replaces it.
        // The same accusation issued again later (its accuser still holds the
        // target dead, and the first is about to be refused as too old) is a
        // refresh: checked like a new one, it replaces the old without
        // restarting any timer, and is not relayed.
        let refresh = held.is_some_and(|a| {
            a.suspicion.target_version == s.target_version
                && a.suspicion.issued_at_ms < s.issued_at_ms
        });
        if !refresh && held.is_some_and(|a| a.suspicion.target_version >= s.target_version) {
            return Ok(Accepted::Stale);
        }
        if held.is_none() && self.open >= limits.max_suspicions {
            return Err(Refusal::SuspicionLimit);
        }
        if !own {
            if !self.has_budget(&s.accuser, timing, limits, now) {
                return Err(Refusal::AccuserRateLimited);
            }
            let payload = suspicion_payload(cluster, &s);
            if !crypto.verify(&accuser.cert.key, &payload, &s.signature) {
                return Err(Refusal::BadSignature);
            }
        }
        self.spend(&s.accuser, timing, limits, now);
        if refresh {
            self.refresh(s);
            return Ok(Accepted::Refreshed);
        }
        self.hold(s, now);
        Ok(Accepted::New)
    }

    /// Replaces a held accusation by the same one issued later, keeping when
    /// it was first received and when it was first issued (its timer and what
    /// refutes it do not move).
    fn refresh(&mut self, s: Suspicion) {
        if let Some(a) = self
            .targets
            .get_mut(&s.target)
            .and_then(|t| t.accusations.get_mut(&s.accuser))
        {
            a.suspicion = s;
        }
    }

    /// Holds `s` (it passed every check): it replaces the same accuser's
    /// accusation of the target, and every accusation of an older generation.
    fn hold(&mut self, s: Suspicion, now: Instant) {
        self.next.set(None);
        let t = self.targets.entry(s.target.clone()).or_default();
        if t.generation != s.target_generation {
            self.open -= t.accusations.len();
            *t = Target {
                generation: s.target_generation,
                ..Target::default()
            };
        }
        let replaced = t.accusations.insert(
            s.accuser.clone(),
            Accusation {
                first_issued_ms: s.issued_at_ms,
                suspicion: s,
                received: now,
            },
        );
        if replaced.is_none() {
            self.open += 1;
        }
    }

    fn refill(&mut self, accuser: &str, timing: &Timing, limits: &Limits, now: Instant) -> f64 {
        let cap = f64::from(limits.suspicion_burst.max(1));
        let b = self.budgets.entry(accuser.to_string()).or_insert(Budget {
            tokens: cap,
            at: now,
        });
        let refill = timing.suspicion_refill.as_secs_f64().max(0.001);
        let gained = now.saturating_duration_since(b.at).as_secs_f64() / refill;
        b.tokens = (b.tokens + gained).min(cap);
        b.at = now;
        b.tokens
    }

    fn has_budget(
        &mut self,
        accuser: &str,
        timing: &Timing,
        limits: &Limits,
        now: Instant,
    ) -> bool {
        self.refill(accuser, timing, limits, now) >= 1.0
    }

    fn spend(&mut self, accuser: &str, timing: &Timing, limits: &Limits, now: Instant) {
        self.refill(accuser, timing, limits, now);
        if let Some(b) = self.budgets.get_mut(accuser) {
            b.tokens = (b.tokens - 1.0).max(0.0);
        }
    }

    /// Whether this node may raise another accusation of its own now (it keeps to
    /// the budget its peers hold it to).
    pub fn may_accuse(&mut self, me: &str, timing: &Timing, limits: &Limits, now: Instant) -> bool {
        self.has_budget(me, timing, limits, now)
    }

    /// Takes one token of `me`'s budget: an accusation this node signed that
    /// was not held after all still cost a signature.
    pub fn charge(&mut self, me: &str, timing: &Timing, limits: &Limits, now: Instant) {
        self.spend(me, timing, limits, now);
    }

    /// Whether this node may accuse again, for a peer, a member it holds dead:
    /// only while half its budget is left, kept for the members its own probes
    /// find unreachable (peers' digests, which ask for these, could otherwise
    /// spend it all).
    pub fn may_reaccuse(
        &mut self,
        me: &str,
        timing: &Timing,
        limits: &Limits,
        now: Instant,
    ) -> bool {
        let reserve = f64::from(limits.suspicion_burst.max(1) / 2);
        self.refill(me, timing, limits, now) >= 1.0 + reserve
    }

    /// After `name` signed something new: drops the accusations it refutes;
    /// returns a transition if it was dead and is not any more.
    pub fn on_record(
        &mut self,
        name: &str,
        generation: u64,
        max_version: u64,
        max_signed_at_ms: u64,
        timing: &Timing,
    ) -> Option<Transition> {
        let skew = millis(timing.max_clock_skew);
        let t = self.targets.get_mut(name)?;
        if t.generation != generation {
            return None;
        }
        let before = t.accusations.len();
        t.accusations
            .retain(|_, a| !a.refuted_by(max_version, max_signed_at_ms, skew));
        if t.accusations.len() == before {
            return None;
        }
        self.next.set(None);
        self.open -= before - t.accusations.len();
        if !t.accusations.is_empty() {
            return None;
        }
        let was_dead = t.dead_since.is_some();
        self.targets.remove(name);
        was_dead.then(|| Transition::Revived {
            name: name.to_string(),
        })
    }

    /// Forgets everything about `name` (it left the records store, or a new
    /// generation replaced the accused one).
    pub fn forget(&mut self, name: &str) {
        if let Some(t) = self.targets.remove(name) {
            self.open -= t.accusations.len();
            self.next.set(None);
        }
    }

    /// Runs the timers: declares dead every suspect whose deadline passed.
    pub fn tick(&mut self, now: Instant, timing: &Timing) -> Vec<Transition> {
        let mut out = Vec::new();
        if self.next_deadline(timing).is_none_or(|d| now < d) {
            return out;
        }
        for (name, t) in &mut self.targets {
            if t.dead_since.is_some() {
                continue;
            }
            let Some(first) = t.first_received() else {
                continue;
            };
            if now >= first + timing.suspicion_timeout(t.accusations.len()) {
                t.dead_since = Some(now);
                self.next.set(None);
                out.push(Transition::Died {
                    name: name.clone(),
                    generation: t.generation,
                    accusers: t.accusations.keys().cloned().collect(),
                });
            }
        }
        self.budgets
            .retain(|_, b| now.saturating_duration_since(b.at) < timing.suspicion_refill * 64);
        out
    }

    /// The next time [`Liveness::tick`] has something to do.
    pub fn next_deadline(&self, timing: &Timing) -> Option<Instant> {
        if let Some(next) = self.next.get() {
            return next;
        }
        let next = self
            .targets
            .values()
            .filter(|t| t.dead_since.is_none())
            .filter_map(|t| {
                t.first_received()
                    .map(|f| f + timing.suspicion_timeout(t.accusations.len()))
            })
            .min();
        self.next.set(Some(next));
        next
    }

    /// Members dead for longer than `grace`: to be forgotten.
    pub fn dead_longer_than(&self, grace: Duration, now: Instant) -> Vec<String> {
        self.targets
            .iter()
            .filter(|(_, t)| {
                t.dead_since
                    .is_some_and(|d| now.saturating_duration_since(d) >= grace)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// `s` was issued neither later than the allowed skew from now nor longer
/// ago than a suspicion lives.
fn check_timely(s: &Suspicion, timing: &Timing, wall_ms: u64) -> Result<(), Refusal> {
    if s.issued_at_ms > wall_ms.saturating_add(millis(timing.max_clock_skew)) {
        return Err(Refusal::FromTheFuture);
    }
    if s.issued_at_ms
        .saturating_add(millis(timing.suspicion_ttl()))
        < wall_ms
    {
        return Err(Refusal::SuspicionTooOld);
    }
    Ok(())
}

/// The accuser (of the generation it signed as) and the target (of the
/// generation and at most the version accused) as this node holds them.
fn parties<'r, K: Clone + std::fmt::Debug>(
    s: &Suspicion,
    records: &'r RecordStore<K>,
) -> Result<(&'r Origin<K>, &'r Origin<K>), Refusal> {
    let accuser = records
        .get(&s.accuser)
        .filter(|o| o.generation == s.accuser_generation)
        .ok_or(Refusal::UnknownAccuser)?;
    let target = records.get(&s.target).ok_or(Refusal::UnknownTarget)?;
    if target.generation != s.target_generation {
        return Err(if s.target_generation < target.generation {
            Refusal::StaleGeneration
        } else {
            Refusal::UnknownTarget
        });
    }
    if s.target_version > target.max_version {
        return Err(Refusal::UnknownVersion);
    }
    Ok((accuser, target))
}

/// Whether the target's freshest record (version `max_version`, signed at
/// `signed_at_ms`) refutes `s`: newer than the accused version, and signed no
/// earlier than the accusation minus the allowed skew.
fn refutes(max_version: u64, signed_at_ms: u64, s: &Suspicion, skew_ms: u64) -> bool {
    max_version > s.target_version && signed_at_ms.saturating_add(skew_ms) >= s.issued_at_ms
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
