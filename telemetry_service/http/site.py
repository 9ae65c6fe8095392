"""
The hub's HTTP side: the live dashboard page at C{/}, C{/health} for monitors,
C{/config.json}, which tells the page where the WebSocket is, and the original hub's API
(C{/api/balances}, C{/api/settlements/recent}, C{/api/channels}).

Anyone who can reach the port can send it anything, so every request is held to a deadline
(headers and body within C{REQUEST_SECONDS}, however slowly they drip in), bodies are refused
past C{MAX_BODY_BYTES}, a request that fails inside the hub gets a plain 500 and one short
log line (never a traceback in the response, and at most one line a second in the log), and
every response carries headers that keep browsers from sniffing, framing or loading anything
the page does not need.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import orjson
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.pages import forbidden, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File
from zope.interface import implementer

from telemetry_service import __version__
from telemetry_service.auth import presented_token
from telemetry_service.hub import Hub
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.settlement import SettlementState

WEB_DIR = Path(__file__).resolve().parent / "static"

#: a request's line, headers and body must all arrive within this many seconds
REQUEST_SECONDS = 10.0
#: an idle keep-alive connection is closed after this many seconds
IDLE_SECONDS = 30.0
#: nothing here takes a body; a small one is read and ignored, a bigger one refused
MAX_BODY_BYTES = 64 * 1024
#: a path segment with one of these is no file of ours (NUL makes the OS refuse the path)
_UNPRINTABLE = re.compile(rb"[\x00-\x1f\x7f]")
#: the CSP hash of the <style> Cytoscape 3.35.0 inserts (reported by Chromium when blocked)
CYTOSCAPE_STYLE_HASH = "sha256-pgvDUBa4IjFA2yuSJ2cqcyxmNYJMborsd0ORcRv9vw8="
#: what a Host header may be, to be named in the Content-Security-Policy
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})$")


class _StaticFiles(File):
    """
    The page's files; folders are not listed, and names no file can have are not looked up.
    """

    #: The page's own types, whatever the machine's mime.types says (Twisted reads them
    #: from the C{mimetypes} module): browsers run a module script only if it is served
    #: as JavaScript, and with C{nosniff} apply a stylesheet only if it is served as CSS.
    contentTypes = {
        **File.contentTypes,
        ".html": "text/html",
        ".css": "text/css",
        ".js": "text/javascript",
    }

    def directoryListing(self) -> IResource:
        return forbidden()

    def getChild(self, path: bytes, request: Any) -> Any:
        if _UNPRINTABLE.search(path):
            return notFound()
        return super().getChild(path, request)


class _Folder(Resource):
    """
    A path that only holds other resources: itself, it is not found.
    """

    def render(self, request: Any) -> bytes:
        result: bytes = notFound().render(request)
        return result


class _JSONResource(Resource):
    isLeaf = True

    def body(self) -> Any:
        raise NotImplementedError

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        data: bytes = orjson.dumps(self.body())
        return data


class HealthResource(_JSONResource):
    """
    C{GET /health}: 200 with the hub's counts while it runs; with tokens configured, only
    whether it is well (the counts are for viewers, at /metrics).
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def body(self) -> dict[str, Any]:
        hub = self._hub
        degraded = getattr(hub.store, "degraded", None)
        if degraded == "closed":
            degraded = None
        bus = hub.bus.health()
        if hub.access.grants:
            return {"status": "degraded" if degraded else "ok", "version": __version__}
        return {
            "status": "degraded" if degraded else "ok",
            "store": {"kind": type(hub.store).__name__, "degraded": degraded},
            "bus": bus,
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

    def __init__(self, websocket_port: Callable[[], int | None]) -> None:
        super().__init__()
        self._websocket_port = websocket_port

    def body(self) -> dict[str, Any]:
        return {"wsPort": self._websocket_port()}


class ListResource(_JSONResource):
    """
    A JSON array from the hub's state, as the original hub's API answered.
    """

    def __init__(self, items: Callable[[], list[dict[str, Any]]]) -> None:
        super().__init__()
        self._items = items

    def body(self) -> list[dict[str, Any]]:
        return self._items()


class RatesResource(_JSONResource):
    """
    C{GET /api/rates}: messages per second by type over the last five minutes (and this
    hub's refusals as C{rejected}), for the page's chart after a reload.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def body(self) -> dict[str, Any]:
        return self._hub.rates.series()


def _viewer_may_read(hub: Hub, request: Request) -> bool:
    """
    Where viewer tokens are configured, what dashboards read over HTTP needs one too (an
    C{Authorization: Bearer} header, or C{?token=} for a browser).
    """
    access = hub.access
    if not access.reading_needs_a_token:
        return True
    header = request.getHeader(b"authorization")
    query = [token.decode("utf-8", "replace") for token in request.args.get(b"token", [])]
    token = presented_token(header.decode("latin-1") if header else None, query)
    grant = access.authenticate(token) if token else None
    return grant is not None and access.may_read(grant)


class _Guarded(Resource):
    """
    A resource that answers 401 unless the request may read (see L{_viewer_may_read}).
    """

    def __init__(self, hub: Hub, inner: Resource) -> None:
        super().__init__()
        self._hub = hub
        self._inner = inner

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if not _viewer_may_read(self._hub, request):
            return _Unauthorized()
        return self._inner.getChildWithDefault(path, request)

    def render(self, request: Any) -> bytes:
        if not _viewer_may_read(self._hub, request):
            return _Unauthorized().render(request)
        result: bytes = self._inner.render(request)
        return result


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="telemetry-hub"')
        request.setHeader(b"content-type", b"application/json")
        return b'{"error":"a viewer token is needed"}'


class MetricsResource(Resource):
    """
    C{GET /metrics}: Prometheus' text format.
    """

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        result: bytes = generate_latest(self._registry)
        return result


@implementer(IPullProducer)
class _JSONArrayProducer:
    """
    Writes C{[a,b,...]} from serialized items as the client reads, a chunk at a time, so a
    big network's list is never held whole in memory.
    """

    def __init__(self, request: Request, items: Iterator[bytes]) -> None:
        self._request = request
        self._items = items
        self._first = True

    def resumeProducing(self) -> None:
        parts: list[bytes] = []
        size = 0
        exhausted = True
        for item in self._items:
            parts.append(item)
            size += len(item)
            if size >= 64 * 1024:
                exhausted = False
                break
        if parts:
            self._request.write((b"[" if self._first else b",") + b",".join(parts))
            self._first = False
        if exhausted:
            self._request.write(b"[]" if self._first else b"]")
            self._request.unregisterProducer()
            self._request.finish()

    def stopProducing(self) -> None:
        self._items = iter(())


class NodesResource(Resource):
    """
    C{GET /api/nodes}: the latest NODE_STATUS of every known node, with C{online}, in
    first-report order, as a dashboard gets them on connect; C{GET /api/nodes/NODE_ID}: one.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _OneNode(self._hub, path.decode("utf-8", "replace"))

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        hub = self._hub
        payloads = (hub.node_status(n) for n in hub.node_ids)
        producer = _JSONArrayProducer(request, (p for p in payloads if p is not None))
        request.registerProducer(producer, False)
        return NOT_DONE_YET


class _OneNode(Resource):
    isLeaf = True

    def __init__(self, hub: Hub, node_id: str) -> None:
        super().__init__()
        self._hub = hub
        self._node_id = node_id

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        status = self._hub.node_status(self._node_id)
        if status is None:
            request.setResponseCode(404)
            return b'{"error":"no such node"}'
        return status


class _HardenedRequest(Request):
    def process(self) -> None:
        channel: Any = self.channel
        site = cast(HubSite, channel.site)
        self.setHeader(b"x-content-type-options", b"nosniff")
        self.setHeader(b"x-frame-options", b"DENY")
        self.setHeader(b"referrer-policy", b"no-referrer")
        self.setHeader(b"content-security-policy", site.content_security_policy(self))
        super().process()

    def processingFailed(self, reason: Failure) -> None:
        site = cast(HubSite, self.site)
        site.request_failed(self, reason)
        body = b"internal error\n"
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


class _DeadlineChannel(http.HTTPChannel):
    """
    An HTTP connection whose requests must arrive whole within L{REQUEST_SECONDS}.

    Twisted's own timeout is an idle timeout, reset by every byte received, so a client
    that sends one byte every few seconds would hold the connection for ever.
    """

    _deadline: IDelayedCall | None = None
    #: set by the site that builds it
    site: HubSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def dataReceived(self, data: bytes) -> None:
        # the first byte of the next request on a kept-alive connection starts its clock
        # (requests holds those under way, from their first line until they are done)
        if self._deadline is None and not self.requests:
            self._start_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY_BYTES:
            self._stop_deadline()
            transport: Any = self.transport
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n"
                b"X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
                b"Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n\r\n"
            )
            transport.loseConnection()
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._stop_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _start_deadline(self) -> None:
        self._deadline = self.site.clock.callLater(REQUEST_SECONDS, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        transport.abortConnection()


class HubSite(Site):
    """
    The hub's HTTP site, without access log lines: monitors polling /health every few
    seconds would drown the hub's own log. Put a reverse proxy in front for access logs.
    """

    _log = Logger()
    protocol = _DeadlineChannel  # type: ignore[assignment]
    requestFactory = _HardenedRequest
    noisy = False

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        websocket_port: Callable[[], int | None],
    ) -> None:
        super().__init__(resource, timeout=IDLE_SECONDS, reactor=clock)
        self.clock = clock
        self._websocket_port = websocket_port
        self._error_log = TokenBucket(clock, 1.0, 5)

    def log(self, request: http.Request) -> None:
        pass

    def content_security_policy(self, request: Request) -> bytes:
        """
        Exactly what the page loads: its own scripts, styles and JSON, and the hub's
        WebSocket on the host the page came from.
        """
        sockets = "ws: wss:"
        host = (request.getRequestHostname() or b"").decode("ascii", "replace")
        port = self._websocket_port()
        if _HOST.match(host) and port is not None:
            sockets = f"ws://{host}:{port} wss://{host}:{port}"
        return (
            # the hash is the one stylesheet the vendored Cytoscape inserts for its container
            # (position: relative, and so on); without it the graph's container is unstyled
            "default-src 'none'; script-src 'self'; "
            f"style-src 'self' '{CYTOSCAPE_STYLE_HASH}'; img-src 'self' data:; "
            f"connect-src 'self' {sockets}; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'"
        ).encode("ascii")

    def request_failed(self, request: Request, reason: Failure) -> None:
        if self._error_log.allow():
            self._log.error(
                "Error serving {method} {path}: {error} ({suppressed} more not logged)",
                method=request.method.decode("ascii", "replace"),
                path=request.path[:200].decode("ascii", "replace"),
                error=reason.getErrorMessage()[:200],
                suppressed=self._error_log.take_suppressed(),
            )


def build_site(
    hub: Hub,
    settlement: SettlementState,
    websocket_port: Callable[[], int | None],
    clock: IReactorTime,
    metrics: Any = None,
) -> Site:
    """
    @param websocket_port: returns the WebSocket listener's port number, or None.
    @param metrics: the Prometheus registry served at /metrics.
    """
    root = _StaticFiles(str(WEB_DIR))
    root.indexNames = ["index.html"]
    root.putChild(b"health", HealthResource(hub))
    root.putChild(b"config.json", ConfigResource(websocket_port))
    if metrics is not None:
        root.putChild(b"metrics", _Guarded(hub, MetricsResource(metrics)))
    api = _Folder()
    api.putChild(b"nodes", NodesResource(hub))
    api.putChild(b"balances", ListResource(settlement.balances))
    api.putChild(b"channels", ListResource(settlement.channels))
    api.putChild(b"rates", RatesResource(hub))
    settlements = _Folder()
    settlements.putChild(b"recent", ListResource(settlement.recent_settlements))
    api.putChild(b"settlements", settlements)
    root.putChild(b"api", _Guarded(hub, api))
    return HubSite(root, clock, websocket_port)
