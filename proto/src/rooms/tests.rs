//! Unit tests of the room state machine: one command, exact outcome and effects, time injected.
//! Section numbers refer to the AppRTC protocol notes (room server §1, Collider §2, checks §7).

use super::*;

const T0: u64 = 1_700_000_000_000;

fn rooms() -> Rooms {
    Rooms::new(Limits::default())
}

fn at(node: NodeId, n: u128) -> Binding {
    Binding { node, session: SessionId(Uuid::from_u128(n)) }
}

fn join(r: &mut Rooms, room: &str, client: &str) -> JoinOutcome {
    match r.apply(Command::Join { room: room.into(), client: client.into(), loopback: false, now_ms: T0 }).outcome {
        Outcome::Join(j) => j,
        o => panic!("unexpected {o:?}"),
    }
}

fn message(r: &mut Rooms, room: &str, client: &str, body: &str) -> Applied {
    r.apply(Command::Message { room: room.into(), client: client.into(), body: body.into(), now_ms: T0 })
}

fn register(r: &mut Rooms, room: &str, client: &str, b: Binding, now_ms: u64) -> Applied {
    r.apply(Command::Register { room: room.into(), client: client.into(), at: b, now_ms })
}

fn send(r: &mut Rooms, room: &str, client: &str, body: &str, now_ms: u64) -> Applied {
    r.apply(Command::Send { room: room.into(), client: client.into(), body: body.into(), now_ms })
}

fn joined(initiator: bool, messages: &[&str]) -> JoinOutcome {
    JoinOutcome::Joined { initiator, messages: messages.iter().map(|s| s.to_string()).collect() }
}

/// §6.3 testJoinAndLeave, §7 rows 1-3 and 12.
#[test]
fn join_leave_and_rejoin() {
    let mut r = rooms();
    assert_eq!(join(&mut r, "foo", "1"), joined(true, &[]));
    assert_eq!(join(&mut r, "foo", "2"), joined(false, &[]));
    assert_eq!(join(&mut r, "foo", "3"), JoinOutcome::Full);
    assert_eq!(r.occupancy("foo"), 2);
    r.apply(Command::Leave { room: "foo".into(), client: "1".into(), now_ms: T0 });
    r.apply(Command::Leave { room: "foo".into(), client: "2".into(), now_ms: T0 });
    assert_eq!(r.room_count(), 0, "an empty room is deleted");
    assert_eq!(join(&mut r, "foo", "4"), joined(true, &[]));
}

#[test]
fn duplicate_client_is_reported() {
    let mut r = rooms();
    join(&mut r, "foo", "1");
    assert_eq!(join(&mut r, "foo", "1"), JoinOutcome::DuplicateClient);
}

/// §1.4: the remaining member becomes the initiator and keeps its stored messages (§7 row 11).
#[test]
fn leave_hands_initiator_over() {
    let mut r = rooms();
    join(&mut r, "R", "1");
    join(&mut r, "R", "2");
    assert_eq!(r.is_initiator("R", "2"), Some(false));
    let a = r.apply(Command::Leave { room: "R".into(), client: "1".into(), now_ms: T0 });
    assert_eq!(a.outcome, Outcome::Left(true));
    assert_eq!(r.is_initiator("R", "2"), Some(true));
    assert_eq!(r.occupancy("R"), 1);
    assert_eq!(join(&mut r, "R", "3"), joined(false, &[]));
}

/// §1.4: leaving an unknown room or as a stranger changes nothing (§7 row 13).
#[test]
fn leave_unknown_is_harmless() {
    let mut r = rooms();
    assert_eq!(r.apply(Command::Leave { room: "NOPE".into(), client: "1".into(), now_ms: T0 }).outcome, Outcome::Left(false));
    join(&mut r, "R", "1");
    assert_eq!(r.apply(Command::Leave { room: "R".into(), client: "9".into(), now_ms: T0 }).outcome, Outcome::Left(false));
    assert_eq!(r.occupancy("R"), 1);
}

/// §6.3 testCallerMessagesForwardedToCallee, §7 rows 5-7: stored in order, handed out once.
#[test]
fn stored_messages_go_to_the_next_joiner_once() {
    let mut r = rooms();
    join(&mut r, "R", "1");
    for m in ["1", "2", "3"] {
        let a = message(&mut r, "R", "1", m);
        assert_eq!(a.outcome, Outcome::Message(MessageOutcome::Stored));
        assert!(a.effects.is_empty(), "a stored message is not forwarded");
    }
    assert_eq!(join(&mut r, "R", "2"), joined(false, &["1", "2", "3"]));
    assert_eq!(join(&mut r, "R", "3"), JoinOutcome::Full);
    r.apply(Command::Leave { room: "R".into(), client: "2".into(), now_ms: T0 });
    assert_eq!(join(&mut r, "R", "4"), joined(false, &[]), "messages were handed out once");
}

