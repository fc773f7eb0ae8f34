//! The receiving side's record of forwarded messages, per sending node and life: which forward
//! frames arrived (so a frame sent again, over a new connection or through the log, is written
//! once) and which were handed to their socket (what the sender is told it may forget).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use switchboard_proto::rooms::{ForwardTag, NodeId};
use tokio::sync::Notify;

/// A forward frame handed to a room: tell the ledger once it reached its socket.
#[derive(Debug, Clone, Copy)]
pub struct FrameAck {
    /// The node that forwarded it.
    pub from: NodeId,
    /// That node's life.
    pub incarnation: u64,
    /// The frame.
    pub seq: u64,
}

/// A set of sequence numbers: everything up to `floor`, plus some above it.
#[derive(Debug, Default)]
pub struct SeqSet {
    floor: u64,
    above: BTreeSet<u64>,
}

impl SeqSet {
    /// Adds `seq`; `true` if it was not in the set.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq <= self.floor || !self.above.insert(seq) {
            return false;
        }
        self.compact();
        true
    }

    /// Whether `seq` is in the set.
    #[cfg(test)]
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    /// Everything up to `floor` counts as in the set from now on; returns the numbers that were
    /// missing below it.
    pub fn raise_floor(&mut self, floor: u64) -> Vec<u64> {
        let mut missing = Vec::new();
        if floor > self.floor {
            let keep = self.above.split_off(&(floor + 1));
            let mut below = std::mem::replace(&mut self.above, keep).into_iter().peekable();
            // At most the last MAX_GIVEN_UP numbers can be missing ones worth remembering.
            let from = (self.floor + 1).max(floor.saturating_sub(MAX_GIVEN_UP as u64));
            while below.peek().is_some_and(|n| *n < from) {
                below.next();
            }
            for n in from..=floor {
                if below.peek() == Some(&n) {
                    below.next();
                } else if missing.len() < MAX_GIVEN_UP {
                    missing.push(n);
                }
            }
            self.floor = floor;
            self.compact();
        }
        missing
    }

    /// The highest `n` such that every number up to `n` is in the set.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    fn compact(&mut self) {
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
    }
}

/// Frames a sender gave up on without this node ever receiving them, remembered so that their
/// messages are written when they come again through the log (at most this many).
const MAX_GIVEN_UP: usize = 65_536;

struct Sender {
    incarnation: u64,
    /// Nothing received yet from this life: its first frame's floor is where this record
    /// starts (what came before went to an earlier life of this node, not given up on).
    fresh: bool,
    received: SeqSet,
    /// Below `received`'s floor but never received: the sender gave them up (sent them again
    /// through the log, where they may still come to this node).
    given_up: BTreeSet<u64>,
    done: SeqSet,
    notify: Arc<Notify>,
}

impl Sender {
    fn new(incarnation: u64) -> Self {
        Sender {
            incarnation,
            fresh: true,
            received: SeqSet::default(),
            given_up: BTreeSet::new(),
            done: SeqSet::default(),
            notify: Arc::new(Notify::new()),
        }
    }
}

/// This node's ledger of forwards from every other node.
pub struct Ledger {
    me: NodeId,
    /// This node's life: a tag meant for another life of it was never received here.
    life: u64,
    senders: Mutex<HashMap<NodeId, Sender>>,
}

