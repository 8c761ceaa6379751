"""`python -m bench.plain_service`: the reference service without its 503 drain middleware.

Only to measure what the middleware costs in steady state: everything else (uvicorn settings,
routes, metrics middleware, SERVICE_* variables) is the same as `python -m service`.
"""

from __future__ import annotations

import logging
import sys
import time

from service.config import ConfigError, ServiceConfig
from service.server import build_server


def main() -> int:
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03dZ plain-service[%(process)d] %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        config = ServiceConfig.from_env()
    except ConfigError as exc:
        print(f"plain-service: {exc}", file=sys.stderr)
        return 2
    build_server(config, drain=False).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
