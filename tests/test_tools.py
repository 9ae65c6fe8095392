"""
The connector simulator and the tail command: what they send and print, checked against
the real clients' shapes and a real hub; and the WebSocket client side they share, over
TCP and TLS.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from telemetry_service.schemas import SchemaCatalog
from telemetry_service.tools.sim.simulation import Simulation
from telemetry_service.tools.sim.topology import Topology
from telemetry_service.tools.tail import format_line, hello, parse, summary
from telemetry_service.tools.wsclient import (
    HubURL,
    NoDelayClientProtocol,
    UnsupportedURLError,
    bearer,
)

from . import examples as ex
from .process import HubProcess

# -- topologies


def test_linear_topology_routes_along_the_line() -> None:
    t = Topology.build("linear", 4)
    assert t.nodes == ["connector-a", "connector-b", "connector-c", "connector-d"]
    assert t.peers["connector-b"] == ["connector-a", "connector-c"]
    assert t.path("connector-a", "connector-d") == [
        "connector-a",
        "connector-b",
        "connector-c",
        "connector-d",
    ]
    assert t.path("connector-d", "connector-b") == ["connector-d", "connector-c", "connector-b"]


def test_mesh_routes_directly() -> None:
    t = Topology.build("mesh", 5)
    assert all(len(p) == 4 for p in t.peers.values())
    assert t.path("connector-a", "connector-e") == ["connector-a", "connector-e"]


def test_hub_and_spoke_routes_through_the_hub() -> None:
    t = Topology.build("hub", 5)
    assert t.peers["connector-a"] == ["connector-b", "connector-c", "connector-d", "connector-e"]
    assert t.path("connector-b", "connector-e") == ["connector-b", "connector-a", "connector-e"]


def test_a_sparse_network_is_connected_and_the_same_each_time() -> None:
    t = Topology.build("sparse", 200)
    links = {frozenset((a, b)) for a in t.nodes for b in t.peers[a]}
    assert len(links) == 2 * 200 - 3  # node 1 has one earlier node to peer with
    assert all(b in t.peers[a] for a in t.nodes for b in t.peers[a])  # both ways
    # connected: every node routes to every other, along its peers
    for destination in t.nodes[1:]:
        path = t.path(t.nodes[0], destination)
        assert all(b in t.peers[a] for a, b in pairwise(path))
    # the same network for the same size, and not a star or a line
    assert Topology.build("sparse", 200).peers == t.peers
    degrees = sorted(len(p) for p in t.peers.values())
    assert degrees[0] >= 2 and 6 < degrees[-1] < 100


def test_topology_needs_two_nodes() -> None:
    with pytest.raises(ValueError):
        Topology.build("linear", 1)


# -- what the simulator sends


@pytest.fixture
def simulation() -> Iterator[tuple[Simulation, list[dict[str, Any]], Clock]]:
    clock = Clock()
    sim = Simulation(clock, "ws://127.0.0.1:1/", Topology.build("linear", 4), rate=1, seed=3)
    events: list[dict[str, Any]] = []
    for connector in sim.connectors.values():
        connector.send = events.append  # type: ignore[method-assign]
    yield sim, events, clock


def test_every_simulated_event_is_valid_telemetry(simulation: Any, catalog: SchemaCatalog) -> None:
    sim, events, clock = simulation
    for _ in range(200):
        sim.send_packet()
    clock.advance(1)
    for node in sim.connectors.values():
        events.append(node.status)
    assert len(events) > 600
    for event in events:
        assert catalog.validate(event) == event["type"]


def test_each_hop_sends_received_lookup_then_sent_after_the_reply(simulation: Any) -> None:
    sim, events, clock = simulation
    sim.no_route = 0.0
    sim.random.seed(1)
    while True:
        events.clear()
        sim.send_packet()
        clock.advance(1)
        if len({e["nodeId"] for e in events}) == 4:  # a packet across all four nodes
            break
    sequence = [(e["nodeId"][-1], e["type"]) for e in events]
    hops = [n for n, t in sequence if t == "PACKET_RECEIVED"]
    first, *middle, last = hops
    assert sequence[:2] == [(first, "PACKET_RECEIVED"), (first, "ROUTE_LOOKUP")]
    # replies come back in reverse: PACKET_SENT from the second-to-last hop first
    sent = [n for n, t in sequence if t == "PACKET_SENT"]
    assert sent == list(reversed([first, *middle]))
    assert last not in sent
    assert all(t != "PACKET_SENT" for _, t in sequence[: 2 * len(hops)])
    packet_ids = {e["data"]["packetId"] for e in events if "packetId" in e["data"]}
    assert len(packet_ids) == 1 and len(packet_ids.pop()) == 64


def test_some_packets_find_no_route(simulation: Any) -> None:
    sim, events, clock = simulation
    sim.no_route = 1.0
    sim.send_packet()
    clock.advance(1)
    received, lookup = events
    assert received["type"] == "PACKET_RECEIVED"
    assert lookup["data"]["selectedPeer"] is None
    assert lookup["data"]["reason"] == "no route found"


def test_node_status_describes_the_topology(simulation: Any) -> None:
    sim, _, _ = simulation
    status = sim.connectors["connector-b"].status
    assert [p["id"] for p in status["data"]["peers"]] == ["connector-a", "connector-c"]
    assert {r["nextHop"] for r in status["data"]["routes"]} == {"connector-a", "connector-c"}
    assert status["data"]["health"] == "healthy"


def test_rate_is_kept(simulation: Any) -> None:
    sim, _, clock = simulation
    sim.rate = 50
    sim._loop.start(0.01, now=False)
    for _ in range(200):
        clock.advance(0.01)
    sim._loop.stop()
    assert 95 <= sim.packets <= 101


# -- tail


def test_tail_lines_for_people() -> None:
    assert summary(ex.route_lookup(selected_peer=None)) == (
        "g.connectorC.dest -> NO ROUTE (no route found)"
    )
    assert "healthy online peers 1/1 routes 1" in summary({**ex.node_status(), "online": True})
    line = format_line({**ex.packet_sent(), "seq": 7}, colour=False)
    assert "#7" in line and "PACKET_SENT" in line and "connector-b" in line
    assert "\x1b[" in format_line(ex.packet_sent(), colour=True)
    assert "\x1b[" not in line


def test_tail_asks_the_hub_to_filter() -> None:
    args = parse(["--type", "PACKET_SENT", "--type", "LOG", "--node", "connector-a"])
    assert hello(args) == {
        "type": "CLIENT_CONNECT",
        "hubEvents": ["NODE_PRESENCE"],
        "filter": {"types": ["PACKET_SENT", "LOG"], "nodeIds": ["connector-a"]},
    }
    assert hello(parse([])) == {"type": "CLIENT_CONNECT", "hubEvents": ["NODE_PRESENCE"]}


# -- the tools' WebSocket client


def test_ws_and_wss_urls_name_the_host_and_port_with_the_default_ports() -> None:
    for url, secure, host, port in [
        ("ws://hub.example/", False, "hub.example", 80),
        ("ws://hub.example:9000/path?x=1", False, "hub.example", 9000),
        ("wss://Hub.Example/", True, "hub.example", 443),
        ("wss://hub.example:8443/", True, "hub.example", 8443),
        ("ws://[::1]:9000/", False, "::1", 9000),
    ]:
        assert HubURL.parse(url) == HubURL(url, secure, host, port)


@pytest.mark.parametrize(
    "url",
    [
        "http://hub.example/",
        "hub.example:9000",
        "ws:///",
        "ws://hub.example:0/",
        "ws://hub.example:port/",
        "ws://hub.example/#fragment",
        "ws://unix:/run/hub.sock",
    ],
)
def test_a_url_that_is_neither_ws_nor_wss_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(UnsupportedURLError) as refused:
        HubURL.parse(url)
    message = str(refused.value)
    assert repr(url) in message and "expected ws://" in message and "\n" not in message


class _TCPTransport(StringTransport):
    """A TCP connection in memory: what is written, and whether Nagle was turned off."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