/// §1.3 and §7 rows 8-9.
#[test]
fn message_to_unknown_room_or_client() {
    let mut r = rooms();
    assert_eq!(message(&mut r, "NOPE", "123", "x").outcome, Outcome::Message(MessageOutcome::UnknownRoom));
    join(&mut r, "R", "1");
    assert_eq!(message(&mut r, "R", "99999999", "x").outcome, Outcome::Message(MessageOutcome::UnknownClient));
}

#[test]
fn message_store_is_bounded() {
    let mut r = Rooms::new(Limits { stored_cap: 2, ..Limits::default() });
    join(&mut r, "R", "1");
    message(&mut r, "R", "1", "a");
    message(&mut r, "R", "1", "b");
    assert_eq!(message(&mut r, "R", "1", "c").outcome, Outcome::Message(MessageOutcome::StoreFull));
}

/// Stored messages have byte budgets per room and in total: every node holds them all.
#[test]
fn stored_bytes_are_budgeted_per_room_and_in_total() {
    let over = |total| Outcome::Message(MessageOutcome::StoreOverBudget { total });
    let mut r = Rooms::new(Limits { stored_bytes_per_room: 10, stored_bytes_total: 25, ..Limits::default() });
    join(&mut r, "A", "1");
    assert_eq!(message(&mut r, "A", "1", "123456").outcome, Outcome::Message(MessageOutcome::Stored));
    assert_eq!(message(&mut r, "A", "1", "12345").outcome, over(false), "6 + 5 > 10 for the room");
    assert_eq!(message(&mut r, "A", "1", "1234").outcome, Outcome::Message(MessageOutcome::Stored));
    join(&mut r, "B", "1");
    join(&mut r, "C", "1");
    assert_eq!(message(&mut r, "B", "1", "1234567890").outcome, Outcome::Message(MessageOutcome::Stored));
    assert_eq!(message(&mut r, "C", "1", "123456").outcome, over(true), "10 + 10 + 6 > 25 in all");
    // Handed to the next joiner, the bytes are free again.
    join(&mut r, "A", "2");
    assert_eq!(message(&mut r, "C", "1", "123456").outcome, Outcome::Message(MessageOutcome::Stored));
    assert_eq!(r.stored_total, 16);
}

/// The total is derived state: whatever happens to the rooms, it equals what they hold, and a
/// snapshot restores it.
#[test]
fn stored_total_follows_every_change() {
    let mut r = Rooms::new(Limits { room_ttl_ms: 1_000, ..Limits::default() });
    let sum = |r: &Rooms| r.rooms.values().map(Room::stored_bytes).sum::<usize>();
    for i in 0..50u32 {
        let room = format!("R{}", i % 7);
        let client = format!("{}", i % 3);
        match i % 5 {
            0 | 1 => drop(join(&mut r, &room, &client)),
            2 | 3 => drop(message(&mut r, &room, &client, &"x".repeat(i as usize))),
            _ => drop(r.apply(Command::Leave { room, client, now_ms: T0 })),
        }
        assert_eq!(r.stored_total, sum(&r), "after step {i}");
    }
    let bytes = postcard::to_allocvec(&r).unwrap();
    let mut back: Rooms = postcard::from_bytes(&bytes).unwrap();
    back.rebuild_index();
    assert_eq!(back.stored_total, r.stored_total);
    // Rooms expiring take their bytes with them.
    r.apply(Command::Tick { now_ms: T0 + 10_000 });
    assert_eq!(r.room_count(), 0);
    assert_eq!(r.stored_total, 0);
}

/// §7 row 10: with two members, `/message` reaches the registered peer's socket.
#[test]
fn message_with_two_members_reaches_the_peer_socket() {
    let mut r = rooms();
    join(&mut r, "R", "1");
    join(&mut r, "R", "2");
    register(&mut r, "R", "2", at(1, 2), T0);
    assert_eq!(r.message_route("R", "1"), Route::ViaLog, "sender 1 is not yet a Collider client");
    let a = message(&mut r, "R", "1", "B");
    assert_eq!(a.outcome, Outcome::Message(MessageOutcome::Sent(SendOutcome::Delivered)));
    assert_eq!(a.effects, vec![Effect::Deliver { room: "R".into(), to: "2".into(), at: at(1, 2), messages: vec!["B".into()] }]);
    assert_eq!(r.message_route("R", "1"), Route::Direct(at(1, 2)), "now nothing needs to change");
    assert_eq!(r.message_route("R", "9"), Route::ViaLog, "strangers go through the log and get UNKNOWN_CLIENT");
}

