//! The room state machine: AppRTC room-server membership and Collider bindings in one model.
//! Every change is a [`Command`] applied deterministically (time comes in the command), so a
//! single node applies them in place and the cluster replicates the very same commands with Raft.
//!
//! A room has two views that AppRTC kept in two servers and whose behaviours clients depend on:
//! - **members** (room server): who joined with `POST /join`, who is the initiator, and the
//!   messages a lone member posted to `/message` for whoever joins next;
//! - **clients** (Collider): which client ids are bound to a WebSocket (and on which node and
//!   session), and each client's queue of messages for a peer that has not registered yet.
//!
//! Both views cap a room at two. A Collider `DELETE` and the register grace running out also
//! remove the client from the members (AppRTC's `/bye` notice, which upstream silently dropped).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Identifies a node of the cluster (1 for a single node).
pub type NodeId = u64;

/// The id of the pseudo-client that `?debug=loopback` adds to the room server's view.
pub const LOOPBACK_CLIENT_ID: &str = "LOOPBACK_CLIENT_ID";

/// Both AppRTC servers cap a room at two participants.
pub const ROOM_CAPACITY: usize = 2;

/// One WebSocket session, unique across nodes and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A fresh session id of a node in its life `life` (the random number a node process draws
    /// at start): the id's high half is the life, the low half random. A node forwarding to a
    /// socket thus knows which life of the peer holds it, even when it has not yet heard that
    /// the peer restarted.
    pub fn in_life(life: u64) -> Self {
        SessionId(Uuid::from_u64_pair(life, rand_low()))
    }

    /// The life of the node that made this id (see [`SessionId::in_life`]).
    pub fn life(&self) -> u64 {
        self.0.as_u64_pair().0
    }
}

/// 64 random bits, from a version-4 UUID (the crate's own generator).
fn rand_low() -> u64 {
    Uuid::new_v4().as_u64_pair().1
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies a message forwarded over a peer link (the link's sender, its life, the receiving
/// node and the frame's sequence number), so that the receiving node delivers it once even when
/// it comes again another way (sent again through the log after the link was given up on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ForwardTag {
    /// The node that forwarded it.
    pub from: NodeId,
    /// That node's life (a random number per process start).
    pub incarnation: u64,
    /// The node it was forwarded to.
    pub to: NodeId,
    /// That node's life the frame was meant for: the one holding its socket, which the
    /// socket's id names (see [`SessionId::life`]).
    pub to_life: u64,
    /// The forward frame's sequence number on that link.
    pub seq: u64,
}

/// A signaling message on its way to a socket, with the forward it already travelled in, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message, exactly as the client sent it.
    pub body: String,
    /// Set when the message was forwarded to a node before and is now sent again another way.
    pub tag: Option<ForwardTag>,
}

impl From<String> for Envelope {
    fn from(body: String) -> Self {
        Envelope { body, tag: None }
    }
}

impl From<&str> for Envelope {
    fn from(body: &str) -> Self {
        Envelope { body: body.to_owned(), tag: None }
    }
}

/// Where a run of socket messages comes from: the socket and the number of the first message it
/// sent in the run. A run proposed twice (a retry after an unanswered proposal) applies once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The sending socket.
    pub session: SessionId,
    /// The socket's number for the first message of the run (1, 2, … per socket).
    pub first: u64,
}

/// Where a Collider client's socket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The node holding the socket.
    pub node: NodeId,
    /// The socket's session on that node.
    pub session: SessionId,
}

/// Bounds of the state machine. Every node of a cluster must use the same values, because they
/// decide outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Messages a Collider client may have queued for a peer that has not registered (1024).
    pub queue_cap: usize,
    /// Messages a lone room-server member may have stored for the next joiner.
    pub stored_cap: usize,
    /// How long an unregistered Collider client is kept (10 s upstream).
    pub register_grace_ms: u64,
    /// How long a room with no bound socket lives without activity (24 h upstream).
    pub room_ttl_ms: u64,
    /// Most rooms held at once (in a cluster: in the replicated state, so cluster-wide).
    pub max_rooms: usize,
    /// Bytes of messages a lone member may store for the next joiner.
    pub stored_bytes_per_room: usize,
    /// Bytes of stored messages in all rooms together: every node holds them all.
    pub stored_bytes_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_cap: 1024,
            stored_cap: 1024,
            register_grace_ms: 10_000,
            room_ttl_ms: 86_400_000,
            max_rooms: 100_000,
            stored_bytes_per_room: 256 * 1024,
            stored_bytes_total: 128 * 1024 * 1024,
        }
    }
}

