"""drain-agent: a PID-1 wrapper that drains a server in HAProxy before its app stops."""

from agent.config import AgentConfig, load_config
from agent.drain import Agent, AgentState
from agent.errors import AgentError
from agent.haproxy import RuntimeAPI, ServerStat, parse_address, parse_stat_csv

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentState",
    "RuntimeAPI",
    "ServerStat",
    "load_config",
    "parse_address",
    "parse_stat_csv",
]