/// §7 row 14: the loopback pseudo-client fills the room; leave removes it too.
#[test]
fn loopback_join() {
    let mut r = rooms();
    let a = r.apply(Command::Join { room: "L".into(), client: "1".into(), loopback: true, now_ms: T0 });
    assert_eq!(a.outcome, Outcome::Join(joined(true, &[])));
    assert_eq!(r.members("L"), vec!["1".to_string(), LOOPBACK_CLIENT_ID.to_string()]);
    assert_eq!(join(&mut r, "L", "2"), JoinOutcome::Full);
    r.apply(Command::Leave { room: "L".into(), client: "1".into(), now_ms: T0 });
    assert_eq!(r.room_count(), 0);
}

/// §6.1 TestWsForwardServer / §7 row 17: direct delivery between registered clients.
#[test]
fn registered_clients_route_directly() {
    let mut r = rooms();
    assert!(register(&mut r, "abc", "123", at(1, 1), T0).effects.is_empty());
    register(&mut r, "abc", "456", at(2, 2), T0);
    assert_eq!(r.collider_route("abc", "123"), Route::Direct(at(2, 2)));
    assert_eq!(r.collider_route("abc", "456"), Route::Direct(at(1, 1)));
    assert_eq!(r.bound_count(), 2);
}

/// §7 rows 18-19: a bound client id cannot be registered again.
#[test]
fn duplicated_registration() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    assert_eq!(register(&mut r, "R", "a", at(1, 2), T0).outcome, Outcome::Register(Err(RegisterError::Duplicated)));
    assert_eq!(r.clients("R"), vec![("a".to_string(), Some(at(1, 1)))], "the first socket is unaffected");
}

/// §7 row 20 and §6.2 item 11: a third client id is refused.
#[test]
fn collider_capacity() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(1, 2), T0);
    assert_eq!(register(&mut r, "R", "c", at(1, 3), T0).outcome, Outcome::Register(Err(RegisterError::MaxCapacity)));
    assert_eq!(send(&mut r, "R", "x", "m", T0).outcome, Outcome::Send(Err(SendError::MaxCapacity)));
}

/// §6.1 TestHttpHandlerSendCached, §7 rows 25-26: queued in order, flushed on register.
#[test]
fn queued_messages_flush_in_order_on_register() {
    let mut r = rooms();
    assert_eq!(send(&mut r, "R", "b", "m1", T0).outcome, Outcome::Send(Ok(SendOutcome::Queued)));
    assert_eq!(send(&mut r, "R", "b", "m2", T0).outcome, Outcome::Send(Ok(SendOutcome::Queued)));
    let a = register(&mut r, "R", "a", at(1, 7), T0);
    assert_eq!(a.outcome, Outcome::Register(Ok(())));
    assert_eq!(a.effects, vec![Effect::Deliver { room: "R".into(), to: "a".into(), at: at(1, 7), messages: vec!["m1".into(), "m2".into()] }]);
    assert_eq!(r.queued("R", "b"), 0);
}

/// §6.2 item 19: once the peer registers, new sends go directly and an old queue stays queued.
#[test]
fn direct_send_does_not_flush_an_old_queue() {
    let mut r = rooms();
    register(&mut r, "R", "1", at(1, 1), T0);
    send(&mut r, "R", "2", "old", T0); // 1 is bound: delivered, nothing queued
    assert_eq!(r.queued("R", "2"), 0);
    let mut r = rooms();
    send(&mut r, "R", "1", "old", T0);
    register(&mut r, "R", "2", at(1, 2), T0 + 1); // flushes 1's queue to 2
    send(&mut r, "R", "2", "q", T0 + 2); // 1 not bound: queued on 2
    register(&mut r, "R", "1", at(1, 1), T0 + 3);
    let a = send(&mut r, "R", "2", "new", T0 + 4);
    assert_eq!(a.outcome, Outcome::Send(Ok(SendOutcome::Delivered)));
    assert_eq!(r.queued("R", "2"), 0, "register flushed q");
}

/// §6.2 item 21 and §7 row 38: 1024 queued messages, the 1025th is refused.
#[test]
fn queue_is_capped_at_1024() {
    let mut r = rooms();
    for i in 0..1024 {
        assert_eq!(send(&mut r, "R", "b", &i.to_string(), T0).outcome, Outcome::Send(Ok(SendOutcome::Queued)));
    }
    assert_eq!(send(&mut r, "R", "b", "x", T0).outcome, Outcome::Send(Err(SendError::QueueFull)));
    assert_eq!(SendError::QueueFull.to_string(), "Too many messages queued for the client");
}