/// A change to the rooms. Proposed by the node that received the request.
#[allow(missing_docs)] // fields are the request's own parameters
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `POST /join/{room}`; `client` is the freshly generated id.
    Join { room: String, client: String, loopback: bool, now_ms: u64 },
    /// `POST /leave/{room}/{client}` (and `/bye`).
    Leave { room: String, client: String, now_ms: u64 },
    /// `POST /message/{room}/{client}`: stored while alone, otherwise sent through Collider.
    Message { room: String, client: String, body: String, now_ms: u64 },
    /// Collider `register` from a WebSocket at `at`.
    Register { room: String, client: String, at: Binding, now_ms: u64 },
    /// Collider HTTP `POST /{room}/{client}` that may change state: creates the sender or queues
    /// the message.
    Send { room: String, client: String, body: String, now_ms: u64 },
    /// A run of `send` frames from a registered socket that cannot go straight to the peer (it
    /// has not registered). Unlike [`Command::Send`] it never creates the sender: a socket whose
    /// client was removed (`DELETE`) may still have frames in flight, and they must not bring a
    /// phantom client back. Queued beyond `queue_cap` messages are dropped, as Collider does.
    Relay { room: String, client: String, bodies: Vec<String>, origin: Origin, now_ms: u64 },
    /// Messages from `client` that were forwarded towards a node that was then lost, sent again:
    /// they go before anything `client` queued since, or to the peer if it is bound again to a
    /// socket other than the `gone` ones they were forwarded to.
    Reclaim { room: String, client: String, messages: Vec<Envelope>, gone: Vec<Binding>, now_ms: u64 },
    /// The socket at `at` ended; the client gets the register grace period.
    Unbind { room: String, client: String, at: Binding, now_ms: u64 },
    /// Collider `DELETE /{room}/{client}`.
    Remove { room: String, client: String, now_ms: u64 },
    /// Time passed: remove clients whose grace ran out and idle rooms.
    Tick { now_ms: u64 },
    /// Every socket of `node` is gone (the node died or restarted): its clients get `grace_ms`
    /// to register again anywhere; a client that does not is evicted and its peer is sent the
    /// `bye` a leaving client would have sent.
    UnbindNode { node: NodeId, now_ms: u64, grace_ms: u64 },
}

impl Command {
    /// Roughly how many bytes the command takes when encoded.
    pub fn approx_bytes(&self) -> usize {
        let body = match self {
            Command::Message { body, .. } | Command::Send { body, .. } => body.len(),
            Command::Relay { bodies, .. } => bodies.iter().map(String::len).sum(),
            Command::Reclaim { messages, .. } => messages.iter().map(|m| m.body.len() + 32).sum(),
            _ => 0,
        };
        64 + body
    }

    /// The time the command carries (every command carries one).
    pub fn now_ms_mut(&mut self) -> &mut u64 {
        match self {
            Command::Join { now_ms, .. }
            | Command::Leave { now_ms, .. }
            | Command::Message { now_ms, .. }
            | Command::Register { now_ms, .. }
            | Command::Send { now_ms, .. }
            | Command::Relay { now_ms, .. }
            | Command::Reclaim { now_ms, .. }
            | Command::Unbind { now_ms, .. }
            | Command::Remove { now_ms, .. }
            | Command::Tick { now_ms }
            | Command::UnbindNode { now_ms, .. } => now_ms,
        }
    }
}

/// The one message the server ever writes into a room of its own: sent to the remaining peer
/// when a member is evicted because its node was lost, exactly what a leaving client sends.
pub const BYE: &str = "{\"type\":\"bye\"}";

/// The answer to the proposer of a command.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answer to [`Command::Join`].
    Join(JoinOutcome),
    /// Answer to [`Command::Leave`]: whether the client was a member.
    Left(bool),
    /// Answer to [`Command::Message`].
    Message(MessageOutcome),
    /// Answer to [`Command::Register`].
    Register(Result<(), RegisterError>),
    /// Answer to [`Command::Send`].
    Send(Result<SendOutcome, SendError>),
    /// Answer to [`Command::Relay`] and [`Command::Reclaim`]: what became of the messages.
    Relayed { delivered: usize, queued: usize, dropped: usize },
    /// Answer to [`Command::Unbind`]: whether the binding was current.
    Unbound(bool),
    /// Answer to [`Command::Remove`]: whether the client existed.
    Removed(bool),
    /// Answer to [`Command::Tick`]: how many clients and rooms expired.
    Ticked { clients: usize, rooms: usize },
    /// Answer to [`Command::UnbindNode`]: how many clients lost their socket.
    NodeUnbound { clients: usize },
    /// Answer to a replicated entry that carries no command (Raft's own entries).
    Noop,
    /// Answer to a batch of commands in one entry (its id): one outcome per command, in order.
    Batch { id: u64, outcomes: Vec<Outcome> },
    /// Answer to a once-only proposal stamped after its expiry: not applied.
    Expired,
}

/// Result of a join.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinOutcome {
    /// Joined; a non-initiator receives the other member's stored messages.
    Joined { initiator: bool, messages: Vec<String> },
    /// The room already holds two members.
    Full,
    /// The generated id is already a member (a random collision).
    DuplicateClient,
    /// The node holds as many rooms as it may.
    TooManyRooms,
}

