"""
The hub's HTTP side: the live dashboard page at C{/}, C{/health} for monitors, and
C{/config.json}, which tells the page where the WebSocket is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from twisted.web import http
from twisted.web.pages import forbidden
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from telemetry_service import __version__
from telemetry_service.hub import Hub

WEB_DIR = Path(__file__).resolve().parent / "web"


class _StaticFiles(File):
    """
    The page's files; folders are not listed.
    """

    def directoryListing(self) -> IResource:
        return forbidden()


class _JSONResource(Resource):
    isLeaf = True

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        data: bytes = orjson.dumps(self.body())
        return data


class HealthResource(_JSONResource):
    """
    C{GET /health}: 200 with the hub's counts while it runs.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def body(self) -> dict[str, Any]:
        hub = self._hub
        return {
            "status": "ok",
            "version": __version__,
            "connections": hub.counts(),
            "accepted": hub.stats.accepted,
            "rejected": hub.stats.rejected,
            "rejectedByReason": hub.stats.rejected_by_reason,
            "epoch": hub.store.epoch,
            "seq": hub.store.last_seq,
        }


class ConfigResource(_JSONResource):
    """
    C{GET /config.json}: the WebSocket port, read from the listening socket itself (so
    C{--port tcp:0} works too). The page connects to that port on the host it came from.
    """

    def __init__(self, websocket_port: Any) -> None:
        super().__init__()
        self._websocket_port = websocket_port

    def body(self) -> dict[str, Any]:
        return {"wsPort": self._websocket_port()}


class _QuietSite(Site):
    """
    A site without access log lines: monitors polling /health every few seconds would drown
    the hub's own log. Put a reverse proxy in front for access logs.
    """

    def log(self, request: http.Request) -> None:
        pass


def build_site(hub: Hub, websocket_port: Any) -> Site:
    """
    @param websocket_port: returns the WebSocket listener's port number, or None.
    """
    root = _StaticFiles(str(WEB_DIR))
    root.indexNames = ["index.html"]
    root.putChild(b"health", HealthResource(hub))
    root.putChild(b"config.json", ConfigResource(websocket_port))
    site = _QuietSite(root)
    site.noisy = False
    return site