/// §6.1 TestRoomCleanedUpAfterTimeout, §7 row 33: a POST-only client is removed after the grace.
#[test]
fn unregistered_client_expires_after_grace() {
    let mut r = rooms();
    send(&mut r, "R", "b", "hi", T0);
    assert_eq!(r.next_deadline(), Some(T0 + 10_000));
    assert_eq!(r.apply(Command::Tick { now_ms: T0 + 9_999 }).outcome, Outcome::Ticked { clients: 0, rooms: 0 });
    assert_eq!(r.room_count(), 1);
    assert_eq!(r.apply(Command::Tick { now_ms: T0 + 10_000 }).outcome, Outcome::Ticked { clients: 1, rooms: 0 });
    assert_eq!(r.room_count(), 0);
    assert_eq!(r.next_deadline(), None, "no timer is left behind");
    assert_eq!(send(&mut r, "R", "c", "x", T0 + 10_001).outcome, Outcome::Send(Ok(SendOutcome::Queued)));
    assert_eq!(send(&mut r, "R", "d", "x", T0 + 10_001).outcome, Outcome::Send(Ok(SendOutcome::Queued)));
}

/// §6.1 TestReregisterClientBeforeTimeout, §7 row 34: re-registering within the grace keeps the
/// client, its queue and its membership.
#[test]
fn reregister_within_grace_keeps_state() {
    let mut r = rooms();
    join(&mut r, "R", "a");
    join(&mut r, "R", "b");
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(1, 2), T0);
    assert_eq!(r.apply(Command::Unbind { room: "R".into(), client: "a".into(), at: at(1, 1), now_ms: T0 + 100 }).outcome, Outcome::Unbound(true));
    assert_eq!(send(&mut r, "R", "b", "m", T0 + 200).outcome, Outcome::Send(Ok(SendOutcome::Queued)));
    let a = register(&mut r, "R", "a", at(2, 9), T0 + 5_000);
    assert_eq!(a.effects, vec![Effect::Deliver { room: "R".into(), to: "a".into(), at: at(2, 9), messages: vec!["m".into()] }]);
    r.apply(Command::Tick { now_ms: T0 + 60_000 });
    assert_eq!(r.clients("R").len(), 2, "the cancelled timer does not fire");
    assert_eq!(r.occupancy("R"), 2);
}

/// §7 row 35: no re-register within the grace removes the client from both views.
#[test]
fn dropped_socket_without_reregister_leaves_the_room() {
    let mut r = rooms();
    join(&mut r, "R", "a");
    join(&mut r, "R", "b");
    register(&mut r, "R", "a", at(1, 1), T0);
    r.apply(Command::Unbind { room: "R".into(), client: "a".into(), at: at(1, 1), now_ms: T0 });
    r.apply(Command::Tick { now_ms: T0 + 10_000 });
    assert!(r.clients("R").is_empty());
    assert_eq!(r.members("R"), vec!["b".to_string()]);
    assert_eq!(r.is_initiator("R", "b"), Some(true));
}

/// A late close of an old socket does not unbind the client's newer socket.
#[test]
fn stale_unbind_is_ignored() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    r.apply(Command::Unbind { room: "R".into(), client: "a".into(), at: at(1, 1), now_ms: T0 });
    register(&mut r, "R", "a", at(1, 2), T0);
    assert_eq!(r.apply(Command::Unbind { room: "R".into(), client: "a".into(), at: at(1, 1), now_ms: T0 }).outcome, Outcome::Unbound(false));
    assert_eq!(r.clients("R"), vec![("a".to_string(), Some(at(1, 2)))]);
}

/// §6.1 TestHttpHandlerDeleteConnection, §7 row 30: DELETE closes the socket and frees the slot.
#[test]
fn remove_closes_the_socket_and_leaves() {
    let mut r = rooms();
    join(&mut r, "R", "a");
    register(&mut r, "R", "a", at(1, 1), T0);
    let a = r.apply(Command::Remove { room: "R".into(), client: "a".into(), now_ms: T0 });
    assert_eq!(a.outcome, Outcome::Removed(true));
    assert_eq!(a.effects, vec![Effect::Close { room: "R".into(), client: "a".into(), at: at(1, 1) }]);
    assert_eq!(r.room_count(), 0);
    assert_eq!(r.apply(Command::Remove { room: "R".into(), client: "a".into(), now_ms: T0 }).outcome, Outcome::Removed(false));
}

/// Rooms nobody touches for the TTL expire, unless a socket is bound to them.
#[test]
fn idle_rooms_expire_unless_a_socket_is_bound() {
    let mut r = Rooms::new(Limits { room_ttl_ms: 1_000, ..Limits::default() });
    join(&mut r, "idle", "1");
    join(&mut r, "busy", "1");
    register(&mut r, "busy", "1", at(1, 1), T0);
    assert_eq!(r.apply(Command::Tick { now_ms: T0 + 1_000 }).outcome, Outcome::Ticked { clients: 0, rooms: 1 });
    assert_eq!(r.occupancy("idle"), 0);
    assert_eq!(r.occupancy("busy"), 1);
    r.apply(Command::Unbind { room: "busy".into(), client: "1".into(), at: at(1, 1), now_ms: T0 + 2_000 });
    r.apply(Command::Register { room: "busy".into(), client: "1".into(), at: at(1, 2), now_ms: T0 + 3_000 });
    r.apply(Command::Tick { now_ms: T0 + 100_000 });
    assert_eq!(r.occupancy("busy"), 1);
}

