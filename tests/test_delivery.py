"""
Delivery guarantees, without sockets: seq, resume, presence, filters, batches.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from telemetry_service.connections import HistoryLostError
from telemetry_service.hub import Hub
from telemetry_service.schemas import SchemaCatalog

from . import examples as ex
from .fakes import FakePeer, encode
from .test_hub import dashboard, opened, send


def seqs(peer: FakePeer) -> list[int]:
    return [m["seq"] for m in peer.messages if "seq" in m]


#: a dashboard that also wants the hub's own events
WITH_PRESENCE = {"type": "CLIENT_CONNECT", "hubEvents": ["NODE_PRESENCE"]}


def watcher(hub: Hub, **extra: Any) -> FakePeer:
    return dashboard(hub, {**WITH_PRESENCE, **extra})


# -- seq


def test_every_broadcast_carries_a_seq_growing_by_one(hub: Hub) -> None:
    everything = watcher(hub)
    plain = dashboard(hub)
    a, b = opened(hub, 2)
    for n in range(5):
        send(hub, a, ex.packet_sent("connector-a", n))
        send(hub, b, ex.packet_sent("connector-b", n))
    # two presence events and ten messages
    assert seqs(everything) == list(range(1, 13))
    assert hub.store.last_seq == 12
    # a dashboard that did not ask for presence sees gaps exactly where it was
    assert seqs(plain) == [2, *range(4, 13)]
    assert [m["type"] for m in plain.messages] == ["PACKET_SENT"] * 10


def test_unasked_hub_events_reach_no_listener_and_no_plain_dashboard(hub: Hub) -> None:
    """The original hub's clients count frames: each gets exactly the connectors' messages."""
    (listener,) = opened(hub)
    plain = dashboard(hub)
    enveloped = dashboard(hub, ex.CLIENT_CONNECT_DASHBOARD)
    connectors = opened(hub, 5)
    sent = []
    for n in range(100):
        for i, connector in enumerate(connectors):
            message = ex.packet_sent(f"connector-{i}", n)
            send(hub, connector, message)
            sent.append(message)
    hub.connection_closed(connectors[0])
    for peer in (listener, plain, enveloped):
        assert len(peer.sent) == 500
        assert peer.telemetry == sent


def test_a_connectors_own_seq_field_is_replaced(hub: Hub) -> None:
    peer = dashboard(hub)
    (a,) = opened(hub)
    send(hub, a, {**ex.packet_sent(), "seq": 999})
    assert peer.messages[-1]["seq"] == 2


def test_refused_messages_take_no_seq(hub: Hub) -> None:
    peer = watcher(hub)
    (a,) = opened(hub)
    send(hub, a, ex.packet_sent())
    send(hub, a, b"{bad")
    send(hub, a, ex.packet_sent())
    assert seqs(peer) == [1, 2, 3]


# -- resume


def resume(hub: Hub, epoch: str | None = None, seq: int | None = None, **extra: Any) -> FakePeer:
    request: dict[str, Any] = {} if epoch is None else {"epoch": epoch, "seq": seq}
    return dashboard(hub, {"type": "CLIENT_CONNECT", "resume": request, **extra})


def test_resume_sends_exactly_the_missed_messages_then_live(hub: Hub) -> None:
    (a,) = opened(hub)
    for n in range(10):
        send(hub, a, ex.packet_sent("connector-a", n))
    # the dashboard last saw seq 4 (presence is 1, packets are 2..11)
    peer = resume(hub, hub.store.epoch, 4)
    status, *missed = peer.messages
    assert status == {
        "type": "RESUME",
        "status": "resumed",
        "epoch": hub.store.epoch,
        "seq": 11,
        "missed": 7,
    }
    assert [m["seq"] for m in missed] == list(range(5, 12))
    assert [m["data"]["packetId"] for m in missed] == [ex.packet_id(n) for n in range(3, 10)]
    send(hub, a, ex.packet_sent("connector-a", 10))
    assert peer.messages[-1]["seq"] == 12


def test_resume_at_the_newest_seq_misses_nothing(hub: Hub) -> None:
    (a,) = opened(hub)
    send(hub, a, ex.packet_sent())
    peer = resume(hub, hub.store.epoch, hub.store.last_seq)
    assert peer.messages == [
        {"type": "RESUME", "status": "resumed", "epoch": hub.store.epoch, "seq": 2, "missed": 0}
    ]


def test_resume_from_another_epoch_is_not_recovered_and_gets_the_snapshot(hub: Hub) -> None:
    (a,) = opened(hub)
    send(hub, a, ex.node_status("connector-a"))
    peer = resume(hub, "some-old-epoch", 41822)
    status, snapshot = peer.messages
    assert status["status"] == "not_recovered"
    assert "epoch" in status["reason"]
    assert status["epoch"] == hub.store.epoch
    assert status["seq"] == hub.store.last_seq
    assert snapshot == {**ex.node_status("connector-a"), "seq": 2, "online": True}


def test_resume_with_a_foreign_epoch_is_not_recovered_even_when_its_seq_is_held(hub: Hub) -> None:
    """A seq means something only with its epoch: another hub's seq 3 is not this hub's."""
    (a,) = opened(hub)
    send(hub, a, ex.node_status("connector-a"))
    for n in range(10):
        send(hub, a, ex.packet_sent("connector-a", n))
    assert hub.store.after(3, 1)  # this hub's history does hold everything after seq 3
    peer = resume(hub, "another-hubs-epoch", 3)
    status, *rest = peer.messages
    assert status["status"] == "not_recovered"
    assert "missed" not in status
    # the snapshot, not the messages after this hub's seq 3
    assert [m["type"] for m in rest] == ["NODE_STATUS"]
    assert rest[0]["online"] is True


def test_resume_past_the_history_is_not_recovered(make_hub: Any) -> None:
    hub: Hub = make_hub(history_messages=5)
    (a,) = opened(hub)
    send(hub, a, ex.node_status("connector-a"))
    for n in range(20):
        send(hub, a, ex.packet_sent("connector-a", n))
    peer = resume(hub, hub.store.epoch, 3)
    status, snapshot = peer.messages
    assert status["status"] == "not_recovered"
    assert "no longer holds every message after seq 3" in status["reason"]
    assert snapshot["type"] == "NODE_STATUS"


def test_a_resume_is_sent_as_the_dashboard_reads_and_live_messages_wait_behind_it(
    hub: Hub,
) -> None:
    (a,) = opened(hub)
    for n in range(100):
        send(hub, a, ex.packet_sent("connector-a", n))
    peer = FakePeer(reading=False)
    hub.connection_opened(peer)
    send(hub, peer, {"type": "CLIENT_CONNECT", "resume": {"epoch": hub.store.epoch, "seq": 1}})
    assert [m["type"] for m in peer.messages] == ["RESUME"] and peer.replaying
    send(hub, a, ex.packet_sent("connector-a", 100))  # live, while the resume is unread
    peer.read(10)
    assert len(peer.messages) == 11
    peer.read()
    packets = [m["data"]["packetId"] for m in peer.messages[1:]]
    assert packets == [ex.packet_id(n) for n in range(101)]
    assert [m["seq"] for m in peer.messages[1:]] == list(range(2, 103))


def test_a_resume_whose_history_is_overwritten_while_unread_fails_that_dashboard(
    make_hub: Any,
) -> None:
    hub: Hub = make_hub(history_messages=50)
    (a,) = opened(hub)
    for n in range(40):
        send(hub, a, ex.packet_sent("connector-a", n))
    peer = FakePeer(reading=False)
    hub.connection_opened(peer)
    send(hub, peer, {"type": "CLIENT_CONNECT", "resume": {"epoch": hub.store.epoch, "seq": 1}})
    peer.read(5)
    for n in range(40, 100):  # the history moves on past what the dashboard has read
        send(hub, a, ex.packet_sent("connector-a", n))
    with pytest.raises(HistoryLostError):
        peer.read()  # the real peer closes the connection (4008) when its stream raises


def test_resume_ahead_of_the_hub_is_not_recovered(hub: Hub) -> None:
    peer = resume(hub, hub.store.epoch, 50)
    assert peer.messages[0]["status"] == "not_recovered"


def test_first_connection_asking_for_resume_learns_epoch_and_position(hub: Hub) -> None:
    (a,) = opened(hub)
    send(hub, a, ex.node_status("connector-a"))
    peer = resume(hub)
    status, snapshot = peer.messages
    assert status == {"type": "RESUME", "status": "fresh", "epoch": hub.store.epoch, "seq": 2}
    assert snapshot["nodeId"] == "connector-a"


def test_plain_client_connect_never_gets_a_resume_frame(hub: Hub) -> None:
    (a,) = opened(hub)
    send(hub, a, ex.node_status("connector-a"))
    assert [m["type"] for m in dashboard(hub).messages] == ["NODE_STATUS"]
    assert [m["type"] for m in dashboard(hub, ex.CLIENT_CONNECT_DASHBOARD).messages] == [
        "NODE_STATUS"
    ]


def test_a_new_hub_has_a_new_epoch(make_hub: Any) -> None:
    assert make_hub().store.epoch != make_hub().store.epoch


@pytest.mark.parametrize(
    "resume_request",
    [{"epoch": "x"}, {"seq": 3}, {"epoch": "x", "seq": -1}, {"epoch": "x", "seq": "3"}, []],
)
def test_malformed_resume_request_is_refused(hub: Hub, resume_request: Any) -> None:
    (peer,) = opened(hub)
    send(hub, peer, {"type": "CLIENT_CONNECT", "resume": resume_request})
    assert peer.messages[-1]["reason"] == "SCHEMA_VIOLATION"


# -- presence


def presence(peer: FakePeer) -> list[tuple[str, bool]]:
    return [(m["nodeId"], m["online"]) for m in peer.messages if m["type"] == "NODE_PRESENCE"]


def test_presence_follows_the_last_connection_of_a_node(hub: Hub) -> None:
    peer = watcher(hub)
    first, second = opened(hub, 2)
    send(hub, first, ex.node_status("connector-a"))
    send(hub, second, ex.packet_sent("connector-a"))  # a second connection of the same node
    hub.connection_closed(first)
    assert presence(peer) == [("connector-a", True)]
    hub.connection_closed(second)
    assert presence(peer) == [("connector-a", True), ("connector-a", False)]
    (back,) = opened(hub)
    send(hub, back, ex.packet_sent("connector-a"))
    assert presence(peer)[-1] == ("connector-a", True)
    event = [m for m in peer.messages if m["type"] == "NODE_PRESENCE"][-1]
    assert event["timestamp"].endswith("Z")
    assert isinstance(event["seq"], int)


def test_a_later_dashboard_can_tell_online_from_offline_nodes(hub: Hub) -> None:
    a, b = opened(hub, 2)
    send(hub, a, ex.node_status("connector-a"))
    send(hub, b, ex.node_status("connector-b"))
    hub.connection_closed(b)
    replay = dashboard(hub).messages
    assert [(m["nodeId"], m["online"]) for m in replay] == [
        ("connector-a", True),
        ("connector-b", False),
    ]
    # what the existing dashboard reads is untouched
    assert {k: v for k, v in replay[0].items() if k not in ("seq", "online")} == ex.node_status(
        "connector-a"
    )


# -- filters


def test_filter_by_type_and_node_applies_to_live_messages(hub: Hub) -> None:
    a, b = opened(hub, 2)
    picky = dashboard(
        hub,
        {
            "type": "CLIENT_CONNECT",
            "filter": {"types": ["PACKET_SENT"], "nodeIds": ["connector-a"]},
        },
    )
    everything = dashboard(hub)
    send(hub, a, ex.packet_sent("connector-a", 1))
    send(hub, a, ex.packet_received("connector-a", 1))
    send(hub, b, ex.packet_sent("connector-b", 1))
    assert picky.telemetry == [ex.packet_sent("connector-a", 1)]
    assert len(everything.telemetry) == 3


def test_filter_applies_to_the_snapshot(hub: Hub) -> None:
    a, b = opened(hub, 2)
    send(hub, a, ex.node_status("connector-a"))
    send(hub, b, ex.node_status("connector-b"))
    peer = dashboard(hub, {"type": "CLIENT_CONNECT", "filter": {"nodeIds": ["connector-b"]}})
    assert [m["nodeId"] for m in peer.messages] == ["connector-b"]
    none = dashboard(hub, {"type": "CLIENT_CONNECT", "filter": {"types": ["PACKET_SENT"]}})
    assert none.messages == []


def test_filter_applies_to_resumed_messages(hub: Hub) -> None:
    a, b = opened(hub, 2)
    for n in range(3):
        send(hub, a, ex.packet_sent("connector-a", n))
        send(hub, b, ex.packet_sent("connector-b", n))
    peer = resume(hub, hub.store.epoch, 0, filter={"nodeIds": ["connector-b"]})
    status, *missed = peer.messages
    # what the history holds after seq 0: two presence events and six packets
    assert status["missed"] == 8
    # what is for this client: connector-b's three packets (presence was not asked for)
    assert [(m["type"], m["nodeId"]) for m in missed] == [("PACKET_SENT", "connector-b")] * 3
    asked = resume(hub, hub.store.epoch, 0, filter={"nodeIds": ["connector-b"]}, **WITH_PRESENCE)
    assert [m["type"] for m in asked.messages[1:]] == ["NODE_PRESENCE"] + ["PACKET_SENT"] * 3


def test_presence_is_a_type_a_filter_can_choose(hub: Hub) -> None:
    peer = watcher(hub, filter={"types": ["NODE_PRESENCE"]})
    (a,) = opened(hub)
    send(hub, a, ex.packet_sent("connector-a"))
    assert [m["type"] for m in peer.messages] == ["NODE_PRESENCE"]


def test_naming_presence_in_a_filter_does_not_ask_for_it(hub: Hub) -> None:
    peer = dashboard(hub, {"type": "CLIENT_CONNECT", "filter": {"types": ["NODE_PRESENCE"]}})
    (a,) = opened(hub)
    send(hub, a, ex.packet_sent("connector-a"))
    assert peer.messages == []


def test_client_connect_again_replaces_the_filter(hub: Hub) -> None:
    (a,) = opened(hub)
    peer = dashboard(hub, {"type": "CLIENT_CONNECT", "filter": {"types": ["LOG"]}})
    send(hub, a, ex.packet_sent())
    assert peer.telemetry == []
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    send(hub, a, ex.packet_sent(n=2))
    assert peer.telemetry == [ex.packet_sent(n=2)]


# -- batches


def test_batch_events_are_validated_and_broadcast_one_by_one(hub: Hub) -> None:
    watcher = dashboard(hub)
    (a,) = opened(hub)
    events = [ex.packet_received("connector-a", 1), ex.route_lookup("connector-a", None)]
    bad = ex.packet_sent("connector-a", 1, nextHop=5)
    send(hub, a, {"batch": [events[0], bad, "nope", events[1]]})
    assert watcher.telemetry == events
    errors = a.messages
    assert [(e["reason"], e["index"]) for e in errors] == [
        ("SCHEMA_VIOLATION", 1),
        ("NOT_AN_OBJECT", 2),
    ]
    assert hub.stats.accepted == 2
    assert hub.stats.rejected == 2


def test_batch_must_be_a_bounded_array(make_hub: Any) -> None:
    hub: Hub = make_hub(max_batch=3)
    (a,) = opened(hub)
    send(hub, a, {"batch": "nope"})
    send(hub, a, {"batch": [ex.packet_sent()] * 4})
    assert [e["reason"] for e in a.messages] == ["INVALID_BATCH", "INVALID_BATCH"]


def test_a_batch_binds_the_connector_like_single_events(hub: Hub) -> None:
    (a,) = opened(hub)
    send(hub, a, {"batch": [ex.node_status("connector-a"), ex.packet_sent("connector-z")]})
    assert hub.live_connectors("connector-a") == 1
    assert a.messages[-1]["reason"] == "NODE_ID_MISMATCH"


def test_reserved_types_cannot_be_given_a_schema(tmp_path: Any) -> None:
    import shutil

    from telemetry_service.errors import ConfigurationError
    from telemetry_service.schemas import shipped_schemas_dir

    folder = tmp_path / "schemas"
    shutil.copytree(shipped_schemas_dir(), folder)
    (folder / "NODE_PRESENCE.json").write_text(json.dumps({"type": "object"}))
    with pytest.raises(ConfigurationError, match="sent by the hub itself"):
        SchemaCatalog.load(folder)


def test_connectors_cannot_forge_hub_events(hub: Hub) -> None:
    (a,) = opened(hub)
    send(hub, a, {"type": "NODE_PRESENCE", "nodeId": "x", "online": False})
    send(hub, a, encode({"type": "RESUME", "status": "resumed"}))
    assert [e["reason"] for e in a.messages] == ["UNKNOWN_TYPE", "UNKNOWN_TYPE"]


# -- what a snapshot or resume costs


def test_client_connect_again_before_the_last_answer_was_read_is_refused(hub: Hub) -> None:
    connectors = opened(hub, 3)
    for i, connector in enumerate(connectors):
        send(hub, connector, ex.node_status(f"connector-{i}"))
    peer = FakePeer(reading=False)
    hub.connection_opened(peer)
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    send(hub, peer, {**ex.CLIENT_CONNECT_BARE, "filter": {"nodeIds": ["connector-0"]}})
    peer.read()
    *replay, refusal = peer.messages
    assert [m["nodeId"] for m in replay] == ["connector-0", "connector-1", "connector-2"]
    assert refusal["reason"] == "REPLAY_BUSY"
    # the refused request changed nothing: no filter was set
    send(hub, connectors[2], ex.packet_sent("connector-2"))
    assert peer.messages[-1]["type"] == "PACKET_SENT"
    # once the answer is read, the client may ask again
    send(hub, peer, {**ex.CLIENT_CONNECT_BARE, "filter": {"nodeIds": ["connector-0"]}})
    peer.read()
    assert peer.messages[-1]["nodeId"] == "connector-0"


def test_client_connect_too_often_is_refused_until_time_passes(make_hub: Any, clock: Any) -> None:
    hub: Hub = make_hub(replays_burst=3, replays_per_second=0.5)
    peer = dashboard(hub)  # the first of three
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    assert peer.messages == []
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    assert peer.messages[-1]["reason"] == "RATE_LIMITED"
    clock.advance(2)
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    assert len(peer.messages) == 1


def test_a_second_client_connect_without_hub_events_stops_them(hub: Hub) -> None:
    peer = watcher(hub)
    (a,) = opened(hub)
    send(hub, a, ex.packet_sent("connector-a"))
    send(hub, peer, ex.CLIENT_CONNECT_BARE)
    hub.connection_closed(a)
    assert [m["type"] for m in peer.messages] == ["NODE_PRESENCE", "PACKET_SENT"]


# -- the message rate


def test_over_the_message_rate_is_refused_then_closed_with_1008(make_hub: Any, clock: Any) -> None:
    hub: Hub = make_hub(messages_per_second=10)  # bursts of 20
    peer = watcher(hub)
    (a,) = opened(hub)
    for n in range(25):
        send(hub, a, ex.packet_sent("connector-a", n))
    assert len([m for m in peer.messages if m["type"] == "PACKET_SENT"]) == 20
    errors = [json.loads(p) for p in a.sent]
    assert {e["reason"] for e in errors} == {"RATE_LIMITED"}
    for _ in range(4):  # over it every second since: 4 seconds in all, still open
        clock.advance(1)
        for n in range(15):
            send(hub, a, ex.packet_sent("connector-a", n))
    assert a.closed is None
    clock.advance(1)  # 5 seconds without a break
    for n in range(15):
        send(hub, a, ex.packet_sent("connector-a", n))
    assert a.closed is not None and a.closed[0] == 1008


def test_seconds_over_the_rate_that_are_not_in_a_row_do_not_close(
    make_hub: Any, clock: Any
) -> None:
    hub: Hub = make_hub(messages_per_second=10)
    (a,) = opened(hub)
    for _ in range(10):
        for n in range(25):
            send(hub, a, ex.packet_sent("connector-a", n))
        clock.advance(3)  # a quiet second between each burst
    assert a.closed is None


def test_a_batch_over_the_rate_is_cut_where_the_budget_ends(make_hub: Any) -> None:
    hub: Hub = make_hub(messages_per_second=5)  # bursts of 10
    peer = dashboard(hub)
    (a,) = opened(hub)
    send(hub, a, {"batch": [ex.packet_sent("connector-a", n) for n in range(15)]})
    assert [m["data"]["packetId"] for m in peer.messages] == [ex.packet_id(n) for n in range(10)]
    (error,) = [json.loads(p) for p in a.sent]
    assert (error["reason"], error["index"]) == ("RATE_LIMITED", 10)


# -- batches


def test_a_batch_event_over_the_message_limit_is_refused_alone(make_hub: Any) -> None:
    hub: Hub = make_hub(max_message_bytes=2000)
    peer = dashboard(hub)
    (a,) = opened(hub)
    big = ex.packet_sent("connector-a", 1, blob="x" * 3000)
    send(
        hub, a, {"batch": [ex.packet_sent("connector-a", 0), big, ex.packet_sent("connector-a", 2)]}
    )
    assert [m["data"]["packetId"] for m in peer.messages] == [ex.packet_id(0), ex.packet_id(2)]
    (error,) = [json.loads(p) for p in a.sent]
    assert (error["reason"], error["index"]) == ("MESSAGE_TOO_LARGE", 1)
    assert a.closed is None


# -- the connector's placeholder nodeId


def test_a_placeholder_node_id_is_accepted_and_attributed_to_the_connections_node(
    hub: Hub,
) -> None:
    (a,) = opened(hub)
    plain = dashboard(hub)
    only_a = dashboard(hub, {"type": "CLIENT_CONNECT", "filter": {"nodeIds": ["connector-a"]}})
    send(hub, a, ex.node_status("connector-a"))
    settlement = {**ex.FLAT_EVENTS["SETTLEMENT_TRIGGERED"], "nodeId": "unknown"}
    send(hub, a, settlement)
    assert a.sent == []  # no error
    expected = {**settlement, "sourceNodeId": "connector-a", "seq": 3}
    assert plain.messages[-1] == expected
    assert only_a.messages[-1] == expected
    assert "unknown" not in hub.node_ids
    # the placeholder never binds: a first message with it leaves the connection free
    (b,) = opened(hub)
    send(hub, b, settlement)
    send(hub, b, ex.packet_sent("connector-b"))
    assert b.sent == []
    assert hub.live_connectors("connector-b") == 1 and hub.live_connectors("unknown") == 0
    assert "sourceNodeId" not in plain.messages[-2]  # b was not bound yet: nothing to name


def test_an_event_naming_no_node_says_which_connections_node_sent_it(hub: Hub) -> None:
    (a,) = opened(hub)
    plain = dashboard(hub)
    only_a = dashboard(hub, {"type": "CLIENT_CONNECT", "filter": {"nodeIds": ["connector-a"]}})
    send(hub, a, ex.packet_sent("connector-a"))
    funded = ex.FLAT_EVENTS["AGENT_WALLET_FUNDED"]
    assert "nodeId" not in funded
    send(hub, a, funded)
    assert plain.messages[-1] == {**funded, "sourceNodeId": "connector-a", "seq": 3}
    assert only_a.messages[-1]["type"] == "AGENT_WALLET_FUNDED"
