"""
TCP settings the hub's connections and its command-line tools share.
"""

from __future__ import annotations


def set_no_delay(transport: object) -> bool:
    """
    Turn Nagle's algorithm off on C{transport}, so that small telemetry frames leave at
    once instead of waiting ~40 ms for the ACK of the one before. TLS transports pass the
    call down; UNIX sockets have no such option.

    Autobahn's own C{tcpNoDelay} option never takes effect on its Twisted server (it reads
    the option before copying it from the factory, and swallows the error), and its client
    never sets it: whoever wants it sets it here.

    @return: whether it is off now.
    """
    set_tcp_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_tcp_no_delay is None:
        return False
    try:
        set_tcp_no_delay(True)
    except OSError:
        return False
    return True