#[test]
fn room_count_is_bounded() {
    let mut r = Rooms::new(Limits { max_rooms: 2, ..Limits::default() });
    join(&mut r, "a", "1");
    join(&mut r, "b", "1");
    assert_eq!(join(&mut r, "c", "1"), JoinOutcome::TooManyRooms);
    assert_eq!(register(&mut r, "c", "1", at(1, 1), T0).outcome, Outcome::Register(Err(RegisterError::TooManyRooms)));
    assert_eq!(send(&mut r, "c", "1", "x", T0).outcome, Outcome::Send(Err(SendError::TooManyRooms)));
    assert_eq!(join(&mut r, "a", "2"), joined(false, &[]), "existing rooms still work");
}

#[test]
fn bindings_on_a_node() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(2, 2), T0);
    register(&mut r, "S", "c", at(2, 3), T0);
    let on2: Vec<_> = r.bindings_on(2).into_iter().map(|(room, c, _)| (room, c)).collect();
    assert_eq!(on2, vec![("R".to_string(), "b".to_string()), ("S".to_string(), "c".to_string())]);
}

/// A lost node's clients may register again anywhere within the grace; one that does not is
/// evicted and its peer gets the `bye` a leaving client would have sent.
#[test]
fn lost_node_clients_rebind_or_are_evicted_with_bye() {
    let mut r = rooms();
    for (room, a, b) in [("R", "a1", "b1"), ("S", "a2", "b2")] {
        join(&mut r, room, a);
        join(&mut r, room, b);
    }
    register(&mut r, "R", "a1", at(1, 1), T0);
    register(&mut r, "R", "b1", at(2, 2), T0);
    register(&mut r, "S", "a2", at(1, 3), T0);
    register(&mut r, "S", "b2", at(2, 4), T0);
    let a = r.apply(Command::UnbindNode { node: 1, now_ms: T0 + 10, grace_ms: 5_000 });
    assert_eq!(a.outcome, Outcome::NodeUnbound { clients: 2 });
    assert!(a.effects.is_empty(), "nothing is sent when the node is lost");
    assert_eq!(r.collider_route("R", "b1"), Route::ViaLog, "b1's messages now wait for a1");
    // a1 comes back on node 3; a2 never does.
    assert_eq!(register(&mut r, "R", "a1", at(3, 9), T0 + 1_000).outcome, Outcome::Register(Ok(())));
    let t = r.apply(Command::Tick { now_ms: T0 + 5_010 });
    assert_eq!(t.outcome, Outcome::Ticked { clients: 1, rooms: 0 });
    assert_eq!(t.effects, vec![Effect::Deliver { room: "S".into(), to: "b2".into(), at: at(2, 4), messages: vec![BYE.into()] }]);
    assert_eq!(r.members("S"), vec!["b2".to_string()], "a2 left the room; b2 is the initiator");
    assert_eq!(r.is_initiator("S", "b2"), Some(true));
    assert_eq!(r.clients("R").len(), 2, "a1 re-registered in time");
    // A later normal socket drop of a1 does not send a bye.
    r.apply(Command::Unbind { room: "R".into(), client: "a1".into(), at: at(3, 9), now_ms: T0 + 6_000 });
    let t = r.apply(Command::Tick { now_ms: T0 + 17_000 });
    assert!(t.effects.is_empty(), "{:?}", t.effects);
}

fn relay(r: &mut Rooms, room: &str, client: &str, session: u128, first: u64, bodies: &[&str]) -> Applied {
    r.apply(Command::Relay {
        room: room.into(),
        client: client.into(),
        bodies: bodies.iter().map(|b| b.to_string()).collect(),
        origin: Origin { session: SessionId(Uuid::from_u128(session)), first },
        now_ms: T0,
    })
}

fn bodies(msgs: &[Envelope]) -> Vec<&str> {
    msgs.iter().map(|m| m.body.as_str()).collect()
}

