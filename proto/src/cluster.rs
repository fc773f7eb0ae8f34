//! The cluster's replicated state and its wire format, sans-IO: [`ClusterCommand`]s applied to
//! [`ClusterState`] (the Raft state machine), and the postcard [`Frame`]s nodes exchange over
//! their peer links (Raft RPCs, forwarded signaling messages, liveness pings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::rooms::{Applied, Command, Limits, NodeId, Outcome, Rooms, SessionId};

/// A change to the cluster state, replicated through Raft.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// A room command (join, register, send…).
    Room(Command),
    /// The leader lost `node`: its sockets are gone; clients get `grace_ms` to come back.
    NodeDown { node: NodeId, now_ms: u64, grace_ms: u64 },
    /// `node` is live: it started (a new `incarnation`: it holds no socket of an earlier life,
    /// whose bindings are released), or it was declared down while alive (a pause, a
    /// partition) and is back with the same incarnation and its sockets.
    NodeUp { node: NodeId, incarnation: u64, now_ms: u64, grace_ms: u64 },
    /// `node` left the cluster's membership: its bindings are released as for a lost node, and
    /// it no longer counts for placement.
    NodeRemoved { node: NodeId, now_ms: u64, grace_ms: u64 },
    /// A node's load, for placing TURN allocations.
    Load { node: NodeId, report: LoadReport },
    /// Proposals made at the same moment, in one log entry (group commit: one append and one
    /// fsync per node for all of them). Applied in order, each as if it had the entry alone;
    /// answered with [`Outcome::Batch`], one outcome per command, and `id`: Raft answers a
    /// proposer by log index, and after a leader change the entry applied at that index may be
    /// another one (the proposer's was replaced, so it was not applied and may be proposed again).
    Batch { id: u64, cmds: Vec<ClusterCommand> },
    /// A command a follower forwards to the leader, applied at most once: a forward whose
    /// answer was lost (the link dropped, the leader paused) may have been applied, so the
    /// follower sends it again under the same `id`, and a copy already applied answers what the
    /// first did without applying again. A copy stamped after `expires_ms` (cluster time) is not
    /// applied at all ([`Outcome::Expired`]), so once cluster time has passed it the follower
    /// learns for certain, from its own state, whether it was ([`ClusterState::settled`]). The
    /// outcome is kept until `keep_until_ms`, long enough for the follower to look.
    Once { id: ProposalId, expires_ms: u64, keep_until_ms: u64, cmd: Box<ClusterCommand> },
}

/// What became of a once-only proposal, as one node's state tells.
#[derive(Debug, PartialEq)]
pub enum Settled<'a> {
    /// Applied, with this outcome.
    Applied(&'a Outcome),
    /// Not applied, and never will be: cluster time here is past its expiry.
    Never,
    /// Not applied yet; a copy may still be.
    NotYet,
}

/// Names one proposal of one node: its id and a number it never gives another proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    /// The proposing node.
    pub node: NodeId,
    /// Its number for the proposal (random start per process, then counting).
    pub seq: u64,
}


/// What a node reports about its load and its TURN service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Open signaling sessions.
    pub sessions: u64,
    /// Live TURN allocations.
    pub allocations: u64,
    /// Relayed bytes per second, both directions.
    pub relay_bps: u64,
    /// The TURN URIs that reach this node (empty: it runs no TURN server).
    pub turn_uris: Vec<String>,
    /// The addresses its relays use, and their port range: other nodes' relays may send to
    /// them (relaying between nodes), nothing else of theirs.
    pub relay_ips: Vec<std::net::IpAddr>,
    /// First relay port.
    pub relay_min_port: u16,
    /// Last relay port.
    pub relay_max_port: u16,
}

impl ClusterState {
    /// Live nodes offering TURN, least loaded first (allocations, then sessions, then id).
    pub fn turn_placement(&self, live: impl Fn(NodeId) -> bool) -> Vec<(NodeId, &LoadReport)> {
        let mut v: Vec<(NodeId, &LoadReport)> = self
            .nodes
            .iter()
            .filter(|(id, s)| s.up && !s.load.turn_uris.is_empty() && live(**id))
            .map(|(id, s)| (*id, &s.load))
            .collect();
        v.sort_by_key(|(id, l)| (l.allocations, l.sessions, *id));
        v
    }
}

