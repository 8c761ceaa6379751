"""`python -m bench.plain_service`: the reference service without its 503 drain middleware.

Only to measure what the middleware costs in steady state: everything else (uvicorn settings,
routes, metrics middleware, SERVICE_* variables) is the same as `python -m service`.
"""

from __future__ import annotations

import sys

from service.__main__ import main

if __name__ == "__main__":
    sys.exit(main(drain=False))