/// A socket's run of messages: delivered to a bound peer as one effect, queued otherwise, and a
/// run proposed again (a retry) applies once.
#[test]
fn relay_runs_apply_once() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    let x = relay(&mut r, "R", "a", 1, 1, &["m1", "m2"]);
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 2, dropped: 0 });
    assert_eq!(relay(&mut r, "R", "a", 1, 1, &["m1", "m2"]).outcome, Outcome::Relayed { delivered: 0, queued: 0, dropped: 0 }, "a retry");
    assert_eq!(relay(&mut r, "R", "a", 1, 2, &["m2", "m3"]).outcome, Outcome::Relayed { delivered: 0, queued: 1, dropped: 0 }, "overlap");
    assert_eq!(r.queued("R", "a"), 3);
    let reg = register(&mut r, "R", "b", at(2, 2), T0);
    match &reg.effects[..] {
        [Effect::Deliver { to, messages, .. }] => {
            assert_eq!(to, "b");
            assert_eq!(bodies(messages), vec!["m1", "m2", "m3"]);
        }
        other => panic!("{other:?}"),
    }
    let x = relay(&mut r, "R", "a", 1, 4, &["m4", "m5"]);
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 2, queued: 0, dropped: 0 });
    match &x.effects[..] {
        [Effect::Deliver { messages, .. }] => assert_eq!(bodies(messages), vec!["m4", "m5"], "one effect"),
        other => panic!("{other:?}"),
    }
    // Another socket of the same client numbers from 1 again.
    assert_eq!(relay(&mut r, "R", "a", 7, 1, &["n1"]).outcome, Outcome::Relayed { delivered: 1, queued: 0, dropped: 0 });
}

/// The hang-up race: a socket's last `send` (its bye) applied after its client's `DELETE` must
/// not bring the client back as a phantom that fills the room.
#[test]
fn relay_after_remove_creates_no_phantom() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    r.apply(Command::Remove { room: "R".into(), client: "a".into(), now_ms: T0 });
    assert_eq!(r.room_count(), 0);
    assert_eq!(relay(&mut r, "R", "a", 1, 1, &[BYE]).outcome, Outcome::Relayed { delivered: 0, queued: 0, dropped: 1 });
    assert_eq!(r.room_count(), 0, "no phantom client");
}

/// Beyond the queue cap a socket's messages are dropped silently (Collider ignores the error on
/// the socket path), and what was queued stays.
#[test]
fn relay_beyond_the_queue_cap_drops_silently() {
    let mut r = Rooms::new(Limits { queue_cap: 3, ..Limits::default() });
    register(&mut r, "R", "a", at(1, 1), T0);
    let x = relay(&mut r, "R", "a", 1, 1, &["1", "2", "3", "4", "5"]);
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 3, dropped: 2 });
    assert_eq!(r.queued("R", "a"), 3);
}

/// Messages sent again after their node was lost go before what was queued since, or straight
/// to the peer when it is bound again (not to the socket they were meant for, still bound while
/// its node's new life has not released it); their tags travel with them.
#[test]
fn reclaim_goes_first() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(2, 2), T0);
    r.apply(Command::UnbindNode { node: 2, now_ms: T0, grace_ms: 1000 });
    relay(&mut r, "R", "a", 1, 1, &["new"]);
    let tag = ForwardTag { from: 1, incarnation: 9, to: 2, to_life: 5, seq: 4 };
    let old = Envelope { body: "old".into(), tag: Some(tag) };
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "a".into(), messages: vec![old.clone()], gone: vec![at(2, 2)], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 1, dropped: 0 });
    let reg = register(&mut r, "R", "b", at(3, 3), T0);
    match &reg.effects[..] {
        [Effect::Deliver { messages, .. }] => {
            assert_eq!(bodies(messages), vec!["old", "new"]);
            assert_eq!(messages[0].tag, Some(tag));
        }
        other => panic!("{other:?}"),
    }
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "a".into(), messages: vec![old], gone: vec![at(2, 2)], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 0, dropped: 1 }, "a repeated run applies once");
    let newer = Envelope { body: "newer".into(), tag: Some(ForwardTag { seq: 5, ..tag }) };
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "a".into(), messages: vec![newer], gone: vec![at(2, 2)], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 1, queued: 0, dropped: 0 }, "the peer is bound again");
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "gone".into(), messages: vec!["m".into()], gone: vec![], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 0, dropped: 1 });
    // The peer still bound to the socket the messages were forwarded to: queued, not written.
    let stale = Envelope { body: "stale".into(), tag: Some(ForwardTag { seq: 6, ..tag }) };
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "a".into(), messages: vec![stale], gone: vec![at(3, 3)], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 1, dropped: 0 });
    assert!(x.effects.is_empty());
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "gone".into(), messages: vec!["m".into()], gone: vec![], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 0, dropped: 1 });
}

