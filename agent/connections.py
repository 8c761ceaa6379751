"""Connections to the app's port, from the kernel's own table (/proc/net/tcp and tcp6).

After a HAProxy reload, the old worker keeps the sessions it had until they end, and no stats
page shows them: the new worker's page says 0 while a request is still in flight. What the
kernel sees on the app's port is what every HAProxy process, old or new, still holds. The
agent reads the table of its own network namespace: the app's, in a container.
"""

from __future__ import annotations

ESTABLISHED = "01"
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def count_established(table: str, port: int) -> int:
    """Rows of one /proc/net/tcp* table in state ESTABLISHED whose local port is `port`."""
    count = 0
    for line in table.split("\n")[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        _, _, local_port = fields[1].rpartition(":")
        try:
            if int(local_port, 16) == port and fields[3] == ESTABLISHED:
                count += 1
        except ValueError:
            continue
    return count


def established_to(port: int, tables: tuple[str, ...] = TABLES) -> int | None:
    """Established connections to `port` here; None when no table can be read (not Linux)."""
    total, read = 0, False
    for path in tables:
        try:
            with open(path) as table:
                total += count_established(table.read(), port)
            read = True
        except OSError:
            continue
    return total if read else None