/// Result of `POST /message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageOutcome {
    /// The sender is alone: the message waits for the next joiner.
    Stored,
    /// Two members: the message went to Collider.
    Sent(SendOutcome),
    /// No such room.
    UnknownRoom,
    /// The client is not a member.
    UnknownClient,
    /// The lone member already stored as many messages as allowed.
    StoreFull,
    /// Collider refused the message (AppRTC answers HTTP 500).
    SendFailed(SendError),
    /// Storing it would pass a byte budget.
    StoreOverBudget {
        /// The budget of all rooms together (else the room's own).
        total: bool,
    },
}

/// What happened to a Collider message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendOutcome {
    /// Handed to the peer's socket (see [`Effect::Deliver`]).
    Delivered,
    /// Queued on the sender until the peer registers.
    Queued,
}

/// Why Collider refused a registration. `Display` is Collider's exact error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum RegisterError {
    /// Two other client ids already exist in the room.
    #[error("Max room capacity reached")]
    MaxCapacity,
    /// The client id is already bound to a live socket.
    #[error("Duplicated registration")]
    Duplicated,
    /// The node holds as many rooms as it may.
    #[error("Too many rooms")]
    TooManyRooms,
}

/// Why Collider refused a message. `Display` is Collider's exact error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum SendError {
    /// Two other client ids already exist in the room.
    #[error("Max room capacity reached")]
    MaxCapacity,
    /// The sender's queue is full.
    #[error("Too many messages queued for the client")]
    QueueFull,
    /// The node holds as many rooms as it may.
    #[error("Too many rooms")]
    TooManyRooms,
}

/// Something a node must do to its sockets because a command was applied. Each node acts on the
/// effects whose binding names it.
#[allow(missing_docs)] // fields name the room, client and socket
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Write these messages, in order, to the socket at `at`.
    Deliver { room: String, to: String, at: Binding, messages: Vec<Envelope> },
    /// Close the socket at `at`: its client was removed.
    Close { room: String, client: String, at: Binding },
}

impl Effect {
    /// The room the effect is in.
    pub fn room(&self) -> &str {
        match self {
            Effect::Deliver { room, .. } | Effect::Close { room, .. } => room,
        }
    }
}

/// A command's outcome plus the effects on sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The answer for the proposer.
    pub outcome: Outcome,
    /// What nodes must do to their sockets.
    pub effects: Vec<Effect>,
}

/// A room as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomView {
    /// Room id.
    pub room: String,
    /// Room-server members, initiator first.
    pub members: Vec<String>,
    /// Collider clients with the node holding their socket, if bound.
    pub clients: Vec<(String, Option<NodeId>)>,
    /// Messages waiting: stored for the next joiner plus queued for a peer.
    pub waiting: usize,
}

/// Where a message from a registered client can go without changing any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The peer is bound at this binding: deliver directly.
    Direct(Binding),
    /// State must change (sender unknown, or peer not registered): apply a command.
    ViaLog,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    id: String,
    initiator: bool,
    stored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Client {
    id: String,
    binding: Option<Binding>,
    queue: VecDeque<Envelope>,
    /// The last socket message applied from a socket of this client (see [`Origin`]).
    relayed: Option<(SessionId, u64)>,
    /// The latest forward sent again for this client, per link (a repeated `Reclaim` applies
    /// once).
    reclaimed: Vec<ForwardTag>,
    /// What a peer that has left had queued for this client while its node was lost: the
    /// client's socket may still be open there, and gets them when it registers again.
    #[serde(default)]
    inbox: VecDeque<Envelope>,
    /// When an unbound client is removed.
    deadline_ms: Option<u64>,
    /// Its node was lost: if it does not come back, its peer gets a `bye`.
    #[serde(default)]
    bye_on_expiry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Room {
    members: Vec<Member>,
    clients: Vec<Client>,
    /// Last command that touched the room; idle rooms expire from here.
    touched_ms: u64,
    /// Position (in the replicated order) of the last command that delivered a message in the
    /// room: a message sent straight to a socket afterwards must not overtake it.
    delivered_at: u64,
}

impl Room {
    /// Bytes of the messages its members stored.
    fn stored_bytes(&self) -> usize {
        self.members.iter().flat_map(|m| &m.stored).map(String::len).sum()
    }

    fn new(now_ms: u64) -> Self {
        Room { members: Vec::new(), clients: Vec::new(), touched_ms: now_ms, delivered_at: 0 }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.clients.is_empty()
    }

    fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    fn other_client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id != id)
    }

    fn has_bound_client(&self) -> bool {
        self.clients.iter().any(|c| c.binding.is_some())
    }
}

/// A timer in the state machine: a client's register grace or a room's idle expiry.
type Timer = (u64, String, Option<String>);

/// All rooms. This is the replicated state; everything else on a node is derived from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rooms {
    limits: Limits,
    rooms: BTreeMap<String, Room>,
    /// Index of every deadline in `rooms`, so that a tick does not scan all rooms.
    #[serde(skip)]
    timers: BTreeSet<Timer>,
    /// Bytes of stored messages in all rooms (derived, like `timers`).
    #[serde(skip)]
    stored_total: usize,
}

impl PartialEq for Rooms {
    fn eq(&self, other: &Self) -> bool {
        self.limits == other.limits && self.rooms == other.rooms
    }
}