def _connect_in_memory(url: str, token: str | None = None) -> tuple[str, int, _TCPTransport]:
    """Where the URL's endpoint connects, and what the tools' client first sends there."""
    reactor = MemoryReactorClock()
    hub = HubURL.parse(url)
    hub.endpoint(reactor).connect(hub.factory(NoDelayClientProtocol, token))
    reactor.advance(0)
    host, port, factory, _, _ = reactor.tcpClients[-1]
    transport = _TCPTransport()
    factory.buildProtocol(None).makeConnection(transport)
    return host, port, transport


def test_a_ws_url_is_plain_tcp_to_its_host_and_port_with_the_token_as_bearer() -> None:
    host, port, transport = _connect_in_memory("ws://hub.example:9000/live", "s3cret")
    assert (host, port) == ("hub.example", 9000)
    handshake = transport.value()
    assert handshake.startswith(b"GET /live HTTP/1.1\r\n")
    assert b"\r\nHost: hub.example:9000\r\n" in handshake
    assert b"\r\nAuthorization: Bearer s3cret\r\n" in handshake
    assert transport.no_delay
    assert bearer("s3cret") == {"Authorization": "Bearer s3cret"}
    assert bearer(None) is None and bearer("") is None
    _, _, anonymous = _connect_in_memory("ws://hub.example:9000/live")
    assert b"Authorization" not in anonymous.value()


