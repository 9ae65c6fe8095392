"""
The hub's behaviour, without sockets: roles, replay, broadcast, refusals, limits.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock

from telemetry_service.bus.base import LocalBus
from telemetry_service.config import Settings
from telemetry_service.connections import Role
from telemetry_service.history.memory import MemoryStore
from telemetry_service.hub import Hub

from . import examples as ex
from .fakes import FakePeer, RecordingFanout, encode


def opened(hub: Hub, count: int = 1) -> list[FakePeer]:
    peers = [FakePeer() for _ in range(count)]
    for peer in peers:
        hub.connection_opened(peer)
    return peers


def send(hub: Hub, peer: FakePeer, message: Any, binary: bool = False) -> None:
    payload = message if isinstance(message, bytes) else encode(message)
    hub.message_received(peer, payload, binary)


def dashboard(hub: Hub, message: dict[str, Any] = ex.CLIENT_CONNECT_DASHBOARD) -> FakePeer:
    (peer,) = opened(hub)
    send(hub, peer, message)
    return peer


# -- roles


def test_first_telemetry_message_makes_a_connector_bound_to_its_node(hub: Hub) -> None:
    (connector,) = opened(hub)
    send(hub, connector, ex.node_status("connector-a"))
    assert hub.role_of(connector) is Role.CONNECTOR
    assert hub.live_connectors("connector-a") == 1


def test_connector_is_not_sent_the_broadcast(hub: Hub) -> None:
    a, b = opened(hub, 2)
    send(hub, a, ex.node_status("connector-a"))
    # b was still listening when a reported: it heard that, as any silent connection would
    assert b.telemetry == [ex.node_status("connector-a")]
    send(hub, b, ex.node_status("connector-b"))
    b.clear()
    send(hub, a, ex.packet_received("connector-a"))
    assert a.sent == []
    assert b.sent == []


def test_listener_that_sent_nothing_receives_the_broadcast(hub: Hub) -> None:
    (listener,) = opened(hub)
    (connector,) = opened(hub)
    send(hub, connector, ex.packet_sent("connector-a"))
    assert listener.telemetry == [ex.packet_sent("connector-a")]
    assert hub.role_of(listener) is Role.LISTENER


def test_bare_client_connect_makes_a_dashboard(hub: Hub) -> None:
    peer = dashboard(hub, ex.CLIENT_CONNECT_BARE)
    assert hub.role_of(peer) is Role.DASHBOARD
    assert peer.sent == []  # no hello or ack: nothing to replay yet


def test_enveloped_client_connect_makes_a_dashboard(hub: Hub) -> None:
    peer = dashboard(hub, ex.CLIENT_CONNECT_DASHBOARD)
    assert hub.role_of(peer) is Role.DASHBOARD


def test_two_live_connectors_with_one_node_id_are_both_kept_with_a_warning(
    hub: Hub, logs: Any
) -> None:
    first, second = opened(hub, 2)
    send(hub, first, ex.node_status("connector-a"))
    send(hub, second, ex.node_status("connector-a"))
    assert hub.live_connectors("connector-a") == 2
    assert logs.matching("Two live connectors report as connector-a", "warn")
    hub.connection_closed(first)
    assert hub.live_connectors("connector-a") == 1


def test_connector_cannot_speak_for_another_node(hub: Hub) -> None:
    (connector,) = opened(hub)
    watcher = dashboard(hub)
    send(hub, connector, ex.node_status("connector-a"))
    watcher.clear()
    send(hub, connector, ex.packet_sent("connector-z"))
    assert watcher.sent == []
    (error,) = connector.messages
    assert error["type"] == "ERROR"
    assert error["reason"] == "NODE_ID_MISMATCH"
    assert "connector-a" in error["detail"] and "connector-z" in error["detail"]


def test_dashboard_may_not_send_telemetry(hub: Hub) -> None:
    peer = dashboard(hub)
    other = dashboard(hub)
    send(hub, peer, ex.packet_sent())
    assert other.sent == []
    assert peer.messages[-1]["reason"] == "ROLE_VIOLATION"


class SharedBus(LocalBus):
    """A bus other hubs number messages on too (as on Redis), run locally."""

    shared = True


def test_a_dashboard_waiting_for_its_resume_may_not_publish(
    catalog: Any, clock: Clock, fanout: RecordingFanout
) -> None:
    """
    A resume from a seq another hub numbered waits (at most 2 s) for this hub to read it;
    the connection is a dashboard from its CLIENT_CONNECT on, not a connector meanwhile.
    """
    hub = Hub(
        catalog,
        Settings(),
        clock,
        fanout,
        bus=lambda h: SharedBus(MemoryStore(100, 1 << 20), h.deliver),
    )
    other = dashboard(hub)
    (peer,) = opened(hub)
    store = hub.store
    resume = {"epoch": store.epoch, "seq": store.last_seq + 5}
    send(hub, peer, {**ex.CLIENT_CONNECT_DASHBOARD, "resume": resume})
    send(hub, peer, ex.packet_sent())
    assert peer.messages[-1]["reason"] == "ROLE_VIOLATION"
    assert other.telemetry == []
    assert hub.role_of(peer) is not Role.CONNECTOR
    clock.advance(2)
    assert hub.role_of(peer) is Role.DASHBOARD


def test_connector_may_not_become_a_dashboard(hub: Hub) -> None:
    (connector,) = opened(hub)
    send(hub, connector, ex.node_status())
    send(hub, connector, ex.CLIENT_CONNECT_BARE)
    assert hub.role_of(connector) is Role.CONNECTOR
    assert connector.messages[-1]["reason"] == "ROLE_VIOLATION"


def test_connection_that_sends_only_bad_input_stops_hearing_the_broadcast(hub: Hub) -> None:
    """Real connectors never read: one whose messages are all refused must not pile up
    broadcasts it will never read."""
    (bad,) = opened(hub)
    (connector,) = opened(hub)
    send(hub, bad, b"{not json")
    bad.clear()
    send(hub, connector, ex.packet_sent())
    assert bad.sent == []
    assert hub.role_of(bad) is Role.UNIDENTIFIED


def test_malformed_client_connect_leaves_a_listener_listening(hub: Hub) -> None:
    (peer,) = opened(hub)
    (connector,) = opened(hub)
    send(hub, peer, {"type": "CLIENT_CONNECT", "timestamp": "yesterday"})
    assert peer.messages[-1]["reason"] == "SCHEMA_VIOLATION"
    peer.clear()
    send(hub, connector, ex.packet_sent())
    assert peer.telemetry == [ex.packet_sent()]


def test_unidentified_connection_can_still_become_a_connector(hub: Hub) -> None:
    (peer,) = opened(hub)
    watcher = dashboard(hub)
    send(hub, peer, b"garbage")
    send(hub, peer, ex.node_status("connector-q"))
    assert hub.role_of(peer) is Role.CONNECTOR
    assert watcher.telemetry == [ex.node_status("connector-q")]


# -- replay


def test_client_connect_replays_latest_node_status_per_node_in_first_report_order(
    hub: Hub,
) -> None:
    a, b, c = opened(hub, 3)
    send(hub, b, ex.node_status("connector-b"))
    send(hub, a, ex.node_status("connector-a", health="starting"))
    send(hub, c, ex.node_status("connector-c"))
    send(hub, a, ex.node_status("connector-a", health="healthy", uptime=7200))
    peer = dashboard(hub)
    assert peer.telemetry == [
        ex.node_status("connector-b"),
        ex.node_status("connector-a", health="healthy", uptime=7200),
        ex.node_status("connector-c"),
    ]


def test_replay_goes_to_the_new_client_only(hub: Hub) -> None:
    (connector,) = opened(hub)
    send(hub, connector, ex.node_status("connector-a"))
    first = dashboard(hub)
    first.clear()
    second = dashboard(hub)
    assert first.sent == []
    assert second.telemetry == [ex.node_status("connector-a")]


def test_replay_comes_before_anything_that_follows_client_connect(hub: Hub) -> None:
    (connector,) = opened(hub)
    send(hub, connector, ex.node_status("connector-a"))
    peer = dashboard(hub)
    send(hub, connector, ex.packet_received("connector-a"))
    assert [m["type"] for m in peer.messages] == ["NODE_STATUS", "PACKET_RECEIVED"]


def test_replay_survives_the_connector_going_away(hub: Hub) -> None:
    """Connectors never resend NODE_STATUS after a reconnect, so the hub keeps it."""
    (connector,) = opened(hub)
    send(hub, connector, ex.node_status("connector-a"))
    hub.connection_closed(connector)
    assert dashboard(hub).telemetry == [ex.node_status("connector-a")]


def test_replay_cache_is_bounded_and_forgets_offline_nodes_first(make_hub: Any, clock: Any) -> None:
    hub: Hub = make_hub(max_nodes=2)
    a, b, c = opened(hub, 3)
    send(hub, a, ex.node_status("connector-a"))
    clock.advance(1)
    send(hub, b, ex.node_status("connector-b"))
    hub.connection_closed(b)  # b is offline now, a is still online
    clock.advance(1)
    send(hub, c, ex.node_status("connector-c"))
    assert hub.node_ids == ["connector-a", "connector-c"]


def test_a_full_replay_cache_forgets_the_offline_node_whose_status_is_oldest(
    make_hub: Any, clock: Any
) -> None:
    hub: Hub = make_hub(max_nodes=3)
    a, b, c, d = opened(hub, 4)
    send(hub, b, ex.node_status("connector-b"))  # the oldest status
    send(hub, a, ex.node_status("connector-a"))
    send(hub, c, ex.node_status("connector-c"))  # the newest
    # a goes offline first, then c, then b: the order of leaving does not matter
    for peer in (a, c, b):
        hub.connection_closed(peer)
    send(hub, d, ex.node_status("connector-d"))
    assert hub.node_ids == ["connector-a", "connector-c", "connector-d"]
    (e,) = opened(hub)
    send(hub, e, ex.node_status("connector-e"))
    assert hub.node_ids == ["connector-c", "connector-d", "connector-e"]


def test_an_offline_node_that_reports_again_is_no_longer_evictable(make_hub: Any) -> None:
    hub: Hub = make_hub(max_nodes=2)
    a, b = opened(hub, 2)
    send(hub, a, ex.node_status("connector-a"))
    hub.connection_closed(a)
    (back,) = opened(hub)
    send(hub, back, ex.node_status("connector-a", health="unhealthy"))  # online again
    send(hub, b, ex.node_status("connector-b"))
    (c,) = opened(hub)
    send(hub, c, ex.node_status("connector-c"))  # no offline node to evict
    assert hub.node_ids == ["connector-a", "connector-b"]


def test_the_replay_cache_is_bounded_by_bytes_too(make_hub: Any) -> None:
    big = ex.node_status(routes=[{"prefix": f"g.r{i}", "nextHop": "x"} for i in range(100)])
    size = len(encode({**big, "seq": 1}))
    hub: Hub = make_hub(max_replay_bytes=3 * size + 100)
    peers = opened(hub, 4)
    for i, peer in enumerate(peers[:3]):
        send(hub, peer, {**big, "nodeId": f"node-{i}"})
    assert hub.replay_bytes <= 3 * size + 100
    hub.connection_closed(peers[0])
    send(hub, peers[3], {**big, "nodeId": "node-3"})
    assert hub.node_ids == ["node-1", "node-2", "node-3"]
    assert hub.replay_bytes <= 3 * size + 100


def test_an_updated_status_keeps_its_place_and_replaces_what_earlier_replays_sent(
    hub: Hub,
) -> None:
    a, b = opened(hub, 2)
    send(hub, a, ex.node_status("connector-a", health="starting"))
    send(hub, b, ex.node_status("connector-b"))
    early = dashboard(hub)  # its replay serializes connector-a's first status
    assert [m["data"]["health"] for m in early.messages] == ["starting", "healthy"]
    send(hub, a, ex.node_status("connector-a", health="healthy", uptime=7200))
    late = dashboard(hub)
    assert [m["nodeId"] for m in late.messages] == ["connector-a", "connector-b"]
    assert late.messages[0]["data"]["health"] == "healthy"
    assert late.messages[0]["data"]["uptime"] == 7200
    hub.connection_closed(a)
    later = dashboard(hub)
    assert (later.messages[0]["data"]["uptime"], later.messages[0]["online"]) == (7200, False)


def test_full_replay_cache_of_live_nodes_keeps_them_and_still_broadcasts(
    make_hub: Any, logs: Any
) -> None:
    hub: Hub = make_hub(max_nodes=2)
    a, b, c = opened(hub, 3)
    watcher = dashboard(hub)
    send(hub, a, ex.node_status("connector-a"))
    send(hub, b, ex.node_status("connector-b"))
    send(hub, c, ex.node_status("invented-node"))
    assert hub.node_ids == ["connector-a", "connector-b"]
    assert watcher.telemetry[-1] == ex.node_status("invented-node")
    assert logs.matching("Node status cache is full", "warn")


# -- broadcast


def test_broadcast_reaches_every_dashboard_with_all_fields_as_sent(hub: Hub) -> None:
    (connector,) = opened(hub)
    one, two = dashboard(hub), dashboard(hub)
    message = ex.route_lookup("connector-b", selected_peer=None, extra={"k": [1, 2.5, None]})
    send(hub, connector, message)
    assert one.telemetry == [message]
    assert two.telemetry == [message]


def test_broadcast_is_serialized_once_for_all_recipients(hub: Hub, fanout: RecordingFanout) -> None:
    (connector,) = opened(hub)
    peers = [dashboard(hub) for _ in range(5)]
    send(hub, connector, ex.packet_sent())
    # nobody asked for the hub's presence events: the message is the only broadcast
    ((payload, recipients),) = fanout.calls
    assert recipients == peers
    assert all(p.sent[-1] is payload for p in peers)


def test_flat_events_are_broadcast_unchanged(hub: Hub) -> None:
    (connector,) = opened(hub)
    peer = dashboard(hub)
    for event in ex.FLAT_EVENTS.values():
        send(hub, connector, event)
    assert peer.telemetry == list(ex.FLAT_EVENTS.values())


def test_binary_frame_holding_utf8_json_is_accepted(hub: Hub) -> None:
    (connector,) = opened(hub)
    peer = dashboard(hub)
    send(hub, connector, encode(ex.packet_received()), binary=True)
    assert peer.telemetry == [ex.packet_received()]


def test_closed_dashboard_is_no_longer_sent_anything(hub: Hub, logs: Any) -> None:
    (connector,) = opened(hub)
    peer = dashboard(hub)
    hub.connection_closed(peer)
    send(hub, connector, ex.packet_sent())
    assert peer.sent == []
    assert logs.matching("Dashboard client disconnected")


# -- refusals


def refused(hub: Hub, payload: Any, binary: bool = False) -> dict[str, Any]:
    (sender,) = opened(hub)
    watcher = dashboard(hub)
    send(hub, sender, payload, binary)
    assert watcher.sent == [], "a refused message must not be broadcast"
    (error,) = sender.messages
    assert set(error) >= {"type", "reason", "detail"}
    assert error["type"] == "ERROR"
    return error


def test_invalid_json_is_refused_with_an_error_frame(hub: Hub) -> None:
    assert refused(hub, b"{invalid json}")["reason"] == "INVALID_JSON"


def test_binary_frame_that_is_not_utf8_is_refused(hub: Hub) -> None:
    error = refused(hub, bytes(range(256)), binary=True)
    assert error["reason"] == "INVALID_UTF8"


def test_non_object_json_is_refused(hub: Hub) -> None:
    for payload in (b"[1,2,3]", b"null", b"12345", b'"str"', b"true"):
        assert refused(hub, payload)["reason"] == "NOT_AN_OBJECT"


def test_unknown_type_is_refused_and_named(hub: Hub, logs: Any) -> None:
    error = refused(hub, {**ex.packet_sent(), "type": "NO_SUCH_TYPE"})
    assert error["reason"] == "UNKNOWN_TYPE"
    assert "NO_SUCH_TYPE" in error["detail"]
    assert logs.matching("UNKNOWN_TYPE", "warn")


def test_missing_type_is_refused(hub: Hub) -> None:
    message = ex.packet_sent()
    del message["type"]
    assert refused(hub, message)["reason"] == "MISSING_TYPE"
    assert refused(hub, {**ex.packet_sent(), "type": 123})["reason"] == "MISSING_TYPE"


def test_schema_violation_names_type_path_and_rule_to_sender_and_log(hub: Hub, logs: Any) -> None:
    error = refused(hub, ex.node_status(health="sick"))
    assert error["reason"] == "SCHEMA_VIOLATION"
    assert error["messageType"] == "NODE_STATUS"
    assert error["path"] == "$.data.health"
    assert error["rule"] == "enum"
    (event,) = logs.with_fields(reason="SCHEMA_VIOLATION")
    assert event["messageType"] == "NODE_STATUS"
    assert event["path"] == "$.data.health"
    assert event["rule"] == "enum"


def test_ten_thousand_deep_data_is_refused_without_harm(hub: Hub) -> None:
    deep = b'{"type":"PACKET_SENT","nodeId":"n","timestamp":"' + ex.TS.encode() + b'","data":'
    deep += b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"
    assert refused(hub, deep)["reason"] == "TOO_DEEP"
    # and the hub still works
    (connector,) = opened(hub)
    peer = dashboard(hub)
    send(hub, connector, ex.packet_sent())
    assert peer.telemetry == [ex.packet_sent()]


def test_huge_node_id_is_refused_and_not_echoed_whole(hub: Hub, logs: Any) -> None:
    error = refused(hub, ex.packet_sent(node_id="n" * 60_000))
    assert error["reason"] == "SCHEMA_VIOLATION"
    assert error["path"] == "$.nodeId"
    assert len(json.dumps(error)) < 1000
    assert all(len(t) < 2000 for t in logs.texts())


def test_huge_string_in_data_is_refused_by_its_schema(hub: Hub) -> None:
    error = refused(hub, ex.route_lookup(reason="x" * 60_000))
    assert error["path"] == "$.data.reason"
    assert len(json.dumps(error)) < 1000


def test_a_single_message_over_the_limit_closes_with_1009(make_hub: Any, logs: Any) -> None:
    hub: Hub = make_hub(max_message_bytes=1000, max_batch_bytes=100_000)
    watcher = dashboard(hub)
    (connector,) = opened(hub)
    send(hub, connector, ex.route_lookup(reason="x" * 2000))
    assert connector.closed is not None
    assert connector.closed[0] == 1009
    assert "over the limit of 1000" in connector.closed[1]
    assert watcher.telemetry == []
    send(hub, connector, ex.packet_sent())  # whatever still arrives is ignored
    assert watcher.telemetry == []
    assert logs.matching("with 1009", "warn")


def test_error_frames_can_be_turned_off(make_hub: Any, logs: Any) -> None:
    hub: Hub = make_hub(error_frames=False)
    (sender,) = opened(hub)
    send(hub, sender, b"{bad")
    assert sender.sent == []
    assert logs.matching("INVALID_JSON", "warn")


def test_no_error_frame_to_a_congested_sender(hub: Hub) -> None:
    sender = FakePeer(congested=True)
    hub.connection_opened(sender)
    send(hub, sender, b"{bad")
    assert sender.sent == []


def test_warnings_are_rate_limited_per_connection_with_a_summary(
    make_hub: Any, clock: Any, logs: Any
) -> None:
    hub: Hub = make_hub(warnings_per_second=1.0, warnings_burst=5)
    flooder, other = opened(hub, 2)
    for _ in range(1000):
        send(hub, flooder, b"{bad")
    assert len(logs.matching("Rejected", "warn")) == 5
    # another connection has its own budget
    send(hub, other, b"{bad")
    assert len(logs.matching("Rejected", "warn")) == 6
    clock.advance(1)
    send(hub, flooder, b"{bad")
    assert logs.matching("Suppressed 995 warnings", "warn")
    assert len(logs.matching("Rejected", "warn")) == 7
    assert hub.stats.rejected == 1002


def test_suppressed_warnings_are_summarised_when_the_connection_closes(
    make_hub: Any, logs: Any
) -> None:
    hub: Hub = make_hub(warnings_burst=1)
    (flooder,) = opened(hub)
    for _ in range(10):
        send(hub, flooder, b"{bad")
    hub.connection_closed(flooder)
    assert logs.matching("Suppressed 9 warnings", "warn")


def test_error_frames_are_rate_limited_per_connection(make_hub: Any, clock: Any) -> None:
    hub: Hub = make_hub(error_frames_per_second=10.0, error_frames_burst=20)
    (flooder,) = opened(hub)
    for _ in range(1000):
        send(hub, flooder, b"{bad")
    assert len(flooder.sent) == 20
    clock.advance(1)
    for _ in range(1000):
        send(hub, flooder, b"{bad")
    assert len(flooder.sent) == 30


def test_counts_by_role(hub: Hub) -> None:
    (_listener, connector) = opened(hub, 2)
    dashboard(hub)
    send(hub, connector, ex.node_status())
    assert hub.counts() == {
        "listener": 1,
        "dashboard": 1,
        "connector": 1,
        "unidentified": 0,
        "nodes": 1,
    }
