"""
The WebSocket protocol class over an in-memory transport: it only translates frames into
hub calls and back.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from telemetry_service.config import Settings
from telemetry_service.hub import Hub, Role
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.websocket import (
    TelemetryServerFactory,
    TelemetryServerProtocol,
    prepared_fanout,
)

from . import examples as ex


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload)."""
    frames = []
    while data:
        opcode = data[0] & 0x0F
        n = data[1] & 0x7F
        offset = 2
        if n == 126:
            (n,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif n == 127:
            (n,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + n]))
        data = data[offset + n :]
    return frames


class Connected:
    def __init__(self, factory: TelemetryServerFactory) -> None:
        self.protocol: TelemetryServerProtocol = factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 5555)
        )
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        self.protocol.makeConnection(self.transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.protocol.dataReceived(
            (
                "GET /anything HTTP/1.1\r\nHost: hub:9000\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = self.transport.value()
        self.handshake = response[: response.index(b"\r\n\r\n") + 4]
        self.transport.clear()

    def send(self, message: Any, opcode: int = 0x1) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.protocol.dataReceived(client_frame(payload, opcode))

    def frames(self) -> list[tuple[int, bytes]]:
        out = server_frames(self.transport.value())
        self.transport.clear()
        return out

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def parts(catalog: SchemaCatalog) -> Iterator[tuple[Hub, TelemetryServerFactory, list[Connected]]]:
    settings = Settings()
    hub = Hub(catalog, settings, Clock(), prepared_fanout)
    factory = TelemetryServerFactory(hub, settings)
    connections: list[Connected] = []
    yield hub, factory, connections
    for c in connections:  # cancels Autobahn's timers, which live on the global reactor
        c.lose()


def connect(parts: Any) -> Connected:
    _hub, factory, connections = parts
    c = Connected(factory)
    connections.append(c)
    return c


def test_handshake_on_any_path_opens_a_hub_connection(parts: Any) -> None:
    hub = parts[0]
    c = connect(parts)
    assert c.handshake.startswith(b"HTTP/1.1 101 ")
    assert hub.counts()["listener"] == 1


def test_text_message_reaches_the_hub_and_broadcast_leaves_as_one_frame(parts: Any) -> None:
    connector, dashboard = connect(parts), connect(parts)
    dashboard.send(ex.CLIENT_CONNECT_BARE)
    connector.send(ex.packet_sent())
    (presence, (opcode, payload)) = dashboard.frames()
    assert json.loads(presence[1])["type"] == "NODE_PRESENCE"
    assert opcode == 0x1
    assert json.loads(payload) == {**ex.packet_sent(), "seq": 2}
    assert connector.frames() == []


def test_binary_message_is_handled_like_text(parts: Any) -> None:
    connector, dashboard = connect(parts), connect(parts)
    connector.send(ex.packet_sent(), opcode=0x2)
    (_, (opcode, payload)) = dashboard.frames()
    assert opcode == 0x1  # the broadcast is always text
    assert json.loads(payload) == {**ex.packet_sent(), "seq": 2}


def test_refusal_comes_back_as_an_error_text_frame(parts: Any) -> None:
    c = connect(parts)
    c.send(b"{nope")
    ((opcode, payload),) = c.frames()
    assert opcode == 0x1
    assert json.loads(payload)["reason"] == "INVALID_JSON"


def test_going_away_sends_a_1001_close_frame(parts: Any) -> None:
    c = connect(parts)
    c.protocol.go_away()
    ((opcode, payload),) = c.frames()
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2]) == (1001,)
    # and no data frame may follow a close frame
    other = connect(parts)
    other.send(ex.packet_sent())
    assert c.frames() == []


def test_transport_backpressure_marks_the_peer_congested(parts: Any) -> None:
    hub = parts[0]
    c = connect(parts)
    assert c.transport.producer is c.protocol
    c.protocol.pauseProducing()
    c.send(b"{nope")
    assert c.frames() == []  # no error frame into a full buffer
    c.protocol.resumeProducing()
    c.send(b"{nope")
    assert len(c.frames()) == 1
    assert hub.stats.rejected == 2


def test_connection_lost_tells_the_hub_once(parts: Any) -> None:
    hub = parts[0]
    c = connect(parts)
    c.send(ex.node_status())
    assert hub.role_of(c.protocol._hub_peer) is Role.CONNECTOR
    c.lose()
    assert hub.counts()["connector"] == 0
    assert hub.live_connectors("connector-a") == 0


def test_a_bug_in_the_hub_costs_one_message_not_the_connection(
    parts: Any, monkeypatch: Any, logs: Any
) -> None:
    hub = parts[0]
    c = connect(parts)

    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(hub, "message_received", broken)
    c.send(ex.packet_sent())
    assert not c.transport.disconnecting
    assert logs.matching("Error while handling a message")
