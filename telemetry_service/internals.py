"""
Every use of a library's private attributes, in one place, checked once.

Three fast paths depend on internals that a release of Autobahn, Twisted or txredisapi may
rename:

- B{frames}: whole simple data frames are parsed straight from Autobahn's receive buffer
  (C{data}, C{current_frame}, C{inside_message}, C{_fail_connection},
  C{_cancelAutoPingTimeoutCall}, C{autoPingTimeoutCall}), instead of Autobahn's generic
  path, which costs several times the rest of the hub per message;
- B{writes}: a reactor pass's frames are written straight to the socket when Twisted's
  buffer is empty (C{_tempDataBuffer}, C{dataBuffer}, C{connected}, C{_writeDisconnected},
  C{writeSomeData}, C{TLS} of C{twisted.internet.tcp.Connection});
- B{Redis commands} (with C{--redis}): the Redis bus's commands are built with one C{join}
  rather than txredisapi's several copies, by overriding C{_build_command} of its protocol
  (and calling its C{_encode_value} for what is not bytes).

L{check} looks for each of them, with the shape the code expects, on real objects (a
protocol taken through a handshake, a TCP transport over a socket pair). Whatever is missing
is named in one warning, and that path falls back to the public one (Autobahn's own
C{processData}, Twisted's C{transport.write}), which is fully correct, only slower.
L{lean_redis_commands} does the same for txredisapi, when the Redis bus is imported (only
with C{--redis}); its public fallback is txredisapi's own command builder.
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from telemetry_service.errors import INVALID_PAYLOAD

#: every private name of another library this module uses; no other module may name one
#: (tests/test_layout.py holds the package to it)
FOREIGN_PRIVATE_NAMES = (
    "_fail_connection",
    "_cancelAutoPingTimeoutCall",
    "_tempDataBuffer",
    "_writeDisconnected",
    "_build_command",
    "_encode_value",
)

_OPEN = WebSocketProtocol.STATE_OPEN


@dataclass(frozen=True)
class FastPaths:
    #: parse whole simple frames ourselves
    frames: bool = True
    #: write a pass's frames around Twisted's buffer
    writes: bool = True
    #: what was missing, by name (empty when both paths are on)
    missing: tuple[str, ...] = ()


PUBLIC_ONLY = FastPaths(False, False, ())


def check() -> FastPaths:
    """
    Which fast paths this Autobahn and this Twisted allow.
    """
    frames = _check_autobahn()
    writes = _check_twisted()
    return FastPaths(not frames, not writes, tuple(frames + writes))


def _check_autobahn() -> list[str]:
    missing = [
        f"autobahn WebSocketProtocol.{name}()"
        for name in ("_fail_connection", "_cancelAutoPingTimeoutCall", "processData")
        if not callable(getattr(WebSocketProtocol, name, None))
    ]
    factory = WebSocketServerFactory()
    protocol = WebSocketServerProtocol()
    protocol.factory = factory
    transport = StringTransport()
    try:
        protocol.makeConnection(transport)
        key = base64.b64encode(os.urandom(16)).decode()
        protocol.dataReceived(
            (
                "GET / HTTP/1.1\r\nHost: probe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        expected: dict[str, Any] = {
            "state": int,
            "data": bytes,
            "current_frame": type(None),
            "inside_message": bool,
            "autoPingTimeoutCall": type(None),
            "autoPingRestartOnAnyTraffic": bool,
            "maxMessagePayloadSize": int,
        }
        for name, kind in expected.items():
            if not isinstance(getattr(protocol, name, _Missing), kind):
                missing.append(f"autobahn WebSocketProtocol.{name} ({kind.__name__})")
        if getattr(protocol, "state", None) != _OPEN:
            missing.append("autobahn: a probe handshake did not open")
    except Exception as e:  # any surprise means the probe cannot vouch for the internals
        missing.append(f"autobahn: the probe failed ({e!r})")
    finally:
        protocol.connectionLost(Failure(ConnectionError("probe done")))
    return missing


def _check_twisted() -> list[str]:
    missing = [
        f"twisted tcp.Connection.{name}()"
        for name in ("writeSomeData", "write")
        if not callable(getattr(tcp.Connection, name, None))
    ]
    left, right = socket.socketpair()
    try:
        connection = tcp.Connection(left, None, MemoryReactor())  # type: ignore[arg-type]
        expected: dict[str, Any] = {
            "_tempDataBuffer": list,
            "dataBuffer": bytes,
            "_writeDisconnected": bool,
            "connected": int,
            "TLS": bool,
        }
        for name, kind in expected.items():
            if not isinstance(getattr(connection, name, _Missing), kind):
                missing.append(f"twisted tcp.Connection.{name} ({kind.__name__})")
    except Exception as e:
        missing.append(f"twisted: the probe failed ({e!r})")
    finally:
        left.close()
        right.close()
    return missing


class _Missing:
    pass


# -- the fast paths themselves


def take_simple_frames(protocol: Any) -> None:
    """
    Hand every whole, simple data frame at the front of C{protocol}'s receive buffer to its
    C{onMessage}; leave the rest (control frames, fragments, long or partial frames,
    errors) to Autobahn's own C{processData}.
    """
    if protocol.state != _OPEN or protocol.current_frame is not None or protocol.inside_message:
        return
    data: bytes = protocol.data
    size = len(data)
    limit = protocol.maxMessagePayloadSize or 65535
    pos = 0
    try:
        while size - pos >= 6 and protocol.state == _OPEN:
            b0, b1 = data[pos], data[pos + 1]
            opcode = b0 & 0x0F
            # FIN set, no RSV bits, text (1) or binary (2), masked as clients must
            if b0 & 0xF0 != 0x80 or opcode not in (1, 2) or not b1 & 0x80:
                return
            length = b1 & 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126:
                if size - pos < 8:
                    return
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
            else:
                return
            end = start + length
            if length > limit or end > size:
                return  # too big: Autobahn closes with 1009; partial: wait for more
            payload = _unmask(data, start, end, data[start - 4 : start])
            pos = end
            if protocol.autoPingTimeoutCall and protocol.autoPingRestartOnAnyTraffic:
                # any data frame proves the peer alive, as in Autobahn's own path
                protocol._cancelAutoPingTimeoutCall()
            if opcode == 1 and not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    protocol._fail_connection(
                        INVALID_PAYLOAD, "received text message is not valid UTF-8"
                    )
                    return
            protocol.onMessage(payload, opcode == 2)
    finally:
        # consumed frames leave the buffer once, not one copy per frame
        if pos:
            protocol.data = data[pos:]


def _unmask(data: bytes, start: int, end: int, mask: bytes) -> bytes:
    """
    XOR C{data[start:end]} with the 4-byte C{mask}, as one big-integer operation.
    """
    length = end - start
    if length == 0 or mask == b"\x00\x00\x00\x00":
        return data[start:end]
    key = (mask * ((length >> 2) + 1))[:length]
    value = int.from_bytes(data[start:end], "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(length, "little")


def is_direct(transport: Any) -> bool:
    """
    A plain TCP (or UNIX) socket that L{write_around_buffer} may write to.
    """
    return isinstance(transport, tcp.Connection) and not transport.TLS


def write_around_buffer(transport: Any, data: bytes) -> None:
    """
    Send C{data} straight to the socket when Twisted holds nothing unsent for it; what the
    socket does not take, and everything else, goes through C{transport.write}, so order,
    the producer signal and error handling stay Twisted's.
    """
    if (
        transport._tempDataBuffer
        or transport.dataBuffer
        or not transport.connected
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    sent = transport.writeSomeData(data)
    if not isinstance(sent, int):  # the connection is gone: let Twisted's own path see it
        transport.write(data)
    elif sent < len(data):
        transport.write(data[sent:])


# -- txredisapi (imported only with --redis: these are given its classes, never import it)


def lean_redis_commands(protocol: type[Any]) -> tuple[str, ...]:
    """
    Have C{protocol}, a subclass of txredisapi's C{BaseRedisProtocol}, build its commands
    with L{_build_redis_command} if this txredisapi builds them as that expects; otherwise
    leave txredisapi's own builder, which is correct, only slower.

    @return: what was missing, or not of the expected shape, by name (empty: the lean
        builder is in place).
    """
    missing = _check_txredisapi(protocol)
    if not missing:
        protocol._build_command = _build_redis_command
    return tuple(missing)


def _check_txredisapi(protocol: type[Any]) -> list[str]:
    missing = [
        f"txredisapi {protocol.__name__}.{name}()"
        for name in ("_build_command", "_encode_value", "execute_command")
        if not callable(getattr(protocol, name, None))
    ]
    if missing:
        return missing
    try:
        probe = protocol()
        for value in ("\u00e9", 5):
            if probe._encode_value(value) != str(value).encode():
                missing.append(f"txredisapi _encode_value() (of {value!r})")
        sample = (b"EVALSHA", "x", 70000, b"\r\n\x00")
        if _build_redis_command(probe, *sample) != probe._build_command(*sample):
            missing.append("txredisapi _build_command() (another wire format)")
        # an override that execute_command() does not call would be dead code
        probe.transport = StringTransport()
        probe.connected = 1
        probe._build_command = lambda *args, **kwargs: b"probe"
        probe.execute_command(b"PING")
        if probe.transport.value() != b"probe":
            missing.append("txredisapi execute_command() building through _build_command()")
    except Exception as e:  # any surprise means the probe cannot vouch for the internals
        missing.append(f"txredisapi: the probe failed ({e!r})")
    return missing


def _build_redis_command(protocol: Any, *args: Any, **kwargs: Any) -> bytes:
    """
    A command in Redis's wire format, as txredisapi's C{_build_command} writes it, in one
    C{join}. The bus passes bytes, which need neither encoding nor a copy.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes):
            arg = protocol._encode_value(arg)
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)