/// The same hang-up when the bye had been forwarded to the lost node: the DELETE applies before
/// the forward is taken back through the log, and the bye, sender gone, is kept for the client
/// (in order, tag kept, so its node writes it once) until it registers again from that node.
#[test]
fn a_reclaimed_bye_outlives_its_sender() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(2, 2), T0);
    r.apply(Command::UnbindNode { node: 1, now_ms: T0, grace_ms: 5_000 });
    r.apply(Command::Remove { room: "R".into(), client: "b".into(), now_ms: T0 });
    let tag = ForwardTag { from: 2, incarnation: 9, to: 1, to_life: 5, seq: 4 };
    let bye = Envelope { body: BYE.into(), tag: Some(tag) };
    let x = r.apply(Command::Reclaim { room: "R".into(), client: "b".into(), messages: vec![bye], gone: vec![at(1, 1)], now_ms: T0 });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 0, queued: 1, dropped: 0 });
    let reg = register(&mut r, "R", "a", at(1, 1), T0 + 1_000);
    match &reg.effects[..] {
        [Effect::Deliver { to, messages, .. }] => {
            assert_eq!(to, "a");
            assert_eq!(bodies(messages), vec![BYE]);
            assert_eq!(messages[0].tag, Some(tag));
        }
        other => panic!("{other:?}"),
    }
    // The remaining client bound elsewhere already: written to it at once.
    let x = r.apply(Command::Reclaim {
        room: "R".into(),
        client: "b".into(),
        messages: vec![Envelope { body: "late".into(), tag: Some(ForwardTag { seq: 5, ..tag }) }],
        gone: vec![at(7, 7)],
        now_ms: T0,
    });
    assert_eq!(x.outcome, Outcome::Relayed { delivered: 1, queued: 0, dropped: 0 });
}

/// A lost node's forwards of one sender come back as several runs (its frames were interleaved
/// with other rooms' on the link), applied in the order they were sent. Queued while the peer is
/// unbound, they reach it in that order, before what the log queued meanwhile.
#[test]
fn reclaimed_runs_of_one_sender_keep_their_order() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(2, 2), T0);
    r.apply(Command::UnbindNode { node: 2, now_ms: T0, grace_ms: 5_000 });
    send(&mut r, "R", "a", "later", T0);
    let tag = ForwardTag { from: 1, incarnation: 9, to: 2, to_life: 5, seq: 0 };
    let run = |seqs: &[u64]| -> Vec<Envelope> {
        seqs.iter().map(|s| Envelope { body: format!("m{s}"), tag: Some(ForwardTag { seq: 10 + s, ..tag }) }).collect()
    };
    let reclaim = |r: &mut Rooms, messages: Vec<Envelope>| {
        r.apply(Command::Reclaim { room: "R".into(), client: "a".into(), messages, gone: vec![at(2, 2)], now_ms: T0 })
    };
    reclaim(&mut r, run(&[0]));
    reclaim(&mut r, run(&[1, 2]));
    reclaim(&mut r, run(&[3, 4]));
    let reg = register(&mut r, "R", "b", at(2, 3), T0 + 1_000);
    match &reg.effects[..] {
        [Effect::Deliver { to, messages, .. }] => {
            assert_eq!(to, "b");
            assert_eq!(bodies(messages), vec!["m0", "m1", "m2", "m3", "m4", "later"]);
        }
        other => panic!("{other:?}"),
    }
}

/// A peer that hangs up (bye, then DELETE) while the other client's node is lost: its bye
/// reaches that client when it registers again from its node, although its sender is gone.
#[test]
fn a_bye_for_a_client_on_a_lost_node_outlives_its_sender() {
    let mut r = rooms();
    register(&mut r, "R", "a", at(1, 1), T0);
    register(&mut r, "R", "b", at(2, 2), T0);
    r.apply(Command::UnbindNode { node: 1, now_ms: T0, grace_ms: 5_000 });
    relay(&mut r, "R", "b", 2, 1, &[BYE]);
    r.apply(Command::Remove { room: "R".into(), client: "b".into(), now_ms: T0 });
    let reg = register(&mut r, "R", "a", at(1, 1), T0 + 1_000);
    match &reg.effects[..] {
        [Effect::Deliver { to, messages, .. }] => {
            assert_eq!(to, "a");
            assert_eq!(bodies(messages), vec![BYE]);
        }
        other => panic!("{other:?}"),
    }
    // An ordinary closed socket is Collider's case: what was queued goes with its sender.
    register(&mut r, "S", "a", at(1, 3), T0);
    register(&mut r, "S", "b", at(2, 4), T0);
    r.apply(Command::Unbind { room: "S".into(), client: "a".into(), at: at(1, 3), now_ms: T0 });
    relay(&mut r, "S", "b", 4, 1, &[BYE]);
    r.apply(Command::Remove { room: "S".into(), client: "b".into(), now_ms: T0 });
    assert!(register(&mut r, "S", "a", at(1, 5), T0).effects.is_empty());
}