/// What the cluster knows of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Whether the node is live (not declared down since it last came up).
    pub up: bool,
    /// When it last changed state (cluster time, ms).
    pub since_ms: u64,
    /// The life it announced last (0 before it announced one).
    pub incarnation: u64,
    /// Its latest load report.
    pub load: LoadReport,
}

/// The replicated state: rooms and node liveness. Every node holds an identical copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Room membership and bindings.
    pub rooms: Rooms,
    nodes: BTreeMap<NodeId, NodeStatus>,
    /// Cluster time (ms): the latest time any applied command carried. Commands are stamped by
    /// the leader; time never goes back here, whichever leader's clock runs behind.
    clock_ms: u64,
    /// Outcomes of applied [`ClusterCommand::Once`] proposals, kept until the time given.
    settled: BTreeMap<ProposalId, (u64, Outcome)>,
    /// The same, by the time they may go.
    settled_until: BTreeMap<(u64, ProposalId), ()>,
}

impl ClusterCommand {
    /// The time the command carries, if it carries one.
    pub fn now_ms_mut(&mut self) -> Option<&mut u64> {
        match self {
            ClusterCommand::Room(c) => Some(c.now_ms_mut()),
            ClusterCommand::NodeDown { now_ms, .. }
            | ClusterCommand::NodeUp { now_ms, .. }
            | ClusterCommand::NodeRemoved { now_ms, .. } => Some(now_ms),
            ClusterCommand::Once { cmd, .. } => cmd.now_ms_mut(),
            ClusterCommand::Load { .. } | ClusterCommand::Batch { .. } => None,
        }
    }

    /// Roughly how many bytes the command takes in a log entry: bounds a batch.
    pub fn approx_bytes(&self) -> usize {
        match self {
            ClusterCommand::Room(c) => c.approx_bytes(),
            ClusterCommand::Batch { cmds, .. } => cmds.iter().map(ClusterCommand::approx_bytes).sum(),
            ClusterCommand::Once { cmd, .. } => cmd.approx_bytes() + 24,
            _ => 64,
        }
    }
}

impl ClusterState {
    /// An empty state.
    pub fn new(limits: Limits) -> Self {
        ClusterState {
            rooms: Rooms::new(limits),
            nodes: BTreeMap::new(),
            clock_ms: 0,
            settled: BTreeMap::new(),
            settled_until: BTreeMap::new(),
        }
    }