impl Rooms {
    /// An empty state machine.
    pub fn new(limits: Limits) -> Self {
        Rooms { limits, rooms: BTreeMap::new(), timers: BTreeSet::new(), stored_total: 0 }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Rebuilds derived indexes after deserialising a snapshot.
    pub fn rebuild_index(&mut self) {
        self.timers.clear();
        self.stored_total = self.rooms.values().map(Room::stored_bytes).sum();
        for (name, room) in &self.rooms {
            if !room.has_bound_client() {
                self.timers
                    .insert((room.touched_ms + self.limits.room_ttl_ms, name.clone(), None));
            }
            for c in &room.clients {
                if let Some(d) = c.deadline_ms {
                    self.timers.insert((d, name.clone(), Some(c.id.clone())));
                }
            }
        }
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Number of room-server members in `room` (the loopback pseudo-client counts).
    pub fn occupancy(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.members.len())
    }

    /// Room-server member ids of `room`, in join order.
    pub fn members(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(|r| r.members.iter().map(|m| m.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether `client` is the initiator of `room`.
    pub fn is_initiator(&self, room: &str, client: &str) -> Option<bool> {
        self.rooms
            .get(room)?
            .members
            .iter()
            .find(|m| m.id == client)
            .map(|m| m.initiator)
    }

    /// Collider client ids of `room` with their bindings.
    pub fn clients(&self, room: &str) -> Vec<(String, Option<Binding>)> {
        self.rooms
            .get(room)
            .map(|r| r.clients.iter().map(|c| (c.id.clone(), c.binding)).collect())
            .unwrap_or_default()
    }

    /// Messages queued by `client` in `room`.
    pub fn queued(&self, room: &str, client: &str) -> usize {
        self.rooms
            .get(room)
            .and_then(|r| r.client(client))
            .map_or(0, |c| c.queue.len())
    }

    /// Number of Collider clients bound to a socket (Collider's `openws`).
    pub fn bound_count(&self) -> usize {
        self.rooms
            .values()
            .map(|r| r.clients.iter().filter(|c| c.binding.is_some()).count())
            .sum()
    }

    /// Every binding held by `node`, for a node that restarted or died.
    pub fn bindings_on(&self, node: NodeId) -> Vec<(String, String, Binding)> {
        let mut out = Vec::new();
        for (name, room) in &self.rooms {
            for c in &room.clients {
                if let Some(b) = c.binding.filter(|b| b.node == node) {
                    out.push((name.clone(), c.id.clone(), b));
                }
            }
        }
        out
    }

    /// Up to `limit` rooms whose id starts with `prefix`, in id order, for inspection.
    pub fn views(&self, prefix: &str, limit: usize) -> Vec<RoomView> {
        self.rooms
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(limit)
            .map(|(name, r)| {
                let mut members: Vec<&Member> = r.members.iter().collect();
                members.sort_by_key(|m| !m.initiator);
                RoomView {
                    room: name.clone(),
                    members: members.into_iter().map(|m| m.id.clone()).collect(),
                    clients: r.clients.iter().map(|c| (c.id.clone(), c.binding.map(|b| b.node))).collect(),
                    waiting: r.members.iter().map(|m| m.stored.len()).sum::<usize>()
                        + r.clients.iter().map(|c| c.queue.len() + c.inbox.len()).sum::<usize>(),
                }
            })
            .collect()
    }

    /// The earliest deadline, if any: the next [`Command::Tick`] worth proposing.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }

    /// Where a Collider message from `from` goes if nothing needs to change: the sender exists
    /// and the other client is bound.
    pub fn collider_route(&self, room: &str, from: &str) -> Route {
        let Some(r) = self.rooms.get(room) else { return Route::ViaLog };
        if r.client(from).is_none() {
            return Route::ViaLog;
        }
        match r.other_client(from).and_then(|c| c.binding) {
            Some(b) => Route::Direct(b),
            None => Route::ViaLog,
        }
    }

    /// Same as [`Rooms::collider_route`] for `POST /message`: also requires a two-member room of
    /// which the sender is a member (otherwise the message is stored or refused).
    pub fn message_route(&self, room: &str, from: &str) -> Route {
        match self.rooms.get(room) {
            Some(r) if r.members.len() >= ROOM_CAPACITY && r.members.iter().any(|m| m.id == from) => {
                self.collider_route(room, from)
            }
            _ => Route::ViaLog,
        }
    }

    /// Position of the last command that delivered a message in `room` (see
    /// [`Rooms::apply_at`]); 0 if none or no such room.
    pub fn delivered_at(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.delivered_at)
    }

    /// Applies one command. Deterministic: the same commands in the same order give the same
    /// state, outcomes and effects on every node.
    pub fn apply(&mut self, cmd: Command) -> Applied {
        self.apply_at(0, cmd)
    }

    /// Applies the command at position `pos` of the order commands are applied in (a Raft log
    /// index, or a single node's own count; 0: not remembered), remembering it in every room it
    /// delivers a message in.
    pub fn apply_at(&mut self, pos: u64, cmd: Command) -> Applied {
        let applied = self.apply_inner(cmd);
        if pos > 0 {
            for e in &applied.effects {
                if let Effect::Deliver { room, .. } = e {
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.delivered_at = r.delivered_at.max(pos);
                    }
                }
            }
        }
        applied
    }

    fn apply_inner(&mut self, cmd: Command) -> Applied {
        let mut effects = Vec::new();
        let outcome = match cmd {
            Command::Join { room, client, loopback, now_ms } => {
                Outcome::Join(self.join(room, client, loopback, now_ms))
            }
            Command::Leave { room, client, now_ms } => {
                Outcome::Left(self.leave(&room, &client, now_ms))
            }
            Command::Message { room, client, body, now_ms } => {
                Outcome::Message(self.message(room, client, body, now_ms, &mut effects))
            }
            Command::Register { room, client, at, now_ms } => {
                Outcome::Register(self.register(room, client, at, now_ms, &mut effects))
            }
            Command::Send { room, client, body, now_ms } => {
                Outcome::Send(self.send(room, client, body.into(), now_ms, &mut effects))
            }
            Command::Relay { room, client, bodies, origin, now_ms } => {
                self.relay(room, client, bodies, origin, now_ms, &mut effects)
            }
            Command::Reclaim { room, client, messages, gone, now_ms } => {
                self.reclaim(room, client, messages, &gone, now_ms, &mut effects)
            }
            Command::Unbind { room, client, at, now_ms } => {
                Outcome::Unbound(self.unbind(&room, &client, at, now_ms))
            }
            Command::Remove { room, client, now_ms } => {
                Outcome::Removed(self.remove_client(&room, &client, now_ms, &mut effects))
            }
            Command::Tick { now_ms } => self.tick(now_ms, &mut effects),
            Command::UnbindNode { node, now_ms, grace_ms } => {
                Outcome::NodeUnbound { clients: self.unbind_node(node, now_ms, grace_ms) }
            }
        };
        Applied { outcome, effects }
    }

    // ---- room lifecycle and timers ----

    /// Gets or creates a room, refreshing its idle timer.
    fn touch(&mut self, room: &str, now_ms: u64) -> Option<&mut Room> {
        if !self.rooms.contains_key(room) {
            if self.rooms.len() >= self.limits.max_rooms {
                return None;
            }
            self.rooms.insert(room.to_owned(), Room::new(now_ms));
            self.timers.insert((now_ms + self.limits.room_ttl_ms, room.to_owned(), None));
        }
        self.refresh(room, now_ms);
        self.rooms.get_mut(room)
    }

    /// Moves a room's idle timer to `now + ttl`; rooms with a bound socket have none.
    fn refresh(&mut self, room: &str, now_ms: u64) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let ttl = self.limits.room_ttl_ms;
        self.timers.remove(&(r.touched_ms + ttl, room.to_owned(), None));
        r.touched_ms = now_ms;
        if !r.has_bound_client() {
            self.timers.insert((now_ms + ttl, room.to_owned(), None));
        }
    }

    fn drop_if_empty(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(Room::is_empty) {
            if let Some(r) = self.rooms.remove(room) {
                self.stored_total -= r.stored_bytes();
                self.timers
                    .remove(&(r.touched_ms + self.limits.room_ttl_ms, room.to_owned(), None));
            }
        }
    }

    fn set_deadline(&mut self, room: &str, client: &str, deadline: Option<u64>) {
        let Some(c) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.clients.iter_mut().find(|c| c.id == client))
        else {
            return;
        };
        if let Some(old) = c.deadline_ms.take() {
            self.timers.remove(&(old, room.to_owned(), Some(client.to_owned())));
        }
        c.deadline_ms = deadline;
        if let Some(d) = deadline {
            self.timers.insert((d, room.to_owned(), Some(client.to_owned())));
        }
    }