def test_a_wss_url_is_tls_naming_its_host_to_the_server() -> None:
    # the in-memory reactor resolves every name to 127.0.0.1: the host shows in the TLS
    # ClientHello's server name, which names the certificate the client will accept
    _, port, transport = _connect_in_memory("wss://hub.example:8443/live", "s3cret")
    assert port == 8443
    hello = transport.value()
    assert hello[:1] == b"\x16"  # a TLS handshake record, not an HTTP request
    assert b"hub.example" in hello
    assert b"GET" not in hello and b"s3cret" not in hello
    assert transport.no_delay  # passed down through the TLS layer
    assert HubURL.parse("wss://hub.example/").port == 443


def _certificate(folder: Path, host: str) -> tuple[Path, Path]:
    """
    A self-signed certificate for C{host}, named in its subjectAltName (which TLS clients
    check, not the common name), and its key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


# -- against a real hub


def tool(name: str) -> str:
    from pathlib import Path

    return str(Path(sys.executable).parent / name)


@pytest.fixture
def hub() -> Iterator[HubProcess]:
    process = HubProcess()
    yield process
    process.stop()


def test_simulator_and_tail_against_a_real_hub(hub: HubProcess) -> None:
    port = hub.wait_listening()
    url = f"ws://127.0.0.1:{port}/"
    tail = subprocess.Popen(
        [
            tool("telemetry-tail"),
            "--url",
            url,
            "--json",
            "--count",
            "30",
            "--type",
            "PACKET_RECEIVED",
            "--type",
            "ROUTE_LOOKUP",
            "--node",
            "connector-b",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    sim = subprocess.run(
        [
            tool("telemetry-sim"),
            "--url",
            url,
            "--nodes",
            "3",
            "--topology",
            "mesh",
            "--rate",
            "40",
            "--duration",
            "3",
            "--measure",
            "--report-every",
            "0",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sim.returncode == 0, sim.stderr
    report = json.loads(sim.stdout.strip().splitlines()[-1])
    assert report["sent"]["NODE_STATUS"] == 3
    assert report["packets"] >= 80
    assert report["sent"]["PACKET_RECEIVED"] >= report["packets"]
    assert report["dropped_while_disconnected"] == 0
    assert report["latency"]["messages"] > 100
    assert 0 < report["latency"]["p50_ms"] <= report["latency"]["p99_ms"] < 1000
    out, _ = tail.communicate(timeout=30)
    assert tail.returncode == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 30
    assert {m["type"] for m in lines} <= {"PACKET_RECEIVED", "ROUTE_LOOKUP"}
    assert {m["nodeId"] for m in lines} == {"connector-b"}
    assert hub.process.poll() is None
    # the hub accepted every simulated event: real connectors' shapes pass its schemas
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.wait_http()}/health", timeout=5) as r:
        health = json.loads(r.read())
    assert health["rejected"] == 0
    assert health["accepted"] == sum(report["sent"].values())


def test_tail_says_when_the_hub_goes_away_and_exits_non_zero(hub: HubProcess) -> None:
    url = f"ws://127.0.0.1:{hub.wait_listening()}/"
    tail = subprocess.Popen(
        [tool("telemetry-tail"), "--url", url], stderr=subprocess.PIPE, text=True
    )
    hub.wait_for(lambda r: "Dashboard client connected" in r.get("message", ""))
    hub.signal()  # SIGTERM: the hub closes every connection with 1001
    _, err = tail.communicate(timeout=30)
    assert tail.returncode != 0
    assert "the hub closed the connection (1001" in err


def test_the_simulator_sends_node_status_once_not_again_after_a_reconnect() -> None:
    """Real connectors announce themselves once, at start-up; so does the simulator."""
    from autobahn.twisted.websocket import WebSocketClientProtocol
    from twisted.internet.testing import MemoryReactorClock

    from telemetry_service.tools.sim.connector import SimulatedConnector

    class Connection:
        state = WebSocketClientProtocol.STATE_OPEN

        def __init__(self) -> None:
            self.types: list[str] = []

        def sendMessage(self, payload: bytes) -> None:
            self.types.append(json.loads(payload)["type"])

    connector = SimulatedConnector(
        "connector-a", "ws://127.0.0.1:1/", MemoryReactorClock(), ex.node_status()
    )
    first, second = Connection(), Connection()
    connector.opened(first)  # type: ignore[arg-type]
    connector.send(ex.packet_sent("connector-a"))
    connector.closed(first)  # type: ignore[arg-type]
    connector.send(ex.packet_sent("connector-a"))  # while disconnected: dropped
    connector.opened(second)  # type: ignore[arg-type]
    connector.send(ex.packet_sent("connector-a"))
    assert first.types == ["NODE_STATUS", "PACKET_SENT"]
    assert second.types == ["PACKET_SENT"]
    assert connector.dropped == 1


def test_the_simulator_drops_what_a_closing_connection_cannot_send_and_never_raises() -> None:
    """
    Once the hub's close frame is in, Autobahn refuses to send (Disconnected) until the TCP
    connection is down; a simulated connector drops those messages, one count each.
    """
    from autobahn.exception import Disconnected
    from autobahn.twisted.websocket import WebSocketClientProtocol
    from twisted.internet.testing import MemoryReactorClock

    from telemetry_service.tools.sim.connector import BACKOFF_SECONDS, SimulatedConnector

    class Connection:
        state = WebSocketClientProtocol.STATE_OPEN

        def __init__(self) -> None:
            self.types: list[str] = []

        def sendMessage(self, payload: bytes) -> None:
            if self.state != WebSocketClientProtocol.STATE_OPEN:
                raise Disconnected("Attempt to send on a closed protocol")
            self.types.append(json.loads(payload)["type"])

    class Racing(Connection):
        # open when asked, closed by the time it sends: only the safety net catches it
        def sendMessage(self, payload: bytes) -> None:
            raise Disconnected("Attempt to send on a closed protocol")

    connector = SimulatedConnector(
        "connector-a", "ws://127.0.0.1:1/", MemoryReactorClock(), ex.node_status()
    )
    connection = Connection()
    connector.opened(connection)  # type: ignore[arg-type]
    connection.state = WebSocketClientProtocol.STATE_CLOSING  # the hub's 4008 came in
    for _ in range(3):
        connector.send(ex.packet_sent("connector-a"))
    connector.opened(Racing())  # type: ignore[arg-type]
    connector.send(ex.packet_sent("connector-a"))
    assert connection.types == ["NODE_STATUS"]
    assert connector.dropped == 4
    assert connector.sent == {"NODE_STATUS": 1}
    assert connector.opens == 2
    # the real connector's backoff, counted from the last open WebSocket
    delays = [connector._retry_delay(n) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0] == [*BACKOFF_SECONDS, 16.0, 16.0]
    connector.opened(Connection())  # type: ignore[arg-type]
    assert connector._retry_delay(1) == 1.0


def test_tail_says_when_it_cannot_connect() -> None:
    result = subprocess.run(
        [tool("telemetry-tail"), "--url", "ws://127.0.0.1:1/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "cannot connect" in result.stderr


def test_both_tools_speak_tls_to_a_wss_url_and_check_the_certificate_for_its_host(
    tmp_path: Path,
) -> None:
    key, cert = _certificate(tmp_path, "localhost")
    hub = HubProcess(port=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    try:
        port = hub.wait_listening()
        url = f"wss://localhost:{port}/"
        untrusting = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT_")}
        # OpenSSL's trusted authorities, where the tools look for them: this certificate
        trusting = {**untrusting, "SSL_CERT_FILE": str(cert)}
        tail = subprocess.Popen(
            [
                tool("telemetry-tail"),
                "--url",
                url,
                "--json",
                "--count",
                "5",
                "--type",
                "PACKET_RECEIVED",
            ],
            env=trusting,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        hub.wait_for(lambda r: "Dashboard client connected" in r.get("message", ""))
        sim = subprocess.run(
            [
                tool("telemetry-sim"),
                "--url",
                url,
                "--nodes",
                "2",
                "--rate",
                "20",
                "--duration",
                "1",
                "--measure",
                "--report-every",
                "0",
            ],
            env=trusting,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sim.returncode == 0, sim.stderr
        report = json.loads(sim.stdout.strip().splitlines()[-1])
        assert report["dropped_while_disconnected"] == 0 and report["reconnects"] == 0
        assert report["latency"]["messages"] > 0
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        assert [json.loads(line)["type"] for line in out.splitlines()] == ["PACKET_RECEIVED"] * 5
        # the certificate is checked: for the URL's host, and against the trusted authorities
        for address, env in ((f"wss://127.0.0.1:{port}/", trusting), (url, untrusting)):
            refused = subprocess.run(
                [tool("telemetry-tail"), "--url", address],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert refused.returncode != 0
            assert refused.stderr.startswith(f"telemetry-tail: cannot connect to {address}: ")
            assert refused.stderr.count("\n") == 1, refused.stderr
    finally:
        hub.stop()


def test_the_tools_refuse_a_url_that_is_not_a_websocket_url_in_one_line() -> None:
    for name in ("telemetry-tail", "telemetry-sim"):
        result = subprocess.run(
            [tool(name), "--url", "http://127.0.0.1:1/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0
        assert result.stderr.startswith(f"{name}: not a WebSocket URL: 'http://127.0.0.1:1/'")
        assert result.stderr.count("\n") == 1, result.stderr