    /// What became of once-only proposal `id` that expires at `expires_ms`.
    pub fn settled(&self, id: ProposalId, expires_ms: u64) -> Settled<'_> {
        match self.settled.get(&id) {
            Some((_, o)) => Settled::Applied(o),
            None if self.clock_ms > expires_ms => Settled::Never,
            None => Settled::NotYet,
        }
    }

    /// Forgets outcomes kept past their time (deterministic: cluster time only).
    fn prune_settled(&mut self) {
        while let Some((&(until, id), _)) = self.settled_until.first_key_value() {
            if until >= self.clock_ms {
                break;
            }
            self.settled_until.pop_first();
            self.settled.remove(&id);
        }
    }

    /// Cluster time: the latest time an applied command carried.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Applies one command; deterministic like [`Rooms::apply`].
    pub fn apply(&mut self, cmd: ClusterCommand) -> Applied {
        self.apply_at(0, cmd)
    }

    /// Applies the command at log index `index` (see [`Rooms::apply_at`]). A command stamped
    /// earlier than cluster time (by a leader whose clock is behind) takes cluster time.
    pub fn apply_at(&mut self, index: u64, mut cmd: ClusterCommand) -> Applied {
        if let Some(t) = cmd.now_ms_mut() {
            *t = (*t).max(self.clock_ms);
            self.clock_ms = *t;
        }
        match cmd {
            ClusterCommand::Room(c) => self.rooms.apply_at(index, c),
            ClusterCommand::NodeDown { node, now_ms, grace_ms } => {
                self.set_up(node, false, now_ms);
                self.rooms.apply_at(index, Command::UnbindNode { node, now_ms, grace_ms })
            }
            ClusterCommand::NodeUp { node, incarnation, now_ms, grace_ms } => {
                self.set_up(node, true, now_ms);
                let s = self.nodes.entry(node).or_default();
                if s.incarnation == incarnation {
                    // Back from a pause or a partition: its sockets are the ones it had.
                    return Applied { outcome: Outcome::NodeUnbound { clients: 0 }, effects: Vec::new() };
                }
                s.incarnation = incarnation;
                self.rooms.apply_at(index, Command::UnbindNode { node, now_ms, grace_ms })
            }
            ClusterCommand::NodeRemoved { node, now_ms, grace_ms } => {
                self.nodes.remove(&node);
                self.rooms.apply_at(index, Command::UnbindNode { node, now_ms, grace_ms })
            }
            ClusterCommand::Load { node, report } => {
                self.nodes.entry(node).or_default().load = report;
                Applied { outcome: Outcome::Noop, effects: Vec::new() }
            }
            ClusterCommand::Batch { id, cmds } => {
                let mut outcomes = Vec::with_capacity(cmds.len());
                let mut effects = Vec::new();
                for c in cmds {
                    let a = self.apply_at(index, c);
                    outcomes.push(a.outcome);
                    effects.extend(a.effects);
                }
                Applied { outcome: Outcome::Batch { id, outcomes }, effects }
            }
            ClusterCommand::Once { id, expires_ms, keep_until_ms, cmd } => {
                // The stamp was taken into cluster time above.
                self.prune_settled();
                if let Some((_, outcome)) = self.settled.get(&id) {
                    return Applied { outcome: outcome.clone(), effects: Vec::new() };
                }
                if self.clock_ms > expires_ms {
                    return Applied { outcome: Outcome::Expired, effects: Vec::new() };
                }
                let applied = self.apply_at(index, *cmd);
                let until = keep_until_ms.max(expires_ms);
                self.settled.insert(id, (until, applied.outcome.clone()));
                self.settled_until.insert((until, id), ());
                applied
            }
        }
    }

    fn set_up(&mut self, node: NodeId, up: bool, now_ms: u64) {
        let s = self.nodes.entry(node).or_default();
        if s.up != up || s.since_ms == 0 {
            s.up = up;
            s.since_ms = now_ms;
        }
    }

    /// A node's status, if it ever reported.
    pub fn node(&self, node: NodeId) -> Option<&NodeStatus> {
        self.nodes.get(&node)
    }

    /// Every node's status.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeStatus> {
        &self.nodes
    }

    /// Whether `node` is considered live (never declared down, or up again).
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_none_or(|s| s.up)
    }

    /// Serialises the state for a snapshot.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// Restores a state from a snapshot.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let mut s: ClusterState = postcard::from_bytes(bytes)?;
        s.rooms.rebuild_index();
        Ok(s)
    }

    /// A digest of the state, equal on nodes that applied the same log.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let d = Sha256::digest(&bytes);
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// Kinds of Raft RPC carried as opaque postcard payloads.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    Append,
    Vote,
    Snapshot,
}

/// A request over a peer link; answered by a [`Reply`] with the same id.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A Raft RPC (payload: the postcard-encoded openraft request).
    Raft { kind: RaftRpc, payload: Vec<u8> },
    /// Apply a command (sent to the leader by a follower).
    Propose(ClusterCommand),
    /// Start an election (leadership hand-over when the leader drains).
    TriggerElect,
}

/// The answer to a [`Request`].
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A Raft RPC's postcard-encoded result.
    Raft(Vec<u8>),
    /// The outcome of an applied proposal, and its log index.
    Proposed { outcome: Outcome, index: u64 },
    /// This node is not the leader; try `leader` if known.
    NotLeader { leader: Option<NodeId> },
    /// Done (no data).
    Done,
    /// The request failed.
    Failed(String),
}

/// A frame on a peer link.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame of a connection, sealed like every frame (see [`crate::peer_security`]):
    /// who connects and which life of it.
    Hello { from: NodeId, incarnation: u64 },
    Request { id: u64, body: Request },
    Reply { id: u64, body: Reply },
    /// Signaling messages for a session on the receiving node. `seq` orders and deduplicates
    /// them per sender life; they are resent after a reconnect until acknowledged. They are
    /// written only once the receiver has applied the log up to `barrier` (the last entry that
    /// delivered a message in the room, as the sender saw it), so they never overtake a message
    /// that went through the log before them.
    /// `floor` is the sender's oldest frame not yet acknowledged: below it, every frame was
    /// acknowledged or given up on (sent again through the log).
    Forward { seq: u64, room: String, session: SessionId, messages: Vec<String>, barrier: u64, floor: u64 },
    /// Every forward up to `seq` was handed to its socket (or its socket is gone).
    Ack { seq: u64 },
    /// The acceptor's answer to a Hello: who it is (the dialler checks it reached the node it
    /// meant) and its life. A dialler that sees the life change knows the sockets its
    /// unacknowledged forwards were meant for are gone.
    Welcome { node: NodeId, incarnation: u64 },
    Ping { nonce: u64 },
    Pong { nonce: u64 },
}

