"""`python -m service`: run the reference service, configured by SERVICE_* variables."""

from __future__ import annotations

import logging
import sys
import time

from service.config import ConfigError, ServiceConfig


def main(*, drain: bool = True) -> int:
    """`drain=False` leaves out the 503 drain (bench.plain_service, to measure its cost)."""
    # UTC with milliseconds, like drain-agent's lines, so both read as one timeline.
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03dZ service[%(process)d] %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        config = ServiceConfig.from_env()
    except ConfigError as exc:
        print(f"service: {exc}", file=sys.stderr)
        return 2
    from service.server import build_server

    build_server(config, drain=drain).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
