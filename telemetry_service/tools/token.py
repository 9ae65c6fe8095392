"""
C{telemetry-token ROLE [NODE_ID...] [--name NAME]}: make a token for the hub's token file
(C{--tokens}). The token is printed once, on standard error, and kept nowhere; the line to
add to the file (its role, a name for the log, the token's SHA-256, the nodeIds a connector
token may publish for) on standard output.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence

from telemetry_service.auth import CONNECTOR, NAME, VIEWER, token_line


def main(argv: Sequence[str] | None = None) -> None:
    """
    C{telemetry-token}: make a new token and print the line that grants it.
    """
    parser = argparse.ArgumentParser(
        prog="telemetry-token",
        description="Make a token for the hub's token file (--tokens): the token is printed "
        "once, on standard error; the line to add to the file on standard output.",
    )
    parser.add_argument("role", choices=(CONNECTOR, VIEWER))
    parser.add_argument(
        "node_ids",
        nargs="*",
        metavar="NODE_ID",
        help="for a connector: the nodeIds it may publish for (wildcards * and ?)",
    )
    parser.add_argument("--name", help="a label for the log (default: the first nodeId)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == CONNECTOR and not args.node_ids:
        parser.error("a connector token needs the nodeIds it may publish for")
    if args.role == VIEWER and args.node_ids:
        parser.error("a viewer token names no nodeIds")
    name = args.name or (args.node_ids[0].replace("*", "all") if args.node_ids else "viewer")
    if not NAME.match(name):
        parser.error(f"name {name!r} must be 1-64 of A-Z a-z 0-9 . _ - (use --name)")
    token = secrets.token_urlsafe(32)
    print(f"token (give it to the {args.role}; it is not kept anywhere): {token}", file=sys.stderr)
    print(token_line(args.role, name, token, args.node_ids))


if __name__ == "__main__":
    main()