/// The largest frame a peer may send (snapshots travel in chunks below this).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why a peer's byte stream was refused.
#[derive(Debug, Error)]
pub enum CodecError {
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The frame is not valid postcard for [`Frame`].
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a frame: a 4-byte big-endian length, then postcard.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, postcard::Error> {
    let body = postcard::to_allocvec(frame)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_FRAME {
            return Err(CodecError::TooLarge(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let frame = postcard::from_bytes(&avail[4..4 + len])?;
        self.start += 4 + len;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::{Binding, Effect, BYE};
    use uuid::Uuid;

    fn b(node: NodeId, n: u128) -> Binding {
        Binding { node, session: SessionId(Uuid::from_u128(n)) }
    }

    fn once(seq: u64, client: &str, now_ms: u64, expires_ms: u64) -> ClusterCommand {
        let join = Command::Join { room: "R".into(), client: client.into(), loopback: false, now_ms };
        ClusterCommand::Once { id: ProposalId { node: 2, seq }, expires_ms, keep_until_ms: expires_ms + 1_000, cmd: Box::new(ClusterCommand::Room(join)) }
    }

    #[test]
    fn a_once_proposal_applies_once_and_answers_its_copies_alike() {
        let mut s = ClusterState::new(Limits::default());
        let id = ProposalId { node: 2, seq: 7 };
        assert_eq!(s.settled(id, 100), Settled::NotYet, "not known before cluster time passes its expiry");
        let first = s.apply(once(7, "a", 10, 100));
        assert!(matches!(first.outcome, Outcome::Join(_)), "{:?}", first.outcome);
        let members = s.rooms.clone();
        // The copy sent again after a lost answer: the same outcome, nothing applied again.
        let copy = s.apply(once(7, "a", 50, 100));
        assert_eq!(copy.outcome, first.outcome);
        assert!(copy.effects.is_empty());
        assert_eq!(s.rooms, members);
        assert_eq!(s.settled(id, 100), Settled::Applied(&first.outcome));
        // Kept until keep_until, then forgotten (deterministically, by cluster time).
        s.apply(ClusterCommand::Room(Command::Tick { now_ms: 1_200 }));
        s.apply(ClusterCommand::Room(Command::Tick { now_ms: 1_201 }));
        s.apply(once(8, "z", 1_202, 5_000));
        assert_eq!(s.settled(id, 100), Settled::Never);
    }

    #[test]
    fn a_once_proposal_stamped_after_its_expiry_is_not_applied() {
        let mut s = ClusterState::new(Limits::default());
        s.apply(ClusterCommand::Room(Command::Tick { now_ms: 90 }));
        // A copy that sat in a paused leader's socket, stamped when it was read.
        let late = s.apply(once(1, "a", 150, 100));
        assert_eq!(late.outcome, Outcome::Expired);
        assert!(late.effects.is_empty());
        assert_eq!(s.rooms.room_count(), 0, "a join its proposer was told failed must not take a place");
        assert_eq!(s.settled(ProposalId { node: 2, seq: 1 }, 100), Settled::Never);
        // The outcomes kept are part of the replicated state: a snapshot carries them.
        let applied = s.apply(once(2, "b", 160, 1_000));
        let copy: ClusterState = postcard::from_bytes(&postcard::to_stdvec(&s).unwrap()).unwrap();
        assert_eq!(copy.settled(ProposalId { node: 2, seq: 2 }, 1_000), Settled::Applied(&applied.outcome));
    }

    #[test]
    fn node_down_then_up_tracks_liveness_and_unbinds() {
        let mut s = ClusterState::new(Limits::default());
        for (c, at) in [("a", b(1, 1)), ("b", b(2, 2))] {
            s.apply(ClusterCommand::Room(Command::Register { room: "R".into(), client: c.into(), at, now_ms: 1 }));
        }
        assert!(s.is_up(1));
        let a = s.apply(ClusterCommand::NodeDown { node: 1, now_ms: 10, grace_ms: 100 });
        assert_eq!(a.outcome, Outcome::NodeUnbound { clients: 1 });
        assert!(!s.is_up(1));
        let t = s.apply(ClusterCommand::Room(Command::Tick { now_ms: 110 }));
        assert_eq!(t.effects, vec![Effect::Deliver { room: "R".into(), to: "b".into(), at: b(2, 2), messages: vec![BYE.into()] }]);
        s.apply(ClusterCommand::NodeUp { node: 1, incarnation: 2, now_ms: 200, grace_ms: 100 });
        assert!(s.is_up(1));
        assert_eq!(s.node(1).map(|n| n.since_ms), Some(200));
    }

    /// A batch gives the same state, outcomes and effects as its commands one by one, in order,
    /// and answers with its id.
    #[test]
    fn batch_applies_like_its_commands_in_order() {
        let cmds = vec![
            ClusterCommand::Room(Command::Join { room: "R".into(), client: "a".into(), loopback: false, now_ms: 1 }),
            ClusterCommand::Room(Command::Message { room: "R".into(), client: "a".into(), body: "m1".into(), now_ms: 2 }),
            ClusterCommand::Room(Command::Message { room: "R".into(), client: "a".into(), body: "m2".into(), now_ms: 3 }),
            ClusterCommand::Room(Command::Join { room: "R".into(), client: "b".into(), loopback: false, now_ms: 4 }),
            ClusterCommand::Room(Command::Join { room: "R".into(), client: "c".into(), loopback: false, now_ms: 5 }),
        ];
        let mut one_by_one = ClusterState::new(Limits::default());
        let singles: Vec<Applied> = cmds.iter().cloned().map(|c| one_by_one.apply_at(7, c)).collect();
        let mut batched = ClusterState::new(Limits::default());
        let a = batched.apply_at(7, ClusterCommand::Batch { id: 42, cmds });
        assert_eq!(a.outcome, Outcome::Batch { id: 42, outcomes: singles.iter().map(|s| s.outcome.clone()).collect() });
        assert_eq!(a.effects, singles.into_iter().flat_map(|s| s.effects).collect::<Vec<_>>());
        assert_eq!(batched.to_snapshot().unwrap(), one_by_one.to_snapshot().unwrap());
        let Outcome::Batch { outcomes, .. } = a.outcome else { unreachable!() };
        assert_eq!(outcomes[3], Outcome::Join(crate::rooms::JoinOutcome::Joined { initiator: false, messages: vec!["m1".into(), "m2".into()] }));
        assert_eq!(outcomes[4], Outcome::Join(crate::rooms::JoinOutcome::Full));
    }

    /// A node back from a pause announces the life it had: its bindings stay. A restarted node
    /// announces a new life: the bindings of the old one are released.
    #[test]
    fn node_up_releases_only_an_earlier_life() {
        let mut s = ClusterState::new(Limits::default());
        s.apply(ClusterCommand::NodeUp { node: 1, incarnation: 7, now_ms: 1, grace_ms: 100 });
        s.apply(ClusterCommand::Room(Command::Register { room: "R".into(), client: "a".into(), at: b(1, 1), now_ms: 2 }));
        s.apply(ClusterCommand::NodeDown { node: 1, now_ms: 3, grace_ms: 100 });
        s.apply(ClusterCommand::Room(Command::Register { room: "R".into(), client: "a".into(), at: b(1, 1), now_ms: 4 }));
        let up = s.apply(ClusterCommand::NodeUp { node: 1, incarnation: 7, now_ms: 5, grace_ms: 100 });
        assert_eq!(up.outcome, Outcome::NodeUnbound { clients: 0 });
        assert!(s.is_up(1));
        assert_eq!(s.rooms.bindings_on(1).len(), 1, "the paused node's socket is still bound");
        let up = s.apply(ClusterCommand::NodeUp { node: 1, incarnation: 8, now_ms: 6, grace_ms: 100 });
        assert_eq!(up.outcome, Outcome::NodeUnbound { clients: 1 });
        assert!(s.rooms.bindings_on(1).is_empty());
    }

    /// A removed node's bindings are released and it leaves the node list.
    #[test]
    fn removed_node_is_forgotten() {
        let mut s = ClusterState::new(Limits::default());
        s.apply(ClusterCommand::NodeUp { node: 4, incarnation: 1, now_ms: 1, grace_ms: 100 });
        s.apply(ClusterCommand::Room(Command::Register { room: "R".into(), client: "a".into(), at: b(4, 1), now_ms: 2 }));
        let r = s.apply(ClusterCommand::NodeRemoved { node: 4, now_ms: 3, grace_ms: 100 });
        assert_eq!(r.outcome, Outcome::NodeUnbound { clients: 1 });
        assert!(s.node(4).is_none());
    }

    /// Cluster time never goes back: a command stamped by a leader whose clock is behind takes
    /// the cluster's time, so graces and expiries do not depend on which node leads.
    #[test]
    fn cluster_time_is_monotonic() {
        let mut s = ClusterState::new(Limits { register_grace_ms: 100, ..Limits::default() });
        s.apply(ClusterCommand::Room(Command::Register { room: "R".into(), client: "a".into(), at: b(1, 1), now_ms: 1_000 }));
        s.apply(ClusterCommand::Room(Command::Unbind { room: "R".into(), client: "a".into(), at: b(1, 1), now_ms: 5_000 }));
        assert_eq!(s.clock_ms(), 5_000);
        // A leader 10 s behind: its tick must not count as earlier than the unbind.
        let t = s.apply(ClusterCommand::Room(Command::Tick { now_ms: 1_000 }));
        assert_eq!(t.outcome, Outcome::Ticked { clients: 0, rooms: 0 });
        assert_eq!(s.clock_ms(), 5_000);
        let t = s.apply(ClusterCommand::Room(Command::Tick { now_ms: 5_100 }));
        assert_eq!(t.outcome, Outcome::Ticked { clients: 1, rooms: 0 });
        assert_eq!(s.rooms.room_count(), 0, "the grace ran out 100 ms after the unbind");
    }

    #[test]
    fn snapshot_round_trip_keeps_state_and_digest() {
        let mut s = ClusterState::new(Limits::default());
        s.apply(ClusterCommand::Room(Command::Join { room: "R".into(), client: "1".into(), loopback: false, now_ms: 5 }));
        s.apply(ClusterCommand::Room(Command::Send { room: "R".into(), client: "x".into(), body: "m".into(), now_ms: 5 }));
        s.apply(ClusterCommand::Load { node: 2, report: LoadReport { sessions: 3, allocations: 1, relay_bps: 9, ..Default::default() } });
        let back = ClusterState::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.digest(), s.digest());
        assert_eq!(back.rooms.next_deadline(), s.rooms.next_deadline(), "timers are rebuilt");
        let mut other = s.clone();
        other.apply(ClusterCommand::Room(Command::Leave { room: "R".into(), client: "1".into(), now_ms: 6 }));
        assert_ne!(other.digest(), s.digest());
    }

    /// The least-loaded live TURN node comes first; down nodes and nodes without TURN are left out.
    #[test]
    fn turn_placement_prefers_the_least_loaded_live_node() {
        let mut s = ClusterState::new(Limits::default());
        let report = |allocations, sessions| LoadReport {
            allocations,
            sessions,
            turn_uris: vec!["turn:x".into()],
            ..Default::default()
        };
        for (node, r) in [(1, report(5, 0)), (2, report(1, 9)), (3, report(1, 2)), (4, LoadReport::default())] {
            s.apply(ClusterCommand::NodeUp { node, incarnation: 1, now_ms: 1, grace_ms: 1 });
            s.apply(ClusterCommand::Load { node, report: r });
        }
        let order: Vec<NodeId> = s.turn_placement(|_| true).into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, vec![3, 2, 1], "node 4 runs no TURN server");
        s.apply(ClusterCommand::NodeDown { node: 3, now_ms: 2, grace_ms: 1 });
        let order: Vec<NodeId> = s.turn_placement(|n| n != 2).into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, vec![1], "3 is down and 2 unreachable");
    }

    #[test]
    fn frames_round_trip_in_pieces() {
        let frames = vec![
            Frame::Hello { from: 2, incarnation: 7 },
            Frame::Request { id: 1, body: Request::Propose(ClusterCommand::NodeUp { node: 2, incarnation: 5, now_ms: 1, grace_ms: 2 }) },
            Frame::Reply { id: 1, body: Reply::Proposed { outcome: Outcome::Noop, index: 4 } },
            Frame::Forward { seq: 9, room: "R".into(), session: SessionId(Uuid::from_u128(3)), messages: vec!["m".into()], barrier: 3, floor: 9 },
            Frame::Welcome { node: 1, incarnation: 8 },
            Frame::Ack { seq: 9 },
            Frame::Ping { nonce: 4 },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend(encode(f).unwrap());
        }
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            r.push(chunk);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn hostile_streams_are_refused() {
        let mut r = FrameReader::default();
        r.push(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_frame(), Err(CodecError::TooLarge(_))));
        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(r.next_frame(), Err(CodecError::Malformed(_))));
    }
}
