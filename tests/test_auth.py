"""
Tokens and origins, without sockets: the token file, what each token allows in the hub,
revocation on reload, and the origin rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from telemetry_service.auth import Access, load_tokens, token_hash, token_line
from telemetry_service.connections import Role
from telemetry_service.errors import ConfigurationError
from telemetry_service.hub import Hub
from telemetry_service.tools.token import main

from . import examples as ex
from .fakes import FakePeer
from .test_hub import send

CONNECTOR_TOKEN = "connector-secret"
FLEET_TOKEN = "fleet-secret"
VIEWER_TOKEN = "viewer-secret"


def token_file(folder: Path, *lines: str) -> Path:
    path = folder / "tokens"
    path.write_text("# a comment\n\n" + "\n".join(lines) + "\n")
    return path


def access(folder: Path, viewers: bool = True, connectors: bool = True) -> Access:
    lines = []
    if connectors:
        lines.append(token_line("connector", "connector-a", CONNECTOR_TOKEN, ["connector-a"]))
        lines.append(token_line("connector", "fleet", FLEET_TOKEN, ["west-*", "hub-?"]))
    if viewers:
        lines.append(token_line("viewer", "ops", VIEWER_TOKEN, []))
    path = token_file(folder, *lines)
    return Access(load_tokens(path), None, path)


def joined(hub: Hub, token: str | None = None) -> FakePeer:
    peer = FakePeer()
    hub.connection_opened(peer, hub.access.authenticate(token) if token else None)
    return peer


def errors(peer: FakePeer) -> list[str]:
    return [m["reason"] for m in peer.messages if m.get("type") == "ERROR"]


# -- the token file


def test_a_token_file_names_each_tokens_role_and_nodes(tmp_path: Path) -> None:
    rules = access(tmp_path)
    assert rules.publishing_needs_a_token and rules.reading_needs_a_token
    grant = rules.authenticate(FLEET_TOKEN)
    assert grant is not None and (grant.role, grant.name) == ("connector", "fleet")
    assert grant.may_publish_for("west-1") and grant.may_publish_for("hub-a")
    assert not grant.may_publish_for("east-1") and not grant.may_publish_for("hub-ab")
    assert rules.authenticate("not-a-token") is None
    viewer = rules.authenticate(VIEWER_TOKEN)
    assert viewer is not None and not viewer.may_publish_for("connector-a")
    # the file holds hashes, never the tokens
    text = (tmp_path / "tokens").read_text()
    assert CONNECTOR_TOKEN not in text and token_hash(CONNECTOR_TOKEN) in text


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("connector a sha256:" + "0" * 64, "names the nodeIds"),
        ("viewer v sha256:" + "0" * 64 + " node-a", "names no nodeIds"),
        ("admin a sha256:" + "0" * 64, "role must be connector or viewer"),
        ("viewer v sha256:1234", "64 hex digits"),
        ("viewer bad/name sha256:" + "0" * 64, "name"),
        ("viewer", "expected 'ROLE NAME"),
    ],
)
def test_a_broken_token_file_is_refused_whole_naming_the_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    good = token_line("viewer", "ops", VIEWER_TOKEN, [])
    path = token_file(tmp_path, good, line)
    with pytest.raises(ConfigurationError, match="line 4") as caught:
        load_tokens(path)
    assert complaint in str(caught.value)


def test_the_same_token_twice_is_refused(tmp_path: Path) -> None:
    line = token_line("viewer", "ops", VIEWER_TOKEN, [])
    with pytest.raises(ConfigurationError, match="twice"):
        load_tokens(token_file(tmp_path, line, line.replace("ops", "ops2")))


def test_telemetry_token_makes_a_token_and_its_line(tmp_path: Path, capsys: Any) -> None:
    main(["connector", "west-*", "--name", "fleet-west"])
    out, err = capsys.readouterr()
    token = err.rsplit(" ", 1)[1].strip()
    grants = load_tokens(token_file(tmp_path, out.strip()))
    grant = Access(grants).authenticate(token)
    assert grant is not None and grant.name == "fleet-west" and grant.may_publish_for("west-9")


# -- what the hub lets each token do


def test_connector_tokens_publish_for_their_nodes_only(make_hub: Any, tmp_path: Path) -> None:
    hub: Hub = make_hub()
    hub.access = access(tmp_path, viewers=False)
    watcher = joined(hub)  # no token: reading needs none here
    send(hub, watcher, ex.CLIENT_CONNECT_BARE)
    connector = joined(hub, CONNECTOR_TOKEN)
    send(hub, connector, ex.packet_sent("connector-a"))
    send(hub, connector, ex.packet_sent("connector-b"))  # not its node
    assert errors(connector) == ["UNAUTHORIZED"]
    anonymous = joined(hub)
    send(hub, anonymous, ex.packet_sent("connector-c"))
    assert errors(anonymous) == ["UNAUTHORIZED"]
    assert [m["nodeId"] for m in watcher.telemetry] == ["connector-a"]
    # a connector token cannot subscribe, and is not a listener either
    send(hub, joined(hub, FLEET_TOKEN), ex.packet_sent("west-1"))
    subscriber = joined(hub, FLEET_TOKEN)
    send(hub, subscriber, ex.CLIENT_CONNECT_BARE)
    assert errors(subscriber) == ["UNAUTHORIZED"]
    assert hub.role_of(subscriber) is not Role.DASHBOARD
    assert [m.get("nodeId") for m in subscriber.messages if m.get("type") != "ERROR"] == []


def test_viewer_tokens_read_and_cannot_publish(make_hub: Any, tmp_path: Path) -> None:
    hub: Hub = make_hub()
    hub.access = access(tmp_path)
    listener = joined(hub)  # no token where reading needs one: hears nothing
    viewer = joined(hub, VIEWER_TOKEN)
    send(hub, viewer, ex.CLIENT_CONNECT_BARE)
    nosy = joined(hub)
    send(hub, nosy, ex.CLIENT_CONNECT_BARE)
    connector = joined(hub, CONNECTOR_TOKEN)
    send(hub, connector, ex.node_status("connector-a"))
    assert listener.messages == []
    assert errors(nosy) == ["UNAUTHORIZED"]
    assert viewer.telemetry == [ex.node_status("connector-a")]
    publisher = joined(hub, VIEWER_TOKEN)
    send(hub, publisher, ex.packet_sent("connector-a"))
    assert errors(publisher) == ["UNAUTHORIZED"]


def test_a_reload_closes_connections_whose_token_is_gone(make_hub: Any, tmp_path: Path) -> None:
    hub: Hub = make_hub()
    hub.access = access(tmp_path)
    connector = joined(hub, CONNECTOR_TOKEN)
    send(hub, connector, ex.packet_sent("connector-a"))
    viewer = joined(hub, VIEWER_TOKEN)
    send(hub, viewer, ex.CLIENT_CONNECT_BARE)
    fleet = joined(hub, FLEET_TOKEN)
    send(hub, fleet, ex.packet_sent("west-1"))
    path = token_file(
        tmp_path,
        token_line("connector", "fleet", FLEET_TOKEN, ["west-*", "hub-?"]),
        token_line("viewer", "ops", VIEWER_TOKEN, []),
    )
    hub.apply_access(Access(load_tokens(path), None, path))
    assert connector.closed is not None and connector.closed[0] == 1008
    assert viewer.closed is None and fleet.closed is None


# -- origins


def test_origins_an_allow_list_the_hubs_page_and_clients_without_one() -> None:
    rules = Access((), ("https://dash.example.com", "https://*.ops.example.com"))
    page = ("http://hub.local:8080",)
    assert rules.origin_allowed(None, page)  # connectors and command-line clients
    assert rules.origin_allowed("https://dash.example.com", page)
    assert rules.origin_allowed("https://a.ops.example.com/", page)
    assert rules.origin_allowed("http://hub.local:8080", page)  # the hub's own page
    assert not rules.origin_allowed("http://evil.example", page)
    assert not rules.origin_allowed("null", page)
    assert Access().origin_allowed("http://evil.example")  # no list: as today, any origin
    assert json.dumps(Access().is_open) == "true"
