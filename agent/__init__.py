"""drain-agent: a PID-1 wrapper that drains a server in HAProxy before its app stops."""

__version__ = "0.1.0"  # the distribution's (pyproject.toml; tests/unit/test_config.py keeps them equal)

from agent.config import AgentConfig, load_config
from agent.errors import AgentError
from agent.events import AgentState
from agent.haproxy import RuntimeAPI, ServerStat, StatsPage, parse_address, parse_stat_csv
from agent.machine import Agent

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentState",
    "RuntimeAPI",
    "ServerStat",
    "StatsPage",
    "load_config",
    "parse_address",
    "parse_stat_csv",
]