    fn tick(&mut self, now_ms: u64, effects: &mut Vec<Effect>) -> Outcome {
        let (mut clients, mut rooms) = (0, 0);
        while let Some((due, room, client)) = self.timers.first().cloned() {
            if due > now_ms {
                break;
            }
            self.timers.pop_first();
            match client {
                Some(client) => {
                    let mut bye = false;
                    if let Some(c) = self.rooms.get_mut(&room).and_then(|r| {
                        r.clients.iter_mut().find(|c| c.id == client)
                    }) {
                        c.deadline_ms = None;
                        bye = c.bye_on_expiry;
                    }
                    if self.remove_client(&room, &client, now_ms, effects) {
                        clients += 1;
                        if bye {
                            self.send_bye(&room, effects);
                        }
                    }
                }
                None => {
                    // A room expires only when no socket is bound to it (a call may last longer
                    // than the idle TTL; its sockets keep it alive).
                    let Some(r) = self.rooms.get(&room) else { continue };
                    if r.has_bound_client() {
                        continue;
                    }
                    if let Some(r) = self.rooms.remove(&room) {
                        self.stored_total -= r.stored_bytes();
                        for c in &r.clients {
                            if let Some(d) = c.deadline_ms {
                                self.timers.remove(&(d, room.clone(), Some(c.id.clone())));
                            }
                        }
                        rooms += 1;
                    }
                }
            }
        }
        Outcome::Ticked { clients, rooms }
    }