/// The same socket registering again is no duplicate; another socket is.
#[test]
fn register_again_from_the_same_socket() {
    let mut r = rooms();
    assert_eq!(register(&mut r, "R", "a", at(1, 1), T0).outcome, Outcome::Register(Ok(())));
    assert_eq!(register(&mut r, "R", "a", at(1, 1), T0).outcome, Outcome::Register(Ok(())));
    assert_eq!(register(&mut r, "R", "a", at(1, 2), T0).outcome, Outcome::Register(Err(RegisterError::Duplicated)));
}

/// The position of the last command that delivered a message is kept per room.
#[test]
fn delivered_at_follows_deliveries() {
    let mut r = rooms();
    r.apply_at(5, Command::Register { room: "R".into(), client: "a".into(), at: at(1, 1), now_ms: T0 });
    assert_eq!(r.delivered_at("R"), 0, "nothing delivered yet");
    r.apply_at(6, Command::Send { room: "R".into(), client: "a".into(), body: "q".into(), now_ms: T0 });
    assert_eq!(r.delivered_at("R"), 0, "queued, not delivered");
    r.apply_at(7, Command::Register { room: "R".into(), client: "b".into(), at: at(2, 2), now_ms: T0 });
    assert_eq!(r.delivered_at("R"), 7, "the flush delivered");
    r.apply_at(8, Command::Send { room: "R".into(), client: "b".into(), body: "x".into(), now_ms: T0 });
    assert_eq!(r.delivered_at("R"), 8);
    assert_eq!(r.delivered_at("other"), 0);
}

/// A tiny deterministic generator, so the property test needs no dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn random_command(g: &mut Lcg, now: u64) -> Command {
    let room = format!("r{}", g.next(4));
    let client = format!("c{}", g.next(4));
    let b = at(g.next(3) + 1, g.next(5) as u128);
    match g.next(8) {
        0 => Command::Join { room, client, loopback: g.next(10) == 0, now_ms: now },
        1 => Command::Leave { room, client, now_ms: now },
        2 => Command::Message { room, client, body: format!("m{now}"), now_ms: now },
        3 => Command::Register { room, client, at: b, now_ms: now },
        4 if g.next(2) == 0 => Command::Send { room, client, body: format!("s{now}"), now_ms: now },
        4 => Command::Relay {
            room,
            client,
            bodies: vec![format!("w{now}"), format!("x{now}")],
            origin: Origin { session: b.session, first: g.next(6) + 1 },
            now_ms: now,
        },
        5 => Command::Unbind { room, client, at: b, now_ms: now },
        6 if g.next(4) == 0 => Command::UnbindNode { node: g.next(3) + 1, now_ms: now, grace_ms: 30 },
        6 => Command::Remove { room, client, now_ms: now },
        _ => Command::Tick { now_ms: now },
    }
}

/// Invariants after any sequence of commands: at most two members and two clients per room, no
/// empty room kept, the timer index matches the rooms, and a snapshot restores the same state.
#[test]
fn invariants_hold_under_random_commands() {
    for seed in 0..50 {
        let mut g = Lcg(seed);
        let mut a = Rooms::new(Limits { register_grace_ms: 50, room_ttl_ms: 400, ..Limits::default() });
        let mut b = a.clone();
        let mut now = T0;
        for _ in 0..400 {
            now += g.next(20);
            let cmd = random_command(&mut g, now);
            let x = a.apply(cmd.clone());
            let y = b.apply(cmd);
            assert_eq!(x, y, "deterministic");
            for (name, room) in &a.rooms {
                assert!(room.members.len() <= ROOM_CAPACITY && room.clients.len() <= ROOM_CAPACITY);
                assert!(!room.is_empty(), "empty room {name} kept");
                let initiators = room.members.iter().filter(|m| m.initiator).count();
                assert!(room.members.is_empty() || initiators == 1, "exactly one initiator in {name}");
            }
            let mut rebuilt = a.clone();
            rebuilt.rebuild_index();
            assert_eq!(rebuilt.timers, a.timers, "timer index out of step (seed {seed})");
        }
        // A snapshot taken now and restored behaves the same from here on.
        let bytes = serde_json::to_vec(&a).unwrap();
        let mut restored: Rooms = serde_json::from_slice(&bytes).unwrap();
        restored.rebuild_index();
        assert_eq!(restored, a);
        for _ in 0..100 {
            now += g.next(20);
            let cmd = random_command(&mut g, now);
            assert_eq!(restored.apply(cmd.clone()), a.apply(cmd));
        }
    }
}

#[test]
fn a_session_id_carries_the_life_of_its_node() {
    let a = SessionId::in_life(0x1234_5678_9abc_def0);
    let b = SessionId::in_life(0x1234_5678_9abc_def0);
    assert_eq!(a.life(), 0x1234_5678_9abc_def0);
    assert_ne!(a, b, "ids of one life differ");
    assert_ne!(SessionId::in_life(7).life(), SessionId::in_life(8).life());
}
