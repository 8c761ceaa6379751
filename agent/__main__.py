"""`drain-agent [options] -- <app command...>`"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from agent.config import load_config
from agent.drain import Agent
from agent.errors import AgentError
from agent.events import Timeline, setup_logging
from agent.metrics import Metrics, NoMetrics, PrometheusMetrics
from agent.supervise import become_subreaper


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
    except AgentError as exc:
        print(f"drain-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    if not become_subreaper():  # pragma: no cover - not Linux
        print("drain-agent: warning: cannot reap orphans here; run it as PID 1 "
              "(container ENTRYPOINT)", file=sys.stderr)
    metrics: Metrics = PrometheusMetrics(config.metrics_port) if config.metrics_port else NoMetrics()
    timeline = Timeline(config.server_id)
    agent = Agent(config, timeline, metrics)
    try:
        code = asyncio.run(agent.run())
    except AgentError as exc:
        print(f"drain-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