    // ---- room server (AppRTC GAE) ----

    fn join(&mut self, room: String, client: String, loopback: bool, now_ms: u64) -> JoinOutcome {
        let Some(r) = self.touch(&room, now_ms) else { return JoinOutcome::TooManyRooms };
        if r.members.len() >= ROOM_CAPACITY {
            return JoinOutcome::Full;
        }
        if r.members.iter().any(|m| m.id == client) {
            return JoinOutcome::DuplicateClient;
        }
        match r.members.first_mut() {
            None => {
                r.members.push(Member { id: client, initiator: true, stored: Vec::new() });
                if loopback {
                    r.members.push(Member {
                        id: LOOPBACK_CLIENT_ID.to_owned(),
                        initiator: false,
                        stored: Vec::new(),
                    });
                }
                JoinOutcome::Joined { initiator: true, messages: Vec::new() }
            }
            Some(other) => {
                let messages = std::mem::take(&mut other.stored);
                r.members.push(Member { id: client, initiator: false, stored: Vec::new() });
                self.stored_total -= messages.iter().map(String::len).sum::<usize>();
                JoinOutcome::Joined { initiator: false, messages }
            }
        }
    }

    fn leave(&mut self, room: &str, client: &str, now_ms: u64) -> bool {
        let Some(r) = self.rooms.get_mut(room) else { return false };
        let before = r.members.len();
        let bytes_before = r.stored_bytes();
        r.members.retain(|m| m.id != client);
        let was_member = r.members.len() != before;
        if was_member {
            r.members.retain(|m| m.id != LOOPBACK_CLIENT_ID);
            self.stored_total -= bytes_before - r.stored_bytes();
            if let Some(m) = r.members.first_mut() {
                m.initiator = true;
            }
            self.refresh(room, now_ms);
            self.drop_if_empty(room);
        }
        was_member
    }

