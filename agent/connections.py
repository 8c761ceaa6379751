"""Connections to the app's port, from the kernel's own table (/proc/net/tcp and tcp6).

After a HAProxy reload, the old worker keeps the sessions it had until they end, and no stats
page shows them: the new worker's page says 0 while a request is still in flight. What the
kernel sees on the app's port, from HAProxy's addresses, is what every HAProxy process, old or
new, still holds. Other peers (a scraper's keep-alive, another container holding sockets open)
are not counted: they are not HAProxy's sessions, and must not hold a drain. The agent reads
the table of its own network namespace: the app's, in a container.
"""

from __future__ import annotations

import ipaddress

ESTABLISHED = "01"
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def parse_address(hex_address: str) -> str:
    """'0100007F' -> '127.0.0.1'; a tcp6 address (four little-endian words) -> its text, an
    IPv4-mapped one as IPv4."""
    raw = bytes.fromhex(hex_address)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(ordered)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def established(table: str, port: int, peers: frozenset[str] | None = None) -> set[str]:
    """The connections ('peer-address:port') of one /proc/net/tcp* table in state ESTABLISHED
    whose local port is `port` (and, given `peers`, whose peer address is one of them)."""
    found = set()
    for line in table.split("\n")[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != ESTABLISHED:
            continue
        try:
            if int(fields[1].rpartition(":")[2], 16) != port:
                continue
            address, _, peer_port = fields[2].rpartition(":")
            peer = parse_address(address)
            if peers is not None and peer not in peers:
                continue
            found.add(f"{peer}:{int(peer_port, 16)}")
        except ValueError:
            continue
    return found


def established_to(port: int, peers: frozenset[str] | None = None,
                   tables: tuple[str, ...] = TABLES) -> frozenset[str] | None:
    """Established connections to `port` here; None when no table can be read (not Linux)."""
    found: set[str] = set()
    read = False
    for path in tables:
        try:
            with open(path) as table:
                found |= established(table.read(), port, peers)
            read = True
        except OSError:
            continue
    return frozenset(found) if read else None
