"""The kernel's count of connections to the app's port: what an old HAProxy worker still holds."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.connections import count_established, established_to

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP = HEADER + (
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 11 1\n"  # listening
    "   1: 0100007F:1F90 0100007F:D2F4 01 00000000:00000000 00:00000000 00000000  1000 0 12 1\n"  # the app's side
    "   2: 0100007F:D2F4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000 0 13 1\n"  # HAProxy's side
    "   3: 0100007F:1F90 0100007F:D2F6 06 00000000:00000000 00:00000000 00000000  1000 0 14 1\n"  # TIME_WAIT
    "   4: garbage\n"
)
TCP6 = HEADER + (
    "   0: 0000000000000000FFFF00000500000A:1F90 0000000000000000FFFF00000600000A:A001 01 "
    "00000000:00000000 00:00000000 00000000  1000 0 15 1\n"
)


def test_only_established_connections_whose_local_port_is_the_apps_count() -> None:
    assert count_established(TCP, 0x1F90) == 1
    assert count_established(TCP6, 0x1F90) == 1
    assert count_established(TCP, 8001) == 0
    assert count_established("", 8000) == 0


def test_tables_are_summed_and_none_when_none_can_be_read(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    tables = (str(tmp_path / "tcp"), str(tmp_path / "tcp6"), str(tmp_path / "missing"))
    assert established_to(0x1F90, tables) == 2
    assert established_to(0x1F90, (str(tmp_path / "missing"),)) is None


def test_the_kernels_own_table_sees_a_real_connection() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert established_to(port) == 0
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                assert established_to(port) == 1
