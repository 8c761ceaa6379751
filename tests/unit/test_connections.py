"""The kernel's count of connections to the app's port: what an old HAProxy worker still holds."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.connections import established, established_to, parse_address

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
    assert established(TCP, 0x1F90) == {"127.0.0.1:54004"}
    assert established(TCP6, 0x1F90) == {"10.0.0.6:40961"}
    assert established(TCP, 8001) == set()
    assert established("", 8000) == set()


def test_addresses_as_the_kernel_writes_them() -> None:
    assert parse_address("0100007F") == "127.0.0.1"
    assert parse_address("0000000000000000FFFF00000600000A") == "10.0.0.6"  # IPv4-mapped
    assert parse_address("000080FE00000000FF565002BD69B1FE") == "fe80::250:56ff:feb1:69bd"
    assert parse_address("00000000000000000000000001000000") == "::1"


def test_only_connections_from_haproxys_addresses_count_when_they_are_known() -> None:
    assert established(TCP, 0x1F90, frozenset({"127.0.0.1"})) == {"127.0.0.1:54004"}
    assert established(TCP, 0x1F90, frozenset({"10.0.0.9"})) == set()  # a scraper, a flood
    assert established(TCP6, 0x1F90, frozenset({"10.0.0.6"})) == {"10.0.0.6:40961"}


def test_tables_are_summed_and_none_when_none_can_be_read(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    tables = (str(tmp_path / "tcp"), str(tmp_path / "tcp6"), str(tmp_path / "missing"))
    assert established_to(0x1F90, tables=tables) == {"127.0.0.1:54004", "10.0.0.6:40961"}
    assert established_to(0x1F90, tables=(str(tmp_path / "missing"),)) is None


def test_the_kernels_own_table_sees_a_real_connection() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert established_to(port) == set()
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                me = f"127.0.0.1:{client.getsockname()[1]}"
                assert established_to(port) == {me}
                assert established_to(port, frozenset({"127.0.0.1"})) == {me}
                assert established_to(port, frozenset({"127.0.0.2"})) == set()
