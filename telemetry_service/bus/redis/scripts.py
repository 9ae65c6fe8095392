"""
The Lua scripts of the Redis bus, read from the C{scripts/} folder beside this module
(through C{importlib.resources}, so that they are found in an installed wheel too).

Redis runs a script alone, so each one is a step no other hub can see half done. Every
script but C{init} and C{load} starts with C{common.lua}: the epoch check (a hub that has
not noticed that Redis lost its data must not write into the new history as if it were the
old one), Redis's clock, and publishing, joining and leaving. Their arguments, after the
C{ARGV} of C{common.lua} (prefix, epoch, maxlen) and this hub's id:

    - B{submit}: batch, max_nodes, then 4 per operation (an L{Op<outbox.Op>}):
      C{m}, C{"<type>\\0<nodeId>"}, the message JSON up to its closing brace and
      C{',"seq":'}, the status node or C{''};
      C{j}, nodeId, nodeId as JSON, timestamp as JSON (a connector for the node arrived
      here); C{l}, the same (the last one here left). A batch numbered no higher than the
      last one of this hub applied in this epoch is not applied again.
    - B{sync}: ttl ms, timestamp as JSON, then 2 per node with a live connector here:
      nodeId, nodeId as JSON. Makes Redis's view of this hub's nodes exactly that (after a
      reconnection, or after another hub took this one for dead).
    - B{heartbeat}: ttl ms, timestamp as JSON. Renews this hub and takes the nodes of hubs
      past their time offline. Returns 0 if this hub had been taken for dead.
    - B{goodbye}: ttl ms, timestamp as JSON. This hub stops: its nodes go offline unless
      another hub has them.

C{init} takes the prefix, a new epoch and, optionally, an epoch to replace; it returns the
epoch, making it (and a fresh history) if Redis has none (first start, or Redis lost its
data) or if it is the one to replace (Redis lost only its last writes: see
L{SharedHistory.resync<telemetry_service.bus.redis.history.SharedHistory.resync>}).
C{load} takes the prefix and returns the replay cache and presence as of one seq:
C{{seq, {node, "<seq> status", ...} in first-report order, {online nodes}}}.
"""

from __future__ import annotations

from importlib.resources import files

#: the scripts, in the order they are loaded, and whether C{common.lua} comes first
_SHARED = {
    "submit": True,
    "sync": True,
    "heartbeat": True,
    "goodbye": True,
    "init": False,
    "load": False,
}


def _read(name: str) -> str:
    return (files("telemetry_service.bus.redis") / "scripts" / f"{name}.lua").read_text(
        encoding="utf-8"
    )


def _build() -> dict[str, str]:
    common = _read("common")
    # A newline first, and one between common.lua and the rest: the text Redis has always
    # been given, so that each script keeps its SHA-1, by which Redis knows it (a test pins
    # them).
    return {
        name: "\n" + (common + "\n" if shared else "") + _read(name)
        for name, shared in _SHARED.items()
    }


#: the source of every script, by name
SCRIPTS: dict[str, str] = _build()