impl Ledger {
    /// The ledger of node `me` in its life `life`.
    pub fn new(me: NodeId, life: u64) -> Self {
        Ledger { me, life, senders: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Sender>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `from` connected in life `incarnation`: a new life starts a new record. Returns what
    /// wakes its connection when a frame was handed over (to send an `Ack`).
    pub fn connect(&self, from: NodeId, incarnation: u64) -> Arc<Notify> {
        let mut s = self.lock();
        let e = s.entry(from).or_insert_with(|| Sender::new(incarnation));
        if e.incarnation != incarnation {
            *e = Sender::new(incarnation);
        }
        e.notify.clone()
    }

    /// Frame `seq` of `from`'s life `incarnation` arrived, with the sender's `floor` (below it,
    /// every frame was acknowledged or given up on). `true` the first time.
    pub fn receive(&self, from: NodeId, incarnation: u64, seq: u64, floor: u64) -> bool {
        let mut s = self.lock();
        let Some(e) = s.get_mut(&from).filter(|e| e.incarnation == incarnation) else { return false };
        let below = floor.saturating_sub(1);
        if e.fresh {
            e.fresh = false;
            e.received.floor = below;
            e.done.floor = below;
        }
        e.given_up.extend(e.received.raise_floor(below));
        while e.given_up.len() > MAX_GIVEN_UP {
            e.given_up.pop_first();
        }
        e.done.raise_floor(below);
        e.received.insert(seq)
    }

    /// The frame was written to its socket (or its socket is gone).
    pub fn done(&self, ack: FrameAck) {
        let FrameAck { from, incarnation, seq } = ack;
        let mut s = self.lock();
        if let Some(e) = s.get_mut(&from).filter(|e| e.incarnation == incarnation) {
            let before = e.done.floor();
            e.done.insert(seq);
            if e.done.floor() != before {
                e.notify.notify_one();
            }
        }
    }

    /// Every frame up to this one was handed over: what `from`'s link may forget.
    pub fn acknowledged(&self, from: NodeId, incarnation: u64) -> u64 {
        self.lock().get(&from).filter(|e| e.incarnation == incarnation).map_or(0, |e| e.done.floor())
    }

    /// A message sent again through the log, tagged with the forward it first travelled in:
    /// `true` unless that forward already reached this node (then it was written here once).
    pub fn first_time(&self, tag: &ForwardTag) -> bool {
        if tag.to != self.me || tag.to_life != self.life {
            return true;
        }
        let mut s = self.lock();
        match s.get_mut(&tag.from) {
            Some(e) if e.incarnation == tag.incarnation => {
                let new = e.given_up.remove(&tag.seq) || e.received.insert(tag.seq);
                if new {
                    // Handed over by this delivery: its forward, if it comes late, is a repeat.
                    e.done.insert(tag.seq);
                    e.notify.notify_one();
                }
                new
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_compacts_and_raises() {
        let mut s = SeqSet::default();
        assert!(s.insert(2));
        assert_eq!(s.floor(), 0);
        assert!(s.insert(1));
        assert_eq!(s.floor(), 2);
        assert!(!s.insert(2));
        assert!(s.insert(5));
        assert!(s.contains(5) && !s.contains(4));
        assert_eq!(s.raise_floor(4), vec![3, 4]);
        assert_eq!(s.floor(), 5, "5 joins the floor once 3 and 4 are given up on");
        assert!(!s.insert(3));
    }

    #[test]
    fn a_frame_counts_once_whichever_way_it_comes() {
        let l = Ledger::new(2, 40);
        l.connect(1, 7);
        assert!(l.receive(1, 7, 1, 1));
        assert!(!l.receive(1, 7, 1, 1), "resent over a new connection");
        let tag = ForwardTag { from: 1, incarnation: 7, to: 2, to_life: 40, seq: 1 };
        assert!(!l.first_time(&tag), "already forwarded here");
        let later = ForwardTag { seq: 2, ..tag };
        assert!(l.first_time(&later), "sent through the log before its forward arrived");
        assert!(!l.receive(1, 7, 2, 1), "the late forward is a repeat");
        assert!(l.first_time(&ForwardTag { to: 3, ..tag }), "forwarded to another node");
        assert!(l.first_time(&ForwardTag { to_life: 39, ..tag }), "forwarded to an earlier life of this node");
        l.done(FrameAck { from: 1, incarnation: 7, seq: 1 });
        assert_eq!(l.acknowledged(1, 7), 2);
        l.connect(1, 8);
        assert!(l.receive(1, 8, 1, 1), "a new life starts over");
        assert_eq!(l.acknowledged(1, 7), 0);
    }

    /// A link that carried a million frames to an earlier life of this node starts its record
    /// here at its floor, without counting what went before as given up.
    #[test]
    fn a_new_record_starts_at_the_floor() {
        let l = Ledger::new(2, 40);
        l.connect(1, 7);
        assert!(l.receive(1, 7, 1_000_001, 1_000_001));
        assert_eq!(l.acknowledged(1, 7), 1_000_000);
        let old = ForwardTag { from: 1, incarnation: 7, to: 2, to_life: 39, seq: 500 };
        assert!(l.first_time(&old), "meant for the earlier life");
    }

    #[test]
    fn the_senders_floor_closes_gaps() {
        let l = Ledger::new(2, 40);
        l.connect(1, 7);
        assert!(l.receive(1, 7, 3, 1));
        l.done(FrameAck { from: 1, incarnation: 7, seq: 3 });
        assert_eq!(l.acknowledged(1, 7), 0, "1 and 2 are missing");
        assert!(l.receive(1, 7, 4, 3), "the sender gave 1 and 2 up");
        assert_eq!(l.acknowledged(1, 7), 3);
        let tag = ForwardTag { from: 1, incarnation: 7, to: 2, to_life: 40, seq: 2 };
        assert!(l.first_time(&tag), "a given-up frame sent again through the log is written");
        assert!(!l.first_time(&tag), "once");
        assert!(!l.first_time(&ForwardTag { seq: 3, ..tag }), "3 arrived as a forward");
    }
}