    fn message(
        &mut self,
        room: String,
        client: String,
        body: String,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> MessageOutcome {
        let (stored_cap, per_room, total) = (self.limits.stored_cap, self.limits.stored_bytes_per_room, self.limits.stored_bytes_total);
        let stored_total = self.stored_total;
        let Some(r) = self.rooms.get_mut(&room) else { return MessageOutcome::UnknownRoom };
        if r.members.is_empty() {
            return MessageOutcome::UnknownRoom;
        }
        let alone = r.members.len() == 1;
        let Some(m) = r.members.iter_mut().find(|m| m.id == client) else {
            return MessageOutcome::UnknownClient;
        };
        if alone {
            if m.stored.len() >= stored_cap {
                return MessageOutcome::StoreFull;
            }
            let mine: usize = m.stored.iter().map(String::len).sum();
            if mine + body.len() > per_room {
                return MessageOutcome::StoreOverBudget { total: false };
            }
            if stored_total + body.len() > total {
                return MessageOutcome::StoreOverBudget { total: true };
            }
            self.stored_total += body.len();
            m.stored.push(body);
            self.refresh(&room, now_ms);
            return MessageOutcome::Stored;
        }
        match self.send(room, client, body.into(), now_ms, effects) {
            Ok(sent) => MessageOutcome::Sent(sent),
            Err(e) => MessageOutcome::SendFailed(e),
        }
    }

    // ---- Collider ----

    /// Finds `client` in the Collider view, creating it (with a register deadline) if there is
    /// room for it.
    fn client_or_create(
        &mut self,
        room: &str,
        client: &str,
        now_ms: u64,
    ) -> Result<(), SendError> {
        let grace = self.limits.register_grace_ms;
        let r = self.touch(room, now_ms).ok_or(SendError::TooManyRooms)?;
        if r.client(client).is_some() {
            return Ok(());
        }
        if r.clients.len() >= ROOM_CAPACITY {
            self.drop_if_empty(room);
            return Err(SendError::MaxCapacity);
        }
        r.clients.push(Client {
            id: client.to_owned(),
            binding: None,
            queue: VecDeque::new(),
            relayed: None,
            reclaimed: Vec::new(),
            inbox: VecDeque::new(),
            deadline_ms: None,
            bye_on_expiry: false,
        });
        self.set_deadline(room, client, Some(now_ms + grace));
        Ok(())
    }

    fn register(
        &mut self,
        room: String,
        client: String,
        at: Binding,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), RegisterError> {
        self.client_or_create(&room, &client, now_ms).map_err(|e| match e {
            SendError::TooManyRooms => RegisterError::TooManyRooms,
            _ => RegisterError::MaxCapacity,
        })?;
        let r = self.rooms.get_mut(&room).expect("client_or_create made the room");
        let c = r
            .clients
            .iter_mut()
            .find(|c| c.id == client)
            .expect("client_or_create made the client");
        // The same socket registering again (its node asks after its bindings were released, or
        // a retry of an unanswered proposal) is no duplicate.
        if c.binding.is_some_and(|b| b != at) {
            return Err(RegisterError::Duplicated);
        }
        c.binding = Some(at);
        c.bye_on_expiry = false;
        // What a departed peer left for it, then the other client's queue, in order.
        let mut messages: Vec<Envelope> = c.inbox.drain(..).collect();
        if let Some(other) = r.clients.iter_mut().find(|c| c.id != client) {
            messages.extend(other.queue.drain(..));
        }
        if !messages.is_empty() {
            effects.push(Effect::Deliver { room: room.clone(), to: client.clone(), at, messages });
        }
        self.set_deadline(&room, &client, None);
        self.refresh(&room, now_ms);
        Ok(())
    }

    fn send(
        &mut self,
        room: String,
        client: String,
        body: Envelope,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<SendOutcome, SendError> {
        self.client_or_create(&room, &client, now_ms)?;
        self.send_existing(room, client, body, effects)
    }

    /// Sends as `client`, which exists in `room`: to the bound peer, else onto its own queue.
    fn send_existing(
        &mut self,
        room: String,
        client: String,
        body: Envelope,
        effects: &mut Vec<Effect>,
    ) -> Result<SendOutcome, SendError> {
        let queue_cap = self.limits.queue_cap;
        let r = self.rooms.get_mut(&room).expect("client_or_create made the room");
        if let Some(other) = r.other_client(&client) {
            if let Some(at) = other.binding {
                let to = other.id.clone();
                // Consecutive messages to one socket travel as one effect.
                if let Some(Effect::Deliver { room: r, at: a, messages, .. }) = effects.last_mut() {
                    if *r == room && *a == at {
                        messages.push(body);
                        return Ok(SendOutcome::Delivered);
                    }
                }
                effects.push(Effect::Deliver { room, to, at, messages: vec![body] });
                return Ok(SendOutcome::Delivered);
            }
        }
        let c = r
            .clients
            .iter_mut()
            .find(|c| c.id == client)
            .expect("client_or_create made the client");
        if c.queue.len() >= queue_cap {
            return Err(SendError::QueueFull);
        }
        c.queue.push_back(body);
        Ok(SendOutcome::Queued)
    }

    fn relay(
        &mut self,
        room: String,
        client: String,
        bodies: Vec<String>,
        origin: Origin,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Outcome {
        let total = bodies.len();
        let Some(c) = self.rooms.get_mut(&room).and_then(|r| r.clients.iter_mut().find(|c| c.id == client)) else {
            // Removed while these were in flight: Collider would have closed the socket first.
            return Outcome::Relayed { delivered: 0, queued: 0, dropped: total };
        };
        let skip = match c.relayed {
            Some((s, last)) if s == origin.session => (last + 1).saturating_sub(origin.first).min(total as u64) as usize,
            _ => 0,
        };
        if skip < total {
            c.relayed = Some((origin.session, origin.first + total as u64 - 1));
        }
        let (mut delivered, mut queued, mut dropped) = (0, 0, 0);
        for body in bodies.into_iter().skip(skip) {
            match self.send_existing(room.clone(), client.clone(), body.into(), effects) {
                Ok(SendOutcome::Delivered) => delivered += 1,
                Ok(SendOutcome::Queued) => queued += 1,
                Err(_) => dropped += 1,
            }
        }
        if delivered + queued > 0 {
            self.refresh(&room, now_ms);
        }
        Outcome::Relayed { delivered, queued, dropped }
    }

    fn reclaim(
        &mut self,
        room: String,
        client: String,
        messages: Vec<Envelope>,
        gone: &[Binding],
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Outcome {
        let total = messages.len();
        let queue_cap = self.limits.queue_cap;
        let Some(r) = self.rooms.get_mut(&room) else {
            return Outcome::Relayed { delivered: 0, queued: 0, dropped: total };
        };
        let Some(c) = r.clients.iter_mut().find(|c| c.id == client) else {
            // The sender hung up (its DELETE applied first) while these waited for a lost node:
            // they are what it left for the one client remaining, as its queue would have been.
            if let [peer] = &mut r.clients[..] {
                if let Some(at) = peer.binding.filter(|b| !gone.contains(b)) {
                    let to = peer.id.clone();
                    effects.push(Effect::Deliver { room: room.clone(), to, at, messages });
                    return Outcome::Relayed { delivered: total, queued: 0, dropped: 0 };
                }
                let room_for = queue_cap.saturating_sub(peer.inbox.len()).min(total);
                peer.inbox.extend(messages.into_iter().take(room_for));
                return Outcome::Relayed { delivered: 0, queued: room_for, dropped: total - room_for };
            }
            return Outcome::Relayed { delivered: 0, queued: 0, dropped: total };
        };
        // A run proposed again (its first proposal went unanswered) applies once: forwards of a
        // link come in order, so what is not past the latest one seen was applied before.
        let same_link = |a: &ForwardTag, b: &ForwardTag| (a.from, a.incarnation, a.to) == (b.from, b.incarnation, b.to);
        let mut messages = messages;
        messages.retain(|m| {
            m.tag.is_none_or(|t| !c.reclaimed.iter().any(|seen| same_link(seen, &t) && t.seq <= seen.seq))
        });
        for t in messages.iter().filter_map(|m| m.tag) {
            match c.reclaimed.iter_mut().find(|seen| same_link(seen, &t)) {
                Some(seen) => seen.seq = seen.seq.max(t.seq),
                None => {
                    if c.reclaimed.len() >= 4 {
                        c.reclaimed.remove(0);
                    }
                    c.reclaimed.push(t);
                }
            }
        }
        let skipped = total - messages.len();
        let total = messages.len();
        // A peer still bound to a socket they were forwarded to is bound to a socket that is
        // gone (its node's new life has not released it yet): they wait for its next one.
        if let Some(other) = r.other_client(&client) {
            if let Some(at) = other.binding.filter(|b| !gone.contains(b)) {
                let to = other.id.clone();
                if total > 0 {
                    effects.push(Effect::Deliver { room: room.clone(), to, at, messages });
                }
                self.refresh(&room, now_ms);
                return Outcome::Relayed { delivered: total, queued: 0, dropped: skipped };
            }
        }
        let Some(c) = r.clients.iter_mut().find(|c| c.id == client) else {
            return Outcome::Relayed { delivered: 0, queued: 0, dropped: total };
        };
        // They were sent before anything now queued from the log: they go first, though after
        // runs of the same link reclaimed before them with lower numbers (a lost node's
        // forwards come back as several runs, one per stretch of this sender's frames, and
        // must stay in the order they were sent). What does not fit is the oldest, as a full
        // queue would have refused them at the time.
        let first = messages.iter().find_map(|m| m.tag);
        let at = first.map_or(0, |f| {
            c.queue.iter().take_while(|q| q.tag.is_some_and(|t| same_link(&t, &f) && t.seq < f.seq)).count()
        });
        let room_for = queue_cap.saturating_sub(c.queue.len()).min(total);
        for m in messages.into_iter().skip(total - room_for).rev() {
            c.queue.insert(at, m);
        }
        self.refresh(&room, now_ms);
        Outcome::Relayed { delivered: 0, queued: room_for, dropped: total - room_for + skipped }
    }

    fn unbind(&mut self, room: &str, client: &str, at: Binding, now_ms: u64) -> bool {
        let grace = self.limits.register_grace_ms;
        let Some(c) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.clients.iter_mut().find(|c| c.id == client))
        else {
            return false;
        };
        // A late close of an old socket must not unbind a newer registration.
        if c.binding != Some(at) {
            return false;
        }
        c.binding = None;
        self.set_deadline(room, client, Some(now_ms + grace));
        self.refresh(room, now_ms);
        true
    }

    fn unbind_node(&mut self, node: NodeId, now_ms: u64, grace_ms: u64) -> usize {
        let lost = self.bindings_on(node);
        for (room, client, _) in &lost {
            if let Some(c) = self
                .rooms
                .get_mut(room)
                .and_then(|r| r.clients.iter_mut().find(|c| &c.id == client))
            {
                c.binding = None;
                c.bye_on_expiry = true;
            }
            self.set_deadline(room, client, Some(now_ms + grace_ms));
            self.refresh(room, now_ms);
        }
        lost.len()
    }

    /// Tells the remaining bound client of `room` that its peer is gone.
    fn send_bye(&mut self, room: &str, effects: &mut Vec<Effect>) {
        if let Some(c) = self.rooms.get(room).and_then(|r| r.clients.iter().find(|c| c.binding.is_some())) {
            if let Some(at) = c.binding {
                effects.push(Effect::Deliver {
                    room: room.to_owned(),
                    to: c.id.clone(),
                    at,
                    messages: vec![BYE.into()],
                });
            }
        }
    }

    /// Removes a Collider client (DELETE, or its grace ran out) and, as AppRTC's `/bye` notice
    /// meant to, its room-server membership.
    fn remove_client(
        &mut self,
        room: &str,
        client: &str,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> bool {
        let Some(r) = self.rooms.get_mut(room) else { return false };
        let Some(i) = r.clients.iter().position(|c| c.id == client) else { return false };
        let mut c = r.clients.remove(i);
        if let Some(at) = c.binding {
            effects.push(Effect::Close { room: room.to_owned(), client: client.to_owned(), at });
        }
        // Its peer is unbound only because its node was lost (its socket may well be open):
        // what was queued for it (a hang-up's bye…) is kept for its next registration, as if
        // it had been written to that socket.
        let cap = self.limits.queue_cap;
        if let Some(peer) = r.clients.iter_mut().find(|p| p.binding.is_none() && p.bye_on_expiry) {
            let room_for = cap.saturating_sub(peer.inbox.len());
            peer.inbox.extend(c.queue.drain(..).take(room_for));
        }
        if let Some(d) = c.deadline_ms {
            self.timers.remove(&(d, room.to_owned(), Some(client.to_owned())));
        }
        self.leave(room, client, now_ms);
        self.refresh(room, now_ms);
        self.drop_if_empty(room);
        true
    }
}

#[cfg(test)]
mod tests;
